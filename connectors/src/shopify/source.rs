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
    db,
    kafka::{dead_letter, DeadLetter},
};
use rdkafka::producer::FutureRecord;
use serde_json::json;
use sha2::Sha256;
use tracing::{info, instrument, warn};

use super::{
    config::{ManualChanges, NAME},
    mapping::{self, Catalog, Fact, LevelUpdate, Mapped, SeenUpdates, Verdict},
    payloads,
    shared::{pushed_key, Shared, ShopifyError, SOURCE},
};

/// The route Shopify's webhook subscriptions point at.
pub const WEBHOOK_PATH: &str = "/connectors/shopify/webhooks";
/// The saved state of the reconciliation: the newest `updated_at` fully emitted.
pub const CURSOR_KEY: &str = "reconcile_cursor";

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

/// Whether a delivery is recent enough to record, by its `X-Shopify-Triggered-At`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Triggered at most `webhook_max_age_s` ago (or in the future: the clocks differ).
    Fresh,
    /// No readable header: deliveries from before Shopify added it, or from tools, lack it.
    Unknown,
    /// Triggered longer ago than the window, by this many seconds in all.
    Stale { age_s: i64 },
}

/// Reads `X-Shopify-Triggered-At` (RFC 3339, `2026-11-21T12:14:02.877041743Z`), the time
/// Shopify first tried to deliver the event, which its retries keep.
pub fn freshness(triggered_at: Option<&str>, now: DateTime<Utc>, max_age_s: u64) -> Freshness {
    let Some(at) = triggered_at.and_then(|t| DateTime::parse_from_rfc3339(t.trim()).ok()) else {
        return Freshness::Unknown;
    };
    let age_s = (now - at.with_timezone(&Utc)).num_seconds();
    if age_s > i64::try_from(max_age_s).unwrap_or(i64::MAX) {
        Freshness::Stale { age_s }
    } else {
        Freshness::Fresh
    }
}

/// What a signed body says under its topic: the facts of an order or refund, a level
/// update to judge, or nothing for a topic onhand does not follow.
///
/// The topic header is not signed, so a body may arrive under another topic than its own.
/// Each topic reads a different shape, with the ids of the body's own objects: an
/// inventory body is no order (it has no `id` nor `created_at`) and an order is no level
/// update or refund, so such a body is dead-lettered; a refund under an order topic is an
/// order without lines and moves nothing; and an order under the other order topic gives
/// the same order's sales or refunds with the event ids its own webhooks and the
/// reconciliation give, which the ledger skips.
#[derive(Debug)]
pub enum Delivery {
    Facts(Vec<Fact>),
    LevelUpdate(LevelUpdate),
    Ignored,
}

pub fn read_delivery(topic: &str, body: &[u8]) -> Result<Delivery, serde_json::Error> {
    Ok(match topic {
        "orders/create" => Delivery::Facts(mapping::order_facts(&payloads::rest_order(body)?)),
        "orders/cancelled" => Delivery::Facts(mapping::cancelled_order_facts(&payloads::rest_order(body)?)),
        "refunds/create" => Delivery::Facts(mapping::refund_facts(&payloads::rest_refund(body)?, None)),
        "inventory_levels/update" => Delivery::LevelUpdate(serde_json::from_slice(body)?),
        _ => Delivery::Ignored,
    })
}

/// The answer to a delivery the route does not record, with its stable code. Shopify
/// delivers again whatever is not 2xx, for up to 8 attempts in 4 hours.
fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(error_body(code, message))).into_response()
}

