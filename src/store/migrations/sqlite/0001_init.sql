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
-- status: pending | delivered | dead. A pending row is due when next_attempt_at has passed and
-- it holds no live lease; lease_owner is the token of the claim that holds it.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL REFERENCES events (event_id),
    sink            TEXT NOT NULL,
    route           TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER,
    lease_owner     TEXT,
    last_error      TEXT,
    failure_class   TEXT,            -- transient | permanent (dead letters)
    reason          TEXT,            -- permanent | exhausted (dead letters)
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    dead_at         INTEGER,
    replays         INTEGER NOT NULL DEFAULT 0,
    UNIQUE (event_id, sink)
);
CREATE INDEX outbox_due ON outbox (sink, status, next_attempt_at);
CREATE INDEX outbox_by_session ON outbox (sink, session_id, status, id);

-- Every delivery attempt and replay, for the event's journey.
-- outcome: delivered | retry | dead_lettered | replayed
CREATE TABLE delivery_attempts (
    id          INTEGER PRIMARY KEY,
    outbox_id   INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    error       TEXT,
    duration_ms INTEGER,
    replica     TEXT NOT NULL
);
CREATE INDEX attempts_by_outbox ON delivery_attempts (outbox_id, id);
