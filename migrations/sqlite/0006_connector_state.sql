-- As migrations/postgres/0006_connector_state.sql.

CREATE TABLE connector_state (
    connector  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (connector, key)
) WITHOUT ROWID;
