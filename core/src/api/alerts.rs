//! Alerts and their webhook subscriptions: `GET /v1/alerts`, `GET /v1/alerts/{id}` and
//! `POST /v1/alerts/{id}/ack` (scope `stock:read`: whoever may see an alert may say it was
//! seen), `POST/GET /v1/subscriptions`, `DELETE /v1/subscriptions/{id}` and
//! `GET /v1/subscriptions/{id}/deliveries` (scope `admin`). A subscription's secret is
//! answered once, when it is created, and never again. A subscription names a channel to
//! get that channel's order events instead of alerts, by the same deliveries.

use std::sync::Arc;

use axum::{
    extract::{rejection::QueryRejection, Path, Query, State},
    http::StatusCode,
    Extension, Json,
};
use chrono::{DateTime, Utc};
use rand::{distr::Alphanumeric, Rng};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{
    auth::Principal,
    error::{ApiError, ErrorBody},
    extract::SmallBody,
    params::{parse_limit, parse_time, Params},
    state::ApiState,
};
use crate::{
    db::{Acknowledged, AlertQuery, DbError, Delivery, Subscription},
    event::{
        alert::{Alert, AlertKind, AlertState},
        LocationId,
    },
};

/// The page size of `GET /v1/alerts` when `limit` is not given, and its largest.
const LIMIT_DEFAULT: i64 = 100;
const LIMIT_MAX: i64 = 1000;
/// The deliveries `GET /v1/subscriptions/{id}/deliveries` answers at most.
const DELIVERIES_MAX: i64 = 500;
/// The longest webhook URL accepted.
const URL_LEN_MAX: usize = 2048;
/// The most locations one subscription names.
const LOCATIONS_MAX: usize = 1000;
/// A secret's length bounds, and the length of one generated.
const SECRET_LEN_MIN: usize = 16;
const SECRET_LEN_MAX: usize = 256;
const SECRET_LEN_GENERATED: usize = 40;

/// Alerts, oldest change first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct AlertsPage {
    alerts: Vec<Alert>,
}

#[utoipa::path(
    get, path = "/v1/alerts", operation_id = "listAlerts", tag = "alerts", security(("api_key" = ["stock:read"])),
    summary = "Alerts, by the time they last changed, oldest first",
    params(
        ("location" = Option<String>, Query, description = "only this location's alerts"),
        ("kind" = Option<AlertKind>, Query, description = "only this kind"),
        ("state" = Option<AlertState>, Query, description = "only in this state"),
        ("since" = Option<DateTime<Utc>>, Query, description = "changed at or after (RFC 3339): poll with the last `changed_at` seen"),
        ("limit" = Option<i64>, Query, description = "1 to 1000, default 100"),
    ),
    responses(
        (status = 200, body = AlertsPage),
        (status = 422, description = "`invalid_parameter` (the message names it)", body = ErrorBody),
        (status = 503, description = "`unavailable`", body = ErrorBody),
    )
)]
pub(super) async fn list(
    State(state): State<ApiState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<AlertsPage>, ApiError> {
    let params = Params::new(query, &["location", "kind", "state", "since", "limit"])?;
    let query = AlertQuery {
        location: params.parse("location", |v| LocationId::parse(v).map_err(|e| e.message))?,
        kind: params.parse("kind", parse_kind)?,
        state: params.parse("state", parse_state)?,
        since: params.parse("since", parse_time)?,
        limit: params.parse("limit", |v| parse_limit(v, LIMIT_MAX))?.unwrap_or(LIMIT_DEFAULT),
    };
    let alerts = state.alerts.alerts(&query).await.map_err(unavailable)?;
    Ok(Json(AlertsPage { alerts }))
}

#[utoipa::path(
    get, path = "/v1/alerts/{id}", operation_id = "getAlert", tag = "alerts", security(("api_key" = ["stock:read"])),
    summary = "One alert as it stands",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = Alert),
        (status = 404, description = "`alert_not_found`", body = ErrorBody),
        (status = 503, description = "`unavailable`", body = ErrorBody),
    )
)]
pub(super) async fn get(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<Alert>, ApiError> {
    let id = alert_id(id)?;
    let alert = state.alerts.alert(&id).await.map_err(unavailable)?;
    alert.map(Json).ok_or(ApiError::AlertNotFound(id))
}

#[utoipa::path(
    post, path = "/v1/alerts/{id}/ack", operation_id = "acknowledgeAlert", tag = "alerts",
    security(("api_key" = ["stock:read"])),
    summary = "Mark an open alert seen; acknowledging it again changes nothing",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "acknowledged, now or before", body = Alert),
        (status = 404, description = "`alert_not_found`", body = ErrorBody),
        (status = 409, description = "`alert_resolved`: it resolved before it was acknowledged", body = ErrorBody),
        (status = 503, description = "`unavailable`", body = ErrorBody),
    )
)]
pub(super) async fn acknowledge(
    State(state): State<ApiState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> Result<Json<Alert>, ApiError> {
    let id = alert_id(id)?;
    match state.alerts.acknowledge_alert(&id, &principal.key_id, Utc::now()).await.map_err(unavailable)? {
        Acknowledged::Done(alert) | Acknowledged::Already(alert) => Ok(Json(alert)),
        Acknowledged::Resolved(alert) => Err(ApiError::AlertResolved(format!(
            "alert {id} resolved at {} and needs no acknowledgement",
            alert.resolved_at.unwrap_or(alert.changed_at).to_rfc3339()
        ))),
        Acknowledged::NotFound => Err(ApiError::AlertNotFound(id)),
    }
}

/// A new subscription, as `POST /v1/subscriptions` takes it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SubscriptionInput {
    /// Where each alert event is `POST`ed: `https://` (or `http://`).
    url: String,
    /// The locations whose alerts it wants; absent: every location and the sources' alerts.
    #[serde(default)]
    locations: Option<Vec<String>>,
    /// The kinds it wants; absent: every kind.
    #[serde(default)]
    kinds: Option<Vec<AlertKind>>,
    /// A sales channel (a `[channels.NAME]` of the configuration): the subscription gets
    /// that channel's order events (`onhand.order.v1`: each status change of its orders;
    /// `onhand.back-in-stock.v1`) instead of alerts, and names no locations or kinds.
    #[serde(default)]
    channel: Option<String>,
    /// Signs every delivery (16 to 256 characters); absent: one is made and answered once.
    #[serde(default)]
    secret: Option<String>,
}

