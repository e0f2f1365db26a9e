-- cognihook embedded store, schema 5: the database becomes a projection of the store's log
-- (the directory `<database name>.log/` beside this file), which is the commit point.
--
-- log_position: how far the log has been applied to this database; moved in the same
--               transaction as the records it counts. A database of an earlier schema holds
--               no record of a log, so it starts at 0 with an empty log.
CREATE TABLE log_position (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    projected_lsn INTEGER NOT NULL
);
INSERT INTO log_position (id, projected_lsn) VALUES (1, 0);
