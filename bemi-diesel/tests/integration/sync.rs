//! Diesel (sync) transactions with context, end to end through the tracker into `changes`.

use crate::common::{
    assert_task_contexts, conninfo, ctx, items, oversized_context, task_context, tricky_context,
    Tracked,
};
use bemi_context::{scope, scope_sync, Context};
use bemi_diesel::{emit, emit_with, transaction, transaction_with};
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use serde_json::{json, Value};

fn establish(h: &Tracked) -> PgConnection {
    PgConnection::establish(&conninfo(h)).expect("connect")
}

fn insert(conn: &mut PgConnection, id: i32, task: i32) -> QueryResult<usize> {
    diesel::insert_into(items::table)
        .values((items::id.eq(id), items::task.eq(task)))
        .execute(conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_with_context_records_exactly_its_rows_with_that_context() {
    let h = Tracked::start().await;
    let mut conn = establish(&h);
    let context = json!({"user_id": 42, "endpoint": "POST /items", "roles": ["admin"]});
    let later = json!({"job": "later"});
    let (c1, c2) = (ctx(context.clone()), ctx(later.clone()));
    tokio::task::spawn_blocking(move || {
        let written = transaction_with(&mut conn, &c1, |conn| {
            insert(conn, 1, 1)?;
            insert(conn, 2, 1)?;
            diesel::update(items::table.find(1))
                .set(items::note.eq("updated"))
                .execute(conn)?;
            diesel::delete(items::table.find(2)).execute(conn)
        })
        .unwrap();
        assert_eq!(written, 1);

        // No context, explicit or current, and an empty one: nothing emitted.
        transaction(&mut conn, |conn| insert(conn, 3, 2)).unwrap();
        transaction_with(&mut conn, &Context::new(), |conn| insert(conn, 4, 3)).unwrap();

        // Emitting into Diesel's own transaction, after a first write: it still applies to it.
        conn.transaction(|conn| {
            insert(conn, 5, 4)?;
            assert!(emit_with(conn, &c2)?);
            assert!(!emit_with(conn, &Context::new())?);
            insert(conn, 6, 4)
        })
        .unwrap();
        // The current context (scope_sync), emitted by hand.
        scope_sync(c2, || {
            conn.transaction(|conn| {
                assert!(emit(conn)?);
                insert(conn, 7, 5)
            })
        })
        .unwrap();
        conn.transaction(|conn| {
            assert!(!emit(conn)?);
            insert(conn, 8, 6)
        })
        .unwrap();
        // Prepared once, reused by every emit on this connection.
        let prepared: i64 = diesel::select(crate::common::emit_statements_prepared())
            .get_result(&mut conn)
            .unwrap();
        assert_eq!(prepared, 1);
    })
    .await
    .unwrap();

    let rows = h.finish().await;
    let got: Vec<(&str, Option<&str>, &Value)> = rows
        .iter()
        .map(|r| (r.operation.as_str(), r.primary_key.as_deref(), &r.context))
        .collect();
    let empty = json!({});
    assert_eq!(
        got,
        [
            ("CREATE", Some("1"), &context),
            ("CREATE", Some("2"), &context),
            ("UPDATE", Some("1"), &context),
            ("DELETE", Some("2"), &context),
            ("CREATE", Some("3"), &empty),
            ("CREATE", Some("4"), &empty),
            ("CREATE", Some("5"), &later),
            ("CREATE", Some("6"), &later),
            ("CREATE", Some("7"), &later),
            ("CREATE", Some("8"), &empty),
        ]
    );
    assert_eq!(rows[2].after["note"], "updated");
}

#[derive(Debug)]
enum AppError {
    #[allow(dead_code)]
    Database(diesel::result::Error),
    ChangedMyMind,
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        AppError::Database(e)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_transaction_leaves_no_rows() {
    let h = Tracked::start().await;
    let mut conn = establish(&h);
    tokio::task::spawn_blocking(move || {
        let context = ctx(json!({"user_id": 1}));
        let rolled_back = transaction_with(&mut conn, &context, |conn| {
            insert(conn, 1, 1)?;
            Err::<(), _>(diesel::result::Error::RollbackTransaction)
        });
        assert_eq!(rolled_back, Err(diesel::result::Error::RollbackTransaction));
        // A failing statement rolls back the whole transaction.
        let failed = transaction_with(&mut conn, &context, |conn| {
            insert(conn, 2, 1)?;
            insert(conn, 2, 1)
        });
        assert!(failed.is_err());
        // An application error does too.
        let app_error: Result<(), AppError> = transaction_with(&mut conn, &context, |conn| {
            insert(conn, 3, 1)?;
            Err(AppError::ChangedMyMind)
        });
        assert!(matches!(app_error, Err(AppError::ChangedMyMind)));
        // A savepoint rolled back inside a committed transaction takes its rows with it.
        let marker = ctx(json!({"marker": true}));
        transaction_with(&mut conn, &marker, |conn| {
            let inner = transaction_with(conn, &context, |conn| {
                insert(conn, 4, 1)?;
                Err::<(), _>(diesel::result::Error::RollbackTransaction)
            });
            assert!(inner.is_err());
            insert(conn, 5, 2)
        })
        .unwrap();
    })
    .await
    .unwrap();

    let rows = h.finish().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].primary_key.as_deref(), Some("5"));
    assert_eq!(rows[0].context, json!({"marker": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_carried_into_spawn_blocking_arrives() {
    let h = Tracked::start().await;
    let mut conn = establish(&h);
    let context = json!({"request_id": "r-7", "endpoint": "POST /jobs"});

    let conn = scope(ctx(context.clone()), async move {
        // an async handler handing its database work to the blocking pool
        bemi_context::spawn_blocking(move || {
            transaction(&mut conn, |conn| insert(conn, 1, 1)).unwrap();
            conn
        })
        .await
        .unwrap()
    })
    .await;

    // Through tokio::spawn, then spawn_blocking: both carry it.
    let mut conn = scope(ctx(json!({"hops": 2})), async move {
        bemi_context::spawn(async move {
            bemi_context::spawn_blocking(move || {
                let mut conn = conn;
                transaction(&mut conn, |conn| insert(conn, 2, 1)).unwrap();
                conn
            })
            .await
            .unwrap()
        })
        .await
        .unwrap()
    })
    .await;

    // tokio's own spawn_blocking does not carry it: nothing is emitted there.
    conn = scope(ctx(json!({"lost": true})), async move {
        tokio::task::spawn_blocking(move || {
            transaction(&mut conn, |conn| insert(conn, 3, 1)).unwrap();
            conn
        })
        .await
        .unwrap()
    })
    .await;
    drop(conn);

    let rows = h.finish().await;
    let contexts: Vec<&Value> = rows.iter().map(|r| &r.context).collect();
    assert_eq!(contexts, [&context, &json!({"hops": 2}), &json!({})]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_tasks_on_a_shared_pool_never_mix_contexts() {
    let h = Tracked::start().await;
    let pool = Pool::builder()
        .max_size(10)
        .build(ConnectionManager::<PgConnection>::new(conninfo(&h)))
        .expect("pool");
    let tasks: Vec<_> = (0..100)
        .map(|task: i32| {
            let pool = pool.clone();
            let context = task_context(task);
            tokio::spawn(scope(context, async move {
                for step in 0..2 {
                    let pool = pool.clone();
                    bemi_context::spawn_blocking(move || {
                        let mut conn = pool.get().expect("a pooled connection");
                        transaction(&mut conn, |conn| {
                            if step == 0 {
                                diesel::insert_into(items::table)
                                    .values((items::id.eq(task), items::task.eq(task)))
                                    .execute(conn)
                            } else {
                                diesel::update(items::table.find(task))
                                    .set(items::note.eq(format!("step {step}")))
                                    .execute(conn)
                            }
                        })
                        .unwrap();
                    })
                    .await
                    .unwrap();
                }
            }))
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }

    let rows = h.finish().await;
    assert_task_contexts(&rows, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_context_is_skipped_and_the_write_succeeds() {
    let h = Tracked::start().await;
    let mut conn = establish(&h);
    tokio::task::spawn_blocking(move || {
        let big = oversized_context();
        assert_eq!(bemi_context::payload(&big), None);
        transaction_with(&mut conn, &big, |conn| insert(conn, 1, 1)).unwrap();
        conn.transaction(|conn| {
            assert!(!emit_with(conn, &big)?);
            insert(conn, 2, 1)
        })
        .unwrap();
    })
    .await
    .unwrap();

    let rows = h.finish().await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.context == json!({})), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_comments_backslashes_and_unicode_arrive_intact() {
    let h = Tracked::start().await;
    let mut conn = establish(&h);
    let context = Value::from(tricky_context());
    let c = ctx(context.clone());
    tokio::task::spawn_blocking(move || {
        transaction_with(&mut conn, &c, |conn| insert(conn, 1, 1)).unwrap();
    })
    .await
    .unwrap();

    let rows = h.finish().await;
    assert_eq!(rows[0].context, context);
}
