-- Issue 17: the device authorization grant (RFC 8628). One row per device code; the user code
-- is looked up by its hash and is unique while the row lives. `status` moves pending →
-- approved | denied, and approved → used exactly once; the grant is created at approval.
CREATE TABLE device_codes (
    device_hash    TEXT PRIMARY KEY,
    user_code_hash TEXT NOT NULL UNIQUE,
    client_id      TEXT NOT NULL,
    scope          TEXT NOT NULL,
    resource       TEXT NOT NULL,
    expires_at     BIGINT NOT NULL,
    interval_secs  BIGINT NOT NULL,
    last_poll_at   BIGINT,
    status         TEXT NOT NULL,
    grant_id       TEXT,
    subject        TEXT,
    claims         TEXT
);

-- Secrets every replica must share that are not keys (the DPoP nonce MAC secret): created once
-- by whichever replica gets there first.
CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
