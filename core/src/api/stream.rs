//! The live stream over HTTP (`docs/stream.md`): `GET /v1/stream` as Server-Sent Events,
//! `GET /v1/ws` as a WebSocket, and `GET /v1/stream/stats`, the flow the hub saw.
//!
//! Both streams take the same filters (`sku`, `location`, `kind`: lists separated by
//! commas) and resume after an event id (`Last-Event-ID`, or `last_event_id`). The
//! WebSocket also takes its key as its first message, `{"auth": "onh_..."}`, within
//! [`AUTH_WAIT`]: browsers cannot set headers on a WebSocket.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use axum::{
    body::Body,
    body::Bytes,
    extract::{
        rejection::QueryRejection,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
        ConnectInfo, Query, State,
    },
    http::{
        header::{CACHE_CONTROL, CONTENT_TYPE},
        HeaderMap, HeaderName,
    },
    response::{IntoResponse, Response},
    Extension, Json,
};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;

use super::{
    error::{ApiError, ErrorBody},
    params::Params,
    state::ApiState,
};
use crate::{
    auth::Scope,
    event::{LocationId, Sku},
    stream::{Filter, FlowStats, Kind, Next, Saturated, StreamEvent, Subscription},
};

/// How long a WebSocket without an `Authorization` header has to send its key.
pub const AUTH_WAIT: Duration = Duration::from_secs(5);
/// How often an idle stream sends a keep-alive (an SSE comment, a WebSocket ping).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The most values one filter takes.
const FILTER_VALUES_MAX: usize = 100;
/// The largest message a WebSocket client may send (its key, nothing else is read).
const WS_MESSAGE_BYTES_MAX: usize = 4_096;

/// The query of both streams.
const PARAMETERS: [&str; 4] = ["sku", "location", "kind", "last_event_id"];

/// What a client asked: its filter and where it resumes.
struct Asked {
    filter: Filter,
    last_event_id: Option<String>,
}

impl Asked {
    fn read(
        headers: &HeaderMap,
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    ) -> Result<Asked, ApiError> {
        let params = Params::new(query, &PARAMETERS)?;
        let list = |name: &'static str, check: fn(&str) -> Result<String, String>| {
            params.parse(name, |text| {
                let values: Vec<&str> = text.split(',').map(str::trim).filter(|v| !v.is_empty()).collect();
                if values.len() > FILTER_VALUES_MAX {
                    return Err(format!("at most {FILTER_VALUES_MAX} values"));
                }
                values.into_iter().map(check).collect::<Result<std::collections::BTreeSet<String>, String>>()
            })
        };
        let skus = list("sku", |v| Sku::parse(v).map(|s| s.to_string()).map_err(|e| e.message))?;
        let locations = list("location", |v| LocationId::parse(v).map(|l| l.to_string()).map_err(|e| e.message))?;
        let kinds = params.parse("kind", |text| {
            text.split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| {
                    Kind::parse(v).ok_or_else(|| format!("{v:?} is not a kind: expected level, alert, source or order"))
                })
                .collect::<Result<std::collections::BTreeSet<Kind>, String>>()
        })?;
        // The header wins; one that is not text is an id the hub does not know.
        let header = headers.get("last-event-id").map(|v| v.to_str().unwrap_or_default().to_string());
        let last_event_id = header.or(params.parse("last_event_id", |v| Ok(v.to_string()))?);
        let filter = Filter {
            skus: skus.unwrap_or_default(),
            locations: locations.unwrap_or_default(),
            kinds: kinds.unwrap_or_default(),
        };
        Ok(Asked { filter, last_event_id })
    }

    fn subscribe(self, state: &ApiState) -> Result<Subscription, ApiError> {
        state
            .stream
            .subscribe(self.last_event_id.as_deref(), self.filter)
            .map_err(|Saturated(max)| ApiError::TooManyStreamClients(max))
    }
}

/// The body of a `reset` event.
fn reset_data(reason: &str) -> String {
    json!({ "reason": reason, "message": "reload the state, then read on from this event" }).to_string()
}

fn slow_consumer_data() -> String {
    json!({ "reason": "slow_consumer", "message": "more events waited for this client than it may have; \
            reload the state and reconnect" })
    .to_string()
}

