//! Orders against the real broker and PostgreSQL (`docs/orders.md`): a checkout is
//! received at once, decided by the order workers through the orders topic, and never
//! gets a unit another order got.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{
    webhooks::{self, receiver},
    *,
};
use onhand_core::config::{CalendarConfig, ChannelConfig, Config};
use reqwest::Method;
use serde_json::{json, Value};

fn movement(id: &str, sku: &str, location: &str, quantity: i64) -> Value {
    json!({
        "event_id": id, "source": { "system": "api", "instance": "test", "ref": id },
        "sku": sku, "location": location, "kind": "receipt", "quantity": quantity,
        "occurred_at": "2026-11-20T10:00:00Z"
    })
}

/// Every day open, two slots of `capacity` standard deliveries and pickups each.
fn calendar(capacity: u32) -> CalendarConfig {
    CalendarConfig {
        days: ["mon", "tue", "wed", "thu", "fri", "sat", "sun"].map(String::from).into(),
        slots: vec!["09-13".into(), "13-18".into()],
        capacity: [("standard".to_string(), capacity), ("pickup".to_string(), capacity)].into(),
        lead_days: BTreeMap::new(),
    }
}

async fn orders_config(capacity: u32) -> Config {
    let mut config = test_config(3).await;
    config.channels.insert(
        "web".into(),
        ChannelConfig {
            all_locations: false,
            locations: vec!["dc-01".into(), "store-001".into(), "store-002".into()],
            ..ChannelConfig::default()
        },
    );
    for location in ["dc-01", "store-001", "store-002"] {
        config.orders.calendars.insert(location.into(), calendar(capacity));
    }
    config.orders.regions.insert("01".into(), vec!["dc-01".into()]);
    config
}

fn order(lines: Value, delivery: Value) -> Value {
    json!({
        "channel": "web", "customer": "cust-1", "lines": lines,
        "payment": {"method": "pix", "token": "pix_7f3a9c2e1b"},
        "delivery": delivery
    })
}

fn to_address() -> Value {
    json!({"method": "standard", "address": {
        "line1": "Av. Paulista, 1000", "city": "São Paulo", "postal_code": "01310-100", "country": "BR"}})
}

async fn place(addr: std::net::SocketAddr, key: &str, body: &Value) -> (u16, Value) {
    http_send(Method::POST, addr, "/v1/orders", &[("idempotency-key", key)], Some(body.clone())).await
}

/// Waits for the order's decision.
async fn decided(addr: std::net::SocketAddr, id: &str) -> Value {
    eventually(&format!("order {id} decided"), 90, || async {
        let (status, body) = http_get(addr, &format!("/v1/orders/{id}")).await;
        (status == 200 && body["status"] != "received").then_some(body)
    })
    .await
}

