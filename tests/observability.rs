//! The Prometheus rules and the Grafana dashboard of `deploy/` against a live onhand: a
//! real Prometheus (Debian's `/usr/bin/prometheus`) scrapes a test's `onhand serve` every
//! second and evaluates the rules of `deploy/prometheus/`, and every expression of the
//! rules and of `deploy/grafana/onhand.json` must return data once traffic has made the
//! metrics they read. An alert is evaluated without its threshold (healthy, it is silent:
//! its left side is what must have data). The alerts' runbook pages and annotations are
//! checked without any server.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{http::StatusCode, routing::post, Router};
use common::*;
use onhand::app::App;
use onhand_core::config::ChannelConfig;
use reqwest::Method;
use serde_json::{json, Value};

const PROMETHEUS: &str = "/usr/bin/prometheus";
/// The scrape job of the test's onhand: named `onhand-<role>`, as alerts.yml asks.
const JOB: &str = "onhand-test";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// ------------------------------------------------------------------ expressions

/// The parts of a rule expression to evaluate for data: the operands of its top-level
/// `and`/`or`/`unless`, each without its top-level comparison (`x > 5` is `x`). An alert
/// is silent while healthy; the query on the left of its threshold is what has data.
fn without_thresholds(expr: &str) -> Vec<String> {
    let operands = split_top_level(expr, is_set_operator);
    if operands.len() > 1 {
        return operands.iter().flat_map(|operand| without_thresholds(operand)).collect();
    }
    let inner = strip_parens(expr);
    if inner.len() < expr.trim().len() {
        return without_thresholds(inner);
    }
    let mut sides = split_top_level(expr, is_comparison);
    sides.truncate(1);
    sides
}

/// The length of a set operator (`and`, `or`, `unless`) starting at `i`, as a whole word.
fn is_set_operator(text: &str, i: usize) -> Option<usize> {
    let word_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let bytes = text.as_bytes();
    if i > 0 && word_char(bytes[i - 1]) {
        return None;
    }
    ["and", "or", "unless"].into_iter().find_map(|op| {
        let end = i + op.len();
        let whole = bytes[i..].starts_with(op.as_bytes()) && bytes.get(end).is_none_or(|&c| !word_char(c));
        whole.then_some(op.len())
    })
}

/// The length of a comparison operator starting at `i` (`==`, `!=`, `>=`, `<=`, `>`, `<`).
fn is_comparison(text: &str, i: usize) -> Option<usize> {
    let rest = &text.as_bytes()[i..];
    ["==", "!=", ">=", "<=", ">", "<"].into_iter().find(|op| rest.starts_with(op.as_bytes())).map(str::len)
}

/// `expr` cut at every operator `operator` finds outside parentheses, braces, brackets
/// and strings.
fn split_top_level(expr: &str, operator: impl Fn(&str, usize) -> Option<usize>) -> Vec<String> {
    let (mut parts, mut depth, mut quote, mut start, mut i) = (Vec::new(), 0i32, None, 0, 0);
    let bytes = expr.as_bytes();
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(_) if c == b'\\' => i += 1,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                b'"' | b'\'' | b'`' => quote = Some(c),
                b'(' | b'{' | b'[' => depth += 1,
                b')' | b'}' | b']' => depth -= 1,
                _ if depth == 0 => {
                    if let Some(len) = operator(expr, i) {
                        parts.push(expr[start..i].trim().to_string());
                        start = i + len;
                        i = start;
                        continue;
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    parts.push(expr[start..].trim().to_string());
    parts
}

/// `expr` without parentheses that enclose all of it.
fn strip_parens(expr: &str) -> &str {
    let mut expr = expr.trim();
    while expr.starts_with('(') && expr.ends_with(')') && closes_at_end(expr) {
        expr = expr[1..expr.len() - 1].trim();
    }
    expr
}

/// Whether the parenthesis opening `expr` is the one closing it.
fn closes_at_end(expr: &str) -> bool {
    let mut depth = 0;
    for (i, c) in expr.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return i == expr.len() - 1;
                }
            }
            _ => {}
        }
    }
    false
}

