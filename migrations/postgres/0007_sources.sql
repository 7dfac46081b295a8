-- What each source (a store agent, a connector) last said and how far behind it is:
-- `core/src/source.rs` defines the state, kept here as JSON, one row per source.

CREATE TABLE sources (
    source     TEXT COLLATE "C" PRIMARY KEY,
    state      TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- Store names from the stores' own reports (the POS stock report carries them).
CREATE TABLE locations (
    id         TEXT COLLATE "C" PRIMARY KEY,
    name       TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
