//! Shopify to onhand: the webhook route and the reconciliation task.
//!
//! A webhook is verified on its raw bytes before anything is read, mapped, produced to
//! Kafka, and answered 200 once Kafka acknowledged every record: the ledger applies the
//! movements afterwards, well inside Shopify's 5 s timeout. Shopify re-delivers, delivers
//! late and sometimes not at all; re-deliveries are harmless because event ids come from
//! Shopify's ids, and the reconciliation polls the orders updated since its cursor and
//! emits them again with the same ids, so a missed webhook costs only some delay.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use base64::{prelude::BASE64_STANDARD, Engine};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::future::try_join_all;
use hmac::{Hmac, Mac};
use onhand_core::{
    api::error_body,
    kafka::{dead_letter, DeadLetter},
    store::Store,
};
use rdkafka::producer::FutureRecord;
use serde_json::json;
use sha2::Sha256;
use tracing::{info, instrument, warn};

use super::{
    client::Admin,
    config::{ManualChanges, ShopifyConfig},
    mapping::{self, Catalog, Fact, LevelUpdate, Mapped, Verdict},
    payloads, ShopifyError, NAME,
};
use crate::ConnectorContext;

/// The route Shopify's webhook subscriptions point at.
pub const WEBHOOK_PATH: &str = "/connectors/shopify/webhooks";
/// The saved state of the reconciliation: the newest `updated_at` fully emitted.
pub const CURSOR_KEY: &str = "reconcile_cursor";

/// What the route, the reconciliation and the sink share.
#[derive(Debug)]
pub struct Shared {
    pub config: Arc<ShopifyConfig>,
    pub admin: Arc<Admin>,
    pub context: ConnectorContext,
}

/// The key under which the sink records what it pushed for an item at a location, in
/// `connector_state`, so that every replica's webhook route sees it.
pub fn pushed_key(inventory_item_id: u64, location_id: u64) -> String {
    format!("pushed:{inventory_item_id}:{location_id}")
}

pub fn routes(shared: Arc<Shared>) -> Router {
    let body_limit = shared.config.webhook_body_bytes_max;
    Router::new().route(WEBHOOK_PATH, post(webhook)).layer(DefaultBodyLimit::max(body_limit)).with_state(shared)
}

/// Whether `signature` (the `X-Shopify-Hmac-Sha256` header: base64 of the HMAC-SHA256 of
/// the raw body keyed with the app's secret) signs `body`, compared in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], signature: Option<&str>) -> bool {
    let Some(signature) = signature.and_then(|s| BASE64_STANDARD.decode(s.trim()).ok()) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// The metric label of a topic: a small fixed set.
