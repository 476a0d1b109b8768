//! What emitting a context costs a writing application that uses tokio-postgres or
//! deadpool-postgres: write transactions per second with and without a context.
//!
//! ```text
//! cargo bench -p bemi-core --bench context_overhead [-- --secs 5 --clients 1,8 --statements 1,5 --no-fsync]
//! ```
//!
//! The method and the options are those of [`bemi_testkit::overhead`]. Ways, each client
//! with a tokio-postgres connection and a deadpool-postgres one of its own:
//!
//! | way | what | baseline |
//! | --- | --- | --- |
//! | `plain` | `client.transaction()`, inserts, commit | |
//! | `begin_with` | [`begin_with`] on the client: waits for `BEGIN`, then for the emit | `plain` |
//! | `emit_before_with` | `client.transaction()`, then [`emit_before_with`] the first insert (unnamed emit) | `plain` |
//! | `pool_plain` | deadpool's `object.transaction()`, inserts, commit | |
//! | `pool_begin_with` | [`begin_with`] on the deadpool object: `BEGIN`, then the cached prepared emit | `pool_plain` |
//! | `pool_emit_before_with` | `object.transaction()`, then [`emit_before_with`] the first insert (cached prepared emit) | `pool_plain` |
//! | `pool_select_1` | reference: `pool_emit_before_with` with a prepared `SELECT 1` in place of the emit | `pool_plain` |
//!
//! Inserts are prepared statements in every way (cached by deadpool in the `pool_` ways).
//! `pool_select_1` is the cheapest statement a client can add to a transaction, sent the
//! cheapest way: what any context, however carried, would cost at least.

use bemi_core::context::{begin_with, emit_before_with, Context, ContextTransaction};
use bemi_core::ConnectOptions;
use bemi_testkit::overhead::{client_context, compare, reset, Settings, INSERT};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement, Transaction};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Way {
    Plain,
    BeginWith,
    EmitBeforeWith,
    PoolPlain,
    PoolBeginWith,
    PoolEmitBeforeWith,
    PoolSelect1,
}

const WAYS: [Way; 7] = [
    Way::Plain,
    Way::BeginWith,
    Way::EmitBeforeWith,
    Way::PoolPlain,
    Way::PoolBeginWith,
    Way::PoolEmitBeforeWith,
    Way::PoolSelect1,
];

impl bemi_testkit::overhead::Way for Way {
    fn name(self) -> &'static str {
        match self {
            Way::Plain => "plain",
            Way::BeginWith => "begin_with",
            Way::EmitBeforeWith => "emit_before_with",
            Way::PoolPlain => "pool_plain",
            Way::PoolBeginWith => "pool_begin_with",
            Way::PoolEmitBeforeWith => "pool_emit_before_with",
            Way::PoolSelect1 => "pool_select_1",
        }
    }

    fn baseline(self) -> Way {
        match self {
            Way::Plain | Way::BeginWith | Way::EmitBeforeWith => Way::Plain,
            Way::PoolPlain | Way::PoolBeginWith | Way::PoolEmitBeforeWith | Way::PoolSelect1 => {
                Way::PoolPlain
            }
        }
    }
}

/// One client: a tokio-postgres connection, a pooled one, and its context.
struct Writer {
    client: Client,
    insert: Statement,
    object: deadpool_postgres::Object,
    ctx: Context,
}

impl Writer {
    async fn connect(options: &ConnectOptions, pool: &deadpool_postgres::Pool, id: usize) -> Self {
        let client = options.connect().await.expect("connect");
        let insert = client.prepare(INSERT).await.expect("prepare");
        Writer {
            client,
            insert,
            object: pool.get().await.expect("a pooled connection"),
            ctx: client_context(id),
        }
    }
}

impl bemi_testkit::overhead::Writer for Writer {
    type Way = Way;

    async fn write(&mut self, way: Way, statements: usize, n: i32) {
        let params: &[&(dyn ToSql + Sync)] = &[&"alice", &"book", &n];
        let select_1;
        let with_first = match way {
            Way::EmitBeforeWith | Way::PoolEmitBeforeWith => WithFirst::Context(&self.ctx),
            Way::PoolSelect1 => {
                select_1 = self
                    .object
                    .prepare_cached("SELECT 1")
                    .await
                    .expect("prepare");
                WithFirst::Select1(&select_1)
            }
            _ => WithFirst::Nothing,
        };
        match way {
            Way::Plain | Way::BeginWith | Way::EmitBeforeWith => {
                let tx = match way {
                    Way::BeginWith => begin_with(&mut self.client, &self.ctx).await,
                    _ => self.client.transaction().await,
                }
                .expect("begin");
                inserts(&tx, &tx, with_first, &self.insert, statements, params).await;
                tx.commit().await.expect("commit");
            }
            Way::PoolPlain | Way::PoolBeginWith | Way::PoolEmitBeforeWith | Way::PoolSelect1 => {
                let insert = self.object.prepare_cached(INSERT).await.expect("prepare");
                let tx = match way {
                    Way::PoolBeginWith => begin_with(&mut self.object, &self.ctx).await,
                    _ => self.object.transaction().await,
                }
                .expect("begin");
                inserts(&tx, &tx, with_first, &insert, statements, params).await;
                tx.commit().await.expect("commit");
            }
        }
    }
}

/// What a way sends in the first insert's round trip.
enum WithFirst<'a> {
    Nothing,
    /// The context, with [`emit_before_with`].
    Context(&'a Context),
    /// A prepared `SELECT 1`, queued ahead of the insert as `emit_before_with` queues the emit.
    Select1(&'a Statement),
}

/// Runs the transaction's inserts on `tx`, the first with `with_first`; a context is emitted
/// into `target` (`tx` itself, or the deadpool transaction around it).
async fn inserts(
    target: &impl ContextTransaction,
    tx: &Transaction<'_>,
    with_first: WithFirst<'_>,
    insert: &Statement,
    statements: usize,
    params: &[&(dyn ToSql + Sync)],
) {
    let first = tx.execute(insert, params);
    match with_first {
        WithFirst::Nothing => first.await,
        WithFirst::Context(ctx) => emit_before_with(target, ctx, first).await,
        WithFirst::Select1(select_1) => {
            let (selected, inserted) =
                futures_util::future::join(tx.execute(select_1, &[]), first).await;
            selected.and(inserted)
        }
    }
    .expect("insert");
    for _ in 1..statements {
        tx.execute(insert, params).await.expect("insert");
    }
}

fn main() {
    let settings = Settings::from_args();
    let pg = settings.start_server();
    let options: ConnectOptions = pg.url("postgres").parse().expect("url");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for &clients in &settings.clients {
            let pool = options.pool(clients).expect("pool");
            let mut writers = Vec::new();
            for id in 0..clients {
                writers.push(Writer::connect(&options, &pool, id).await);
            }
            for &statements in &settings.statements {
                compare(&mut writers, &WAYS, statements, &settings, &pg).await;
                reset(&pg);
            }
        }
    });
    drop(runtime);
    drop(pg);
}
