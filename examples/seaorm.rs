//! Writes through SeaORM with context, and prints the changes the tracker recorded.
//!
//! ```sh
//! cargo run -p bemi-examples --example seaorm                   # a throwaway PostgreSQL
//! DATABASE_URL=postgres://postgres@localhost/app cargo run -p bemi-examples --example seaorm
//! ```
//!
//! The tracker runs in this process and stores changes in the `changes` table. With your own
//! database (PostgreSQL 14+, `wal_level = logical`, a role with REPLICATION) it creates the table
//! `bemi_example_articles`, and leaves it, the `changes` table and its slot
//! `bemi_seaorm_example` behind (drop the slot with
//! `SELECT pg_drop_replication_slot('bemi_seaorm_example')` so it does not pin WAL, and its stored
//! position with `DELETE FROM _bemi_progress WHERE slot = 'bemi_seaorm_example'`, or the next run refuses
//! to start over the gap).

use std::time::{Duration, Instant};

use bemi_context::{scope, Context};
use bemi_examples::{changes_since, spawn_tracker, BoxError, Database};
use sea_orm::{ActiveModelTrait as _, ActiveValue::Set, DbErr, EntityTrait as _};

#[allow(unreachable_pub)]
mod article {
    use sea_orm::entity::prelude::*;

    /// An article.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bemi_example_articles")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub title: String,
        pub published: bool,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let db = Database::from_env().await?;
    if let Some(url) = db.throwaway_url() {
        println!("started a throwaway PostgreSQL at {url}");
    }
    let pool = db.pool().await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS bemi_example_articles (
           id bigserial PRIMARY KEY, title text NOT NULL, published boolean NOT NULL DEFAULT false);
         ALTER TABLE bemi_example_articles REPLICA IDENTITY FULL;",
    )
    .execute(&pool)
    .await?;
    let since: String = sqlx::query_scalar("SELECT to_json(now()) #>> '{}'")
        .fetch_one(&pool)
        .await?;
    let tracker = spawn_tracker(db.options(), "bemi_seaorm_example", "bemi").await?;
    let orm = sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(pool.clone());

    // The current context (an HTTP middleware or a job runner would set it), emitted as the
    // first statement of the transaction.
    let author = Context::new()
        .with("user_id", 1)
        .with("endpoint", "POST /articles");
    let id = scope(author, async {
        bemi_sqlx::sea_orm::transaction(&orm, |txn| {
            Box::pin(async move {
                let draft = article::ActiveModel {
                    title: Set("Audit trails without triggers".to_owned()),
                    published: Set(false),
                    ..Default::default()
                }
                .insert(txn)
                .await?;
                Ok::<_, DbErr>(draft.id)
            })
        })
        .await
    })
    .await?;

    // An explicit context.
    let editor = Context::new()
        .with("user_id", 2)
        .with("job", "publish-scheduled");
    bemi_sqlx::sea_orm::transaction_with(&orm, &editor, |txn| {
        Box::pin(async move {
            let mut draft: article::ActiveModel = article::Entity::find_by_id(id)
                .one(txn)
                .await?
                .ok_or(DbErr::RecordNotFound(format!("article {id}")))?
                .into();
            draft.published = Set(true);
            draft.update(txn).await?;
            Ok::<_, DbErr>(())
        })
    })
    .await?;

    // A transaction begun by hand, and deleted with the moderator's context.
    let txn = bemi_sqlx::sea_orm::begin_with(&orm, &Context::new().with("user_id", 3)).await?;
    article::Entity::delete_by_id(id).exec(&txn).await?;
    txn.commit().await?;

    // Wait for the tracker to store the three changes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let changes = loop {
        let changes = changes_since(&pool, &since, Some("bemi_example_articles")).await?;
        if changes.len() >= 3 || Instant::now() > deadline {
            break changes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for change in &changes {
        println!(
            "{:<6} {} {} context={}",
            change["operation"].as_str().unwrap_or_default(),
            change["table"].as_str().unwrap_or_default(),
            change["primary_key"],
            change["context"]
        );
    }

    tracker.shutdown().await?;
    pool.close().await;
    db.close().await;
    if changes.len() < 3 {
        return Err(format!("expected 3 changes, the tracker stored {}", changes.len()).into());
    }
    Ok(())
}
