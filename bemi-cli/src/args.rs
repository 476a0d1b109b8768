//! Command-line flags and environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bemi_core::changes_table::{PartitionInterval, Retention};
use bemi_core::setup::Tables;
use bemi_core::{ConnectOptions, Result, SslMode};
use bemi_query::TableName;
use clap::{Args, Parser, Subcommand};

/// Track every change in a PostgreSQL database, with its application context, into Bemi's
/// `changes` table.
#[derive(Debug, Parser)]
#[command(name = "bemi", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,

    /// Log level: error, warn, info, debug or trace, in any case (Bemi's LOG_LEVEL; RUST_LOG
    /// overrides)
    #[arg(
        long,
        env = "LOG_LEVEL",
        global = true,
        help_heading = "Logging",
        value_parser = parse_log_level
    )]
    pub(crate) log_level: Option<String>,

    #[command(flatten)]
    pub(crate) run: RunArgs,
}

/// The levels `LOG_LEVEL` accepts, in any case.
const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// A `LOG_LEVEL`, lowercased; anything else is refused with the list (a typo must not leave
/// the worker silent).
fn parse_log_level(text: &str) -> Result<String, String> {
    let level = text.to_ascii_lowercase();
    if LOG_LEVELS.contains(&level.as_str()) {
        Ok(level)
    } else {
        Err(format!("use one of {}", LOG_LEVELS.join(", ")))
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the worker (the default): stream changes with their context into `changes`,
    /// until SIGTERM or SIGINT, then flush and exit 0
    Run(RunArgs),
    /// Prepare the source database: check wal_level, create the publication, set REPLICA
    /// IDENTITY FULL (and an event trigger keeping it for new tables), create the slot
    Setup(SetupArgs),
    /// Show the slot's state, the lag and the newest stored change
    Status(StatusArgs),
    /// A self-contained tour: tracks a `todo` table on a throwaway PostgreSQL (or the given
    /// database) and prints the audit trail
    Demo(DemoArgs),
    /// A record's changes, oldest first; with --at, the record (or the whole table) as it was
    /// at a moment
    History(crate::history::HistoryArgs),
    /// The changes that match filters (table, key, operation, time, JSON containment), a page
    /// at a time
    Changes(crate::changes::ChangesArgs),
    /// Write the changes a `bemi run --destination nats://…` publishes into `changes`, exactly
    /// once; several processes share the work
    Store(crate::store::StoreArgs),
    /// Undo the changes that match filters (a transaction, a request's context, a time range)
    /// in one transaction with its own context; refuses on conflicting later edits
    Revert(crate::revert::RevertArgs),
    /// Partition an unpartitioned `changes` table (Bemi's, or an earlier version's) on
    /// committed_at, keeping every row; says what it locks and for how long
    Migrate(crate::migrate::MigrateArgs),
    /// Drop (or archive) the partitions of `changes` older than the retention window, as the
    /// worker does hourly; --dry-run shows them
    Retention(crate::retention::RetentionCommandArgs),
    /// Validate a bemi.toml: errors (with their line) for what cannot work, warnings for table
    /// patterns and columns of the rules that match nothing in a source it can reach
    CheckConfig(crate::check_config::CheckConfigArgs),
    /// The audit trail in a browser: changes, diffs, a record's timeline and time travel,
    /// reverts (with --allow-revert) and status; on 127.0.0.1:4000 by default
    Ui(crate::ui::UiArgs),
}

/// How to connect to the tracked database.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConnectionArgs {
    /// Connection URL of the tracked database, e.g. postgres://user:pass@host:5432/app
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: Option<String>,
    /// Host of the tracked database (used when no URL is given)
    #[arg(long, env = "DB_HOST")]
    pub(crate) db_host: Option<String>,
    /// Port of the tracked database
    #[arg(long, env = "DB_PORT")]
    pub(crate) db_port: Option<u16>,
    /// Name of the tracked database
    #[arg(long, env = "DB_NAME")]
    pub(crate) db_name: Option<String>,
    /// User for the tracked database (`run` needs REPLICATION, `setup` a superuser)
    #[arg(long, env = "DB_USER")]
    pub(crate) db_user: Option<String>,
    /// Password for the tracked database
    #[arg(long, env = "DB_PASSWORD", hide_env_values = true)]
    pub(crate) db_password: Option<String>,
    /// TLS mode: disable, prefer, require, verify-ca or verify-full
    #[arg(long, env = "DB_SSL_MODE")]
    pub(crate) sslmode: Option<String>,
    /// PEM file of trusted certificate authorities, for verify-ca and verify-full
    #[arg(long, env = "DB_SSL_ROOT_CERT")]
    pub(crate) sslrootcert: Option<PathBuf>,
}

