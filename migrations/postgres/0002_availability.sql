-- What a channel may sell: each level also holds the units reserved by checkouts and its
-- stock policy. Every writer (the ledger for on_hand, reservations for reserved, the
-- policy API for safety_stock and reorder_point) bumps version. A policy may be set
-- before any movement arrived, so a level may have no movement yet.

ALTER TABLE stock_levels
    ADD COLUMN reserved      BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    -- Units kept back from every channel (display stock, shrinkage margin).
    ADD COLUMN safety_stock  BIGINT NOT NULL DEFAULT 0 CHECK (safety_stock >= 0),
    -- At or below this on_hand the store gets a low-stock alert; NULL: the default.
    ADD COLUMN reorder_point BIGINT CHECK (reorder_point >= 0),
    ALTER COLUMN last_movement_at DROP NOT NULL,
    ALTER COLUMN last_event_id DROP NOT NULL;
