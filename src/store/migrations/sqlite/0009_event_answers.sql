-- cognihook embedded store, schema 9.
-- An event's answer (what a duplicate of its request gets inside the idempotency window) is
-- kept in the event's row: a row of `answers` of its own was one more statement and one more
-- B-tree insert per event. Answers written before stay in `answers` and are read there
-- until they expire.
ALTER TABLE events ADD COLUMN answer BLOB;
ALTER TABLE events ADD COLUMN answer_status INTEGER;
