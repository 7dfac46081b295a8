//! The Shopify connector through `onhand serve`, against a fake Shopify: webhooks become
//! movements once (re-delivered, replayed with fresh headers or under another topic),
//! stale deliveries are refused, unmapped items reach the dead-letter topic, the
//! reconciliation emits what the webhooks missed with the same ids, every line of a large
//! order included, and the sink keeps the web store's availability right through
//! throttling, failures and an outage.

mod common;

use std::net::SocketAddr;

use common::{shopify::*, *};
use onhand::app::App;
use onhand_core::{
    config::{ChannelConfig, Config},
    event::Sku,
    product::Product,
    testing::unique_name,
};
use rdkafka::message::{Headers, Message};
use serde_json::{json, Value};

const ORDERS_CREATE: &str = include_str!("../connectors/src/shopify/fixtures/orders_create.json");
const ORDERS_CANCELLED: &str = include_str!("../connectors/src/shopify/fixtures/orders_cancelled.json");
const REFUNDS_CREATE: &str = include_str!("../connectors/src/shopify/fixtures/refunds_create.json");
const GRAPHQL_ORDERS: &str = include_str!("../connectors/src/shopify/fixtures/graphql_orders.json");

const RICE: &str = "7891000100103";
const OIL: &str = "7891000100257";
const RICE_ITEM: u64 = 271878346596884015;
const OIL_ITEM: u64 = 271878346596884016;
/// The web store's Shopify location, which the sink pushes to; onhand's `dc-sp`.
const WEB_LOCATION: u64 = 48752903;

/// A configuration with the Shopify connector pointed at `admin` (the fake, or a proxy).
async fn shopify_config(admin: SocketAddr, sink: bool) -> Config {
    let mut config = test_config(3).await;
    config.channels.insert(
        "web".into(),
        ChannelConfig { all_locations: false, locations: vec!["dc-sp".into()], ..ChannelConfig::default() },
    );
    let mut section = section(admin);
    section["echo_settle_ms"] = json!(300);
    section["reconcile"] = json!({ "interval_s": 1, "initial_lookback_h": 1 });
    section["http"] = json!({ "request_timeout_ms": 2000, "backoff_ms_min": 50, "backoff_ms_max": 500 });
    if sink {
        section["sink"] = json!({ "channel": "web", "location_id": WEB_LOCATION, "group_id": unique_name("sink"),
            "linger_ms": 50, "batch_size_max": 10 });
    }
    config.connectors.insert("shopify".into(), section);
    config
}

async fn start(config: &Config) -> App {
    let app = serve(config).await;
    let product = |sku: &str, variant: &str, item: u64| Product {
        sku: Sku::parse(sku).unwrap(),
        name: format!("product {sku}"),
        category: Some("grocery".into()),
        attributes: [
            ("shopify_variant_id".to_string(), variant.to_string()),
            ("shopify_inventory_item_id".to_string(), item.to_string()),
        ]
        .into(),
    };
    app.db.put_products(&[product(RICE, "808950810", RICE_ITEM), product(OIL, "49148385", OIL_ITEM)]).await.unwrap();
    app
}

