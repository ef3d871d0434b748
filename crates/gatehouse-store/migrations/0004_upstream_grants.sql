-- GW-09: tokens a user obtained from an upstream MCP server's authorization server through the
-- gateway ("connect once"), sealed (AES-256-GCM under the key-encryption key), per user and
-- upstream. The owner is stored as a hash of issuer and subject.
CREATE TABLE upstream_grants (
    owner_hash TEXT NOT NULL,
    upstream   TEXT NOT NULL,
    sealed     TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (owner_hash, upstream)
);
