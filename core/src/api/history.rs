//! The audit trail and a level over time: `GET /v1/movements` (who moved what, when, from
//! which system, newest recorded first, paged by an opaque keyset cursor) and
//! `GET /v1/stock/{sku}/{location}/history` (on_hand at the end of each step, for
//! charts, from the movements under the ledger's rules: `crate::history`).

use std::collections::BTreeMap;

use axum::{
    extract::{rejection::QueryRejection, Path, Query, State},
    Json,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{
    error::{ApiError, ErrorBody},
    state::ApiState,
    stock,
};
use crate::{
    db::{DbError, MovementKey, MovementQuery, RecordedMovement},
    event::{EventId, LocationId, MovementKind, Sku, Source, SourceSystem},
    history::{chart, Window, WindowError},
};

/// The page size of `GET /v1/movements` when `limit` is not given, and its largest.
const LIMIT_DEFAULT: i64 = 100;
const LIMIT_MAX: i64 = 1000;
/// The most movements one history folds: a level rarely has as many in a chart's window,
/// and a request cannot make the server read more.
const HISTORY_MOVEMENTS_MAX: i64 = 100_000;
/// The window of a history when `since` is not given, and its step when `step` is not.
const WINDOW_DEFAULT: Duration = Duration::days(1);
const STEP_DEFAULT: Duration = Duration::hours(1);
/// The longest step accepted: a year.
const STEP_DAYS_MAX: i64 = 366;
/// The longest `source.instance`, as events have it.
const INSTANCE_LEN_MAX: usize = 64;

/// One recorded movement.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct MovementItem {
    event_id: String,
    sku: String,
    location: String,
    kind: MovementKind,
    quantity: i64,
    /// The signed change to on_hand; null for a count, which sets it.
    delta: Option<i64>,
    /// `applied`, or `superseded` when a count made it irrelevant (docs/consistency.md).
    effect: &'static str,
    occurred_at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
    /// When the ledger recorded it.
    applied_at: DateTime<Utc>,
    source: Source,
    actor: Option<String>,
    reason: Option<String>,
    correlation_id: Option<String>,
    attributes: BTreeMap<String, String>,
}

impl From<RecordedMovement> for MovementItem {
    fn from(r: RecordedMovement) -> Self {
        let m = r.movement;
        MovementItem {
            event_id: m.event_id.to_string(),
            sku: m.sku.to_string(),
            location: m.location.to_string(),
            kind: m.kind,
            quantity: m.quantity,
            delta: r.delta,
            effect: r.effect.as_str(),
            occurred_at: m.occurred_at,
            recorded_at: m.recorded_at,
            applied_at: r.applied_at,
            source: m.source,
            actor: m.actor,
            reason: m.reason,
            correlation_id: m.correlation_id,
            attributes: m.attributes,
        }
    }
}