async fn stock(app: &onhand::app::App, movements: Value, sku: &str, location: &str, on_hand: i64) {
    let (status, answer) = http_post(app.local_addr, "/v1/movements", "application/json", movements.to_string()).await;
    assert_eq!(status, 202, "{answer}");
    on_hand_is(app, sku, location, on_hand).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_checkouts_for_the_last_three_units_schedule_three_and_reject_the_rest_with_suggestions() {
    onhand_core::skip_without_servers!();
    let config = orders_config(1_000).await;
    let app = serve(&config).await;
    for (sku, category) in [("TV-55", "tv"), ("TV-50", "tv")] {
        let body = json!({"name": sku, "category": category, "attributes": {}});
        let (status, answer) =
            http_send(Method::PUT, app.local_addr, &format!("/v1/products/{sku}"), &[], Some(body)).await;
        assert!(status == 200 || status == 201, "{answer}");
    }
    stock(
        &app,
        json!([movement("r1", "TV-55", "dc-01", 3), movement("r2", "TV-50", "dc-01", 40)]),
        "TV-50",
        "dc-01",
        40,
    )
    .await;
    on_hand_is(&app, "TV-55", "dc-01", 3).await;

    let body = order(json!([{"sku": "TV-55", "quantity": 1}]), to_address());
    let posts = (0..100).map(|i| {
        let body = body.clone();
        let addr = app.local_addr;
        tokio::spawn(async move { place(addr, &format!("buyer-{i}"), &body).await })
    });
    let mut ids = Vec::new();
    for answer in futures::future::join_all(posts).await {
        let (status, answer) = answer.unwrap();
        assert_eq!((status, &answer["status"]), (202, &json!("received")), "{answer}");
        ids.push(answer["id"].as_str().unwrap().to_string());
    }
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for id in &ids {
        let order = decided(app.local_addr, id).await;
        let outcome = match order["status"].as_str().unwrap() {
            "scheduled" => {
                assert_eq!(order["decision"]["location"], "dc-01", "{order}");
                "scheduled".to_string()
            }
            _ => {
                assert_eq!(order["decision"]["reason"], "out_of_stock", "{order}");
                let line = &order["decision"]["short_lines"][0];
                assert_eq!(line["sku"], "TV-55", "{order}");
                assert_eq!(line["suggestions"][0]["sku"], "TV-50", "{order}");
                "rejected".to_string()
            }
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    assert_eq!(outcomes, BTreeMap::from([("rejected".to_string(), 97), ("scheduled".to_string(), 3)]));
    // The three sales reach the ledger: nothing is left, and nothing below zero.
    on_hand_is(&app, "TV-55", "dc-01", 0).await;
    let (_, queue) = http_get(app.local_addr, "/v1/orders/queue").await;
    assert_eq!((queue["waiting"].as_i64(), queue["saturated"].as_bool()), (Some(0), Some(false)), "{queue}");
    let recent = &queue["recent"];
    assert_eq!(recent["decided"], json!({"rejected": 97, "scheduled": 3}), "{queue}");
    assert!(recent["decision_p99_seconds"].as_f64() >= recent["decision_p50_seconds"].as_f64(), "{queue}");
    // Every change is an event on the orders topic: each order's receipt and decision.
    let events = consume_all(&config.kafka.topics.orders, 200);
    let changes: std::collections::BTreeSet<(String, String)> = events
        .iter()
        .map(|m| {
            let event: Value = serde_json::from_slice(rdkafka::Message::payload(m).unwrap()).unwrap();
            assert_eq!(event["type"], "onhand.order.v1", "{event}");
            (event["order_id"].as_str().unwrap().to_string(), event["status"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(changes.len(), 200, "{changes:?}");
    let decided_by_outcome =
        |outcome: &str| metric(&app, &format!("onhand_orders_decided_total{{outcome=\"{outcome}\"}}"));
    assert_eq!((decided_by_outcome("scheduled"), decided_by_outcome("out_of_stock")), (3.0, 97.0));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_orders_are_refused_at_once_field_by_field_and_a_retry_gets_the_same_order() {
    onhand_core::skip_without_servers!();
    let config = orders_config(10).await;
    let app = serve(&config).await;
    let mut bad = order(json!([{"sku": "TV-55", "quantity": 0}]), to_address());
    bad["payment"]["token"] = json!("4111 1111 1111 1111");
    let (status, answer) = place(app.local_addr, "bad-1", &bad).await;
    assert_eq!((status, &answer["error"]["code"]), (422, &json!("invalid_order")), "{answer}");
    let fields: Vec<&str> = answer["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["lines[0].quantity", "payment.token"], "{answer}");
    let (status, answer) =
        http_send(Method::POST, app.local_addr, "/v1/orders", &[], Some(order(json!([]), to_address()))).await;
    assert_eq!((status, &answer["error"]["code"]), (400, &json!("idempotency_key_required")), "{answer}");

    let good = order(json!([{"sku": "TV-55", "quantity": 1}]), to_address());
    let (status, first) = place(app.local_addr, "same", &good).await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = place(app.local_addr, "same", &good).await;
    assert_eq!((status, &again["id"]), (202, &first["id"]), "{again}");
    let mut other = good.clone();
    other["customer"] = json!("someone-else");
    let (status, reused) = place(app.local_addr, "same", &other).await;
    assert_eq!((status, &reused["error"]["code"]), (422, &json!("idempotency_key_reused")), "{reused}");
    let (status, missing) = http_get(app.local_addr, "/v1/orders/no-such-order").await;
    assert_eq!((status, &missing["error"]["code"]), (404, &json!("order_not_found")), "{missing}");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pickup_without_stock_names_the_stores_that_have_it_and_a_full_calendar_has_no_capacity() {
    onhand_core::skip_without_servers!();
    let config = orders_config(1).await;
    let app = serve(&config).await;
    stock(&app, json!([movement("p1", "BIKE", "store-002", 5)]), "BIKE", "store-002", 5).await;

    let pickup = order(json!([{"sku": "BIKE", "quantity": 1}]), json!({"method": "pickup", "store": "store-001"}));
    let (_, placed) = place(app.local_addr, "pickup-1", &pickup).await;
    let rejected = decided(app.local_addr, placed["id"].as_str().unwrap()).await;
    assert_eq!(rejected["decision"]["reason"], "out_of_stock", "{rejected}");
    let line = &rejected["decision"]["short_lines"][0];
    assert_eq!(line["available_at"], json!([{"location": "store-002", "available": 5}]), "{rejected}");

    // One order a slot, two slots a day, a horizon of one day: four orders fit, the fifth not.
    let mut config = config.clone();
    config.orders.horizon_days = 1;
    app.stop().await.unwrap();
    let app = serve(&config).await;
    let bike = order(json!([{"sku": "BIKE", "quantity": 1}]), to_address());
    let mut statuses = Vec::new();
    for i in 0..5 {
        let (_, placed) = place(app.local_addr, &format!("bike-{i}"), &bike).await;
        let order = decided(app.local_addr, placed["id"].as_str().unwrap()).await;
        statuses.push(order["decision"]["reason"].as_str().unwrap_or("scheduled").to_string());
    }
    assert_eq!(statuses, ["scheduled", "scheduled", "scheduled", "scheduled", "no_delivery_capacity"]);
    on_hand_is(&app, "BIKE", "store-002", 1).await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_queue_says_it_is_saturated_while_no_worker_runs_and_recovers_when_one_does() {
    onhand_core::skip_without_servers!();
    let mut config = orders_config(10).await;
    config.orders.queue_age_max_s = 1;
    let mut api_only = config.clone();
    api_only.orders.enabled = false;
    let api = serve(&api_only).await;
    stock(&api, json!([movement("q1", "LAMP", "dc-01", 5)]), "LAMP", "dc-01", 5).await;
    let lamp = order(json!([{"sku": "LAMP", "quantity": 1}]), to_address());
    let (status, first) = place(api.local_addr, "q-1", &lamp).await;
    assert_eq!(status, 202, "{first}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (status, refused) = place(api.local_addr, "q-2", &lamp).await;
    assert_eq!((status, &refused["error"]["code"]), (503, &json!("order_queue_saturated")), "{refused}");
    assert_eq!((refused["queue"]["waiting"].as_i64(), refused["queue"]["limit_seconds"].as_u64()), (Some(1), Some(1)));
    assert!(refused["queue"]["oldest_waiting_seconds"].as_f64().unwrap() > 1.0, "{refused}");

    // A worker starts: the waiting order is decided and new orders are taken again.
    let workers = serve(&config).await;
    decided(api.local_addr, first["id"].as_str().unwrap()).await;
    let (status, taken) = place(api.local_addr, "q-3", &lamp).await;
    assert_eq!(status, 202, "{taken}");
    workers.stop().await.unwrap();
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_order_gives_its_units_and_its_slot_back_once() {
    onhand_core::skip_without_servers!();
    let mut config = orders_config(1).await;
    for calendar in config.orders.calendars.values_mut() {
        calendar.lead_days.insert("standard".into(), 1);
    }
    config.orders.horizon_days = 1;
    let app = serve(&config).await;
    stock(&app, json!([movement("c1", "DESK", "dc-01", 2)]), "DESK", "dc-01", 2).await;
    let desk = order(json!([{"sku": "DESK", "quantity": 2}]), to_address());
    let (_, placed) = place(app.local_addr, "desk-1", &desk).await;
    let id = placed["id"].as_str().unwrap().to_string();
    let scheduled = decided(app.local_addr, &id).await;
    assert_eq!(scheduled["status"], "scheduled", "{scheduled}");
    on_hand_is(&app, "DESK", "dc-01", 0).await;

    let cancel = format!("/v1/orders/{id}/cancel");
    let (status, cancelled) = http_send(Method::POST, app.local_addr, &cancel, &[], None).await;
    assert_eq!((status, &cancelled["status"]), (200, &json!("cancelled")), "{cancelled}");
    on_hand_is(&app, "DESK", "dc-01", 2).await;
    let (status, again) = http_send(Method::POST, app.local_addr, &cancel, &[], None).await;
    assert_eq!((status, &again["status"]), (200, &json!("cancelled")), "{again}");
    // Counted once: the units are back once, and the slot it took is free again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    on_hand_is(&app, "DESK", "dc-01", 2).await;
    let (_, next) = place(app.local_addr, "desk-2", &desk).await;
    let next = decided(app.local_addr, next["id"].as_str().unwrap()).await;
    assert_eq!((&next["status"], &next["decision"]["slot"]), (&json!("scheduled"), &scheduled["decision"]["slot"]));

    // A rejected order has nothing to cancel.
    let (_, short) = place(app.local_addr, "desk-3", &desk).await;
    let short = decided(app.local_addr, short["id"].as_str().unwrap()).await;
    assert_eq!(short["status"], "rejected", "{short}");
    let (status, refused) = http_send(
        Method::POST,
        app.local_addr,
        &format!("/v1/orders/{}/cancel", short["id"].as_str().unwrap()),
        &[],
        None,
    )
    .await;
    assert_eq!((status, &refused["error"]["code"]), (409, &json!("order_not_cancellable")), "{refused}");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_back_in_stock_subscriber_is_told_once_when_the_channel_has_the_sku_again() {
    onhand_core::skip_without_servers!();
    let config = orders_config(10).await;
    let app = serve(&config).await;
    let wish = json!({"channel": "web", "sku": "KETTLE", "customer": "cust-9"});
    let (status, watching) =
        http_send(Method::POST, app.local_addr, "/v1/back-in-stock", &[], Some(wish.clone())).await;
    assert_eq!((status, &watching["notified_at"]), (201, &Value::Null), "{watching}");
    let (_, again) = http_send(Method::POST, app.local_addr, "/v1/back-in-stock", &[], Some(wish)).await;
    assert_eq!(again["id"], watching["id"], "the same wish is one wish");
    let path = format!("/v1/back-in-stock/{}", watching["id"].as_str().unwrap());

    // Stock at a location the channel does not sell from tells nobody.
    stock(&app, json!([movement("k0", "KETTLE", "store-999", 4)]), "KETTLE", "store-999", 4).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(http_get(app.local_addr, &path).await.1["notified_at"], Value::Null);

    stock(&app, json!([movement("k1", "KETTLE", "store-001", 2)]), "KETTLE", "store-001", 2).await;
    let told = eventually("the customer told", 30, || async {
        let (_, wish) = http_get(app.local_addr, &path).await;
        wish["notified_at"].is_string().then_some(wish)
    })
    .await;
    // More sweeps and more stock tell no one twice.
    stock(&app, json!([movement("k2", "KETTLE", "store-001", 3)]), "KETTLE", "store-001", 5).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(http_get(app.local_addr, &path).await.1["notified_at"], told["notified_at"]);
    let events = consume_all(&config.kafka.topics.orders, 1);
    let event: Value = serde_json::from_slice(rdkafka::Message::payload(&events[0]).unwrap()).unwrap();
    assert_eq!(
        (&event["type"], &event["customer"], &event["available"]),
        (&json!("onhand.back-in-stock.v1"), &json!("cust-9"), &json!(2)),
        "{event}"
    );
    assert_eq!(metric(&app, "onhand_orders_back_in_stock_told_total"), 1.0);
    app.stop().await.unwrap();
}

/// The workers as their own process, killed with SIGKILL while they decide and started
/// again: every order is scheduled once, its slot booked once and its unit sold once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_workers_killed_mid_queue_and_restarted_schedule_each_order_once() {
    onhand_core::skip_without_servers!();
    const ORDERS: usize = 150;
    let mut config = orders_config(1_000).await;
    config.orders.enabled = false;
    let app = serve(&config).await;
    stock(&app, json!([movement("w1", "MUG", "dc-01", 1_000)]), "MUG", "dc-01", 1_000).await;

    // The worker process: no ledger, the orders and calendars from a file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.toml");
    let calendar =
        "days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\nslots = [\"09-13\", \"13-18\"]\n\
                    capacity = { standard = 1000 }\n";
    std::fs::write(
        &file,
        format!(
            "[channels.web]\nlocations = [\"dc-01\", \"store-001\", \"store-002\"]\n\n[orders.calendars.dc-01]\n{calendar}"
        ),
    )
    .unwrap();
    let file = file.display().to_string();
    let env =
        [("ONHAND_CONFIG", file.as_str()), ("ONHAND_LEDGER__ENABLED", "false"), ("ONHAND_ALERTS__ENABLED", "false")];
    let mut workers = common::process::Process::serve_with(&config, &env, dir.path(), "workers-0");

    let mug = order(json!([{"sku": "MUG", "quantity": 1}]), to_address());
    let mut ids = Vec::new();
    for i in 0..ORDERS {
        let (status, placed) = place(app.local_addr, &format!("mug-{i}"), &mug).await;
        assert_eq!(status, 202, "{placed}");
        ids.push(placed["id"].as_str().unwrap().to_string());
    }
    let waiting = |app_addr| async move { http_get(app_addr, "/v1/orders/queue").await.1["waiting"].as_i64().unwrap() };
    eventually("some orders decided, not all", 120, || async {
        let left = waiting(app.local_addr).await;
        (left < ORDERS as i64 - 10).then_some(())
    })
    .await;
    workers.kill();
    let left = waiting(app.local_addr).await;
    assert!(left > 0, "the kill must come mid-queue");
    workers = common::process::Process::serve_with(&config, &env, dir.path(), "workers-1");
    for id in &ids {
        let decided = decided(app.local_addr, id).await;
        assert_eq!(decided["status"], "scheduled", "{decided}\n{}", workers.log_tail());
    }
    on_hand_is(&app, "MUG", "dc-01", 1_000 - ORDERS as i64).await;
    let db = onhand_core::db::open(&config.database.url, 2).await.unwrap();
    let today = chrono::Utc::now().date_naive();
    let booked: u32 = db
        .booked_slots("dc-01", "standard", today, today + chrono::Days::new(14))
        .await
        .unwrap()
        .iter()
        .map(|(_, _, n)| n)
        .sum();
    assert_eq!(booked as usize, ORDERS, "one booking per order");
    assert!(workers.terminate(), "a stop with SIGTERM ends cleanly");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cart_holds_its_units_where_the_channel_holds_and_its_order_converts_the_hold() {
    onhand_core::skip_without_servers!();
    let mut config = orders_config(10).await;
    config.channels.get_mut("web").unwrap().hold = true;
    let app = serve(&config).await;
    stock(&app, json!([movement("h1", "CHAIR", "dc-01", 3)]), "CHAIR", "dc-01", 3).await;

    let cart = json!({"channel": "web", "lines": [{"sku": "CHAIR", "quantity": 2}]});
    let (status, held) = http_send(Method::PUT, app.local_addr, "/v1/carts/cart-1", &[], Some(cart)).await;
    assert_eq!((status, &held["hold"]["status"]), (200, &json!("held")), "{held}");
    assert_eq!(held["lines"][0]["available"], 1, "the held units are no longer available to others: {held}");
    // Another cart cannot take what this one holds.
    let greedy = json!({"channel": "web", "lines": [{"sku": "CHAIR", "quantity": 2}]});
    let (_, short) = http_send(Method::PUT, app.local_addr, "/v1/carts/cart-2", &[], Some(greedy)).await;
    assert_eq!((&short["hold"], &short["short_lines"][0]["sku"]), (&Value::Null, &json!("CHAIR")), "{short}");

    let mut from_cart = order(json!([]), to_address());
    from_cart["cart"] = json!("cart-1");
    from_cart.as_object_mut().unwrap().remove("lines");
    let (status, placed) = place(app.local_addr, "cart-order-1", &from_cart).await;
    assert_eq!(status, 202, "{placed}");
    let decided = decided(app.local_addr, placed["id"].as_str().unwrap()).await;
    assert_eq!(decided["status"], "scheduled", "{decided}");
    on_hand_is(&app, "CHAIR", "dc-01", 1).await;
    let (_, after) = http_get(app.local_addr, "/v1/carts/cart-1").await;
    assert_ne!(after["hold"]["status"], "held", "the order converted the hold: {after}");

    let (status, missing) = place(
        app.local_addr,
        "cart-order-2",
        &json!({
        "channel": "web", "customer": "c", "cart": "no-such-cart",
        "payment": {"method": "pix", "token": "pix_7f3a9c2e1b"}, "delivery": to_address()}),
    )
    .await;
    assert_eq!((status, &missing["errors"][0]["field"]), (422, &json!("cart")), "{missing}");
    let (status, _) = http_send(Method::DELETE, app.local_addr, "/v1/carts/cart-2", &[], None).await;
    assert_eq!(status, 204);
    let (status, gone) = http_get(app.local_addr, "/v1/carts/cart-2").await;
    assert_eq!((status, &gone["error"]["code"]), (404, &json!("cart_not_found")), "{gone}");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_orders_changes_reach_its_channels_webhook_and_the_live_stream_and_a_payment_it_refuses_is_rejected() {
    onhand_core::skip_without_servers!();
    let mut config = orders_config(100).await;
    let kiosk = ChannelConfig {
        locations: vec!["dc-01".into()],
        payment_methods: vec!["card".into()],
        ..ChannelConfig::default()
    };
    config.channels.insert("kiosk".into(), kiosk);
    let app = serve(&config).await;
    let addr = app.local_addr;
    let subscribe = |body: Value| http_post(addr, "/v1/subscriptions", "application/json", body.to_string());
    let (hook_url, hook) = receiver(0).await;
    let secret = "the-web-stores-order-secret";
    let (status, created) = subscribe(json!({"url": hook_url, "channel": "web", "secret": secret})).await;
    assert_eq!((status, &created["channel"]), (201, &json!("web")), "{created}");
    for bad in
        [json!({"url": hook_url, "channel": "nope"}), json!({"url": hook_url, "channel": "web", "kinds": ["oversold"]})]
    {
        let (status, body) = subscribe(bad).await;
        assert_eq!((status, body["error"]["code"].as_str()), (422, Some("invalid_subscription")), "{body}");
    }
    let mut stream = common::stream::subscribe(&app, "kind=order", None).await;
    // An API replica that runs no order worker streams the orders too.
    let mut api_only = config.clone();
    (api_only.orders.enabled, api_only.ledger.enabled, api_only.alerts.enabled) = (false, false, false);
    let replica = serve(&api_only).await;
    let mut replica_stream = common::stream::subscribe(&replica, "kind=order", None).await;
    stock(&app, json!([movement("w1", "LAMP", "dc-01", 10)]), "LAMP", "dc-01", 10).await;

    // The kiosk takes cards only: an order paid by pix is rejected, and goes to no webhook
    // of the web store.
    let mut by_pix = order(json!([{"sku": "LAMP", "quantity": 1}]), to_address());
    by_pix["channel"] = json!("kiosk");
    let (status, placed) = place(addr, "kiosk-1", &by_pix).await;
    assert_eq!(status, 202, "{placed}");
    let refused = decided(addr, placed["id"].as_str().unwrap()).await;
    assert_eq!(
        (refused["status"].as_str(), refused["decision"]["reason"].as_str()),
        (Some("rejected"), Some("invalid_payment"))
    );

    let (_, placed) = place(addr, "web-1", &order(json!([{"sku": "LAMP", "quantity": 2}]), to_address())).await;
    let id = placed["id"].as_str().unwrap().to_string();
    assert_eq!(decided(addr, &id).await["status"], "scheduled");

    // The web store's hook gets the order's two changes, signed, each with its event id.
    let delivered = eventually("the order's changes delivered to the web store", 60, || {
        let requests = hook.lock().unwrap().requests.clone();
        let ids: Vec<String> =
            requests.iter().map(|(headers, _)| headers["onhand-event-id"].to_str().unwrap().to_string()).collect();
        async move { (ids.len() >= 2).then_some((ids, requests)) }
    })
    .await;
    let (mut ids, requests) = delivered;
    // Deliveries due together are made side by side: in either order.
    ids.sort();
    assert_eq!(ids, [format!("{id}:received"), format!("{id}:scheduled")]);
    for (headers, body) in &requests {
        assert!(webhooks::signed_by(secret, headers, body), "signed with the subscription's secret");
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!((event["type"].as_str(), event["channel"].as_str()), (Some("onhand.order.v1"), Some("web")));
    }

    // The live stream carries the changes, a scheduled one about its location.
    for stream in [&mut stream, &mut replica_stream] {
        let scheduled = loop {
            let event = stream.next(60).await.expect("the stream goes on");
            assert_eq!(event.event, "order", "{event:?}");
            if event.data["order_id"] == id.as_str() && event.data["status"] == "scheduled" {
                break event;
            }
        };
        assert_eq!(scheduled.data["decision"]["location"], "dc-01");
    }
    replica.stop().await.unwrap();

    // Each worker gauges the records of its partitions not read yet: none once all is read.
    eventually("the workers' lag per partition gauged at zero", 30, || async {
        let exposition = app.metrics.render();
        let series: Vec<&str> = exposition.lines().filter(|l| l.starts_with("onhand_orders_worker_lag{")).collect();
        (series.len() == 3 && series.iter().all(|l| l.ends_with(" 0"))).then_some(())
    })
    .await;
    app.stop().await.unwrap();
}
