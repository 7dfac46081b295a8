//! The Admin GraphQL client: the three operations the connector needs (the orders of the
//! reconciliation, reading and setting `available` quantities), Shopify's cost-based rate
//! limit, and errors that know whether a retry may succeed.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use serde::{de::DeserializeOwned, Deserialize};
use serde_json::{json, Value};
use tokio::time::Instant;
use tracing::warn;

use super::{
    config::{HttpClientConfig, Secret},
    mapping::gid,
    payloads::{GqlOrder, Nodes, Rest},
};

/// The orders updated since a time, oldest first, with everything the mapping reads: the
/// first `$lines` lines of each order and of each of its refunds, and where the rest
/// starts, which [`Admin::read_all_lines`] reads.
pub const ORDERS_QUERY: &str = "query Orders($first: Int!, $after: String, $query: String!, $lines: Int!) {
  orders(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {
    pageInfo { hasNextPage endCursor }
    nodes {
      id name createdAt updatedAt cancelledAt
      retailLocation { id }
      lineItems(first: $lines) { pageInfo { hasNextPage endCursor } nodes { id sku quantity variant { id } } }
      refunds {
        id createdAt
        refundLineItems(first: $lines) {
          pageInfo { hasNextPage endCursor }
          nodes { id quantity restockType location { id } lineItem { id sku quantity variant { id } } }
        }
      }
    }
  }
}";

/// The lines of one order after a cursor.
pub const ORDER_LINES_QUERY: &str = "query OrderLines($id: ID!, $first: Int!, $after: String) {
  order(id: $id) {
    lineItems(first: $first, after: $after) { pageInfo { hasNextPage endCursor } nodes { id sku quantity variant { id } } }
  }
}";

/// The lines of one refund after a cursor.
pub const REFUND_LINES_QUERY: &str = "query RefundLines($id: ID!, $first: Int!, $after: String) {
  refund(id: $id) {
    refundLineItems(first: $first, after: $after) {
      pageInfo { hasNextPage endCursor }
      nodes { id quantity restockType location { id } lineItem { id sku quantity variant { id } } }
    }
  }
}";

/// The most a single query may cost: Shopify refuses a query whose requested cost is more.
pub const QUERY_COST_MAX: f64 = 1000.0;
/// The most nodes a connection gives in one page.
pub const CONNECTION_FIRST_MAX: u32 = 250;

// What Shopify charges before it runs a query, by its documented rule: an object costs 1,
// a scalar 0, and a connection 2 plus `first` times what one of its nodes costs, so the
// lines of a page of orders cost orders × lines.
/// A line item with its variant.
const LINE_COST: f64 = 2.0;
/// A refund line item with its location, line item and variant.
const REFUND_LINE_COST: f64 = 4.0;

/// The requested cost of a page of [`ORDERS_QUERY`]: per order the order, its retail
/// location, its lines and one refund with as many lines. `refunds` is a list whose length
/// the query cannot bound, so an order with several refunds costs more than this says.
pub fn orders_query_cost(orders: u32, lines: u32) -> f64 {
    let lines = f64::from(lines);
    let refund = 1.0 + 2.0 + lines * REFUND_LINE_COST;
    2.0 + f64::from(orders) * (1.0 + 1.0 + (2.0 + lines * LINE_COST) + refund)
}

/// The lines per order (and per refund) a page of `orders` asks for: as many as the page
/// can pay for within [`QUERY_COST_MAX`], at least 1 and at most 250. An order with more is
/// read on by [`Admin::read_all_lines`].
pub fn lines_first(orders: u32) -> u32 {
    (1..=CONNECTION_FIRST_MAX).rev().find(|l| orders_query_cost(orders, *l) <= QUERY_COST_MAX).unwrap_or(1)
}

/// One of the connections of an order that the orders query read only the start of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lines {
    Order,
    Refund,
}

