-- Login federated to an upstream OIDC identity provider: the in-flight logins, and the claims
-- (groups, email, name) a session and the grants made in it carry into access tokens.
CREATE TABLE upstream_logins (
    state_hash   TEXT PRIMARY KEY,
    pending_hash TEXT NOT NULL,
    verifier     TEXT NOT NULL,
    nonce        TEXT NOT NULL,
    expires_at   BIGINT NOT NULL
);
ALTER TABLE sessions ADD COLUMN claims TEXT;
ALTER TABLE grants ADD COLUMN claims TEXT;
ALTER TABLE auth_codes ADD COLUMN claims TEXT;
