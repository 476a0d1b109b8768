//! What a Bemi context costs an application that writes through sqlx (and SeaORM, with the
//! `sea-orm` feature): write transactions per second with and without one, on a throwaway
//! PostgreSQL.
//!
//! ```text
//! cargo bench -p bemi-sqlx --bench context_overhead --all-features [-- --secs 5 --clients 1,8 --statements 1,5 --fsync]
//! ```
//!
//! The throwaway server runs with `fsync = off` unless `--fsync` is given; with it, commits wait
//! for the disk as on a production server. No tracker runs: `wal_level` is `logical`, so the
//! message is written to the WAL as in production, and the tracker's own work does not disturb
//! the measurement.
//!
//! Each transaction makes `--statements` single-row inserts and commits. The ways of writing run
//! in short blocks of `--block` transactions, in turn, so that drifts of the machine (other
//! processes, frequency changes) hit them alike; a way's rate is its total over all its blocks,
//! about `--secs` seconds. Each way is compared with its baseline (`ratio`; `extra µs` is the
//! latency each transaction gained):
//!
//! | way | what | baseline |
//! | --- | --- | --- |
//! | `plain` | `conn.begin()`, inserts, commit | |
//! | `begin_with` | [`bemi_sqlx::begin_with`]: the emit and `BEGIN` in one round trip | `plain` |
//! | `begin_bound` | `conn.begin()`, then the emit bound to [`EMIT_SQL`] (not an API of the crate: the alternative it avoids) | `plain` |
//! | `pool_plain` | `pool.begin()`, inserts, commit | |
//! | `pool_begin_with` | `bemi_sqlx::begin_with(&pool, …)` | `pool_plain` |
//! | `single_plain` | one autocommit insert (only with 1 statement) | |
//! | `single_execute` | [`bemi_sqlx::execute_with`]: the insert in a transaction with the context | `single_plain` |
//! | `orm_plain` | SeaORM's `transaction` | |
//! | `orm_transaction_with` | `bemi_sqlx::sea_orm::transaction_with` (`BEGIN`, then the emit bound) | `orm_plain` |
//!
//! `plain` ways use a connection per client; `pool_` and `orm_` ways share a pool of as many
//! connections as clients.

#![allow(clippy::print_stdout, missing_docs)]

use std::str::FromStr as _;
use std::time::{Duration, Instant};

use bemi_context::{Context, EMIT_SQL};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgPool, Postgres};

const INSERT: &str = "INSERT INTO orders (customer, item, quantity) VALUES ($1, $2, $3)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Plain,
    BeginWith,
    BeginBound,
    PoolPlain,
    PoolBeginWith,
    SinglePlain,
    SingleExecute,
    #[cfg(feature = "sea-orm")]
    OrmPlain,
    #[cfg(feature = "sea-orm")]
    OrmTransactionWith,
}

const WAYS: &[Way] = &[
    Way::Plain,
    Way::BeginWith,
    Way::BeginBound,
    Way::PoolPlain,
    Way::PoolBeginWith,
    Way::SinglePlain,
    Way::SingleExecute,
    #[cfg(feature = "sea-orm")]
    Way::OrmPlain,
    #[cfg(feature = "sea-orm")]
    Way::OrmTransactionWith,
];

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Plain => "plain",
            Way::BeginWith => "begin_with",
            Way::BeginBound => "begin_bound",
            Way::PoolPlain => "pool_plain",
            Way::PoolBeginWith => "pool_begin_with",
            Way::SinglePlain => "single_plain",
            Way::SingleExecute => "single_execute",
            #[cfg(feature = "sea-orm")]
            Way::OrmPlain => "orm_plain",
            #[cfg(feature = "sea-orm")]
            Way::OrmTransactionWith => "orm_transaction_with",
        }
    }

    fn baseline(self) -> Way {
        match self {
            Way::Plain | Way::BeginWith | Way::BeginBound => Way::Plain,
            Way::PoolPlain | Way::PoolBeginWith => Way::PoolPlain,
            Way::SinglePlain | Way::SingleExecute => Way::SinglePlain,
            #[cfg(feature = "sea-orm")]
            Way::OrmPlain | Way::OrmTransactionWith => Way::OrmPlain,
        }
    }

    /// Single writes are one statement by definition.
    fn runs_with(self, statements: usize) -> bool {
        statements == 1 || self.baseline() != Way::SinglePlain
    }
}

