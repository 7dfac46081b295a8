//! What every request leaves behind: its request id, its span (the fields every log line
//! written while it runs carries), and its metrics.
//!
//! The request id is the caller's `X-Request-Id` when it is a plausible id, else a new
//! one; it is answered in `X-Request-Id`, and movements produced while the request runs
//! carry it to the ledger in a Kafka header (`telemetry::REQUEST_ID_KAFKA_HEADER`). A W3C
//! `traceparent` header's trace id is logged beside it, so a caller's trace finds onhand's
//! lines.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};
use tracing::{debug, error, info_span, Instrument};

use crate::telemetry::{Metrics, REQUEST_ID};

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
const REQUEST_ID_LEN_MAX: usize = 128;

/// The route label of a request no route matched: one series, whatever the path.
const UNMATCHED: &str = "unmatched";

/// The middleware: runs the request inside its span and its request id's scope, then
/// counts it by route, method and status.
pub async fn observe(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or(UNMATCHED, MatchedPath::as_str).to_owned();
    let method = request.method().as_str().to_owned();
    let id: Arc<str> = match request.headers().get(&REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()) {
        Some(given) if plausible_id(given) => given.into(),
        _ => uuid::Uuid::new_v4().simple().to_string().into(),
    };
    let trace_id = request.headers().get("traceparent").and_then(|v| v.to_str().ok()).and_then(trace_id);
    let span = info_span!("request", %method, %route, request_id = %id, trace_id = trace_id.unwrap_or_default());
    let mut response = REQUEST_ID.scope(Arc::clone(&id), next.run(request).instrument(span.clone())).await;
    let status = response.status();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    span.in_scope(|| match status.is_server_error() {
        true => error!(status = status.as_u16(), elapsed_ms, "answered with a server error"),
        false => debug!(status = status.as_u16(), elapsed_ms, "answered"),
    });
    metrics.http_requests_total.with_label_values(&[&route, &method, status.as_str()]).inc();
    metrics
        .http_request_duration_seconds
        .with_label_values(&[&route, &method])
        .observe(started.elapsed().as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// An id a caller may choose: 1 to 128 characters of letters, digits and `-_.:`, which no
/// log line or header can be bent by.
fn plausible_id(id: &str) -> bool {
    (1..=REQUEST_ID_LEN_MAX).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), when it is one
/// and not all zeros.
fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    valid.then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_chosen_id_is_kept_only_when_it_cannot_bend_a_log_line() {
        assert!(plausible_id("req-42"));
        assert!(plausible_id("shopify:order.7_1"));
        assert!(plausible_id(&"a".repeat(128)));
        for bad in ["", "with space", "new\nline", "quote\"", "ünïcode", &"a".repeat(129)] {
            assert!(!plausible_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_trace_id_is_read_from_a_valid_traceparent_only() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id(&format!("00-{trace}-00f067aa0ba902b7-01")), Some(trace));
        // A later version may add fields; version 00 may not.
        assert_eq!(trace_id(&format!("01-{trace}-00f067aa0ba902b7-01-more")), Some(trace));
        for bad in [
            format!("00-{trace}-00f067aa0ba902b7-01-more"),
            format!("ff-{trace}-00f067aa0ba902b7-01"),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_string(),
            format!("00-{trace}-00f067aa0ba902b7"),
            format!("00-{}-00f067aa0ba902b7-01", &trace[1..]),
            "garbage".to_string(),
        ] {
            assert_eq!(trace_id(&bad), None, "{bad}");
        }
    }
}