impl Lines {
    fn query(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Lines::Order => (ORDER_LINES_QUERY, "order", "lineItems"),
            Lines::Refund => (REFUND_LINES_QUERY, "refund", "refundLineItems"),
        }
    }

    /// The most lines one query can ask for within [`QUERY_COST_MAX`], and what it costs:
    /// the order or refund (1) and the connection (2 plus its lines).
    fn page(self) -> (u32, f64) {
        let line = if self == Lines::Order { LINE_COST } else { REFUND_LINE_COST };
        let first = (((QUERY_COST_MAX - 3.0) / line) as u32).min(CONNECTION_FIRST_MAX);
        (first, 3.0 + f64::from(first) * line)
    }
}

/// Sets `available` with a compare-and-set per quantity and an idempotency key, as
/// API version 2026-04 requires.
pub const SET_QUANTITIES_MUTATION: &str = "mutation SetAvailable($input: InventorySetQuantitiesInput!, $key: String!) {
  inventorySetQuantities(input: $input) @idempotent(key: $key) {
    inventoryAdjustmentGroup { reason changes { name delta quantityAfterChange } }
    userErrors { code field message }
  }
}";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("shopify is throttling requests; retry in {wait_ms} ms")]
    Throttled { wait_ms: u64 },
    #[error("shopify answered http {status}")]
    Status { status: u16 },
    #[error("shopify did not answer: {0}")]
    Unreachable(String),
    #[error("shopify refused the request: {0}")]
    GraphQl(String),
    #[error("shopify's answer is not readable: {0}")]
    Invalid(String),
}

impl AdminError {
    /// Throttling, 5xx, 429 and timeouts pass; a refused query or token does not.
    pub fn is_retryable(&self) -> bool {
        match self {
            AdminError::Throttled { .. } | AdminError::Unreachable(_) => true,
            AdminError::Status { status } => *status >= 500 || *status == 429,
            AdminError::GraphQl(_) | AdminError::Invalid(_) => false,
        }
    }
}

/// Shopify's bucket of query cost points, as its last answer described it.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    available: f64,
    restore_rate: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct Admin {
    http: reqwest::Client,
    url: String,
    token: Secret,
    bucket: Mutex<Option<Bucket>>,
}

/// One page of the `orders` query: each order read, or the raw node and why it could not be.
#[derive(Debug)]
pub struct OrdersPage {
    pub orders: Vec<(Value, Result<GqlOrder, String>)>,
    pub end_cursor: Option<String>,
    pub has_next_page: bool,
}

/// One quantity to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetQuantity {
    pub inventory_item_id: u64,
    pub quantity: i64,
    /// What Shopify is believed to hold now; the set fails as stale when it holds another.
    pub change_from: i64,
}

/// What became of a set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetOutcome {
    /// Indexes of quantities whose `changeFromQuantity` did not match: re-read and retry.
    pub stale: Vec<usize>,
    /// Indexes Shopify refused for good (unknown item or location), with its message.
    pub rejected: Vec<(usize, String)>,
    /// Any user error means nothing of the call was applied.
    pub applied: bool,
}

impl Admin {
    pub fn new(url: String, token: Secret, config: &HttpClientConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(Duration::from_millis(config.request_timeout_ms)).build()?;
        Ok(Self { http, url, token, bucket: Mutex::new(None) })
    }

    /// Runs a GraphQL operation and answers its `data`, waiting first when the last answer
    /// said the bucket is too low for `cost`.
    pub async fn graphql(&self, query: &str, variables: Value, cost: f64) -> Result<Value, AdminError> {
        self.wait_for_points(cost).await;
        let response = self
            .http
            .post(&self.url)
            .header("X-Shopify-Access-Token", self.token.expose())
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .map_err(|e| AdminError::Unreachable(without_url(e)))?;
        let status = response.status().as_u16();
        let body: Option<Value> = response.json().await.ok();
        let body = match (status, body) {
            (200, Some(body)) => body,
            (429, body) => {
                return Err(AdminError::Throttled { wait_ms: body.as_ref().map_or(1_000, throttle_wait_ms) })
            }
            (200, None) => return Err(AdminError::Invalid("the body is not JSON".into())),
            (status, _) => return Err(AdminError::Status { status }),
        };
        self.remember_bucket(&body);
        if let Some(errors) = body.get("errors").and_then(Value::as_array).filter(|e| !e.is_empty()) {
            if errors.iter().any(|e| e["extensions"]["code"] == "THROTTLED") {
                return Err(AdminError::Throttled { wait_ms: throttle_wait_ms(&body) });
            }
            let messages: Vec<&str> = errors.iter().filter_map(|e| e["message"].as_str()).collect();
            return Err(AdminError::GraphQl(messages.join("; ")));
        }
        body.get("data").cloned().ok_or_else(|| AdminError::Invalid("no data in the answer".into()))
    }

