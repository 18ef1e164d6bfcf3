-- Operator rules for the live channel (/ws); edit and reload (kill -HUP) to apply.
-- Socket caps and lifetime are settings of the platform (README, Configuration:
-- ws_max_per_worker, ws_max_per_user, ws_max_lifetime).
return {
  -- an open socket looks at its token again at the token's expiry, and at the
  -- latest this often (a revocation normally closes it at once, through the
  -- cache's fan-out; this catches one whose word was lost)
  token_recheck_seconds = 300,
}
