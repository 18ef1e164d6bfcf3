-- Operator rules for the live channel (/ws); edit and reload (kill -HUP) to apply.
-- Socket caps and lifetime are settings of the platform (README, Configuration:
-- ws_max_per_worker, ws_max_per_user, ws_max_lifetime).
return {
  -- an open socket looks at its token again at the token's expiry, and at the
  -- latest this often (a revocation normally closes it at once, through the
  -- cache's fan-out; this catches one whose word was lost)
  token_recheck_seconds = 300,

  -- WebSocket connects (evently.limit, answered 429 before any upgrade): per
  -- user, and per client address (the 401s of made-up tokens count there too)
  limits = {
    connect_user = { name = "ws-connect-user", limit = 30, window = 60 },
    connect_address = { name = "ws-connect-address", limit = 120, window = 60 },
  },
}
