//! `bemi`: track a PostgreSQL database's changes into Bemi's `changes` table.
//!
//! ```text
//! bemi [run]   the worker (default): stream changes with their context into `changes`;
//!              --config bemi.toml for several databases, --metrics-listen for Prometheus
//! bemi setup   prepare the source database (publication, replica identity, slot)
//! bemi status  slot state, lag and the newest stored change
//! bemi demo [--ui]  a self-contained tour on a throwaway PostgreSQL (--ui: then browse it)
//! bemi history TABLE PK [--at TIME]   a record's changes, or the record as it was
//! bemi changes [filters]              the changes that match filters, a page at a time
//! bemi revert [filters] [--dry-run]   undo changes in one transaction with its own context
//! bemi migrate --partition [--print-sql]  partition an existing `changes` table, keeping every row
//! bemi retention [--dry-run]          drop the partitions of `changes` past the retention window
//! bemi store --from nats://…          write the changes on NATS JetStream into `changes`
//! bemi check-config FILE              validate a bemi.toml (sources and rules)
//! bemi ui [--allow-revert] [--token]  the audit trail in a browser, on 127.0.0.1:4000
//! ```
//!
//! Settings come from flags or from Bemi's variables (`DB_HOST`, `DB_PORT`, `DB_NAME`,
//! `DB_USER`, `DB_PASSWORD`, `DESTINATION_DB_*`, `LOG_LEVEL`) or `DATABASE_URL`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod args;
mod changes;
mod check_config;
mod config;
mod database;
mod demo;
mod filter;
mod history;
mod migrate;
mod monitor;
mod nats;
mod output;
mod retention;
mod revert;
mod rules_file;
mod run;
mod setup;
mod status;
mod store;
mod ui;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser as _;

use args::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run(cli.run));
    let quiet = matches!(
        command,
        Command::Demo(_)
            | Command::Status(_)
            | Command::History(_)
            | Command::Changes(_)
            | Command::Revert(_)
            | Command::Retention(_)
            | Command::CheckConfig(_)
    );
    if let Err(e) = init_logging(cli.log_level.as_deref(), quiet) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let result = match command {
        Command::Run(args) => run::run(args).await,
        Command::Setup(args) => setup::setup(args).await,
        Command::Status(args) => status::status(args).await,
        Command::Demo(args) => demo::demo(args).await,
        Command::History(args) => history::history(args).await,
        Command::Changes(args) => changes::changes(args).await,
        Command::Revert(args) => revert::revert(args).await,
        Command::Migrate(args) => migrate::migrate(args).await,
        Command::Retention(args) => retention::retention(args).await,
        Command::Store(args) => store::store(args).await,
        Command::CheckConfig(args) => check_config::check_config(args).await,
        Command::Ui(args) => ui::ui(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.report());
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, in colour only on a terminal. `LOG_LEVEL` (Bemi's variable: DEBUG, INFO,
/// WARN, ERROR) or `--log-level` sets the level; `RUST_LOG` takes precedence for fine-grained
/// filters. The database driver's own log (target `tokio_postgres`) stays off unless a filter
/// names it: at debug level it holds every statement's parameters, which are audited values.
fn init_logging(level: Option<&str>, quiet: bool) -> Result<(), String> {
    let default = if quiet { "warn" } else { "info" };
    let mut spec = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => spec,
        _ => level.unwrap_or(default).to_owned(),
    };
    if !spec.contains("tokio_postgres") {
        spec.push_str(",tokio_postgres=off");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .map_err(|e| format!("invalid RUST_LOG: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}
