//! A webhook receiver for the tests of alert and order deliveries, and the check of a
//! delivery's signature.

use std::sync::{Arc, Mutex};

use axum::{body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post, Router};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What a webhook receiver saw, and how it answers: the first `failures` requests get a 500.
#[derive(Default)]
pub struct Receiver {
    pub requests: Vec<(HeaderMap, Bytes)>,
    pub failures: usize,
}

pub async fn receiver(failures: usize) -> (String, Arc<Mutex<Receiver>>) {
    let state = Arc::new(Mutex::new(Receiver { failures, ..Receiver::default() }));
    async fn hook(State(state): State<Arc<Mutex<Receiver>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
        let mut state = state.lock().unwrap();
        state.requests.push((headers, body));
        if state.requests.len() <= state.failures {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::NO_CONTENT
        }
    }
    let router = Router::new().route("/hook", post(hook)).with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, state)
}

/// Checks `Onhand-Signature: t=UNIX,v1=HEX` the way docs/alerts.md tells receivers to.
pub fn signed_by(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = headers["onhand-signature"].to_str().unwrap();
    let (t, v1) = header.split_once(",v1=").unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&hex::decode(v1).unwrap()).is_ok()
}
