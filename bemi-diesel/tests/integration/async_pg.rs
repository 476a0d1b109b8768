//! diesel-async transactions with context (feature `async`), end to end through the tracker
//! into `changes`.

use std::sync::Arc;

use crate::common::{
    assert_task_contexts, conninfo, ctx, items, oversized_context, task_context, tricky_context,
    Tracked,
};
use bemi_context::{scope, scope_sync, Context};
use bemi_diesel::async_pg::{emit, emit_with, transaction, transaction_with};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{json, Value};

async fn establish(h: &Tracked) -> AsyncPgConnection {
    AsyncPgConnection::establish(&conninfo(h))
        .await
        .expect("connect")
}

async fn insert(conn: &mut AsyncPgConnection, id: i32, task: i32) -> QueryResult<usize> {
    diesel::insert_into(items::table)
        .values((items::id.eq(id), items::task.eq(task)))
        .execute(conn)
        .await
}

#[tokio::test]
async fn a_transaction_with_context_records_exactly_its_rows_with_that_context() {
    let h = Tracked::start().await;
    let mut conn = establish(&h).await;
    let context = json!({"user_id": 42, "endpoint": "POST /items", "roles": ["admin"]});
    let later = json!({"job": "later"});
    let (c1, c2) = (ctx(context.clone()), ctx(later.clone()));

    let written = transaction_with(&mut conn, &c1, async move |conn| {
        insert(conn, 1, 1).await?;
        insert(conn, 2, 1).await?;
        diesel::update(items::table.find(1))
            .set(items::note.eq("updated"))
            .execute(conn)
            .await?;
        diesel::delete(items::table.find(2)).execute(conn).await
    })
    .await
    .unwrap();
    assert_eq!(written, 1);

    // No context, explicit or current, and an empty one: nothing emitted.
    transaction(&mut conn, async |conn| insert(conn, 3, 2).await)
        .await
        .unwrap();
    transaction_with(&mut conn, &Context::new(), async |conn| {
        insert(conn, 4, 3).await
    })
    .await
    .unwrap();

    // Emitting into diesel-async's own transaction, after a first write.
    let c = c2.clone();
    conn.transaction(async move |conn| {
        insert(conn, 5, 4).await?;
        assert!(emit_with(conn, &c).await?);
        assert!(!emit_with(conn, &Context::new()).await?);
        insert(conn, 6, 4).await
    })
    .await
    .unwrap();
    // The current context, emitted by hand.
    scope(c2, async {
        conn.transaction(async move |conn| {
            assert!(emit(conn).await?);
            insert(conn, 7, 5).await
        })
        .await
    })
    .await
    .unwrap();
    conn.transaction(async move |conn| {
        assert!(!emit(conn).await?);
        insert(conn, 8, 6).await
    })
    .await
    .unwrap();
    // Prepared once, reused by every emit on this connection.
    let prepared: i64 = diesel::select(crate::common::emit_statements_prepared())
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(prepared, 1);

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

#[tokio::test]
async fn a_rolled_back_transaction_leaves_no_rows() {
    let h = Tracked::start().await;
    let mut conn = establish(&h).await;
    let context = ctx(json!({"user_id": 1}));

    let rolled_back = transaction_with(&mut conn, &context, async move |conn| {
        insert(conn, 1, 1).await?;
        Err::<(), _>(diesel::result::Error::RollbackTransaction)
    })
    .await;
    assert_eq!(rolled_back, Err(diesel::result::Error::RollbackTransaction));
    let failed = transaction_with(&mut conn, &context, async move |conn| {
        insert(conn, 2, 1).await?;
        insert(conn, 2, 1).await
    })
    .await;
    assert!(failed.is_err());

    let marker = ctx(json!({"marker": true}));
    transaction_with(&mut conn, &marker, async |conn| insert(conn, 3, 2).await)
        .await
        .unwrap();

    let rows = h.finish().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].primary_key.as_deref(), Some("3"));
    assert_eq!(rows[0].context, json!({"marker": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_carried_into_a_spawned_task_arrives() {
    let h = Tracked::start().await;
    let mut conn = establish(&h).await;
    let context = json!({"request_id": "r-7", "endpoint": "POST /jobs"});

    // a background task started while handling the request
    let handle = scope_sync(ctx(context.clone()), || {
        bemi_context::spawn(async move {
            transaction(&mut conn, async |conn| insert(conn, 1, 1).await)
                .await
                .unwrap();
            conn
        })
    });
    let mut conn = handle.await.unwrap();

    // A plain tokio::spawn does not carry it: nothing is emitted there.
    scope(ctx(json!({"lost": true})), async move {
        tokio::spawn(async move {
            transaction(&mut conn, async |conn| insert(conn, 2, 1).await)
                .await
                .unwrap();
        })
        .await
        .unwrap();
    })
    .await;

    let rows = h.finish().await;
    assert_eq!(rows[0].context, context);
    assert_eq!(rows[1].context, json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_tasks_sharing_ten_connections_never_mix_contexts() {
    let h = Tracked::start().await;
    let mut connections = Vec::new();
    for _ in 0..10 {
        connections.push(tokio::sync::Mutex::new(establish(&h).await));
    }
    let connections = Arc::new(connections);
    let tasks: Vec<_> = (0..100)
        .map(|task: i32| {
            let connections = Arc::clone(&connections);
            let context = task_context(task);
            tokio::spawn(scope(context, async move {
                for step in 0..2 {
                    tokio::task::yield_now().await;
                    let slot = (task as usize + step) % connections.len();
                    let mut conn = connections[slot].lock().await;
                    transaction(&mut *conn, async move |conn| {
                        if step == 0 {
                            insert(conn, task, task).await
                        } else {
                            diesel::update(items::table.find(task))
                                .set(items::note.eq(format!("step {step}")))
                                .execute(conn)
                                .await
                        }
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

#[tokio::test]
async fn an_oversized_context_is_skipped_and_the_write_succeeds() {
    let h = Tracked::start().await;
    let mut conn = establish(&h).await;
    let big = oversized_context();
    assert_eq!(bemi_context::payload(&big), None);

    transaction_with(&mut conn, &big, async |conn| insert(conn, 1, 1).await)
        .await
        .unwrap();
    let b = big.clone();
    conn.transaction(async move |conn| {
        assert!(!emit_with(conn, &b).await?);
        insert(conn, 2, 1).await
    })
    .await
    .unwrap();

    let rows = h.finish().await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.context == json!({})), "{rows:?}");
}

#[tokio::test]
async fn quotes_comments_backslashes_and_unicode_arrive_intact() {
    let h = Tracked::start().await;
    let mut conn = establish(&h).await;
    let context = Value::from(tricky_context());
    transaction_with(&mut conn, &ctx(context.clone()), async |conn| {
        insert(conn, 1, 1).await
    })
    .await
    .unwrap();

    let rows = h.finish().await;
    assert_eq!(rows[0].context, context);
}
