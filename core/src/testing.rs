//! Helpers for tests that run against the real servers started by `scripts/test`:
//! a fresh PostgreSQL database and unique Kafka topic names per test, and an API key
//! every test server accepts.
//!
//! A test that needs the servers starts with [`skip_without_servers!`](crate::skip_without_servers),
//! so that a contributor's first `cargo test`, with no server configured, runs every other
//! test and names the ones `scripts/test` runs.

use std::{
    env,
    io::Write,
    sync::atomic::{AtomicU32, Ordering},
};

use chrono::{DateTime, TimeZone, Utc};
use sqlx::{Connection, PgConnection};

use crate::{
    auth::{ApiKey, Scopes, Token},
    db::{DbError, Keys},
    event::{EventId, LocationId, Movement, MovementKind, Sku, Source, SourceSystem, StockLevel},
};

/// An admin key with a fixed value, so that test helpers send it without being told.
/// Only [`insert_test_api_key`] puts it in a store: never in a real one.
pub const TEST_API_KEY: &str = "onh_7e57000000aa_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Stores [`TEST_API_KEY`] (admin) unless the database has it already.
pub async fn insert_test_api_key(db: &dyn Keys) -> Result<(), DbError> {
    let token = Token::parse(TEST_API_KEY).expect("the test key is well formed");
    if db.api_key(token.id()).await?.is_none() {
        db.create_api_key(&ApiKey::new(&token, "test", Scopes::admin()).expect("a valid name")).await?;
    }
    Ok(())
}

/// The variables that name the servers of `scripts/test`.
const SERVER_VARIABLES: [&str; 2] = ["ONHAND_TEST_DATABASE_URL", "ONHAND_TEST_KAFKA_BROKERS"];

/// Whether a test that needs PostgreSQL and the broker must return without running, as
/// on a machine where `scripts/test` did not configure them (`ONHAND_TEST_DATABASE_URL`,
/// `ONHAND_TEST_KAFKA_BROKERS` unset). The test says so in one line on stderr, past the
/// test harness's capture. Where a skip would hide a failure, a missing server fails the
/// test instead: under CI (`CI` set), or with `ONHAND_REQUIRE_SERVERS=1`, which
/// `scripts/test` exports.
pub fn skip_without_servers() -> bool {
    let unset: Vec<&str> = SERVER_VARIABLES.into_iter().filter(|name| !is_set(name)).collect();
    if unset.is_empty() {
        return false;
    }
    let unset = unset.join(" and ");
    assert!(
        !servers_required(),
        "{unset} not set, and this run requires the servers (CI or ONHAND_REQUIRE_SERVERS=1): \
         run scripts/test, which starts PostgreSQL and the broker"
    );
    // The harness names each test's thread after the test; the binary names the suite.
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    let suite = env::current_exe().ok().and_then(|exe| {
        let stem = exe.file_stem()?.to_string_lossy().into_owned();
        Some(stem.rsplit_once('-').map_or(stem.clone(), |(suite, _hash)| suite.to_string()))
    });
    let name = suite.map_or(test.clone(), |suite| format!("{suite}::{test}"));
    let _ = writeln!(
        std::io::stderr(),
        "skipped {name}: needs PostgreSQL and the broker ({unset} unset); run scripts/test"
    );
    true
}

/// Returns from the test that needs PostgreSQL and the broker when they are not
/// configured, saying so on stderr; fails it when the run requires them (see
/// [`skip_without_servers`](crate::testing::skip_without_servers)).
#[macro_export]
macro_rules! skip_without_servers {
    () => {
        if $crate::testing::skip_without_servers() {
            return;
        }
    };
}

/// Whether this run must have the servers: CI, or `ONHAND_REQUIRE_SERVERS=1`.
fn servers_required() -> bool {
    ["CI", "ONHAND_REQUIRE_SERVERS"]
        .into_iter()
        .any(|name| env::var(name).is_ok_and(|value| !matches!(value.as_str(), "" | "0" | "false")))
}

fn is_set(name: &str) -> bool {
    env::var_os(name).is_some_and(|value| !value.is_empty())
}

/// The PostgreSQL server of the test suite: an admin URL whose database may be replaced.
pub fn postgres_admin_url() -> String {
    server("ONHAND_TEST_DATABASE_URL", "PostgreSQL")
}

/// The Kafka-protocol broker of the test suite.
pub fn kafka_brokers() -> String {
    server("ONHAND_TEST_KAFKA_BROKERS", "the broker")
}

/// The server that `variable` names; a test that reaches here without it lacks its
/// [`skip_without_servers!`](crate::skip_without_servers).
fn server(variable: &str, server: &str) -> String {
    env::var(variable).unwrap_or_else(|_| {
        panic!(
            "{variable} is not set: a test that needs {server} starts with skip_without_servers!(); \
             run the suite with scripts/test, which starts it"
        )
    })
}

/// A name no other test of any process uses, for databases, topics and consumer groups.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        uuid::Uuid::new_v4().simple().to_string().get(..8).unwrap_or_default()
    )
}

/// Creates an empty database for one test and returns its URL.
pub async fn fresh_postgres_url() -> String {
    create_database(&postgres_admin_url(), &unique_name("onhand_test")).await.expect("create a test database")
}

/// Creates the database `name` on the server of `server_url` and returns its URL.
pub async fn create_database(server_url: &str, name: &str) -> Result<String, sqlx::Error> {
    let mut conn = PgConnection::connect(server_url).await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
    let base = server_url.rsplit_once('/').map_or(server_url, |(base, _)| base);
    Ok(format!("{base}/{name}"))
}

/// A fixed instant plus `seconds`, for movements whose order in time matters.
pub fn at(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).single().expect("a valid date") + chrono::Duration::seconds(seconds)
}

/// A level of `SKU-1` at `location` with `on_hand` units and nothing else set, at
/// `version`, updated at [`at`]`(0)`; tests change the fields they need.
pub fn stock_level(location: &str, on_hand: i64, version: i64) -> StockLevel {
    StockLevel {
        sku: Sku::parse("SKU-1").expect("a valid test sku"),
        location: LocationId::parse(location).expect("a valid test location"),
        on_hand,
        reserved: 0,
        safety_stock: 0,
        reorder_point: None,
        version,
        last_movement_at: None,
        last_event_id: None,
        last_count_at: None,
        last_recorded_at: None,
        last_source: None,
        updated_at: at(0),
    }
}

/// A valid movement from the API source.
pub fn movement(
    event_id: &str,
    sku: &str,
    location: &str,
    kind: MovementKind,
    quantity: i64,
    occurred_at: DateTime<Utc>,
) -> Movement {
    Movement {
        event_id: EventId::parse(event_id).expect("a valid test event id"),
        source: Source { system: SourceSystem::Api, instance: "test".into(), reference: event_id.into() },
        sku: Sku::parse(sku).expect("a valid test sku"),
        location: LocationId::parse(location).expect("a valid test location"),
        kind,
        quantity,
        occurred_at,
        recorded_at: occurred_at,
        actor: None,
        reason: None,
        correlation_id: None,
        attributes: Default::default(),
    }
}
