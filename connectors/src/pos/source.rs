//! The central routes the tills and store agents post to:
//!
//! - `POST /connectors/pos/{store}/sales`: a till's feed (NDJSON or a JSON array of
//!   `mapping::PosLine`s). From a till, refused lines are answered 422 (the valid ones are
//!   accepted); from a store agent (it sends its epoch header), they are dead-lettered
//!   with the reason, since the agent has already promised them to the till, and every
//!   sequence number of the request is counted as arrived.
//! - `POST /connectors/pos/{store}/heartbeat`: a store agent says how much it holds.
//! - `POST /connectors/pos/stock-report`: the brief's stock report, answered as it came
//!   with `"alerta"` when low.
//!
//! Every answer comes after Kafka acknowledged what was accepted.

use std::{sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Extension, Json, Router,
};
use chrono::{DateTime, Utc};
use onhand_core::{
    api::{idempotency_key, ApiError, Principal},
    auth::Binding,
    event::{LocationId, Movement, Sku, SourceSystem},
    freshness::SourceUpdate,
    kafka::{dead_letter, DeadLetter},
    product::{Product, ProductInput},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::warn;

use super::{
    config::PosConfig,
    mapping::{self, ReportIdentity},
};
use crate::contract::ConnectorContext;

/// The header a store agent names its numbering's life with.
pub const EPOCH_HEADER: &str = "x-onhand-agent-epoch";
/// The highest sequence number the agent holds.
pub const HEAD_HEADER: &str = "x-onhand-agent-head";
/// When the oldest line the agent has not forwarded yet occurred.
pub const OLDEST_PENDING_HEADER: &str = "x-onhand-agent-oldest-pending";

#[derive(Clone)]
struct PosState {
    context: ConnectorContext,
    config: Arc<PosConfig>,
}

pub(super) fn routes(context: ConnectorContext, config: Arc<PosConfig>) -> Router {
    Router::new()
        .route("/connectors/pos/{store}/sales", post(sales))
        .route("/connectors/pos/{store}/heartbeat", post(heartbeat))
        .route("/connectors/pos/stock-report", post(stock_report))
        .with_state(PosState { context, config })
}

/// What became of one line.
#[derive(Debug, Serialize)]
struct LineResult {
    index: usize,
    /// `accepted`, `rejected` (from a till), `dead_lettered` (from an agent) or `failed`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<serde_json::Value>,
}

/// Who posted: a store agent names its epoch and says what it holds.
struct Agent {
    epoch: String,
    head: Option<i64>,
    oldest_pending_at: Option<DateTime<Utc>>,
}

fn agent(headers: &HeaderMap) -> Option<Agent> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    Some(Agent {
        epoch: text(EPOCH_HEADER)?.to_string(),
        head: text(HEAD_HEADER).and_then(|v| v.parse().ok()),
        oldest_pending_at: text(OLDEST_PENDING_HEADER)
            .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
            .map(|t| t.into()),
    })
}

