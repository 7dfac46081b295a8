-- As migrations/postgres/0013_leases.sql; times in microseconds since the Unix epoch.

CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    acquired_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    taken_from  TEXT
) WITHOUT ROWID;