/// A subscription as answered: its secret only in the answer that created it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct SubscriptionBody {
    id: String,
    url: String,
    locations: Option<Vec<String>>,
    kinds: Option<Vec<AlertKind>>,
    /// The channel whose order events it gets, for a subscription to orders.
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    created_at: DateTime<Utc>,
    /// The API key that created it.
    created_by: String,
}

impl SubscriptionBody {
    fn of(s: Subscription, with_secret: bool) -> Self {
        SubscriptionBody {
            id: s.id,
            url: s.url,
            locations: s.locations.map(|l| l.iter().map(|l| l.to_string()).collect()),
            kinds: s.kinds,
            channel: s.channel,
            secret: with_secret.then_some(s.secret),
            created_at: s.created_at,
            created_by: s.created_by,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct SubscriptionsPage {
    subscriptions: Vec<SubscriptionBody>,
}

#[utoipa::path(
    post, path = "/v1/subscriptions", operation_id = "createSubscription", tag = "alerts",
    security(("api_key" = ["admin"])),
    summary = "Subscribe a webhook to alerts, or to a channel's order events; the answer carries its secret, the only time it is shown",
    request_body = SubscriptionInput,
    responses(
        (status = 201, body = SubscriptionBody),
        (status = 422, description = "`invalid_subscription`", body = ErrorBody),
        (status = 503, description = "`unavailable`", body = ErrorBody),
    )
)]
pub(super) async fn subscribe(
    State(state): State<ApiState>,
    Extension(principal): Extension<Arc<Principal>>,
    SmallBody(body): SmallBody,
) -> Result<(StatusCode, Json<SubscriptionBody>), ApiError> {
    let input: SubscriptionInput =
        serde_json::from_slice(&body).map_err(|e| ApiError::InvalidSubscription(e.to_string()))?;
    if let Some(channel) = input.channel.as_ref().filter(|c| !state.channels.contains_key(c.as_str())) {
        return Err(ApiError::InvalidSubscription(format!("channel {channel:?} is not a configured channel")));
    }
    let subscription = subscription(input, &principal.key_id).map_err(ApiError::InvalidSubscription)?;
    state.alerts.create_subscription(&subscription).await.map_err(unavailable)?;
    Ok((StatusCode::CREATED, Json(SubscriptionBody::of(subscription, true))))
}

#[utoipa::path(
    get, path = "/v1/subscriptions", operation_id = "listSubscriptions", tag = "alerts",
    security(("api_key" = ["admin"])),
    summary = "Every webhook subscription, oldest first, without secrets",
    responses((status = 200, body = SubscriptionsPage), (status = 503, description = "`unavailable`", body = ErrorBody))
)]
pub(super) async fn subscriptions(State(state): State<ApiState>) -> Result<Json<SubscriptionsPage>, ApiError> {
    let all = state.alerts.subscriptions().await.map_err(unavailable)?;
    Ok(Json(SubscriptionsPage { subscriptions: all.into_iter().map(|s| SubscriptionBody::of(s, false)).collect() }))
}

