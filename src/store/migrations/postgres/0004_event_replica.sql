-- Which replica committed each event (`host:pid`), so that after a crash a replica writes
-- again only the audit lines of its own events (see telemetry::audit). NULL on older rows.
ALTER TABLE events ADD COLUMN replica TEXT;
