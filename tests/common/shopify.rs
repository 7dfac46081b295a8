//! A fake Shopify for the end-to-end tests: it signs webhooks like Shopify, answers the
//! Admin GraphQL operations the connector uses in Shopify's documented shapes (API
//! version 2026-04: the `orders` query with its lines a page at a time, `order(id:)` and
//! `refund(id:)` for the rest of the lines, inventory levels, `inventorySetQuantities`
//! with compare-and-set and idempotency keys), and throttles or fails on command. To take
//! it offline, put a `Proxy` in front of it and cut the proxy.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::post, Json, Router};
use base64::{prelude::BASE64_STANDARD, Engine};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

pub const SECRET: &str = "whsec-e2e";
pub const TOKEN: &str = "shpat_e2e";
pub const GRAPHQL_PATH: &str = "/admin/api/2026-04/graphql.json";

/// The `[connectors.shopify]` section every test starts from, against the fake's admin API
/// at `admin`: the shop, its credentials, and both of its locations mapped (the store's
/// and the DC's, the default). Each test adds what it needs (reconciliation, the sink).
pub fn section(admin: SocketAddr) -> Value {
    json!({
        "shop": "casa-onhand.myshopify.com",
        "admin_api_url": format!("http://{admin}{GRAPHQL_PATH}"),
        "access_token": TOKEN,
        "webhook_secret": SECRET,
        "location_map": { "24826418": "store-012", "48752903": "dc-sp" },
        "default_location": "dc-sp",
    })
}

/// One `inventorySetQuantities` quantity Shopify applied: (inventory item, quantity).
pub type Applied = (u64, i64);

#[derive(Debug, Default)]
pub struct FakeState {
    /// `available` per inventory item at the sink's location.
    pub levels: HashMap<u64, i64>,
    /// Order nodes with all their lines; the `orders` query answers a page of each
    /// connection, and `order(id:)` and `refund(id:)` the pages after it.
    pub orders: Vec<Value>,
    /// How many `order(id:)` and `refund(id:)` queries were answered.
    pub line_queries: u32,
    /// The next this many requests are answered THROTTLED.
    pub throttle_next: u32,
    /// The next this many requests are answered 503.
    pub fail_next: u32,
    /// Every quantity applied, in order.
    pub applied: Vec<Applied>,
    /// Sets refused because a compare did not match.
    pub stale_answers: u32,
    answers_by_key: HashMap<String, Value>,
}

