-- As migrations/postgres/0012_history.sql.

CREATE INDEX IF NOT EXISTS movements_recorded ON movements (recorded_at, event_id);
CREATE INDEX IF NOT EXISTS movements_sku_recorded ON movements (sku, recorded_at, event_id);
CREATE INDEX IF NOT EXISTS movements_location_recorded ON movements (location, recorded_at, event_id);
CREATE INDEX IF NOT EXISTS movements_level_recorded ON movements (sku, location, recorded_at, event_id);
CREATE INDEX IF NOT EXISTS movements_source_recorded
    ON movements (json_extract(event, '$.source.system'), json_extract(event, '$.source.instance'), recorded_at,
                  event_id);
CREATE INDEX IF NOT EXISTS movements_level_counts ON movements (sku, location, occurred_at, event_id)
    WHERE kind = 'count';
