//! A throwaway PostgreSQL server for tests, examples and `bemi demo`, from the PostgreSQL
//! server binaries installed on the machine. Unix only (it runs `initdb`, `pg_ctl` and a
//! `sh` watchdog, and connects over a Unix socket).
//!
//! [`TempPostgres::start`] finds PostgreSQL 14+ server binaries, runs `initdb` into a fresh
//! temporary directory and starts a server configured for logical replication on a free
//! `127.0.0.1` port, with its Unix socket in the same directory. When the current process runs as
//! root (PostgreSQL refuses to), the server runs as the unprivileged `postgres` user.
//!
//! The directory is `/tmp/bemi-pg-*`, or under `$BEMI_PG_TMP` when set (keep it short: the
//! Unix socket path must fit in about 100 bytes). Dropping the value stops the server and
//! removes the directory. A small watchdog process does
//! the same when this process dies without dropping it (a panic that aborts, `SIGKILL`, a
//! `static` that is never dropped): it waits on a pipe that only this process holds open, and
//! the kernel closes that pipe however the process ends.
//!
//! ```no_run
//! # fn main() -> bemi_temp_postgres::Result<()> {
//! let pg = bemi_temp_postgres::TempPostgres::start()?;
//! println!("connect to {}", pg.url("postgres"));
//! # Ok(()) }
//! ```

#![cfg(unix)]
#![forbid(unsafe_code)]
use std::borrow::Cow;
use std::fmt;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The oldest PostgreSQL major version the tracker supports (logical messages in pgoutput).
pub const MIN_SERVER_VERSION: u32 = 14;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const START_ATTEMPTS: usize = 5;

/// Settings for a [`TempPostgres`] before it starts.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    settings: Vec<(String, String)>,
    hba: Vec<String>,
    files: Vec<(String, Vec<u8>)>,
}

impl Builder {
    /// Adds a server setting, passed as `-c name=value` (overrides the defaults).
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Adds a `pg_hba.conf` line, checked before the defaults (which trust every local and
    /// loopback connection, replication included).
    pub fn hba_line(mut self, line: impl Into<String>) -> Self {
        self.hba.push(line.into());
        self
    }

    /// Writes a file into the data directory before the server starts (certificates, keys).
    /// Files are readable only by the server's user, as PostgreSQL requires for keys.
    pub fn file(mut self, name: impl Into<String>, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.into(), contents.into()));
        self
    }

    /// Creates the cluster and starts the server; blocks until it accepts connections.
    pub fn start(self) -> Result<TempPostgres> {
        let bin = find_bindir()?;
        let owner = ServerUser::current()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match TempPostgres::try_start(&self, &bin, &owner) {
                Ok(pg) => return Ok(pg),
                // Another process can take the free port between our check and the server's
                // bind; only that case is worth another attempt.
                Err(StartError::PortTaken(e)) => last_error = Some(e),
                Err(StartError::Failed(e)) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| embedded_error("could not start PostgreSQL")))
    }
}

/// A running throwaway PostgreSQL server; stopped and deleted on drop. See the [module docs](self).
#[derive(Debug)]
pub struct TempPostgres {
    dir: PathBuf,
    port: u16,
    version: u32,
    bindir: PathBuf,
    /// The postgres arguments after `-D`, for `pg_ctl start`/`restart`.
    server_args: Vec<String>,
    server: Child,
    watchdog: Option<(Child, ChildStdin)>,
}

enum StartError {
    PortTaken(Error),
    Failed(Error),
}

impl From<Error> for StartError {
    fn from(e: Error) -> Self {
        StartError::Failed(e)
    }
}

impl TempPostgres {
    /// Starts a server with the default settings.
    pub fn start() -> Result<TempPostgres> {
        Builder::default().start()
    }

