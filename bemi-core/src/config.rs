//! Connection settings ([`ConnectOptions`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// How to use TLS, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, without verifying the certificate (libpq's default).
    #[default]
    Prefer,
    /// Require TLS; verify the certificate only when `sslrootcert` is given (as libpq does).
    Require,
    /// Require TLS and a certificate signed by a trusted authority.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::config(format!(
                "unknown sslmode {other:?}; use disable, prefer, require, verify-ca or verify-full"
            )))
            }
        })
    }
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address.
    Tcp(String),
    /// A directory holding the server's Unix socket (`.s.PGSQL.<port>`).
    Unix(PathBuf),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(name) => f.write_str(name),
            Host::Unix(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// Settings for connecting to PostgreSQL.
///
/// Connection settings, read from a URL or a key/value string as libpq reads them.
///
/// Both forms of <https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING>
/// are accepted:
///
/// ```
/// use bemi_core::{ConnectOptions, SslMode};
///
/// let url: ConnectOptions = "postgres://app:s%40cret@db.example.com:6543/shop?sslmode=verify-full"
///     .parse()?;
/// assert_eq!(url.port(), 6543);
/// assert_eq!(url.password(), Some("s@cret"));
/// assert_eq!(url.ssl_mode(), SslMode::VerifyFull);
///
/// let kv: ConnectOptions = "host=/var/run/postgresql dbname=shop user='app user'".parse()?;
/// assert_eq!(kv.dbname(), "shop");
/// assert_eq!(kv.user(), "app user");
/// # Ok::<(), bemi_core::Error>(())
/// ```
///
/// Unlike tokio-postgres, the `verify-ca` and `verify-full` modes are supported (through
/// rustls), and `sslrootcert` names the PEM file of trusted certificate authorities
/// (`sslrootcert=system` uses the bundled web PKI roots).
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    host: Host,
    port: u16,
    user: String,
    password: Option<String>,
    dbname: Option<String>,
    ssl_mode: SslMode,
    ssl_root_cert: Option<PathBuf>,
    application_name: Option<String>,
    connect_timeout: Option<Duration>,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            host: Host::Tcp("localhost".into()),
            port: 5432,
            user: "postgres".into(),
            password: None,
            dbname: None,
            ssl_mode: SslMode::default(),
            ssl_root_cert: None,
            application_name: None,
            connect_timeout: None,
        }
    }
}

impl ConnectOptions {
    /// Settings with libpq's defaults: `localhost:5432`, user `postgres`, `sslmode=prefer`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The database name (defaults to the user name, as in libpq).
    pub fn dbname(&self) -> &str {
        self.dbname.as_deref().unwrap_or(&self.user)
    }

    /// The TLS mode.
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// The PEM file of trusted certificate authorities, if set.
    pub fn ssl_root_cert(&self) -> Option<&Path> {
        self.ssl_root_cert.as_deref()
    }

