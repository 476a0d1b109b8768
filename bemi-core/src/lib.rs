//! A complete, context-aware audit trail for PostgreSQL, tracked inside your application.
//!
//! bemi-core reads every row change from the write-ahead log through a logical replication
//! slot (`pgoutput`), joins it with the application context your transaction emitted (who,
//! which endpoint, which job; see [`context`] and the `bemi-context`, `bemi-sqlx` and
//! `bemi-diesel` crates), and stores it exactly once in a Bemi-compatible `changes` table, or
//! hands it to any [`ChangeSink`](sink::ChangeSink). The [`Tracker`] is a tokio task: spawn it
//! next to your web server.
//!
//! ```no_run
//! use bemi_core::sink::PostgresSink;
//! use bemi_core::{ConnectOptions, Tracker};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let db: ConnectOptions = std::env::var("DATABASE_URL")?.parse()?;
//! // Sets up what is missing (publication, REPLICA IDENTITY FULL, slot), checks the server,
//! // and returns once it streams, or with why it cannot.
//! let tracker = Tracker::builder(db.clone(), PostgresSink::connect(&db)?)
//!     .start()
//!     .await?;
//!
//! // Write with context: every change of this transaction records {"user_id": 42}.
//! let mut client = db.connect().await?;
//! bemi_context::scope(bemi_context::Context::new().with("user_id", 42), async {
//!     let tx = bemi_core::context::begin(&mut client).await?;
//!     tx.execute("UPDATE orders SET status = 'paid' WHERE id = 7", &[]).await?;
//!     tx.commit().await
//! })
//! .await?;
//!
//! // ... serve requests (axum, …); read the trail with the `bemi-query` crate ...
//!
//! tracker.shutdown().await?; // flushes, confirms, closes
//! # Ok(()) }
//! ```
//!
//! What it guarantees, and how to run it unattended, is in the [`Tracker`] docs: it reconnects
//! after anything that can pass, stops with the cause on what cannot, never confirms to the
//! slot what the sink has not stored, and refuses to start over a gap in the trail.
//!
//! # Where to go next
//!
//! * [`Tracker::builder`] and [`TrackerBuilder`]: every setting, with its default.
//! * [`sink`]: the `changes` table ([`PostgresSink`](sink::PostgresSink)), a channel, JSON
//!   lines, or your own [`ChangeSink`](sink::ChangeSink) and its contract.
//! * [`setup`]: what the source database needs, and the SQL `bemi setup` runs.
//! * [`context`]: context for tokio-postgres and deadpool-postgres transactions.
//! * [`changes_table`] and [`sql`]: the table's contract, shared with the read side
//!   (`bemi-query`) and the `bemi` CLI.
//! * [`ConnectOptions`]: libpq-style URLs and key/value strings, TLS with libpq's `sslmode`.
//! * [`metrics`]: what the tracker records through the `metrics` facade, for Prometheus and
//!   other exporters.
//!
//! One optional feature: `nats`, the NATS JetStream sink (`sink::NatsSink`), for one capture
//! feeding many consumers. Unix only: the replication client connects over Unix sockets too. A
//! throwaway PostgreSQL for your own tests and demos is in the `bemi-temp-postgres` crate.
#![forbid(unsafe_code)]
#![warn(clippy::print_stdout, clippy::print_stderr)]

mod change;
pub mod changes_table;
mod config;
pub mod context;
mod decoder;
mod error;
mod ids;
mod keys;
mod lsn;
pub mod metrics;
pub mod pgoutput;
mod relation;
pub mod replication;
mod row;
pub mod rules;
pub mod setup;
pub mod sink;
pub mod sql;
#[doc(hidden)]
pub mod stitch;
mod tls;
mod tracker;
#[doc(hidden)]
pub mod value;

pub use change::{Change, ContextJson, Operation};
pub use config::{ConnectOptions, Host, SslMode};
pub use decoder::RowDecoder;
pub use error::{Error, ErrorKind, Result};
pub use ids::{Oid, Xid};
pub use keys::{CatalogKeys, KeyLookup};
pub use lsn::{Lsn, ParseLsnError};
pub use relation::{ColumnInfo, RelationInfo};
pub use replication::{Feedback, ReplicationClient, ReplicationEvent, ReplicationStream};
pub use row::{Row, RowEvent};
pub use tracker::{Progress, Tracker, TrackerBuilder, TrackerHandle, TrackerWatch};

/// The crates whose types appear in bemi-core's public API, re-exported so that their versions
/// always match.
pub mod reexports {
    #[cfg(feature = "nats")]
    pub use async_nats;
    pub use bemi_context;
    pub use chrono;
    pub use deadpool_postgres;
    pub use serde_json;
    pub use tokio_postgres;
}
