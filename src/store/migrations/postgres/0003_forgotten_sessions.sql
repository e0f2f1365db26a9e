-- Forgetting a session (SPEC §12.3); see the embedded store's schema 6.
CREATE TABLE forgotten_sessions (
    session_id TEXT PRIMARY KEY,
    at         BIGINT NOT NULL,
    events     BIGINT NOT NULL,
    cancelled  BIGINT NOT NULL
);
