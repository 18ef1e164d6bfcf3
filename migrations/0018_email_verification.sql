-- Optional e-mail verification (rules/auth.lua verify_email, issue 15): an
-- account whose address was never confirmed has no email_verified_at. The
-- accounts made before this migration count as confirmed.
ALTER TABLE users ADD COLUMN email_verified_at timestamptz;
UPDATE users SET email_verified_at = created_at;
