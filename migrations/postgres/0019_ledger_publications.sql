-- The levels each ledger batch wrote, kept until their publication on the stock topic is
-- acknowledged: one row a batch, inserted in its transaction and deleted by a later one.
-- The ledger's sweep publishes again the levels of a row left behind (a crash between the
-- commit and the acknowledgement, a publication that failed). Before, each acknowledgement
-- updated every level's published_version: a second write of the batch's hottest rows.
-- The ledger's level writes now set published_version to the version they write;
-- published_version < version still marks what other writers (reservations, policies,
-- the outbox relay) have to publish.
CREATE TABLE ledger_publications (
    id          BIGSERIAL PRIMARY KEY,
    written_at  TIMESTAMPTZ NOT NULL,
    -- The levels' keys as JSON, [["SKU", "location"], ...]: read only by the sweep.
    levels      TEXT NOT NULL
);