#[instrument(skip_all, fields(topic, event_id))]
async fn webhook(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let topic = header(&headers, "x-shopify-topic").unwrap_or_default().to_string();
    let label = topic_label(&topic);
    let count = |outcome: &str| shared.metrics.webhooks_total.with_label_values(&[label, outcome]).inc();
    let secret = shared.config.webhook_secret.expose().as_bytes();
    if !verify_signature(secret, &body, header(&headers, "x-shopify-hmac-sha256")) {
        count("invalid_signature");
        let message = "the X-Shopify-Hmac-Sha256 header does not sign this body with the app's secret";
        return refuse(StatusCode::UNAUTHORIZED, "invalid_signature", message);
    }
    // For logs only: the headers are not signed, so no id onhand records comes from them.
    let event_id = header(&headers, "x-shopify-event-id").or_else(|| header(&headers, "x-shopify-webhook-id"));
    tracing::Span::current().record("topic", topic.as_str()).record("event_id", event_id);
    let max_age_s = shared.config.webhook_max_age_s;
    if let Freshness::Stale { age_s } = freshness(header(&headers, "x-shopify-triggered-at"), Utc::now(), max_age_s) {
        // Not 2xx, so that Shopify keeps delivering it: if onhand's clock is what is wrong,
        // a retry after it is fixed still gets through, and Shopify's delivery metrics
        // show the refusals. A delivery that really is this old stays refused.
        warn!(age_s, max_age_s, "webhook refused: triggered longer than webhook_max_age_s ago");
        count("stale");
        let message = format!("the delivery was triggered {age_s} s ago, more than webhook_max_age_s ({max_age_s})");
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, "stale_delivery", &message);
    }
    match handle(&shared, &topic, &body).await {
        Ok(None) => {
            count("ignored");
            (StatusCode::OK, Json(json!({ "status": "ignored" }))).into_response()
        }
        Ok(Some((movements, dead_letters))) => {
            count("accepted");
            shared.context.health.ok(SOURCE).await;
            Json(json!({ "status": "accepted", "movements": movements, "dead_letters": dead_letters })).into_response()
        }
        Err(e) => {
            // Shopify delivers the webhook again when the answer is not 2xx.
            warn!(error = %e, "webhook not accepted; shopify will deliver it again");
            count("failed");
            shared.context.health.error(SOURCE, format!("a webhook was not accepted: {e}")).await;
            let message = "the webhook could not be recorded; deliver it again";
            refuse(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }
}

/// Maps and produces one verified webhook: `None` for a topic onhand does not follow,
/// else the movements and dead letters produced.
async fn handle(shared: &Shared, topic: &str, body: &[u8]) -> Result<Option<(usize, usize)>, ShopifyError> {
    match read_delivery(topic, body) {
        Ok(Delivery::Ignored) => Ok(None),
        Ok(Delivery::Facts(facts)) => emit(shared, facts, body).await.map(Some),
        Ok(Delivery::LevelUpdate(update)) => level_update(shared, &update, body).await.map(Some),
        Err(e) => {
            let reason = format!("{topic}: {e}");
            send_dead_letter(shared, body, mapping::INVALID_PAYLOAD, &reason).await?;
            Ok(Some((0, 1)))
        }
    }
}

/// The key under which the webhook route records the newest level update it judged for an
/// item at a location ([`SeenUpdates`]).
pub fn seen_key(inventory_item_id: u64, location_id: u64) -> String {
    format!("level_seen:{inventory_item_id}:{location_id}")
}

/// An `inventory_levels/update`: ignored when it is onhand's own push coming back (or
/// onhand is already there) or when a newer update was judged already, an adjustment when
/// someone changed the quantity in Shopify. A mismatch waits up to `echo_settle_ms` for
/// onhand to catch up first: a web order's update may come before its sale went through
/// the ledger.
async fn level_update(shared: &Shared, update: &LevelUpdate, body: &[u8]) -> Result<(usize, usize), ShopifyError> {
    let cursors = &shared.context.cursors;
    let key = pushed_key(update.inventory_item_id, update.location_id);
    let seen_key = seen_key(update.inventory_item_id, update.location_id);
    let push_location = shared.config.sink.as_ref().map(|s| s.location_id);
    let seen = if push_location == Some(update.location_id) {
        cursors.connector_state(NAME, &seen_key).await?.as_deref().and_then(SeenUpdates::from_state)
    } else {
        None
    };
    let settle = Duration::from_millis(shared.config.echo_settle_ms);
    let started = tokio::time::Instant::now();
    let verdict = loop {
        let pushed = cursors.connector_state(NAME, &key).await?.and_then(|v| v.parse().ok());
        let now = onhand_now(shared, update.inventory_item_id).await?;
        let verdict = mapping::judge_level_update(update, push_location, seen.as_ref(), pushed, now);
        if !matches!(verdict, Verdict::ManualChange { .. }) || started.elapsed() >= settle {
            break verdict;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ignored =
        matches!(verdict, Verdict::ManualChange { .. }) && shared.config.manual_changes == ManualChanges::Ignore;
    let label = if ignored { "manual_change_ignored" } else { verdict.label() };
    shared.metrics.level_updates_total.with_label_values(&[label]).inc();
    let mut emitted = (0, 0);
    match verdict {
        Verdict::NotPushedLocation | Verdict::Superseded => return Ok(emitted),
        Verdict::ManualChange { delta } if !ignored => {
            emitted = emit(shared, vec![mapping::level_update_fact(update, delta)], body).await?;
            // Shopify holds this quantity now: the next update is judged against it. Saved
            // only after Kafka acknowledged the adjustment, so a failure here re-delivers it.
            cursors.set_connector_state(NAME, &key, &update.available.to_string()).await?;
        }
        _ => {}
    }
    // Last, once all the update caused is recorded: a failure before leaves it unseen,
    // and Shopify's re-delivery judges it again with the same event id.
    cursors.set_connector_state(NAME, &seen_key, &SeenUpdates::with(seen, update).to_state()).await?;
    Ok(emitted)
}

/// What the sink would push now for the item: its channel's availability.
async fn onhand_now(shared: &Shared, inventory_item_id: u64) -> Result<Option<i64>, ShopifyError> {
    let Some(sink) = &shared.config.sink else { return Ok(None) };
    let Some(channel) = shared.context.config.channels.get(&sink.channel) else { return Ok(None) };
    let item = inventory_item_id.to_string();
    let products = shared.context.catalog.products_by_attribute(mapping::INVENTORY_ITEM_ATTRIBUTE, &[item]).await?;
    let Some(product) = products.first() else { return Ok(None) };
    Ok(match shared.context.cache.get(&product.sku).await {
        Ok(stock) => Some(channel.available(stock.levels())),
        Err(_) => None,
    })
}

/// Looks the facts' products up, maps them, produces every movement and dead letter, and
/// waits for Kafka's acknowledgements. Answers how many of each were produced.
pub async fn emit(shared: &Shared, facts: Vec<Fact>, original: &[u8]) -> Result<(usize, usize), ShopifyError> {
    if facts.is_empty() {
        return Ok((0, 0));
    }
    let catalog = catalog(&*shared.context.catalog, &mapping::lookups(&facts)).await?;
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
    dead_letter(&context.producer, &context.topics.dlq, letter, timeout, &context.metrics).await?;
    shared.metrics.dlq_records_total.with_label_values(&[reason_code]).inc();
    Ok(())
}

/// The SKUs of the products the facts name, read from the database.
pub async fn catalog(db: &dyn db::Catalog, lookups: &mapping::Lookups) -> Result<Catalog, ShopifyError> {
    let mut catalog = Catalog::default();
    for sku in &lookups.skus {
        if db.product(sku).await?.is_some() {
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
        for product in db.products_by_attribute(attribute, values).await? {
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
    let mut backoff = shared.config.http.backoff();
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match reconcile_round(&shared).await {
            Ok(()) => {
                backoff.reset();
                shared.context.health.ok(SOURCE).await;
                wait = Duration::from_secs(config.interval_s);
            }
            Err(e) => {
                let pause = backoff.fail();
                warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "shopify reconciliation failed");
                shared.context.health.error(SOURCE, format!("the reconciliation failed: {e}")).await;
                wait = if e.is_retryable() { pause } else { Duration::from_secs(config.interval_s) };
            }
        }
    }
}

/// One round: at most `pages_max` pages of orders, the cursor saved after each page.
pub async fn reconcile_round(shared: &Shared) -> Result<(), ShopifyError> {
    let config = &shared.config.reconcile;
    let cursors = &shared.context.cursors;
    let saved: Option<DateTime<Utc>> = cursors
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
            if let Some(updated_at) = reconcile_order(shared, &raw, order).await? {
                cursor = cursor.max(updated_at);
            }
        }
        // Everything up to the cursor is acknowledged: it may move (never backwards).
        if saved.is_none_or(|s| cursor > s) {
            cursors.set_connector_state(NAME, CURSOR_KEY, &cursor.to_rfc3339_opts(SecondsFormat::Micros, true)).await?;
        }
        match page.end_cursor.filter(|_| page.has_next_page) {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let age = (Utc::now() - cursor).num_seconds().max(0);
    shared.metrics.reconcile_cursor_age_seconds.set(age);
    info!(cursor = %cursor, "shopify reconciliation round done");
    Ok(())
}

/// Emits one order of the orders query, once the lines the query left out are read too.
/// Answers its `updated_at` when it could be mapped.
///
/// An order whose lines cannot all be read (more than `line_pages_max` more pages) emits
/// the lines read and is dead-lettered with `shopify_lines_truncated`: every line has its
/// own event id, so the lines read are right whatever is missing, and the order's webhook
/// carries every line. Waiting for it instead would stop the cursor at this order for good.
/// A failure to reach Shopify fails the round before anything of the order is emitted.
async fn reconcile_order(
    shared: &Shared,
    raw: &serde_json::Value,
    order: Result<payloads::GqlOrder, String>,
) -> Result<Option<DateTime<Utc>>, ShopifyError> {
    let original = raw.to_string();
    let pages_max = shared.config.reconcile.line_pages_max;
    let (order, complete) = match order {
        Ok(mut order) => {
            let complete = shared.admin.read_all_lines(&mut order, pages_max).await?;
            (order.into_order(), complete)
        }
        Err(reason) => (Err(reason), true),
    };
    let order = match order {
        Ok(order) => order,
        Err(reason) => {
            let reason = format!("orders query: {reason}");
            send_dead_letter(shared, original.as_bytes(), mapping::INVALID_PAYLOAD, &reason).await?;
            return Ok(None);
        }
    };
    let (movements, _) = emit(shared, mapping::order_all_facts(&order), original.as_bytes()).await?;
    shared.metrics.reconcile_movements_total.inc_by(movements as u64);
    if !complete {
        warn!(order_id = order.id, "shopify order reconciled without all its lines");
        let reason = format!(
            "orders query: not every line of order {} could be read in {pages_max} more pages (line_pages_max); \
             the {} lines read were mapped",
            order.id,
            order.line_items.len() + order.refunds.iter().map(|r| r.lines.len()).sum::<usize>()
        );
        send_dead_letter(shared, original.as_bytes(), mapping::LINES_TRUNCATED, &reason).await?;
    }
    Ok(order.updated_at)
}
