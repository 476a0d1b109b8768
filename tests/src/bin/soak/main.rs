//! `soak`: the `bemi run` worker under a mixed workload and every fault we know how to inject,
//! for a bounded time, then `changes` compared with ground truth.
//!
//! ```sh
//! cargo run --release -p bemi-tests --bin soak -- --duration 30m [--seed N]
//! ```
//!
//! Under `cargo run` (or `cargo test`) it first builds the `bemi` binary of the same profile
//! (`cargo build -p bemi-cli`), next to its own executable; elsewhere pass `--bemi PATH`.
//! Everything runs on loopback in temporary directories: two throwaway PostgreSQL clusters
//! (the tracked source, `wal_level = logical`, and a separate destination that holds
//! `changes`), removed when the program ends, however it ends.
//!
//! What it does, for `--duration`:
//!
//! - **Workload.** Several clients write transactions on `acct` and `item` (inserts, updates,
//!   deletes, one to eight rows, sometimes a few hundred), each with its own context
//!   `{"client": c, "seq": s}` emitted as the transaction's first statement; faults and DDL
//!   add large transactions (10,000–20,000 rows on `bulk`) so that faults land mid-stream.
//! - **Faults**, spread over the run on a seeded schedule: SIGKILL of the worker (restarted at
//!   once), PostgreSQL restarts mid-stream (fast shutdown or crash) and idle (writers paused and
//!   the slot caught up first), the walsender terminated, the destination stopped and made
//!   read-only (`default_transaction_read_only`), and DDL (add, rename, retype and drop columns,
//!   create tables with rows in the same transaction, drop them) interleaved with the writes.
//!   A worker that exits on its own is a finding: it is reported with its stderr and restarted.
//! - **Ground truth.** A transaction's changes are recorded only once its `COMMIT` returned OK,
//!   from the row counts the server reported for each statement (a count other than the one
//!   intended rolls the transaction back). When the outcome of a `COMMIT` is unknown (the
//!   connection was lost while it ran), its transaction id, read with `txid_current()` inside
//!   the transaction, is looked up with `txid_status()` once the server answers again, beside
//!   the mark every transaction leaves in `soak_mark` (a row audited like the others): a
//!   visible mark records the transaction, an absent one drops it once `txid_status` says the
//!   transaction is over. The mark decides because after a crash the server hands out again the
//!   ids of transactions none of whose WAL reached the disk: `txid_status` then answers for the
//!   next owner of the id.
//! - **Check.** Writers stop, the worker catches up (the slot confirmed past the source's WAL
//!   position at the stop and the count of `changes` stable; bounded by `--catch-up-timeout`),
//!   then every stored change is matched with the expected ones by table, operation, primary key
//!   and context (client, seq): each must be there exactly once, and nothing else.
//!
//! It prints a line for each fault and a summary, and exits with status 1 when a change is lost,
//! doubled or unexpected, when the fault targets for the duration (scaled from 20 kills, 5
//! restarts, 5 destination outages and 20 DDL statements per 30 minutes) were not met, or when
//! the worker exited on its own.

mod faults;
mod truth;
mod verify;
mod worker;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bemi_temp_postgres::TempPostgres;
use clap::Parser;

use crate::truth::Truth;
use crate::worker::Worker;

/// The slot and publication the worker uses.
const SLOT: &str = "soak";
/// The tracked database on the source cluster.
const SOURCE_DB: &str = "soak";
/// The database that holds `changes` on the destination cluster.
const DESTINATION_DB: &str = "audit";

