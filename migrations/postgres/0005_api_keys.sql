-- API keys of the HTTP API. The secret of a key is shown once, when it is created, and
-- only its SHA-256 is stored: a copy of this table lets nobody call the API.
-- (0005: 0004 is reservations.)

CREATE TABLE api_keys (
    id          TEXT COLLATE "C" PRIMARY KEY,   -- the public part of onh_<id>_<secret>
    name        TEXT NOT NULL,
    scopes      TEXT NOT NULL,                  -- space-separated, e.g. 'stock:read movements:write'
    secret_hash TEXT NOT NULL,                  -- lower-case hex SHA-256 of the secret
    created_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ
);