/// The tracked database, the slot and the publication.
#[derive(Debug, Clone, Args)]
pub(crate) struct SourceArgs {
    #[command(flatten)]
    pub(crate) connection: ConnectionArgs,
    /// Replication slot name
    #[arg(long, env = "BEMI_SLOT", default_value = "bemi")]
    pub(crate) slot: String,
    /// Publication name
    #[arg(long, env = "BEMI_PUBLICATION", default_value = "bemi")]
    pub(crate) publication: String,
    /// Tables to track, comma-separated (default: all tables): `table` or `schema.table`, a
    /// part holding a dot or a double quote in double quotes, e.g. '"my.table"'
    #[arg(long, env = "BEMI_TABLES", value_delimiter = ',')]
    pub(crate) tables: Vec<TableName>,
}

/// Where `changes` goes; each setting falls back to the tracked database's.
#[derive(Debug, Clone, Args)]
pub(crate) struct DestinationArgs {
    /// Connection URL of the database that stores `changes` (default: the tracked database)
    #[arg(long, env = "DESTINATION_DATABASE_URL", hide_env_values = true)]
    pub(crate) destination_url: Option<String>,
    /// Host of the destination database (falls back to DB_HOST)
    #[arg(long, env = "DESTINATION_DB_HOST")]
    pub(crate) destination_db_host: Option<String>,
    /// Port of the destination database (falls back to DB_PORT)
    #[arg(long, env = "DESTINATION_DB_PORT")]
    pub(crate) destination_db_port: Option<u16>,
    /// Name of the destination database (falls back to DB_NAME)
    #[arg(long, env = "DESTINATION_DB_NAME")]
    pub(crate) destination_db_name: Option<String>,
    /// User for the destination database (falls back to DB_USER)
    #[arg(long, env = "DESTINATION_DB_USER")]
    pub(crate) destination_db_user: Option<String>,
    /// Password for the destination database (falls back to DB_PASSWORD)
    #[arg(long, env = "DESTINATION_DB_PASSWORD", hide_env_values = true)]
    pub(crate) destination_db_password: Option<String>,
    /// Schema of the `changes` table
    #[arg(long, env = "BEMI_DESTINATION_SCHEMA", default_value = "public")]
    pub(crate) destination_schema: String,
}

/// How the partitions of a `changes` table the worker creates span time.
#[derive(Debug, Clone, Args)]
pub(crate) struct PartitionArgs {
    /// Time each partition of `changes` spans, in UTC: day, week or month (a table the worker
    /// creates is partitioned on committed_at)
    #[arg(long, env = "BEMI_PARTITION_INTERVAL", default_value = "month")]
    pub(crate) partition_interval: PartitionInterval,
}

/// How long `changes` keeps changes.
#[derive(Debug, Clone, Args)]
pub(crate) struct RetentionArgs {
    /// Keep changes this long, then drop their partition whole (e.g. 90d, 12w, 36h; default:
    /// keep everything). Never deletes rows one by one
    #[arg(long, env = "BEMI_RETENTION")]
    pub(crate) retention: Option<Retention>,
    /// Detach expired partitions into this schema instead of dropping them
    #[arg(long, env = "BEMI_ARCHIVE_SCHEMA")]
    pub(crate) archive_schema: Option<String>,
}