async fn sales(
    State(state): State<PosState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(store): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let store = LocationId::parse(store).map_err(|e| ApiError::InvalidLocation(e.message))?;
    may_post_for(&principal, &store)?;
    // A feed is as large as a batch of movements may be, not a small JSON document.
    let limit_bytes = state.context.config.http.body_bytes_max;
    let body = axum::body::to_bytes(body, limit_bytes).await.map_err(|_| ApiError::BodyTooLarge { limit_bytes })?;
    let agent = agent(&headers);
    if agent.is_some() {
        may_speak_as_agent(&principal, &store)?;
    }
    let lines = mapping::read_lines(&body);
    let max = state.config.lines_per_request_max;
    if lines.len() > max {
        return Err(ApiError::TooManyMovements { count: lines.len(), max });
    }
    if lines.is_empty() {
        return Err(ApiError::NoMovements);
    }
    let system = if agent.is_some() { SourceSystem::StoreAgent } else { SourceSystem::Pos };
    let now = Utc::now();
    // Sequence numbers are the agent's, from 1: anything else is not counted.
    let seqs: Vec<i64> = lines.iter().filter_map(|l| l.as_ref().ok()?.seq).filter(|seq| *seq >= 1).collect();
    let mapped: Vec<Result<Movement, (String, String)>> = lines
        .into_iter()
        .map(|line| match line {
            Ok(line) => {
                mapping::to_movement(&store, &line, system, now).map_err(|e| (e.code.as_str().to_string(), e.message))
            }
            Err(message) => Err(("pos_unreadable_line".to_string(), message)),
        })
        .collect();

    let results = deliver(&state.context, &store, &body, mapped, agent.is_some()).await;
    let health = &state.context.health;
    let source = format!("pos:{store}");
    if results.iter().any(|r| r.status == "failed") {
        health.error(&source, "kafka did not acknowledge every line of the store's feed").await;
    } else {
        health.ok(&source).await;
    }
    if results.iter().any(|r| r.status == "failed") {
        let body = json!({ "error": { "code": "kafka_unavailable", "message": "kafka did not acknowledge every line; send them again" }, "results": results });
        return Ok((StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")], Json(body)).into_response());
    }
    if let Some(agent) = &agent {
        record_progress(&state.context, &store, agent, &seqs).await?;
    }
    let count = |status: &str| results.iter().filter(|r| r.status == status).count();
    let (accepted, rejected, dead_lettered) = (count("accepted"), count("rejected"), count("dead_lettered"));
    let status = if rejected > 0 { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::ACCEPTED };
    let body =
        json!({ "accepted": accepted, "rejected": rejected, "dead_lettered": dead_lettered, "results": results });
    Ok((status, Json(body)).into_response())
}

/// Makes the accepted lines safe and, from an agent, dead-letters the refused ones; each
/// result says what became of its line.
async fn deliver(
    context: &ConnectorContext,
    store: &LocationId,
    body: &[u8],
    mapped: Vec<Result<Movement, (String, String)>>,
    from_agent: bool,
) -> Vec<LineResult> {
    let timeout = Duration::from_millis(context.config.kafka.produce_timeout_ms);
    let source = format!("pos:{store}");
    let accepted: Vec<Movement> = mapped.iter().filter_map(|m| m.as_ref().ok().cloned()).collect();
    let mut safe = context.ingest.accept(&accepted).await.into_iter();
    let mut results = Vec::with_capacity(mapped.len());
    for (index, line) in mapped.into_iter().enumerate() {
        results.push(match line {
            Ok(m) => {
                let event_id = Some(m.event_id.to_string());
                match safe.next() {
                    Some(Ok(())) => LineResult { index, status: "accepted", event_id, error: None },
                    _ => LineResult { index, status: "failed", event_id, error: None },
                }
            }
            Err((code, message)) if from_agent => {
                let letter = DeadLetter {
                    source: &source,
                    read_from: None,
                    key: None,
                    payload: line_bytes(body, index),
                    reason_code: &code,
                    reason: &message,
                };
                let status = match dead_letter(
                    &context.producer,
                    &context.topics.dlq,
                    letter,
                    timeout,
                    &context.metrics,
                )
                .await
                {
                    Ok(()) => "dead_lettered",
                    Err(e) => {
                        warn!(error = %e, "a refused pos line was not dead-lettered");
                        "failed"
                    }
                };
                let error = Some(json!({ "code": code, "message": message }));
                LineResult { index, status, event_id: None, error }
            }
            Err((code, message)) => LineResult {
                index,
                status: "rejected",
                event_id: None,
                error: Some(json!({ "code": code, "message": message })),
            },
        });
    }
    results
}

/// A key bound to a store posts for that store only; a key bound to another source does
/// not post tills' lines at all.
fn may_post_for(principal: &Principal, store: &LocationId) -> Result<(), ApiError> {
    match &principal.binding {
        None => Ok(()),
        Some(binding @ Binding::Store(_)) if binding.allows_location(store) => Ok(()),
        Some(binding) => Err(ApiError::Forbidden {
            code: "location_not_allowed",
            message: format!("this key speaks only for {binding}, not for {store}"),
        }),
    }
}

/// What a store agent says of its numbering (its epoch, what it holds) resets and moves
/// the store's progress: only the store's own key, or an admin key, may say it.
fn may_speak_as_agent(principal: &Principal, store: &LocationId) -> Result<(), ApiError> {
    match &principal.binding {
        Some(Binding::Store(bound)) if bound == store => Ok(()),
        None if principal.is_admin() => Ok(()),
        _ => Err(ApiError::Forbidden {
            code: "agent_key_not_bound",
            message: format!(
                "a store agent's progress for {store} needs a key bound to it (onhand keys create --store {store})"
            ),
        }),
    }
}

/// The bytes of the `index`th non-blank line of an NDJSON body, or the whole body.
fn line_bytes(body: &[u8], index: usize) -> &[u8] {
    body.split(|b| *b == b'\n').filter(|l| l.iter().any(|b| !b.is_ascii_whitespace())).nth(index).unwrap_or(body)
}

/// Counts the request's sequence numbers as arrived, run by run, and what the agent holds.
async fn record_progress(
    context: &ConnectorContext,
    store: &LocationId,
    agent: &Agent,
    seqs: &[i64],
) -> Result<(), ApiError> {
    let source = format!("pos:{store}");
    let mut updates = Vec::new();
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    for run in sorted.chunk_by(|a, b| b.saturating_sub(*a) <= 1) {
        updates.push(SourceUpdate::Received { epoch: agent.epoch.clone(), first: run[0], last: run[run.len() - 1] });
    }
    if let Some(head) = agent.head {
        let oldest_pending_at = agent.oldest_pending_at;
        updates.push(SourceUpdate::Heartbeat { epoch: agent.epoch.clone(), head, oldest_pending_at });
    }
    for update in &updates {
        context.sources.update_source(&source, update, Utc::now()).await.map_err(|e| {
            warn!(error = %e, source, "source progress not recorded");
            ApiError::Unavailable("the database")
        })?;
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Heartbeat {
    epoch: String,
    head_seq: i64,
    #[serde(default)]
    oldest_pending_at: Option<DateTime<Utc>>,
}

async fn heartbeat(
    State(state): State<PosState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(store): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let store = LocationId::parse(store).map_err(|e| ApiError::InvalidLocation(e.message))?;
    may_speak_as_agent(&principal, &store)?;
    let beat: Heartbeat = serde_json::from_slice(&body).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let update =
        SourceUpdate::Heartbeat { epoch: beat.epoch, head: beat.head_seq, oldest_pending_at: beat.oldest_pending_at };
    state.context.sources.update_source(&format!("pos:{store}"), &update, Utc::now()).await.map_err(|e| {
        warn!(error = %e, "heartbeat not recorded");
        ApiError::Unavailable("the database")
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// The brief's stock report: counts at the store, products and store names created when
/// new, and each record answered with the alert when low. All or nothing: a report with
/// any bad record records nothing, and a good one is written in one transaction before it
/// is answered. Each record counts under its identity (`id_relatorio`, or the request's
/// `Idempotency-Key` and its position), so a report sent again counts once.
async fn stock_report(
    State(state): State<PosState>,
    Extension(principal): Extension<Arc<Principal>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let identity = report_identity(&headers)?;
    let (reports, array) = mapping::read_reports(&body).map_err(ApiError::InvalidRequest)?;
    let now = Utc::now();
    let mut movements = Vec::with_capacity(reports.len());
    for (i, report) in reports.iter().enumerate() {
        let bad = |message: String| ApiError::InvalidRequest(format!("record {i}: {message}"));
        let location =
            mapping::report_location(&state.config.store_location_format, report).map_err(|e| bad(e.message))?;
        may_post_for(&principal, &location)?;
        let transaction_id = mapping::report_transaction_id(report, identity, i).map_err(bad)?;
        let line = mapping::report_line(report, &transaction_id, now);
        let movement = mapping::to_movement(&location, &line, SourceSystem::Pos, now).map_err(|e| bad(e.message))?;
        movements.push((location, movement));
    }
    name_what_is_new(&state, &reports, &movements).await?;
    let counts: Vec<Movement> = movements.iter().map(|(_, m)| m.clone()).collect();
    state.context.ingest.accept_all(&counts).await.map_err(|e| {
        warn!(error = %e, "stock report not recorded");
        ApiError::Unavailable("the database")
    })?;
    let mut answers = Vec::with_capacity(reports.len());
    for (report, (location, m)) in reports.iter().zip(&movements) {
        let reorder_point = reorder_point(&state, &m.sku, location).await;
        answers.push(mapping::answer_report(report, reorder_point));
    }
    let body = if array { json!(answers) } else { answers.into_iter().next().unwrap_or_default() };
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// The request's `Idempotency-Key`, the identity of its records when they have no
/// `id_relatorio` of their own.
pub(super) fn report_identity(headers: &HeaderMap) -> Result<ReportIdentity<'_>, ApiError> {
    Ok(idempotency_key(headers)?.map_or(ReportIdentity::None, ReportIdentity::Key))
}

/// Creates the products and names the stores a report mentions for the first time.
async fn name_what_is_new(
    state: &PosState,
    reports: &[mapping::StockReport],
    movements: &[(LocationId, Movement)],
) -> Result<(), ApiError> {
    let unavailable = |e: onhand_core::db::DbError| {
        warn!(error = %e, "catalog not updated from a stock report");
        ApiError::Unavailable("the database")
    };
    let names: Vec<(LocationId, String)> =
        reports.iter().zip(movements).map(|(r, (location, _))| (location.clone(), r.nome_loja.clone())).collect();
    state.context.catalog.name_locations(&names).await.map_err(unavailable)?;
    let mut new = Vec::new();
    for (report, (_, m)) in reports.iter().zip(movements) {
        if state.context.catalog.product(&m.sku).await.map_err(unavailable)?.is_none() {
            let input =
                ProductInput { name: report.nome_produto.clone(), category: None, attributes: Default::default() };
            new.push(Product::parse(m.sku.clone(), input).map_err(ApiError::InvalidRequest)?);
        }
    }
    if !new.is_empty() {
        state.context.catalog.put_products(&new).await.map_err(unavailable)?;
    }
    Ok(())
}

/// The level's reorder point, or the configured default when it has none or cannot be read.
async fn reorder_point(state: &PosState, sku: &Sku, location: &LocationId) -> i64 {
    let level = state.context.cache.get(sku).await.ok();
    level
        .and_then(|stock| stock.levels().iter().find(|l| &l.location == location).and_then(|l| l.reorder_point))
        .unwrap_or(state.config.reorder_point_default)
}
