-- private_key_jwt (RFC 7523): each client assertion's jti is accepted once until it expires.
CREATE TABLE assertion_jtis (
    jti_hash   TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
