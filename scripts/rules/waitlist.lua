-- Operator rules for the waitlist; edit and reload (kill -HUP) to apply.
return {
  offer_minutes = 15,       -- how long offered seats are held for the user
  sweep_seconds = 1,        -- how often each worker looks for expired offers
}