    async fn wait_for_points(&self, cost: f64) {
        let wait = {
            let bucket = self.bucket.lock().expect("the bucket lock is never poisoned");
            bucket.and_then(|b| {
                points_wait(b.available + b.restore_rate * b.at.elapsed().as_secs_f64(), b.restore_rate, cost)
            })
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }

    /// Remembers the bucket an answer describes. A status that cannot describe one (a
    /// rate that is not positive, numbers that are not finite) says nothing about when
    /// points come back: the bucket known before stays, and a THROTTLED answer says how
    /// long to wait.
    fn remember_bucket(&self, body: &Value) {
        let status = &body["extensions"]["cost"]["throttleStatus"];
        let finite = |v: &Value| v.as_f64().filter(|n| n.is_finite());
        if let (Some(available), Some(restore_rate)) =
            (finite(&status["currentlyAvailable"]), finite(&status["restoreRate"]).filter(|r| *r > 0.0))
        {
            let bucket = Bucket { available, restore_rate, at: Instant::now() };
            *self.bucket.lock().expect("the bucket lock is never poisoned") = Some(bucket);
        }
    }

    /// A page of the orders updated at or after `since` (RFC 3339), oldest first.
    pub async fn orders_page(&self, since: &str, first: u32, after: Option<&str>) -> Result<OrdersPage, AdminError> {
        let lines = lines_first(first);
        let variables =
            json!({ "first": first, "after": after, "query": format!("updated_at:>='{since}'"), "lines": lines });
        let data = self.graphql(ORDERS_QUERY, variables, orders_query_cost(first, lines)).await?;
        let orders = &data["orders"];
        let nodes = orders["nodes"].as_array().ok_or_else(|| AdminError::Invalid("orders.nodes is missing".into()))?;
        Ok(OrdersPage {
            orders: nodes
                .iter()
                .map(|node| (node.clone(), serde_json::from_value(node.clone()).map_err(|e| e.to_string())))
                .collect(),
            end_cursor: orders["pageInfo"]["endCursor"].as_str().map(str::to_string),
            has_next_page: orders["pageInfo"]["hasNextPage"].as_bool().unwrap_or(false),
        })
    }

    /// Reads the lines of `order` and of its refunds that the orders query left out, in at
    /// most `pages_max` more queries. Answers whether every line is read now; when not
    /// (too many lines, or Shopify no longer gives the order or a cursor), the lines read
    /// are all there, in order, with their own ids.
    pub async fn read_all_lines(&self, order: &mut GqlOrder, pages_max: u32) -> Result<bool, AdminError> {
        let mut pages_left = pages_max;
        let id = order.id.clone();
        let complete = self.read_rest(Lines::Order, &id, &mut order.line_items, &mut pages_left).await?;
        let mut all = complete;
        for refund in &mut order.refunds {
            let id = refund.id.clone();
            all &= self.read_rest(Lines::Refund, &id, &mut refund.refund_line_items, &mut pages_left).await?;
        }
        Ok(all)
    }

    /// Follows one connection to its end, or until `pages_left` runs out.
    async fn read_rest<T: DeserializeOwned>(
        &self,
        lines: Lines,
        id: &str,
        nodes: &mut Nodes<T>,
        pages_left: &mut u32,
    ) -> Result<bool, AdminError> {
        let (query, object, field) = lines.query();
        let (first, cost) = lines.page();
        loop {
            let after = match nodes.rest() {
                Rest::Done => return Ok(true),
                Rest::Unreadable => return Ok(false),
                Rest::After(_) if *pages_left == 0 => return Ok(false),
                Rest::After(after) => after.to_string(),
            };
            *pages_left -= 1;
            let data = self.graphql(query, json!({ "id": id, "first": first, "after": after }), cost).await?;
            // An order or refund deleted since the orders query is null, and a page that is
            // not the shape asked for will not become it: the lines read are what there is.
            // Failing instead would stop the reconciliation at this order for good.
            match serde_json::from_value::<Nodes<T>>(data[object][field].clone()) {
                Ok(page) => nodes.extend(page),
                Err(e) => {
                    warn!(id, error = %e, "the rest of the lines could not be read from shopify");
                    return Ok(false);
                }
            }
        }
    }

    /// The `available` quantity of each item at `location_id`; an item Shopify does not
    /// stock there is left out.
    pub async fn read_available(&self, items: &[u64], location_id: u64) -> Result<HashMap<u64, i64>, AdminError> {
        let location = gid("Location", location_id);
        let fields: Vec<String> = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                format!(
                    "i{i}: inventoryItem(id: \"{}\") {{ id inventoryLevel(locationId: \"{location}\") \
                     {{ quantities(names: [\"available\"]) {{ name quantity }} }} }}",
                    gid("InventoryItem", *item)
                )
            })
            .collect();
        let data =
            self.graphql(&format!("query {{ {} }}", fields.join(" ")), json!({}), items.len() as f64 * 3.0).await?;
        let mut out = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let level = &data[format!("i{i}")]["inventoryLevel"];
            let available = level["quantities"]
                .as_array()
                .and_then(|q| q.iter().find(|q| q["name"] == "available"))
                .and_then(|q| q["quantity"].as_i64());
            if let Some(available) = available {
                out.insert(*item, available);
            }
        }
        Ok(out)
    }

    /// Sets `available` at `location_id` for every quantity in one call.
    pub async fn set_available(
        &self,
        quantities: &[SetQuantity],
        location_id: u64,
        idempotency_key: &str,
    ) -> Result<SetOutcome, AdminError> {
        let location = gid("Location", location_id);
        let input = json!({
            "name": "available",
            "reason": "correction",
            "referenceDocumentUri": "onhand://sink",
            "quantities": quantities.iter().map(|q| json!({
                "inventoryItemId": gid("InventoryItem", q.inventory_item_id),
                "locationId": location,
                "quantity": q.quantity,
                "changeFromQuantity": q.change_from,
            })).collect::<Vec<_>>(),
        });
        let cost = 10.0 + quantities.len() as f64;
        let data =
            self.graphql(SET_QUANTITIES_MUTATION, json!({ "input": input, "key": idempotency_key }), cost).await?;
        let errors: Vec<UserError> = serde_json::from_value(data["inventorySetQuantities"]["userErrors"].clone())
            .map_err(|e| AdminError::Invalid(format!("userErrors: {e}")))?;
        Ok(set_outcome(&errors, quantities.len()))
    }
}