#[derive(Debug, Clone)]
pub struct FakeShopify {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeShopify {
    pub async fn start() -> FakeShopify {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let router = Router::new().route(GRAPHQL_PATH, post(graphql)).with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake shopify");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(async move { axum::serve(listener, router).await });
        FakeShopify { addr, state }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    pub fn available(&self, item: u64) -> Option<i64> {
        self.with(|s| s.levels.get(&item).copied())
    }
}

/// The `X-Shopify-Hmac-Sha256` of a body.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    BASE64_STANDARD.encode(mac.finalize().into_bytes())
}

/// Delivers a webhook as Shopify does, signed with `secret`, triggered now.
pub async fn deliver(app: SocketAddr, topic: &str, event_id: &str, body: &str, secret: &str) -> (u16, Value) {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    deliver_triggered_at(app, topic, event_id, body, secret, Some(&now)).await
}

/// Delivers a webhook with this `X-Shopify-Triggered-At`, or none.
pub async fn deliver_triggered_at(
    app: SocketAddr,
    topic: &str,
    event_id: &str,
    body: &str,
    secret: &str,
    triggered_at: Option<&str>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{app}/connectors/shopify/webhooks"))
        .header("content-type", "application/json")
        .header("X-Shopify-Topic", topic)
        .header("X-Shopify-Event-Id", event_id)
        .header("X-Shopify-Webhook-Id", format!("{event_id}-delivery"))
        .header("X-Shopify-Shop-Domain", "casa-onhand.myshopify.com")
        .header("X-Shopify-API-Version", "2026-04")
        .header("X-Shopify-Hmac-Sha256", sign(secret, body.as_bytes()));
    if let Some(at) = triggered_at {
        request = request.header("X-Shopify-Triggered-At", at);
    }
    let response = request.body(body.to_string()).send().await.expect("the app answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn cost(requested: f64, available: f64) -> Value {
    json!({ "cost": { "requestedQueryCost": requested, "actualQueryCost": if available > 0.0 { json!(requested) } else { Value::Null },
        "throttleStatus": { "maximumAvailable": 2000.0, "currentlyAvailable": available, "restoreRate": 1000.0 } } })
}

async fn graphql(
    State(state): State<Arc<Mutex<FakeState>>>,
    headers: axum::http::HeaderMap,
    Json(request): Json<Value>,
) -> axum::response::Response {
    if headers.get("x-shopify-access-token").and_then(|v| v.to_str().ok()) != Some(TOKEN) {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "errors": "[API] Invalid API key or access token" })))
            .into_response();
    }
    let mut state = state.lock().unwrap();
    if state.throttle_next > 0 {
        state.throttle_next -= 1;
        let body = json!({
            "errors": [{ "message": "Throttled", "extensions": { "code": "THROTTLED",
                "documentation": "https://shopify.dev/api/usage/rate-limits" } }],
            "extensions": cost(150.0, 0.0),
        });
        return Json(body).into_response();
    }
    if state.fail_next > 0 {
        state.fail_next -= 1;
        return (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response();
    }
    let query = request["query"].as_str().unwrap_or_default();
    let variables = &request["variables"];
    // Shopify refuses a connection asked for more than 250 nodes.
    if ["first", "lines"].iter().any(|v| variables[v].as_u64().is_some_and(|n| n > 250)) {
        let message = "The 'first' argument must be between 0 and 250";
        return Json(json!({ "errors": [{ "message": message }] })).into_response();
    }
    let data = if query.contains("inventorySetQuantities") {
        set_quantities(&mut state, variables)
    } else if query.contains("orders(") {
        orders(&state, variables)
    } else if query.contains("order(id:") || query.contains("refund(id:") {
        state.line_queries += 1;
        lines(&state, query.contains("refund(id:"), variables)
    } else if query.contains("inventoryItem(") {
        levels(&state, query)
    } else {
        return Json(json!({ "errors": [{ "message": "unknown operation" }] })).into_response();
    };
    Json(json!({ "data": data, "extensions": cost(10.0, 1990.0) })).into_response()
}

fn number(gid: &Value) -> u64 {
    gid.as_str().and_then(|g| g.rsplit('/').next()).and_then(|n| n.parse().ok()).expect("a gid")
}

/// All or nothing: every compare must match, as Shopify applies one adjustment group.
/// A key seen before gets its first answer again, without applying anything.
fn set_quantities(state: &mut FakeState, variables: &Value) -> Value {
    let key = variables["key"].as_str().expect("an idempotency key").to_string();
    if let Some(answer) = state.answers_by_key.get(&key) {
        return answer.clone();
    }
    let input = &variables["input"];
    assert_eq!((input["name"].as_str(), input["reason"].as_str()), (Some("available"), Some("correction")));
    let quantities = input["quantities"].as_array().expect("quantities");
    let mut errors = Vec::new();
    for (i, q) in quantities.iter().enumerate() {
        let held = state.levels.get(&number(&q["inventoryItemId"])).copied().unwrap_or(0);
        let from = q.get("changeFromQuantity").expect("changeFromQuantity is required as of 2026-04");
        if from.as_i64() != Some(held) {
            errors.push(json!({ "code": "CHANGE_FROM_QUANTITY_STALE",
                "field": ["input", "quantities", i.to_string(), "changeFromQuantity"],
                "message": "The specified compare quantity does not match the current quantity." }));
        }
    }
    let mut changes = Vec::new();
    if errors.is_empty() {
        for q in quantities {
            let item = number(&q["inventoryItemId"]);
            let quantity = q["quantity"].as_i64().expect("a quantity");
            let before = state.levels.insert(item, quantity).unwrap_or(0);
            state.applied.push((item, quantity));
            changes.push(json!({ "name": "available", "delta": quantity - before, "quantityAfterChange": quantity }));
        }
    } else {
        state.stale_answers += 1;
    }
    let group = if errors.is_empty() { json!({ "reason": "correction", "changes": changes }) } else { Value::Null };
    let answer = json!({ "inventorySetQuantities": { "inventoryAdjustmentGroup": group, "userErrors": errors } });
    state.answers_by_key.insert(key, answer.clone());
    answer
}

