-- tokenkeeper's SQLite schema. Timestamps are integer milliseconds since the Unix epoch (UTC).
-- Only the tokens are secret: they live encrypted in `accounts.secret`; every other column is
-- shown by `status` and kept in clear.

CREATE TABLE accounts (
    name                    TEXT    NOT NULL PRIMARY KEY,
    provider                TEXT    NOT NULL,
    mode                    TEXT    NOT NULL CHECK (mode IN ('own', 'follow')),
    -- Bumped by every credential update; writers compare-and-set on it.
    version                 INTEGER NOT NULL CHECK (version >= 1),
    -- `v1:<base64(nonce || XChaCha20-Poly1305 ciphertext)>` of {access_token, refresh_token},
    -- with the account name as associated data.
    secret                  TEXT    NOT NULL,
    expires_at              INTEGER NOT NULL,
    -- JSON array of strings.
    scopes                  TEXT    NOT NULL,
    subscription_type       TEXT,
    rate_limit_tier         TEXT,
    email                   TEXT,
    organization            TEXT,
    binding_kind            TEXT,
    binding_path            TEXT,
    state                   TEXT    NOT NULL DEFAULT 'active',
    created_at              INTEGER NOT NULL,
    updated_at              INTEGER NOT NULL,
    last_refreshed_at       INTEGER,
    refresh_token_issued_at INTEGER,
    usage_requests          INTEGER NOT NULL DEFAULT 0,
    last_used_at            INTEGER,
    last_error              TEXT,
    CHECK ((binding_kind IS NULL) = (binding_path IS NULL))
) STRICT;

-- Events outlive their account (the `removed` event is the last word on it), so no foreign key.
CREATE TABLE events (
    id      INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    account TEXT    NOT NULL,
    kind    TEXT    NOT NULL,
    at      INTEGER NOT NULL,
    detail  TEXT    NOT NULL
) STRICT;

CREATE INDEX events_by_account ON events (account, id);

CREATE TABLE api_keys (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    -- SHA-256 of the key, hex; the key itself is never stored.
    hash       TEXT    NOT NULL UNIQUE,
    -- JSON arrays of strings.
    scopes     TEXT    NOT NULL,
    accounts   TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;

-- A name may be reused once the key that had it is revoked.
CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name) WHERE revoked_at IS NULL;
