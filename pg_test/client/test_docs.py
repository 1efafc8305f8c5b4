"""Every public SQL function is documented where users look for it.

The installed extension is the list: every function of the extension outside
the internal `queue` schema must have a COMMENT (pg_regress `security` checks
that too), a row in the README's Functions tables, and a signature in
docs/reference.md, and every function the docs name must exist. A function
added without its documentation, or documentation left behind by a removed
one, fails here. So does a relative link of any markdown file of the project
that names a file or a heading that is not there.
"""
import os
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def public_functions(conn):
    return {r[0]: r[1] for r in conn.execute(
        """SELECT p.proname, bool_and(obj_description(p.oid, 'pg_proc') IS NOT NULL)
             FROM pg_proc p
             JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
             JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'queue'
            WHERE p.pronamespace <> 'queue'::regnamespace
            GROUP BY p.proname""").fetchall()}


def readme_functions_section():
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Functions\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_every_public_function_has_a_comment_a_readme_row_and_a_reference_entry(conn):
    functions = public_functions(conn)
    assert len(functions) > 40, functions
    section = readme_functions_section()
    reference = (ROOT / "docs" / "reference.md").read_text()
    uncommented = sorted(f for f, has in functions.items() if not has)
    not_in_readme = sorted(f for f in functions if f"[`{f}`](docs/reference.md#" not in section)
    # A signature block in the reference starts a line with the name and "(".
    not_in_reference = sorted(f for f in functions if not re.search(rf"^{f}\(", reference, re.M))
    assert uncommented == [] and not_in_readme == [] and not_in_reference == [], (
        f"no COMMENT: {uncommented}; no README row: {not_in_readme}; "
        f"no signature in docs/reference.md: {not_in_reference}")


def test_the_docs_name_no_function_that_does_not_exist(conn):
    functions = public_functions(conn)
    named = set(re.findall(r"\[`(queue_[a-z_]+)`\]\(docs/reference\.md#", readme_functions_section()))
    reference = (ROOT / "docs" / "reference.md").read_text()
    named |= set(re.findall(r"^(queue_[a-z_]+)\(", reference, re.M))
    assert sorted(named - set(functions)) == []


def test_the_readme_links_to_headings_that_exist():
    readme = (ROOT / "README.md").read_text()
    reference = (ROOT / "docs" / "reference.md").read_text()

    missing = sorted({a for a in re.findall(r"\]\(docs/reference\.md#([a-z0-9_-]+)\)", readme)}
                     - heading_anchors(reference))
    missing += sorted({a for a in re.findall(r"\]\(#([a-z0-9_-]+)\)", readme)} - heading_anchors(readme))
    missing += sorted({a for a in re.findall(r"\]\(\.\./README\.md#([a-z0-9_-]+)\)", reference)}
                      - heading_anchors(readme))
    missing += sorted({a for a in re.findall(r"\]\(#([a-z0-9_-]+)\)", reference)} - heading_anchors(reference))
    assert missing == []


def markdown_files():
    """The project's own markdown files (not dependencies or build output)."""
    skip = {".git", ".run", "target", "node_modules", "dist"}
    for d, dirs, files in os.walk(ROOT):
        dirs[:] = [x for x in dirs if x not in skip]
        yield from (pathlib.Path(d) / f for f in files if f.endswith(".md"))


def heading_anchors(text):
    """GitHub's anchors of a file's headings: lower case, spaces to '-',
    punctuation other than '-' and '_' dropped (code blocks left out)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return {re.sub(r"[^a-z0-9_ -]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_every_relative_link_of_the_docs_lands():
    """Every relative link in every markdown file names a file that exists,
    and a heading of it that exists when it has an anchor."""
    broken = []
    files = list(markdown_files())
    assert len(files) > 8, files
    for md in files:
        text = md.read_text()
        prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):
                continue  # http:, https:, mailto:
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            if not dest.exists():
                broken.append(f"{md.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest.read_text()):
                broken.append(f"{md.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == [], broken
