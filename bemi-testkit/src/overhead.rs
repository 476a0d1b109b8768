//! The harness of the `context_overhead` benchmarks (bemi-core for tokio-postgres and
//! deadpool-postgres, bemi-sqlx for sqlx and SeaORM): write transactions per second with and
//! without a context, on a throwaway PostgreSQL.
//!
//! Each transaction inserts `--statements` rows into [`ORDERS`] with [`INSERT`] and commits.
//! The ways of writing run in short blocks of `--block` transactions, in turn and in a rotating
//! order, so that drifts of the machine (other processes, frequency changes) hit them alike; a
//! way's rate is its total over all its blocks, about `--secs` seconds. Each way is reported
//! with its ratio to its baseline way, the ratio's uncertainty (`±`, half the 95 % confidence
//! interval of the mean of the per-round ratios, where a round is one block of every way), the
//! latency each transaction gained (`extra µs`), and the CPU time each transaction took on the
//! clients' side and on the server's (from Linux's scheduler statistics; `extra cpu` is both
//! sides' gain over the baseline): client and server share the machine, so throughput mixes
//! the two.
//!
//! The server keeps PostgreSQL's default durability (`fsync` and `synchronous_commit` on, as in
//! production) unless `--no-fsync` is given, which makes commits nearly free and so shows the
//! emit's cost at its largest share. No tracker runs: `wal_level` is `logical`, so the message
//! is written to the WAL as in production, and the tracker's own work does not disturb the
//! measurement.
//!
//! Without `--bench` (as under `cargo test --benches`) a benchmark makes a short smoke run.

// A benchmark's report is its standard output.
#![allow(clippy::print_stdout)]

mod cpu;

use std::future::Future;
use std::time::{Duration, Instant};

use bemi_context::Context;

use bemi_temp_postgres::TempPostgres;
use cpu::{CpuClock, CpuTime};

/// The benchmarks' table.
pub const ORDERS: &str = "CREATE TABLE orders (id bigserial PRIMARY KEY, customer text NOT NULL,
    item text NOT NULL, quantity int NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
    ALTER TABLE orders REPLICA IDENTITY FULL;";

/// The benchmarks' write, with parameters `($1, $2, $3)` = (customer, item, quantity).
pub const INSERT: &str = "INSERT INTO orders (customer, item, quantity) VALUES ($1, $2, $3)";

/// The command line of a benchmark.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Seconds of measurement per way (`--secs`).
    pub secs: f64,
    /// Transactions per block, over all clients (`--block`).
    pub block: u64,
    /// Client counts to measure (`--clients 1,8`).
    pub clients: Vec<usize>,
    /// Inserts per transaction to measure (`--statements 1,5`).
    pub statements: Vec<usize>,
    /// Whether commits wait for the disk (off with `--no-fsync`).
    pub fsync: bool,
}

impl Settings {
    /// Reads the process's arguments (those after `--` of `cargo bench`).
    ///
    /// # Panics
    ///
    /// On a malformed value, naming the option.
    pub fn from_args() -> Settings {
        let mut settings = Settings {
            secs: 5.0,
            block: 100,
            clients: vec![1, 8],
            statements: vec![1, 5],
            fsync: true,
        };
        let mut bench = false;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
            match arg.as_str() {
                "--secs" => settings.secs = value().parse().expect("--secs: a number"),
                "--block" => settings.block = value().parse().expect("--block: a number"),
                "--clients" => settings.clients = list(&value(), "--clients"),
                "--statements" => settings.statements = list(&value(), "--statements"),
                "--no-fsync" => settings.fsync = false,
                // cargo bench passes --bench to every bench binary
                "--bench" => bench = true,
                other => panic!("unknown option {other}"),
            }
        }
        if !bench {
            settings.secs = settings.secs.min(0.05);
            settings.block = settings.block.min(10);
        }
        settings
    }

    /// Starts the throwaway server, creates [`ORDERS`] in its `postgres` database and prints a
    /// header naming the server and the settings.
    ///
    /// # Panics
    ///
    /// When the server cannot start: a benchmark has nothing to measure without it.
    pub fn start_server(&self) -> TempPostgres {
        let fsync = if self.fsync { "on" } else { "off" };
        let pg = TempPostgres::builder()
            .setting("fsync", fsync)
            .setting("synchronous_commit", fsync)
            .start()
            .expect("start a throwaway PostgreSQL");
        pg.psql("postgres", ORDERS).expect("create the table");
        let version = pg.psql("postgres", "SHOW server_version").expect("version");
        println!(
            "PostgreSQL {}, fsync and synchronous_commit {fsync}, about {}s per way in blocks of {} transactions",
            version.trim(),
            self.secs,
            self.block
        );
        pg
    }
}

fn list(value: &str, name: &str) -> Vec<usize> {
    value
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: numbers separated by commas"))
        })
        .collect()
}

/// The context client `id` emits, as a web request's: a user, an endpoint and a request id.
pub fn client_context(id: usize) -> Context {
    Context::new()
        .with("user_id", 4242 + id as u64)
        .with("endpoint", "POST /orders")
        .with("request_id", "0f8fad5b-d9cb-469f-a165-70867728950e")
}

/// Empties [`ORDERS`] between measurements.
///
/// # Panics
///
/// When `psql` fails.
pub fn reset(pg: &TempPostgres) {
    pg.psql("postgres", "TRUNCATE orders").expect("truncate");
}

/// A way of writing a transaction, compared with its baseline.
pub trait Way: Copy + PartialEq {
    /// The name in the report.
    fn name(self) -> &'static str;
    /// The way without context this one is compared with (itself for a baseline).
    fn baseline(self) -> Self;
}

