-- The hot path and the seams (0.2): what other processes need to know, and state that is
-- one per installation rather than one per process.

-- The change feed: every committed write that matters to another process leaves a row here in
-- the same transaction; `tokenkeeper.changed` is rewritten afterwards to wake watchers, who read
-- the rows after the last `seq` they saw. Old rows are pruned; a reader that fell behind the
-- oldest row resynchronises.
CREATE TABLE changes (
    seq     INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    -- NULL for changes that concern no account (API keys).
    account TEXT,
    kind    TEXT    NOT NULL CHECK (kind IN ('credential', 'metadata', 'removed', 'keys')),
    -- The credential version after a `credential` change.
    version INTEGER,
    at      INTEGER NOT NULL
) STRICT;

-- Refresh attempts of the last hour, per account, shared by every process (the hourly budget).
CREATE TABLE refresh_attempts (
    account TEXT    NOT NULL,
    at      INTEGER NOT NULL
) STRICT;

CREATE INDEX refresh_attempts_by_account ON refresh_attempts (account, at);

-- Installation-wide state as JSON documents (alert state, sink and channel health, cooldowns).
CREATE TABLE state (
    key        TEXT    NOT NULL PRIMARY KEY,
    value      TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

-- Usage in hourly buckets per account, API key ('' for none) and model ('' for none).
CREATE TABLE usage (
    account               TEXT    NOT NULL,
    key_id                TEXT    NOT NULL,
    model                 TEXT    NOT NULL,
    hour                  INTEGER NOT NULL,
    requests              INTEGER NOT NULL DEFAULT 0,
    input_tokens          INTEGER NOT NULL DEFAULT 0,
    output_tokens         INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    errors                INTEGER NOT NULL DEFAULT 0,
    last_used_at          INTEGER NOT NULL,
    PRIMARY KEY (account, key_id, model, hour)
) STRICT;

CREATE INDEX usage_by_hour ON usage (hour);