impl RetentionArgs {
    /// The retention, with its archive schema; an archive schema without a window is refused.
    pub(crate) fn retention(&self) -> Result<Option<Retention>> {
        match (&self.retention, &self.archive_schema) {
            (Some(retention), Some(schema)) => Ok(Some(retention.clone().archive_to(schema))),
            (retention, None) => Ok(retention.clone()),
            (None, Some(_)) => Err(bemi_core::Error::config(
                "--archive-schema (BEMI_ARCHIVE_SCHEMA) needs --retention (BEMI_RETENTION): \
                 partitions go to the archive once they are past the retention window",
            )),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) source: SourceArgs,
    #[command(flatten)]
    pub(crate) destination: DestinationArgs,
    #[command(flatten)]
    pub(crate) partitions: PartitionArgs,
    #[command(flatten)]
    pub(crate) retention: RetentionArgs,
    /// Most changes written to `changes` in one statement
    #[arg(long, env = "BEMI_BATCH_SIZE", default_value_t = 1000)]
    pub(crate) batch_size: usize,
    /// Longest wait, in milliseconds, before a partial batch is written
    #[arg(long, env = "BEMI_FLUSH_INTERVAL_MS", default_value_t = 100)]
    pub(crate) flush_interval_ms: u64,
    /// How long, in milliseconds, a committed change waits for others to join its batch
    /// before an idle destination gets it (fewer, larger writes under load)
    #[arg(long, env = "BEMI_LINGER_MS", default_value_t = 5)]
    pub(crate) linger_ms: u64,
    /// Start even though changes between the stored position and the slot's are gone (a
    /// destination restored from an older backup, a lost slot); the gap is recorded in
    /// `changes`. Applies to this start only
    #[arg(long)]
    pub(crate) accept_gap: bool,
    /// Do not set REPLICA IDENTITY FULL on tables lacking it nor install the event trigger
    /// that keeps it for new tables (`before` of updates and deletes then holds only the key)
    #[arg(long)]
    pub(crate) no_replica_identity: bool,
    /// Track the sources listed in this file (bemi.toml), each with its own slot and
    /// destination, instead of the one the connection flags and variables name
    #[arg(
        long,
        env = "BEMI_CONFIG",
        help_heading = "Several databases",
        conflicts_with_all = [
            "database_url", "db_host", "db_port", "db_name", "db_user", "db_password",
            "sslmode", "sslrootcert", "slot", "publication", "tables", "destination_url",
            "destination_db_host", "destination_db_port", "destination_db_name",
            "destination_db_user", "destination_db_password", "destination_schema",
            "nats_destination", "output",
        ]
    )]
    pub(crate) config: Option<PathBuf>,
    /// Filter rules for the source of the flags and variables: a file with the `[rules]` table
    /// of a bemi.toml and no `[[source]]` (with --config, the file's own `[rules]` apply)
    #[arg(long, env = "BEMI_RULES", conflicts_with = "config")]
    pub(crate) rules: Option<PathBuf>,
    /// Serve metrics (Prometheus text at /metrics) and health checks (/healthz, /readyz) on
    /// this address, e.g. 127.0.0.1:9187
    #[arg(long, env = "BEMI_METRICS_LISTEN", help_heading = "Monitoring")]
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// /readyz fails while a source's replication lag is above this many bytes
    #[arg(
        long,
        env = "BEMI_READY_MAX_LAG_BYTES",
        default_value_t = 128 * 1024 * 1024,
        help_heading = "Monitoring"
    )]
    pub(crate) ready_max_lag_bytes: u64,
    /// Publish to NATS JetStream instead of a `changes` table: nats://host:4222 (several
    /// comma-separated; tls://… for TLS); `bemi store` then writes the stream into `changes`
    #[arg(long = "destination", env = "BEMI_DESTINATION", value_parser = parse_nats_url)]
    pub(crate) nats_destination: Option<String>,
    #[command(flatten)]
    pub(crate) nats: crate::nats::NatsArgs,
    /// Append the changes as JSON lines to this file instead of a `changes` table, exactly
    /// once (the file's position is kept in FILE.position)
    #[arg(
        long,
        env = "BEMI_OUTPUT",
        value_name = "FILE",
        conflicts_with = "nats_destination"
    )]
    pub(crate) output: Option<PathBuf>,
    /// With --output or a NATS destination, a backlog of at least this many bytes of WAL at
    /// start is read through SQL, faster than streaming, before streaming resumes (catch-up)
    #[arg(long, env = "BEMI_CATCH_UP_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub(crate) catch_up_bytes: u64,
}

/// A NATS URL (nats:// or tls://); anything else is refused with where it belongs.
fn parse_nats_url(text: &str) -> Result<String, String> {
    if crate::nats::is_nats_url(text) {
        Ok(text.to_owned())
    } else {
        Err(
            "expected a NATS URL (nats://… or tls://…); a PostgreSQL destination is \
             --destination-url"
                .to_owned(),
        )
    }
}

