//! bemi-core: a context-aware audit trail for PostgreSQL.
#![forbid(unsafe_code)]
#![warn(clippy::print_stdout, clippy::print_stderr)]

mod change;
pub mod changes_table;
mod config;
pub mod context;
pub mod embedded;
mod error;
mod lsn;
pub mod pgoutput;
mod relation;
pub mod replication;
mod row;
pub mod setup;
pub mod sink;
pub mod sql;
pub mod stitch;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;
mod tracker;
pub mod value;

pub use change::{Change, ContextJson, Operation};
pub use config::{ConnectOptions, Host, SslMode};
pub use error::{Error, ErrorKind, Result};
pub use lsn::{Lsn, ParseLsnError};
pub use pgoutput::{Oid, Xid};
pub use relation::RowDecoder;
pub use replication::{Feedback, ReplicationClient, ReplicationEvent, ReplicationStream};
pub use row::{ColumnInfo, RelationInfo, Row, RowEvent};
pub use tracker::{Progress, Tracker, TrackerBuilder, TrackerHandle};
