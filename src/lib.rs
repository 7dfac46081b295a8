//! The onhand process: wires the engine (`onhand-core`) and the connectors
//! (`onhand-connectors`) into the two ways of running it.
//!
//! - [`app`]: starts and stops every component: `onhand serve` (Kafka cluster and
//!   PostgreSQL) and `onhand dev` (embedded Kafka and SQLite, nothing to install).
//! - `boot`: the start-up steps `serve` and `connector` share (database, Kafka), once.
//! - [`connector`]: `onhand connector NAME`, one connector on its own.
//! - [`products`]: `onhand products import`, the catalog from CSV or NDJSON.
//! - [`ops`]: `onhand verify|rebuild|replay|dlq|doctor`, the operator's commands.
//! - [`keys`]: `onhand keys create|list|revoke`, and the admin key of `onhand dev`.

pub mod app;
mod boot;
pub mod connector;
pub mod keys;
pub mod ops;
pub mod products;
