-- cognihook embedded store, schema 4: only ordered sinks pay for the per-session index.
-- Every outbox row used to enter outbox_by_session, an index keyed by session that takes each
-- insert at a random place (one more dirty page per event and commit); it is only read by
-- claims of sinks with `ordered = true`.
--
-- sink_settings: what the running configuration says of each sink, written when the gateway
--                starts (which also brings the pending rows of a changed sink in line).
-- ordered:       1 on an outbox row of an ordered sink; only those rows are in outbox_ordered,
--                and only while they are pending.
CREATE TABLE sink_settings (
    sink    TEXT PRIMARY KEY,
    ordered INTEGER NOT NULL
) WITHOUT ROWID;
ALTER TABLE outbox ADD COLUMN ordered INTEGER NOT NULL DEFAULT 0;
DROP INDEX outbox_by_session;
CREATE INDEX outbox_ordered ON outbox (sink, session_id, id) WHERE ordered = 1 AND status = 'pending';
