//! bemi-sqlx end to end: sqlx transactions with context, through the tracker into `changes`.

use crate::common::{contexts, oversized_context, tricky_context, Harness};
use bemi_context::{scope, Context};
use serde_json::{json, Value};
use sqlx::{Acquire as _, Connection as _, PgPool};

async fn insert(conn: &mut sqlx::PgConnection, id: i32, task: i32) {
    sqlx::query("INSERT INTO items (id, task) VALUES ($1, $2)")
        .bind(id)
        .bind(task)
        .execute(conn)
        .await
        .expect("insert");
}

#[tokio::test]
async fn transaction_with_context_stores_exactly_its_rows_with_that_context() {
    let h = Harness::start().await;
    let explicit = Context::new()
        .with("user_id", 42)
        .with("endpoint", "POST /items");
    let mut tx = bemi_sqlx::begin_with(&h.pool, &explicit).await.unwrap();
    insert(&mut tx, 1, 1).await;
    insert(&mut tx, 2, 1).await;
    sqlx::query("UPDATE items SET note = 'edited' WHERE id = 1")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // the current context, from a scope
    let current = Context::new().with("user_id", 7).with("job", "import");
    scope(current.clone(), async {
        let mut tx = bemi_sqlx::begin(&h.pool).await.unwrap();
        sqlx::query("DELETE FROM items WHERE id = 2")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    })
    .await;

    // no context at all: nothing emitted
    let mut tx = bemi_sqlx::begin(&h.pool).await.unwrap();
    insert(&mut tx, 3, 3).await;
    tx.commit().await.unwrap();

    let changes = h.changes().await;
    let ops: Vec<&str> = changes.iter().map(|c| c.operation.as_str()).collect();
    assert_eq!(ops, ["CREATE", "CREATE", "UPDATE", "DELETE", "CREATE"]);
    let explicit = Value::from(explicit);
    assert_eq!(
        contexts(&changes),
        [
            explicit.clone(),
            explicit.clone(),
            explicit,
            Value::from(current),
            json!({})
        ]
    );
    assert_eq!(changes[2].after["note"], "edited");
    h.shutdown().await;
}

#[tokio::test]
async fn rolled_back_transaction_with_context_leaves_no_rows() {
    let h = Harness::start().await;
    let ctx = Context::new().with("user_id", 1);
    let mut tx = bemi_sqlx::begin_with(&h.pool, &ctx).await.unwrap();
    insert(&mut tx, 1, 1).await;
    tx.rollback().await.unwrap();

    // dropped without commit: rolled back too
    scope(ctx.clone(), async {
        let mut tx = bemi_sqlx::begin(&h.pool).await.unwrap();
        insert(&mut tx, 2, 2).await;
    })
    .await;

    // and the next transaction on the pool is not affected by either
    let mut tx = h.pool.begin().await.unwrap();
    insert(&mut tx, 3, 3).await;
    tx.commit().await.unwrap();

    let changes = h.changes().await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].after["id"], 3);
    assert_eq!(changes[0].context, json!({}));
    h.shutdown().await;
}

