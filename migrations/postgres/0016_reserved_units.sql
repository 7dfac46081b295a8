-- The units checkouts hold over every level (onhand_reservations_held_units), summed every
-- 5 s: only the levels holding some are in this index, and the sum reads nothing else.
CREATE INDEX IF NOT EXISTS stock_levels_reserved ON stock_levels (sku, reserved) WHERE reserved > 0;
