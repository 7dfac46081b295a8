-- Orders (docs/orders.md): each as received, then as a worker decided it, once.
CREATE TABLE orders (
    id              TEXT PRIMARY KEY,
    -- The API key that sent it; its idempotency keys are its own.
    owner           TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    channel         TEXT NOT NULL,
    -- received, scheduled, rejected, cancelled
    status          TEXT NOT NULL,
    -- The order as checked, and what the worker decided (JSON).
    request         TEXT NOT NULL,
    decision        TEXT,
    reservation_id  TEXT,
    received_at     TIMESTAMPTZ NOT NULL,
    decided_at      TIMESTAMPTZ,
    UNIQUE (owner, idempotency_key)
);

-- The queue: orders waiting for a decision, oldest first.
CREATE INDEX orders_waiting ON orders (received_at) WHERE status = 'received';
-- Scheduled orders by decision time: the recent ones whose reservation is still held.
CREATE INDEX orders_scheduled ON orders (decided_at) WHERE status = 'scheduled';

-- Orders booked per delivery slot: a booking takes one only while it is below capacity.
CREATE TABLE delivery_bookings (
    location TEXT NOT NULL,
    method   TEXT NOT NULL,
    -- YYYY-MM-DD
    day      TEXT NOT NULL,
    slot     TEXT NOT NULL,
    booked   BIGINT NOT NULL,
    PRIMARY KEY (location, method, day, slot)
);

-- Each change of an order (onhand.order.v1), written with the change, then sent to the
-- orders topic and deleted.
CREATE TABLE order_outbox (
    seq        BIGSERIAL PRIMARY KEY,
    key        TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

-- Customers waiting for a SKU to be available again in a channel: told once.
CREATE TABLE back_in_stock (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    channel     TEXT NOT NULL,
    sku         TEXT NOT NULL,
    customer    TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    notified_at TIMESTAMPTZ,
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
    updated_at     TIMESTAMPTZ NOT NULL
);