    /// The `application_name` reported to the server.
    pub fn application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }

    /// How long to wait for the TCP connection, if limited.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    /// Sets the host: a name, an IP address, or (when it starts with `/`) a socket directory.
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = parse_host(host.into());
        self
    }

    /// Sets the port.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Sets the user.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// Sets the password.
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets the database.
    pub fn with_dbname(mut self, dbname: impl Into<String>) -> Self {
        self.dbname = Some(dbname.into());
        self
    }

    /// Sets the TLS mode.
    pub fn with_ssl_mode(mut self, mode: SslMode) -> Self {
        self.ssl_mode = mode;
        self
    }

    /// Sets the PEM file of trusted certificate authorities (`system` for the web PKI roots).
    pub fn with_ssl_root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.ssl_root_cert = Some(path.into());
        self
    }

    /// Sets the `application_name`.
    pub fn with_application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// Sets the TCP connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The settings as a `postgres://` URL that libpq, sqlx and this crate all read (the
    /// password included; a Unix socket directory as the `host` parameter).
    ///
    /// ```
    /// let options: bemi_core::ConnectOptions = "host=db user='a b' dbname=app sslmode=require".parse()?;
    /// assert_eq!(options.to_url(), "postgres://a%20b@db:5432/app?sslmode=require");
    /// assert_eq!(options.to_url().parse::<bemi_core::ConnectOptions>()?, options);
    /// # Ok::<(), bemi_core::Error>(())
    /// ```
    pub fn to_url(&self) -> String {
        let mut url = format!("postgres://{}", percent_encode(&self.user));
        if let Some(password) = &self.password {
            url.push(':');
            url.push_str(&percent_encode(password));
        }
        url.push('@');
        let mut query = Vec::new();
        match &self.host {
            Host::Tcp(name) if name.contains(':') => {
                url.push_str(&format!("[{name}]:{}", self.port))
            }
            Host::Tcp(name) => url.push_str(&format!("{}:{}", percent_encode(name), self.port)),
            // The socket directory goes in the `host` parameter, which overrides the
            // authority's host (some parsers require one there).
            Host::Unix(dir) => {
                url.push_str(&format!("localhost:{}", self.port));
                query.push(format!(
                    "host={}",
                    percent_encode(&dir.display().to_string())
                ));
            }
        }
        url.push('/');
        url.push_str(&percent_encode(self.dbname()));
        let mode = match self.ssl_mode {
            SslMode::Disable => Some("disable"),
            SslMode::Prefer => None,
            SslMode::Require => Some("require"),
            SslMode::VerifyCa => Some("verify-ca"),
            SslMode::VerifyFull => Some("verify-full"),
        };
        query.extend(mode.map(|m| format!("sslmode={m}")));
        if let Some(cert) = &self.ssl_root_cert {
            query.push(format!(
                "sslrootcert={}",
                percent_encode(&cert.display().to_string())
            ));
        }
        if let Some(name) = &self.application_name {
            query.push(format!("application_name={}", percent_encode(name)));
        }
        if let Some(timeout) = self.connect_timeout {
            query.push(format!("connect_timeout={}", timeout.as_secs()));
        }
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query.join("&"));
        }
        url
    }

    /// Applies one libpq keyword. Unknown keywords are an error, so typos do not pass silently.
    fn set(&mut self, key: &str, value: String) -> Result<()> {
        match key {
            "host" | "hostaddr" => self.host = parse_host(value),
            "port" => {
                self.port = value
                    .parse()
                    .map_err(|_| Error::config(format!("invalid port {value:?}")))?
            }
            "user" => self.user = value,
            "password" => self.password = Some(value),
            "dbname" => self.dbname = Some(value),
            "sslmode" => self.ssl_mode = value.parse()?,
            "sslrootcert" => self.ssl_root_cert = Some(value.into()),
            "application_name" => self.application_name = Some(value),
            "connect_timeout" => {
                let secs: u64 = value
                    .parse()
                    .map_err(|_| Error::config(format!("invalid connect_timeout {value:?}")))?;
                self.connect_timeout = (secs > 0).then(|| Duration::from_secs(secs));
            }
            // Accepted for compatibility; this client always talks UTF-8 and the tracker sets
            // its own session options.
            "client_encoding" | "options" | "target_session_attrs" => {}
            other => {
                return Err(Error::config(format!(
                    "unknown connection parameter {other:?}"
                )))
            }
        }
        Ok(())
    }

    fn parse_url(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("postgresql://")
            .or_else(|| url.strip_prefix("postgres://"))
            .ok_or_else(|| Error::config("a connection URL starts with postgres://"))?;
        // The user name and password end at the last '@'. An unencoded '/' or '?' in them would
        // end them early and show parts of the password as the host, port or parameters.
        if rest
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(['/', '?']))
        {
            return Err(Error::config(format!(
                "the connection URL {} has an unencoded '/' or '?' in its user name or password \
                 (or an '@' after its host); percent-encode them: / as %2F, ? as %3F, @ as %40",
                redact_url(url)
            )));
        }
        let decode = |part: &str, what: &str| {
            percent_decode(part).map_err(|e| {
                Error::config(format!(
                    "{} in the {what} of the connection URL {}",
                    e.message(),
                    redact_url(url)
                ))
            })
        };
        let mut options = ConnectOptions::default();
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if let Some(userinfo) = userinfo {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                options.user = decode(user, "user name")?;
            }
            if let Some(password) = password {
                options.password = Some(decode(password, "password")?);
            }
        }
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (ip, after) = bracketed
                .split_once(']')
                .ok_or_else(|| Error::config("unterminated [ in the URL's host"))?;
            (ip, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if !host.is_empty() {
            options.set("host", decode(host, "host")?)?;
        }
        if let Some(port) = port.filter(|p| !p.is_empty()) {
            options.set("port", port.to_owned())?;
        }
        if !path.is_empty() {
            options.dbname = Some(decode(path, "database name")?);
        }
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| Error::config(format!("URL parameter {pair:?} has no value")))?;
            options.set(&decode(key, "parameters")?, decode(value, "parameters")?)?;
        }
        Ok(options)
    }

    fn parse_key_values(text: &str) -> Result<Self> {
        let mut options = ConnectOptions::default();
        let mut chars = text.chars().peekable();
        loop {
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if chars.peek().is_none() {
                return Ok(options);
            }
            let mut key = String::new();
            while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
                key.push(c);
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if chars.next() != Some('=') {
                // Not quoting the word: it may be part of a password with a space.
                return Err(Error::config(
                    "expected key=value in the connection string, found a word without '='; \
                     quote values that hold spaces (password='a b')",
                ));
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            let mut value = String::new();
            if chars.next_if_eq(&'\'').is_some() {
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some('\\') => value.extend(chars.next()),
                        Some(c) => value.push(c),
                        None => {
                            return Err(Error::config(format!(
                                "unterminated quoted value for {key:?}"
                            )))
                        }
                    }
                }
            } else {
                while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                    if c == '\\' {
                        value.extend(chars.next());
                    } else {
                        value.push(c);
                    }
                }
            }
            options.set(&key, value)?;
        }
    }

    /// Settings for an ordinary SQL connection with tokio-postgres. TLS is negotiated by the
    /// connector from [`crate::tls`]; this only carries whether it is required.
    pub(crate) fn to_tokio_postgres(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        match &self.host {
            Host::Tcp(name) => config.host(name),
            Host::Unix(dir) => config.host_path(dir),
        };
        config
            .port(self.port)
            .user(&self.user)
            .dbname(self.dbname());
        if let Some(password) = &self.password {
            config.password(password);
        }
        if let Some(name) = &self.application_name {
            config.application_name(name);
        }
        if let Some(timeout) = self.connect_timeout {
            config.connect_timeout(timeout);
        }
        config
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(30))
            .keepalives_interval(std::time::Duration::from_secs(10))
            .keepalives_retries(3);
        config.ssl_mode(match self.ssl_mode {
            _ if matches!(self.host, Host::Unix(_)) => tokio_postgres::config::SslMode::Disable,
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        config
    }
}

