-- Operator rules for bookings; edit and reload (kill -HUP) to apply.
return {
  -- booking is open while the event is published, before it starts, and inside
  -- its sales window when one is set
  allow_after_start = false,
  -- batch concurrent bookings of one event in a worker into one statement
  -- (see scripts/domain/seats.lua); false: one statement per booking
  coalesce = true,
  -- most tickets one user may hold for one event (the sum of their confirmed
  -- bookings, waitlist conversions included; cancelled ones give theirs
  -- back); nil: no limit. Over it a booking is answered 409 limit-exceeded.
  max_per_user = nil,
}