#[utoipa::path(
    get, path = "/v1/stream", operation_id = "stream", tag = "stream", security(("api_key" = ["stock:read"])),
    summary = "Levels, alerts and sources' health as they change (Server-Sent Events)",
    description = "Each event has `id: {epoch}-{seq}`, `event:` its kind (`level`, `alert`, `source`, `order`) and `data:` its \
                   JSON. Reconnect with `Last-Event-ID` to get what was missed; an id this instance cannot resume \
                   from gets a `reset` event first. A client too far behind gets `slow_consumer` and is \
                   disconnected. docs/stream.md has the details.",
    params(
        ("sku" = Option<String>, Query, description = "only these SKUs, separated by commas"),
        ("location" = Option<String>, Query, description = "only these locations, separated by commas"),
        ("kind" = Option<String>, Query, description = "only these kinds: `level`, `alert`, `source`, `order`"),
        ("last_event_id" = Option<String>, Query, description = "resume after this id (the `Last-Event-ID` header wins)"),
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this id"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`", content_type = "text/event-stream"),
        (status = 422, description = "`invalid_parameter`: a filter that cannot be read", body = ErrorBody),
        (status = 503, description = "`too_many_stream_clients`", body = ErrorBody),
    )
)]
pub(super) async fn stream(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let subscription = Asked::read(&headers, query)?.subscribe(&state)?;
    let headers = [
        (CONTENT_TYPE, "text/event-stream"),
        (CACHE_CONTROL, "no-cache"),
        // Proxies that buffer answers (nginx) would hold the events back.
        (HeaderName::from_static("x-accel-buffering"), "no"),
    ];
    Ok((headers, Body::from_stream(sse_events(subscription))).into_response())
}

/// One Server-Sent Event. The data is JSON on one line, the id and name need no escaping.
fn sse_frame(id: Option<&str>, name: &str, data: &str) -> Bytes {
    let id = id.map(|id| format!("id: {id}\n")).unwrap_or_default();
    Bytes::from(format!("{id}event: {name}\ndata: {data}\n\n"))
}

fn sse_event(event: &StreamEvent) -> Bytes {
    event.rendered(|e| sse_frame(Some(&e.id), e.kind.as_str(), &e.data))
}

/// The most bytes of events ready at once that go out in one write.
const SSE_WRITE_BYTES_MAX: usize = 64 * 1024;

/// The client's events: a `reset` when it asked for one the hub cannot resume from, then
/// what it missed and live, until it is a slow consumer (a last `slow_consumer` event) or
/// the server stops. The events ready at once go out together, each rendered once for
/// every client (axum's `Sse` would render and write each one for each client); an idle
/// stream gets a comment every [`KEEP_ALIVE`].
fn sse_events(subscription: Subscription) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let reset = subscription
        .reset
        .map(|reset| Ok(sse_frame(Some(&subscription.newest_id), "reset", &reset_data(reset.as_str()))));
    let live = futures::stream::unfold(Some(subscription), |subscription| async move {
        let mut subscription = subscription?;
        let first = tokio::select! {
            next = subscription.next() => next,
            _ = tokio::time::sleep(KEEP_ALIVE) => {
                return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), Some(subscription)));
            }
        };
        let mut write: Vec<u8> = Vec::new();
        let mut next = Some(first);
        while let Some(step) = next.take() {
            match step {
                Next::Event(event) => {
                    subscription.sent(&event);
                    write.extend_from_slice(&sse_event(&event));
                }
                Next::SlowConsumer => {
                    write.extend_from_slice(&sse_frame(None, "slow_consumer", &slow_consumer_data()));
                    return Some((Ok(Bytes::from(write)), None));
                }
                Next::Closed if write.is_empty() => return None,
                Next::Closed => return Some((Ok(Bytes::from(write)), None)),
            }
            if write.len() < SSE_WRITE_BYTES_MAX {
                next = subscription.try_next();
            }
        }
        Some((Ok(Bytes::from(write)), Some(subscription)))
    });
    futures::stream::iter(reset).chain(live)
}

