-- Indexes for the retention job (scripts/domain/retention.lua, stream.prune):
-- without them, every run would scan whole tables to find that nothing is old
-- enough yet, a cost that grows with history. Append-mostly tables get BRIN
-- indexes on their time column (a few pages, nearly free to keep up on the
-- booking path); rows whose time is set later (reading a notification,
-- settling a hold, revoking a token) get B-trees over just those rows.
CREATE INDEX outbox_created_brin ON outbox USING brin (created_at);
CREATE INDEX notifications_created_brin ON notifications USING brin (created_at);
CREATE INDEX idempotency_keys_created_brin ON idempotency_keys USING brin (created_at);
CREATE INDEX sent_emails_sent_brin ON sent_emails USING brin (sent_at);
CREATE INDEX dead_letters_created_brin ON dead_letters USING brin (created_at);
CREATE INDEX notifications_read_idx ON notifications (read_at) WHERE read_at IS NOT NULL;
CREATE INDEX inventory_holds_settled_idx ON inventory_holds (settled_at) WHERE settled_at IS NOT NULL;
CREATE INDEX auth_tokens_gone_idx ON auth_tokens ((coalesce(revoked_at, expires_at)));