impl ConnectOptions {
    /// Opens an ordinary SQL connection (not a replication one) with tokio-postgres, with TLS
    /// as `sslmode` says, and drives it on a spawned task.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let config = self.to_tokio_postgres();
        let client = match crate::tls::make_tls_connect(self)? {
            Some(tls) => {
                let (client, connection) = config.connect(tls).await?;
                tokio::spawn(drive(connection));
                client
            }
            None => {
                let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(drive(connection));
                client
            }
        };
        Ok(client)
    }

    /// A deadpool-postgres pool of up to `max_size` ordinary SQL connections, with TLS as
    /// `sslmode` says. Connections are opened on demand; a connection is checked with a cheap
    /// test (is it closed?) when it is handed out again.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let options: bemi_core::ConnectOptions = "postgres://app@localhost/shop".parse()?;
    /// let pool = options.pool(16)?;
    /// let mut client = pool.get().await?;
    /// let tx = bemi_core::context::begin(&mut client).await?;
    /// # drop(tx); Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Tls`] when the TLS settings cannot be loaded (say an unreadable
    /// `sslrootcert`), [`ErrorKind::Config`] when the pool cannot be built.
    pub fn pool(&self, max_size: usize) -> Result<deadpool_postgres::Pool> {
        self.pool_with_options(max_size, "")
    }

    /// A pool whose sessions start with the server `options` given (`-c name=value …`).
    pub(crate) fn pool_with_options(
        &self,
        max_size: usize,
        options: &str,
    ) -> Result<deadpool_postgres::Pool> {
        use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
        let mut config = self.to_tokio_postgres();
        if !options.is_empty() {
            config.options(options);
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match crate::tls::make_tls_connect(self)? {
            Some(tls) => Manager::from_config(config, tls, manager_config),
            None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
        };
        Pool::builder(manager)
            .max_size(max_size)
            .build()
            .map_err(|e| {
                Error::new(ErrorKind::Config, "could not build the connection pool").with_source(e)
            })
    }
}

async fn drive<F>(connection: F)
where
    F: std::future::Future<Output = std::result::Result<(), tokio_postgres::Error>>,
{
    if let Err(error) = connection.await {
        tracing::debug!(%error, "sql connection closed");
    }
}

