//! bemi-core: a context-aware audit trail for PostgreSQL.
#![forbid(unsafe_code)]
#![warn(clippy::print_stdout, clippy::print_stderr)]

mod config;
pub mod embedded;
mod error;
mod lsn;
pub mod pgoutput;
mod relation;
pub mod replication;
mod row;
pub mod setup;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;
pub mod value;

pub use config::{ConnectOptions, Host, SslMode};
pub use error::{Error, ErrorKind, Result};
pub use lsn::{Lsn, ParseLsnError};
pub use pgoutput::{Oid, Xid};
pub use relation::RowDecoder;
pub use row::{ColumnInfo, RelationInfo, Row, RowEvent};
pub use replication::{Feedback, ReplicationClient, ReplicationEvent, ReplicationStream};