#[utoipa::path(
    delete, path = "/v1/subscriptions/{id}", operation_id = "deleteSubscription", tag = "alerts",
    security(("api_key" = ["admin"])),
    summary = "Stop a subscription; its pending deliveries and log go with it",
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "`subscription_not_found`", body = ErrorBody),
        (status = 503, description = "`unavailable`", body = ErrorBody),
    )
)]
pub(super) async fn unsubscribe(State(state): State<ApiState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let id = subscription_id(id)?;
    match state.alerts.delete_subscription(&id).await.map_err(unavailable)? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::SubscriptionNotFound(id)),
    }
}

/// One delivery of an alert event to a subscription.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct DeliveryBody {
    /// The alert event delivered (`Onhand-Event-Id`).
    event_id: String,
    /// `pending`, `delivered`, or `dead` once its tries ran out.
    state: String,
    attempts: i32,
    /// When it is tried next, while pending.
    next_at: Option<DateTime<Utc>>,
    /// The HTTP status of the last try, if it was answered.
    last_status: Option<i32>,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
}

impl From<Delivery> for DeliveryBody {
    fn from(d: Delivery) -> Self {
        let pending = d.state == crate::db::DeliveryState::Pending;
        DeliveryBody {
            event_id: d.event_id,
            state: d.state.as_str().to_string(),
            attempts: d.attempts,
            next_at: pending.then_some(d.next_at),
            last_status: d.last_status,
            last_error: d.last_error,
            created_at: d.created_at,
            delivered_at: d.delivered_at,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct DeliveriesPage {
    deliveries: Vec<DeliveryBody>,
}

#[utoipa::path(
    get, path = "/v1/subscriptions/{id}/deliveries", operation_id = "listDeliveries", tag = "alerts",
    security(("api_key" = ["admin"])),
    summary = "A subscription's delivery log, newest first",
    params(("id" = String, Path), ("limit" = Option<i64>, Query, description = "1 to 500, default 100")),
    responses(
        (status = 200, body = DeliveriesPage),
        (status = 404, description = "`subscription_not_found`", body = ErrorBody),
        (status = 422, description = "`invalid_parameter`", body = ErrorBody),
        (status = 503, description = "`unavailable`", body = ErrorBody),
    )
)]
pub(super) async fn deliveries(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<DeliveriesPage>, ApiError> {
    let id = subscription_id(id)?;
    let params = Params::new(query, &["limit"])?;
    let limit = params.parse("limit", |v| parse_limit(v, DELIVERIES_MAX))?.unwrap_or(LIMIT_DEFAULT);
    let log = state.alerts.deliveries(&id, limit).await.map_err(unavailable)?;
    let log = log.ok_or(ApiError::SubscriptionNotFound(id))?;
    Ok(Json(DeliveriesPage { deliveries: log.into_iter().map(DeliveryBody::from).collect() }))
}

/// A new subscription from what was sent, every field checked.
fn subscription(input: SubscriptionInput, by: &str) -> Result<Subscription, String> {
    let url = reqwest::Url::parse(&input.url).map_err(|e| format!("url {:?} is not a URL: {e}", input.url))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(format!("url {:?} must be an http:// or https:// URL with a host", input.url));
    }
    if input.url.len() > URL_LEN_MAX {
        return Err(format!("url is longer than {URL_LEN_MAX} bytes"));
    }
    if input.channel.is_some() && (input.locations.is_some() || input.kinds.is_some()) {
        return Err("a subscription to a channel's orders names no locations or kinds".into());
    }
    let locations = match input.locations {
        None => None,
        Some(names) if names.is_empty() || names.len() > LOCATIONS_MAX => {
            return Err(format!("locations must list 1 to {LOCATIONS_MAX} locations, or be left out for all"))
        }
        Some(names) => Some(
            names
                .into_iter()
                .map(|name| LocationId::parse(name).map_err(|e| format!("locations: {}", e.message)))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let kinds = match input.kinds {
        Some(kinds) if kinds.is_empty() => return Err("kinds must list at least one kind, or be left out".into()),
        kinds => kinds,
    };
    let secret = match input.secret {
        Some(secret) => {
            let len = secret.chars().count();
            if !(SECRET_LEN_MIN..=SECRET_LEN_MAX).contains(&len) || secret.chars().any(char::is_control) {
                return Err(format!("secret must be {SECRET_LEN_MIN} to {SECRET_LEN_MAX} visible characters"));
            }
            secret
        }
        None => format!("whsec_{}", random(SECRET_LEN_GENERATED)),
    };
    Ok(Subscription {
        id: format!("sub_{}", random(16).to_lowercase()),
        url: url.to_string(),
        locations,
        kinds,
        channel: input.channel,
        secret,
        created_at: Utc::now(),
        created_by: by.to_string(),
    })
}

fn random(len: usize) -> String {
    rand::rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

/// An alert id as onhand makes them (`alr_` and 24 hex digits); anything else is none.
fn alert_id(id: String) -> Result<String, ApiError> {
    let well_formed =
        id.strip_prefix("alr_").is_some_and(|hex| hex.len() == 24 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if well_formed {
        Ok(id)
    } else {
        Err(ApiError::AlertNotFound(id.chars().take(64).collect()))
    }
}

/// A subscription id as onhand makes them (`sub_` and 16 letters or digits).
fn subscription_id(id: String) -> Result<String, ApiError> {
    let well_formed =
        id.strip_prefix("sub_").is_some_and(|rest| rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_alphanumeric()));
    if well_formed {
        Ok(id)
    } else {
        Err(ApiError::SubscriptionNotFound(id.chars().take(64).collect()))
    }
}

fn parse_kind(text: &str) -> Result<AlertKind, String> {
    AlertKind::parse(text).ok_or_else(|| {
        let kinds: Vec<_> = AlertKind::ALL.iter().map(|k| k.as_str()).collect();
        format!("{text:?} is not an alert kind: one of {}", kinds.join(", "))
    })
}

fn parse_state(text: &str) -> Result<AlertState, String> {
    AlertState::parse(text).ok_or_else(|| format!("{text:?} is not an alert state: open, acknowledged or resolved"))
}

fn unavailable(e: DbError) -> ApiError {
    warn!(error = %e, "alerts read or write failed");
    ApiError::Unavailable("the database")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(url: &str) -> SubscriptionInput {
        SubscriptionInput { url: url.into(), locations: None, kinds: None, channel: None, secret: None }
    }

    #[test]
    fn a_subscription_is_checked_field_by_field() {
        let made = subscription(input("https://hooks.example.com/onhand"), "key1").unwrap();
        assert!(made.id.starts_with("sub_") && subscription_id(made.id.clone()).is_ok());
        assert!(made.secret.starts_with("whsec_") && made.secret.len() > SECRET_LEN_MIN);
        for bad in ["", "hooks.example.com", "ftp://example.com/x", "file:///etc/passwd", "http://"] {
            assert!(subscription(input(bad), "k").is_err(), "{bad:?}");
        }
        let long = format!("https://example.com/{}", "a".repeat(URL_LEN_MAX));
        assert!(subscription(input(&long), "k").unwrap_err().contains("longer"));
        let no_locations = SubscriptionInput { locations: Some(vec![]), ..input("https://x.example") };
        assert!(subscription(no_locations, "k").is_err());
        let bad_location = SubscriptionInput { locations: Some(vec!["store 1".into()]), ..input("https://x.example") };
        assert!(subscription(bad_location, "k").unwrap_err().starts_with("locations"));
        let no_kinds = SubscriptionInput { kinds: Some(vec![]), ..input("https://x.example") };
        assert!(subscription(no_kinds, "k").is_err());
        let short = SubscriptionInput { secret: Some("short".into()), ..input("https://x.example") };
        assert!(subscription(short, "k").unwrap_err().contains("secret"));
    }

    #[test]
    fn ids_onhand_did_not_make_are_not_looked_up() {
        assert!(alert_id(format!("alr_{}", "a1".repeat(12))).is_ok());
        for bad in ["", "alr_", "alr_xyz", &format!("alr_{}", "a".repeat(25)), &"x".repeat(10_000)] {
            assert!(matches!(alert_id(bad.to_string()), Err(ApiError::AlertNotFound(id)) if id.len() <= 64));
        }
        assert!(subscription_id("sub_../../etc".into()).is_err());
    }
}
