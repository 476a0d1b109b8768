//! The byte stream under a replication connection: TCP, a Unix socket, or TLS over TCP.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

use crate::config::{ConnectOptions, Host, SslMode};
use crate::error::{Error, ErrorKind, Result};
use crate::tls;

/// TCP keepalives: a peer that vanished (a host that went away, a dropped NAT entry) is
/// noticed within about a minute instead of the kernel's two hours.
pub(crate) const KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(std::time::Duration::from_secs(30))
    .with_interval(std::time::Duration::from_secs(10))
    .with_retries(3);

/// A connected socket, encrypted or not.
#[derive(Debug)]
pub(crate) enum Transport {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// Connects and, as `sslmode` asks, negotiates TLS with an `SSLRequest`.
    pub(crate) async fn connect(options: &ConnectOptions) -> Result<Transport> {
        let host = options.host();
        let port = options.port();
        let timed_out = |limit| {
            Error::new(
                ErrorKind::Connect,
                format!("timed out after {limit:?} connecting to {host}:{port}"),
            )
        };
        match host {
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let stream = with_timeout(options, UnixStream::connect(&path))
                    .await
                    .map_err(timed_out)?
                    .map_err(|e| connect_error(options, e))?;
                Ok(Transport::Unix(stream))
            }
            Host::Tcp(name) => {
                let stream = with_timeout(options, TcpStream::connect((name.as_str(), port)))
                    .await
                    .map_err(timed_out)?
                    .map_err(|e| connect_error(options, e))?;
                stream
                    .set_nodelay(true)
                    .and_then(|()| socket2::SockRef::from(&stream).set_tcp_keepalive(&KEEPALIVE))
                    .map_err(|e| connect_error(options, e))?;
                negotiate_tls(options, name, stream).await
            }
        }
    }
}

/// Runs `connect`, limited by the `connect_timeout` setting; `Err` carries the limit.
async fn with_timeout<T>(
    options: &ConnectOptions,
    connect: impl std::future::Future<Output = T>,
) -> Result<T, std::time::Duration> {
    match options.connect_timeout() {
        Some(limit) => tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| limit),
        None => Ok(connect.await),
    }
}

async fn negotiate_tls(
    options: &ConnectOptions,
    host: &str,
    mut stream: TcpStream,
) -> Result<Transport> {
    let Some(config) = tls::client_config(options)? else {
        return Ok(Transport::Tcp(stream));
    };
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    stream
        .write_all(&request)
        .await
        .map_err(|e| connect_error(options, e))?;
    let answer = stream
        .read_u8()
        .await
        .map_err(|e| connect_error(options, e))?;
    match answer {
        b'S' => {}
        b'N' if options.ssl_mode() == SslMode::Prefer => return Ok(Transport::Tcp(stream)),
        b'N' => {
            return Err(Error::new(
                ErrorKind::Tls,
                format!(
                    "the server at {}:{} does not accept TLS, but sslmode requires it; enable ssl \
                     on the server or use sslmode=prefer",
                    options.host(),
                    options.port()
                ),
            ))
        }
        other => {
            return Err(Error::protocol(format!(
                "unexpected answer {:?} to SSLRequest",
                char::from(other)
            )))
        }
    }
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = connector
        .connect(tls::server_name(host)?, stream)
        .await
        .map_err(|e| tls::handshake_error(options, e))?;
    Ok(Transport::Tls(Box::new(stream)))
}

fn connect_error(options: &ConnectOptions, e: io::Error) -> Error {
    Error::new(
        ErrorKind::Connect,
        format!(
            "could not connect to PostgreSQL at {}:{}; is the server running and accepting \
             connections there?",
            options.host(),
            options.port()
        ),
    )
    .with_source(e)
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Unix(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
