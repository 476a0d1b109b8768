//! The error type of bemi-core ([`Error`]).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// `Result` with bemi-core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
type SharedError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, broadly. Serializes as its name (`"Connect"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Connection settings could not be read (bad URL, unknown `sslmode`, …).
    Config,
    /// The server could not be reached, or the connection was lost.
    Connect,
    /// TLS could not be set up or the server's certificate was refused.
    Tls,
    /// The server refused the credentials, or asked for an unsupported method.
    Auth,
    /// The server answered a command with an error (see [`Error::code`]).
    Db,
    /// The server sent something this client does not understand.
    Protocol,
    /// `wal_level` is not `logical`.
    WalLevel,
    /// The server is older than PostgreSQL 14.
    ServerVersion,
    /// The role lacks a privilege (REPLICATION, table ownership, …).
    Privilege,
    /// The replication slot is in use by another process.
    SlotInUse,
    /// The replication slot was invalidated (`wal_status = lost`): changes were lost.
    SlotLost,
    /// The replication slot does not exist.
    SlotMissing,
    /// The publication does not exist.
    PublicationMissing,
    /// Changes between the sink's stored position and the slot's position are gone: the slot
    /// is ahead of what the sink holds. See
    /// [`TrackerBuilder::accept_gap`](crate::TrackerBuilder::accept_gap).
    Gap,
    /// A change sink failed.
    Sink,
    /// The tracker has stopped (after an error, or a shutdown), so what is asked of it cannot
    /// happen; see [`TrackerWatch::sync`](crate::TrackerWatch::sync).
    Stopped,
    /// The source server is not the one the tracker streamed from: it failed over to a
    /// replica that lacks the slot, or another cluster answers at its address.
    SourceChanged,
}

impl ErrorKind {
    /// A short snake-case name of the kind, as in the `kind` label of `bemi_errors_total`.
    ///
    /// ```
    /// assert_eq!(bemi_core::ErrorKind::SlotInUse.name(), "slot_in_use");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Auth => "auth",
            ErrorKind::Db => "db",
            ErrorKind::Protocol => "protocol",
            ErrorKind::WalLevel => "wal_level",
            ErrorKind::ServerVersion => "server_version",
            ErrorKind::Privilege => "privilege",
            ErrorKind::SlotInUse => "slot_in_use",
            ErrorKind::SlotLost => "slot_lost",
            ErrorKind::SlotMissing => "slot_missing",
            ErrorKind::PublicationMissing => "publication_missing",
            ErrorKind::Gap => "gap",
            ErrorKind::Sink => "sink",
            ErrorKind::Stopped => "stopped",
            ErrorKind::SourceChanged => "source_changed",
        }
    }
}

/// An error from bemi-core.
///
/// The error type of bemi-core.
///
/// One type for the whole crate. An [`Error`] can answer the questions a caller (or the tracker's
/// retry loop) asks: what kind of problem it is ([`Error::kind`]), whether trying again can help
/// ([`Error::is_transient`]), and the server's SQLSTATE when the server reported it
/// ([`Error::code`]). The message says what to do; the cause stays reachable through
/// [`std::error::Error::source`]. Cloning is cheap and keeps the whole chain, so the error
/// that ended a tracker session can be handed on as it is (see
/// [`Progress::last_error`](crate::Progress::last_error)).
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    code: Option<String>,
    transient: Option<bool>,
    source: Option<SharedError>,
}

