-- Internal objects live in their own schema; the public API functions are
-- created in the extension's schema (public by default) so that they are
-- callable unqualified with the default search_path.
CREATE SCHEMA IF NOT EXISTS queue;
REVOKE ALL ON SCHEMA queue FROM PUBLIC;