/// A page of movements, newest recorded first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct MovementsPage {
    movements: Vec<MovementItem>,
    /// Pass as `cursor`, with the same filters, for the next (older) page; null on the
    /// last page. A full last page gives one more cursor, whose page is empty.
    next_cursor: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/movements", operation_id = "listMovements", tag = "movements", security(("api_key" = ["stock:read"])),
    summary = "Recorded movements, newest recorded first: who moved what, when, from which system",
    params(
        ("sku" = Option<String>, Query, description = "only this SKU"),
        ("location" = Option<String>, Query, description = "only this location"),
        ("source" = Option<String>, Query, description = "only this source, `SYSTEM:INSTANCE` (`pos:store-012`, `erp:erp-main`)"),
        ("since" = Option<DateTime<Utc>>, Query, description = "recorded at or after (RFC 3339)"),
        ("until" = Option<DateTime<Utc>>, Query, description = "recorded before (RFC 3339)"),
        ("limit" = Option<i64>, Query, description = "1 to 1000, default 100"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the page before, with the same filters"),
    ),
    responses(
        (status = 200, body = MovementsPage),
        (status = 422, description = "`invalid_parameter` (the message names it), `invalid_cursor`", body = ErrorBody),
        (status = 503, description = "`unavailable`", body = ErrorBody),
    )
)]
pub(super) async fn movements(
    State(state): State<ApiState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<MovementsPage>, ApiError> {
    let params = Params::new(query, &["sku", "location", "source", "since", "until", "limit", "cursor"])?;
    let mut query = MovementQuery {
        sku: params.parse("sku", |v| Sku::parse(v).map_err(|e| e.message))?,
        location: params.parse("location", |v| LocationId::parse(v).map_err(|e| e.message))?,
        source: params.parse("source", parse_source)?,
        since: params.parse("since", parse_time)?,
        until: params.parse("until", parse_time)?,
        after: None,
        limit: params.parse("limit", parse_limit)?.unwrap_or(LIMIT_DEFAULT),
    };
    let fingerprint = fingerprint(&query);
    query.after = params.parse_with("cursor", |v| Cursor::decode(v, &fingerprint), ApiError::InvalidCursor)?;
    let rows = state.history.movements(&query).await.map_err(unavailable)?;
    let next_cursor = match rows.last() {
        Some(last) if rows.len() as i64 == query.limit => Some(Cursor::encode(&last.key(), &fingerprint)),
        _ => None,
    };
    Ok(Json(MovementsPage { movements: rows.into_iter().map(MovementItem::from).collect(), next_cursor }))
}

/// One step of a history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct PointBody {
    /// The end of the step: on_hand holds every movement that occurred before it.
    at: DateTime<Utc>,
    on_hand: i64,
    /// How many movements occurred in the step (superseded ones and reservation events
    /// included).
    movements: u64,
}

/// A level over time.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct HistoryAnswer {
    sku: String,
    location: String,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    step_s: i64,
    /// on_hand just before `since`.
    start_on_hand: i64,
    /// One per step from `since`, the last one cut short at `until`.
    points: Vec<PointBody>,
}

