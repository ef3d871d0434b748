-- Issue 18: the admin console and every user's page of approved apps.
-- A disabled client is kept (its registration can be looked at and enabled again) but gets
-- nothing: no authorization, no token. Disabling revokes its grants in the same transaction.
ALTER TABLE clients ADD COLUMN disabled_at BIGINT;
-- The console lists browser sessions and a user's consents by subject.
CREATE INDEX sessions_subject ON sessions (subject);
-- What administrators did in the console (never a secret): who, what, to what, when.
CREATE TABLE admin_events (
    event_id TEXT PRIMARY KEY,
    at       BIGINT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE INDEX admin_events_at ON admin_events (at);
