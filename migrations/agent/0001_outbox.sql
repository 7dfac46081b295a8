-- The store agent's own database, one SQLite file in the store. Every line a till posts is
-- written here first; the agent forwards the outbox to the central service in sequence
-- order and deletes what was acknowledged. AUTOINCREMENT: a sequence number is never
-- given twice, even after the rows before it were deleted.

CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The line as the till sent it (connectors/src/pos/mapping.rs PosLine); its seq is
    -- this row's, added when it is forwarded.
    line        TEXT NOT NULL,
    sku         TEXT NOT NULL,
    -- The change to on_hand, or NULL for a count, which sets it (count holds the quantity).
    delta       INTEGER,
    count       INTEGER,
    occurred_at INTEGER NOT NULL
);

CREATE INDEX outbox_sku ON outbox (sku, seq);

-- The agent's identity: its epoch names this database's numbering.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- The last level of each SKU read from the central service, for reads during a cut.
CREATE TABLE levels (
    sku           TEXT PRIMARY KEY,
    on_hand       INTEGER NOT NULL,
    reorder_point INTEGER,
    as_of         INTEGER NOT NULL
) WITHOUT ROWID;
