-- The audit trail's reads (`GET /v1/movements`, `GET /v1/stock/{sku}/{location}/history`):
-- every filter of the movements route is served by one of these indexes, newest recorded
-- first, and a level's history finds the count it starts from without scanning the level.
--
-- On a large table, build them beforehand without blocking the ledger, with the same
-- names (`CREATE INDEX CONCURRENTLY IF NOT EXISTS ...`); this migration then finds them
-- and does nothing (docs/operations/history.md).

-- No filter, or only a time range.
CREATE INDEX IF NOT EXISTS movements_recorded ON movements (recorded_at, event_id);
CREATE INDEX IF NOT EXISTS movements_sku_recorded ON movements (sku, recorded_at, event_id);
CREATE INDEX IF NOT EXISTS movements_location_recorded ON movements (location, recorded_at, event_id);
CREATE INDEX IF NOT EXISTS movements_level_recorded ON movements (sku, location, recorded_at, event_id);
-- The source lives in the event as received; the expressions are those of the queries
-- (db/postgres.rs, `Dialect::SOURCE_SYSTEM` and `SOURCE_INSTANCE`).
CREATE INDEX IF NOT EXISTS movements_source_recorded
    ON movements ((event->'source'->>'system'), (event->'source'->>'instance'), recorded_at, event_id);
-- The count a level's history starts from: the last one before a time.
CREATE INDEX IF NOT EXISTS movements_level_counts ON movements (sku, location, occurred_at, event_id)
    WHERE kind = 'count';
