-- queue 0.1.0 -> 0.2.0
--
-- Hand-written: every change to the SQL API between the two releases, in the
-- order a reader can follow. scripts/upgrade-test.sh proves that a catalog
-- upgraded by this script equals a fresh 0.2.0 install (pg_dump of both) and
-- keeps every job, schedule and counter.
\echo Use "ALTER EXTENSION queue UPDATE TO '0.2.0'" to load this file. \quit
