-- Waitlist entries: waiting -> offered (seats held until offer_expires_at)
-- -> converted | expired; or cancelled by their owner.
CREATE TABLE waitlist (
    id               bigserial PRIMARY KEY,
    event_id         bigint NOT NULL REFERENCES events (id),
    user_id          bigint NOT NULL REFERENCES users (id),
    quantity         integer NOT NULL CHECK (quantity >= 1),
    status           text NOT NULL DEFAULT 'waiting'
                     CHECK (status IN ('waiting', 'offered', 'converted', 'expired', 'cancelled')),
    offer_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'offered') = (offer_expires_at IS NOT NULL) OR status IN ('converted', 'expired'))
);
CREATE INDEX waitlist_event_waiting_idx ON waitlist (event_id, id) WHERE status = 'waiting';
CREATE INDEX waitlist_offered_idx ON waitlist (offer_expires_at) WHERE status = 'offered';
CREATE INDEX waitlist_user_idx ON waitlist (user_id, id);

-- In-app notifications.
CREATE TABLE notifications (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    type       text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    read_at    timestamptz
);
CREATE INDEX notifications_user_idx ON notifications (user_id, id DESC);

ALTER TABLE bookings ADD COLUMN waitlist_entry_id bigint REFERENCES waitlist (id);
CREATE UNIQUE INDEX bookings_waitlist_entry_idx ON bookings (waitlist_entry_id) WHERE waitlist_entry_id IS NOT NULL;