fn topic_label(topic: &str) -> &'static str {
    match topic {
        "orders/create" => "orders_create",
        "orders/cancelled" => "orders_cancelled",
        "refunds/create" => "refunds_create",
        "inventory_levels/update" => "inventory_levels_update",
        _ => "other",
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[instrument(skip_all, fields(topic, event_id))]
async fn webhook(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let topic = header(&headers, "x-shopify-topic").unwrap_or_default().to_string();
    let label = topic_label(&topic);
    let count =
        |outcome: &str| shared.context.metrics.shopify_webhooks_total.with_label_values(&[label, outcome]).inc();
    let secret = shared.config.webhook_secret.expose().as_bytes();
    if !verify_signature(secret, &body, header(&headers, "x-shopify-hmac-sha256")) {
        count("invalid_signature");
        let message = "the X-Shopify-Hmac-Sha256 header does not sign this body with the app's secret";
        return (StatusCode::UNAUTHORIZED, Json(error_body("invalid_signature", message))).into_response();
    }
    // Shopify keeps the event id across re-deliveries of one event.
    let event_id = header(&headers, "x-shopify-event-id").or_else(|| header(&headers, "x-shopify-webhook-id"));
    tracing::Span::current().record("topic", topic.as_str()).record("event_id", event_id);
    match handle(&shared, &topic, event_id, &body).await {
        Ok(None) => {
            count("ignored");
            (StatusCode::OK, Json(json!({ "status": "ignored" }))).into_response()
        }
        Ok(Some((movements, dead_letters))) => {
            count("accepted");
            Json(json!({ "status": "accepted", "movements": movements, "dead_letters": dead_letters })).into_response()
        }
        Err(e) => {
            // Shopify delivers the webhook again when the answer is not 2xx.
            warn!(error = %e, "webhook not accepted; shopify will deliver it again");
            count("failed");
            let body = error_body("unavailable", "the webhook could not be recorded; deliver it again");
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// Maps and produces one verified webhook: `None` for a topic onhand does not follow,
/// else the movements and dead letters produced.
async fn handle(
    shared: &Shared,
    topic: &str,
    event_id: Option<&str>,
    body: &[u8],
) -> Result<Option<(usize, usize)>, ShopifyError> {
    let facts = match topic {
        "orders/create" => payloads::rest_order(body).map(|o| mapping::order_facts(&o)),
        "orders/cancelled" => payloads::rest_order(body).map(|o| mapping::cancelled_order_facts(&o)),
        "refunds/create" => payloads::rest_refund(body).map(|r| mapping::refund_facts(&r, None)),
        "inventory_levels/update" => match serde_json::from_slice::<LevelUpdate>(body) {
            Ok(update) => return level_update(shared, &update, event_id, body).await.map(Some),
            Err(e) => Err(e),
        },
        _ => return Ok(None),
    };
    match facts {
        Ok(facts) => emit(shared, facts, body).await.map(Some),
        Err(e) => {
            let reason = format!("{topic}: {e}");
            send_dead_letter(shared, body, mapping::INVALID_PAYLOAD, &reason).await?;
            Ok(Some((0, 1)))
        }
    }
}

/// An `inventory_levels/update`: ignored when it is onhand's own push coming back (or
/// onhand is already there), an adjustment when someone changed the quantity in Shopify.
/// A mismatch waits up to `echo_settle_ms` for onhand to catch up first: a web order's
/// update may come before its sale went through the ledger.
async fn level_update(
    shared: &Shared,
    update: &LevelUpdate,
    event_id: Option<&str>,
    body: &[u8],
) -> Result<(usize, usize), ShopifyError> {
    let store = &shared.context.store;
    let key = pushed_key(update.inventory_item_id, update.location_id);
    let push_location = shared.config.sink.as_ref().map(|s| s.location_id);
    let settle = Duration::from_millis(shared.config.echo_settle_ms);
    let started = tokio::time::Instant::now();
    let verdict = loop {
        let pushed = store.connector_state(NAME, &key).await?.and_then(|v| v.parse().ok());
        let now = onhand_now(shared, update.inventory_item_id).await?;
        let verdict = mapping::judge_level_update(update, push_location, pushed, now);
        if !matches!(verdict, Verdict::ManualChange { .. }) || started.elapsed() >= settle {
            break verdict;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ignored =
        matches!(verdict, Verdict::ManualChange { .. }) && shared.config.manual_changes == ManualChanges::Ignore;
    let label = if ignored { "manual_change_ignored" } else { verdict.label() };
    shared.context.metrics.shopify_level_updates_total.with_label_values(&[label]).inc();
    let Verdict::ManualChange { delta } = verdict else { return Ok((0, 0)) };
    if ignored {
        return Ok((0, 0));
    }
    // Without Shopify's event id, the update's own coordinates identify it.
    let fallback = format!("{}:{}:{}", update.inventory_item_id, update.location_id, update.updated_at.timestamp());
    let fact = mapping::level_update_fact(update, delta, event_id.unwrap_or(&fallback));
    let emitted = emit(shared, vec![fact], body).await?;
    // Shopify holds this quantity now: the next update is judged against it. Saved only
    // after Kafka acknowledged the adjustment, so a failure here re-delivers it.
    store.set_connector_state(NAME, &key, &update.available.to_string()).await?;
    Ok(emitted)
}

/// What the sink would push now for the item: its channel's availability.
async fn onhand_now(shared: &Shared, inventory_item_id: u64) -> Result<Option<i64>, ShopifyError> {
    let Some(sink) = &shared.config.sink else { return Ok(None) };
    let Some(channel) = shared.context.config.channels.get(&sink.channel) else { return Ok(None) };
    let item = inventory_item_id.to_string();
    let products = shared.context.store.products_by_attribute(mapping::INVENTORY_ITEM_ATTRIBUTE, &[item]).await?;
    let Some(product) = products.first() else { return Ok(None) };
    Ok(match shared.context.cache.get(&product.sku).await {
        Ok(stock) => Some(super::sink::channel_available(stock.levels(), channel)),
        Err(_) => None,
    })
}

/// Looks the facts' products up, maps them, produces every movement and dead letter, and
/// waits for Kafka's acknowledgements. Answers how many of each were produced.
pub async fn emit(shared: &Shared, facts: Vec<Fact>, original: &[u8]) -> Result<(usize, usize), ShopifyError> {
    if facts.is_empty() {
        return Ok((0, 0));
    }
    let catalog = catalog(&*shared.context.store, &mapping::lookups(&facts)).await?;
    let mapped = mapping::resolve(facts, &catalog, &shared.config, Utc::now());
    let context = &shared.context;
    let timeout = Duration::from_millis(context.config.kafka.produce_timeout_ms);
    let mut records = Vec::new();
    let mut dead = Vec::new();
    for outcome in &mapped {
        match outcome {
            Mapped::Movement(movement) => records.push((movement.kafka_key(), movement.to_json())),
            Mapped::Unmapped { event_id, reason_code, reason } => {
                warn!(event_id = %event_id, reason_code = *reason_code, "shopify record sent to the dead-letter topic");
                dead.push((*reason_code, reason.as_str()));
            }
        }
    }
    let sends = records.iter().map(|(key, payload)| async move {
        let record = FutureRecord::to(&context.topics.movements).key(*key).payload(payload);
        context.producer.send(record, timeout).await.map(|_| ()).map_err(|(e, _)| e)
    });
    try_join_all(sends).await?;
    let produced = mapped.len() - dead.len();
    for (reason_code, reason) in &dead {
        send_dead_letter(shared, original, reason_code, reason).await?;
    }
    Ok((produced, dead.len()))
}

async fn send_dead_letter(
    shared: &Shared,
    payload: &[u8],
    reason_code: &str,
    reason: &str,
) -> Result<(), ShopifyError> {
    let context = &shared.context;
    let letter = DeadLetter { source: NAME, read_from: None, key: None, payload, reason_code, reason };
    let timeout = Duration::from_millis(context.config.kafka.produce_timeout_ms);
    dead_letter(&context.producer, &context.topics.dlq, letter, timeout).await?;
    context.metrics.shopify_dlq_records_total.with_label_values(&[reason_code]).inc();
    Ok(())
}

/// The SKUs of the products the facts name, read from the store.
pub async fn catalog(store: &dyn Store, lookups: &mapping::Lookups) -> Result<Catalog, ShopifyError> {
    let mut catalog = Catalog::default();
    for sku in &lookups.skus {
        if store.product(sku).await?.is_some() {
            catalog.skus.insert(sku.clone());
        }
    }
    for (attribute, values, into) in [
        (mapping::VARIANT_ATTRIBUTE, &lookups.variants, &mut catalog.variants),
        (mapping::INVENTORY_ITEM_ATTRIBUTE, &lookups.inventory_items, &mut catalog.inventory_items),
    ] {
        if values.is_empty() {
            continue;
        }
        // Ordered by SKU: when two products claim one id, the first SKU wins, every time.
        for product in store.products_by_attribute(attribute, values).await? {
            if let Some(id) = product.attributes.get(attribute).and_then(|v| v.parse::<u64>().ok()) {
                into.entry(id).or_insert_with(|| product.sku.clone());
            }
        }
    }
    Ok(catalog)
}

/// The reconciliation: every `reconcile.interval_s`, the orders updated since the saved
/// cursor are mapped like webhooks and produced; the cursor moves only past what Kafka
/// acknowledged. A failed round backs off and tries again.
pub async fn reconcile(shared: Arc<Shared>) {
    let config = &shared.config.reconcile;
    if !config.enabled {
        return;
    }
    let shutdown = shared.context.shutdown.clone();
    let http = &shared.config.http;
    let mut backoff = Duration::from_millis(http.backoff_ms_min);
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match reconcile_round(&shared).await {
            Ok(()) => {
                backoff = Duration::from_millis(http.backoff_ms_min);
                wait = Duration::from_secs(config.interval_s);
            }
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "shopify reconciliation failed");
                wait = if e.is_retryable() { backoff } else { Duration::from_secs(config.interval_s) };
                backoff = (backoff * 2).min(Duration::from_millis(http.backoff_ms_max));
            }
        }
    }
}

/// One round: at most `pages_max` pages of orders, the cursor saved after each page.
pub async fn reconcile_round(shared: &Shared) -> Result<(), ShopifyError> {
    let config = &shared.config.reconcile;
    let store = &shared.context.store;
    let saved: Option<DateTime<Utc>> = store
        .connector_state(NAME, CURSOR_KEY)
        .await?
        .and_then(|c| DateTime::parse_from_rfc3339(&c).ok())
        .map(Into::into);
    let mut cursor = saved.unwrap_or_else(|| Utc::now() - chrono::Duration::hours(config.initial_lookback_h as i64));
    let since =
        (cursor - chrono::Duration::seconds(config.overlap_s as i64)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut after: Option<String> = None;
    for _ in 0..config.pages_max {
        let page = shared.admin.orders_page(&since, config.page_size, after.as_deref()).await?;
        for (raw, order) in page.orders {
            let original = raw.to_string();
            match order.and_then(|o| o.into_order()) {
                Ok(order) => {
                    let (movements, _) = emit(shared, mapping::order_all_facts(&order), original.as_bytes()).await?;
                    shared.context.metrics.shopify_reconcile_movements_total.inc_by(movements as u64);
                    cursor = cursor.max(order.updated_at.unwrap_or(cursor));
                }
                Err(reason) => {
                    let reason = format!("orders query: {reason}");
                    send_dead_letter(shared, original.as_bytes(), mapping::INVALID_PAYLOAD, &reason).await?;
                }
            }
        }
        // Everything up to the cursor is acknowledged: it may move (never backwards).
        if saved.is_none_or(|s| cursor > s) {
            store.set_connector_state(NAME, CURSOR_KEY, &cursor.to_rfc3339_opts(SecondsFormat::Micros, true)).await?;
        }
        match page.end_cursor.filter(|_| page.has_next_page) {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let age = (Utc::now() - cursor).num_seconds().max(0);
    shared.context.metrics.shopify_reconcile_cursor_age_seconds.set(age);
    info!(cursor = %cursor, "shopify reconciliation round done");
    Ok(())
}
