//! What the tests of the live stream and the dashboard share: an alert change as the
//! alerts topic carries it, and a reader of `GET /v1/stream`.

use std::time::Duration;

use chrono::Utc;
use onhand_core::event::{
    alert::{Alert, AlertDetails, AlertEvent, AlertKind, AlertState},
    LocationId, Sku,
};
use serde_json::Value;

use super::{authorized, TEST_API_KEY};

/// A `low_stock` alert of `sku@location` in `state`.
pub fn alert_event(id: &str, sku: &str, location: &str, state: AlertState) -> AlertEvent {
    let now = Utc::now();
    AlertEvent::of(Alert {
        id: id.to_string(),
        kind: AlertKind::LowStock,
        state,
        subject: format!("{sku}@{location}"),
        sku: Some(Sku::parse(sku).expect("a valid sku")),
        location: Some(LocationId::parse(location).expect("a valid location")),
        source: None,
        message: format!("{sku} is low at {location}"),
        raised_at: now,
        acknowledged_at: None,
        acknowledged_by: None,
        resolved_at: None,
        changed_at: now,
        details: AlertDetails::default(),
    })
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

/// Reads a `text/event-stream` answer event by event (keep-alive comments skipped).
pub struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    /// The next event, `None` when the stream ended, failing after `seconds` without one.
    pub async fn next(&mut self, seconds: u64) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent { event: "message".into(), ..SseEvent::default() };
                let mut data = String::new();
                for line in block.lines() {
                    match line.split_once(':').map(|(k, v)| (k, v.strip_prefix(' ').unwrap_or(v))) {
                        Some(("id", v)) => event.id = Some(v.to_string()),
                        Some(("event", v)) => event.event = v.to_string(),
                        Some(("data", v)) => data.push_str(v),
                        _ => {}
                    }
                }
                if data.is_empty() && event.id.is_none() {
                    continue; // a comment: keep-alive
                }
                event.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("no event within {seconds}s"));
            match chunk {
                Ok(Some(bytes)) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

/// Opens `GET /v1/stream?QUERY` with `key`, and `Last-Event-ID` when given.
pub async fn open(app: &onhand::app::App, query: &str, key: Option<&str>, last: Option<&str>) -> reqwest::Response {
    let url = format!("http://{}/v1/stream?{query}", app.local_addr);
    let mut request = authorized(reqwest::Client::new().get(url), key);
    if let Some(last) = last {
        request = request.header("last-event-id", last);
    }
    request.send().await.expect("the api answers")
}

pub async fn subscribe(app: &onhand::app::App, query: &str, last: Option<&str>) -> SseReader {
    let response = open(app, query, Some(TEST_API_KEY), last).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    SseReader { response, buffer: String::new() }
}