impl Error {
    /// A new error of `kind` with a message that says what happened and what to do.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            message: message.into(),
            code: None,
            transient: None,
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(Arc::from(source.into()));
        self
    }

    /// Says whether trying again later may succeed, overriding the classification by kind and
    /// SQLSTATE of [`is_transient`](Self::is_transient). For a custom
    /// [`ChangeSink`](crate::sink::ChangeSink): a transient error makes the tracker reconnect
    /// with backoff and write the batch again; any other stops it.
    ///
    /// ```
    /// use bemi_core::{Error, ErrorKind};
    ///
    /// let busy = Error::new(ErrorKind::Sink, "the search index is rebalancing").with_transient(true);
    /// assert!(busy.is_transient());
    /// ```
    pub fn with_transient(mut self, transient: bool) -> Self {
        self.transient = Some(transient);
        self
    }

    /// Sets the SQLSTATE the server reported (see [`code`](Self::code)), for an error that came
    /// from the server through another driver than tokio-postgres.
    ///
    /// ```
    /// use bemi_core::{Error, ErrorKind};
    ///
    /// let error = Error::new(ErrorKind::Db, "deadlock").with_code("40P01");
    /// assert_eq!(error.code(), Some("40P01"));
    /// assert!(error.is_transient());
    /// ```
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Takes the SQLSTATE of `cause`, if it has one.
    pub(crate) fn with_code_of(mut self, cause: &Error) -> Self {
        self.code = cause.code.clone();
        self
    }

    /// The broad kind of problem.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The SQLSTATE the server reported, if this error came from the server.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The message, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message followed by its causes, `: `-separated, for logs and CLI output. A cause
    /// whose text is already there is left out, so each text appears once: a server error's
    /// message, code and hint are in the message already, and many errors' `Display` repeats
    /// their own cause.
    pub fn report(&self) -> String {
        let mut text = self.message.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let server_error = cause
                .downcast_ref::<tokio_postgres::Error>()
                .and_then(tokio_postgres::Error::as_db_error)
                .or_else(|| cause.downcast_ref::<tokio_postgres::error::DbError>());
            let cause_text = server_error.map_or_else(|| cause.to_string(), server_error_text);
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        text
    }

    /// Whether trying again later may succeed: lost connections, a server that is starting or
    /// shutting down, resource exhaustion, serialization failures, a slot still held by a
    /// connection that is going away. Configuration, privilege and data problems are not
    /// transient.
    pub fn is_transient(&self) -> bool {
        if let Some(transient) = self.transient {
            return transient;
        }
        match self.kind {
            ErrorKind::Connect | ErrorKind::SlotInUse => true,
            ErrorKind::Db | ErrorKind::Sink => {
                self.code.as_deref().is_some_and(is_transient_sqlstate)
            }
            _ => false,
        }
    }

    /// A configuration error ([`ErrorKind::Config`]): settings or input that no retry fixes.
    pub fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    pub(crate) fn protocol(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Protocol, message)
    }

    pub(crate) fn connection_lost(source: std::io::Error) -> Self {
        Error::new(ErrorKind::Connect, "the connection to the server was lost").with_source(source)
    }
}

/// SQLSTATE classes and codes worth retrying: connection exceptions (08), insufficient resources
/// (53), operator intervention such as shutdown (57), transaction rollback (40), object in use
/// (55006, e.g. a replication slot whose previous owner is still disconnecting), and a server
/// that is read-only for now (25006: a destination in recovery, or set read-only for
/// maintenance, takes writes again later).
fn is_transient_sqlstate(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "53" | "57" | "40")) || matches!(code, "55006" | "25006")
}

