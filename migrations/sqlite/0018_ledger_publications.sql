-- The levels each ledger batch wrote, kept until their publication on the stock topic is
-- acknowledged (see the PostgreSQL migration of the same name).
CREATE TABLE ledger_publications (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    written_at  INTEGER NOT NULL,
    -- The levels' keys as JSON, [["SKU", "location"], ...]: read only by the sweep.
    levels      TEXT NOT NULL
);
