-- How long old rows are kept (domain/retention.lua deletes the rest, a batch
-- at a time); edit and reload (kill -HUP) to apply.
return {
  every_seconds = 60,           -- how often worker 0 of each instance prunes
  batch = 1000,                 -- rows per DELETE; at most 10 batches per table per run
  idempotency_hours = 48,       -- Idempotency-Key answers (API.md: at least 24 hours)
  tokens_days = 7,              -- after a token expired or was revoked
  holds_days = 7,               -- settled inventory holds no waitlist entry points at
  notifications_read_days = 90, -- in-app notifications once read
  notifications_days = 365,     -- any in-app notification
  sent_emails_days = 30,        -- the record that a mail went out (stops a resend)
  outbox_days = 7,              -- domain events every consumer has (and Kafka, if used)
  dead_letters_days = 30,       -- messages a consumer gave up on
}
