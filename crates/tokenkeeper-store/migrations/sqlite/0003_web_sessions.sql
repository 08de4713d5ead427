-- Web sessions in the store (0.3), so that a browser signed in on one replica is signed in on
-- every replica, and a sign-out anywhere ends it everywhere.

-- One row per signed-in browser. `hash` is the SHA-256 (hex) of the session cookie: the cookie
-- itself is never stored, so reading the database signs nobody in.
CREATE TABLE web_sessions (
    hash       TEXT    NOT NULL PRIMARY KEY,
    csrf       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    -- The one-shot message for the next page, as the page encoded it.
    flash      TEXT
) STRICT;

CREATE INDEX web_sessions_by_expiry ON web_sessions (expires_at);
