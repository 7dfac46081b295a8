-- Connectors find products by an outside id kept as an attribute (a Shopify variant or
-- inventory item id): `attributes @> {"name": "value"}` uses this index for any name.

CREATE INDEX products_attributes ON products USING GIN (attributes jsonb_path_ops);
