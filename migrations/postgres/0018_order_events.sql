-- A webhook subscription to one sales channel's order events (status changes and
-- back-in-stock notices) rather than to alerts: its channel, or NULL for an alert
-- subscription. Its deliveries share alert_deliveries and the same deliverer.
ALTER TABLE alert_subscriptions ADD COLUMN channel TEXT COLLATE "C";
CREATE INDEX alert_subscriptions_channel ON alert_subscriptions (channel) WHERE channel IS NOT NULL;

-- The decisions of the last minutes, as GET /v1/orders/queue sums them up.
CREATE INDEX orders_decided ON orders (decided_at);
