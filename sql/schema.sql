-- Internal objects live in their own schema; the public API functions are
-- created in the extension's schema (public by default) so that they are
-- callable unqualified with the default search_path.
CREATE SCHEMA IF NOT EXISTS queue;
REVOKE ALL ON SCHEMA queue FROM PUBLIC;

-- The rest of the install script resolves names with nothing but the
-- catalog: CREATE EXTENSION runs as a superuser, and a function or operator
-- that someone put in the extension's schema (the database owner owns
-- public) must not be picked by an index predicate, a CHECK or a DO block.
-- CREATE EXTENSION restores the setting when the script ends.
SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