    /// Settings for a server before starting it.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host to connect to over TCP.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The directory that holds the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The directory of the server binaries in use (`pg_ctl`, `psql`, `pg_recvlogical`, …).
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The server's major version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// A connection URL for `database` as the superuser `postgres` over TCP.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A key/value connection string for `database` as the superuser `postgres` over TCP.
    pub fn connection_string(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={database}",
            self.port
        )
    }

    /// Restarts the server with `pg_ctl restart -m fast` (for tests of reconnection).
    pub fn restart(&self) -> Result<()> {
        self.pg_ctl("restart", "fast")
    }

    /// Stops the server with `pg_ctl stop -m fast`; [`start_again`](Self::start_again) brings
    /// it back on the same port (for tests of outages). The directory stays until drop.
    pub fn stop(&self) -> Result<()> {
        self.pg_ctl("stop", "fast")
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`: no checkpoint, and WAL
    /// not yet written from memory is lost); [`start_again`](Self::start_again) brings it back
    /// through crash recovery (for tests of durability).
    pub fn crash(&self) -> Result<()> {
        self.pg_ctl("stop", "immediate")
    }

    /// Starts a server stopped by [`stop`](Self::stop) or [`crash`](Self::crash), with the same
    /// settings.
    pub fn start_again(&self) -> Result<()> {
        self.pg_ctl("start", "fast")
    }

    fn pg_ctl(&self, action: &str, mode: &str) -> Result<()> {
        let owner = ServerUser::current()?;
        let log = self.dir.join("pg_ctl.log");
        let mut cmd = Command::new(self.bindir.join("pg_ctl"));
        cmd.arg(action)
            .args(["-m", mode, "-w", "-t", "60", "-D"])
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log);
        if action != "stop" {
            cmd.arg("-o").arg(self.server_args.join(" "));
        }
        owner.apply(&mut cmd);
        let status = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .status()
            .map_err(|e| embedded_error(format!("could not run pg_ctl {action}")).with_source(e))?;
        if status.success() {
            Ok(())
        } else {
            Err(embedded_error(format!(
                "pg_ctl {action} failed ({status}); see {}",
                log.display()
            )))
        }
    }

    fn try_start(
        builder: &Builder,
        bin: &BinDir,
        owner: &ServerUser,
    ) -> Result<TempPostgres, StartError> {
        let dir = make_temp_dir()?;
        owner.chown(&dir)?;
        // From here on the watchdog owns the directory's removal.
        let port = free_port()?;
        let data = dir.join("data");

        let mut initdb = Command::new(bin.path.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        owner.apply(&mut initdb);
        let out = initdb
            .stdin(Stdio::null())
            .output()
            .map_err(|e| embedded_error("could not run initdb").with_source(e))?;
        if !out.status.success() {
            let _ = fs::remove_dir_all(&dir);
            return Err(embedded_error(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
            .into());
        }

        let mut hba = builder.hba.join("\n");
        hba.push_str(
            "\nlocal all all trust\nhost all all 127.0.0.1/32 trust\n\
             local replication all trust\nhost replication all 127.0.0.1/32 trust\n",
        );
        let write = |name: &str, contents: &[u8]| -> Result<()> {
            let path = data.join(name);
            fs::write(&path, contents)
                .and_then(|()| {
                    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                })
                .map_err(|e| {
                    embedded_error(format!("could not write {}", path.display())).with_source(e)
                })?;
            owner.chown(&path)
        };
        write("pg_hba.conf", hba.as_bytes())?;
        for (name, contents) in &builder.files {
            write(name, contents)?;
        }

        let log_path = dir.join("postgres.log");
        let log = fs::File::create(&log_path)
            .map_err(|e| embedded_error("could not create the server log").with_source(e))?;
        owner.chown(&log_path)?;
        let mut server_args = vec!["-p".to_owned(), port.to_string()];
        let defaults = [
            ("listen_addresses", "127.0.0.1".to_owned()),
            ("unix_socket_directories", dir.display().to_string()),
            ("wal_level", "logical".to_owned()),
            ("max_replication_slots", "100".to_owned()),
            ("max_wal_senders", "100".to_owned()),
            ("max_connections", "300".to_owned()),
            ("fsync", "off".to_owned()),
            ("full_page_writes", "off".to_owned()),
            ("shared_buffers", "64MB".to_owned()),
            ("logical_decoding_work_mem", "64MB".to_owned()),
        ];
        for (name, value) in defaults.iter().map(|(n, v)| (*n, v.as_str())).chain(
            builder
                .settings
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str())),
        ) {
            server_args.push("-c".to_owned());
            server_args.push(format!("{name}={value}"));
        }
        let mut postgres = Command::new(bin.path.join("postgres"));
        postgres.arg("-D").arg(&data).args(&server_args);
        owner.apply(&mut postgres);
        let log_err = log
            .try_clone()
            .map_err(|e| embedded_error("could not open the server log").with_source(e))?;
        let server = postgres
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .map_err(|e| embedded_error("could not start postgres").with_source(e))?;

        let watchdog = spawn_watchdog(server.id(), &dir)?;
        let mut pg = TempPostgres {
            dir,
            port,
            version: bin.version,
            bindir: bin.path.clone(),
            server_args,
            server,
            watchdog: Some(watchdog),
        };
        pg.wait_ready(&log_path)?;
        tracing::debug!(port, dir = %pg.dir.display(), "throwaway postgres started");
        Ok(pg)
    }

    fn wait_ready(&mut self, log_path: &Path) -> Result<(), StartError> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let log = fs::read_to_string(log_path).unwrap_or_default();
            if log.contains("database system is ready to accept connections") {
                return Ok(());
            }
            let exited = self.server.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let e = embedded_error(format!(
                    "postgres did not start; its log says:\n{}",
                    log.trim()
                ));
                return Err(
                    if log.contains("could not bind") || log.contains("in use") {
                        StartError::PortTaken(e)
                    } else {
                        StartError::Failed(e)
                    },
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if let Some((mut watchdog, stdin)) = self.watchdog.take() {
            // Closing the pipe tells the watchdog to stop the server and delete the directory.
            drop(stdin);
            let _ = self.server.wait();
            let _ = watchdog.wait();
        }
    }
}

/// Starts the watchdog: a shell that blocks reading a pipe only we hold, then stops the
/// server (immediate shutdown) and removes the directory. Terminal signals are ignored so that
/// Ctrl-C on the test run cannot kill it before it has cleaned up.
fn spawn_watchdog(server_pid: u32, dir: &Path) -> Result<(Child, ChildStdin)> {
    // $1: the first postmaster's PID; $2: the directory. After restarts the running postmaster
    // is the one named in postmaster.pid.
    const SCRIPT: &str = r#"trap '' INT TERM HUP
cat >/dev/null
current=$(head -n1 "$2/data/postmaster.pid" 2>/dev/null)
kill -QUIT "$1" $current 2>/dev/null
i=0
while { kill -0 "$1" || { [ -n "$current" ] && kill -0 "$current"; }; } 2>/dev/null && [ "$i" -lt 600 ]; do
  sleep 0.05
  i=$((i+1))
done
kill -KILL "$1" $current 2>/dev/null
rm -rf "$2""#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("bemi-pg-watchdog")
        .arg(server_pid.to_string())
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| embedded_error("could not start the cleanup watchdog (sh)").with_source(e))?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| embedded_error("the watchdog has no stdin pipe"))?;
    Ok((child, stdin))
}

/// Server binaries and their major version.
#[derive(Debug, Clone)]
struct BinDir {
    path: PathBuf,
    version: u32,
}

/// Finds PostgreSQL 14+ server binaries: `$BEMI_PG_BINDIR`, then `PATH`, then
/// `pg_config --bindir`, then `/usr/lib/postgresql/*/bin` (newest first).
fn find_bindir() -> Result<BinDir> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("BEMI_PG_BINDIR") {
        candidates.push(dir.into());
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            candidates.push(String::from_utf8_lossy(&out.stdout).trim().into());
        }
    }
    let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .collect();
    versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
    candidates.extend(versioned.into_iter().map(|(_, p)| p));

    let mut too_old = Vec::new();
    for dir in candidates {
        if !dir.join("initdb").is_file() || !dir.join("postgres").is_file() {
            continue;
        }
        // Links such as /usr/local/bin/postgres lead to the real directory, which also holds
        // psql, pg_ctl and pg_recvlogical.
        let dir = fs::canonicalize(dir.join("postgres"))
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or(dir);
        match server_version(&dir) {
            Some(v) if v >= MIN_SERVER_VERSION => {
                return Ok(BinDir {
                    path: dir,
                    version: v,
                })
            }
            Some(v) => too_old.push(format!("{} (PostgreSQL {v})", dir.display())),
            None => {}
        }
    }
    let mut message = String::from(
        "no PostgreSQL 14+ server binaries (initdb, postgres) found in $BEMI_PG_BINDIR, PATH, \
         `pg_config --bindir` or /usr/lib/postgresql/*/bin; install them (Debian/Ubuntu: \
         apt-get install postgresql) or set BEMI_PG_BINDIR",
    );
    if !too_old.is_empty() {
        message.push_str("; too old: ");
        message.push_str(&too_old.join(", "));
    }
    Err(embedded_error(message))
}

