-- Leases: which replica does a piece of work that must run in one place at a time (the
-- ERP poller, the Debezium follower, the WMS inbox, the Shopify reconciliation). A lease
-- is taken when it is free, expired or already the taker's, by one conditional upsert,
-- and its times are the database's clock (now()), so replicas' clocks may disagree.

CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    -- The holder whose expired lease this one replaced, when it was taken over.
    taken_from  TEXT
);