#[test]
fn thresholds_are_removed_at_the_top_level_only() {
    let cases: &[(&str, &[&str])] = &[
        ("onhand:ledger_behind_seconds:max > 60", &["onhand:ledger_behind_seconds:max"]),
        ("up{job=~\"onhand.*\"} == 0", &["up{job=~\"onhand.*\"}"]),
        ("onhand_source_healthy != 1", &["onhand_source_healthy"]),
        (
            "sum by (source) (rate(onhand_ledger_conflicts_total{source!=\"x>y\"}[5m])) >= 1",
            &["sum by (source) (rate(onhand_ledger_conflicts_total{source!=\"x>y\"}[5m]))"],
        ),
        ("a > 14.4 * 0.001", &["a"]),
        ("a > bool 3", &["a"]),
        ("(a > 0.0144) and (b > 0.0144)", &["a", "b"]),
        ("((a > 6 * 0.001) and (b > 0.006)) or ((c > 0.001) and (d > 0.001))", &["a", "b", "c", "d"]),
        ("a unless b", &["a", "b"]),
        // Names that contain a set operator, and comparisons inside functions, stay whole.
        ("onhand_orders_total or_else", &["onhand_orders_total or_else"]),
        ("sort(x > 1)", &["sort(x > 1)"]),
        (
            "histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))",
            &["histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m])))"],
        ),
        ("(a + b) / (c)", &["(a + b) / (c)"]),
        ("x{route=\"/é\"} > 1", &["x{route=\"/é\"}"]),
    ];
    for (expr, expected) in cases {
        assert_eq!(without_thresholds(expr), *expected, "{expr}");
    }
}

/// Every query of the dashboard's panels (rows' nested panels included), with Grafana's
/// variables given values Prometheus accepts.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((format!("panel {title:?}"), grafana_variables_replaced(expr)));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn grafana_variables_replaced(expr: &str) -> String {
    ["$__rate_interval", "${__rate_interval}", "$__interval", "${__interval}", "$__range", "${__range}"]
        .iter()
        .fold(expr.to_string(), |expr, variable| expr.replace(variable, "1m"))
}

#[test]
fn the_dashboard_reads_its_datasource_from_a_variable_and_every_panel_has_a_query() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/onhand.json")).expect("the dashboard is JSON");
    let variables = dashboard["templating"]["list"].as_array().expect("templating variables");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "a datasource variable of type prometheus: {variables:?}"
    );
    let schema = dashboard["schemaVersion"].as_i64().unwrap_or_default();
    assert!((36..=41).contains(&schema), "schemaVersion {schema} is not Grafana 10/11's");
    for panel in dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
        assert!(panel["targets"].as_array().is_some_and(|t| !t.is_empty()), "{} has no query", panel["title"]);
    }
    let queries = dashboard_queries(&dashboard);
    assert!(queries.iter().all(|(_, expr)| !expr.contains('$')), "a Grafana variable left: {queries:?}");
}

// ------------------------------------------------------------------ alert rules, as text

/// Each `- alert: Name` of alerts.yml with the text of its rule, up to the next rule.
fn alert_blocks(rules: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in rules.lines() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert: ") {
            blocks.push((name.trim().to_string(), String::new()));
        } else if trimmed.starts_with("- record: ") || trimmed.starts_with("- name: ") {
            blocks.push((String::new(), String::new()));
        } else if let Some((_, text)) = blocks.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    blocks.retain(|(name, _)| !name.is_empty());
    blocks
}

#[test]
fn every_alert_has_a_severity_a_summary_a_description_and_its_runbook() {
    let alerts = alert_blocks(&read("deploy/prometheus/alerts.yml"));
    assert_eq!(alerts.len(), 24, "the alerts of docs/operations/signals.md: {:?}", alerts.iter().map(|a| &a.0));
    let mut missing = Vec::new();
    for (name, text) in &alerts {
        for field in ["severity: ", "summary: ", "description: "] {
            assert!(text.contains(field), "{name} has no {field}");
        }
        let url = format!("runbook_url: https://github.com/onhand/onhand/blob/main/docs/runbooks/{name}.md");
        assert!(text.contains(&url), "{name} has no `{url}`");
        let page = format!("docs/runbooks/{name}.md");
        if !repo(&page).exists() {
            missing.push(page);
        }
    }
    assert!(missing.is_empty(), "runbook pages missing: {missing:?}");
}

