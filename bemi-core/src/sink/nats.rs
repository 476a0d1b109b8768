//! Changes on NATS JetStream ([`NatsSink`]), the wire format consumers read back
//! ([`NatsChange`]) and how to reach a NATS server ([`NatsOptions`]).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use tokio::sync::oneshot;

use super::{Batch, ChangeSink, Pending, SinkStart, SourceInfo};
use crate::change::Change;
use crate::error::{Error, ErrorKind, Result};
use crate::Lsn;

/// Header: the source cluster's system identifier (as `IDENTIFY_SYSTEM` prints it).
pub const HEADER_SYSTEM_ID: &str = "Bemi-System-Id";
/// Header: the replication slot the change was read from.
pub const HEADER_SLOT: &str = "Bemi-Slot";
/// Header: the LSN of the change's commit (first half of the idempotency key).
pub const HEADER_COMMIT_LSN: &str = "Bemi-Commit-Lsn";
/// Header: the change's position within its transaction (second half of the key).
pub const HEADER_ORDINAL: &str = "Bemi-Ordinal";
/// Header: the change's number among every change of its source (system id, database, slot),
/// from 1 and without holes: a consumer of the whole stream tells a gap from a delay by it.
pub const HEADER_SEQUENCE: &str = "Bemi-Sequence";

/// How to reach a NATS server: its URL (`nats://host:4222`, `tls://…`; user and password or
/// a token may be in it) and the authentication and TLS settings of the NATS CLI (`--creds`,
/// `--nkey`, `--tlscert`, `--tlskey`, `--tlsca`, `--tlsfirst`).
///
/// ```
/// let options = bemi_core::sink::NatsOptions::new("nats://127.0.0.1:4222")
///     .creds("/etc/bemi/bemi.creds")
///     .tls_ca("/etc/bemi/ca.pem");
/// # drop(options);
/// ```
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    url: String,
    creds: Option<PathBuf>,
    nkey: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_first: bool,
    name: Option<String>,
}

impl NatsOptions {
    /// The server at `url`, a comma-separated list of URLs for a cluster.
    pub fn new(url: impl Into<String>) -> Self {
        NatsOptions {
            url: url.into(),
            ..NatsOptions::default()
        }
    }

    /// A credentials file (user JWT and nkey seed), like the NATS CLI's `--creds`.
    pub fn creds(mut self, path: impl Into<PathBuf>) -> Self {
        self.creds = Some(path.into());
        self
    }

    /// A file holding an nkey seed, like the NATS CLI's `--nkey`.
    pub fn nkey(mut self, path: impl Into<PathBuf>) -> Self {
        self.nkey = Some(path.into());
        self
    }

    /// A client certificate and its key (PEM), like `--tlscert` and `--tlskey`.
    pub fn tls_client(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_cert = Some(cert.into());
        self.tls_key = Some(key.into());
        self
    }

    /// Certificate authorities to trust (PEM), like `--tlsca`; TLS is then required.
    pub fn tls_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca = Some(path.into());
        self
    }

    /// TLS before the server's greeting (a TLS-first server or proxy), like `--tlsfirst`.
    pub fn tls_first(mut self, tls_first: bool) -> Self {
        self.tls_first = tls_first;
        self
    }

    /// The connection name the server shows in its monitoring.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The server URL(s).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connects. The client reconnects by itself after a lost connection, without limit;
    /// a first connection that fails is a transient [`ErrorKind::Connect`] error.
    pub async fn connect(&self) -> Result<async_nats::Client> {
        let mut options = async_nats::ConnectOptions::new()
            .name(self.name.as_deref().unwrap_or("bemi"))
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5));
        if let Some(path) = &self.creds {
            options = options.credentials_file(path).await.map_err(|e| {
                Error::config(format!(
                    "could not read the NATS credentials file {}",
                    path.display()
                ))
                .with_source(e)
            })?;
        }
        if let Some(path) = &self.nkey {
            let seed = std::fs::read_to_string(path).map_err(|e| {
                Error::config(format!("could not read the nkey file {}", path.display()))
                    .with_source(e)
            })?;
            options = options.nkey(seed.trim().to_owned());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if self.tls_first {
            options = options.tls_first();
        }
        let urls: Vec<async_nats::ServerAddr> = self
            .url
            .split(',')
            .map(|url| url.trim().parse())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| {
                Error::config(format!("invalid NATS URL {:?}", self.url)).with_source(e)
            })?;
        options.connect(urls).await.map_err(|e| {
            let transient = !matches!(
                e.kind(),
                async_nats::ConnectErrorKind::ServerParse
                    | async_nats::ConnectErrorKind::Authentication
                    | async_nats::ConnectErrorKind::AuthorizationViolation
                    | async_nats::ConnectErrorKind::Tls
            );
            let kind = if transient {
                ErrorKind::Connect
            } else {
                ErrorKind::Auth
            };
            Error::new(kind, format!("could not connect to NATS at {}", self.url))
                .with_source(e)
                .with_transient(transient)
        })
    }
}

