-- What the hardening pass needs to store.

-- An outbox record's movement, so that a record can be dropped once the ledger recorded
-- it (onhand dev, whose broker keeps nothing across a restart) rather than once Kafka
-- acknowledged it.
ALTER TABLE outbox ADD COLUMN event_id TEXT COLLATE "C";
UPDATE outbox SET event_id = payload::json->>'event_id';

-- The source a key may speak for: 'store:store-012', or 'erp:erp-main' (system:instance);
-- NULL for a key bound to none.
ALTER TABLE api_keys ADD COLUMN bound_to TEXT;

-- The key that made a reservation: only it (or an admin) reads, commits or cancels it.
-- NULL for reservations made before keys owned them.
ALTER TABLE reservations ADD COLUMN owner TEXT;
