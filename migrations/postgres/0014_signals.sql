-- What onhand itself heard from each source, apart from what a source says of itself
-- (`sources`): the newest movement the ledger recorded from it, and the last error its
-- connector met. Named as in `sources` (`pos:store-012`, `erp`, `shopify`...), so that
-- `GET /v1/sources` shows both on one line (`core/src/db/signals.rs`).
CREATE TABLE source_signals (
    source           TEXT COLLATE "C" PRIMARY KEY,
    last_movement_at TIMESTAMPTZ,
    last_error       TEXT,
    last_error_at    TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ NOT NULL
);

-- The levels the signals count every few seconds: few, when all is well, so that counting
-- them reads these indexes and never the whole table.
CREATE INDEX IF NOT EXISTS stock_levels_negative ON stock_levels (sku) WHERE on_hand < 0;
CREATE INDEX IF NOT EXISTS stock_levels_overreserved ON stock_levels (sku) WHERE reserved > 0 AND reserved > on_hand;