/// The JetStream stream the changes go to, and what is made when it is missing.
#[derive(Debug, Clone)]
struct StreamSettings {
    name: String,
    prefix: String,
    duplicate_window: Duration,
    max_age: Duration,
    replicas: usize,
}

/// Publishes changes to a NATS JetStream stream, exactly once within the duplicate window and
/// with the key to drop the rest.
///
/// Each change is one message: its JSON (the [`Change`] serialization, which
/// [`NatsChange::decode`] reads back losslessly) on the subject
/// `<prefix>.<database>.<schema>.<table>` (prefix `bemi`; each name escaped by
/// [`subject_token`]), with the headers
///
/// * `Nats-Msg-Id`: `<system_id>:<commit_lsn>:<ordinal>`, the idempotency key, so that
///   JetStream drops a message it already holds when a restarted tracker publishes it again
///   within the stream's duplicate window;
/// * [`Bemi-System-Id`](HEADER_SYSTEM_ID), [`Bemi-Slot`](HEADER_SLOT),
///   [`Bemi-Commit-Lsn`](HEADER_COMMIT_LSN), [`Bemi-Ordinal`](HEADER_ORDINAL): the key and the
///   source, for consumers;
/// * [`Bemi-Sequence`](HEADER_SEQUENCE): the change's number within its source, from 1, with
///   no holes, the same for a message published again.
///
/// **Durable.** A batch is durable once JetStream acknowledged each of its messages (stored on
/// the stream's file storage and, with replicas, by a quorum). The sink then stores the
/// batch's `durable_through` and the sequence reached there in the stream `<stream>_PROGRESS`
/// (file storage, the last message of each source's subject
/// `_bemi_progress.<stream>.<system_id>.<database>.<slot>` kept), and
/// reports it from [`open`](ChangeSink::open), so a restarted tracker resumes right after what
/// the stream holds. Messages between that position and a crash are published again: dropped
/// by the duplicate window if it has not passed, otherwise stored twice with the same key and
/// sequence, which consumers drop (`bemi store` by the `changes` table's unique key). The sink
/// pipelines ([`submit`](ChangeSink::submit)): the next batch is published while JetStream
/// acknowledges one, and positions are stored in order, none after a batch that failed.
///
/// **The stream.** When missing, it is created with file storage, the subjects `<prefix>.>`,
/// limits retention with no limit unless [`max_age`](Self::max_age) sets one (consumers that
/// fall behind never lose changes to it), and a 2-minute duplicate window. An existing stream
/// is checked: it must take the subjects, keep acknowledgements and store on file.
///
/// **Order.** The stream holds each source's changes in commit order, each transaction in
/// stream order, except after a publish that failed (a lost connection): the tracker then
/// publishes again from the durable position, and a message that had not arrived lands after
/// later ones. The sequence header shows it: a consumer of a source's whole stream that sees
/// sequence n + 2 after n knows that n + 1 is still to come (a delay, not a gap, as long as the
/// tracker runs).
///
/// ```no_run
/// # async fn run() -> bemi_core::Result<()> {
/// use bemi_core::sink::{NatsOptions, NatsSink};
///
/// let db: bemi_core::ConnectOptions = "postgres://bemi@app-db/app".parse()?;
/// let sink = NatsSink::new(NatsOptions::new("nats://127.0.0.1:4222")).stream("BEMI");
/// let tracker = bemi_core::Tracker::builder(db, sink).start().await?;
/// # drop(tracker); Ok(()) }
/// ```
#[derive(Debug)]
pub struct NatsSink {
    options: NatsOptions,
    stream: StreamSettings,
    connection: Option<Connection>,
    source: Option<Source>,
    /// Whether the batch submitted last became durable (`true`) or failed: the next records
    /// its position only after it.
    last_done: Option<oneshot::Receiver<bool>>,
}

