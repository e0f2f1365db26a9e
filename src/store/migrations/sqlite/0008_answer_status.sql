-- cognihook embedded store, schema 8: an answer's status beside its body, so that everything
-- about an event's answer is found by its event id. A session's timeline used to find its
-- events' answers through `idempotency`, which has no index by event id: a scan of every key
-- in the window per page shown.
--
-- The rows of earlier versions are brought in line once, here: a status for each answer of
-- schema 7, and the answers that schema 6 and before kept in `idempotency.body` moved into
-- `answers` (a temporary index by event id makes this one pass over the window's keys).
-- From here on readers take status and body from `answers` only; `idempotency.status` keeps
-- the first answer's status and is not updated when a `respond` upstream replaces it.
ALTER TABLE answers ADD COLUMN status INTEGER;
CREATE INDEX upgrade_idempotency_by_event ON idempotency (event_id);
UPDATE answers SET status =
    (SELECT i.status FROM idempotency i WHERE i.event_id = answers.event_id);
INSERT OR IGNORE INTO answers (event_id, body, status)
    SELECT event_id, body, status FROM idempotency WHERE length(body) > 0;
UPDATE idempotency SET body = x'' WHERE length(body) > 0;
DROP INDEX upgrade_idempotency_by_event;