struct Settings {
    secs: f64,
    block: u64,
    clients: Vec<usize>,
    statements: Vec<usize>,
    fsync: bool,
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

fn settings() -> Settings {
    let mut settings = Settings {
        secs: 5.0,
        block: 100,
        clients: vec![1, 8],
        statements: vec![1, 5],
        fsync: false,
    };
    let mut args = std::env::args().skip(1);
    // Without `--bench` (as under `cargo test --benches`), a short smoke run.
    let mut bench = false;
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--secs" => settings.secs = value().parse().expect("--secs: a number"),
            "--block" => settings.block = value().parse().expect("--block: a number"),
            "--clients" => settings.clients = list(&value(), "--clients"),
            "--statements" => settings.statements = list(&value(), "--statements"),
            "--fsync" => settings.fsync = true,
            "--bench" => bench = true,
            _ => {}
        }
    }
    if !bench {
        settings.secs = settings.secs.min(0.05);
        settings.block = settings.block.min(10);
    }
    settings
}

/// One client: a connection of its own, the shared pool, and its context.
struct Writer {
    conn: PoolConnection<Postgres>,
    pool: PgPool,
    #[cfg(feature = "sea-orm")]
    orm: sea_orm::DatabaseConnection,
    ctx: Context,
}

impl Writer {
    async fn write(&mut self, way: Way, statements: usize, n: i32) -> sqlx::Result<()> {
        macro_rules! inserts {
            ($executor:expr) => {
                for _ in 0..statements {
                    sqlx::query(INSERT)
                        .bind("alice")
                        .bind("book")
                        .bind(n)
                        .execute(&mut *$executor)
                        .await?;
                }
            };
        }
        match way {
            Way::Plain => {
                let mut tx = self.conn.begin().await?;
                inserts!(tx);
                tx.commit().await
            }
            Way::BeginWith => {
                let mut tx = bemi_sqlx::begin_with(&mut self.conn, &self.ctx).await?;
                inserts!(tx);
                tx.commit().await
            }
            Way::BeginBound => {
                let mut tx = self.conn.begin().await?;
                let payload = bemi_context::payload(&self.ctx).expect("a payload");
                sqlx::query(EMIT_SQL)
                    .bind(payload)
                    .execute(&mut *tx)
                    .await?;
                inserts!(tx);
                tx.commit().await
            }
            Way::PoolPlain => {
                let mut tx = self.pool.begin().await?;
                inserts!(tx);
                tx.commit().await
            }
            Way::PoolBeginWith => {
                let mut tx = bemi_sqlx::begin_with(&self.pool, &self.ctx).await?;
                inserts!(tx);
                tx.commit().await
            }
            Way::SinglePlain => {
                let insert = sqlx::query(INSERT).bind("alice").bind("book").bind(n);
                insert.execute(&mut *self.conn).await.map(drop)
            }
            Way::SingleExecute => {
                let insert = sqlx::query(INSERT).bind("alice").bind("book").bind(n);
                bemi_sqlx::execute_with(&mut self.conn, &self.ctx, insert)
                    .await
                    .map(drop)
            }
            #[cfg(feature = "sea-orm")]
            Way::OrmPlain | Way::OrmTransactionWith => {
                use sea_orm::TransactionTrait as _;
                let done = if way == Way::OrmPlain {
                    self.orm
                        .transaction(|txn| orm_inserts(txn, statements, n))
                        .await
                } else {
                    bemi_sqlx::sea_orm::transaction_with(&self.orm, &self.ctx, |txn| {
                        orm_inserts(txn, statements, n)
                    })
                    .await
                };
                done.map_err(|e| sqlx::Error::Protocol(e.to_string()))
            }
        }
    }
}

#[cfg(feature = "sea-orm")]
fn orm_inserts(
    txn: &sea_orm::DatabaseTransaction,
    statements: usize,
    n: i32,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), sea_orm::DbErr>> + Send + '_>> {
    use sea_orm::{ConnectionTrait as _, DbBackend, Statement};
    Box::pin(async move {
        for _ in 0..statements {
            txn.execute(Statement::from_sql_and_values(
                DbBackend::Postgres,
                INSERT,
                ["alice".into(), "book".into(), n.into()],
            ))
            .await?;
        }
        Ok(())
    })
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
    let runs = writers.iter_mut().map(|writer| async move {
        for n in 0..per_writer {
            writer
                .write(way, statements, n as i32)
                .await
                .expect("write");
        }
    });
    futures_join_all(runs).await;
    (per_writer * writers.len() as u64, start.elapsed())
}

