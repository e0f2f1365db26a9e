-- cognihook embedded store, schema 11: an outbox row costs fewer B-tree writes.
-- Each event's outbox rows were written into five B-trees and checked against a foreign key;
-- without what goes here the projector's work per event with one sink falls by a sixth
-- (bench/callgrind.sh with SINK=1: 53.6k to 44.5k instructions).
--
-- id:            given out by the store (next_outbox_id), never by SQLite, so AUTOINCREMENT
--                (which wrote sqlite_sequence on every insert) goes. Ids are still never
--                reused: before rows are deleted, log_position.outbox_id_floor is raised to
--                the highest id in the table.
-- UNIQUE (event_id, sink) and the foreign key to events go. An event's rows are found from
--                its own row: outbox_first..outbox_last bracket the ids it was accepted with;
--                rows added later (`on_late` rows, marked `late`) are in the small index
--                outbox_late. No path inserts a second row for an event and sink, and
--                retention keeps an event while any of its rows is left (project::maintain).
-- outbox_due:    pending rows only, by (sink, next_attempt_at): a settled row leaves it
--                instead of moving inside it.
-- outbox_dead:   the dead letters, by sink and time (counts and listings).
-- delivered_ms, delivered_by: the delivered attempt's duration and replica, kept in the row
--                instead of a `delivery_attempts` record (and its index entry) per row.
ALTER TABLE log_position ADD COLUMN outbox_id_floor INTEGER NOT NULL DEFAULT 0;
UPDATE log_position SET outbox_id_floor = max(
    coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0),
    coalesce((SELECT max(id) FROM outbox), 0));
ALTER TABLE events ADD COLUMN outbox_first INTEGER;
ALTER TABLE events ADD COLUMN outbox_last INTEGER;
UPDATE events SET (outbox_first, outbox_last) =
    (SELECT min(o.id), max(o.id) FROM outbox o
     WHERE o.event_id = events.event_id AND o.result IS NULL)
WHERE event_id IN (SELECT event_id FROM outbox);
CREATE TABLE outbox_lean (
    id              INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL,
    sink            TEXT NOT NULL,
    route           TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until     INTEGER,
    lease_owner     TEXT,
    last_error      TEXT,
    failure_class   TEXT,
    reason          TEXT,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    dead_at         INTEGER,
    replays         INTEGER NOT NULL DEFAULT 0,
    respond_to      TEXT,
    result          TEXT,
    ordered         INTEGER NOT NULL DEFAULT 0,
    late            INTEGER NOT NULL DEFAULT 0,
    delivered_ms    INTEGER,
    delivered_by    TEXT
);
INSERT INTO outbox_lean (id, event_id, sink, route, session_id, status, attempts,
                         next_attempt_at, lease_until, lease_owner, last_error, failure_class,
                         reason, created_at, delivered_at, dead_at, replays, respond_to, result,
                         ordered, late)
SELECT id, event_id, sink, route, session_id, status, attempts, next_attempt_at, lease_until,
       lease_owner, last_error, failure_class, reason, created_at, delivered_at, dead_at,
       replays, respond_to, result, ordered, result IS NOT NULL
FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_lean RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (sink, next_attempt_at) WHERE status = 'pending';
CREATE INDEX outbox_dead ON outbox (sink, dead_at) WHERE status = 'dead';
CREATE INDEX outbox_ordered ON outbox (sink, session_id, id) WHERE ordered = 1 AND status = 'pending';
CREATE INDEX outbox_late ON outbox (event_id) WHERE late = 1;
