-- The product catalog: names, categories and attributes, for people and for suggesting
-- similar products when one is short.

CREATE TABLE products (
    sku        TEXT COLLATE "C" PRIMARY KEY,
    name       TEXT NOT NULL,
    category   TEXT,
    attributes JSONB NOT NULL DEFAULT '{}',
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX products_category ON products (category);
