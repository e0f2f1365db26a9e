-- cognihook embedded store, schema 1.
-- Times are Unix milliseconds (INTEGER) unless the column name says otherwise.

-- Every accepted event, as the normalised event JSON (SPEC §3.6) with its stateVersion.
CREATE TABLE events (
    event_id       TEXT PRIMARY KEY,
    correlation_id TEXT NOT NULL,
    route          TEXT NOT NULL,
    session_id     TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    state_version  INTEGER NOT NULL,
    simulated      INTEGER NOT NULL,
    received_at    TEXT NOT NULL,
    committed_at   INTEGER NOT NULL,
    body           TEXT NOT NULL
);
CREATE INDEX events_by_correlation ON events (correlation_id, committed_at);
-- No index on commit time: event ids are ULIDs, time-ordered, so retention prunes by id range.

-- Session state per sessionId: interaction count and last activity.
CREATE TABLE sessions (
    session_id      TEXT PRIMARY KEY,
    state_version   INTEGER NOT NULL,
    first_seen      INTEGER NOT NULL,
    last_seen       INTEGER NOT NULL,
    last_event_type TEXT NOT NULL,
    last_route      TEXT NOT NULL
) WITHOUT ROWID;
-- No index on last_seen: it would change on every event. Expired sessions are treated as new
-- on their next event and pruned by a bounded scan in the writer's maintenance.

-- The answer given to an idempotency key, replayed for duplicates inside the window.
CREATE TABLE idempotency (
    key            TEXT PRIMARY KEY,
    event_id       TEXT NOT NULL,
    status         INTEGER NOT NULL,
    body           BLOB NOT NULL,
    correlation_id TEXT NOT NULL,
    created_at     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX idempotency_by_created ON idempotency (created_at);

-- One row per (event, sink): the delivery path's work queue.
-- status: pending | delivered | dead
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL REFERENCES events (event_id),
    sink            TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    UNIQUE (event_id, sink)
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