/// Runs `attempt` until it succeeds, fails otherwise than on a lock timeout (SQLSTATE 55P03),
/// or has been tried `times` times, waiting 0.5 s, 1 s, 1.5 s, … in between. For DDL run under a
/// short `lock_timeout`, so that the application's queries never queue behind it for long.
pub(crate) async fn retry_when_locked<T, F, Fut>(
    times: u32,
    what: &str,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut tried = 1;
    loop {
        match attempt().await {
            Err(e) if e.code() == Some("55P03") && tried < times => {
                tracing::info!(%what, attempt = tried, "busy; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(500) * tried).await;
                tried += 1;
            }
            done => return done,
        }
    }
}

/// The kind of a server error, from its SQLSTATE (and its message where one code covers
/// several problems). One classification for the replication and the SQL connections.
pub(crate) fn sqlstate_kind(code: &str, message: &str) -> ErrorKind {
    match code {
        "28P01" | "28000" if message.contains("replication") => ErrorKind::Privilege,
        "28P01" | "28000" => ErrorKind::Auth,
        "42501" => ErrorKind::Privilege,
        "55006" => ErrorKind::SlotInUse,
        "42704" if message.contains("publication") => ErrorKind::PublicationMissing,
        "42704" if message.contains("replication slot") => ErrorKind::SlotMissing,
        "55000" if message.contains("wal_level") => ErrorKind::WalLevel,
        "55000" if message.contains("invalidated") => ErrorKind::SlotLost,
        _ => ErrorKind::Db,
    }
}

/// Whether a client-side failure came from TLS (a refused certificate, a host name that is
/// not a valid server name): settings to fix, not a network hiccup to retry.
fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<rustls::Error>() || e.is::<rustls::pki_types::InvalidDnsNameError>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return true;
            }
        }
        cause = e.source();
    }
    false
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(code) = &self.code {
            d.field("code", code);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// `{"kind": "Connect", "code": "57P01", "transient": true, "message": "<the report>"}`: the
/// kind, the SQLSTATE (or null), [`is_transient`](Error::is_transient), and the
/// [`report`](Error::report) with its causes.
///
/// ```
/// use bemi_core::{Error, ErrorKind};
///
/// let error = Error::new(ErrorKind::Sink, "the sink is full").with_transient(true);
/// assert_eq!(
///     serde_json::to_value(&error).unwrap(),
///     serde_json::json!({"kind": "Sink", "code": null, "transient": true, "message": "the sink is full"})
/// );
/// ```
impl serde::Serialize for Error {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut error = serializer.serialize_struct("Error", 4)?;
        error.serialize_field("kind", &self.kind)?;
        error.serialize_field("code", &self.code)?;
        error.serialize_field("transient", &self.is_transient())?;
        error.serialize_field("message", &self.report())?;
        error.end()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => {
                let code = db.code().code().to_owned();
                Error::new(sqlstate_kind(&code, db.message()), server_error_text(db))
                    .with_code(code)
                    .with_source(e)
            }
            None if is_tls_failure(&e) => Error::new(
                ErrorKind::Tls,
                "TLS with the database failed; check sslmode, sslrootcert and that the server's \
                 certificate is valid for this host name",
            )
            .with_source(e),
            None if e.to_string().starts_with("authentication error")
                || e.to_string().starts_with("invalid configuration") =>
            {
                Error::new(
                    ErrorKind::Auth,
                    "the database connection could not authenticate",
                )
                .with_source(e)
            }
            None if e.is_closed()
                || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) =>
            {
                Error::new(ErrorKind::Connect, "the database connection failed").with_source(e)
            }
            None => Error::new(ErrorKind::Db, "the database query failed").with_source(e),
        }
    }
}

/// `server error SQLSTATE: message (hint: …)`.
fn server_error_text(db: &tokio_postgres::error::DbError) -> String {
    let mut text = format!("server error {}: {}", db.code().code(), db.message());
    if let Some(hint) = db.hint() {
        text.push_str(" (hint: ");
        text.push_str(hint);
        text.push(')');
    }
    text
}

impl From<crate::pgoutput::DecodeError> for Error {
    fn from(e: crate::pgoutput::DecodeError) -> Self {
        Error::protocol("could not decode a pgoutput message").with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_by_kind_and_sqlstate() {
        assert!(Error::new(ErrorKind::Connect, "x").is_transient());
        assert!(!Error::new(ErrorKind::WalLevel, "x").is_transient());
        assert!(Error::new(ErrorKind::Db, "x")
            .with_code("57P01")
            .is_transient());
        assert!(Error::new(ErrorKind::Db, "x")
            .with_code("08006")
            .is_transient());
        assert!(!Error::new(ErrorKind::Db, "x")
            .with_code("42P01")
            .is_transient());
        assert!(!Error::new(ErrorKind::Db, "x").is_transient());
        assert!(Error::new(ErrorKind::Sink, "x")
            .with_code("25006")
            .is_transient());
    }

    #[test]
    fn one_classification_of_sqlstates() {
        assert_eq!(
            sqlstate_kind("28P01", "password authentication failed"),
            ErrorKind::Auth
        );
        assert_eq!(
            sqlstate_kind("28000", "no pg_hba.conf entry for replication connection"),
            ErrorKind::Privilege
        );
        assert_eq!(
            sqlstate_kind("42704", "publication \"bemi\" does not exist"),
            ErrorKind::PublicationMissing
        );
        assert_eq!(
            sqlstate_kind("42P01", "relation does not exist"),
            ErrorKind::Db
        );
    }

    #[test]
    fn a_clone_keeps_the_chain_and_an_explicit_transience_wins() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let e = Error::connection_lost(io).with_transient(false);
        let copy = e.clone();
        assert_eq!(
            copy.report(),
            "the connection to the server was lost: reset"
        );
        assert!(!copy.is_transient(), "overridden");
        assert!(Error::new(ErrorKind::Sink, "busy")
            .with_transient(true)
            .is_transient());
    }

    #[test]
    fn keeps_the_source_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let e = Error::connection_lost(io);
        assert_eq!(e.to_string(), "the connection to the server was lost");
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("reset"));
    }
}
