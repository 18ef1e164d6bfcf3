-- Operator rules for bookings, read once when a worker loads the scripts: edit
-- and reload (kill -HUP) to apply; `evently check` and a reload refuse a bad
-- max_per_user (domain/ticket_limit.lua).
return {
  -- Booking is open while the event is published and inside its sales window
  -- when one is set (the seats pool's `open` condition, domain/seats.lua).
  -- false: also only before the event starts; true: after its start too.
  -- domain/bookings.lua reads it again to answer a refusal not-on-sale.
  allow_after_start = false,
  -- true: a booking without waitlist_entry_id goes to the worker's queue for
  -- its event in the evently.inventory engine (core/inventory.c, through
  -- domain/seats.lua take): while one statement for the event is in flight,
  -- later takes wait and the next statement serves them all; an
  -- Idempotency-Key's answer is stored by that statement. false: each
  -- booking is its own take (domain/bookings.lua), in a transaction when the
  -- per-user limit locks the event row or an Idempotency-Key is stored with
  -- it. Waitlist conversions are never batched.
  coalesce = true,
  -- most tickets one user may hold for one event (the sum of their confirmed
  -- bookings, waitlist conversions included; cancelled ones give theirs
  -- back); nil: no limit. Over it a booking is answered 409 limit-exceeded;
  -- joining the waitlist is refused for more than the user may still hold.
  -- Read by domain/ticket_limit.lua (must be nil or an integer >= 1).
  max_per_user = nil,
}
