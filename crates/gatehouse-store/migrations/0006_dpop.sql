-- Issue 17: refresh tokens of public clients are bound to the DPoP key that obtained them
-- (RFC 9449 §5): the RFC 7638 thumbprint, or NULL when unbound.
ALTER TABLE refresh_tokens ADD COLUMN dpop_jkt TEXT;
