-- As migrations/postgres/0004_reservations.sql.

CREATE TABLE reservations (
    id          TEXT PRIMARY KEY,
    channel     TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    closed_at   INTEGER
) WITHOUT ROWID;

CREATE INDEX reservations_held_expiry ON reservations (expires_at) WHERE status = 'held';

CREATE TABLE reservation_lines (
    reservation_id TEXT NOT NULL REFERENCES reservations (id),
    line           INTEGER NOT NULL,
    sku            TEXT NOT NULL,
    location       TEXT NOT NULL,
    quantity       INTEGER NOT NULL CHECK (quantity > 0),
    settled_at     INTEGER,
    PRIMARY KEY (reservation_id, line)
) WITHOUT ROWID;

CREATE TABLE idempotency_keys (
    owner       TEXT NOT NULL,
    key         TEXT NOT NULL,
    request     TEXT NOT NULL,
    status      INTEGER,
    body        TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (owner, key)
) WITHOUT ROWID;

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kafka_key   TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
