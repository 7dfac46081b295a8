-- As migrations/postgres/0015_alerts.sql.
CREATE TABLE alerts (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    state           TEXT NOT NULL,
    subject         TEXT NOT NULL,
    location        TEXT,
    raised_at       INTEGER NOT NULL,
    changed_at      INTEGER NOT NULL,
    body            TEXT NOT NULL
) WITHOUT ROWID;
CREATE UNIQUE INDEX alerts_unresolved ON alerts (kind, subject) WHERE state <> 'resolved';
CREATE INDEX alerts_by_change ON alerts (changed_at, id);
CREATE INDEX alerts_by_location ON alerts (location, changed_at) WHERE location IS NOT NULL;

CREATE TABLE alert_levels (
    sku      TEXT NOT NULL,
    location TEXT NOT NULL,
    version  INTEGER NOT NULL,
    PRIMARY KEY (sku, location)
) WITHOUT ROWID;

CREATE TABLE alert_outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    key        TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE alert_subscriptions (
    id         TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    locations  TEXT,
    kinds      TEXT,
    secret     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE alert_deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL REFERENCES alert_subscriptions (id) ON DELETE CASCADE,
    event_id        TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_at         INTEGER NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    UNIQUE (subscription_id, event_id)
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX alert_deliveries_log ON alert_deliveries (subscription_id, id);
