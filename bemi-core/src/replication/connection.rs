//! Framing, startup and authentication, and the simple query protocol on a connection that
//! was opened with `replication=database`.
//!
//! See <https://www.postgresql.org/docs/current/protocol-flow.html>. Only the simple query
//! protocol works on a replication connection.

use bytes::{Buf as _, BytesMut};
use fallible_iterator::FallibleIterator as _;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{self, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::config::ConnectOptions;
use crate::error::{sqlstate_kind, Error, ErrorKind, Result};

/// The `CopyBothResponse` tag, which postgres-protocol's parser does not know.
const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

/// Session settings pinned on the walsender: pgoutput's text values are printed by the type
/// output functions under these, so they must not depend on the server's defaults.
pub(crate) const PINNED_OPTIONS: &str = "-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3 \
     -c IntervalStyle=iso_8601 -c bytea_output=hex";

/// One message from the server.
pub(crate) enum Incoming {
    Message(Message),
    CopyBothResponse,
}

/// Reads whole backend messages from a byte stream.
#[derive(Debug)]
pub(crate) struct Reader<R> {
    io: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub(crate) fn new(io: R) -> Self {
        Reader {
            io,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// The next message; NoticeResponse and ParameterStatus are logged and skipped.
    pub(crate) async fn next(&mut self) -> Result<Incoming> {
        loop {
            if let Some(incoming) = self.buffered()? {
                return Ok(incoming);
            }
            let read = self
                .io
                .read_buf(&mut self.buf)
                .await
                .map_err(Error::connection_lost)?;
            if read == 0 {
                return Err(Error::connection_lost(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
        }
    }

    /// The next message if it was read whole already (no I/O); NoticeResponse and
    /// ParameterStatus are logged and skipped.
    pub(crate) fn buffered(&mut self) -> Result<Option<Incoming>> {
        loop {
            match self.parse()? {
                Some(Incoming::Message(Message::NoticeResponse(body))) => {
                    let (_, message) = error_fields(body.fields());
                    tracing::info!(notice = %message, "server notice");
                }
                Some(Incoming::Message(Message::ParameterStatus(_))) => {}
                incoming => return Ok(incoming),
            }
        }
    }

    fn parse(&mut self) -> Result<Option<Incoming>> {
        if self.buf.first() == Some(&COPY_BOTH_RESPONSE_TAG) {
            let Some(header) = backend::Header::parse(&self.buf).map_err(protocol_error)? else {
                return Ok(None);
            };
            let total = 1 + header.len() as usize;
            if self.buf.len() < total {
                self.buf.reserve(total - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(total);
            return Ok(Some(Incoming::CopyBothResponse));
        }
        Ok(Message::parse(&mut self.buf)
            .map_err(protocol_error)?
            .map(Incoming::Message))
    }
}

/// A replication connection before streaming: one socket for both directions.
#[derive(Debug)]
pub(crate) struct Connection<S> {
    pub(crate) reader: Reader<S>,
    out: BytesMut,
}

/// What a simple query returned: the rows of its last result set, as text.
pub(crate) type Rows = Vec<Vec<Option<String>>>;

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Sends the startup message and authenticates.
    pub(crate) async fn startup(io: S, options: &ConnectOptions) -> Result<Self> {
        let mut conn = Connection {
            reader: Reader::new(io),
            out: BytesMut::new(),
        };
        let mut params = vec![
            ("user", options.user()),
            ("database", options.dbname()),
            ("replication", "database"),
            ("client_encoding", "UTF8"),
            ("options", PINNED_OPTIONS),
        ];
        if let Some(name) = options.application_name() {
            params.push(("application_name", name));
        }
        frontend::startup_message(params, &mut conn.out).map_err(protocol_error)?;
        conn.flush().await?;
        conn.authenticate(options).await?;
        loop {
            match conn.reader.next().await? {
                Incoming::Message(Message::BackendKeyData(_)) => {}
                Incoming::Message(Message::ReadyForQuery(_)) => return Ok(conn),
                Incoming::Message(Message::ErrorResponse(body)) => {
                    return Err(server_error(body.fields()))
                }
                _ => return Err(Error::protocol("unexpected message during startup")),
            }
        }
    }

    async fn authenticate(&mut self, options: &ConnectOptions) -> Result<()> {
        let password = || {
            options.password().ok_or_else(|| {
                Error::new(
                    ErrorKind::Auth,
                    format!(
                        "the server asks for a password for user {:?}, but none was given",
                        options.user()
                    ),
                )
            })
        };
        match self.reader.next().await? {
            Incoming::Message(Message::AuthenticationOk) => return Ok(()),
            Incoming::Message(Message::AuthenticationCleartextPassword) => {
                frontend::password_message(password()?.as_bytes(), &mut self.out)
                    .map_err(protocol_error)?;
            }
            Incoming::Message(Message::AuthenticationMd5Password(body)) => {
                let hash = md5_hash(
                    options.user().as_bytes(),
                    password()?.as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut self.out)
                    .map_err(protocol_error)?;
            }
            Incoming::Message(Message::AuthenticationSasl(body)) => {
                let mut mechanisms = body.mechanisms();
                let mut scram = false;
                while let Some(mechanism) = mechanisms.next().map_err(protocol_error)? {
                    scram |= mechanism == SCRAM_SHA_256;
                }
                if !scram {
                    return Err(Error::new(
                        ErrorKind::Auth,
                        "the server offers no SASL mechanism this client supports (SCRAM-SHA-256)",
                    ));
                }
                return self.scram(password()?).await;
            }
            Incoming::Message(Message::ErrorResponse(body)) => {
                return Err(server_error(body.fields()))
            }
            Incoming::Message(_) | Incoming::CopyBothResponse => {
                return Err(Error::new(
                    ErrorKind::Auth,
                    "the server asks for an authentication method this client does not support \
                     (supported: trust, password, md5, scram-sha-256)",
                ))
            }
        }
        self.flush().await?;
        self.expect_auth_ok().await
    }

    async fn scram(&mut self, password: &str) -> Result<()> {
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut self.out)
            .map_err(protocol_error)?;
        self.flush().await?;
        match self.reader.next().await? {
            Incoming::Message(Message::AuthenticationSaslContinue(body)) => {
                scram.update(body.data()).map_err(auth_error)?
            }
            Incoming::Message(Message::ErrorResponse(body)) => {
                return Err(server_error(body.fields()))
            }
            _ => {
                return Err(Error::protocol(
                    "unexpected message during SCRAM authentication",
                ))
            }
        }
        frontend::sasl_response(scram.message(), &mut self.out).map_err(protocol_error)?;
        self.flush().await?;
        match self.reader.next().await? {
            Incoming::Message(Message::AuthenticationSaslFinal(body)) => {
                scram.finish(body.data()).map_err(auth_error)?
            }
            Incoming::Message(Message::ErrorResponse(body)) => {
                return Err(server_error(body.fields()))
            }
            _ => {
                return Err(Error::protocol(
                    "unexpected message during SCRAM authentication",
                ))
            }
        }
        self.expect_auth_ok().await
    }

    async fn expect_auth_ok(&mut self) -> Result<()> {
        match self.reader.next().await? {
            Incoming::Message(Message::AuthenticationOk) => Ok(()),
            Incoming::Message(Message::ErrorResponse(body)) => Err(server_error(body.fields())),
            _ => Err(Error::protocol("unexpected message after authentication")),
        }
    }

    /// Runs one command with the simple query protocol and returns its rows as text.
    pub(crate) async fn simple_query(&mut self, sql: &str) -> Result<Rows> {
        frontend::query(sql, &mut self.out).map_err(protocol_error)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.reader.next().await? {
                Incoming::Message(Message::RowDescription(_)) => rows.clear(),
                Incoming::Message(Message::DataRow(body)) => {
                    let mut row = Vec::new();
                    let mut ranges = body.ranges();
                    while let Some(range) = ranges.next().map_err(protocol_error)? {
                        row.push(match range {
                            None => None,
                            Some(range) => Some(
                                body.buffer()
                                    .get(range)
                                    .map(|b| String::from_utf8_lossy(b).into_owned())
                                    .ok_or_else(|| {
                                        Error::protocol("data row shorter than its header")
                                    })?,
                            ),
                        });
                    }
                    rows.push(row);
                }
                Incoming::Message(Message::ErrorResponse(body)) => {
                    error = Some(server_error(body.fields()))
                }
                Incoming::Message(Message::ReadyForQuery(_)) => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                Incoming::Message(_) => {}
                Incoming::CopyBothResponse => {
                    return Err(Error::protocol(
                        "unexpected CopyBothResponse to a simple query",
                    ))
                }
            }
        }
    }

    /// Sends a command that should switch the connection to CopyBoth mode.
    pub(crate) async fn start_copy_both(&mut self, sql: &str) -> Result<()> {
        frontend::query(sql, &mut self.out).map_err(protocol_error)?;
        self.flush().await?;
        match self.reader.next().await? {
            Incoming::CopyBothResponse => Ok(()),
            Incoming::Message(Message::ErrorResponse(body)) => {
                let error = server_error(body.fields());
                // Drain up to ReadyForQuery so the connection stays usable.
                while !matches!(
                    self.reader.next().await?,
                    Incoming::Message(Message::ReadyForQuery(_))
                ) {}
                Err(error)
            }
            _ => Err(Error::protocol(
                "expected CopyBothResponse after START_REPLICATION",
            )),
        }
    }

    async fn flush(&mut self) -> Result<()> {
        let out = self.out.split();
        self.reader
            .io
            .write_all(&out)
            .await
            .map_err(Error::connection_lost)?;
        self.reader.io.flush().await.map_err(Error::connection_lost)
    }

    /// The reader and the socket under it, for streaming.
    pub(crate) fn into_parts(self) -> (S, BytesMut) {
        (self.reader.io, self.reader.buf)
    }
}

impl<R> Reader<R> {
    /// A reader over `io` that first consumes bytes already read into `buf`.
    pub(crate) fn with_buffer(io: R, buf: BytesMut) -> Self {
        Reader { io, buf }
    }
}

fn protocol_error(e: std::io::Error) -> Error {
    Error::protocol("malformed message from the server").with_source(e)
}

fn auth_error(e: std::io::Error) -> Error {
    Error::new(ErrorKind::Auth, "SCRAM-SHA-256 authentication failed").with_source(e)
}

/// The SQLSTATE and the human-readable text (message, detail, hint) of an ErrorResponse.
fn error_fields(mut fields: backend::ErrorFields<'_>) -> (String, String) {
    let (mut code, mut message, mut detail, mut hint) = (String::new(), String::new(), None, None);
    while let Ok(Some(field)) = fields.next() {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'C' => code = value,
            b'M' => message = value,
            b'D' => detail = Some(value),
            b'H' => hint = Some(value),
            _ => {}
        }
    }
    if let Some(detail) = detail {
        message.push_str(". ");
        message.push_str(&detail);
    }
    if let Some(hint) = hint {
        message.push_str(" (hint: ");
        message.push_str(&hint);
        message.push(')');
    }
    (code, message)
}

/// Turns an ErrorResponse into an [`Error`] whose kind and message say what to do.
pub(crate) fn server_error(fields: backend::ErrorFields<'_>) -> Error {
    let (code, message) = error_fields(fields);
    let kind = sqlstate_kind(&code, &message);
    let advice = match kind {
        ErrorKind::Privilege if code.starts_with("28") => {
            "; the role needs the REPLICATION attribute (ALTER ROLE … WITH REPLICATION) and a \
             pg_hba.conf line that allows it"
        }
        ErrorKind::Auth => "; check the user name and password",
        ErrorKind::Privilege => {
            "; grant the role REPLICATION (ALTER ROLE … WITH REPLICATION) or connect as a superuser"
        }
        ErrorKind::SlotInUse => {
            "; another process is streaming from this slot: stop it, or use another slot name"
        }
        ErrorKind::PublicationMissing => {
            "; create it (CREATE PUBLICATION … FOR ALL TABLES) or let the tracker's setup create \
             it. If it exists now, it was created after the slot's position: PostgreSQL decodes \
             each change with the catalog as it was then, so recreating a dropped publication is \
             not enough. The changes in between cannot be decoded with it: advance the slot past \
             the publication's creation (SELECT pg_replication_slot_advance('<slot>', \
             pg_current_wal_lsn())) and start once with the gap accepted (`bemi run \
             --accept-gap`, TrackerBuilder::accept_gap), which records the gap in the changes table"
        }
        ErrorKind::SlotMissing => {
            "; create it (SELECT pg_create_logical_replication_slot('…', 'pgoutput')) or let the \
             tracker's setup create it"
        }
        ErrorKind::WalLevel => "; run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL",
        ErrorKind::SlotLost => {
            "; the slot lost WAL it needed, so changes were lost: drop and recreate the slot, and \
             raise max_slot_wal_keep_size"
        }
        _ => "",
    };
    Error::new(kind, format!("server error {code}: {message}{advice}")).with_code(code)
}
