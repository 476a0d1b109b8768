//! What a Bemi context costs an application that writes through sqlx (and SeaORM, with the
//! `sea-orm` feature): write transactions per second with and without one.
//!
//! ```text
//! cargo bench -p bemi-sqlx --bench context_overhead --all-features [-- --secs 5 --clients 1,8 --statements 1,5 --no-fsync]
//! ```
//!
//! The method and the options are those of [`bemi_testkit::overhead`]. Ways:
//!
//! | way | what | baseline |
//! | --- | --- | --- |
//! | `plain` | `conn.begin()`, inserts, commit | |
//! | `begin_with` | [`bemi_sqlx::begin_with`]: the emit and `BEGIN` in one round trip | `plain` |
//! | `select_1_begin` | reference: `SELECT 1; BEGIN` in place of `begin_with`'s statement | `plain` |
//! | `pool_plain` | `pool.begin()`, inserts, commit | |
//! | `pool_begin_with` | `bemi_sqlx::begin_with(&pool, …)` | `pool_plain` |
//! | `single_plain` | one autocommit insert (only with 1 statement) | |
//! | `single_execute` | [`bemi_sqlx::execute_with`]: the insert in a transaction with the context | `single_plain` |
//! | `orm_plain` | SeaORM's `transaction` | |
//! | `orm_transaction_with` | `bemi_sqlx::sea_orm::transaction_with` | `orm_plain` |
//!
//! `plain` ways use a connection per client; `pool_` and `orm_` ways share a pool of as many
//! connections as clients (sqlx's default pool options, which check a connection when it is
//! handed out). `select_1_begin` is the cheapest statement sqlx can add to a transaction
//! without another round trip: what any context, however carried, would cost it at least.

#![allow(clippy::print_stdout, missing_docs)]

use std::str::FromStr as _;

use bemi_context::Context;
use bemi_testkit::overhead::{client_context, compare, reset, Settings, INSERT};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgPool, Postgres};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Plain,
    BeginWith,
    Select1Begin,
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
    Way::Select1Begin,
    Way::PoolPlain,
    Way::PoolBeginWith,
    Way::SinglePlain,
    Way::SingleExecute,
    #[cfg(feature = "sea-orm")]
    Way::OrmPlain,
    #[cfg(feature = "sea-orm")]
    Way::OrmTransactionWith,
];

impl bemi_testkit::overhead::Way for Way {
    fn name(self) -> &'static str {
        match self {
            Way::Plain => "plain",
            Way::BeginWith => "begin_with",
            Way::Select1Begin => "select_1_begin",
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
            Way::Plain | Way::BeginWith | Way::Select1Begin => Way::Plain,
            Way::PoolPlain | Way::PoolBeginWith => Way::PoolPlain,
            Way::SinglePlain | Way::SingleExecute => Way::SinglePlain,
            #[cfg(feature = "sea-orm")]
            Way::OrmPlain | Way::OrmTransactionWith => Way::OrmPlain,
        }
    }
}

impl Way {
    /// Single writes are one statement by definition.
    fn runs_with(self, statements: usize) -> bool {
        statements == 1 || !matches!(self, Way::SinglePlain | Way::SingleExecute)
    }
}

/// One client: a connection of its own, the shared pool, and its context.
struct Writer {
    conn: PoolConnection<Postgres>,
    pool: PgPool,
    #[cfg(feature = "sea-orm")]
    orm: sea_orm::DatabaseConnection,
    ctx: Context,
}

impl bemi_testkit::overhead::Writer for Writer {
    type Way = Way;

    async fn write(&mut self, way: Way, statements: usize, n: i32) {
        self.try_write(way, statements, n).await.expect("write");
    }
}

impl Writer {
    async fn try_write(&mut self, way: Way, statements: usize, n: i32) -> sqlx::Result<()> {
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
            Way::Plain
            | Way::BeginWith
            | Way::Select1Begin
            | Way::PoolPlain
            | Way::PoolBeginWith => {
                let mut tx = match way {
                    Way::Plain => self.conn.begin().await?,
                    Way::BeginWith => bemi_sqlx::begin_with(&mut self.conn, &self.ctx).await?,
                    Way::Select1Begin => self.conn.begin_with("SELECT 1; BEGIN").await?,
                    Way::PoolPlain => self.pool.begin().await?,
                    _ => bemi_sqlx::begin_with(&self.pool, &self.ctx).await?,
                };
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
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                INSERT,
                ["alice".into(), "book".into(), n.into()],
            ))
            .await?;
        }
        Ok(())
    })
}

fn main() {
    let settings = Settings::from_args();
    let pg = settings.start_server();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let options = PgConnectOptions::from_str(&pg.url("postgres")).expect("url");
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
                    ctx: client_context(id),
                });
            }
            for &statements in &settings.statements {
                let ways: Vec<Way> = WAYS
                    .iter()
                    .copied()
                    .filter(|w| w.runs_with(statements))
                    .collect();
                compare(&mut writers, &ways, statements, &settings, &pg).await;
                reset(&pg);
            }
            drop(writers);
            direct.close().await;
            pool.close().await;
        }
    });
    drop(runtime);
    drop(pg);
}
