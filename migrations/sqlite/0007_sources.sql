-- As migrations/postgres/0007_sources.sql.

CREATE TABLE sources (
    source     TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE locations (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
