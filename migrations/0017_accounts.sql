-- Accounts an operator can stop, and passwords a user can change or reset
-- (issue 15). A disabled user cannot log in, and disabling revokes every
-- token at once; a reset token is stored as its SHA-256, like bearer tokens,
-- used once, and short-lived.
ALTER TABLE users ADD COLUMN disabled_at timestamptz;

CREATE TABLE password_resets (
    token_hash text PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX password_resets_user_idx ON password_resets (user_id);
CREATE INDEX password_resets_expires_idx ON password_resets (expires_at);
-- logout-all and password changes revoke a user's live tokens
CREATE INDEX auth_tokens_user_live_idx ON auth_tokens (user_id) WHERE revoked_at IS NULL;
