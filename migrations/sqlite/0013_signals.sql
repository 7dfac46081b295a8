-- As migrations/postgres/0014_signals.sql.

CREATE TABLE source_signals (
    source           TEXT PRIMARY KEY,
    last_movement_at INTEGER,
    last_error       TEXT,
    last_error_at    INTEGER,
    updated_at       INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS stock_levels_negative ON stock_levels (sku) WHERE on_hand < 0;
CREATE INDEX IF NOT EXISTS stock_levels_overreserved ON stock_levels (sku) WHERE reserved > 0 AND reserved > on_hand;
