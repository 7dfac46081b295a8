-- The ledger: an append-only log of movements, the stock levels they produce, and the
-- ledger consumer's Kafka offsets, all written in one transaction per batch.
--
-- Identifiers (event ids, SKUs, locations) are codes, not words: they compare byte by
-- byte (COLLATE "C"), which keeps their indexes fast whatever the database's locale.

CREATE TABLE movements (
    event_id        TEXT COLLATE "C" PRIMARY KEY,
    sku             TEXT COLLATE "C" NOT NULL,
    location        TEXT COLLATE "C" NOT NULL,
    kind            TEXT NOT NULL,
    quantity        BIGINT NOT NULL,
    -- The signed change to on_hand; NULL for a count, which sets it instead.
    delta           BIGINT,
    occurred_at     TIMESTAMPTZ NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL,
    applied_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- 'applied', or 'superseded' when a count made it irrelevant (docs/consistency.md).
    effect          TEXT NOT NULL DEFAULT 'applied',
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT NOT NULL,
    -- The whole event as received, for audit and replay.
    event           JSON NOT NULL
);

-- The count rule sums the deltas of one level that occurred after a count.
CREATE INDEX movements_level_time ON movements (sku, location, occurred_at);

CREATE TABLE stock_levels (
    sku                 TEXT COLLATE "C" NOT NULL,
    location            TEXT COLLATE "C" NOT NULL,
    on_hand             BIGINT NOT NULL,
    -- Compared and incremented by every write (optimistic concurrency).
    version             BIGINT NOT NULL,
    -- The newest version acknowledged on the stock topic; a smaller value than version
    -- means the level still has to be published (after a crash, at the next start).
    published_version   BIGINT NOT NULL DEFAULT 0,
    last_movement_at    TIMESTAMPTZ NOT NULL,
    last_event_id       TEXT NOT NULL,
    last_count_at       TIMESTAMPTZ,
    last_count_event_id TEXT,
    updated_at          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (sku, location)
) WITH (fillfactor = 80);

CREATE TABLE consumer_offsets (
    group_id    TEXT NOT NULL,
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