/// An open connection to JetStream.
struct Connection {
    jetstream: jetstream::Context,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

/// The source being published and its numbering.
#[derive(Debug)]
struct Source {
    system_id: String,
    slot: String,
    /// The subject of the source's position in the progress stream.
    progress_subject: String,
    /// The sequence of the next message.
    next_sequence: u64,
    /// The sequence of the last message at or before the durable position.
    durable_sequence: u64,
    /// Transactions published since the last durable position: (commit LSN, sequence of
    /// their last message published so far), in commit order.
    open: VecDeque<(Lsn, u64)>,
}

/// The durable position of a source, as stored in the progress stream.
#[derive(Debug, Serialize, Deserialize)]
struct Progress {
    lsn: Lsn,
    sequence: u64,
}

impl NatsSink {
    /// A sink publishing through the server of `options` to the stream `BEMI` with the subject
    /// prefix `bemi`.
    pub fn new(options: NatsOptions) -> Self {
        NatsSink {
            options,
            stream: StreamSettings {
                name: "BEMI".to_owned(),
                prefix: "bemi".to_owned(),
                duplicate_window: Duration::from_secs(120),
                max_age: Duration::ZERO,
                replicas: 1,
            },
            connection: None,
            source: None,
            last_done: None,
        }
    }

    /// Sets the stream's name (default `BEMI`).
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.stream.name = name.into();
        self
    }