fn server_version(dir: &Path) -> Option<u32> {
    let out = Command::new(dir.join("postgres"))
        .arg("--version")
        .output()
        .ok()?;
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(2)?;
    version.split(['.', 'b', 'r']).next()?.parse().ok()
}

/// The user the server runs as: ourselves, or `postgres` when we are root.
#[derive(Debug, Clone, Copy)]
struct ServerUser {
    ids: Option<(u32, u32)>,
}

impl ServerUser {
    fn current() -> Result<ServerUser> {
        let euid = fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(u32::MAX);
        if euid != 0 {
            return Ok(ServerUser { ids: None });
        }
        let mut passwd = String::new();
        fs::File::open("/etc/passwd")
            .and_then(|mut f| f.read_to_string(&mut passwd))
            .map_err(|e| embedded_error("could not read /etc/passwd").with_source(e))?;
        let ids = passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            if fields.next()? != "postgres" {
                return None;
            }
            let uid = fields.nth(1)?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some((uid, gid))
        });
        match ids {
            Some(ids) => Ok(ServerUser { ids: Some(ids) }),
            None => Err(embedded_error(
                "running as root, and PostgreSQL refuses to run as root, but there is no \
                 `postgres` user to run it as; create one (useradd --system postgres) or run as \
                 an unprivileged user",
            )),
        }
    }

    fn apply(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.ids {
            cmd.uid(uid).gid(gid);
        }
    }

    fn chown(&self, path: &Path) -> Result<()> {
        match self.ids {
            None => Ok(()),
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| {
                embedded_error(format!("could not give {} to postgres", path.display()))
                    .with_source(e)
            }),
        }
    }
}

