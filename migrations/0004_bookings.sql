-- Bookings, the transactional outbox, and idempotency keys.
CREATE TABLE bookings (
    id           bigserial PRIMARY KEY,
    event_id     bigint NOT NULL REFERENCES events (id),
    user_id      bigint NOT NULL REFERENCES users (id),
    quantity     integer NOT NULL CHECK (quantity >= 1),
    status       text NOT NULL CHECK (status IN ('confirmed', 'cancelled')),
    total_cents  bigint NOT NULL CHECK (total_cents >= 0),
    currency     text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    cancelled_at timestamptz,
    CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL))
);
CREATE INDEX bookings_user_idx ON bookings (user_id, id);
CREATE INDEX bookings_event_idx ON bookings (event_id, id);

-- Domain events, written in the same statement or transaction as the change
-- they describe; a relay delivers them (Kafka, or in-process consumers).
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    event_type   text NOT NULL,
    aggregate_id bigint NOT NULL,       -- the event id: one event's messages stay in order
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;

-- Idempotency-Key: the stored answer of the first request with a key.
CREATE TABLE idempotency_keys (
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key           text NOT NULL,
    request_hash  text NOT NULL,
    status        integer,              -- NULL while the first request is in flight
    response      jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