    /// Sets the subject prefix (default `bemi`): changes go to `<prefix>.<database>.…`.
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.stream.prefix = prefix.into();
        self
    }

    /// Sets the duplicate window of a stream the sink creates (default 2 minutes): how long
    /// JetStream remembers message ids to drop a message published again.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.stream.duplicate_window = window;
        self
    }

    /// Sets the longest a stream the sink creates keeps a message (default: no limit). A
    /// consumer that falls further behind loses changes.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.stream.max_age = age;
        self
    }

    /// Sets the replicas of a stream the sink creates (default 1; 3 on a cluster).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.stream.replicas = replicas;
        self
    }

    /// The subject a change is published to.
    pub fn subject_of(&self, change: &Change) -> String {
        format!(
            "{}.{}.{}.{}",
            self.stream.prefix,
            subject_token(&change.database),
            subject_token(&change.schema),
            subject_token(&change.table)
        )
    }

    /// Creates the stream when it is missing, or checks it.
    async fn ensure_stream(&self, jetstream: &jetstream::Context) -> Result<()> {
        let subjects = format!("{}.>", self.stream.prefix);
        let wanted = stream::Config {
            name: self.stream.name.clone(),
            description: Some("Bemi: row changes with their application context".to_owned()),
            subjects: vec![subjects.clone()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            duplicate_window: self.stream.duplicate_window,
            max_age: self.stream.max_age,
            num_replicas: self.stream.replicas,
            ..stream::Config::default()
        };
        let mut stream = jetstream.get_or_create_stream(wanted).await.map_err(|e| {
            nats_error(
                format!("could not create the stream {}", self.stream.name),
                e,
            )
        })?;
        let info = stream.info().await.map_err(|e| {
            nats_error(format!("could not read the stream {}", self.stream.name), e)
        })?;
        let config = &info.config;
        let problem = if !config.subjects.iter().any(|s| *s == subjects || s == ">") {
            Some(format!("does not take the subjects {subjects}"))
        } else if config.storage != stream::StorageType::File {
            Some("keeps messages in memory, which a server restart loses".to_owned())
        } else if config.no_ack {
            Some("does not acknowledge messages".to_owned())
        } else if config.duplicate_window.is_zero() {
            Some("has no duplicate window".to_owned())
        } else {
            None
        };
        match problem {
            Some(problem) => Err(Error::config(format!(
                "the JetStream stream {} {problem}; fix it or choose another stream",
                self.stream.name
            ))),
            None => Ok(()),
        }
    }

    /// The stream of durable positions (`<stream>_PROGRESS`), created when missing: one
    /// message per source, the last one kept.
    async fn progress_stream(&self, jetstream: &jetstream::Context) -> Result<stream::Stream> {
        let name = format!("{}_PROGRESS", self.stream.name);
        jetstream
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                description: Some("Bemi: the durable position of each source".to_owned()),
                subjects: vec![format!("_bemi_progress.{}.>", self.stream.name)],
                storage: stream::StorageType::File,
                max_messages_per_subject: 1,
                num_replicas: self.stream.replicas,
                ..stream::Config::default()
            })
            .await
            .map_err(|e| nats_error(format!("could not create the stream {name}"), e))
    }

    /// Publishes `changes`, returning what completes once JetStream acknowledged every one.
    async fn publish(&mut self, changes: &[Change]) -> Result<Acknowledgements> {
        let subjects: Vec<String> = changes.iter().map(|c| self.subject_of(c)).collect();
        let (Some(connection), Some(source)) = (&self.connection, &mut self.source) else {
            return Err(not_open());
        };
        let mut acks = Vec::with_capacity(changes.len());
        for (change, subject) in changes.iter().zip(subjects) {
            let sequence = source.next_sequence;
            source.next_sequence += 1;
            match source.open.back_mut() {
                Some((lsn, last)) if *lsn == change.commit_lsn => *last = sequence,
                _ => source.open.push_back((change.commit_lsn, sequence)),
            }
            let payload = serde_json::to_vec(change).map_err(|e| {
                Error::new(ErrorKind::Sink, "could not serialize a change").with_source(e)
            })?;
            let message = PublishMessage::build()
                .payload(payload.into())
                .message_id(format!(
                    "{}:{}:{}",
                    source.system_id, change.commit_lsn, change.ordinal
                ))
                .header(HEADER_SYSTEM_ID, source.system_id.as_str())
                .header(HEADER_SLOT, source.slot.as_str())
                .header(HEADER_COMMIT_LSN, change.commit_lsn.to_string().as_str())
                .header(HEADER_ORDINAL, change.ordinal.to_string().as_str())
                .header(HEADER_SEQUENCE, sequence.to_string().as_str());
            let ack = connection
                .jetstream
                .send_publish(subject.clone(), message)
                .await
                .map_err(|e| publish_error(&subject, e))?;
            acks.push((subject, ack));
        }
        Ok(Acknowledgements {
            acks,
            stream: self.stream.name.clone(),
        })
    }

    /// The source's durable position once every transaction committed at or before `lsn` is
    /// stored, with the sequence reached there: what to publish to the progress stream then.
    fn progress_at(&mut self, lsn: Lsn) -> Result<ProgressUpdate> {
        let (Some(connection), Some(source)) = (&self.connection, &mut self.source) else {
            return Err(not_open());
        };
        // Transactions committed at or before `lsn` are complete; a later one may be under way.
        while let Some(&(commit, last)) = source.open.front() {
            if commit > lsn {
                break;
            }
            source.durable_sequence = last;
            source.open.pop_front();
        }
        let sequence = source.durable_sequence;
        let value = serde_json::to_vec(&Progress { lsn, sequence }).map_err(|e| {
            Error::new(ErrorKind::Sink, "could not serialize the position").with_source(e)
        })?;
        Ok(ProgressUpdate {
            jetstream: connection.jetstream.clone(),
            subject: source.progress_subject.clone(),
            value,
        })
    }
}

/// The acknowledgements a published batch waits for.
struct Acknowledgements {
    acks: Vec<(String, jetstream::context::PublishAckFuture)>,
    stream: String,
}