fn make_temp_dir() -> Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!(
        "bemi-pg-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    // /tmp rather than $TMPDIR: the Unix socket path must stay under ~100 bytes. CI points
    // BEMI_PG_TMP at a directory of its own to check that nothing is left behind.
    let parent =
        std::env::var_os("BEMI_PG_TMP").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let dir = parent.join(name);
    fs::create_dir(&dir)
        .and_then(|()| {
            fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        })
        .map_err(|e| {
            embedded_error(format!("could not create {}", dir.display())).with_source(e)
        })?;
    Ok(dir)
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| embedded_error("could not find a free port").with_source(e))?;
    let port = listener
        .local_addr()
        .map_err(|e| embedded_error("could not find a free port").with_source(e))?
        .port();
    Ok(port)
}

fn embedded_error(message: impl Into<Cow<'static, str>>) -> Error {
    Error {
        message: message.into(),
        source: None,
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the throwaway server could not be set up or driven: what failed, with the underlying
/// cause (an I/O error, the server's log) as its source.
#[derive(Debug)]
pub struct Error {
    message: Cow<'static, str>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    fn with_source(mut self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The message followed by its causes, `: `-separated.
    pub fn report(&self) -> String {
        let mut text = self.message.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Runs `psql` from the server's binaries against it (for tests and the demo); returns stdout.
impl TempPostgres {
    /// Runs SQL through `psql -v ON_ERROR_STOP=1` and returns what it printed.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let mut child = Command::new(self.bindir.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.connection_string(database))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| embedded_error("could not run psql").with_source(e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(sql.as_bytes())
                .map_err(|e| embedded_error("could not send SQL to psql").with_source(e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| embedded_error("psql failed").with_source(e))?;
        if !out.status.success() {
            return Err(embedded_error(format!(
                "psql failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
