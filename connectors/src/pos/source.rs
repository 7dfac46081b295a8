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
    Json, Router,
};
use chrono::{DateTime, Utc};
use futures::future::join_all;
use onhand_core::{
    api::ApiError,
    event::{LocationId, Movement, Sku, SourceSystem},
    kafka::{dead_letter, DeadLetter},
    product::{Product, ProductInput},
    source::SourceUpdate,
};
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::warn;

use super::{config::PosConfig, mapping, EPOCH_HEADER, HEAD_HEADER, OLDEST_PENDING_HEADER};
use crate::ConnectorContext;

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
    Path(store): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let store = LocationId::parse(store).map_err(|e| ApiError::InvalidLocation(e.message))?;
    // A feed is as large as a batch of movements may be, not a small JSON document.
    let limit_bytes = state.context.config.http.body_bytes_max;
    let body = axum::body::to_bytes(body, limit_bytes).await.map_err(|_| ApiError::BodyTooLarge { limit_bytes })?;
    let agent = agent(&headers);
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
    let seqs: Vec<i64> = lines.iter().filter_map(|l| l.as_ref().ok()?.seq).collect();
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

/// Produces the accepted lines and, from an agent, dead-letters the refused ones; each
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
    let sends = mapped.into_iter().enumerate().map(|(index, line)| {
        let source = &source;
        async move {
            match line {
                Ok(m) => {
                    let payload = m.to_json();
                    let record = FutureRecord::to(&context.topics.movements).key(m.kafka_key()).payload(&payload);
                    let event_id = Some(m.event_id.to_string());
                    match context.producer.send(record, timeout).await {
                        Ok(_) => LineResult { index, status: "accepted", event_id, error: None },
                        Err((e, _)) => {
                            warn!(error = %e, "pos line not acknowledged by kafka");
                            LineResult { index, status: "failed", event_id, error: None }
                        }
                    }
                }
                Err((code, message)) if from_agent => {
                    let letter = DeadLetter {
                        source,
                        key: None,
                        payload: line_bytes(body, index),
                        reason_code: &code,
                        reason: &message,
                    };
                    let status = match dead_letter(&context.producer, &context.topics.dlq, letter, timeout).await {
                        Ok(()) => "dead_lettered",
                        Err(_) => "failed",
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
            }
        }
    });
    join_all(sends).await
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
    for run in sorted.chunk_by(|a, b| b - a <= 1) {
        updates.push(SourceUpdate::Received { epoch: agent.epoch.clone(), first: run[0], last: run[run.len() - 1] });
    }
    if let Some(head) = agent.head {
        let oldest_pending_at = agent.oldest_pending_at;
        updates.push(SourceUpdate::Heartbeat { epoch: agent.epoch.clone(), head, oldest_pending_at });
    }
    for update in &updates {
        context.store.update_source(&source, update, Utc::now()).await.map_err(|e| {
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
    Path(store): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let store = LocationId::parse(store).map_err(|e| ApiError::InvalidLocation(e.message))?;
    let beat: Heartbeat = serde_json::from_slice(&body).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let update =
        SourceUpdate::Heartbeat { epoch: beat.epoch, head: beat.head_seq, oldest_pending_at: beat.oldest_pending_at };
    state.context.store.update_source(&format!("pos:{store}"), &update, Utc::now()).await.map_err(|e| {
        warn!(error = %e, "heartbeat not recorded");
        ApiError::Unavailable("the database")
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// The brief's stock report: counts at the store, products and store names created when
/// new, and each record answered with the alert when low. A report with any bad record
/// records nothing.
async fn stock_report(State(state): State<PosState>, body: Bytes) -> Result<Response, ApiError> {
    let (reports, array) = mapping::read_reports(&body).map_err(ApiError::InvalidRequest)?;
    let now = Utc::now();
    let mut movements = Vec::with_capacity(reports.len());
    for (i, report) in reports.iter().enumerate() {
        let bad = |message: String| ApiError::InvalidRequest(format!("record {i}: {message}"));
        let location =
            mapping::report_location(&state.config.store_location_format, report).map_err(|e| bad(e.message))?;
        let line = mapping::report_line(report, &format!("report-{}", uuid::Uuid::new_v4().simple()), now);
        let movement = mapping::to_movement(&location, &line, SourceSystem::Pos, now).map_err(|e| bad(e.message))?;
        movements.push((location, movement));
    }
    name_what_is_new(&state, &reports, &movements).await?;
    let timeout = Duration::from_millis(state.context.config.kafka.produce_timeout_ms);
    for (_, m) in &movements {
        let payload = m.to_json();
        let record = FutureRecord::to(&state.context.topics.movements).key(m.kafka_key()).payload(&payload);
        state.context.producer.send(record, timeout).await.map_err(|(e, _)| {
            warn!(error = %e, "stock report not acknowledged by kafka");
            ApiError::Unavailable("kafka")
        })?;
    }
    let mut answers = Vec::with_capacity(reports.len());
    for (report, (location, m)) in reports.iter().zip(&movements) {
        let reorder_point = reorder_point(&state, &m.sku, location).await;
        answers.push(mapping::answer_report(report, reorder_point));
    }
    let body = if array { json!(answers) } else { answers.into_iter().next().unwrap_or_default() };
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// Creates the products and names the stores a report mentions for the first time.
async fn name_what_is_new(
    state: &PosState,
    reports: &[mapping::StockReport],
    movements: &[(LocationId, Movement)],
) -> Result<(), ApiError> {
    let unavailable = |e: onhand_core::store::StoreError| {
        warn!(error = %e, "catalog not updated from a stock report");
        ApiError::Unavailable("the database")
    };
    let names: Vec<(LocationId, String)> =
        reports.iter().zip(movements).map(|(r, (location, _))| (location.clone(), r.nome_loja.clone())).collect();
    state.context.store.name_locations(&names).await.map_err(unavailable)?;
    let mut new = Vec::new();
    for (report, (_, m)) in reports.iter().zip(movements) {
        if state.context.store.product(&m.sku).await.map_err(unavailable)?.is_none() {
            let input =
                ProductInput { name: report.nome_produto.clone(), category: None, attributes: Default::default() };
            new.push(Product::parse(m.sku.clone(), input).map_err(ApiError::InvalidRequest)?);
        }
    }
    if !new.is_empty() {
        state.context.store.put_products(&new).await.map_err(unavailable)?;
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
