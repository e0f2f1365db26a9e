-- cognihook embedded store, schema 16: an event's body may be kept beside the database.
-- body_at: where the projector appended the body in the store's bodies files (the file's
--          number above bit 40, the offset below; store/sqlite/bodies.rs), the row's `body`
--          then empty; NULL when the body is in `body`, as in every row written before.
-- Readers read `event_body(body, body_at, rowid)`, a function every connection has.
ALTER TABLE events ADD COLUMN body_at INTEGER;
