-- As migrations/postgres/0017_orders.sql.

CREATE TABLE orders (
    id              TEXT PRIMARY KEY,
    owner           TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    channel         TEXT NOT NULL,
    status          TEXT NOT NULL,
    request         TEXT NOT NULL,
    decision        TEXT,
    reservation_id  TEXT,
    received_at     INTEGER NOT NULL,
    decided_at      INTEGER,
    UNIQUE (owner, idempotency_key)
) WITHOUT ROWID;

CREATE INDEX orders_waiting ON orders (received_at) WHERE status = 'received';
CREATE INDEX orders_scheduled ON orders (decided_at) WHERE status = 'scheduled';

CREATE TABLE delivery_bookings (
    location TEXT NOT NULL,
    method   TEXT NOT NULL,
    day      TEXT NOT NULL,
    slot     TEXT NOT NULL,
    booked   INTEGER NOT NULL,
    PRIMARY KEY (location, method, day, slot)
) WITHOUT ROWID;

-- Each change of an order (onhand.order.v1), written with the change, then sent to the
-- orders topic and deleted.
CREATE TABLE order_outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    key        TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- Customers waiting for a SKU to be available again in a channel: told once.
CREATE TABLE back_in_stock (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    channel     TEXT NOT NULL,
    sku         TEXT NOT NULL,
    customer    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    notified_at INTEGER,
    UNIQUE (owner, channel, sku, customer)
);
CREATE INDEX back_in_stock_waiting ON back_in_stock (sku) WHERE notified_at IS NULL;

-- Carts: a customer's lines before checkout, and the soft hold on them when the channel
-- holds (a reservation, its id here).
CREATE TABLE carts (
    id             TEXT PRIMARY KEY,
    owner          TEXT NOT NULL,
    channel        TEXT NOT NULL,
    -- The lines as checked (JSON).
    lines          TEXT NOT NULL,
    reservation_id TEXT,
    updated_at     INTEGER NOT NULL
);
