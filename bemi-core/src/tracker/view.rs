//! [`TrackerWatch`]: a cloneable view of a running tracker, for request handlers and health
//! checks, with the read-your-writes wait ([`TrackerWatch::sync`]).

use std::fmt;
use std::sync::Arc;

use tokio::sync::{watch, Mutex};

use super::Progress;
use crate::config::ConnectOptions;
use crate::error::{Error, ErrorKind, Result};
use crate::Lsn;

/// A cloneable view of a running tracker: its [`Progress`], whether it stopped, and
/// [`sync`](Self::sync), which waits until the tracker stored everything committed before the
/// call. Get one from [`TrackerHandle::watch`](crate::TrackerHandle::watch); the handle itself
/// stays with whoever shuts the tracker down.
///
/// ```no_run
/// # async fn run(tracker: bemi_core::TrackerHandle) -> bemi_core::Result<()> {
/// let watch = tracker.watch(); // clone it into each request handler, a health check, …
/// // … after a write the handler wants to read back from the trail:
/// watch.sync().await?;
/// let progress = watch.progress();
/// println!("{}", serde_json::to_string(&progress).unwrap());
/// # tracker.shutdown().await }
/// ```
#[derive(Debug, Clone)]
pub struct TrackerWatch {
    progress: watch::Receiver<Progress>,
    source: Arc<SourcePosition>,
}

impl TrackerWatch {
    pub(super) fn new(progress: watch::Receiver<Progress>, source: ConnectOptions) -> Self {
        TrackerWatch {
            progress,
            source: Arc::new(SourcePosition {
                options: source,
                client: Mutex::new(None),
            }),
        }
    }

    /// The latest progress.
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// A receiver that sees every progress update (it ends when the tracker stops).
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Whether the tracker has stopped (after an error, or a shutdown).
    pub fn is_stopped(&self) -> bool {
        self.progress.has_changed().is_err()
    }

    /// Waits until `done` holds for the progress, or the tracker stops; returns the progress
    /// then.
    pub async fn wait_for(&self, mut done: impl FnMut(&Progress) -> bool) -> Progress {
        let mut rx = self.progress.clone();
        let result = rx.wait_for(|p| done(p)).await.map(|p| p.clone());
        result.unwrap_or_else(|_| self.progress())
    }

    /// Waits until the tracker stops (after an error, or a shutdown).
    pub async fn stopped(&self) {
        let mut rx = self.progress.clone();
        while rx.changed().await.is_ok() {}
    }

    /// Read-your-writes: waits until every transaction committed on the source before this
    /// call is stored by the sink, and returns the source's WAL position it waited for.
    ///
    /// It reads `pg_current_wal_lsn()` on the source (over a connection of its own, opened on
    /// first use and kept), then waits until [`Progress::stored_lsn`] passes it. After a write
    /// committed on any connection, `sync` then a query of the `changes` table sees the write's
    /// changes. It waits as long as the tracker needs, through reconnects: bound it with
    /// `tokio::time::timeout` where a request must not wait long.
    ///
    /// ```no_run
    /// # async fn run(watch: bemi_core::TrackerWatch) -> bemi_core::Result<()> {
    /// let reached = watch.sync().await?;
    /// assert!(watch.progress().stored_lsn >= reached);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Stopped`] at once when the tracker has stopped, or when it stops while this
    /// waits (with the error that stopped it as the cause, if one did); the error of the query
    /// on the source when it fails.
    pub async fn sync(&self) -> Result<Lsn> {
        self.check_running()?;
        let target = self.source.current_wal_lsn().await?;
        self.wait_stored(target).await?;
        Ok(target)
    }

    /// Waits until [`Progress::stored_lsn`] reaches `lsn`: every transaction that committed
    /// before it is stored. [`sync`](Self::sync) with a position read by the caller (say from
    /// `SELECT pg_current_wal_lsn()` on its own connection, right after a commit).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Stopped`], as for [`sync`](Self::sync).
    pub async fn wait_stored(&self, lsn: Lsn) -> Result<Progress> {
        self.check_running()?;
        let mut rx = self.progress.clone();
        let result = rx
            .wait_for(|p| p.stored_lsn >= lsn)
            .await
            .map(|p| p.clone());
        result.map_err(|_| self.stopped_error())
    }

    fn check_running(&self) -> Result<()> {
        match self.is_stopped() {
            true => Err(self.stopped_error()),
            false => Ok(()),
        }
    }

    fn stopped_error(&self) -> Error {
        let error = Error::new(
            ErrorKind::Stopped,
            "the tracker has stopped, so nothing more is stored",
        );
        match self.progress.borrow().last_error.clone() {
            Some(cause) => error.with_source(cause),
            None => error,
        }
    }
}

/// Reads the source's current WAL position over a connection kept between calls.
struct SourcePosition {
    options: ConnectOptions,
    client: Mutex<Option<tokio_postgres::Client>>,
}

impl SourcePosition {
    async fn current_wal_lsn(&self) -> Result<Lsn> {
        let mut client = self.client.lock().await;
        let connection = match client.take() {
            Some(open) if !open.is_closed() => open,
            _ => self.options.connect().await?,
        };
        let row = connection
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?;
        // Kept only after it answered: a broken connection is opened afresh next time.
        *client = Some(connection);
        row.get::<_, String>(0)
            .parse()
            .map_err(|e| Error::protocol("the server returned an invalid LSN").with_source(e))
    }
}

impl fmt::Debug for SourcePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourcePosition")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}
