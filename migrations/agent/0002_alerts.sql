-- The store's alerts as the central service last told them (GET /v1/alerts?location=THIS
-- STORE), so that the store sees them during a cut, and those raised during a cut once
-- the link returns. One row per alert, its newest change.

CREATE TABLE alerts (
    id         TEXT PRIMARY KEY,
    -- When the alert last changed, in microseconds: a change older than the row's is stale.
    changed_at INTEGER NOT NULL,
    state      TEXT NOT NULL,
    -- The alert as the central service answered it (JSON).
    body       TEXT NOT NULL
) WITHOUT ROWID;

CREATE INDEX alerts_changed ON alerts (changed_at);