// ------------------------------------------------------------------ Prometheus

/// Whether this run must have every server (CI, or `ONHAND_REQUIRE_SERVERS=1`), as
/// `onhand_core::testing` decides for PostgreSQL and the broker.
fn servers_required() -> bool {
    ["CI", "ONHAND_REQUIRE_SERVERS"]
        .into_iter()
        .any(|name| std::env::var(name).is_ok_and(|value| !matches!(value.as_str(), "" | "0" | "false")))
}

/// A Prometheus server of the test's own, on a free port, its storage in a temporary
/// directory; killed, and its directory removed, when dropped.
struct Prometheus {
    addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` every second as job [`JOB`], evaluating deploy/prometheus/'s rules
    /// every second.
    async fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("a directory for prometheus");
        let rules = ["recording.yml", "alerts.yml"].map(|file| repo(&format!("deploy/prometheus/{file}")));
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n  - {}\n\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules[0].display(),
            rules[1].display(),
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = free.local_addr().unwrap();
        drop(free);
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("prometheus starts");
        let prometheus = Prometheus { addr, child, _dir: dir };
        eventually("prometheus ready", 30, || async {
            let ready = reqwest::get(format!("http://{addr}/-/ready")).await.ok()?;
            ready.status().is_success().then_some(())
        })
        .await;
        prometheus
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let url = format!("http://{}/api/v1/{path}", self.addr);
        let answer: Value = reqwest::Client::new()
            .get(url)
            .query(query)
            .send()
            .await
            .expect("prometheus answers")
            .json()
            .await
            .expect("a JSON answer");
        assert_eq!(answer["status"], "success", "{path} {query:?}: {answer}");
        answer["data"].clone()
    }

    /// The values `expr` returns now that are numbers: a histogram quantile over a window
    /// without observations is NaN, which is no data to a dashboard.
    async fn query(&self, expr: &str) -> Vec<f64> {
        let data = self.api("query", &[("query", expr)]).await;
        let samples = match data["resultType"].as_str() {
            Some("scalar") => vec![data["result"].clone()],
            _ => data["result"].as_array().into_iter().flatten().map(|series| series["value"].clone()).collect(),
        };
        // A sample is `[time, "value"]`.
        samples.iter().filter_map(|sample| sample[1].as_str()?.parse::<f64>().ok()).filter(|v| v.is_finite()).collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ traffic

async fn receiver() -> (String, Arc<AtomicUsize>) {
    let received = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&received);
    let router = Router::new().route(
        "/hook",
        post(move || {
            let count = Arc::clone(&count);
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, received)
}

async fn post_movement(addr: SocketAddr, id: &str, sku: &str, kind: &str, quantity: i64) {
    let movement = json!({
        "event_id": id, "source": { "system": "api", "instance": "test", "ref": id },
        "sku": sku, "location": "store-1", "kind": kind, "quantity": quantity,
        "occurred_at": "2026-11-20T10:00:00Z"
    });
    let (status, answer) = http_post(addr, "/v1/movements", "application/json", movement.to_string()).await;
    assert_eq!(status, 202, "{answer}");
}

async fn pos_sale(addr: SocketAddr, transaction: &str) {
    let sale = json!({ "transaction_id": transaction, "line": 1, "kind": "sale", "sku": "7891000100103",
                       "quantity": 1, "occurred_at": "2026-11-22T11:31:07-03:00", "till": "04" });
    let body = format!("{sale}\n");
    let (status, answer) = http_post(addr, "/connectors/pos/store-001/sales", "application/x-ndjson", body).await;
    assert_eq!(status, 202, "{answer}");
}

async fn reserve(addr: SocketAddr, key: &str, body: Value) -> (u16, Value) {
    http_send(Method::POST, addr, "/v1/reservations", &[("idempotency-key", key)], Some(body)).await
}

/// The series the rules and panels read, as `/metrics` must show them before Prometheus
/// is asked: each exported by something the traffic did.
const SERIES_MADE_BY_TRAFFIC: [&str; 12] = [
    "onhand_query_propagation_seconds_count{source=\"api\"}",
    "onhand_reservations_requests_total{outcome=\"held\"}",
    "onhand_reservations_requests_total{outcome=\"short\"}",
    "onhand_reservations_closed_total{status=\"expired\"}",
    "onhand_alerts_raised_total{kind=\"oversold\"}",
    "onhand_alerts_resolved_total{kind=\"oversold\"}",
    "onhand_alert_deliveries_total{outcome=\"delivered\"}",
    "onhand_dead_letters_total{",
    "onhand_source_last_movement_age_seconds{source=\"pos:store-001\"}",
    "onhand_ledger_behind_seconds{partition=\"0\"}",
    "onhand_http_requests_total{",
    "onhand_http_request_duration_seconds_bucket{",
];

/// Movements from the API and the POS connector, stock reads, a reservation held (and
/// expired) and one short, an oversold level raised and resolved with its webhook, a
/// dead letter; more movements until the cache has timed one.
async fn drive_traffic(app: &App, topic: &str) {
    let addr = app.local_addr;
    let (url, delivered) = receiver().await;
    let (status, answer) = http_post(
        addr,
        "/v1/subscriptions",
        "application/json",
        json!({ "url": url, "kinds": ["oversold"] }).to_string(),
    )
    .await;
    assert_eq!(status, 201, "{answer}");

    post_movement(addr, "obs-receipt", "SKU-O", "receipt", 5).await;
    post_movement(addr, "obs-oversold", "SKU-N", "sale", 3).await;
    pos_sale(addr, "T1").await;
    produce(&producer(), topic, &[("SKU-X".to_string(), b"not a movement".to_vec())]).await;
    on_hand_is(app, "SKU-O", "store-1", 5).await;
    on_hand_is(app, "SKU-N", "store-1", -3).await;
    post_movement(addr, "obs-restock", "SKU-N", "receipt", 20).await;

    for path in ["/v1/stock/SKU-O", "/v1/stock/SKU-O/store-1", "/v1/sources"] {
        let (status, answer) = http_get(addr, path).await;
        assert_eq!(status, 200, "{path}: {answer}");
    }
    let (status, answer) =
        http_post(addr, "/v1/stock/query", "application/json", json!({ "skus": ["SKU-O", "SKU-N"] }).to_string()).await;
    assert_eq!(status, 200, "{answer}");
    let one = json!({ "channel": "web", "lines": [{ "sku": "SKU-O", "quantity": 1 }], "ttl_s": 1 });
    let (status, held) = reserve(addr, "obs-held", one).await;
    assert_eq!(status, 201, "{held}");
    let too_many = json!({ "channel": "web", "lines": [{ "sku": "SKU-O", "quantity": 500 }] });
    let (status, short) = reserve(addr, "obs-short", too_many).await;
    assert_eq!(status, 409, "{short}");

    let (delivered, mut round) = (&delivered, 0);
    eventually("every series the rules read in /metrics", 60, || {
        round += 1;
        async move {
            let text = app.metrics.render();
            let missing: Vec<&str> = SERIES_MADE_BY_TRAFFIC.into_iter().filter(|s| !text.contains(s)).collect();
            let timed = metric(app, SERIES_MADE_BY_TRAFFIC[0]) >= 1.0;
            if missing.is_empty() && timed && delivered.load(Ordering::SeqCst) > 0 {
                return Some(());
            }
            // A level is timed only once the cache follows the stock topic: move again.
            if round % 10 == 0 {
                post_movement(addr, &format!("obs-more-{round}"), "SKU-O", "receipt", 1).await;
                if round % 100 == 0 {
                    eprintln!("still missing from /metrics: {missing:?}");
                }
            }
            None
        }
    })
    .await;
}

/// A movement and a stock read every 200 ms until aborted: a rate needs its counter to
/// grow between two scrapes, and a quantile needs observations in its window.
fn steady_traffic(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0.. {
            post_movement(addr, &format!("obs-steady-{i}"), "SKU-O", "receipt", 1).await;
            let (status, answer) = http_get(addr, "/v1/stock/SKU-O").await;
            assert_eq!(status, 200, "{answer}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Every rule Prometheus loaded (all of both files, or the test fails), each alert without
/// its thresholds; every query of the dashboard; and the scrape job's name that
/// OnhandProcessDown relies on. Each with what it comes from.
async fn expressions_to_check(prometheus: &Prometheus) -> Vec<(String, String)> {
    let groups = prometheus.api("rules", &[]).await["groups"].as_array().cloned().unwrap_or_default();
    let rules: Vec<Value> = groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect();
    let count = |file: &str, key: &str| read(file).lines().filter(|l| l.trim_start().starts_with(key)).count();
    let recorded = rules.iter().filter(|r| r["type"] == "recording").count();
    let alerting = rules.iter().filter(|r| r["type"] == "alerting").count();
    assert_eq!(recorded, count("deploy/prometheus/recording.yml", "- record: "), "recording rules loaded");
    assert_eq!(alerting, count("deploy/prometheus/alerts.yml", "- alert: "), "alert rules loaded");

    let mut expressions: Vec<(String, String)> = Vec::new();
    for rule in &rules {
        let (name, query) = (rule["name"].as_str().unwrap(), rule["query"].as_str().unwrap());
        if rule["type"] == "alerting" {
            expressions.extend(without_thresholds(query).into_iter().map(|part| (format!("alert {name}"), part)));
        } else {
            expressions.push((format!("record {name}"), query.to_string()));
        }
    }
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/onhand.json")).unwrap();
    expressions.extend(dashboard_queries(&dashboard));
    expressions.push(("the scrape job".into(), format!("up{{job=\"{JOB}\"}} == 1")));
    expressions
}

/// The expressions that return no number, asked again every second for up to 30 s: a
/// rate needs two scrapes in its window, and recording rules one evaluation after that.
async fn without_numbers(prometheus: &Prometheus, expressions: &[(String, String)]) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut empty = Vec::new();
        for (what, expr) in expressions {
            if prometheus.query(expr).await.is_empty() {
                empty.push(format!("{what}: {expr}"));
            }
        }
        if empty.is_empty() || tokio::time::Instant::now() > deadline {
            return empty;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

// ------------------------------------------------------------------ the test

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rule_and_dashboard_query_returns_data_from_a_live_onhand() {
    onhand_core::skip_without_servers!();
    if !Path::new(PROMETHEUS).exists() {
        assert!(
            !servers_required(),
            "{PROMETHEUS} is missing and this run requires the servers: apt-get install prometheus"
        );
        eprintln!("skipped observability: needs {PROMETHEUS} (apt-get install prometheus)");
        return;
    }
    let mut config = test_config(1).await;
    config.channels.insert(
        "web".into(),
        ChannelConfig { all_locations: false, locations: vec!["store-1".into()], ..ChannelConfig::default() },
    );
    config.connectors.insert("pos".into(), json!({}));
    config.reservations.expiry_interval_ms = 100;
    let app = serve(&config).await;
    let prometheus = Prometheus::start(app.local_addr).await;
    drive_traffic(&app, &config.kafka.topics.movements).await;
    let steady = steady_traffic(app.local_addr);

    let expressions = expressions_to_check(&prometheus).await;
    let empty = without_numbers(&prometheus, &expressions).await;
    steady.abort();
    assert!(
        empty.is_empty(),
        "{} of {} expressions return no number:\n{}",
        empty.len(),
        expressions.len(),
        empty.join("\n")
    );
    app.stop().await.unwrap();
}
