//! What emitting a context costs a writing application that uses tokio-postgres: write
//! transactions per second with and without a context, on a throwaway PostgreSQL.
//!
//! ```text
//! cargo bench -p bemi-core --bench context_overhead [-- --secs 5 --clients 1,8 --statements 1,5 --fsync]
//! ```
//!
//! The throwaway server runs with `fsync = off` unless `--fsync` is given; with it, commits
//! wait for the disk as on a production server.
//!
//! Each transaction makes `--statements` single-row inserts (a prepared statement) and commits.
//! The ways of writing run in short blocks of `--block` transactions, in turn, so that drifts of
//! the machine (other processes, frequency changes) hit them alike; a way's rate is its total
//! over all its blocks, about `--secs` seconds. Ratios are to `plain`; `extra µs` is the latency
//! each transaction gained.
//!
//! - `plain`: `client.transaction()`, inserts, commit (no context);
//! - `begin_with_context`: [`begin_with_context`] (waits for `BEGIN`, then for the emit);
//! - `emit_pipelined`: `client.transaction()`, then [`emit`] joined with the first insert;
//! - for reference, not APIs of this crate: `prepared_pipelined`, the emit as a statement
//!   prepared once per connection joined with the first insert; `batch`, `BEGIN;
//!   SELECT pg_logical_emit_message(…)` as one simple query with the payload quoted into it.
//!
//! No tracker runs: the server's `wal_level` is `logical`, so the message is written to the WAL
//! as in production, and the tracker's own work does not disturb the measurement.

use std::time::{Duration, Instant};

use bemi_core::context::{begin_with_context, emit, Context};
use bemi_core::embedded::TempPostgres;
use bemi_core::ConnectOptions;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Error, Statement, Transaction};

const INSERT: &str = "INSERT INTO orders (customer, item, quantity) VALUES ($1, $2, $3)";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Way {
    Plain,
    BeginWithContext,
    EmitPipelined,
    PreparedPipelined,
    Batch,
}

const WAYS: [Way; 5] = [
    Way::Plain,
    Way::BeginWithContext,
    Way::EmitPipelined,
    Way::PreparedPipelined,
    Way::Batch,
];

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Plain => "plain",
            Way::BeginWithContext => "begin_with_context",
            Way::EmitPipelined => "emit_pipelined",
            Way::PreparedPipelined => "prepared_pipelined",
            Way::Batch => "batch",
        }
    }
}

struct Settings {
    secs: f64,
    block: u64,
    clients: Vec<usize>,
    statements: Vec<usize>,
    fsync: bool,
}

fn list(value: String, name: &str) -> Vec<usize> {
    value
        .split(',')
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| panic!("{name}: numbers separated by commas"))
        })
        .collect()
}

fn settings() -> Settings {
    let mut settings = Settings {
        secs: 5.0,
        block: 100,
        clients: vec![1, 8],
        statements: vec![1, 5],
        fsync: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--secs" => settings.secs = value().parse().expect("--secs: a number"),
            "--block" => settings.block = value().parse().expect("--block: a number"),
            "--clients" => settings.clients = list(value(), "--clients"),
            "--statements" => settings.statements = list(value(), "--statements"),
            "--fsync" => settings.fsync = true,
            // cargo bench passes --bench to every bench binary
            _ => {}
        }
    }
    settings
}

/// One connection with its prepared statements and its context.
struct Writer {
    client: Client,
    insert: Statement,
    emit: Statement,
    ctx: Context,
    payload: String,
    batch_begin: String,
}

impl Writer {
    async fn connect(options: &ConnectOptions, id: usize) -> Writer {
        let client = options.connect().await.expect("connect");
        let insert = client.prepare(INSERT).await.expect("prepare");
        let emit = client
            .prepare_typed(bemi_context::EMIT_SQL, &[Type::TEXT])
            .await
            .expect("prepare");
        let ctx = Context::new()
            .with("user_id", 4242 + id as u64)
            .with("endpoint", "POST /orders")
            .with("request_id", "0f8fad5b-d9cb-469f-a165-70867728950e");
        let payload = bemi_context::payload(&ctx).expect("a payload");
        let batch_begin = format!(
            "BEGIN; {}",
            bemi_context::emit_statement(&payload).expect("no NUL")
        );
        Writer {
            client,
            insert,
            emit,
            ctx,
            payload,
            batch_begin,
        }
    }