#[derive(Debug, Deserialize)]
struct UserError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    field: Option<Vec<String>>,
    message: String,
}

/// Sorts user errors by the quantity they name (`["input", "quantities", "3", ...]`). An
/// error that names none is held against every quantity, as a refusal.
fn set_outcome(errors: &[UserError], count: usize) -> SetOutcome {
    let mut outcome = SetOutcome { applied: errors.is_empty(), ..SetOutcome::default() };
    for error in errors {
        let index = error
            .field
            .as_ref()
            .and_then(|f| f.iter().skip_while(|p| *p != "quantities").nth(1))
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < count);
        let stale = matches!(error.code.as_deref(), Some("CHANGE_FROM_QUANTITY_STALE" | "COMPARE_QUANTITY_STALE"));
        match (index, stale) {
            (Some(i), true) => outcome.stale.push(i),
            (Some(i), false) => outcome.rejected.push((i, error.message.clone())),
            (None, true) => outcome.stale.extend(0..count),
            (None, false) => outcome.rejected.extend((0..count).map(|i| (i, error.message.clone()))),
        }
    }
    outcome.stale.sort_unstable();
    outcome.stale.dedup();
    outcome
}

/// The longest wait the bucket's numbers can ask for. Shopify's buckets refill in seconds;
/// a longer wait comes from numbers that are wrong, and after it Shopify answers again.
pub const POINTS_WAIT_MAX: Duration = Duration::from_secs(60);

