-- As migrations/postgres/0009_hardening.sql.

ALTER TABLE outbox ADD COLUMN event_id TEXT;
UPDATE outbox SET event_id = json_extract(payload, '$.event_id');

ALTER TABLE api_keys ADD COLUMN bound_to TEXT;

ALTER TABLE reservations ADD COLUMN owner TEXT;
