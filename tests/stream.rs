//! The live stream of `onhand serve` (`GET /v1/stream`, `GET /v1/ws`) against the real
//! broker and PostgreSQL: what a client sees, resumes, and is refused.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{
    stream::{open, subscribe},
    *,
};
use futures::{SinkExt, StreamExt};
use onhand_core::event::{alert::AlertState, Sku, StockLevel};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, protocol::frame::coding::CloseCode};

fn level(sku: &str, location: &str, on_hand: i64) -> StockLevel {
    let base = onhand_core::testing::stock_level(location, on_hand, on_hand);
    StockLevel { sku: Sku::parse(sku).unwrap(), updated_at: Utc::now(), ..base }
}

fn receipt(id: &str, sku: &str, quantity: i64) -> String {
    json!([{
        "event_id": id,
        "source": { "system": "api", "instance": "test", "ref": id },
        "sku": sku, "location": "store-1", "kind": "receipt", "quantity": quantity,
        "occurred_at": "2026-11-20T10:00:00Z"
    }])
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_movement_reaches_the_stream_as_a_level_change() {
    onhand_core::skip_without_servers!();
    let app = serve(&test_config(2).await).await;
    let mut stream = subscribe(&app, "kind=level&sku=SKU-LIVE", None).await;
    // The hub follows the stock topic from its end: receipts go in until the first level
    // arrives, then one more whose effect the stream must show.
    let mut n = 0;
    let first = loop {
        n += 1;
        let (status, _) = http_post(
            app.local_addr,
            "/v1/movements",
            "application/json",
            receipt(&format!("live-{n}"), "SKU-LIVE", 1),
        )
        .await;
        assert_eq!(status, 202);
        let ticket = tokio::time::timeout(Duration::from_secs(3), stream.next(60)).await;
        if let Ok(Some(event)) = ticket {
            break event;
        }
        assert!(n < 20, "no level streamed after {n} movements");
    };
    assert_eq!(first.event, "level");
    assert_eq!(first.data["sku"], "SKU-LIVE");
    assert!(first.id.unwrap().starts_with(app.stream.epoch()));
    on_hand_is(&app, "SKU-LIVE", "store-1", n).await;
    // Levels of the other receipts may still be on their way: read until the total shows.
    let (status, _) =
        http_post(app.local_addr, "/v1/movements", "application/json", receipt("live-last", "SKU-LIVE", 10)).await;
    assert_eq!(status, 202);
    loop {
        let event = stream.next(60).await.expect("the stream goes on");
        assert_eq!((event.event.as_str(), &event.data["location"]), ("level", &json!("store-1")));
        if event.data["on_hand"] == n + 10 {
            assert_eq!(event.data["available"], n + 10);
            break;
        }
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filters_choose_the_events_and_bad_ones_are_refused() {
    onhand_core::skip_without_servers!();
    let app = serve(&test_config(1).await).await;
    let mut only_b = subscribe(&app, "sku=SKU-B,SKU-C&location=s2&kind=level", None).await;
    app.stream.publish_level(&level("SKU-A", "s2", 1));
    app.stream.publish_level(&level("SKU-B", "s1", 2));
    app.stream.publish_level(&level("SKU-B", "s2", 3));
    let event = only_b.next(10).await.unwrap();
    assert_eq!((event.data["sku"].as_str(), event.data["on_hand"].as_i64()), (Some("SKU-B"), Some(3)));
    for (query, what) in [
        ("kind=level,bogus", "an unknown kind"),
        ("sku=bad%20sku", "an invalid sku"),
        ("location=%00", "an invalid location"),
        ("colour=red", "an unknown parameter"),
        ("sku=A&sku=B", "a parameter twice"),
    ] {
        let response = open(&app, query, Some(TEST_API_KEY), None).await;
        assert_eq!(response.status(), 422, "{what}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_parameter", "{what}: {body}");
    }
    let many = (0..101).map(|i| format!("S{i}")).collect::<Vec<_>>().join(",");
    assert_eq!(open(&app, &format!("sku={many}"), Some(TEST_API_KEY), None).await.status(), 422);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_resumes_after_its_last_event_without_a_gap() {
    onhand_core::skip_without_servers!();
    let app = serve(&test_config(1).await).await;
    let ids: Vec<String> = (1..=5).map(|n| app.stream.publish_level(&level("SKU-R", "s1", n)).id.clone()).collect();
    let mut resumed = subscribe(&app, "", Some(&ids[1])).await;
    for expected in 3..=5 {
        let event = resumed.next(10).await.unwrap();
        assert_eq!(event.data["on_hand"], expected);
        assert_eq!(event.id.as_deref(), Some(ids[expected as usize - 1].as_str()));
    }
    let live = app.stream.publish_level(&level("SKU-R", "s1", 6));
    let event = resumed.next(10).await.unwrap();
    assert_eq!((event.id.as_deref(), event.data["on_hand"].as_i64()), (Some(live.id.as_str()), Some(6)));
    // The query parameter does the same, for clients that cannot set the header.
    let mut by_query = subscribe(&app, &format!("last_event_id={}", ids[3]), None).await;
    assert_eq!(by_query.next(10).await.unwrap().data["on_hand"], 5);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_id_the_instance_cannot_resume_from_gets_a_reset_then_live_events() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(1).await;
    config.stream.replay_events_max = 3;
    let app = serve(&config).await;
    let ids: Vec<String> = (1..=6).map(|n| app.stream.publish_level(&level("SKU-X", "s1", n)).id.clone()).collect();
    let mut stream = subscribe(&app, "", Some("another-epoch-3")).await;
    let reset = stream.next(10).await.unwrap();
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.data["reason"], "unknown_event_id");
    assert_eq!(reset.id.as_deref(), Some(ids[5].as_str()), "a reconnect resumes from the newest");
    let live = app.stream.publish_level(&level("SKU-X", "s1", 7));
    assert_eq!(stream.next(10).await.unwrap().id.as_deref(), Some(live.id.as_str()));
    let huge = "9".repeat(4_000);
    for (last, reason) in [
        (ids[0].as_str(), "event_id_too_old"),
        (huge.as_str(), "unknown_event_id"),
        ("\u{1F4A5}", "unknown_event_id"),
        ("", "unknown_event_id"),
    ] {
        let mut stream = subscribe(&app, &format!("last_event_id={}", urlencode(last)), None).await;
        let reset = stream.next(10).await.unwrap();
        assert_eq!((reset.event.as_str(), reset.data["reason"].as_str()), ("reset", Some(reason)), "after {last:?}");
    }
    app.stop().await.unwrap();
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'-' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_does_not_read_is_told_it_is_slow_and_disconnected() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(1).await;
    config.stream.client_buffer_max = 4;
    let app = serve(&config).await;
    let mut slow = subscribe(&app, "", None).await;
    // The client reads nothing while far more than its buffer is published.
    for n in 0..50_000 {
        app.stream.publish_level(&level("SKU-SLOW-WITH-A-LONGER-NAME", "store-with-a-long-name", n));
    }
    let mut last = None;
    while let Some(event) = slow.next(30).await {
        last = Some(event);
    }
    let last = last.expect("some events arrived");
    assert_eq!(last.event, "slow_consumer", "the stream ends with slow_consumer");
    assert_eq!(last.data["reason"], "slow_consumer");
    assert!(metric(&app, "onhand_stream_slow_consumers_total") >= 1.0);
    eventually("the client's place given back", 10, || async { (app.stream.clients() == 0).then_some(()) }).await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_clients_than_the_most_allowed_are_refused() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(1).await;
    config.stream.clients_max = 1;
    let app = serve(&config).await;
    let first = subscribe(&app, "", None).await;
    assert_eq!(metric(&app, "onhand_stream_clients"), 1.0);
    let refused = open(&app, "", Some(TEST_API_KEY), None).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_stream_clients");
    let (ws_refused, _) = ws_connect(&app, "").await.map(|_| ()).map_err(ws_status).unwrap_err();
    assert_eq!(ws_refused, 503);
    drop(first);
    eventually("a place again", 10, || async {
        (open(&app, "", Some(TEST_API_KEY), None).await.status() == 200).then_some(())
    })
    .await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_valid_key_the_stream_is_refused() {
    onhand_core::skip_without_servers!();
    let app = serve(&test_config(1).await).await;
    for (key, code) in [(None, "missing_api_key"), (Some("onh_0000000000aa_nope"), "invalid_api_key")] {
        let response = open(&app, "", key, None).await;
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code);
    }
    let mut request = format!("ws://{}/v1/ws", app.local_addr).into_client_request_checked();
    request.headers_mut().insert("authorization", "Bearer onh_0000000000aa_nope".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(request).await.map(|_| ()).map_err(ws_status).unwrap_err();
    assert_eq!(refused.0, 401);
    app.stop().await.unwrap();
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(app: &onhand::app::App, query: &str) -> Result<Socket, tungstenite::Error> {
    let url = format!("ws://{}/v1/ws?{query}", app.local_addr);
    tokio_tungstenite::connect_async(url).await.map(|(socket, _)| socket)
}

/// The HTTP status of a refused WebSocket handshake, and its body.
fn ws_status(error: tungstenite::Error) -> (u16, String) {
    match error {
        tungstenite::Error::Http(response) => {
            let body = response.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            (response.status().as_u16(), body)
        }
        other => panic!("expected an http refusal, got {other}"),
    }
}

trait IntoRequest {
    fn into_client_request_checked(self) -> tungstenite::handshake::client::Request;
}

impl IntoRequest for String {
    fn into_client_request_checked(self) -> tungstenite::handshake::client::Request {
        use tungstenite::client::IntoClientRequest;
        self.into_client_request().expect("a websocket url")
    }
}

/// The next text message as JSON, or the close frame's code and reason.
async fn ws_next(socket: &mut Socket) -> Result<Value, (CloseCode, String)> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("a message in time");
        match message {
            Some(Ok(tungstenite::Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
            Some(Ok(tungstenite::Message::Close(Some(frame)))) => return Err((frame.code, frame.reason.to_string())),
            Some(Ok(tungstenite::Message::Close(None))) | None | Some(Err(_)) => {
                return Err((CloseCode::Abnormal, String::new()))
            }
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_websocket_authenticates_with_its_first_message() {
    onhand_core::skip_without_servers!();
    let app = serve(&test_config(1).await).await;
    let mut socket = ws_connect(&app, "kind=level&sku=SKU-W").await.expect("the upgrade");
    socket.send(tungstenite::Message::text(json!({ "auth": TEST_API_KEY }).to_string())).await.unwrap();
    // The socket is subscribed once its key is admitted: publish until it shows.
    let mut n = 0;
    let message = loop {
        n += 1;
        app.stream.publish_level(&level("SKU-OTHER", "s1", n));
        app.stream.publish_level(&level("SKU-W", "s1", n));
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(200), ws_next(&mut socket)).await {
            break message;
        }
        assert!(n < 50, "nothing arrived");
    };
    assert_eq!(message["event"], "level");
    assert_eq!(message["data"]["sku"], "SKU-W");
    assert!(message["id"].as_str().unwrap().starts_with(app.stream.epoch()));
    // Garbage from the client changes nothing.
    socket.send(tungstenite::Message::text("{not json")).await.unwrap();
    socket.send(tungstenite::Message::binary(vec![0u8; 100])).await.unwrap();
    let live = app.stream.publish_level(&level("SKU-W", "s1", 1_000));
    loop {
        let message = ws_next(&mut socket).await.expect("the socket stays open");
        if message["id"] == live.id.as_str() {
            break;
        }
    }

    // A bad key, garbage, or silence: closed with the error code as the reason.
    for first in [Some(json!({ "auth": "onh_0000000000aa_nope" }).to_string()), Some("hello".to_string()), None] {
        let mut socket = ws_connect(&app, "").await.expect("the upgrade");
        if let Some(first) = &first {
            socket.send(tungstenite::Message::text(first.clone())).await.unwrap();
        }
        let (code, reason) = ws_next(&mut socket).await.expect_err("closed");
        assert_eq!(code, CloseCode::Policy, "{first:?}");
        let expected =
            if first.as_deref().is_some_and(|f| f.contains("auth")) { "invalid_api_key" } else { "missing_api_key" };
        assert_eq!(reason, expected, "{first:?}");
    }

    // With the header, no first message is needed.
    let mut request = format!("ws://{}/v1/ws?kind=level", app.local_addr).into_client_request_checked();
    request.headers_mut().insert("authorization", format!("Bearer {TEST_API_KEY}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("admitted by its header");
    let live = app.stream.publish_level(&level("SKU-H", "s1", 1));
    assert_eq!(ws_next(&mut socket).await.unwrap()["id"], live.id.as_str());
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_flow_counts_what_the_stream_saw() {
    onhand_core::skip_without_servers!();
    let app = serve(&test_config(1).await).await;
    for n in 0..5 {
        app.stream.publish_level(&level("SKU-F", "s9", n));
    }
    let (status, stats) = http_get(app.local_addr, "/v1/stream/stats?window_s=30").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["seconds"].as_array().unwrap().len(), 30);
    assert_eq!(stats["levels_by_location"]["s9"], 5);
    let (status, body) = http_get(app.local_addr, "/v1/stream/stats?window_s=0").await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("invalid_parameter")));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alert_on_the_alerts_topic_reaches_the_stream() {
    onhand_core::skip_without_servers!();
    let config = test_config(1).await;
    let app = serve(&config).await;
    let mut alerts = subscribe(&app, "kind=alert&location=s1", None).await;
    let producer = producer();
    // The hub reads the topic from its end: alerts go on until the first arrives.
    let mut n = 0;
    let first = loop {
        n += 1;
        let event = common::stream::alert_event(&format!("alr_{n}"), "SKU-AL", "s1", AlertState::Open);
        produce(&producer, &config.kafka.topics.alerts, &[(event.alert.subject.clone(), event.to_json())]).await;
        if let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(2), alerts.next(60)).await {
            break event;
        }
        assert!(n < 30, "no alert streamed after {n}");
    };
    assert_eq!(first.event, "alert");
    assert_eq!((first.data["kind"].as_str(), first.data["subject"].as_str()), (Some("low_stock"), Some("SKU-AL@s1")));
    assert!(first.data["event_id"].as_str().unwrap().ends_with(":open"));
    // Garbage on the topic is skipped, and what follows still arrives.
    produce(&producer, &config.kafka.topics.alerts, &[("x".into(), b"{not an alert".to_vec())]).await;
    let resolved = common::stream::alert_event("alr_last", "SKU-AL", "s1", AlertState::Resolved);
    produce(&producer, &config.kafka.topics.alerts, &[(resolved.alert.subject.clone(), resolved.to_json())]).await;
    loop {
        let event = alerts.next(60).await.expect("the stream goes on");
        if event.data["id"] == "alr_last" {
            assert_eq!(event.data["state"], "resolved");
            break;
        }
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_websocket_that_does_not_read_is_closed_as_a_slow_consumer() {
    onhand_core::skip_without_servers!();
    let mut config = test_config(1).await;
    config.stream.client_buffer_max = 4;
    let app = serve(&config).await;
    let mut request = format!("ws://{}/v1/ws", app.local_addr).into_client_request_checked();
    request.headers_mut().insert("authorization", format!("Bearer {TEST_API_KEY}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("admitted by its header");
    for n in 0..50_000 {
        app.stream.publish_level(&level("SKU-SLOW-WITH-A-LONGER-NAME", "store-with-a-long-name", n));
    }
    let closed = loop {
        match ws_next(&mut socket).await {
            Ok(_) => {}
            Err(closed) => break closed,
        }
    };
    assert_eq!(closed, (CloseCode::Again, "slow_consumer".to_string()));
    app.stop().await.unwrap();
}
