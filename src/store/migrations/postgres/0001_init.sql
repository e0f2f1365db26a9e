-- cognihook on PostgreSQL, schema 1: the same tables and meanings as the embedded store
-- (see ../sqlite/). Times are Unix milliseconds (BIGINT) unless the column name says otherwise.

CREATE TABLE events (
    event_id       TEXT PRIMARY KEY,
    correlation_id TEXT NOT NULL,
    route          TEXT NOT NULL,
    session_id     TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    state_version  BIGINT NOT NULL,
    simulated      BOOLEAN NOT NULL,
    received_at    TEXT NOT NULL,
    committed_at   BIGINT NOT NULL,
    body           TEXT NOT NULL
);
CREATE INDEX events_by_correlation ON events (correlation_id, committed_at);

CREATE TABLE sessions (
    session_id      TEXT PRIMARY KEY,
    state_version   BIGINT NOT NULL,
    first_seen      BIGINT NOT NULL,
    last_seen       BIGINT NOT NULL,
    last_event_type TEXT NOT NULL,
    last_route      TEXT NOT NULL
);

CREATE TABLE idempotency (
    key            TEXT PRIMARY KEY,
    event_id       TEXT NOT NULL,
    status         BIGINT NOT NULL,
    body           BYTEA NOT NULL,
    correlation_id TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);
CREATE INDEX idempotency_by_created ON idempotency (created_at);

-- status: pending | delivered | dead. Claims take due rows FOR UPDATE SKIP LOCKED and lease
-- them (lease_owner is the claim's token); an expired lease makes the row due again.
CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    event_id        TEXT NOT NULL REFERENCES events (event_id),
    sink            TEXT NOT NULL,
    route           TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_until     BIGINT,
    lease_owner     TEXT,
    last_error      TEXT,
    failure_class   TEXT,
    reason          TEXT,
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT,
    dead_at         BIGINT,
    replays         BIGINT NOT NULL DEFAULT 0,
    respond_to      TEXT,
    result          TEXT,
    UNIQUE (event_id, sink)
);
CREATE INDEX outbox_due ON outbox (sink, status, next_attempt_at, id);
CREATE INDEX outbox_by_session ON outbox (sink, session_id, status, id);

-- replica: which gateway process made the attempt (host:pid).
CREATE TABLE delivery_attempts (
    id          BIGSERIAL PRIMARY KEY,
    outbox_id   BIGINT NOT NULL,
    attempt     BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    outcome     TEXT NOT NULL,
    error       TEXT,
    duration_ms BIGINT,
    replica     TEXT NOT NULL
);
CREATE INDEX attempts_by_outbox ON delivery_attempts (outbox_id, id);

CREATE TABLE spent_signatures (
    route      TEXT NOT NULL,
    mac        BYTEA NOT NULL,
    expires_at BIGINT NOT NULL,   -- Unix seconds
    PRIMARY KEY (route, mac)
);
