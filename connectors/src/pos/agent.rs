//! `onhand store-agent`: runs in a store beside the tills and keeps selling when the
//! network to the central service is cut.
//!
//! It serves the POS routes locally (`POST /connectors/pos/{store}/sales`,
//! `POST /connectors/pos/stock-report`) and checks each line with the same mapping as the
//! central service. An accepted line is first written to an SQLite outbox, which gives it
//! the store's next sequence number, and only then answered. A forwarder sends the outbox
//! to the central service in sequence order, with retries and backoff, and deletes what
//! was acknowledged; a line sent twice (a crash between the answer and the delete) counts
//! once, because its event id comes from the till's transaction and line. The store reads
//! its own stock at `GET /v1/stock/{sku}`: the last level read from the central service,
//! with the lines not forwarded yet applied on top, and its alerts at `GET /alerts`, as
//! last received from the central service (`agent/alerts.rs`).

mod alerts;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path as FsPath, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use chrono::{DateTime, Utc};
use onhand_core::{
    api::ApiError,
    backoff::Backoff,
    event::{alert::AlertState, LocationId, Movement, Sku, SourceSystem},
};
use serde_json::json;
use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    Row, SqlitePool,
};
use tokio::{net::TcpListener, sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    mapping::{self, PosLine},
    source::{EPOCH_HEADER, HEAD_HEADER, OLDEST_PENDING_HEADER},
};

/// How long a read of the central level may take before the last known level answers.
const CENTRAL_READ_BUDGET: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The onhand location of this store, e.g. `store-012`.
    pub store: LocationId,
    /// The central service, e.g. `https://onhand.example.com`.
    pub central_url: String,
    /// An API key with `movements:write` and `stock:read`.
    pub api_key: String,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The most lines forwarded in one request.
    pub forward_batch_max: i64,
    /// How often an idle agent tells the central service it is alive.
    pub heartbeat_interval: Duration,
    /// The longest wait between two attempts to reach the central service.
    pub retry_max: Duration,
    /// How often the store's alerts are asked of the central service.
    pub alerts_interval: Duration,
    /// The store location of a stock report's `id_loja`, as in `[connectors.pos]`.
    pub store_location_format: String,
    /// The reorder point when a level has none, for the stock report's alert.
    pub reorder_point_default: i64,
    /// Who on the store's network may post to the agent.
    pub local_auth: LocalAuth,
}

/// Who may call the agent's routes: the store's network is not a trusted one (a guest
/// Wi-Fi, a compromised kiosk), so by default (`onhand store-agent`) every till sends a
/// token of its own.
#[derive(Clone, PartialEq, Eq)]
pub enum LocalAuth {
    /// Anyone who reaches the agent's address.
    Off,
    /// A request needs `Authorization: Bearer <token>` with one of these.
    Tokens(Vec<LocalToken>),
}

/// A till's (or the store's) token, with a name for the log.
#[derive(Clone, PartialEq, Eq)]
pub struct LocalToken {
    pub name: String,
    pub token: String,
}

impl std::fmt::Debug for LocalToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalToken").field("name", &self.name).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for LocalAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocalAuth::Off => f.write_str("Off"),
            // Names only: a token is never logged.
            LocalAuth::Tokens(tokens) => f.debug_list().entries(tokens.iter().map(|t| &t.name)).finish(),
        }
    }
}

