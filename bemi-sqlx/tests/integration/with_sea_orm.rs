//! bemi-sqlx's SeaORM helpers end to end, through the tracker into `changes`.

use crate::common::{contexts, oversized_context, tricky_context, Harness};
use bemi_context::{scope, Context};
use sea_orm::{
    ActiveModelTrait as _, ActiveValue::Set, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait as _, SqlxPostgresConnector, TransactionError, TransactionTrait as _,
};
use serde_json::{json, Value};

#[allow(unreachable_pub)]
mod item {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "items")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub task: Option<i32>,
        pub note: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn orm(h: &Harness) -> DatabaseConnection {
    SqlxPostgresConnector::from_sqlx_postgres_pool(h.pool.clone())
}

async fn insert(txn: &DatabaseTransaction, id: i32, task: i32) -> Result<(), DbErr> {
    item::ActiveModel {
        id: Set(id),
        task: Set(Some(task)),
        note: Set(None),
    }
    .insert(txn)
    .await
    .map(drop)
}

#[tokio::test]
async fn transaction_with_context_stores_exactly_its_rows_with_that_context() {
    let h = Harness::start().await;
    let db = orm(&h);
    let explicit = Context::new()
        .with("user_id", 42)
        .with("endpoint", "POST /items");
    bemi_sqlx::sea_orm::transaction_with(&db, &explicit, |txn| {
        Box::pin(async move {
            insert(txn, 1, 1).await?;
            insert(txn, 2, 1).await?;
            let mut one: item::ActiveModel = item::Entity::find_by_id(1)
                .one(txn)
                .await?
                .expect("row 1")
                .into();
            one.note = Set(Some("edited".into()));
            one.update(txn).await?;
            Ok::<_, DbErr>(())
        })
    })
    .await
    .unwrap();

    let current = Context::new().with("user_id", 7).with("job", "import");
    scope(current.clone(), async {
        let txn = bemi_sqlx::sea_orm::begin(&db).await.unwrap();
        item::Entity::delete_by_id(2).exec(&txn).await.unwrap();
        txn.commit().await.unwrap();
    })
    .await;

    // begun by SeaORM, context emitted into it
    let txn = db.begin().await.unwrap();
    assert!(
        bemi_sqlx::sea_orm::emit_with(&txn, &current.clone().with("emitted", true))
            .await
            .unwrap()
    );
    insert(&txn, 3, 3).await.unwrap();
    txn.commit().await.unwrap();

    // no context: nothing emitted
    bemi_sqlx::sea_orm::transaction(&db, |txn| Box::pin(insert(txn, 4, 4)))
        .await
        .unwrap();

    let changes = h.changes().await;
    let ops: Vec<&str> = changes.iter().map(|c| c.operation.as_str()).collect();
    assert_eq!(
        ops,
        ["CREATE", "CREATE", "UPDATE", "DELETE", "CREATE", "CREATE"]
    );
    let explicit = Value::from(explicit);
    assert_eq!(
        contexts(&changes),
        [
            explicit.clone(),
            explicit.clone(),
            explicit,
            Value::from(current.clone()),
            Value::from(current.with("emitted", true)),
            json!({})
        ]
    );
    assert_eq!(changes[2].after["note"], "edited");
    h.shutdown().await;
}

#[tokio::test]
async fn rolled_back_transaction_with_context_leaves_no_rows() {
    let h = Harness::start().await;
    let db = orm(&h);
    let ctx = Context::new().with("user_id", 1);
    let err = bemi_sqlx::sea_orm::transaction_with(&db, &ctx, |txn| {
        Box::pin(async move {
            insert(txn, 1, 1).await?;
            Err::<(), _>(DbErr::Custom("changed my mind".into()))
        })
    })
    .await
    .unwrap_err();
    assert!(matches!(
        err,
        TransactionError::Transaction(DbErr::Custom(_))
    ));

    let txn = bemi_sqlx::sea_orm::begin_with(&db, &ctx).await.unwrap();
    insert(&txn, 2, 2).await.unwrap();
    txn.rollback().await.unwrap();

    // a nested transaction rolled back takes its rows and context; the outer one commits
    let inner_ctx = Context::new().with("user_id", 2);
    let txn = bemi_sqlx::sea_orm::begin_with(&db, &ctx).await.unwrap();
    insert(&txn, 3, 3).await.unwrap();
    let nested = bemi_sqlx::sea_orm::begin_with(&txn, &inner_ctx)
        .await
        .unwrap();
    insert(&nested, 4, 4).await.unwrap();
    nested.rollback().await.unwrap();
    insert(&txn, 5, 5).await.unwrap();
    txn.commit().await.unwrap();

    let changes = h.changes().await;
    let ids: Vec<&Value> = changes.iter().map(|c| &c.after["id"]).collect();
    assert_eq!(ids, [&json!(3), &json!(5)]);
    assert_eq!(
        contexts(&changes),
        [Value::from(ctx.clone()), Value::from(ctx)]
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_carried_into_a_spawned_task_arrives() {
    let h = Harness::start().await;
    let db = orm(&h);
    let ctx = Context::new().with("request_id", "r-1").with("user_id", 5);
    scope(ctx.clone(), async move {
        bemi_context::spawn(async move {
            bemi_sqlx::sea_orm::transaction(&db, |txn| Box::pin(insert(txn, 1, 1)))
                .await
                .unwrap();
        })
        .await
        .unwrap();
    })
    .await;

    let changes = h.changes().await;
    assert_eq!(contexts(&changes), [Value::from(ctx)]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_tasks_with_their_own_contexts_never_mix() {
    let h = Harness::start().await;
    let db = orm(&h);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let db = db.clone();
            let ctx = Context::new().with("task", i);
            tokio::spawn(scope(ctx, async move {
                bemi_sqlx::sea_orm::transaction(&db, |txn| {
                    Box::pin(async move {
                        insert(txn, i, i).await?;
                        tokio::task::yield_now().await;
                        insert(txn, 1000 + i, i).await?;
                        item::Entity::delete_by_id(i).exec(txn).await?;
                        Ok::<_, DbErr>(())
                    })
                })
                .await
                .unwrap();
            }))
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
    h.shutdown().await;
}

#[tokio::test]
async fn context_over_the_size_limit_is_skipped_and_the_write_succeeds() {
    let h = Harness::start().await;
    let db = orm(&h);
    bemi_sqlx::sea_orm::transaction_with(&db, &oversized_context(), |txn| {
        Box::pin(insert(txn, 1, 1))
    })
    .await
    .unwrap();
    let txn = db.begin().await.unwrap();
    assert!(!bemi_sqlx::sea_orm::emit_with(&txn, &oversized_context())
        .await
        .unwrap());
    insert(&txn, 2, 2).await.unwrap();
    txn.commit().await.unwrap();

    let changes = h.changes().await;
    assert_eq!(contexts(&changes), [json!({}), json!({})]);
    h.shutdown().await;
}

#[tokio::test]
async fn context_with_comment_markers_quotes_backslashes_and_unicode_arrives_intact() {
    let h = Harness::start().await;
    let db = orm(&h);
    let ctx = tricky_context();
    scope(ctx.clone(), async {
        bemi_sqlx::sea_orm::transaction(&db, |txn| Box::pin(insert(txn, 1, 1)))
            .await
            .unwrap();
    })
    .await;

    let changes = h.changes().await;
    assert_eq!(contexts(&changes), [Value::from(ctx)]);
    h.shutdown().await;
}
