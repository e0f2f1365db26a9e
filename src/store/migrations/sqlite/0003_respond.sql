-- cognihook embedded store, schema 3: answers from a backend (SPEC §5.1).
-- respond_to: on a route's `respond.upstream` row, the `on_late` sink that gets the upstream's
--             result ('' when there is none); NULL on every other row.
-- result:     on an `on_late` row, the upstream's answer (JSON text) it carries.
ALTER TABLE outbox ADD COLUMN respond_to TEXT;
ALTER TABLE outbox ADD COLUMN result TEXT;