impl LocalAuth {
    /// Reads a tokens file: one `NAME TOKEN` a line; blank lines and `#` comments skipped.
    pub fn parse(text: &str) -> Result<LocalAuth, String> {
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, token) = line.split_once(char::is_whitespace).ok_or(format!("line {i}: expected NAME TOKEN"))?;
            let token = token.trim();
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("line {i}: a token is at least 16 visible characters"));
            }
            tokens.push(LocalToken { name: name.to_string(), token: token.to_string() });
        }
        if tokens.is_empty() {
            return Err("no token in the file".into());
        }
        Ok(LocalAuth::Tokens(tokens))
    }

    /// The tokens file `path`, made with one random token for the store's tills when it
    /// does not exist (readable by its owner only).
    pub fn from_file_or_create(path: &FsPath) -> Result<LocalAuth, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string();
                let text = format!("# NAME TOKEN: the tills send Authorization: Bearer TOKEN\ntills {token}\n");
                write_private(path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
                Self::parse(&text)
            }
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// The name of the token `authorization` carries, when the agent admits it.
    fn admits(&self, authorization: Option<&str>) -> Option<&str> {
        use subtle::ConstantTimeEq;
        let LocalAuth::Tokens(tokens) = self else { return Some("") };
        let given = authorization?.strip_prefix("Bearer ").or_else(|| authorization?.strip_prefix("bearer "))?.trim();
        // Every token is compared, in constant time, so timing tells nothing of a guess.
        let mut found = None;
        for t in tokens {
            if bool::from(t.token.as_bytes().ct_eq(given.as_bytes())) {
                found = Some(t.name.as_str());
            }
        }
        found
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &FsPath, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

impl AgentConfig {
    pub fn new(store: LocationId, central_url: String, api_key: String, data_dir: PathBuf) -> AgentConfig {
        AgentConfig {
            store,
            central_url: central_url.trim_end_matches('/').to_string(),
            api_key,
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            data_dir,
            forward_batch_max: 500,
            heartbeat_interval: Duration::from_secs(10),
            retry_max: Duration::from_secs(30),
            alerts_interval: Duration::from_secs(5),
            store_location_format: "store-{id_loja}".into(),
            reorder_point_default: 5,
            local_auth: LocalAuth::Off,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the agent's database in {dir}: {source}")]
    Database { dir: String, source: sqlx::Error },
    #[error("the agent's database in {dir}: {source}")]
    Migrate { dir: String, source: sqlx::migrate::MigrateError },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("http client: {0}")]
    Client(#[from] reqwest::Error),
}

/// A running store agent.
#[derive(Debug)]
pub struct Agent {
    pub local_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Clone)]
struct Shared {
    config: Arc<AgentConfig>,
    outbox: SqlitePool,
    epoch: Arc<str>,
    http: reqwest::Client,
    /// Wakes the forwarder when lines arrive.
    arrived: Arc<Notify>,
}

impl Agent {
    pub async fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        let outbox = open_outbox(&config.data_dir).await?;
        let epoch = epoch(&outbox, &config.data_dir).await?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        let shared =
            Shared { config: Arc::new(config), outbox, epoch: epoch.into(), http, arrived: Arc::new(Notify::new()) };
        let addr = shared.config.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| AgentError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| AgentError::Bind { addr, source })?;
        let shutdown = CancellationToken::new();
        let router = Router::new()
            .route("/connectors/pos/{store}/sales", post(sales))
            .route("/connectors/pos/stock-report", post(stock_report))
            .route("/v1/stock/{sku}", get(local_stock))
            .route("/alerts", get(local_alerts))
            .route_layer(axum::middleware::from_fn_with_state(shared.clone(), local_token))
            .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
            .with_state(shared.clone());
        let server_shutdown = shutdown.clone();
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, router).with_graceful_shutdown(server_shutdown.cancelled_owned()).await;
            if let Err(e) = served {
                warn!(error = %e, "the store agent's server stopped");
            }
        });
        let forwarder = tokio::spawn(forward(shared.clone(), shutdown.clone()));
        let feed = alerts::Feed {
            pool: shared.outbox.clone(),
            http: shared.http.clone(),
            central_url: shared.config.central_url.clone(),
            api_key: shared.config.api_key.clone(),
            store: shared.config.store.clone(),
            every: shared.config.alerts_interval,
        };
        let alerts = tokio::spawn(feed.run(shutdown.clone()));
        info!(%local_addr, store = %shared.config.store, epoch = %shared.epoch, "store agent running");
        Ok(Agent { local_addr, shutdown, tasks: vec![server, forwarder, alerts] })
    }

    /// Stops serving and forwarding; what is in the outbox stays there for the next start.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Stops at once, wherever the tasks are, as a crash or a power cut would.
    pub fn kill(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Lets a request through when it carries a token of the store (see [`LocalAuth`]).
async fn local_token(
    State(shared): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    let authorization = request.headers().get("authorization").and_then(|v| v.to_str().ok());
    if shared.config.local_auth.admits(authorization).is_none() {
        return Err(ApiError::InvalidApiKey);
    }
    Ok(next.run(request).await)
}

async fn open_outbox(dir: &FsPath) -> Result<SqlitePool, AgentError> {
    let db_error = |source| AgentError::Database { dir: dir.display().to_string(), source };
    std::fs::create_dir_all(dir).map_err(|e| db_error(sqlx::Error::Io(e)))?;
    let url = format!("sqlite://{}", dir.join("agent.db").display());
    // FULL: an answered line must survive a power cut in the store.
    let options = SqliteConnectOptions::from_str(&url)
        .map_err(db_error)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(db_error)?;
    sqlx::migrate!("../migrations/agent")
        .run(&pool)
        .await
        .map_err(|source| AgentError::Migrate { dir: dir.display().to_string(), source })?;
    Ok(pool)
}

/// This database's epoch: made once, so that the central service knows the numbering
/// started again if the database is ever replaced.
async fn epoch(pool: &SqlitePool, dir: &FsPath) -> Result<String, AgentError> {
    let db_error = |source| AgentError::Database { dir: dir.display().to_string(), source };
    let fresh = uuid::Uuid::new_v4().simple().to_string();
    sqlx::query("INSERT INTO meta (key, value) VALUES ('epoch', ?1) ON CONFLICT (key) DO NOTHING")
        .bind(&fresh)
        .execute(pool)
        .await
        .map_err(db_error)?;
    sqlx::query_scalar("SELECT value FROM meta WHERE key = 'epoch'").fetch_one(pool).await.map_err(db_error)
}

/// Writes checked lines to the outbox in one transaction; answers their sequence numbers.
async fn enqueue(shared: &Shared, lines: &[(PosLine, Movement)]) -> Result<Vec<i64>, ApiError> {
    let failed = |e: sqlx::Error| {
        warn!(error = %e, "lines not written to the outbox");
        ApiError::Unavailable("the store agent's database")
    };
    let mut tx = shared.outbox.begin_with("BEGIN IMMEDIATE").await.map_err(failed)?;
    let mut seqs = Vec::with_capacity(lines.len());
    for (line, movement) in lines {
        // The line is kept as the till sent it; its sequence number is the row's, added
        // when it is forwarded.
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (line, sku, delta, count, occurred_at) VALUES (?1, ?2, ?3, ?4, ?5) RETURNING seq",
        )
        .bind(serde_json::to_string(line).expect("a line serializes"))
        .bind(movement.sku.as_str())
        .bind(movement.delta())
        .bind(movement.delta().is_none().then_some(movement.quantity))
        .bind(movement.occurred_at.timestamp_micros())
        .fetch_one(&mut *tx)
        .await
        .map_err(failed)?;
        seqs.push(seq);
    }
    tx.commit().await.map_err(failed)?;
    shared.arrived.notify_one();
    Ok(seqs)
}