#[derive(Debug, Clone, Args)]
pub(crate) struct SetupArgs {
    #[command(flatten)]
    pub(crate) source: SourceArgs,
    /// Print the SQL instead of running it (for DBAs), with least-privilege roles for the
    /// worker and their pg_hba.conf lines
    #[arg(long)]
    pub(crate) print_sql: bool,
    /// Schema of the `changes` table, owned by the destination role that --print-sql prints
    #[arg(long, env = "BEMI_DESTINATION_SCHEMA", default_value = "public")]
    pub(crate) destination_schema: String,
    /// Filter rules (a file with the `[rules]` table of a bemi.toml, as `bemi run --rules`):
    /// when `track` names every table without globs, the publication created holds those
    /// tables but the ignored ones; tables the rules do not track keep their replica identity
    #[arg(long, env = "BEMI_RULES")]
    pub(crate) rules: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) source: SourceArgs,
    #[command(flatten)]
    pub(crate) destination: DestinationArgs,
    #[command(flatten)]
    pub(crate) retention: RetentionArgs,
    /// Print JSON for scripts
    #[arg(long)]
    pub(crate) json: bool,
    /// Also print the rules of this file (bemi.toml): those a worker started with it applies
    #[arg(long, env = "BEMI_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct DemoArgs {
    /// Connection URL of a database to run the demo in (default: a throwaway PostgreSQL)
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: Option<String>,
    /// Then keep the database and the tracker running and open the audit trail UI on it
    /// (reverts allowed) until Ctrl-C
    #[arg(long)]
    pub(crate) ui: bool,
    /// Where the UI listens, with --ui
    #[arg(long, default_value = "127.0.0.1:4000", requires = "ui")]
    pub(crate) listen: std::net::SocketAddr,
}

impl SourceArgs {
    /// Connection settings of the tracked database.
    pub(crate) fn options(&self) -> Result<ConnectOptions> {
        self.connection.options()
    }

    pub(crate) fn tables(&self) -> Tables {
        if self.tables.is_empty() {
            Tables::All
        } else {
            Tables::Only(self.tables.clone())
        }
    }
}

impl ConnectionArgs {
    /// Connection settings: the URL, then DB_* values over it.
    pub(crate) fn options(&self) -> Result<ConnectOptions> {
        let mut options = match &self.database_url {
            Some(url) => url.parse()?,
            None => ConnectOptions::new().with_application_name("bemi"),
        };
        if let Some(host) = &self.db_host {
            options = options.with_host(host);
        }
        if let Some(port) = self.db_port {
            options = options.with_port(port);
        }
        if let Some(name) = &self.db_name {
            options = options.with_dbname(name);
        }
        if let Some(user) = &self.db_user {
            options = options.with_user(user);
        }
        if let Some(password) = &self.db_password {
            options = options.with_password(password);
        }
        if let Some(mode) = &self.sslmode {
            options = options.with_ssl_mode(mode.parse::<SslMode>()?);
        }
        if let Some(cert) = &self.sslrootcert {
            options = options.with_ssl_root_cert(cert);
        }
        Ok(options)
    }
}

impl DestinationArgs {
    /// The `changes` table these arguments name.
    pub(crate) fn changes_table(&self) -> bemi_query::ChangesTable {
        bemi_query::ChangesTable::new(&self.destination_schema, "changes")
    }

    /// Destination settings: the URL, or the source's settings with DESTINATION_DB_* over them.
    pub(crate) fn options(&self, source: &ConnectOptions) -> Result<ConnectOptions> {
        let mut options = match &self.destination_url {
            Some(url) => url.parse()?,
            None => source.clone(),
        };
        if let Some(host) = &self.destination_db_host {
            options = options.with_host(host);
        }
        if let Some(port) = self.destination_db_port {
            options = options.with_port(port);
        }
        if let Some(name) = &self.destination_db_name {
            options = options.with_dbname(name);
        }
        if let Some(user) = &self.destination_db_user {
            options = options.with_user(user);
        }
        if let Some(password) = &self.destination_db_password {
            options = options.with_password(password);
        }
        Ok(options)
    }
}

impl RunArgs {
    pub(crate) fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    pub(crate) fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }
}
