-- Reservations: units promised to a checkout. A reservation holds its units in
-- stock_levels.reserved (a conditional update on what is available, in the same
-- compare-and-set scheme as the ledger) until it is committed (the ledger applies its sales
-- and releases the units in the same write), cancelled or expired.

CREATE TABLE reservations (
    id          TEXT COLLATE "C" PRIMARY KEY,
    channel     TEXT NOT NULL,
    -- held, committed, cancelled or expired.
    status      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    -- When it stopped being held.
    closed_at   TIMESTAMPTZ
);

-- The expiry scheduler looks for held reservations past their time.
CREATE INDEX reservations_held_expiry ON reservations (expires_at) WHERE status = 'held';

CREATE TABLE reservation_lines (
    reservation_id TEXT COLLATE "C" NOT NULL REFERENCES reservations (id),
    line           INTEGER NOT NULL,
    sku            TEXT COLLATE "C" NOT NULL,
    location       TEXT COLLATE "C" NOT NULL,
    quantity       BIGINT NOT NULL CHECK (quantity > 0),
    -- When the ledger applied this line's sale and released its units.
    settled_at     TIMESTAMPTZ,
    PRIMARY KEY (reservation_id, line)
);

-- The first answer to each Idempotency-Key, per API key: a retry gets it again.
CREATE TABLE idempotency_keys (
    owner       TEXT NOT NULL,
    key         TEXT NOT NULL,
    -- The request as first received (canonical JSON): the same key with another request
    -- is refused.
    request     TEXT NOT NULL,
    status      INTEGER,
    body        TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (owner, key)
);

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Movements written by the API in the same transaction as the change they describe
-- (reservation events, the sales of a commit), relayed to the movements topic and deleted
-- once Kafka acknowledged them: a crash between the two loses nothing.
CREATE TABLE outbox (
    id          BIGSERIAL PRIMARY KEY,
    kafka_key   TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
