-- Operator rules for bookings; edit and reload (kill -HUP) to apply.
return {
  -- booking is open while the event is published, before it starts, and inside
  -- its sales window when one is set
  allow_after_start = false,
  -- batch concurrent bookings of one event in a worker into one statement
  -- (see scripts/domain/seats.lua); false: one statement per booking
  coalesce = true,
}