async fn sales(State(shared): State<Shared>, Path(store): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    if store != shared.config.store.as_str() {
        return Err(ApiError::InvalidRequest(format!("this agent serves {}, not {store}", shared.config.store)));
    }
    let now = Utc::now();
    let mut accepted = Vec::new();
    let mut results = Vec::new();
    for (index, line) in mapping::read_lines(&body).into_iter().enumerate() {
        let checked = line.and_then(|line| {
            if line.seq.is_some() {
                return Err("seq is given by the store agent, not by the till".to_string());
            }
            let movement = mapping::to_movement(&shared.config.store, &line, SourceSystem::StoreAgent, now)
                .map_err(|e| format!("{}: {}", e.code, e.message))?;
            Ok((line, movement))
        });
        match checked {
            Ok((line, movement)) => {
                results.push(json!({ "index": index, "status": "accepted", "event_id": movement.event_id }));
                accepted.push((line, movement));
            }
            Err(message) => results.push(json!({ "index": index, "status": "rejected", "error": message })),
        }
    }
    if results.is_empty() {
        return Err(ApiError::NoMovements);
    }
    let seqs = enqueue(&shared, &accepted).await?;
    let rejected = results.len() - seqs.len();
    let status = if rejected > 0 { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::ACCEPTED };
    let body = json!({ "accepted": seqs.len(), "rejected": rejected, "seqs": seqs, "results": results });
    Ok((status, Json(body)).into_response())
}

