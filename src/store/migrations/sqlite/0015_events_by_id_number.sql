-- cognihook embedded store, schema 15: an event's row is found from its id, without an index.
-- Event ids are ULIDs whose first 63 bits (48 of time, 15 of a sequence within the
-- millisecond) are unique in the process that made them (src/event_id.rs); that number is the
-- event's rowid. The index on the id (`event_id TEXT PRIMARY KEY`) was one more B-tree
-- insert per event, about a fifth of the projector's work (bench/README.md, thirty-eighth
-- and thirty-ninth sessions). `event_row(id)` is that number, registered on every connection.
--
-- events_moved: the events whose number is missing (an id that is no ULID) or was taken
--               (ids made before schema 15 are random after their time, so two can share
--               one): each gets a negative rowid, listed here. Readers look here first
--               (`event_row!` in store/sqlite/mod.rs); the table is usually empty.
--
-- The rewrite below copies every event once, at the upgrade.
CREATE TABLE events_moved (
    event_id TEXT PRIMARY KEY,
    row      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE events_numbered (
    event_id       TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    route          TEXT NOT NULL,
    session_id     TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    state_version  INTEGER NOT NULL,
    simulated      INTEGER NOT NULL,
    received_at    TEXT NOT NULL,
    committed_at   INTEGER NOT NULL,
    body           TEXT NOT NULL,
    answer         BLOB,
    answer_status  INTEGER,
    outbox_first   INTEGER,
    outbox_last    INTEGER
);
INSERT OR IGNORE INTO events_numbered (rowid, event_id, correlation_id, route, session_id,
        event_type, state_version, simulated, received_at, committed_at, body, answer,
        answer_status, outbox_first, outbox_last)
    SELECT event_row(event_id), event_id, correlation_id, route, session_id, event_type,
           state_version, simulated, received_at, committed_at, body, answer, answer_status,
           outbox_first, outbox_last
    FROM events WHERE event_row(event_id) IS NOT NULL ORDER BY rowid;
INSERT INTO events_moved (event_id, row)
    SELECT event_id, -row_number() OVER (ORDER BY rowid) FROM events e
    WHERE NOT EXISTS (SELECT 1 FROM events_numbered n
                      WHERE n.rowid = event_row(e.event_id) AND n.event_id = e.event_id);
INSERT INTO events_numbered (rowid, event_id, correlation_id, route, session_id, event_type,
        state_version, simulated, received_at, committed_at, body, answer, answer_status,
        outbox_first, outbox_last)
    SELECT m.row, e.event_id, e.correlation_id, e.route, e.session_id, e.event_type,
           e.state_version, e.simulated, e.received_at, e.committed_at, e.body, e.answer,
           e.answer_status, e.outbox_first, e.outbox_last
    FROM events e JOIN events_moved m ON m.event_id = e.event_id;
-- A store from before the correlation index moved (schema 13) still holds it: it is made
-- again on the new table by the code that runs this (`migrate`), then moved as before.
DROP TABLE events;
ALTER TABLE events_numbered RENAME TO events;
