-- cognihook embedded store, schema 17: events kept beside the database without an events row.
-- event_runs: one row per run of such events, each event's whole record in the bodies'
--             files (schema 16's files, store/sqlite/bodies.rs); `places` holds, for each
--             event of the run in rowid order, its rowid and its place in the files (two
--             little-endian i64s). Runs never overlap: `first` is above every earlier run's
--             `last`. An event is in its events row or in a run, never both
--             (store/sqlite/beside.rs). Written by no version yet: the readers come first.
CREATE TABLE event_runs (
    first  INTEGER PRIMARY KEY,
    last   INTEGER NOT NULL,
    places BLOB NOT NULL
);
