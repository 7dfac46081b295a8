//! Helpers for tests that run against the real servers started by `scripts/test`:
//! a fresh PostgreSQL database and unique Kafka topic names per test, and an API key
//! every test server accepts.

use std::{
    env,
    sync::atomic::{AtomicU32, Ordering},
};

use chrono::{DateTime, TimeZone, Utc};
use sqlx::{Connection, PgConnection};

use crate::{
    auth::{ApiKey, Scopes, Token},
    db::{Db, DbError},
    event::{EventId, LocationId, Movement, MovementKind, Sku, Source, SourceSystem},
};

/// An admin key with a fixed value, so that test helpers send it without being told.
/// Only [`insert_test_api_key`] puts it in a store: never in a real one.
pub const TEST_API_KEY: &str = "onh_7e57000000aa_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Stores [`TEST_API_KEY`] (admin) unless the database has it already.
pub async fn insert_test_api_key(db: &dyn Db) -> Result<(), DbError> {
    let token = Token::parse(TEST_API_KEY).expect("the test key is well formed");
    if db.api_key(token.id()).await?.is_none() {
        db.create_api_key(&ApiKey::new(&token, "test", Scopes::admin()).expect("a valid name")).await?;
    }
    Ok(())
}

/// The PostgreSQL server of the test suite: an admin URL whose database may be replaced.
pub fn postgres_admin_url() -> String {
    env::var("ONHAND_TEST_DATABASE_URL")
        .expect("ONHAND_TEST_DATABASE_URL is not set: run the suite with scripts/test, which starts PostgreSQL")
}

/// The Kafka-protocol broker of the test suite.
pub fn kafka_brokers() -> String {
    env::var("ONHAND_TEST_KAFKA_BROKERS")
        .expect("ONHAND_TEST_KAFKA_BROKERS is not set: run the suite with scripts/test, which starts the broker")
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
