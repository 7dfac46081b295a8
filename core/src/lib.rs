//! onhand's engine, in the order data flows through it:
//!
//! - [`event`]: the wire types (`onhand.movement.v1`, `onhand.stock-level.v1`) and the
//!   newtypes that make their fields valid.
//! - [`kafka`]: client settings, the idempotent producer, topic creation, the embedded
//!   mock cluster of `onhand dev`.
//! - [`ledger`]: the consumer that applies movements exactly once, and its rules.
//! - [`lag`]: how far behind the ledger is per partition, and the levels that need a look.
//! - [`publish`]: the one way a written level reaches the stock topic.
//! - [`db`]: persistence: the role traits (`Db` is all of them), on PostgreSQL or SQLite.
//! - [`cache`]: the read side's cache of stock levels, kept fresh by the stock topic.
//! - [`reservation`]: checkouts' promises of units, held by the database.
//! - [`order`]: orders, carts and back-in-stock wishes: checked at the edge, decided once
//!   by the order workers, fulfilled from one location in a delivery slot (`docs/orders.md`).
//! - [`relay`]: how levels and movements the API writes reach Kafka (the outbox).
//! - [`ingest`]: how a movement an edge accepts is made safe before the answer.
//! - [`lease`]: pollers and inboxes run on one replica at a time, under a lease.
//! - [`freshness`]: how far behind each source (store agent, connector) is.
//! - [`history`]: a level over time, from its movements under the ledger's rules.
//! - [`stream`]: the live stream's hub: levels, alerts and sources' health, fanned out.
//! - [`api`]: the HTTP API.
//! - [`ops`]: the operator's work: verify, rebuild, replay, dead-letter re-drive, doctor.
//! - [`backoff`]: the pauses of every retrying loop.
//! - [`auth`]: API keys and their scopes; only hashes of their secrets are stored.
//! - [`product`]: the product catalog's type, checked at the edge.
//! - [`telemetry`]: the metrics of core's components, and the registry connectors add theirs to.
//! - [`config`]: typed configuration, from a file and the environment.
//! - [`clock`]: the time decisions are taken by, moved by hand in tests.
//! - [`health`]: what each component is doing (`/readyz`).
//! - [`supervisor`]: the process's tasks, restarted with backoff, failed for good visibly.
//! - [`testing`]: helpers for tests against the real servers of `scripts/test`.
//! - `fuzzing` (tests only): inputs that hostile clients send, for the parsers' harness.

pub mod alerts;
pub mod api;
pub mod auth;
pub mod backoff;
pub mod cache;
pub mod clock;
pub mod config;
pub mod db;
pub mod event;
pub mod freshness;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod history;
pub mod ingest;
pub mod kafka;
pub mod lag;
pub mod lease;
pub mod ledger;
pub mod ops;
pub mod order;
pub mod product;
pub mod publish;
pub mod relay;
pub mod reservation;
pub mod stream;
pub mod supervisor;
pub mod telemetry;
#[doc(hidden)]
pub mod testing;
