-- Events. available = capacity - tickets held or booked; it is only ever
-- changed by conditional updates (the reservation primitive), never read
-- then written.
CREATE TABLE events (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL,
    description     text NOT NULL DEFAULT '',
    venue           text NOT NULL,
    starts_at       timestamptz NOT NULL,
    ends_at         timestamptz,
    capacity        integer NOT NULL CHECK (capacity >= 1),
    available       integer NOT NULL CHECK (available >= 0 AND available <= capacity),
    price_cents     bigint NOT NULL CHECK (price_cents >= 0),
    currency        text NOT NULL DEFAULT 'EUR' CHECK (currency ~ '^[A-Z]{3}$'),
    max_per_booking integer NOT NULL DEFAULT 10 CHECK (max_per_booking >= 1),
    status          text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'published', 'cancelled')),
    sales_start     timestamptz,
    sales_end       timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at IS NULL OR ends_at > starts_at),
    CHECK (sales_start IS NULL OR sales_end IS NULL OR sales_end > sales_start)
);
CREATE INDEX events_starts_at_idx ON events (starts_at);
CREATE INDEX events_status_starts_at_idx ON events (status, starts_at);
