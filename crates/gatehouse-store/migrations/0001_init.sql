-- Gatehouse authorization server schema (one file for SQLite and PostgreSQL: only TEXT and BIGINT). Secrets (client secrets, codes, refresh tokens, session
-- ids) are stored only as SHA-256 hashes; passwords as argon2id PHC strings.
CREATE TABLE clients (
    client_id        TEXT PRIMARY KEY,
    secret_hash      TEXT,
    auth_method      TEXT NOT NULL,
    redirect_uris    TEXT NOT NULL,
    grant_types      TEXT NOT NULL,
    client_name      TEXT,
    scope            TEXT,
    source           TEXT NOT NULL,
    application_type TEXT,
    metadata         TEXT NOT NULL,
    created_at       BIGINT NOT NULL
);
CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    subject       TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    disabled      BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL
);
CREATE TABLE consents (
    subject    TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    scope      TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (subject, client_id)
);
CREATE TABLE grants (
    grant_id   TEXT PRIMARY KEY,
    subject    TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    scope      TEXT NOT NULL,
    resource   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX grants_subject ON grants (subject, client_id);
CREATE TABLE auth_codes (
    code_hash      TEXT PRIMARY KEY,
    grant_id       TEXT NOT NULL,
    client_id      TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    scope          TEXT NOT NULL,
    resource       TEXT NOT NULL,
    subject        TEXT NOT NULL,
    auth_time      BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    used_at        BIGINT
);
CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    grant_id    TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    scope       TEXT NOT NULL,
    resource    TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    rotated_at  BIGINT,
    reuse_count BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX refresh_grant ON refresh_tokens (grant_id);
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    alg         TEXT NOT NULL,
    private_der TEXT NOT NULL,
    public_jwk  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    retired_at  BIGINT
);
CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,
    subject    TEXT NOT NULL,
    auth_time  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE pending_authorizations (
    id_hash      TEXT PRIMARY KEY,
    request      TEXT NOT NULL,
    binding_hash TEXT NOT NULL,
    csrf_hash    TEXT NOT NULL,
    expires_at   BIGINT NOT NULL
);
