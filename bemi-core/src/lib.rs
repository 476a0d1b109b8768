//! bemi-core: a context-aware audit trail for PostgreSQL.
#![forbid(unsafe_code)]
#![warn(clippy::print_stdout, clippy::print_stderr)]

mod config;
pub mod embedded;
mod error;
mod lsn;
pub mod pgoutput;
pub mod replication;
pub mod setup;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;

pub use config::{ConnectOptions, Host, SslMode};
pub use error::{Error, ErrorKind, Result};
pub use lsn::{Lsn, ParseLsnError};
pub use pgoutput::{Oid, Xid};
pub use replication::{Feedback, ReplicationClient, ReplicationEvent, ReplicationStream};
