//! What emitting a context costs a writing application that uses tokio-postgres or
//! deadpool-postgres: write transactions per second with and without a context.
//!
//! ```text
//! cargo bench -p bemi-core --bench context_overhead [-- --secs 5 --clients 1,8 --statements 1,5 --no-fsync]
//! ```
//!
//! The method and the options are those of [`bemi_core::testing::overhead`]. Ways, each client
//! with a tokio-postgres connection and a deadpool-postgres one of its own:
//!
//! | way | what | baseline |
//! | --- | --- | --- |
//! | `plain` | `client.transaction()`, inserts, commit | |
//! | `begin_with_context` | [`begin_with_context`]: waits for `BEGIN`, then for the emit | `plain` |
//! | `emit_with` | `client.transaction()`, then [`emit_with`] the first insert (unnamed emit) | `plain` |
//! | `pool_plain` | deadpool's `object.transaction()`, inserts, commit | |
//! | `pool_begin_cached` | [`begin_cached`]: `BEGIN`, then the cached prepared emit | `pool_plain` |
//! | `pool_emit_with` | `object.transaction()`, then [`emit_with`] the first insert (cached prepared emit) | `pool_plain` |
//! | `pool_select_1` | reference: `pool_emit_with` with a prepared `SELECT 1` in place of the emit | `pool_plain` |
//!
//! Inserts are prepared statements in every way (cached by deadpool in the `pool_` ways).
//! `pool_select_1` is the cheapest statement a client can add to a transaction, sent the
//! cheapest way: what any context, however carried, would cost at least.

use bemi_core::context::{
    begin_cached, begin_with_context, emit_with, Context, ContextTransaction,
};
use bemi_core::testing::overhead::{client_context, compare, reset, Settings, INSERT};
use bemi_core::ConnectOptions;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement, Transaction};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Way {
    Plain,
    BeginWithContext,
    EmitWith,
    PoolPlain,
    PoolBeginCached,
    PoolEmitWith,
    PoolSelect1,
}

const WAYS: [Way; 7] = [
    Way::Plain,
    Way::BeginWithContext,
    Way::EmitWith,
    Way::PoolPlain,
    Way::PoolBeginCached,
    Way::PoolEmitWith,
    Way::PoolSelect1,
];

impl bemi_core::testing::overhead::Way for Way {
    fn name(self) -> &'static str {
        match self {
            Way::Plain => "plain",
            Way::BeginWithContext => "begin_with_context",
            Way::EmitWith => "emit_with",
            Way::PoolPlain => "pool_plain",
            Way::PoolBeginCached => "pool_begin_cached",
            Way::PoolEmitWith => "pool_emit_with",
            Way::PoolSelect1 => "pool_select_1",
        }
    }

    fn baseline(self) -> Way {
        match self {
            Way::Plain | Way::BeginWithContext | Way::EmitWith => Way::Plain,
            Way::PoolPlain | Way::PoolBeginCached | Way::PoolEmitWith | Way::PoolSelect1 => {
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

impl bemi_core::testing::overhead::Writer for Writer {
    type Way = Way;

    async fn write(&mut self, way: Way, statements: usize, n: i32) {
        let params: &[&(dyn ToSql + Sync)] = &[&"alice", &"book", &n];
        let ctx = Some(&self.ctx);
        let select_1;
        let with_first = match way {
            Way::EmitWith | Way::PoolEmitWith => WithFirst::Context(&self.ctx),
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
            Way::Plain | Way::BeginWithContext | Way::EmitWith => {
                let tx = match way {
                    Way::BeginWithContext => begin_with_context(&mut self.client, ctx).await,
                    _ => self.client.transaction().await,
                }
                .expect("begin");
                inserts(&tx, &tx, with_first, &self.insert, statements, params).await;
                tx.commit().await.expect("commit");
            }
            Way::PoolPlain | Way::PoolBeginCached | Way::PoolEmitWith | Way::PoolSelect1 => {
                let insert = self.object.prepare_cached(INSERT).await.expect("prepare");
                let tx = match way {
                    Way::PoolBeginCached => begin_cached(&mut self.object, ctx).await,
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
    /// The context, with [`emit_with`].
    Context(&'a Context),
    /// A prepared `SELECT 1`, queued ahead of the insert as `emit_with` queues the emit.
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
        WithFirst::Context(ctx) => emit_with(target, Some(ctx), first).await,
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
