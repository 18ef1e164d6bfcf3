-- Holds of evently.inventory (core/inventory.c): units taken from a pool row
-- for an owner until expires_at. held -> confirmed | released | expired; each
-- transition is a conditional UPDATE of the hold in the statement (or
-- transaction) that also moves the units, so a hold settles exactly once.
CREATE TABLE inventory_holds (
    id         bigserial PRIMARY KEY,
    pool       text NOT NULL,
    key        bigint NOT NULL,
    owner      bigint NOT NULL,
    quantity   integer NOT NULL CHECK (quantity >= 1),
    state      text NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'confirmed', 'released', 'expired')),
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    settled_at timestamptz,
    CHECK ((state = 'held') = (settled_at IS NULL))
);
-- the sweeper's scan: overdue holds of one pool
CREATE INDEX inventory_holds_due_idx ON inventory_holds (pool, expires_at) WHERE state = 'held';
CREATE INDEX inventory_holds_key_idx ON inventory_holds (pool, key) WHERE state = 'held';