#[utoipa::path(
    get, path = "/v1/stock/{sku}/{location}/history", operation_id = "getStockHistory", tag = "stock",
    security(("api_key" = ["stock:read"])),
    summary = "A level over time, from its movements under the ledger's rules (for charts)",
    params(
        ("sku" = String, Path), ("location" = String, Path),
        ("since" = Option<DateTime<Utc>>, Query, description = "the first step's start, by occurred_at (RFC 3339); default: a day before until"),
        ("until" = Option<DateTime<Utc>>, Query, description = "the last step's end; default: now"),
        ("step" = Option<String>, Query, description = "`30s`, `15m`, `1h`, `1d`...; default `1h`; at most 1000 steps"),
    ),
    responses(
        (status = 200, body = HistoryAnswer),
        (status = 400, description = "`invalid_sku`, `invalid_location`", body = ErrorBody),
        (status = 404, description = "`sku_not_found`, `location_not_found`", body = ErrorBody),
        (status = 422, description = "`invalid_parameter` (the message names it), `too_many_points`, `window_too_large`", body = ErrorBody),
        (status = 503, description = "`unavailable`, `stock_unavailable`", body = ErrorBody),
    )
)]
pub(super) async fn level(
    State(state): State<ApiState>,
    Path((sku, location)): Path<(String, String)>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<HistoryAnswer>, ApiError> {
    let location = LocationId::parse(location).map_err(|e| ApiError::InvalidLocation(e.message))?;
    let params = Params::new(query, &["since", "until", "step"])?;
    let until = params.parse("until", parse_time)?.unwrap_or_else(Utc::now);
    let since = params.parse("since", parse_time)?.unwrap_or(until - WINDOW_DEFAULT);
    let step = params.parse("step", parse_step)?.unwrap_or(STEP_DEFAULT);
    let window = Window::new(since, until, step).map_err(|e| match e {
        WindowError::Empty => ApiError::InvalidParameter { name: "since", message: e.to_string() },
        WindowError::StepTooShort => ApiError::InvalidParameter { name: "step", message: e.to_string() },
        WindowError::TooManyPoints { .. } => ApiError::TooManyPoints(e.to_string()),
    })?;
    let (sku, stock) = stock::read(&state, &sku).await?;
    if !stock.levels().iter().any(|l| l.location == location) {
        return Err(ApiError::LocationNotFound(sku.to_string(), location.to_string()));
    }
    let key = (sku, location);
    let start = state.history.level_start(&key, since).await.map_err(unavailable)?;
    let mut movements =
        state.history.level_movements(&key, since, until, HISTORY_MOVEMENTS_MAX + 1).await.map_err(unavailable)?;
    if movements.len() as i64 > HISTORY_MOVEMENTS_MAX {
        return Err(ApiError::WindowTooLarge(HISTORY_MOVEMENTS_MAX));
    }
    let start_on_hand = start.on_hand();
    let points = chart(&window, &start, &mut movements)
        .into_iter()
        .map(|p| PointBody { at: p.at, on_hand: p.on_hand, movements: p.movements })
        .collect();
    let (sku, location) = key;
    Ok(Json(HistoryAnswer {
        sku: sku.to_string(),
        location: location.to_string(),
        since,
        until,
        step_s: step.num_seconds(),
        start_on_hand,
        points,
    }))
}

fn unavailable(e: DbError) -> ApiError {
    tracing::warn!(error = %e, "history read failed");
    ApiError::Unavailable("the database")
}

/// A request's query parameters: each one known and given once.
pub(super) struct Params(Vec<(String, String)>);

impl Params {
    pub(super) fn new(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        known: &[&'static str],
    ) -> Result<Params, ApiError> {
        let Query(pairs) = query.map_err(|e| ApiError::InvalidParameter { name: "query", message: e.body_text() })?;
        for (i, (name, _)) in pairs.iter().enumerate() {
            let Some(name) = known.iter().find(|known| *known == name) else {
                let message = format!("unknown parameter {name:?}, expected one of {}", known.join(", "));
                return Err(ApiError::InvalidParameter { name: "query", message });
            };
            if pairs[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(ApiError::InvalidParameter { name, message: "is given more than once".into() });
            }
        }
        Ok(Params(pairs))
    }

    /// The parameter `name` read by `read`, whose error names it as `invalid_parameter`.
    pub(super) fn parse<T>(
        &self,
        name: &'static str,
        read: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ApiError> {
        self.parse_with(name, read, |message| ApiError::InvalidParameter { name, message })
    }

    fn parse_with<T>(
        &self,
        name: &str,
        read: impl Fn(&str) -> Result<T, String>,
        refuse: impl Fn(String) -> ApiError,
    ) -> Result<Option<T>, ApiError> {
        let value = self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        value.map(read).transpose().map_err(refuse)
    }
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{text:?} is not an RFC 3339 time ({e}), for example 2026-11-20T09:00:00Z"))
}

fn parse_limit(text: &str) -> Result<i64, String> {
    match text.parse::<i64>() {
        Ok(n) if (1..=LIMIT_MAX).contains(&n) => Ok(n),
        _ => Err(format!("{text:?} is not a number from 1 to {LIMIT_MAX}")),
    }
}

/// `SYSTEM:INSTANCE`, as a movement's `source` has them.
fn parse_source(text: &str) -> Result<(SourceSystem, String), String> {
    let expected = "expected SYSTEM:INSTANCE, SYSTEM one of pos, store-agent, shopify, erp, wms, api";
    let (system, instance) = text.split_once(':').ok_or_else(|| format!("{text:?}: {expected}"))?;
    let system: SourceSystem = serde_json::from_value(serde_json::Value::String(system.to_string()))
        .map_err(|_| format!("{system:?} is not a source system: {expected}"))?;
    if instance.is_empty() || instance.chars().count() > INSTANCE_LEN_MAX || instance.contains('\0') {
        return Err(format!("the instance must be 1 to {INSTANCE_LEN_MAX} characters"));
    }
    Ok((system, instance.to_string()))
}

/// `30s`, `15m`, `1h`, `1d`: a whole number of a unit, at most a year.
fn parse_step(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a step such as 30s, 15m, 1h or 1d, of at most {STEP_DAYS_MAX} days");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().map_err(|_| bad())?;
    let unit_s = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    match number.checked_mul(unit_s) {
        Some(seconds) if seconds <= STEP_DAYS_MAX * 86_400 => Ok(Duration::seconds(seconds)),
        _ => Err(bad()),
    }
}

/// What a cursor belongs to: the filters of its query, so that a cursor used with other
/// filters is refused rather than answering a page of something else.
fn fingerprint(q: &MovementQuery) -> String {
    let time = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_micros().to_string()).unwrap_or_default();
    let source = q.source.as_ref().map(|(system, instance)| format!("{system:?}:{instance}")).unwrap_or_default();
    let filters = format!(
        "sku={}\nlocation={}\nsource={source}\nsince={}\nuntil={}",
        q.sku.as_ref().map_or("", Sku::as_str),
        q.location.as_ref().map_or("", LocationId::as_str),
        time(q.since),
        time(q.until),
    );
    hex::encode(&Sha256::digest(filters.as_bytes())[..8])
}

/// The keyset cursor: base64url of `v1.FINGERPRINT.RECORDED_AT_MICROS.EVENT_ID`, the sort
/// key of the last movement of a page.
struct Cursor;

impl Cursor {
    fn encode(key: &MovementKey, fingerprint: &str) -> String {
        let text = format!("v1.{fingerprint}.{}.{}", key.recorded_at.timestamp_micros(), key.event_id);
        URL_SAFE_NO_PAD.encode(text)
    }

    fn decode(cursor: &str, fingerprint: &str) -> Result<MovementKey, String> {
        let invalid = || "the cursor is not one this api gave: start again without it".to_string();
        let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = text.splitn(4, '.');
        let (Some("v1"), Some(owner), Some(micros), Some(event_id)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        if owner != fingerprint {
            return Err("the cursor belongs to a query with other filters: use it with the same ones".into());
        }
        let recorded_at = micros.parse().ok().and_then(DateTime::from_timestamp_micros).ok_or_else(invalid)?;
        let event_id = EventId::parse(event_id).map_err(|_| invalid())?;
        Ok(MovementKey { recorded_at, event_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query() -> MovementQuery {
        MovementQuery { sku: None, location: None, source: None, since: None, until: None, after: None, limit: 100 }
    }

    #[test]
    fn a_cursor_reads_back_only_with_its_own_filters() {
        let key = MovementKey {
            recorded_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            event_id: EventId::parse("pos:store-1:a.b.c").unwrap(),
        };
        let mine = fingerprint(&query());
        let cursor = Cursor::encode(&key, &mine);
        assert_eq!(Cursor::decode(&cursor, &mine), Ok(key));
        let other = fingerprint(&MovementQuery { sku: Some(Sku::parse("SKU-1").unwrap()), ..query() });
        assert!(Cursor::decode(&cursor, &other).unwrap_err().contains("other filters"));
        for forged in [
            "",
            "!!!",
            &URL_SAFE_NO_PAD.encode("v1.x"),
            &URL_SAFE_NO_PAD.encode(format!("v1.{mine}.99999999999999999999.a")),
        ] {
            assert!(Cursor::decode(forged, &mine).unwrap_err().contains("not one this api gave"), "{forged}");
        }
    }

    #[test]
    fn steps_and_sources_are_read_strictly() {
        assert_eq!(parse_step("15m"), Ok(Duration::minutes(15)));
        assert_eq!(parse_step("1d"), Ok(Duration::days(1)));
        for bad in ["", "h", "1", "1w", "-1h", "1.5h", "99999999999999999999d", "367d", "1h "] {
            assert!(parse_step(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_source("store-agent:store-012"), Ok((SourceSystem::StoreAgent, "store-012".into())));
        assert!(parse_source("store:store-012").is_err());
        assert!(parse_source("erp:").is_err());
        assert!(parse_limit("0").is_err() && parse_limit("1001").is_err() && parse_limit("x").is_err());
    }
}
