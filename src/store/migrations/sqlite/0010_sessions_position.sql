-- cognihook embedded store, schema 10.
-- The sessions table is written behind the other projected tables: the projector keeps the
-- sessions changed since its last write of them and writes each once, every second or so.
-- `sessions_lsn` is how far the log is applied to `sessions` (never past `projected_lsn`);
-- recovery applies the sessions of the records between the two.
ALTER TABLE log_position ADD COLUMN sessions_lsn INTEGER;
UPDATE log_position SET sessions_lsn = projected_lsn;
