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

-- A waitlist offer is a hold of the "seats" pool (scripts/domain/seats.lua):
-- the offer's seats, its expiry, its conversion (confirm) and its withdrawal
-- (release) are the hold's. Offers already open become holds here.
ALTER TABLE waitlist ADD COLUMN hold_id bigint REFERENCES inventory_holds (id);
DO $$
DECLARE
    r record;
    hid bigint;
BEGIN
    FOR r IN SELECT id, event_id, user_id, quantity, offer_expires_at FROM waitlist WHERE status = 'offered' LOOP
        INSERT INTO inventory_holds (pool, key, owner, quantity, expires_at)
        VALUES ('seats', r.event_id, r.user_id, r.quantity, r.offer_expires_at) RETURNING id INTO hid;
        UPDATE waitlist SET hold_id = hid WHERE id = r.id;
    END LOOP;
END $$;
CREATE UNIQUE INDEX waitlist_hold_idx ON waitlist (hold_id) WHERE hold_id IS NOT NULL;