impl Acknowledgements {
    /// Waits for every acknowledgement; fails when one did not come or came from another
    /// stream.
    async fn received(self) -> Result<()> {
        let published = self.acks.len();
        let mut duplicates = 0_usize;
        for (subject, ack) in self.acks {
            let ack = ack.await.map_err(|e| publish_error(&subject, e))?;
            if ack.stream != self.stream {
                return Err(Error::config(format!(
                    "{subject} was stored by the stream {}, not {}; its subjects overlap ours",
                    ack.stream, self.stream
                )));
            }
            duplicates += usize::from(ack.duplicate);
        }
        if duplicates > 0 {
            tracing::info!(
                duplicates,
                published,
                "the stream already held some of these changes (published again after a \
                 restart); it kept one copy of each"
            );
        }
        Ok(())
    }
}

/// A durable position to store in the progress stream.
struct ProgressUpdate {
    jetstream: jetstream::Context,
    subject: String,
    value: Vec<u8>,
}

impl ProgressUpdate {
    async fn store(self) -> Result<()> {
        let failed = |e| nats_error("could not store the durable position in NATS", e);
        let ack = self
            .jetstream
            .publish(self.subject, self.value.into())
            .await
            .map_err(failed)?;
        ack.await.map_err(failed)?;
        Ok(())
    }
}

fn not_open() -> Error {
    Error::new(ErrorKind::Sink, "NatsSink::write was called before open")
}

#[async_trait]
impl ChangeSink for NatsSink {
    async fn open(&mut self, source: &SourceInfo) -> Result<SinkStart> {
        // A new session starts on a new connection: the old one may be what failed. Its
        // batches in flight were abandoned with it.
        self.connection = None;
        self.last_done = None;
        let client = self.options.connect().await?;
        let jetstream = jetstream::new(client);
        self.ensure_stream(&jetstream).await?;
        let progress = self.progress_stream(&jetstream).await?;
        let progress_subject = format!(
            "_bemi_progress.{}.{}.{}.{}",
            self.stream.name,
            subject_token(&source.system_id),
            subject_token(&source.database),
            subject_token(&source.slot)
        );
        let stored = match progress
            .get_last_raw_message_by_subject(&progress_subject)
            .await
        {
            Ok(message) => Some(
                serde_json::from_slice::<Progress>(&message.payload).map_err(|e| {
                    Error::new(
                        ErrorKind::Sink,
                        format!("the durable position on {progress_subject} is not Bemi's"),
                    )
                    .with_source(e)
                })?,
            ),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => None,
            Err(e) => {
                return Err(nats_error(
                    "could not read the durable position from NATS",
                    e,
                ))
            }
        };
        self.source = Some(Source {
            system_id: source.system_id.clone(),
            slot: source.slot.clone(),
            progress_subject,
            next_sequence: stored.as_ref().map_or(1, |p| p.sequence + 1),
            durable_sequence: stored.as_ref().map_or(0, |p| p.sequence),
            open: VecDeque::new(),
        });
        self.connection = Some(Connection { jetstream });
        tracing::info!(
            stream = %self.stream.name,
            durable = ?stored.as_ref().map(|p| p.lsn),
            "NATS sink ready"
        );
        Ok(SinkStart::at(stored.map(|p| p.lsn)))
    }

    async fn write(&mut self, batch: Batch) -> Result<()> {
        self.submit(batch).await?.await
    }

    /// Publishes the batch and returns: the next batch is published while JetStream
    /// acknowledges this one. A batch's position is stored once all its messages are
    /// acknowledged and the batch before it is durable, so positions are stored in order and
    /// none after a failed batch.
    async fn submit(&mut self, batch: Batch) -> Result<Pending> {
        let acks = self.publish(&batch.changes).await?;
        let progress = batch
            .durable_through
            .map(|lsn| self.progress_at(lsn))
            .transpose()?;
        let (done, next) = oneshot::channel();
        let before = self.last_done.replace(next);
        Ok(Box::pin(async move {
            let result = async {
                acks.received().await?;
                if let Some(before) = before {
                    if !before.await.unwrap_or(false) {
                        return Err(Error::new(
                            ErrorKind::Sink,
                            "a batch submitted before this one failed, so this one's position \
                             was not stored (it is published again)",
                        )
                        .with_transient(true));
                    }
                }
                match progress {
                    Some(progress) => progress.store().await,
                    None => Ok(()),
                }
            }
            .await;
            let _ = done.send(result.is_ok());
            result
        }))
    }
}

