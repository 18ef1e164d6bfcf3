-- Operator rules for bookings; edit and reload (kill -HUP) to apply.
return {
  -- booking is open while the event is published, before it starts, and inside
  -- its sales window when one is set
  allow_after_start = false,
}
