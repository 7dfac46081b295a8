-- As migrations/postgres/0002_availability.sql. SQLite cannot drop NOT NULL in place, so
-- the table is rebuilt.

CREATE TABLE stock_levels_new (
    sku                 TEXT NOT NULL,
    location            TEXT NOT NULL,
    on_hand             INTEGER NOT NULL,
    version             INTEGER NOT NULL,
    published_version   INTEGER NOT NULL DEFAULT 0,
    last_movement_at    INTEGER,
    last_event_id       TEXT,
    last_count_at       INTEGER,
    last_count_event_id TEXT,
    updated_at          INTEGER NOT NULL,
    reserved            INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    safety_stock        INTEGER NOT NULL DEFAULT 0 CHECK (safety_stock >= 0),
    reorder_point       INTEGER CHECK (reorder_point >= 0),
    PRIMARY KEY (sku, location)
) WITHOUT ROWID;

INSERT INTO stock_levels_new (sku, location, on_hand, version, published_version, last_movement_at, last_event_id,
                              last_count_at, last_count_event_id, updated_at)
SELECT sku, location, on_hand, version, published_version, last_movement_at, last_event_id,
       last_count_at, last_count_event_id, updated_at
FROM stock_levels;

DROP TABLE stock_levels;
ALTER TABLE stock_levels_new RENAME TO stock_levels;
