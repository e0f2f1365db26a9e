-- cognihook embedded store, schema 2: signatures that may be used only once
-- (hmac-sha256-timestamped). A row lives until its signature would be stale anyway.
CREATE TABLE spent_signatures (
    route      TEXT NOT NULL,
    mac        BLOB NOT NULL,
    expires_at INTEGER NOT NULL,   -- Unix seconds
    PRIMARY KEY (route, mac)
) WITHOUT ROWID;
