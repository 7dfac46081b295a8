-- What connectors remember between runs: cursors (the Shopify reconciliation's
-- updated_at, the ERP journal's position) and other small values, by connector and key.

CREATE TABLE connector_state (
    connector  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (connector, key)
);
