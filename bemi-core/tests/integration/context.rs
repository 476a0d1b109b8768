//! Context emitted through tokio-postgres and deadpool-postgres (`bemi_core::context`), end to
//! end: written through a real server, read by the tracker, stored in `changes`.

use bemi_context::{scope, scope_sync, Context};
use bemi_core::context::{begin, begin_with, emit, emit_before, emit_before_with, emit_with};
use bemi_testkit::{
    assert_task_contexts, ctx, oversized_context, task_context, tricky_context, TestDatabase,
    Tracked,
};
use serde_json::{json, Value};
use tokio_postgres::Client;

async fn connect(h: &Tracked) -> Client {
    h.db.connect().await.expect("connect")
}

async fn insert(tx: &tokio_postgres::Transaction<'_>, id: i32, task: i32) {
    tx.execute(
        "INSERT INTO items (id, task) VALUES ($1, $2)",
        &[&id, &task],
    )
    .await
    .expect("insert");
}

#[tokio::test]
async fn a_transaction_with_context_records_exactly_its_rows_with_that_context() {
    let h = Tracked::start().await;
    let mut client = connect(&h).await;
    let context = json!({"user_id": 42, "endpoint": "POST /items", "roles": ["admin"]});

    let tx = begin_with(&mut client, &ctx(context.clone()))
        .await
        .unwrap();
    insert(&tx, 1, 1).await;
    insert(&tx, 2, 1).await;
    tx.execute("UPDATE items SET note = 'updated' WHERE id = 1", &[])
        .await
        .unwrap();
    tx.execute("DELETE FROM items WHERE id = 2", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Without a context, explicit or current: nothing emitted, the changes have `{}`.
    let tx = begin(&mut client).await.unwrap();
    insert(&tx, 3, 2).await;
    tx.commit().await.unwrap();
    let tx = begin_with(&mut client, &Context::new()).await.unwrap();
    insert(&tx, 4, 3).await;
    tx.commit().await.unwrap();

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
        ]
    );
    assert_eq!(rows[2].before["note"], Value::Null);
    assert_eq!(rows[2].after["note"], "updated");
}

#[tokio::test]
async fn emit_into_an_open_transaction_pipelined_or_not_and_deadpool_objects() {
    let h = Tracked::start().await;
    let mut client = connect(&h).await;

    // Sent with the first write, in the same round trip, the emit first.
    let first = ctx(json!({"way": "pipelined"}));
    let tx = client.transaction().await.unwrap();
    let inserted = emit_before_with(
        &tx,
        &first,
        tx.execute("INSERT INTO items (id, task) VALUES (1, 1)", &[]),
    )
    .await
    .unwrap();
    assert_eq!(inserted, 1);
    tx.commit().await.unwrap();

    // The current context, after a write: the transaction's first message still applies to it.
    let current = ctx(json!({"way": "current"}));
    scope(current.clone(), async {
        let tx = client.transaction().await.unwrap();
        insert(&tx, 2, 2).await;
        assert!(emit(&tx).await.unwrap());
        insert(&tx, 3, 2).await;
        tx.commit().await.unwrap();
    })
    .await;

    // Nothing to emit.
    let tx = client.transaction().await.unwrap();
    assert!(!emit_with(&tx, &Context::new()).await.unwrap());
    assert!(!emit(&tx).await.unwrap());
    let rows = emit_before(
        &tx,
        tx.query(
            "INSERT INTO items (id, task) VALUES (4, 3) RETURNING id",
            &[],
        ),
    )
    .await
    .unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 4);
    tx.commit().await.unwrap();

    // The tokio-postgres client a deadpool-postgres object dereferences to: a plain transaction,
    // the emit unnamed (not prepared).
    let pool = pool(&h.db, 1);
    let mut object = pool.get().await.unwrap();
    let pooled = ctx(json!({"way": "deadpool"}));
    let tx = begin_with(&mut **object, &pooled).await.unwrap();
    insert(&tx, 5, 4).await;
    tx.commit().await.unwrap();
    // deadpool's own transactions use its statement cache: the emit is prepared once.
    let cached = ctx(json!({"way": "cached"}));
    let tx = object.transaction().await.unwrap();
    assert!(emit_with(&tx, &cached).await.unwrap());
    insert(&tx, 6, 5).await;
    tx.commit().await.unwrap();
    // begin on the object, and on the ClientWrapper it dereferences to, opens such a transaction
    let tx = begin_with(&mut object, &cached).await.unwrap();
    insert(&tx, 7, 5).await;
    tx.commit().await.unwrap();
    let tx = begin_with(&mut *object, &cached).await.unwrap();
    insert(&tx, 9, 5).await;
    tx.commit().await.unwrap();
    let tx = object.transaction().await.unwrap();
    emit_before_with(
        &tx,
        &cached,
        tx.execute("INSERT INTO items (id, task) VALUES (8, 5)", &[]),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let prepared: i64 = object
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1",
            &[&bemi_context::EMIT_SQL],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(prepared, 1, "the emit is prepared once on the connection");

    let rows = h.finish().await;
    let contexts: Vec<&Value> = rows.iter().map(|r| &r.context).collect();
    assert_eq!(
        contexts,
        [
            &json!({"way": "pipelined"}),
            &json!({"way": "current"}),
            &json!({"way": "current"}),
            &json!({}),
            &json!({"way": "deadpool"}),
            &json!({"way": "cached"}),
            &json!({"way": "cached"}),
            &json!({"way": "cached"}),
            &json!({"way": "cached"}),
        ]
    );
}