impl FromStr for ConnectOptions {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Self::parse_url(s)
        } else {
            Self::parse_key_values(s)
        }
    }
}

fn parse_host(host: String) -> Host {
    if host.starts_with('/') {
        Host::Unix(host.into())
    } else {
        Host::Tcp(host)
    }
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn percent_decode(text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::config("invalid percent-encoding (write % as %25)"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::config("percent-encoding that is not UTF-8"))
}

/// `url` with the password (after the user name, or in a `password` parameter) replaced by
/// `***`, for messages.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let rest = match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => rest.to_owned(),
    };
    let Some((start, query)) = rest.split_once('?') else {
        return format!("{scheme}://{rest}");
    };
    let query: Vec<&str> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("password", _)) => "password=***",
            _ => pair,
        })
        .collect();
    format!("{scheme}://{start}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ConnectOptions {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn url_with_everything() {
        let o = parse("postgresql://u%20x:p%3Aw@[::1]:5433/my%2Fdb?sslmode=verify-ca&sslrootcert=/ca.pem&application_name=bemi&connect_timeout=5");
        assert_eq!(o.host(), &Host::Tcp("::1".into()));
        assert_eq!(o.port(), 5433);
        assert_eq!(o.user(), "u x");
        assert_eq!(o.password(), Some("p:w"));
        assert_eq!(o.dbname(), "my/db");
        assert_eq!(o.ssl_mode(), SslMode::VerifyCa);
        assert_eq!(o.ssl_root_cert(), Some(Path::new("/ca.pem")));
        assert_eq!(o.application_name(), Some("bemi"));
        assert_eq!(o.connect_timeout(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn url_defaults_and_socket_host() {
        let o = parse("postgres://");
        assert_eq!(o, ConnectOptions::default());
        assert_eq!(o.dbname(), "postgres");
        let o = parse("postgres://app@%2Ftmp%2Fpg/db");
        assert_eq!(o.host(), &Host::Unix("/tmp/pg".into()));
        assert_eq!(o.dbname(), "db");
        let o = parse("postgres:///db?host=/run/pg&port=7");
        assert_eq!(o.host(), &Host::Unix("/run/pg".into()));
        assert_eq!(o.port(), 7);
    }

    #[test]
    fn key_values_with_quotes_and_escapes() {
        let o = parse(
            "host=db.local port = 6000 user='a b' password='it\\'s' dbname=x sslmode=require",
        );
        assert_eq!(o.host(), &Host::Tcp("db.local".into()));
        assert_eq!(o.port(), 6000);
        assert_eq!(o.user(), "a b");
        assert_eq!(o.password(), Some("it's"));
        assert_eq!(o.dbname(), "x");
        assert_eq!(o.ssl_mode(), SslMode::Require);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = |s: &str| s.parse::<ConnectOptions>().unwrap_err().to_string();
        assert!(err("sslmode=sometimes").contains("verify-full"));
        assert!(err("port=abc").contains("invalid port"));
        assert!(err("colour=blue").contains("unknown connection parameter"));
        assert!(err("user='open").contains("unterminated"));
        assert!(err("postgres://h/db?sslmode").contains("no value"));
        assert!(err("postgres://u%zz@h").contains("percent"));
    }

    #[test]
    fn urls_round_trip() {
        for text in [
            "postgres://u%20x:p%3Aw@[::1]:5433/my%2Fdb?sslmode=verify-ca&sslrootcert=/ca.pem&application_name=bemi&connect_timeout=5",
            "host=/tmp/pg port=7 user=app dbname=db",
            "postgres://app@localhost/db",
        ] {
            let options = parse(text);
            assert_eq!(parse(&options.to_url()), options, "{}", options.to_url());
        }
    }

    #[test]
    fn errors_never_quote_the_password() {
        let password = "p%w/o?r@d";
        for text in [
            format!("postgres://app:{password}@db:5432/shop"),
            format!("postgres://app:{password}@db:54x/shop"),
            "postgres://app:p%zz@db/shop".to_owned(),
            format!("postgres://app@db/shop?password={password}&sslmode=sometimes"),
            format!("host=db password={} port=1", password.replace('/', " ")),
        ] {
            let e = text.parse::<ConnectOptions>().unwrap_err().to_string();
            for part in ["p%w", "o?r", "r@d", "p%zz", "w o"] {
                assert!(!e.contains(part), "{text} → {e}");
            }
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let o = parse("password=hunter2");
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}