/// The brief's stock report, for this store: each record becomes a count in the outbox
/// and is answered with the alert when low, from what the agent knows of the level.
async fn stock_report(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    // The identity is stamped here, once, and kept in the outbox line through every
    // forward: a till's retry with the same key (or id_relatorio) counts once too.
    let identity = super::source::report_identity(&headers)?;
    let (reports, array) = mapping::read_reports(&body).map_err(ApiError::InvalidRequest)?;
    let now = Utc::now();
    let mut lines = Vec::with_capacity(reports.len());
    for (i, report) in reports.iter().enumerate() {
        let bad = |message: String| ApiError::InvalidRequest(format!("record {i}: {message}"));
        let location =
            mapping::report_location(&shared.config.store_location_format, report).map_err(|e| bad(e.message))?;
        if location != shared.config.store {
            return Err(bad(format!(
                "id_loja {} is {location}; this agent serves {}",
                report.id_loja, shared.config.store
            )));
        }
        let transaction_id = mapping::report_transaction_id(report, identity, i).map_err(bad)?;
        let line = mapping::report_line(report, &transaction_id, now);
        let movement = mapping::to_movement(&shared.config.store, &line, SourceSystem::StoreAgent, now)
            .map_err(|e| bad(e.message))?;
        lines.push((line, movement));
    }
    enqueue(&shared, &lines).await?;
    let mut answers = Vec::with_capacity(reports.len());
    for (report, (_, movement)) in reports.iter().zip(&lines) {
        let known = known_level(&shared, &movement.sku).await;
        let reorder_point = known.and_then(|(_, point, _)| point).unwrap_or(shared.config.reorder_point_default);
        answers.push(mapping::answer_report(report, reorder_point));
    }
    let body = if array { json!(answers) } else { answers.into_iter().next().unwrap_or_default() };
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// The store's own stock of a SKU: the central level (read now, or the last one read) with
/// the lines still in the outbox applied on top.
async fn local_stock(
    State(shared): State<Shared>,
    Path(sku): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sku = Sku::parse(sku).map_err(|e| ApiError::InvalidSku(e.message))?;
    let (central_on_hand, stale, as_of) = match read_central(&shared, &sku).await {
        Some((on_hand, _)) => (Some(on_hand), false, Some(Utc::now())),
        None => match known_level(&shared, &sku).await {
            Some((on_hand, _, as_of)) => (Some(on_hand), true, Some(as_of)),
            None => (None, true, None),
        },
    };
    let unavailable = |e: sqlx::Error| {
        warn!(error = %e, "outbox not read");
        ApiError::Unavailable("the store agent's database")
    };
    let pending = sqlx::query("SELECT delta, count FROM outbox WHERE sku = ?1 ORDER BY seq")
        .bind(sku.as_str())
        .fetch_all(&shared.outbox)
        .await
        .map_err(unavailable)?;
    let mut on_hand = central_on_hand.unwrap_or(0);
    for row in &pending {
        match (
            row.try_get::<Option<i64>, _>("delta").map_err(unavailable)?,
            row.try_get::<Option<i64>, _>("count").map_err(unavailable)?,
        ) {
            (Some(delta), _) => on_hand += delta,
            (None, Some(count)) => on_hand = count,
            (None, None) => {}
        }
    }
    Ok(Json(json!({
        "sku": sku, "location": shared.config.store, "on_hand": on_hand,
        "central_on_hand": central_on_hand, "pending_lines": pending.len(), "as_of": as_of, "stale": stale,
    })))
}

/// The store's alerts as last received from the central service, newest change first
/// (`?state=open|acknowledged|resolved` for one state): they answer during a cut too.
async fn local_alerts(
    State(shared): State<Shared>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(unknown) = query.keys().find(|k| k.as_str() != "state") {
        let message = format!("unknown parameter {unknown:?}, expected state");
        return Err(ApiError::InvalidParameter { name: "query", message });
    }
    let state = query.get("state").map(String::as_str);
    if let Some(state) = state.filter(|s| AlertState::parse(s).is_none()) {
        let message = format!("{state:?} is not an alert state: open, acknowledged or resolved");
        return Err(ApiError::InvalidParameter { name: "state", message });
    }
    let kept = alerts::kept(&shared.outbox, state).await.map_err(|e| {
        warn!(error = %e, "alerts not read");
        ApiError::Unavailable("the store agent's database")
    })?;
    Ok(Json(json!({ "store": shared.config.store, "alerts": kept })))
}

/// The level as the central service has it now, remembered for later; `None` when it
/// cannot answer in time.
async fn read_central(shared: &Shared, sku: &Sku) -> Option<(i64, Option<i64>)> {
    let url = format!("{}/v1/stock/{sku}/{}", shared.config.central_url, shared.config.store);
    let response = shared.http.get(url).bearer_auth(&shared.config.api_key).timeout(CENTRAL_READ_BUDGET).send().await;
    let level: serde_json::Value = match response {
        Ok(r) if r.status().is_success() => r.json().await.ok()?,
        // The central service has no level yet: nothing was ever counted here.
        Ok(r) if r.status() == StatusCode::NOT_FOUND => json!({ "on_hand": 0 }),
        _ => return None,
    };
    let on_hand = level["on_hand"].as_i64()?;
    let reorder_point = level["reorder_point"].as_i64();
    let saved = sqlx::query(
        "INSERT INTO levels (sku, on_hand, reorder_point, as_of) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (sku) DO UPDATE SET on_hand = excluded.on_hand, reorder_point = excluded.reorder_point,
                                         as_of = excluded.as_of",
    )
    .bind(sku.as_str())
    .bind(on_hand)
    .bind(reorder_point)
    .bind(Utc::now().timestamp_micros())
    .execute(&shared.outbox)
    .await;
    if let Err(e) = saved {
        warn!(error = %e, "central level not remembered");
    }
    Some((on_hand, reorder_point))
}

/// The last level read from the central service: on hand, reorder point, when.
async fn known_level(shared: &Shared, sku: &Sku) -> Option<(i64, Option<i64>, DateTime<Utc>)> {
    let row = sqlx::query("SELECT on_hand, reorder_point, as_of FROM levels WHERE sku = ?1")
        .bind(sku.as_str())
        .fetch_optional(&shared.outbox)
        .await
        .ok()??;
    let as_of = DateTime::from_timestamp_micros(row.try_get("as_of").ok()?)?;
    Some((row.try_get("on_hand").ok()?, row.try_get("reorder_point").ok()?, as_of))
}

/// The first pause after the central service could not be reached; it doubles up to
/// `retry_max`.
const FORWARD_RETRY_MIN: Duration = Duration::from_millis(200);

/// Sends the outbox to the central service in sequence order until `shutdown`, and says
/// it is alive when there is nothing to send.
async fn forward(shared: Shared, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(FORWARD_RETRY_MIN, shared.config.retry_max);
    // The pause before the next attempt after a failure; `None` while the service answers.
    let mut retry_in: Option<Duration> = None;
    loop {
        let wait = retry_in.unwrap_or(shared.config.heartbeat_interval);
        let outcome = match next_batch(&shared).await {
            Ok(batch) if batch.is_empty() => heartbeat(&shared).await.map(|()| false),
            Ok(batch) => send(&shared, &batch).await.map(|()| true),
            Err(e) => Err(e),
        };
        let more = match outcome {
            Ok(more) => {
                backoff.reset();
                retry_in = None;
                more
            }
            Err(e) => {
                let pause = backoff.fail();
                warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "central service not reached; lines stay in the outbox");
                retry_in = Some(pause);
                false
            }
        };
        if more {
            continue;
        }
        let wait = retry_in.unwrap_or(wait);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = shared.arrived.notified(), if retry_in.is_none() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One outboxed line, ready to forward.
struct Outboxed {
    seq: i64,
    line: String,
    occurred_at: i64,
}

async fn next_batch(shared: &Shared) -> Result<Vec<Outboxed>, String> {
    let rows = sqlx::query("SELECT seq, line, occurred_at FROM outbox ORDER BY seq LIMIT ?1")
        .bind(shared.config.forward_batch_max)
        .fetch_all(&shared.outbox)
        .await
        .map_err(|e| e.to_string())?;
    rows.iter()
        .map(|r| {
            let seq: i64 = r.try_get("seq").map_err(|e| e.to_string())?;
            let line: PosLine = serde_json::from_str(r.try_get("line").map_err(|e| e.to_string())?)
                .map_err(|e| format!("outbox line {seq} is not readable: {e}"))?;
            Ok(Outboxed {
                seq,
                line: serde_json::to_string(&PosLine { seq: Some(seq), ..line }).expect("a line serializes"),
                occurred_at: r.try_get("occurred_at").map_err(|e| e.to_string())?,
            })
        })
        .collect()
}

/// The highest sequence number given so far.
async fn head(shared: &Shared) -> Result<i64, String> {
    let head: Option<i64> = sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")
        .fetch_optional(&shared.outbox)
        .await
        .map_err(|e| e.to_string())?;
    Ok(head.unwrap_or(0))
}

/// Forwards a batch; deletes it from the outbox once the central service acknowledged it.
async fn send(shared: &Shared, batch: &[Outboxed]) -> Result<(), String> {
    let body: String = batch.iter().map(|o| format!("{}\n", o.line)).collect();
    let oldest = DateTime::from_timestamp_micros(batch[0].occurred_at).unwrap_or_default().to_rfc3339();
    let url = format!("{}/connectors/pos/{}/sales", shared.config.central_url, shared.config.store);
    let response = shared
        .http
        .post(url)
        .bearer_auth(&shared.config.api_key)
        .header("content-type", "application/x-ndjson")
        .header(EPOCH_HEADER, &*shared.epoch)
        .header(HEAD_HEADER, head(shared).await?.to_string())
        .header(OLDEST_PENDING_HEADER, oldest)
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        let status = response.status();
        return Err(format!("the central service answered {status}: {}", response.text().await.unwrap_or_default()));
    }
    let last = batch[batch.len() - 1].seq;
    sqlx::query("DELETE FROM outbox WHERE seq <= ?1")
        .bind(last)
        .execute(&shared.outbox)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

async fn heartbeat(shared: &Shared) -> Result<(), String> {
    let url = format!("{}/connectors/pos/{}/heartbeat", shared.config.central_url, shared.config.store);
    let body = json!({ "epoch": &*shared.epoch, "head_seq": head(shared).await? });
    let response = shared
        .http
        .post(url)
        .bearer_auth(&shared.config.api_key)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("the central service answered {} to a heartbeat", response.status()));
    }
    Ok(())
}