/// One client of the benchmark, with its own connection(s).
pub trait Writer {
    /// The ways this client can write.
    type Way: Way;
    /// Runs one transaction of `way` with `statements` inserts; `n` varies the values.
    ///
    /// Panics on error: a failed write spoils the measurement.
    fn write(&mut self, way: Self::Way, statements: usize, n: i32) -> impl Future<Output = ()>;
}

/// What the blocks of one way added up to.
#[derive(Debug, Clone, Copy, Default)]
struct Total {
    transactions: u64,
    took: Duration,
    cpu: CpuTime,
}

impl Total {
    fn rate(&self) -> f64 {
        self.transactions as f64 / self.took.as_secs_f64()
    }

    /// CPU microseconds per transaction: (clients, server).
    fn cpu_per_transaction(&self) -> (f64, f64) {
        let per = |ns: u64| ns as f64 / 1e3 / self.transactions as f64;
        (per(self.cpu.client), per(self.cpu.server))
    }
}

/// Measures `ways` on `writers` (all clients at once, against `pg`) and prints their rates,
/// ratios and CPU time.
///
/// # Panics
///
/// When a way's baseline is not among `ways`.
pub async fn compare<W: Writer>(
    writers: &mut [W],
    ways: &[W::Way],
    statements: usize,
    settings: &Settings,
    pg: &TempPostgres,
) {
    let clients = writers.len();
    let clock = CpuClock::of(pg);
    // warm up: connections, prepared statements, plans, the first WAL segments
    for &way in ways {
        block(
            writers,
            way,
            statements,
            200.min(settings.block * 2),
            &clock,
        )
        .await;
    }
    let per_writer = (settings.block / clients as u64).max(1);
    let mut totals = vec![Total::default(); ways.len()];
    // each round's block rates, one per way, for the spread of the ratios
    let mut rounds: Vec<Vec<f64>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(settings.secs * ways.len() as f64);
    let mut turn = 0;
    while Instant::now() < deadline {
        let mut rates = vec![0.0; ways.len()];
        // rotate the order so that no way always follows the same one
        for k in 0..ways.len() {
            let i = (turn + k) % ways.len();
            let ran = block(writers, ways[i], statements, per_writer, &clock).await;
            rates[i] = ran.rate();
            totals[i].transactions += ran.transactions;
            totals[i].took += ran.took;
            totals[i].cpu += ran.cpu;
        }
        rounds.push(rates);
        turn += 1;
    }
    println!("\n{clients} connection(s), {statements} insert(s) per transaction:");
    println!(
        "  {:<22} {:>8} {:>7} {:>6} {:>10} {:>13} {:>13} {:>10}",
        "way", "tx/s", "ratio", "±", "extra µs", "client cpu µs", "server cpu µs", "extra cpu"
    );
    for (i, (way, total)) in ways.iter().zip(&totals).enumerate() {
        let base = ways
            .iter()
            .position(|w| *w == way.baseline())
            .unwrap_or_else(|| panic!("the baseline of {} runs", way.name()));
        let spread = ratio_spread(rounds.iter().map(|rates| rates[i] / rates[base]));
        let (r, base) = (total.rate(), totals[base]);
        let ((client, server), (base_client, base_server)) =
            (total.cpu_per_transaction(), base.cpu_per_transaction());
        println!(
            "  {:<22} {:>8.0} {:>7.3} {:>6.3} {:>10.1} {:>13.1} {:>13.1} {:>10.1}",
            way.name(),
            r,
            r / base.rate(),
            spread,
            // each client runs its transactions one after another
            (1.0 / r - 1.0 / base.rate()) * 1e6 * clients as f64,
            client,
            server,
            client + server - base_client - base_server,
        );
    }
}

/// The half-width of the 95 % confidence interval of the mean of `ratios` (normal
/// approximation: 1.96 standard errors); 0 for fewer than two.
pub fn ratio_spread(ratios: impl Iterator<Item = f64>) -> f64 {
    let ratios: Vec<f64> = ratios.collect();
    let n = ratios.len() as f64;
    if ratios.len() < 2 {
        return 0.0;
    }
    let mean = ratios.iter().sum::<f64>() / n;
    let variance = ratios.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0);
    1.96 * (variance / n).sqrt()
}

/// Runs `per_writer` transactions of `way` on every writer at once, polled on this task (no
/// spawning, so the runtime adds no noise); returns how many ran, how long they took and the
/// CPU time they used.
async fn block<W: Writer>(
    writers: &mut [W],
    way: W::Way,
    statements: usize,
    per_writer: u64,
    clock: &CpuClock,
) -> Total {
    let cpu = clock.before();
    let start = Instant::now();
    let runs = writers.iter_mut().map(|writer| {
        Box::pin(async move {
            for n in 0..per_writer {
                writer.write(way, statements, n as i32).await;
            }
        })
    });
    futures_util::future::join_all(runs).await;
    let took = start.elapsed();
    Total {
        transactions: per_writer * writers.len() as u64,
        took,
        cpu: clock.after() - cpu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_spread_is_the_95_percent_half_interval_of_the_mean() {
        assert_eq!(ratio_spread([0.9].into_iter()), 0.0);
        assert_eq!(ratio_spread([0.9, 0.9, 0.9].into_iter()), 0.0);
        // mean 1, sample variance 0.02 / 3, standard error sqrt(0.02 / 12)
        let spread = ratio_spread([0.9, 1.0, 1.1, 1.0].into_iter());
        assert!(
            (spread - 1.96 * (0.02f64 / 12.0).sqrt()).abs() < 1e-12,
            "{spread}"
        );
    }
}
