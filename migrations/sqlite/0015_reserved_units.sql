-- As migrations/postgres/0016_reserved_units.sql.

CREATE INDEX IF NOT EXISTS stock_levels_reserved ON stock_levels (sku, reserved) WHERE reserved > 0;