#[tokio::test]
async fn a_failing_emit_reports_its_own_error_and_commits_nothing() {
    let h = Tracked::start().await;
    let mut client = connect(&h).await;
    // A role that may write but not emit, as after the hardening bemi_context documents.
    let role = format!("{}_writer", h.db.name());
    client
        .batch_execute(&format!(
            "CREATE ROLE {role};
             GRANT INSERT ON items TO {role};
             REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) FROM PUBLIC;
             SET ROLE {role};"
        ))
        .await
        .unwrap();
    let context = ctx(json!({"user_id": 1}));
    let denied = |e: tokio_postgres::Error| {
        let message = e.as_db_error().map(|e| e.message().to_owned());
        assert_eq!(
            message.as_deref(),
            Some("permission denied for function pg_logical_emit_message"),
            "{e}"
        );
    };

    match begin_with(&mut client, &context).await {
        Ok(_) => panic!("the emit must fail"),
        Err(e) => denied(e),
    }
    let tx = client.transaction().await.unwrap();
    denied(
        emit_before_with(
            &tx,
            &context,
            tx.execute("INSERT INTO items (id, task) VALUES (1, 1)", &[]),
        )
        .await
        .unwrap_err(),
    );
    drop(tx);
    // The connection is usable afterwards, and a write without context goes through.
    let tx = begin_with(&mut client, &Context::new()).await.unwrap();
    insert(&tx, 2, 2).await;
    tx.commit().await.unwrap();
    client
        .batch_execute(&format!(
            "RESET ROLE; DROP OWNED BY {role}; DROP ROLE {role};"
        ))
        .await
        .unwrap();

    let rows = h.finish().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].primary_key.as_deref(), Some("2"));
    assert_eq!(rows[0].context, json!({}));
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_no_rows() {
    let h = Tracked::start().await;
    let mut client = connect(&h).await;
    let context = ctx(json!({"user_id": 1}));

    let tx = begin_with(&mut client, &context).await.unwrap();
    insert(&tx, 1, 1).await;
    tx.rollback().await.unwrap();
    {
        // dropped without commit
        let tx = begin_with(&mut client, &context).await.unwrap();
        insert(&tx, 2, 1).await;
    }
    // A failed statement aborts the transaction; it commits nothing.
    let tx = begin_with(&mut client, &context).await.unwrap();
    insert(&tx, 3, 1).await;
    assert!(tx
        .execute("INSERT INTO items (id, task) VALUES (3, 1)", &[])
        .await
        .is_err());
    drop(tx);

    // A committed marker: once it is in `changes`, everything before it was read.
    let marker = ctx(json!({"marker": true}));
    let tx = begin_with(&mut client, &marker).await.unwrap();
    insert(&tx, 4, 2).await;
    tx.commit().await.unwrap();

    let rows = h.finish().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].primary_key.as_deref(), Some("4"));
    assert_eq!(rows[0].context, json!({"marker": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_carried_into_a_spawned_task_arrives() {
    let h = Tracked::start().await;
    let mut client = connect(&h).await;
    let context = json!({"request_id": "r-7", "endpoint": "POST /jobs"});

    // a background task started while handling the request
    let handle = scope_sync(ctx(context.clone()), || {
        bemi_context::spawn(async move {
            let tx = begin(&mut client).await.unwrap();
            insert(&tx, 1, 1).await;
            tx.commit().await.unwrap();
            client
        })
    });
    let mut client = handle.await.unwrap();

    // A plain tokio::spawn does not carry it: nothing is emitted there.
    scope(ctx(json!({"lost": true})), async move {
        tokio::spawn(async move {
            let tx = begin(&mut client).await.unwrap();
            insert(&tx, 2, 2).await;
            tx.commit().await.unwrap();
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
async fn a_hundred_concurrent_tasks_on_a_shared_pool_never_mix_contexts() {
    let h = Tracked::start().await;
    let pool = pool(&h.db, 10);
    let tasks: Vec<_> = (0..100)
        .map(|task: i32| {
            let pool = pool.clone();
            let context = task_context(task);
            tokio::spawn(scope(context, async move {
                for step in 0..2 {
                    // yield between steps so tasks interleave on the connections
                    tokio::task::yield_now().await;
                    let mut object = pool.get().await.unwrap();
                    let tx = begin(&mut object).await.unwrap();
                    if step == 0 {
                        insert(&tx, task, task).await;
                    } else {
                        tx.execute(
                            "UPDATE items SET note = $2 WHERE id = $1",
                            &[&task, &format!("step {step}")],
                        )
                        .await
                        .unwrap();
                    }
                    tx.commit().await.unwrap();
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
    let mut client = connect(&h).await;
    let big = oversized_context();
    assert_eq!(bemi_context::payload(&big), None);

    let tx = begin_with(&mut client, &big).await.unwrap();
    insert(&tx, 1, 1).await;
    tx.commit().await.unwrap();
    let tx = client.transaction().await.unwrap();
    assert!(!emit_with(&tx, &big).await.unwrap());
    insert(&tx, 2, 1).await;
    tx.commit().await.unwrap();

    let rows = h.finish().await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.context == json!({})), "{rows:?}");
}

#[tokio::test]
async fn quotes_comments_backslashes_and_unicode_arrive_intact() {
    let h = Tracked::start().await;
    let mut client = connect(&h).await;
    let tricky = tricky_context();
    let context = Value::from(tricky.clone());
    let tx = begin_with(&mut client, &tricky).await.unwrap();
    insert(&tx, 1, 1).await;
    tx.commit().await.unwrap();
    // and pipelined
    let tx = client.transaction().await.unwrap();
    emit_before_with(
        &tx,
        &tricky,
        tx.execute("INSERT INTO items (id, task) VALUES (2, 1)", &[]),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let rows = h.finish().await;
    assert_eq!(rows[0].context, context);
    assert_eq!(rows[1].context, context);
}

/// A deadpool-postgres pool for the test database.
fn pool(db: &TestDatabase, size: usize) -> deadpool_postgres::Pool {
    db.options().pool(size).expect("pool")
}
