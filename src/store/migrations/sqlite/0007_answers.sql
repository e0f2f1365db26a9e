-- cognihook embedded store, schema 7: the answers duplicates get, apart from the idempotency
-- keys. Keys arrive in random order (SHA-256 of route and body when Cognigy sends no
-- Idempotency-Key), so every new key lands on a random leaf of `idempotency`; with the answer
-- inside, its rows were about four times larger, and so were its B-tree, its page splits and
-- what each insert wrote. Answers live here, keyed by event id (a ULID, so inserts append).
-- Rows written from schema 7 on leave idempotency.body empty; older rows keep theirs, and
-- readers take the answer from here when there is one.
CREATE TABLE answers (
    event_id TEXT PRIMARY KEY,
    body     BLOB NOT NULL
) WITHOUT ROWID;
