//! The logical replication client: a thin connection on `postgres-protocol` and tokio.
//!
//! No published crate speaks the streaming replication protocol (tokio-postgres lacks
//! `replication=database` and CopyBoth), so this module does: startup with
//! `replication=database` and pinned output settings, authentication (trust, cleartext, MD5,
//! SCRAM-SHA-256), TLS through rustls, `IDENTIFY_SYSTEM`, and `START_REPLICATION … LOGICAL` with
//! pgoutput protocol version 1 and logical messages, answered with standby status updates.
//! See <https://www.postgresql.org/docs/current/protocol-replication.html>.
//!
//! ```no_run
//! use bemi_core::{ConnectOptions, Lsn, ReplicationClient, ReplicationEvent};
//!
//! # async fn run() -> bemi_core::Result<()> {
//! let options: ConnectOptions = "postgres://postgres@localhost/app".parse()?;
//! let client = ReplicationClient::connect(&options).await?;
//! let mut stream = client.start_replication("bemi", &["bemi"], Lsn::ZERO).await?;
//! while let Some(event) = stream.next_event().await? {
//!     if let ReplicationEvent::Data { message, .. } = event {
//!         tracing::info!(?message, "decoded");
//!     }
//! }
//! # Ok(()) }
//! ```

mod connection;
mod stream;
mod transport;

use std::time::Duration;

use crate::config::ConnectOptions;
use crate::error::{Error, Result};
use crate::sql::{quote_identifier, quote_literal};
use crate::Lsn;
use connection::Connection;
use connection::Rows;
pub use stream::{Feedback, ReplicationEvent, ReplicationStream};
use transport::Transport;

/// How often a standby status update is sent when nothing else triggers one.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// How long a streaming connection may stay silent before it is given up as lost: after half
/// of it the server is asked to answer, and a live walsender answers at once.
pub const DEFAULT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// What `IDENTIFY_SYSTEM` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's system identifier.
    pub system_id: String,
    /// The current timeline.
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlog_pos: Lsn,
    /// The database connected to.
    pub dbname: Option<String>,
}

/// A connection in replication mode, before streaming starts. See the [module docs](self).
#[derive(Debug)]
pub struct ReplicationClient {
    conn: Connection<Transport>,
    status_interval: Duration,
    receive_timeout: Duration,
}

impl ReplicationClient {
    /// Connects with `replication=database` and authenticates.
    pub async fn connect(options: &ConnectOptions) -> Result<ReplicationClient> {
        let transport = Transport::connect(options).await?;
        let conn = Connection::startup(transport, options).await?;
        Ok(ReplicationClient {
            conn,
            status_interval: DEFAULT_STATUS_INTERVAL,
            receive_timeout: DEFAULT_RECEIVE_TIMEOUT,
        })
    }

    /// Sets how long the stream may receive nothing before the connection is given up as lost
    /// (default 30 s); see [`ReplicationStream::next_event`].
    pub fn receive_timeout(mut self, timeout: Duration) -> Self {
        self.receive_timeout = timeout;
        self
    }

    /// Sets how often standby status updates are sent while streaming (default 1 s). Keep it
    /// well under the server's `wal_sender_timeout / 2`.
    pub fn status_interval(mut self, interval: Duration) -> Self {
        self.status_interval = interval;
        self
    }

    /// Runs a command with the simple query protocol (the only one a replication connection
    /// accepts) and returns the rows of its result as text.
    pub(crate) async fn simple_query(&mut self, sql: &str) -> Result<Rows> {
        self.conn.simple_query(sql).await
    }

    /// Runs `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemInfo> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let bad = || Error::protocol("unexpected IDENTIFY_SYSTEM result");
        let row = rows.first().ok_or_else(bad)?;
        let field = |i: usize| row.get(i).cloned().flatten();
        Ok(SystemInfo {
            system_id: field(0).ok_or_else(bad)?,
            timeline: field(1).and_then(|t| t.parse().ok()).ok_or_else(bad)?,
            xlog_pos: field(2).and_then(|p| p.parse().ok()).ok_or_else(bad)?,
            dbname: field(3),
        })
    }

    /// Starts streaming from `slot` with pgoutput protocol version 1, the given publications
    /// and logical messages enabled. The server starts at the later of `start` and the slot's
    /// `confirmed_flush_lsn`; `start` is also the initially confirmed position.
    pub async fn start_replication(
        mut self,
        slot: &str,
        publications: &[&str],
        start: Lsn,
    ) -> Result<ReplicationStream> {
        let names = publications
            .iter()
            .map(|p| quote_identifier(p))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} (\"proto_version\" '1', \
             \"publication_names\" {}, \"messages\" 'true')",
            quote_identifier(slot),
            quote_literal(&names),
        );
        self.conn.start_copy_both(&sql).await?;
        let (transport, buffered) = self.conn.into_parts();
        tracing::info!(slot, start = %start, "replication started");
        Ok(ReplicationStream::new(
            transport,
            buffered,
            start,
            self.status_interval,
            self.receive_timeout,
        ))
    }
}