/// How long until a bucket holding `available` points, refilled at `restore_rate` points
/// a second, holds `cost`: `None` when it does already or when the numbers say nothing
/// (not finite, a rate that is not positive). Never more than [`POINTS_WAIT_MAX`], and
/// never a panic, whatever Shopify answered.
pub fn points_wait(available: f64, restore_rate: f64, cost: f64) -> Option<Duration> {
    if restore_rate <= 0.0 || !restore_rate.is_finite() || available.is_nan() || cost.is_nan() {
        return None;
    }
    let seconds = (cost - available) / restore_rate;
    if seconds.is_nan() || seconds <= 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(seconds).map_or(POINTS_WAIT_MAX, |wait| wait.min(POINTS_WAIT_MAX)))
}

/// How long until the bucket holds what the refused query asked for: at least 100 ms, at
/// most [`POINTS_WAIT_MAX`]. Without a usable rate, 50 points a second is assumed.
fn throttle_wait_ms(body: &Value) -> u64 {
    let cost = &body["extensions"]["cost"];
    let finite = |v: &Value| v.as_f64().filter(|n| n.is_finite());
    let requested = finite(&cost["requestedQueryCost"]).unwrap_or(0.0);
    let available = finite(&cost["throttleStatus"]["currentlyAvailable"]).unwrap_or(0.0);
    let rate = finite(&cost["throttleStatus"]["restoreRate"]).filter(|r| *r > 0.0).unwrap_or(50.0);
    let wait = points_wait(available, rate, requested).unwrap_or(Duration::ZERO);
    let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
    wait_ms.clamp(100, POINTS_WAIT_MAX.as_millis() as u64)
}

