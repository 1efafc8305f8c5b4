"""Count the tests a test step reported: prints "<passed> <failed>".

Reads the step's output and sums what each runner prints at its end:
cargo test ("test result: ok. N passed; M failed"), pg_regress and
pg_isolation_regress ("All N tests passed." / "M of N tests failed."),
pytest ("N passed, M failed in 1.2s"), node --test ("# pass N" / "# fail M").
"""
import re
import sys

text = open(sys.argv[1], errors="replace").read()
passed = failed = 0
for m in re.finditer(r"test result: \w+\. (\d+) passed; (\d+) failed", text):
    passed += int(m.group(1))
    failed += int(m.group(2))
for m in re.finditer(r"All (\d+) tests passed", text):
    passed += int(m.group(1))
for m in re.finditer(r"(\d+) of (\d+) tests failed", text):
    failed += int(m.group(1))
    passed += int(m.group(2)) - int(m.group(1))
for line in re.findall(r"^=*\s*(\d+ (?:passed|failed).*) in [\d.]+s\b", text, re.M):
    for n, kind in re.findall(r"(\d+) (passed|failed|error)", line):
        if kind == "passed":
            passed += int(n)
        else:
            failed += int(n)
for m in re.finditer(r"^# pass (\d+)$", text, re.M):
    passed += int(m.group(1))
for m in re.finditer(r"^# fail (\d+)$", text, re.M):
    failed += int(m.group(1))
print(passed, failed)