async fn receive(app: &App, id: &str, sku: &str, quantity: i64) {
    let movement = json!({
        "event_id": id, "source": { "system": "api", "instance": "test", "ref": id },
        "sku": sku, "location": "dc-sp", "kind": "receipt", "quantity": quantity,
        "occurred_at": "2026-11-20T10:00:00Z"
    });
    let (status, answer) = http_post(app.local_addr, "/v1/movements", "application/json", movement.to_string()).await;
    assert_eq!(status, 202, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_become_movements_once_and_bad_ones_change_nothing() {
    onhand_core::skip_without_servers!();
    let fake = FakeShopify::start().await;
    let config = shopify_config(fake.addr, false).await;
    let app = start(&config).await;
    let addr = app.local_addr;
    receive(&app, "r1", RICE, 10).await;
    receive(&app, "r2", OIL, 5).await;
    until_recorded(&app, 2, 60).await;

    let (status, refused) = deliver(addr, "orders/create", "e-bad", ORDERS_CREATE, "not-the-secret").await;
    assert_eq!((status, refused["error"]["code"].as_str()), (401, Some("invalid_signature")), "{refused}");
    let unsigned = reqwest::Client::new()
        .post(format!("http://{addr}/connectors/shopify/webhooks"))
        .header("X-Shopify-Topic", "orders/create")
        .body(ORDERS_CREATE)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);

    // Shopify delivers the order twice: two sales, counted once.
    for _ in 0..2 {
        let (status, answer) = deliver(addr, "orders/create", "e-order", ORDERS_CREATE, SECRET).await;
        assert_eq!((status, answer["movements"].as_u64()), (200, Some(2)), "{answer}");
    }
    on_hand_is(&app, RICE, "dc-sp", 8).await;
    on_hand_is(&app, OIL, "dc-sp", 4).await;
    until_recorded(&app, 4, 60).await;

    // A return to the web store's location, and a refund without restock.
    let (status, _) = deliver(addr, "refunds/create", "e-refund", REFUNDS_CREATE, SECRET).await;
    assert_eq!(status, 200);
    on_hand_is(&app, RICE, "dc-sp", 9).await;
    // The cancellation restocks the rest through its own refund.
    let (status, answer) = deliver(addr, "orders/cancelled", "e-cancel", ORDERS_CANCELLED, SECRET).await;
    assert_eq!((status, answer["movements"].as_u64()), (200, Some(2)), "{answer}");
    on_hand_is(&app, RICE, "store-012", 2).await;
    on_hand_is(&app, OIL, "dc-sp", 5).await;

    // A large order (a long note) is read whole: webhooks have their own body limit.
    let mut large: Value = serde_json::from_str(ORDERS_CREATE).unwrap();
    large["id"] = json!(777);
    large["note"] = json!("x".repeat(200 * 1024));
    large["line_items"].as_array_mut().unwrap().truncate(1);
    let (status, answer) = deliver(addr, "orders/create", "e-large", &large.to_string(), SECRET).await;
    assert_eq!((status, answer["movements"].as_u64()), (200, Some(1)), "{answer}");
    on_hand_is(&app, RICE, "dc-sp", 7).await;

    // A captured body sent again with fresh headers is the same order: duplicates.
    let (status, answer) = deliver(addr, "orders/create", "e-order-replayed", ORDERS_CREATE, SECRET).await;
    assert_eq!((status, answer["movements"].as_u64()), (200, Some(2)), "{answer}");
    // Shopify's retries keep the time the event was triggered: one from three days ago is
    // refused, whatever it carries, and counted.
    let mut late: Value = serde_json::from_str(ORDERS_CREATE).unwrap();
    late["id"] = json!(888);
    let three_days_ago = (chrono::Utc::now() - chrono::Duration::days(3)).to_rfc3339();
    let (status, refused) =
        deliver_triggered_at(addr, "orders/create", "e-late", &late.to_string(), SECRET, Some(&three_days_ago)).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (422, Some("stale_delivery")), "{refused}");
    assert_eq!(metric(&app, "onhand_shopify_webhooks_total{outcome=\"stale\",topic=\"orders_create\"}"), 1.0);
    // Without the header (older deliveries, tools) the delivery is taken.
    late["id"] = json!(889);
    late["line_items"].as_array_mut().unwrap().truncate(1);
    let (status, answer) =
        deliver_triggered_at(addr, "orders/create", "e-untimed", &late.to_string(), SECRET, None).await;
    assert_eq!((status, answer["movements"].as_u64()), (200, Some(1)), "{answer}");
    on_hand_is(&app, RICE, "dc-sp", 5).await;

    let (status, answer) = deliver(addr, "products/update", "e-other", "{}", SECRET).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("ignored")));
    assert_eq!(metric(&app, "onhand_shopify_webhooks_total{outcome=\"ignored\",topic=\"other\"}"), 1.0);

    // An order of a product the catalog does not know: its line goes to the DLQ.
    let mut unknown: Value = serde_json::from_str(ORDERS_CREATE).unwrap();
    unknown["id"] = json!(555);
    unknown["line_items"][1]["variant_id"] = json!(1);
    unknown["line_items"].as_array_mut().unwrap().remove(0);
    let (status, answer) = deliver(addr, "orders/create", "e-unknown", &unknown.to_string(), SECRET).await;
    assert_eq!((status, answer["dead_letters"].as_u64()), (200, Some(1)), "{answer}");
    let dead = consume_all(&config.kafka.topics.dlq, 1);
    let header = |name: &str| {
        let headers = dead[0].headers().unwrap();
        headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).to_string())
    };
    assert_eq!(header("onhand.dlq.reason_code").as_deref(), Some("shopify_unmapped_sku"));
    assert_eq!(header("onhand.dlq.source").as_deref(), Some("shopify"));
    assert!(header("onhand.dlq.reason").unwrap().contains("shopify:order:555:line:141249953214522974"));
    assert_eq!(dead[0].payload(), Some(unknown.to_string().as_bytes()), "the original webhook body");

    // The topic is not signed either: an inventory body sent as an order is no order.
    let level = json!({ "inventory_item_id": RICE_ITEM, "location_id": WEB_LOCATION, "available": 1,
        "updated_at": "2026-11-21T09:14:02-03:00" });
    let (status, answer) = deliver(addr, "orders/create", "e-mismatch", &level.to_string(), SECRET).await;
    assert_eq!((status, answer["movements"].as_u64(), answer["dead_letters"].as_u64()), (200, Some(0), Some(1)));
    assert_eq!(metric(&app, "onhand_shopify_dlq_records_total{reason=\"shopify_invalid_payload\"}"), 1.0);

    // 2 receipts, 4 sales, 1 return, 2 cancellation returns: the bad deliveries added nothing.
    until_recorded(&app, 9, 60).await;
    on_hand_is(&app, RICE, "dc-sp", 5).await;
    assert_eq!(metric(&app, "onhand_ledger_duplicates_skipped_total"), 4.0);
    assert_eq!(
        metric(&app, "onhand_shopify_webhooks_total{outcome=\"invalid_signature\",topic=\"orders_create\"}"),
        2.0
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_whose_webhook_never_came_is_reconciled_with_the_same_event_ids() {
    onhand_core::skip_without_servers!();
    let fake = FakeShopify::start().await;
    let mut node = serde_json::from_str::<Value>(GRAPHQL_ORDERS).unwrap()["data"]["orders"]["nodes"][0].clone();
    node["updatedAt"] = json!((chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339());
    fake.with(|s| s.orders.push(node));
    let config = shopify_config(fake.addr, false).await;
    let app = start(&config).await;
    receive(&app, "r1", RICE, 10).await;
    receive(&app, "r2", OIL, 5).await;

    // Two sales and the refund's restocked line, found by polling Shopify.
    until_recorded(&app, 5, 60).await;
    on_hand_is(&app, RICE, "dc-sp", 9).await;
    on_hand_is(&app, OIL, "dc-sp", 4).await;
    let cursor = app.db.connector_state("shopify", "reconcile_cursor").await.unwrap();
    assert!(cursor.is_some(), "the cursor is saved once Kafka acknowledged");

    // The webhooks arrive late after all: nothing counts twice.
    deliver(app.local_addr, "orders/create", "late-1", ORDERS_CREATE, SECRET).await;
    deliver(app.local_addr, "refunds/create", "late-2", REFUNDS_CREATE, SECRET).await;
    eventually("the late webhooks skipped as duplicates", 60, || async {
        (metric(&app, "onhand_ledger_duplicates_skipped_total") >= 3.0).then_some(())
    })
    .await;
    assert_eq!(app.db.movement_count().await.unwrap(), 5);
    on_hand_is(&app, RICE, "dc-sp", 9).await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sink_pushes_the_newest_availability_through_throttling_failures_and_an_outage() {
    onhand_core::skip_without_servers!();
    let fake = FakeShopify::start().await;
    fake.with(|s| s.levels.extend([(RICE_ITEM, 0), (OIL_ITEM, 0)]));
    let proxy = Proxy::start(fake.addr).await;
    let mut config = shopify_config(proxy.addr, true).await;
    config.connectors.get_mut("shopify").unwrap()["reconcile"]["enabled"] = json!(false);
    let app = start(&config).await;

    receive(&app, "r1", RICE, 10).await;
    eventually("rice pushed", 60, || async { (fake.available(RICE_ITEM) == Some(10)).then_some(()) }).await;

    // Someone changed the quantity in Shopify: the compare fails, the sink re-reads.
    fake.with(|s| s.levels.insert(RICE_ITEM, 3));
    fake.with(|s| {
        s.throttle_next = 2;
        s.fail_next = 2;
    });
    receive(&app, "r2", RICE, 5).await;
    eventually("rice pushed after throttling, failures and a stale compare", 60, || async {
        (fake.available(RICE_ITEM) == Some(15)).then_some(())
    })
    .await;
    assert!(metric(&app, "onhand_shopify_pushes_total{outcome=\"throttled\"}") >= 1.0);
    assert!(metric(&app, "onhand_shopify_pushes_total{outcome=\"failed\"}") >= 1.0);
    assert!(fake.with(|s| s.stale_answers) >= 1);

    // Shopify goes offline while levels keep changing: one pending entry per item.
    proxy.cut();
    for i in 0..20 {
        let sku = if i % 2 == 0 { RICE } else { OIL };
        receive(&app, &format!("offline-{i}"), sku, 1).await;
    }
    on_hand_is(&app, OIL, "dc-sp", 10).await;
    on_hand_is(&app, RICE, "dc-sp", 25).await;
    eventually("both items pending", 60, || async {
        (metric(&app, "onhand_shopify_pending_items") == 2.0).then_some(())
    })
    .await;
    let applied_before = fake.with(|s| s.applied.len());
    proxy.restore();
    eventually("the newest values pushed once shopify is back", 30, || async {
        (fake.available(RICE_ITEM) == Some(25) && fake.available(OIL_ITEM) == Some(10)).then_some(())
    })
    .await;
    let after: Vec<Applied> = fake.with(|s| s.applied[applied_before..].to_vec());
    assert!(after.len() <= 4, "only the newest value of each item went out: {after:?}");
    // Values only grew here, so an older value overwriting a newer one would show as a drop.
    for item in [RICE_ITEM, OIL_ITEM] {
        let pushed: Vec<i64> = fake.with(|s| s.applied.iter().filter(|(i, _)| *i == item).map(|(_, q)| *q).collect());
        assert!(pushed.windows(2).all(|w| w[0] <= w[1]), "item {item} pushed {pushed:?}");
    }
    eventually("nothing pending", 30, || async { (metric(&app, "onhand_shopify_pending_items") == 0.0).then_some(()) })
        .await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_echo_is_ignored_and_a_manual_change_becomes_an_adjustment() {
    onhand_core::skip_without_servers!();
    let fake = FakeShopify::start().await;
    fake.with(|s| s.levels.extend([(RICE_ITEM, 0), (OIL_ITEM, 0)]));
    let mut config = shopify_config(fake.addr, true).await;
    config.connectors.get_mut("shopify").unwrap()["reconcile"]["enabled"] = json!(false);
    let app = start(&config).await;
    receive(&app, "r1", RICE, 10).await;
    eventually("rice pushed", 60, || async { (fake.available(RICE_ITEM) == Some(10)).then_some(()) }).await;
    eventually("the push recorded", 30, || async {
        let key = format!("pushed:{RICE_ITEM}:{WEB_LOCATION}");
        (app.db.connector_state("shopify", &key).await.ok()?.as_deref() == Some("10")).then_some(())
    })
    .await;

    let update = |available: i64| {
        json!({ "inventory_item_id": RICE_ITEM, "location_id": WEB_LOCATION, "available": available,
            "updated_at": "2026-11-21T09:14:02-03:00",
            "admin_graphql_api_id": format!("gid://shopify/InventoryLevel/{WEB_LOCATION}?inventory_item_id={RICE_ITEM}") })
        .to_string()
    };
    let (status, answer) = deliver(app.local_addr, "inventory_levels/update", "echo-1", &update(10), SECRET).await;
    assert_eq!((status, answer["movements"].as_u64()), (200, Some(0)), "{answer}");
    assert_eq!(metric(&app, "onhand_shopify_level_updates_total{verdict=\"echo\"}"), 1.0);

    // A person counted 13 in Shopify's admin: onhand adjusts by +3 and keeps pushing 13.
    fake.with(|s| s.levels.insert(RICE_ITEM, 13));
    let (status, answer) = deliver(app.local_addr, "inventory_levels/update", "manual-1", &update(13), SECRET).await;
    assert_eq!((status, answer["movements"].as_u64()), (200, Some(1)), "{answer}");
    on_hand_is(&app, RICE, "dc-sp", 13).await;
    // Delivered again: judged already.
    deliver(app.local_addr, "inventory_levels/update", "manual-1", &update(13), SECRET).await;
    assert_eq!(metric(&app, "onhand_shopify_level_updates_total{verdict=\"manual_change\"}"), 1.0);
    until_recorded(&app, 2, 60).await;
    assert_eq!(fake.available(RICE_ITEM), Some(13));

    // Onhand moves on and pushes 15; then the captured body of the manual change comes
    // again with a fresh event id. It is older than what was judged: no adjustment, and
    // the baseline stays the 15 Shopify holds.
    receive(&app, "r2", RICE, 2).await;
    eventually("15 pushed and recorded", 60, || async {
        let key = format!("pushed:{RICE_ITEM}:{WEB_LOCATION}");
        let recorded = app.db.connector_state("shopify", &key).await.ok()?;
        (fake.available(RICE_ITEM) == Some(15) && recorded.as_deref() == Some("15")).then_some(())
    })
    .await;
    let (status, answer) =
        deliver(app.local_addr, "inventory_levels/update", "manual-1-replayed", &update(13), SECRET).await;
    assert_eq!((status, answer["movements"].as_u64()), (200, Some(0)), "{answer}");
    let (status, answer) =
        deliver(app.local_addr, "inventory_levels/update", "echo-1-replayed", &update(10), SECRET).await;
    assert_eq!((status, answer["movements"].as_u64()), (200, Some(0)), "{answer}");
    assert_eq!(metric(&app, "onhand_shopify_level_updates_total{verdict=\"superseded\"}"), 3.0);
    let key = format!("pushed:{RICE_ITEM}:{WEB_LOCATION}");
    assert_eq!(app.db.connector_state("shopify", &key).await.unwrap().as_deref(), Some("15"));
    until_recorded(&app, 3, 60).await;
    on_hand_is(&app, RICE, "dc-sp", 15).await;
    app.stop().await.unwrap();
}

/// An order node of the GraphQL `orders` query with `lines` lines of one unit of rice and
/// a refund that returns `refund_lines` of them to the web store's location.
fn large_order(id: u64, lines: u64, refund_lines: u64) -> Value {
    let line = |n: u64| {
        json!({ "id": format!("gid://shopify/LineItem/{}", id * 1000 + n), "sku": RICE, "quantity": 1,
            "variant": { "id": "gid://shopify/ProductVariant/808950810" } })
    };
    let refund_line = |n: u64| {
        json!({ "id": format!("gid://shopify/RefundLineItem/{}", id * 1000 + n), "quantity": 1,
            "restockType": "RETURN", "location": { "id": format!("gid://shopify/Location/{WEB_LOCATION}") },
            "lineItem": line(n) })
    };
    json!({
        "id": format!("gid://shopify/Order/{id}"), "name": "#2000", "createdAt": "2026-11-20T18:31:07Z",
        "updatedAt": (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339(),
        "cancelledAt": null, "retailLocation": null,
        "lineItems": { "nodes": (1..=lines).map(line).collect::<Vec<_>>() },
        "refunds": [{ "id": format!("gid://shopify/Refund/{id}"), "createdAt": "2026-11-21T13:12:31Z",
            "refundLineItems": { "nodes": (1..=refund_lines).map(refund_line).collect::<Vec<_>>() } }],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_with_more_lines_than_a_page_is_reconciled_whole() {
    onhand_core::skip_without_servers!();
    let fake = FakeShopify::start().await;
    // More lines than one query may ask for, in the order and in its refund.
    fake.with(|s| s.orders.push(large_order(900, 300, 260)));
    let mut config = shopify_config(fake.addr, false).await;
    config.connectors.get_mut("shopify").unwrap()["reconcile"]["interval_s"] = json!(2);
    let app = start(&config).await;
    receive(&app, "r1", RICE, 1000).await;

    // The receipt, 300 sales and 260 returns, each line once.
    until_recorded(&app, 561, 120).await;
    on_hand_is(&app, RICE, "dc-sp", 1000 - 300 + 260).await;
    assert!(fake.with(|s| s.line_queries) >= 3, "the rest of the lines read with order(id:) and refund(id:)");
    assert_eq!(metric(&app, "onhand_shopify_dlq_records_total{reason=\"shopify_lines_truncated\"}"), 0.0);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_with_more_lines_than_line_pages_max_records_the_lines_read() {
    onhand_core::skip_without_servers!();
    let fake = FakeShopify::start().await;
    fake.with(|s| s.orders.push(large_order(901, 300, 10)));
    let mut config = shopify_config(fake.addr, false).await;
    let reconcile = &mut config.connectors.get_mut("shopify").unwrap()["reconcile"];
    reconcile["interval_s"] = json!(2);
    reconcile["line_pages_max"] = json!(1);
    let app = start(&config).await;
    receive(&app, "r1", RICE, 1000).await;

    // A page of orders reads 7 lines of each (and of its refund); one more query, 250 more
    // lines; the rest of the order and of its refund is not read.
    until_recorded(&app, 1 + 257 + 7, 120).await;
    eventually("the order dead-lettered as truncated", 60, || async {
        (metric(&app, "onhand_shopify_dlq_records_total{reason=\"shopify_lines_truncated\"}") >= 1.0).then_some(())
    })
    .await;
    on_hand_is(&app, RICE, "dc-sp", 1000 - 257 + 7).await;

    // The order's webhook carries every line: the rest come with it, the lines read are
    // duplicates.
    let webhook = json!({ "id": 901, "name": "#2000", "created_at": "2026-11-20T18:31:07Z",
        "line_items": (1..=300u64).map(|n| json!({ "id": 901_000 + n, "variant_id": 808950810, "sku": RICE,
            "quantity": 1 })).collect::<Vec<_>>() });
    let (status, answer) = deliver(app.local_addr, "orders/create", "e-901", &webhook.to_string(), SECRET).await;
    assert_eq!((status, answer["movements"].as_u64()), (200, Some(300)), "{answer}");
    until_recorded(&app, 1 + 300 + 7, 120).await;
    on_hand_is(&app, RICE, "dc-sp", 1000 - 300 + 7).await;
    app.stop().await.unwrap();
}