    async fn write(&mut self, way: Way, statements: usize, n: i32) -> Result<(), Error> {
        let params: [&(dyn ToSql + Sync); 3] = [&"alice", &"book", &n];
        let insert = &self.insert;
        let rest = |tx| more_inserts(tx, insert, statements - 1, n);
        match way {
            Way::Plain => {
                let tx = self.client.transaction().await?;
                tx.execute(insert, &params).await?;
                rest(&tx).await?;
                tx.commit().await
            }
            Way::BeginWithContext => {
                let tx = begin_with_context(&mut self.client, Some(&self.ctx)).await?;
                tx.execute(insert, &params).await?;
                rest(&tx).await?;
                tx.commit().await
            }
            Way::EmitPipelined => {
                let tx = self.client.transaction().await?;
                tokio::try_join!(emit(&tx, &self.ctx), tx.execute(insert, &params))?;
                rest(&tx).await?;
                tx.commit().await
            }
            Way::PreparedPipelined => {
                let tx = self.client.transaction().await?;
                let emit_params: [&(dyn ToSql + Sync); 1] = [&self.payload];
                tokio::try_join!(
                    tx.execute(&self.emit, &emit_params),
                    tx.execute(insert, &params)
                )?;
                rest(&tx).await?;
                tx.commit().await
            }
            Way::Batch => {
                self.client.batch_execute(&self.batch_begin).await?;
                for _ in 0..statements {
                    self.client.execute(insert, &params).await?;
                }
                self.client.batch_execute("COMMIT").await
            }
        }
    }
}

async fn more_inserts(
    tx: &Transaction<'_>,
    insert: &Statement,
    count: usize,
    n: i32,
) -> Result<(), Error> {
    for _ in 0..count {
        tx.execute(insert, &[&"alice", &"book", &n]).await?;
    }
    Ok(())
}

/// Runs `per_writer` transactions of `way` on every writer at once; returns how many ran and
/// how long they took.
async fn block(
    writers: &mut [Writer],
    way: Way,
    statements: usize,
    per_writer: u64,
) -> (u64, Duration) {
    let start = Instant::now();
    let runs = writers.iter_mut().map(|writer| {
        Box::pin(async move {
            for n in 0..per_writer {
                writer
                    .write(way, statements, n as i32)
                    .await
                    .expect("write");
            }
        })
    });
    futures_util::future::join_all(runs).await;
    (per_writer * writers.len() as u64, start.elapsed())
}

fn main() {
    let settings = settings();
    let fsync = if settings.fsync { "on" } else { "off" };
    let pg = TempPostgres::builder()
        .setting("fsync", fsync)
        .start()
        .expect("start a throwaway PostgreSQL");
    let options: ConnectOptions = pg.url("postgres").parse().expect("url");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let admin = options.connect().await.expect("connect");
        admin
            .batch_execute(
                "CREATE TABLE orders (id bigserial PRIMARY KEY, customer text NOT NULL,
                   item text NOT NULL, quantity int NOT NULL,
                   created_at timestamptz NOT NULL DEFAULT now());
                 ALTER TABLE orders REPLICA IDENTITY FULL;",
            )
            .await
            .expect("create table");
        let version: String = admin
            .query_one("SHOW server_version", &[])
            .await
            .expect("version")
            .get(0);
        println!(
            "PostgreSQL {version}, fsync {fsync}, about {}s per way in blocks of {} transactions",
            settings.secs, settings.block
        );
        for &clients in &settings.clients {
            let mut writers = Vec::new();
            for id in 0..clients {
                writers.push(Writer::connect(&options, id).await);
            }
            for &statements in &settings.statements {
                run(&mut writers, statements, &settings).await;
                admin
                    .batch_execute("TRUNCATE orders")
                    .await
                    .expect("truncate");
            }
        }
    });
    drop(pg);
}

async fn run(writers: &mut [Writer], statements: usize, settings: &Settings) {
    let clients = writers.len();
    // warm up: plans, caches, the first WAL segments
    for way in WAYS {
        block(writers, way, statements, 200).await;
    }
    let per_writer = (settings.block / clients as u64).max(1);
    let mut totals = vec![(0u64, Duration::ZERO); WAYS.len()];
    let deadline = Instant::now() + Duration::from_secs_f64(settings.secs * WAYS.len() as f64);
    let mut turn = 0;
    while Instant::now() < deadline {
        // rotate the order so that no way always follows the same one
        for k in 0..WAYS.len() {
            let i = (turn + k) % WAYS.len();
            let (count, took) = block(writers, WAYS[i], statements, per_writer).await;
            totals[i].0 += count;
            totals[i].1 += took;
        }
        turn += 1;
    }
    let rate = |(count, took): (u64, Duration)| count as f64 / took.as_secs_f64();
    let base = rate(totals[0]);
    println!("\n{clients} connection(s), {statements} insert(s) per transaction:");
    println!(
        "  {:<20} {:>8} {:>7} {:>10}",
        "way", "tx/s", "ratio", "extra µs"
    );
    for (way, total) in WAYS.iter().zip(&totals) {
        let r = rate(*total);
        println!(
            "  {:<20} {:>8.0} {:>7.3} {:>10.1}",
            way.name(),
            r,
            r / base,
            // each connection runs its transactions one after another
            (1.0 / r - 1.0 / base) * 1e6 * clients as f64
        );
    }
}