#[utoipa::path(
    get, path = "/v1/ws", operation_id = "streamWebSocket", tag = "stream", security(("api_key" = ["stock:read"])),
    summary = "The live stream over a WebSocket",
    description = "The key goes in `Authorization`, or, from a browser, as the first text message \
                   `{\"auth\": \"onh_...\"}` within 5 s. Each message is `{\"id\", \"event\", \"data\"}` as \
                   `GET /v1/stream` has them. The socket is closed with code 1008 and the error code as reason \
                   for a missing or bad key, 1013 `slow_consumer` for a client too far behind, 1001 at shutdown.",
    params(
        ("sku" = Option<String>, Query, description = "only these SKUs, separated by commas"),
        ("location" = Option<String>, Query, description = "only these locations, separated by commas"),
        ("kind" = Option<String>, Query, description = "only these kinds: `level`, `alert`, `source`, `order`"),
        ("last_event_id" = Option<String>, Query, description = "resume after this id"),
    ),
    responses(
        (status = 101, description = "the WebSocket"),
        (status = 401, description = "`missing_api_key`, `invalid_api_key` (a bad `Authorization` header)", body = ErrorBody),
        (status = 422, description = "`invalid_parameter`", body = ErrorBody),
        (status = 503, description = "`too_many_stream_clients`", body = ErrorBody),
    )
)]
pub(super) async fn ws(
    State(state): State<ApiState>,
    connected: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let client = connected.map(|Extension(ConnectInfo(addr))| addr.ip());
    let asked = Asked::read(&headers, query)?;
    let upgrade = upgrade.max_message_size(WS_MESSAGE_BYTES_MAX).max_frame_size(WS_MESSAGE_BYTES_MAX);
    if headers.contains_key(axum::http::header::AUTHORIZATION) {
        admitted(&state, state.auth.admit(&headers, client, Scope::StockRead).await)?;
        let subscription = asked.subscribe(&state)?;
        return Ok(upgrade.on_upgrade(move |socket| serve_socket(socket, subscription)));
    }
    // The place is taken before the key is read, so that sockets waiting for their key
    // are counted among the clients too; the events published meanwhile wait in the
    // channel like any client's.
    let subscription = asked.subscribe(&state)?;
    Ok(upgrade.on_upgrade(move |socket| authenticate_then_serve(socket, state, subscription, client)))
}

/// Counts a refused key as the routes' middleware does.
fn admitted<T>(state: &ApiState, result: Result<T, ApiError>) -> Result<T, ApiError> {
    if let Err(e) = &result {
        state.metrics.api_requests_refused_total.with_label_values(&[e.code()]).inc();
    }
    result
}

#[derive(Deserialize)]
struct AuthMessage {
    auth: String,
}

async fn authenticate_then_serve(
    mut socket: WebSocket,
    state: ApiState,
    subscription: Subscription,
    client: Option<std::net::IpAddr>,
) {
    let key = match tokio::time::timeout(AUTH_WAIT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<AuthMessage>(text.as_str()).ok(),
        _ => None,
    };
    let Some(AuthMessage { auth }) = key else {
        let refused = admitted(&state, Err::<(), _>(ApiError::MissingApiKey));
        return close(socket, 1008, refused.err().map_or("missing_api_key", |e| e.code())).await;
    };
    match admitted(&state, state.auth.admit_key(&auth, client, Scope::StockRead).await) {
        Ok(_) => serve_socket(socket, subscription).await,
        Err(e) => close(socket, 1008, e.code()).await,
    }
}

async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame { code, reason: reason.into() };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// One WebSocket message: the event as `GET /v1/stream` has it. The id and kind need no
/// escaping; the data is JSON already.
fn ws_text(id: &str, kind: &str, data: &str) -> String {
    format!(r#"{{"id":"{id}","event":"{kind}","data":{data}}}"#)
}

/// Sends the client its events until it goes, falls behind or the server stops. What the
/// client sends is not read beyond pings and its close (tungstenite answers pings).
async fn serve_socket(mut socket: WebSocket, mut subscription: Subscription) {
    if let Some(reset) = subscription.reset {
        let text = ws_text(&subscription.newest_id, "reset", &reset_data(reset.as_str()));
        if socket.send(Message::Text(text.into())).await.is_err() {
            return;
        }
    }
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.tick().await;
    loop {
        tokio::select! {
            next = subscription.next() => match next {
                Next::Event(event) => {
                    let text = ws_text(&event.id, event.kind.as_str(), &event.data);
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                    subscription.sent(&event);
                }
                Next::SlowConsumer => return close(socket, 1013, "slow_consumer").await,
                Next::Closed => return close(socket, 1001, "shutdown").await,
            },
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
            _ = keep_alive.tick() => {
                if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// `GET /v1/stream/stats`'s query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatsQuery {
    window_s: Option<usize>,
}

#[utoipa::path(
    get, path = "/v1/stream/stats", operation_id = "streamStats", tag = "stream", security(("api_key" = ["stock:read"])),
    summary = "Level and alert changes per second that this instance's stream saw (the dashboard's chart)",
    params(("window_s" = Option<usize>, Query, description = "1 to 3600 seconds, default 120")),
    responses((status = 200, body = FlowStats), (status = 422, description = "`invalid_parameter`", body = ErrorBody))
)]
pub(super) async fn stats(
    State(state): State<ApiState>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<FlowStats>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidParameter { name: "window_s", message: e.body_text() })?;
    let window_s = query.window_s.unwrap_or(120);
    if !(1..=3_600).contains(&window_s) {
        return Err(ApiError::InvalidParameter { name: "window_s", message: "must be 1 to 3600".into() });
    }
    Ok(Json(state.stream.flow_stats(window_s)))
}
