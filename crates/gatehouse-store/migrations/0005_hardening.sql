-- Issue 14 (AS hardening).
-- Remembered consent is bound to exactly what the user approved (T20): user, client, resource,
-- scopes, and the redirect URIs the code went to (a loopback port not approved before shows a
-- page). Old rows knew neither resource nor redirect, so they are dropped: users see consent once
-- more.
DROP TABLE consents;
CREATE TABLE consents (
    subject       TEXT NOT NULL,
    client_id     TEXT NOT NULL,
    resource      TEXT NOT NULL,
    scope         TEXT NOT NULL,
    redirect_uris TEXT NOT NULL,
    granted_at    BIGINT NOT NULL,
    PRIMARY KEY (subject, client_id, resource)
);
-- Refresh rotation keeps each token's parent, so the grace use of a rotated token ends once its
-- successor is used, and using one child retires its siblings (no second live branch).
ALTER TABLE refresh_tokens ADD COLUMN parent_hash TEXT;
CREATE INDEX refresh_parent ON refresh_tokens (parent_hash);
-- Revocations are read by every guard and gateway in the process (and on other replicas) by time.
CREATE INDEX grants_revoked ON grants (revoked_at);
CREATE INDEX grants_client ON grants (client_id);
-- Counters for login throttling and registration limits, shared by every replica on the store.
CREATE TABLE throttles (
    key_hash     TEXT PRIMARY KEY,
    window_start BIGINT NOT NULL,
    count        BIGINT NOT NULL,
    locked_until BIGINT NOT NULL DEFAULT 0,
    expires_at   BIGINT NOT NULL
);
