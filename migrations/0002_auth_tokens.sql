-- Bearer tokens. Only a SHA-256 of the token is stored, so a leaked table
-- grants nothing; expires_at slides forward on use; revoked_at ends a token
-- at once (logout).
CREATE TABLE auth_tokens (
    token_hash text PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX auth_tokens_user_idx ON auth_tokens (user_id);
