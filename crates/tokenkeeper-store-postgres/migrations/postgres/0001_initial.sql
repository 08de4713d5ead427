-- tokenkeeper's PostgreSQL schema, shared by every replica of one installation.
-- Only the tokens are secret: they live encrypted (with the installation key, which the
-- database never sees) in `accounts.secret`; every other column is shown by `status`.
-- Names and keys are compared and ordered bytewise (COLLATE "C"), as SQLite does.

CREATE TABLE accounts (
    name                    TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    provider                TEXT        NOT NULL,
    mode                    TEXT        NOT NULL CHECK (mode IN ('own', 'follow')),
    -- Bumped by every credential update; writers compare-and-set on it.
    version                 BIGINT      NOT NULL CHECK (version >= 1),
    -- `v1:<base64(nonce || XChaCha20-Poly1305 ciphertext)>` of {access_token, refresh_token},
    -- with the account name as associated data.
    secret                  TEXT        NOT NULL,
    expires_at              TIMESTAMPTZ NOT NULL,
    -- JSON array of strings.
    scopes                  JSONB       NOT NULL,
    subscription_type       TEXT,
    rate_limit_tier         TEXT,
    email                   TEXT,
    organization            TEXT,
    binding_kind            TEXT,
    binding_path            TEXT,
    state                   TEXT        NOT NULL DEFAULT 'active',
    created_at              TIMESTAMPTZ NOT NULL,
    updated_at              TIMESTAMPTZ NOT NULL,
    last_refreshed_at       TIMESTAMPTZ,
    refresh_token_issued_at TIMESTAMPTZ,
    usage_requests          BIGINT      NOT NULL DEFAULT 0,
    last_used_at            TIMESTAMPTZ,
    last_error              TEXT,
    CHECK ((binding_kind IS NULL) = (binding_path IS NULL))
);

-- Events outlive their account (the `removed` event is the last word on it), so no foreign key.
CREATE TABLE events (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account TEXT COLLATE "C" NOT NULL,
    kind    TEXT        NOT NULL,
    at      TIMESTAMPTZ NOT NULL,
    detail  TEXT        NOT NULL
);

CREATE INDEX events_by_account ON events (account, id);

CREATE TABLE api_keys (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name       TEXT COLLATE "C" NOT NULL,
    -- SHA-256 of the key, hex; the key itself is never stored.
    hash       TEXT        NOT NULL UNIQUE,
    -- JSON arrays of strings.
    scopes     JSONB       NOT NULL,
    accounts   JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);

-- A name may be reused once the key that had it is revoked.
CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name) WHERE revoked_at IS NULL;

-- Hourly usage buckets, added to by batched flushes; kept 35 days, and after the account is
-- removed (history, like events). `key_id` and `model` are '' for "none"
-- (a primary key cannot hold NULL, and the upsert needs one key per bucket).
CREATE TABLE usage (
    account               TEXT COLLATE "C" NOT NULL,
    key_id                TEXT COLLATE "C" NOT NULL,
    model                 TEXT COLLATE "C" NOT NULL,
    hour                  TIMESTAMPTZ NOT NULL,
    requests              BIGINT      NOT NULL,
    input_tokens          BIGINT      NOT NULL,
    output_tokens         BIGINT      NOT NULL,
    cache_read_tokens     BIGINT      NOT NULL,
    cache_creation_tokens BIGINT      NOT NULL,
    errors                BIGINT      NOT NULL,
    last_used_at          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (account, key_id, model, hour)
);

CREATE INDEX usage_by_hour ON usage (hour);

-- The refresh attempts of the last hour, one row each: the budget every replica shares.
CREATE TABLE refresh_attempts (
    account TEXT COLLATE "C" NOT NULL,
    at      TIMESTAMPTZ NOT NULL
);

CREATE INDEX refresh_attempts_by_account ON refresh_attempts (account, at);

-- Installation-wide state (alert state, sink and channel health, cooldowns), by key.
CREATE TABLE state (
    key        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    value      JSONB       NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- The change feed: one row per committed change, `seq` in commit order (writers take a
-- transaction advisory lock before drawing a `seq`, see the crate docs), announced with
-- NOTIFY tokenkeeper_changes in the same transaction. The newest 10,000 rows are kept.
CREATE TABLE changes (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account    TEXT COLLATE "C",
    kind       TEXT        NOT NULL CHECK (kind IN ('credential', 'metadata', 'removed', 'keys')),
    version    BIGINT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
