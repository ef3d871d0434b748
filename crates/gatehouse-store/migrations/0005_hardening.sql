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
-- Refresh rotation links each token to its parent, and a parent to its successor and its grace
-- successor, so the grace use of a rotated token ends once a successor is used, and using one
-- successor retires the other (no second live branch). Looked up by primary key only: no index
-- to keep up on the token endpoint's hot path.
ALTER TABLE refresh_tokens ADD COLUMN parent_hash TEXT;
ALTER TABLE refresh_tokens ADD COLUMN child_hash TEXT;
ALTER TABLE refresh_tokens ADD COLUMN grace_child TEXT;
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