/// `first` nodes of a connection's `nodes` from index `after` (the cursors are indexes),
/// with the connection's `pageInfo`.
fn page_of(connection: &Value, first: usize, after: Option<&str>) -> Value {
    let nodes = connection["nodes"].as_array().cloned().unwrap_or_default();
    let start: usize = after.and_then(|a| a.parse().ok()).unwrap_or(0);
    let page: Vec<Value> = nodes.iter().skip(start).take(first).cloned().collect();
    let next = start + page.len();
    json!({ "nodes": page, "pageInfo": { "hasNextPage": next < nodes.len(), "endCursor": next.to_string() } })
}

/// `updated_at:>='TIME'`, oldest first, `after` being the index of the next order. Each
/// order's lines and each of its refunds' lines are cut to the first `lines` (250 when the
/// query does not say, as the connector's queries once wrote it).
fn orders(state: &FakeState, variables: &Value) -> Value {
    let filter = variables["query"].as_str().unwrap_or_default();
    let since = filter.split('\'').nth(1).and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let mut matching: Vec<&Value> = state
        .orders
        .iter()
        .filter(|o| {
            let updated = chrono::DateTime::parse_from_rfc3339(o["updatedAt"].as_str().unwrap()).unwrap();
            since.is_none_or(|s| updated >= s)
        })
        .collect();
    matching.sort_by_key(|o| o["updatedAt"].as_str().unwrap().to_string());
    let first = variables["first"].as_u64().unwrap_or(50) as usize;
    let lines = variables["lines"].as_u64().unwrap_or(250) as usize;
    let start: usize = variables["after"].as_str().and_then(|a| a.parse().ok()).unwrap_or(0);
    let page: Vec<Value> = matching
        .iter()
        .skip(start)
        .take(first)
        .map(|order| {
            let mut order = (*order).clone();
            order["lineItems"] = page_of(&order["lineItems"], lines, None);
            for refund in order["refunds"].as_array_mut().into_iter().flatten() {
                refund["refundLineItems"] = page_of(&refund["refundLineItems"], lines, None);
            }
            order
        })
        .collect();
    let next = start + page.len();
    json!({ "orders": { "nodes": page,
        "pageInfo": { "hasNextPage": next < matching.len(), "endCursor": next.to_string() } } })
}

/// `order(id:) { lineItems(first:, after:) }` or `refund(id:) { refundLineItems(...) }`;
/// null for an id no order has, as Shopify answers.
fn lines(state: &FakeState, refund: bool, variables: &Value) -> Value {
    let id = variables["id"].as_str().expect("an id");
    let first = variables["first"].as_u64().expect("first") as usize;
    let after = variables["after"].as_str();
    let connection = if refund {
        let refunds = state.orders.iter().flat_map(|o| o["refunds"].as_array().into_iter().flatten());
        let refund = refunds.into_iter().find(|r| r["id"] == id);
        refund.map(|r| json!({ "refundLineItems": page_of(&r["refundLineItems"], first, after) }))
    } else {
        let order = state.orders.iter().find(|o| o["id"] == id);
        order.map(|o| json!({ "lineItems": page_of(&o["lineItems"], first, after) }))
    };
    let mut data = serde_json::Map::new();
    data.insert(if refund { "refund" } else { "order" }.to_string(), connection.unwrap_or(Value::Null));
    Value::Object(data)
}

/// `iN: inventoryItem(id: "gid://shopify/InventoryItem/X") { ... }` for each alias.
fn levels(state: &FakeState, query: &str) -> Value {
    let mut data = serde_json::Map::new();
    for part in query.split("inventoryItem(id: \"").skip(1) {
        let gid = part.split('"').next().unwrap();
        let item: u64 = gid.rsplit('/').next().unwrap().parse().unwrap();
        let alias_end = query.find(&format!("inventoryItem(id: \"{gid}\"")).unwrap();
        let alias = query[..alias_end].trim_end().trim_end_matches(':').rsplit(' ').next().unwrap().to_string();
        let level = state
            .levels
            .get(&item)
            .map(|available| json!({ "quantities": [{ "name": "available", "quantity": available }] }));
        data.insert(alias, json!({ "id": gid, "inventoryLevel": level }));
    }
    Value::Object(data)
}
