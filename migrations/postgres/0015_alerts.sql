-- Alerts (`core/src/alerts`): each crossing of a threshold is one row, raised open,
-- perhaps acknowledged, then resolved when its condition clears. At most one alert of a
-- kind is unresolved per subject (sku@location, or a source's name): the index below is
-- what makes two replicas deciding the same crossing raise it once.
CREATE TABLE alerts (
    id              TEXT COLLATE "C" PRIMARY KEY,
    kind            TEXT COLLATE "C" NOT NULL,
    state           TEXT NOT NULL,
    subject         TEXT COLLATE "C" NOT NULL,
    location        TEXT COLLATE "C",
    raised_at       TIMESTAMPTZ NOT NULL,
    changed_at      TIMESTAMPTZ NOT NULL,
    -- The alert as `GET /v1/alerts` answers it (core/src/event/alert.rs).
    body            TEXT NOT NULL
);
CREATE UNIQUE INDEX alerts_unresolved ON alerts (kind, subject) WHERE state <> 'resolved';
CREATE INDEX alerts_by_change ON alerts (changed_at, id);
CREATE INDEX alerts_by_location ON alerts (location, changed_at) WHERE location IS NOT NULL;

-- The newest version of each level the alerts component decided on: a version at or below
-- it was decided already (read again after a restart, or by another replica) and changes
-- nothing. Written in the transaction of the alerts it raised or resolved.
CREATE TABLE alert_levels (
    sku      TEXT COLLATE "C" NOT NULL,
    location TEXT COLLATE "C" NOT NULL,
    version  BIGINT NOT NULL,
    PRIMARY KEY (sku, location)
);

-- Alert events waiting for the alerts topic, written in the transaction of their change.
CREATE TABLE alert_outbox (
    seq        BIGSERIAL PRIMARY KEY,
    key        TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

-- Webhook subscriptions. The secret signs each delivery; it is never answered back.
CREATE TABLE alert_subscriptions (
    id         TEXT COLLATE "C" PRIMARY KEY,
    url        TEXT NOT NULL,
    -- A JSON array of locations, or NULL for every location (source alerts go to those).
    locations  TEXT,
    -- A JSON array of alert kinds, or NULL for every kind.
    kinds      TEXT,
    secret     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    created_by TEXT NOT NULL
);

-- One delivery of one alert event to one subscription, and how it went: the log a
-- subscriber reads, and the queue of the deliverer (pending ones by next_at).
CREATE TABLE alert_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    subscription_id TEXT COLLATE "C" NOT NULL REFERENCES alert_subscriptions (id) ON DELETE CASCADE,
    event_id        TEXT COLLATE "C" NOT NULL,
    payload         TEXT NOT NULL,
    -- pending, delivered or dead.
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_at         TIMESTAMPTZ NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    delivered_at    TIMESTAMPTZ,
    UNIQUE (subscription_id, event_id)
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX alert_deliveries_log ON alert_deliveries (subscription_id, id);
