-- As migrations/postgres/0003_products.sql.

CREATE TABLE products (
    sku        TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    category   TEXT,
    attributes TEXT NOT NULL DEFAULT '{}',
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX products_category ON products (category);