/// reqwest's message without the URL, which is the shop's and says nothing new.
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    kind.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shopify::config::RECONCILE_PAGE_SIZE_MAX;

    fn errors(value: Value) -> Vec<UserError> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn user_errors_are_sorted_by_the_quantity_they_name() {
        let outcome = set_outcome(
            &errors(json!([
                {"code": "CHANGE_FROM_QUANTITY_STALE", "field": ["input", "quantities", "1", "changeFromQuantity"],
                 "message": "The specified compare quantity does not match the current quantity."},
                {"code": "INVALID_INVENTORY_ITEM", "field": ["input", "quantities", "2", "inventoryItemId"],
                 "message": "The specified inventory item could not be found."}
            ])),
            3,
        );
        assert_eq!(outcome.stale, [1]);
        assert_eq!(outcome.rejected, [(2, "The specified inventory item could not be found.".to_string())]);
        assert!(!outcome.applied);
        assert!(set_outcome(&[], 3).applied);
    }

    #[test]
    fn a_throttled_answer_says_how_long_to_wait() {
        let body = json!({
            "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
            "extensions": {"cost": {"requestedQueryCost": 752, "actualQueryCost": null,
                "throttleStatus": {"maximumAvailable": 1000.0, "currentlyAvailable": 652, "restoreRate": 50.0}}}
        });
        assert_eq!(throttle_wait_ms(&body), 2_000);
        assert_eq!(throttle_wait_ms(&json!({})), 100, "no status: a short wait");
    }

    /// Throttle statuses no Shopify sends, but a proxy, a bug or an attacker in the middle
    /// might: (currentlyAvailable, restoreRate, requestedQueryCost).
    fn hostile_statuses() -> Vec<(Value, Value, Value)> {
        let n = |v: f64| json!(v);
        vec![
            (n(0.0), n(1e-300), n(1000.0)),
            (n(-1e308), n(1.0), n(1000.0)),
            (n(-1e308), n(1e-308), n(1e308)),
            (n(0.0), n(f64::MIN_POSITIVE), n(f64::MAX)),
            (n(f64::MAX), n(f64::MAX), n(f64::MAX)),
            (n(0.0), n(0.0), n(1000.0)),
            (n(0.0), n(-50.0), n(1000.0)),
            (n(-5.0), n(50.0), n(-1000.0)),
            (json!("NaN"), json!("Infinity"), json!(null)),
            (json!(null), json!(null), json!({})),
        ]
    }

    #[tokio::test(start_paused = true)]
    async fn hostile_throttle_statuses_give_a_bounded_wait() {
        for (available, rate, requested) in hostile_statuses() {
            let body = json!({ "extensions": { "cost": { "requestedQueryCost": requested,
                "throttleStatus": { "currentlyAvailable": available, "restoreRate": rate } } } });
            let admin =
                Admin::new("http://127.0.0.1:9/graphql.json".into(), Secret::new("t"), &HttpClientConfig::default())
                    .unwrap();
            admin.remember_bucket(&body);
            let started = Instant::now();
            admin.wait_for_points(1000.0).await;
            assert!(started.elapsed() <= Duration::from_secs(60), "{body}: waited {:?}", started.elapsed());
            let wait_ms = throttle_wait_ms(&body);
            assert!((100..=60_000).contains(&wait_ms), "{body}: {wait_ms} ms");
        }
    }

    #[test]
    fn a_wait_for_points_is_bounded_whatever_the_numbers() {
        let cases = [
            // (available, restore rate, cost, wait)
            (0.0, 50.0, 100.0, Some(Duration::from_secs(2))),
            (100.0, 50.0, 100.0, None),
            (0.0, 1e-300, 100.0, Some(POINTS_WAIT_MAX)),
            (-1e308, 1.0, 100.0, Some(POINTS_WAIT_MAX)),
            (f64::NEG_INFINITY, 50.0, 100.0, Some(POINTS_WAIT_MAX)),
            (f64::INFINITY, 50.0, 100.0, None),
            (f64::NAN, 50.0, 100.0, None),
            (0.0, f64::NAN, 100.0, None),
            (0.0, f64::INFINITY, 100.0, None),
            (0.0, 0.0, 100.0, None),
            (0.0, -1.0, 100.0, None),
            (0.0, 50.0, f64::INFINITY, Some(POINTS_WAIT_MAX)),
            (0.0, 50.0, f64::NAN, None),
            (f64::INFINITY, 50.0, f64::INFINITY, None),
        ];
        for (available, rate, cost, wait) in cases {
            assert_eq!(points_wait(available, rate, cost), wait, "{available} {rate} {cost}");
        }
    }

    #[test]
    fn every_query_asks_for_what_shopify_allows_one_query() {
        // (orders in a page, lines of each it asks for)
        for (orders, lines) in [(1, 165), (10, 15), (20, 7), (50, 2), (76, 1)] {
            assert_eq!(lines_first(orders), lines, "{orders} orders");
            assert!(orders_query_cost(orders, lines) <= QUERY_COST_MAX);
            assert!(lines == CONNECTION_FIRST_MAX || orders_query_cost(orders, lines + 1) > QUERY_COST_MAX);
        }
        assert!(orders_query_cost(RECONCILE_PAGE_SIZE_MAX, 1) <= QUERY_COST_MAX, "the largest page fits");
        assert!(orders_query_cost(RECONCILE_PAGE_SIZE_MAX + 1, 1) > QUERY_COST_MAX, "and no larger one");
        assert_eq!(orders_query_cost(50, 250), 75_352.0, "what one page asked for before");
        for lines in [Lines::Order, Lines::Refund] {
            let (first, cost) = lines.page();
            assert!(first <= CONNECTION_FIRST_MAX && cost <= QUERY_COST_MAX, "{lines:?}");
        }
        assert_eq!(Lines::Order.page(), (250, 503.0));
        assert_eq!(Lines::Refund.page(), (249, 999.0));
    }

    #[test]
    fn errors_know_whether_a_retry_may_succeed() {
        assert!(AdminError::Status { status: 503 }.is_retryable());
        assert!(AdminError::Throttled { wait_ms: 1 }.is_retryable());
        assert!(AdminError::Unreachable("timed out".into()).is_retryable());
        assert!(!AdminError::Status { status: 401 }.is_retryable());
        assert!(!AdminError::GraphQl("Field 'x' doesn't exist".into()).is_retryable());
    }
}
