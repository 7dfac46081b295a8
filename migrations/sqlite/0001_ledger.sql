-- The ledger, as in migrations/postgres; times are microseconds since the Unix epoch so
-- that they compare as numbers.

CREATE TABLE movements (
    event_id        TEXT PRIMARY KEY,
    sku             TEXT NOT NULL,
    location        TEXT NOT NULL,
    kind            TEXT NOT NULL,
    quantity        INTEGER NOT NULL,
    delta           INTEGER,
    occurred_at     INTEGER NOT NULL,
    recorded_at     INTEGER NOT NULL,
    applied_at      INTEGER NOT NULL,
    effect          TEXT NOT NULL DEFAULT 'applied',
    kafka_partition INTEGER NOT NULL,
    kafka_offset    INTEGER NOT NULL,
    event           TEXT NOT NULL
) WITHOUT ROWID;

CREATE INDEX movements_level_time ON movements (sku, location, occurred_at);

CREATE TABLE stock_levels (
    sku                 TEXT NOT NULL,
    location            TEXT NOT NULL,
    on_hand             INTEGER NOT NULL,
    version             INTEGER NOT NULL,
    published_version   INTEGER NOT NULL DEFAULT 0,
    last_movement_at    INTEGER NOT NULL,
    last_event_id       TEXT NOT NULL,
    last_count_at       INTEGER,
    last_count_event_id TEXT,
    updated_at          INTEGER NOT NULL,
    PRIMARY KEY (sku, location)
) WITHOUT ROWID;

CREATE TABLE consumer_offsets (
    group_id    TEXT NOT NULL,
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
) WITHOUT ROWID;