/// Polls all futures to completion on this task (no spawning, so the runtime adds no noise).
async fn futures_join_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut pending: Vec<_> = futures.map(|f| Some(Box::pin(f))).collect();
    std::future::poll_fn(|cx| {
        for slot in pending.iter_mut() {
            if let Some(fut) = slot {
                if fut.as_mut().poll(cx).is_ready() {
                    *slot = None;
                }
            }
        }
        if pending.iter().all(Option::is_none) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

fn main() {
    let settings = settings();
    let fsync = if settings.fsync { "on" } else { "off" };
    let pg = bemi_core::embedded::TempPostgres::builder()
        .setting("fsync", fsync)
        .start()
        .expect("start a throwaway PostgreSQL");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let options = PgConnectOptions::from_str(&pg.url("postgres")).expect("url");
        let admin = PgPool::connect_with(options.clone())
            .await
            .expect("connect");
        sqlx::raw_sql(
            "CREATE TABLE orders (id bigserial PRIMARY KEY, customer text NOT NULL,
               item text NOT NULL, quantity int NOT NULL,
               created_at timestamptz NOT NULL DEFAULT now());
             ALTER TABLE orders REPLICA IDENTITY FULL;",
        )
        .execute(&admin)
        .await
        .expect("create table");
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&admin)
            .await
            .expect("version");
        println!(
            "PostgreSQL {version}, fsync {fsync}, about {}s per way in blocks of {} transactions",
            settings.secs, settings.block
        );
        for &clients in &settings.clients {
            let pool_options = PgPoolOptions::new()
                .max_connections(clients as u32)
                .min_connections(clients as u32);
            let direct = pool_options
                .clone()
                .connect_with(options.clone())
                .await
                .expect("connect");
            let pool = pool_options
                .connect_with(options.clone())
                .await
                .expect("connect");
            let mut writers = Vec::new();
            for id in 0..clients {
                writers.push(Writer {
                    conn: direct.acquire().await.expect("connect"),
                    pool: pool.clone(),
                    #[cfg(feature = "sea-orm")]
                    orm: sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(pool.clone()),
                    ctx: Context::new()
                        .with("user_id", 4242 + id as u64)
                        .with("endpoint", "POST /orders")
                        .with("request_id", "0f8fad5b-d9cb-469f-a165-70867728950e"),
                });
            }
            for &statements in &settings.statements {
                run(&mut writers, statements, &settings).await;
                sqlx::raw_sql("TRUNCATE orders")
                    .execute(&admin)
                    .await
                    .expect("truncate");
            }
            drop(writers);
            direct.close().await;
            pool.close().await;
        }
        admin.close().await;
    });
    drop(runtime);
    drop(pg);
}

async fn run(writers: &mut [Writer], statements: usize, settings: &Settings) {
    let clients = writers.len();
    let ways: Vec<Way> = WAYS
        .iter()
        .copied()
        .filter(|w| w.runs_with(statements))
        .collect();
    // warm up: connections, prepared statements, plans, the first WAL segments
    for &way in &ways {
        block(writers, way, statements, 200.min(settings.block * 2)).await;
    }
    let per_writer = (settings.block / clients as u64).max(1);
    let mut totals = vec![(0u64, Duration::ZERO); ways.len()];
    let deadline = Instant::now() + Duration::from_secs_f64(settings.secs * ways.len() as f64);
    let mut turn = 0;
    while Instant::now() < deadline {
        // rotate the order so that no way always follows the same one
        for k in 0..ways.len() {
            let i = (turn + k) % ways.len();
            let (count, took) = block(writers, ways[i], statements, per_writer).await;
            totals[i].0 += count;
            totals[i].1 += took;
        }
        turn += 1;
    }
    let rate = |(count, took): (u64, Duration)| count as f64 / took.as_secs_f64();
    println!("\n{clients} connection(s), {statements} insert(s) per transaction:");
    println!(
        "  {:<22} {:>8} {:>7} {:>10}",
        "way", "tx/s", "ratio", "extra µs"
    );
    for (i, way) in ways.iter().enumerate() {
        let r = rate(totals[i]);
        let base_index = ways
            .iter()
            .position(|w| *w == way.baseline())
            .expect("the baseline runs");
        let base = rate(totals[base_index]);
        println!(
            "  {:<22} {:>8.0} {:>7.3} {:>10.1}",
            way.name(),
            r,
            r / base,
            // each client runs its transactions one after another
            (1.0 / r - 1.0 / base) * 1e6 * clients as f64
        );
    }
}
