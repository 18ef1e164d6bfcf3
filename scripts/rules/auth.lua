-- Operator rules for accounts; edit and reload (kill -HUP) to apply.
return {
  token_ttl_minutes = 30,   -- sliding: every authenticated request pushes expiry forward
  min_password_length = 8,
  max_password_length = 1024,
}