/// Runs the `bemi run` worker under a mixed workload and injected faults, then compares
/// `changes` with ground truth.
#[derive(Debug, Parser)]
#[command(name = "soak")]
struct Args {
    /// How long the workload runs: 30m, 90s, 1h (faults run in the same window)
    #[arg(long, env = "BEMI_SOAK_DURATION", default_value = "3m", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of the schedule and the workload (printed, to replay a run)
    #[arg(long)]
    seed: Option<u64>,
    /// The `bemi` binary (default: built with cargo next to this program)
    #[arg(long, env = "BEMI_SOAK_BEMI")]
    bemi: Option<PathBuf>,
    /// Concurrent writing clients
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// Pause of each client between transactions, in milliseconds
    #[arg(long, default_value_t = 20)]
    pace_ms: u64,
    /// Longest wait for the worker to catch up after the workload
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    catch_up_timeout: Duration,
    /// Keep the worker logs (they are kept anyway when the run fails)
    #[arg(long)]
    keep_logs: bool,
}

/// Parses `90s`, `30m`, `1h`, `1h30m` or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(format!("unknown unit {c:?} in {text:?} (use s, m or h)")),
        };
        let n: u64 = number
            .parse()
            .map_err(|_| format!("a number must come before {c:?} in {text:?}"))?;
        total += n * unit;
        number.clear();
    }
    if !number.is_empty() {
        return Err(format!("{text:?} ends without a unit (s, m or h)"));
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration as `1m05s`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Counters of what happened during the run.
#[derive(Debug, Default)]
struct Stats {
    committed: AtomicU64,
    aborted: AtomicU64,
    unknown_committed: AtomicU64,
    unknown_aborted: AtomicU64,
    unresolved: AtomicU64,
    /// `COMMIT`s of unknown outcome whose transaction id `txid_status` reported committed while
    /// their mark was absent: the id was handed out again after a crash.
    reused_xids: AtomicU64,
    ddl: AtomicU64,
    ddl_failed: AtomicU64,
    kills: AtomicU64,
    restarts_mid_stream: AtomicU64,
    restarts_idle: AtomicU64,
    walsender_terminations: AtomicU64,
    destination_outages: AtomicU64,
    destination_read_only: AtomicU64,
    fault_failures: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What every task of the run shares.
#[derive(Debug)]
struct Soak {
    started: Instant,
    source: Arc<TempPostgres>,
    destination: Arc<TempPostgres>,
    source_url: String,
    destination_url: String,
    /// Writers hold it for reading during each transaction; an idle restart holds it for
    /// writing to pause them.
    gate: tokio::sync::RwLock<()>,
    truth: Mutex<Truth>,
    stats: Stats,
    stop_writes: AtomicBool,
    worker: Mutex<Worker>,
    /// The least the run must inject for its duration.
    targets: faults::Targets,
}

impl Soak {
    /// Prints a progress line with the time since the start.
    fn say(&self, message: impl AsRef<str>) {
        println!(
            "[{:>7.1}s] {}",
            self.started.elapsed().as_secs_f64(),
            message.as_ref()
        );
    }

    fn stopping(&self) -> bool {
        self.stop_writes.load(Ordering::Relaxed)
    }

    /// The number of rows in `changes`, on a fresh connection (`None` while unreachable).
    async fn stored(&self) -> Option<i64> {
        let client = connect(&self.destination_url).await.ok()?;
        client
            .query_one("SELECT count(*) FROM changes", &[])
            .await
            .ok()
            .map(|row| row.get(0))
    }

    fn worker(&self) -> std::sync::MutexGuard<'_, Worker> {
        self.worker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn truth(&self) -> std::sync::MutexGuard<'_, Truth> {
        self.truth.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Opens a plain loopback connection (no TLS) and drives it on a task of its own.
async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A small xorshift generator, so that a seed replays the same schedule and workload shapes.
#[derive(Debug, Clone)]
struct Random(u64);

impl Random {
    fn new(seed: u64) -> Random {
        // Spread the seed so that nearby seeds differ, and never 0.
        Random(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Everything that can stop the run before its check.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("soak: could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(args));
    // Ends the remaining tasks, which drops the clusters and the worker.
    runtime.shutdown_timeout(Duration::from_secs(30));
    match code {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// The whole run; `Ok(true)` when it passed.
async fn run(args: Args) -> Result<bool, BoxError> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let bemi = worker::bemi_binary(args.bemi.clone())?;
    println!(
        "soak: {} of workload, seed {seed}, {} clients, worker {}",
        human(args.duration),
        args.clients,
        bemi.display()
    );

    let (source, destination) = tokio::try_join!(
        tokio::task::spawn_blocking(TempPostgres::start),
        tokio::task::spawn_blocking(TempPostgres::start),
    )?;
    let (source, destination) = (Arc::new(source?), Arc::new(destination?));
    let source_url = source.url(SOURCE_DB);
    let destination_url = destination.url(DESTINATION_DB);
    connect(&source.url("postgres"))
        .await?
        .batch_execute(&format!("CREATE DATABASE {SOURCE_DB}"))
        .await?;
    connect(&destination.url("postgres"))
        .await?
        .batch_execute(&format!("CREATE DATABASE {DESTINATION_DB}"))
        .await?;
    workload::create_schema(&source_url).await?;
    worker::setup(&bemi, &source_url)?;
    println!("source {source_url}, destination {destination_url}; `bemi setup` done (slot {SLOT})");

    let logs = tempfile::Builder::new().prefix("bemi-soak-").tempdir()?;
    let worker = Worker::new(
        bemi,
        source_url.clone(),
        destination_url.clone(),
        logs.path().to_owned(),
    );
    let mut random = Random::new(seed);
    let plan = faults::Plan::new(args.duration, &mut random);
    let soak = Arc::new(Soak {
        started: Instant::now(),
        source,
        destination,
        source_url,
        destination_url,
        gate: tokio::sync::RwLock::new(()),
        truth: Mutex::new(Truth::default()),
        stats: Stats::default(),
        stop_writes: AtomicBool::new(false),
        worker: Mutex::new(worker),
        targets: plan.targets,
    });
    soak.worker().start()?;
    soak.say(plan.describe());

    let monitor = tokio::spawn(worker::monitor(Arc::<Soak>::clone(&soak)));
    let mut writers = Vec::new();
    for client in 1..=args.clients {
        writers.push(tokio::spawn(workload::writer(
            Arc::<Soak>::clone(&soak),
            client,
            Random::new(seed ^ u64::from(client) << 32),
            Duration::from_millis(args.pace_ms),
        )));
    }
    writers.push(tokio::spawn(workload::ddl(
        Arc::<Soak>::clone(&soak),
        Random::new(seed ^ 0xDD1),
    )));
    let status = tokio::spawn(workload::status(Arc::<Soak>::clone(&soak)));

    // Faults on their schedule; the workload runs at least for the duration and until the
    // schedule is done, bounded in case faults take much longer than planned.
    let hard_stop = args.duration + args.duration / 4 + Duration::from_secs(60);
    let schedule = faults::run(Arc::<Soak>::clone(&soak), plan, Random::new(seed ^ 0xFA17));
    if tokio::time::timeout(hard_stop, schedule).await.is_err() {
        soak.say("the fault schedule did not finish in time; stopping it");
    }
    let remaining = args.duration.saturating_sub(soak.started.elapsed());
    tokio::time::sleep(remaining).await;
    soak.stop_writes.store(true, Ordering::Relaxed);
    soak.say("stopping the workload");
    for writer in writers {
        writer.await?;
    }
    status.abort();
    let written = soak.started.elapsed();

    let outcome = verify::catch_up_and_compare(&soak, args.catch_up_timeout).await?;
    monitor.abort();
    let _ = monitor.await;
    let stopped = soak.worker().terminate();
    let passed = verify::summary(&soak, &outcome, written, seed, &stopped);
    if passed && !args.keep_logs {
        logs.close()?;
    } else {
        if !passed {
            println!("the workers' warnings and errors (each once):");
            for line in worker::warnings(logs.path(), 40) {
                println!("  {line}");
            }
        }
        println!("worker logs kept in {}", logs.keep().display());
    }
    Ok(passed)
}
