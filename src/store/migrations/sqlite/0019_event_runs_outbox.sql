-- cognihook embedded store, schema 19: events with outbox rows are kept beside the database
-- too (store/sqlite/beside.rs). A run names the span of its events' outbox row ids
-- (`outbox_first` to `outbox_last`, both NULL when none of its events has one), so that
-- retention finds the rows of the events it drops, as `events.outbox_first/_last` do for an
-- events row. Runs written before have no event with an outbox row: NULL is right for them.
ALTER TABLE event_runs ADD COLUMN outbox_first INTEGER;
ALTER TABLE event_runs ADD COLUMN outbox_last INTEGER;
