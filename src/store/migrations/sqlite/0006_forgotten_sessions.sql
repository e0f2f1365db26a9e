-- cognihook embedded store, schema 6: forgetting a session (SPEC §12.3).
-- An outbox row of a forgotten session that was pending or dead becomes status 'forgotten'
-- (never sent, never replayed; the journey keeps its attempts). Its events keep their ids,
-- times and outcomes; their body is reduced to identifiers with "forgotten": true.
-- forgotten_sessions: the last time each session was forgotten and what that did.
CREATE TABLE forgotten_sessions (
    session_id TEXT PRIMARY KEY,
    at         INTEGER NOT NULL,
    events     INTEGER NOT NULL,
    cancelled  INTEGER NOT NULL
) WITHOUT ROWID;
