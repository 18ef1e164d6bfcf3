-- Operator rules for accounts; edit and reload (kill -HUP) to apply.
return {
  token_ttl_minutes = 30,   -- sliding: every authenticated request pushes expiry forward
  token_max_days = 30,      -- ...but never past this long after the login (log in again)
  password_reset_minutes = 60, -- a mailed reset link works once, for this long
  -- true: a new account must confirm its address (a code mailed at
  -- registration, POST /auth/verify-email) before it can log in
  verify_email = false,
  verify_email_hours = 48,  -- how long that code works
  min_password_length = 8,
  max_password_length = 1024,

  -- Rate limits (API.md "Rate limits and overload"), answered 429. Each is a
  -- bucket of `limit` attempts that refills evenly over `window` seconds
  -- (10 per 300 s: 10 at once, then one more every 30 s), counted in Redis
  -- for every worker and instance. EVENTLY_LIMIT_<NAME> overrides one without
  -- an edit: EVENTLY_LIMIT_LOGIN_ADDRESS=100/60, or =off.
  limits = {
    -- every login attempt from one client address, whatever the account: the
    -- password hashing one address can make us do (credential stuffing)
    login_address = { name = "login-address", limit = 30, window = 60 },
    -- wrong passwords for one account from one address: stops guessing
    -- without letting a stranger lock the owner out (a right password gives
    -- its unit back)
    login_account_address = { name = "login-account-address", limit = 10, window = 300 },
    -- wrong passwords for one account from all addresses: caps guessing
    -- spread over many addresses. Beyond it the account answers only
    -- addresses it logged in from within known_address_days.
    login_account = { name = "login-account", limit = 100, window = 900 },
    -- registrations from one client address
    register_address = { name = "register-address", limit = 20, window = 3600 },
    -- password reset mails asked for, from one address and to one account
    reset_address = { name = "reset-address", limit = 10, window = 3600 },
    reset_account = { name = "reset-account", limit = 3, window = 3600 },
    -- address confirmation mails asked for again, to one account
    verify_account = { name = "verify-account", limit = 3, window = 3600 },
  },
  known_address_days = 30,
}