/// A change read back from the stream, with what its headers say.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NatsChange {
    /// The source cluster's system identifier.
    pub system_id: String,
    /// The change's number within its source ([`HEADER_SEQUENCE`]).
    pub sequence: u64,
    /// The change.
    pub change: Change,
}

impl NatsChange {
    /// Reads a message the [`NatsSink`] published; anything else is an error that says what
    /// is missing.
    ///
    /// ```
    /// let message = async_nats::Message {
    ///     subject: "bemi.app.public.todo".into(),
    ///     reply: None,
    ///     payload: "{}".into(),
    ///     headers: None,
    ///     status: None,
    ///     description: None,
    ///     length: 2,
    /// };
    /// assert!(bemi_core::sink::NatsChange::decode(&message).is_err());
    /// ```
    pub fn decode(message: &async_nats::Message) -> Result<NatsChange> {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str())
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Protocol,
                        format!(
                            "the message on {} has no {name} header: not published by Bemi",
                            message.subject
                        ),
                    )
                })
        };
        let system_id = header(HEADER_SYSTEM_ID)?.to_owned();
        let sequence = header(HEADER_SEQUENCE)?.parse().map_err(|e| {
            Error::new(ErrorKind::Protocol, format!("invalid {HEADER_SEQUENCE}")).with_source(e)
        })?;
        let change: Change = serde_json::from_slice(&message.payload).map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                format!("the message on {} is not a change", message.subject),
            )
            .with_source(e)
        })?;
        Ok(NatsChange {
            system_id,
            sequence,
            change,
        })
    }
}

/// A name as one subject token: letters, digits, `-` and `_` stay, every other byte of the
/// UTF-8 text becomes `%XX` (upper-case hex), and the empty name (the schema and table of a
/// gap record) becomes `%`, which no escaped name is. So `.`, `*`, `>` and white space, which
/// subjects reserve, never appear, and two names never share a token.
///
/// ```
/// use bemi_core::sink::subject_token;
///
/// assert_eq!(subject_token("order_items"), "order_items");
/// assert_eq!(subject_token("my.table"), "my%2Etable");
/// assert_eq!(subject_token(""), "%");
/// ```
pub fn subject_token(name: &str) -> String {
    if name.is_empty() {
        return "%".to_owned();
    }
    let mut token = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            token.push(char::from(byte));
        } else {
            token.push_str(&format!("%{byte:02X}"));
        }
    }
    token
}

/// A failed NATS request as a transient sink error: the client reconnects by itself, and the
/// tracker writes again from the durable position.
fn nats_error(
    message: impl Into<std::borrow::Cow<'static, str>>,
    cause: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::new(ErrorKind::Sink, message)
        .with_source(cause)
        .with_transient(true)
}

/// A failed publish: transient, except a message larger than the server takes.
fn publish_error(subject: &str, e: jetstream::context::PublishError) -> Error {
    match e.kind() {
        jetstream::context::PublishErrorKind::MaxPayloadExceeded => Error::new(
            ErrorKind::Sink,
            format!(
                "a change on {subject} is larger than the NATS server's max_payload; raise it \
                 on the server"
            ),
        )
        .with_source(e)
        .with_transient(false),
        _ => nats_error(format!("could not publish to {subject}"), e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_escape_what_subjects_reserve() {
        assert_eq!(subject_token("a.b*c>d e"), "a%2Eb%2Ac%3Ed%20e");
        assert_eq!(subject_token("%"), "%25");
        assert_eq!(subject_token("é"), "%C3%A9");
        assert_ne!(subject_token(""), subject_token("%"));
    }
}