#[tokio::test]
async fn begin_on_a_connection_and_nested_savepoints() {
    let h = Harness::start().await;
    let outer = Context::new().with("level", "outer");
    let kept = Context::new().with("level", "kept savepoint");
    let undone = Context::new().with("level", "undone savepoint");

    let mut conn = h.pool.acquire().await.unwrap();
    let mut tx = bemi_sqlx::begin_with(&mut conn, &outer).await.unwrap();
    insert(&mut tx, 1, 1).await;

    // a rolled-back savepoint takes its rows and its context with it
    let mut savepoint = bemi_sqlx::begin_with(&mut tx, &undone).await.unwrap();
    insert(&mut savepoint, 2, 2).await;
    savepoint.rollback().await.unwrap();
    insert(&mut tx, 3, 3).await;

    // a released savepoint keeps both
    let mut savepoint = bemi_sqlx::begin_with(&mut tx, &kept).await.unwrap();
    insert(&mut savepoint, 4, 4).await;
    savepoint.commit().await.unwrap();
    tx.commit().await.unwrap();

    // a bare PgConnection, with the current context
    let raw = conn.acquire().await.unwrap();
    let plain = Context::new().with("on", "PgConnection");
    scope(plain.clone(), async {
        let mut tx = bemi_sqlx::begin(&mut *raw).await.unwrap();
        insert(&mut tx, 5, 5).await;
        tx.commit().await.unwrap();
    })
    .await;
    assert!(!raw.is_in_transaction());
    drop(conn);

    let changes = h.changes().await;
    let ids: Vec<&Value> = changes.iter().map(|c| &c.after["id"]).collect();
    assert_eq!(ids, [&json!(1), &json!(3), &json!(4), &json!(5)]);
    assert_eq!(
        contexts(&changes),
        [
            Value::from(outer.clone()),
            Value::from(outer),
            Value::from(kept),
            Value::from(plain)
        ]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn emit_into_a_transaction_the_caller_holds() {
    let h = Harness::start().await;
    let ctx = Context::new().with("isolation", "serializable");
    let mut conn = h.pool.acquire().await.unwrap();
    let mut tx = conn
        .begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE")
        .await
        .unwrap();
    assert!(bemi_sqlx::emit_with(&mut tx, &ctx).await.unwrap());
    assert!(!bemi_sqlx::emit_with(&mut tx, &Context::new())
        .await
        .unwrap());
    assert!(!bemi_sqlx::emit(&mut tx).await.unwrap());
    insert(&mut tx, 1, 1).await;
    tx.commit().await.unwrap();
    // outside a transaction the message would reach no change: refused
    let err = bemi_sqlx::emit_with(&mut conn, &ctx).await.unwrap_err();
    assert!(matches!(err, sqlx::Error::InvalidArgument(_)), "{err}");
    assert!(
        err.to_string().contains("needs an open transaction"),
        "{err}"
    );
    drop(conn);

    let current = Context::new().with("from", "scope");
    scope(current.clone(), async {
        let mut tx = h.pool.begin().await.unwrap();
        assert!(bemi_sqlx::emit(&mut tx).await.unwrap());
        insert(&mut tx, 2, 2).await;
        tx.commit().await.unwrap();
    })
    .await;

    let changes = h.changes().await;
    assert_eq!(contexts(&changes), [Value::from(ctx), Value::from(current)]);
    h.shutdown().await;
}

#[tokio::test]
async fn closure_transactions_commit_on_ok_and_roll_back_on_err() {
    let h = Harness::start().await;
    let current = Context::new().with("way", "transaction");
    let explicit = Context::new().with("way", "transaction_with");

    // the current context, on a pool; the callback's value is returned
    let one = scope(current.clone(), async {
        bemi_sqlx::transaction(&h.pool, |tx| {
            Box::pin(async move {
                insert(tx, 1, 1).await;
                sqlx::query_scalar::<_, i32>("SELECT 1")
                    .fetch_one(&mut **tx)
                    .await
            })
        })
        .await
    })
    .await
    .unwrap();
    assert_eq!(one, 1);

    // an error from the callback rolls back, its rows and its context with it
    let err = bemi_sqlx::transaction_with(&h.pool, &explicit, |tx| {
        Box::pin(async move {
            insert(tx, 2, 2).await;
            Err::<(), _>(sqlx::Error::RowNotFound)
        })
    })
    .await
    .unwrap_err();
    assert!(matches!(err, sqlx::Error::RowNotFound), "{err}");

    // an explicit context, on a pooled connection, which is idle afterwards
    let mut conn = h.pool.acquire().await.unwrap();
    bemi_sqlx::transaction_with(&mut conn, &explicit, |tx| {
        Box::pin(async move {
            insert(tx, 3, 3).await;
            Ok::<_, sqlx::Error>(())
        })
    })
    .await
    .unwrap();
    assert!(!conn.is_in_transaction());
    drop(conn);

    let changes = h.changes().await;
    let ids: Vec<&Value> = changes.iter().map(|c| &c.after["id"]).collect();
    assert_eq!(ids, [&json!(1), &json!(3)]);
    assert_eq!(
        contexts(&changes),
        [Value::from(current), Value::from(explicit)]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn execute_runs_a_single_write_in_a_transaction_with_its_context() {
    let h = Harness::start().await;
    let ctx = Context::new().with("endpoint", "PUT /items/1");
    let done = bemi_sqlx::execute_with(
        &h.pool,
        &ctx,
        sqlx::query("INSERT INTO items (id, task) VALUES ($1, $2), ($3, $4)")
            .bind(1)
            .bind(1)
            .bind(2)
            .bind(2),
    )
    .await
    .unwrap();
    assert_eq!(done.rows_affected(), 2);

    let current = Context::new().with("endpoint", "DELETE /items/2");
    scope(current.clone(), async {
        let done = bemi_sqlx::execute(&h.pool, sqlx::query("DELETE FROM items WHERE id = 2"))
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
    })
    .await;

    // without a context: a plain autocommit write
    bemi_sqlx::execute(
        &h.pool,
        sqlx::query("UPDATE items SET note = 'n' WHERE id = 1"),
    )
    .await
    .unwrap();

    // a failing write with context leaves nothing behind and the connection usable
    let mut conn = h.pool.acquire().await.unwrap();
    let err = bemi_sqlx::execute_with(&mut conn, &ctx, sqlx::query("INSERT INTO items VALUES (1)"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("duplicate key"), "{err}");
    assert!(!conn.is_in_transaction());
    bemi_sqlx::execute_with(&mut conn, &ctx, sqlx::query("INSERT INTO items VALUES (9)"))
        .await
        .unwrap();
    drop(conn);

    let changes = h.changes().await;
    let ctx = Value::from(ctx);
    assert_eq!(
        contexts(&changes),
        [
            ctx.clone(),
            ctx.clone(),
            Value::from(current),
            json!({}),
            ctx
        ]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn execute_in_an_open_transaction_emits_into_it() {
    let h = Harness::start().await;
    let job = Context::new().with("job", "nightly");
    let request = Context::new().with("request_id", "r-7");

    let mut tx = bemi_sqlx::begin_with(&h.pool, &job).await.unwrap();
    insert(&mut tx, 1, 1).await;
    let done = bemi_sqlx::execute_with(
        &mut tx,
        &request,
        sqlx::query("INSERT INTO items VALUES (2)"),
    )
    .await
    .unwrap();
    assert_eq!(done.rows_affected(), 1);
    // a later write of the transaction takes the latest context, as after any emit
    insert(&mut tx, 3, 3).await;
    tx.commit().await.unwrap();

    // a failing write aborts the transaction exactly as it would without a context
    let mut tx = bemi_sqlx::begin_with(&h.pool, &job).await.unwrap();
    insert(&mut tx, 4, 4).await;
    let err = bemi_sqlx::execute_with(
        &mut tx,
        &request,
        sqlx::query("INSERT INTO items VALUES (1)"),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("duplicate key"), "{err}");
    let aborted = sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap_err();
    assert!(
        aborted
            .to_string()
            .contains("current transaction is aborted"),
        "{aborted}"
    );
    tx.rollback().await.unwrap();

    let changes = h.changes().await;
    let ids: Vec<&str> = changes
        .iter()
        .filter_map(|c| c.primary_key.as_deref())
        .collect();
    assert_eq!(ids, ["1", "2", "3"]);
    let request = Value::from(request);
    assert_eq!(
        contexts(&changes),
        [Value::from(job), request.clone(), request]
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_carried_into_a_spawned_task_arrives() {
    let h = Harness::start().await;
    let ctx = Context::new().with("request_id", "r-1").with("user_id", 5);
    let pool = h.pool.clone();
    scope(ctx.clone(), async move {
        bemi_context::spawn(async move {
            let mut tx = bemi_sqlx::begin(&pool).await.unwrap();
            insert(&mut tx, 1, 1).await;
            tx.commit().await.unwrap();
        })
        .await
        .unwrap();
    })
    .await;
    // a plain tokio::spawn does not carry it
    let pool = h.pool.clone();
    scope(ctx.clone(), async move {
        tokio::spawn(async move {
            let mut tx = bemi_sqlx::begin(&pool).await.unwrap();
            insert(&mut tx, 2, 2).await;
            tx.commit().await.unwrap();
        })
        .await
        .unwrap();
    })
    .await;

    let changes = h.changes().await;
    assert_eq!(contexts(&changes), [Value::from(ctx), json!({})]);
    h.shutdown().await;
}

async fn write_as_task(pool: PgPool, task: i32) {
    let mut tx = bemi_sqlx::begin(&pool).await.unwrap();
    insert(&mut tx, task, task).await;
    tokio::task::yield_now().await;
    insert(&mut tx, 1000 + task, task).await;
    tx.commit().await.unwrap();
    // and a single write, with a delete of the first row
    bemi_sqlx::execute(
        &pool,
        sqlx::query("DELETE FROM items WHERE id = $1").bind(task),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_tasks_with_their_own_contexts_never_mix() {
    let h = Harness::start().await;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let ctx = Context::new().with("task", i);
            tokio::spawn(scope(ctx, write_as_task(h.pool.clone(), i)))
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }

    let changes = h.changes().await;
    assert_eq!(changes.len(), 300);
    for change in &changes {
        assert_eq!(change.context, json!({"task": change.task()}), "{change:?}");
    }
    let mut tasks: Vec<i64> = changes
        .iter()
        .map(|c| c.context["task"].as_i64().unwrap())
        .collect();
    tasks.sort_unstable();
    tasks.dedup();
    assert_eq!(tasks, (0..100).collect::<Vec<i64>>());
    h.shutdown().await;
}

#[tokio::test]
async fn context_over_the_size_limit_is_skipped_and_the_write_succeeds() {
    let h = Harness::start().await;
    let mut tx = bemi_sqlx::begin_with(&h.pool, &oversized_context())
        .await
        .unwrap();
    insert(&mut tx, 1, 1).await;
    tx.commit().await.unwrap();
    scope(oversized_context(), async {
        bemi_sqlx::execute(&h.pool, sqlx::query("INSERT INTO items VALUES (2)"))
            .await
            .unwrap();
    })
    .await;

    let changes = h.changes().await;
    assert_eq!(contexts(&changes), [json!({}), json!({})]);
    h.shutdown().await;
}

#[tokio::test]
async fn context_with_comment_markers_quotes_backslashes_and_unicode_arrives_intact() {
    let h = Harness::start().await;
    let ctx = tricky_context();
    // one round trip (the literal of `emit; BEGIN`) and the bound form (a savepoint)
    let mut tx = bemi_sqlx::begin_with(&h.pool, &ctx).await.unwrap();
    insert(&mut tx, 1, 1).await;
    let mut savepoint = bemi_sqlx::begin_with(&mut tx, &ctx.clone().with("bound", true))
        .await
        .unwrap();
    insert(&mut savepoint, 2, 2).await;
    savepoint.commit().await.unwrap();
    tx.commit().await.unwrap();

    let changes = h.changes().await;
    assert_eq!(
        contexts(&changes),
        [
            Value::from(ctx.clone()),
            Value::from(ctx.with("bound", true))
        ]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_failing_emit_leaves_the_pooled_connection_idle() {
    let h = Harness::start().await;
    // A role that may not emit messages, as after the hardening in bemi_context's docs.
    let role = format!("{}_app", h.db.name());
    // The role name is the test database's, made of safe characters.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        r#"CREATE ROLE "{role}" LOGIN;
           GRANT ALL ON items TO "{role}";
           DO $$
           DECLARE f regprocedure;
           BEGIN
             FOR f IN SELECT oid FROM pg_proc WHERE proname = 'pg_logical_emit_message' LOOP
               EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
             END LOOP;
           END $$;"#
    )))
    .execute(&h.pool)
    .await
    .unwrap();
    let app = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(crate::common::sqlx_options(&h.db.options()).username(&role))
        .await
        .unwrap();

    let ctx = Context::new().with("user_id", 1);
    let err = bemi_sqlx::begin_with(&app, &ctx).await.unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    // the pool's only connection is idle, not stuck in an aborted transaction
    let mut conn = app.acquire().await.unwrap();
    let status: String = sqlx::query_scalar("SELECT 'idle'")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(status, "idle");
    let err = bemi_sqlx::begin_with(&mut *conn, &ctx).await.unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    assert!(!conn.is_in_transaction());
    drop(conn);
    let mut tx = app.begin().await.unwrap();
    insert(&mut tx, 1, 1).await;
    tx.commit().await.unwrap();
    app.close().await;

    let changes = h.changes().await;
    assert_eq!(contexts(&changes), [json!({})]);
    h.shutdown().await;
}
