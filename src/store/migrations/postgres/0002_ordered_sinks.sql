-- Only ordered sinks pay for the per-session index (see the embedded store's schema 4):
-- outbox_by_session took every insert at a random place and is read only by ordered claims.
-- sink_settings is written when a gateway starts; `ordered` marks the rows of ordered sinks.
CREATE TABLE sink_settings (
    sink    TEXT PRIMARY KEY,
    ordered BOOLEAN NOT NULL
);
ALTER TABLE outbox ADD COLUMN ordered BOOLEAN NOT NULL DEFAULT FALSE;
DROP INDEX outbox_by_session;
CREATE INDEX outbox_ordered ON outbox (sink, session_id, id) WHERE ordered AND status = 'pending';
