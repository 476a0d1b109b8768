//! The read API through sqlx, SeaORM, Diesel and diesel-async gives exactly what it gives
//! through tokio-postgres: history, filters, pages, diffs, time travel and revert plans; the
//! SeaORM entity and the Diesel `table!` read the same rows; a revert applies in a driver's
//! own transaction and refuses outside one.

use bemi_core::{ErrorKind, Operation};
use bemi_query::{
    blocking, diesel_schema, sea_orm_changes, ChangeFilter, ChangeQuery, Database, Order, Revert,
    StoredChange, TimeTravel,
};
use bemi_testkit::trail::{clock, rows, start, write};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

const SCHEMA: &str = "CREATE TABLE todo (id int PRIMARY KEY, title text NOT NULL,
                                         done bool NOT NULL DEFAULT false, note text);
                      ALTER TABLE todo REPLICA IDENTITY FULL;";

/// A history where most changes touch `note` and few touch `done`; returns moments between
/// its parts.
async fn history(sql: &tokio_postgres::Client) -> Vec<DateTime<Utc>> {
    let mut moments = vec![clock(sql).await];
    write(
        sql,
        json!({"user": "alice", "request_id": "r1"}),
        "INSERT INTO todo (id, title) VALUES (1, 'a'), (2, 'b'), (3, 'c');",
    )
    .await;
    moments.push(clock(sql).await);
    for i in 1..=12 {
        let done = match i % 5 {
            0 => ", done = NOT done",
            _ => "",
        };
        let user = ["alice", "bob"][i % 2];
        write(
            sql,
            json!({"user": user, "request_id": format!("u{i}"), "step": i}),
            &format!(
                "UPDATE todo SET note = 'n{i}'{done} WHERE id = {};",
                1 + i % 3
            ),
        )
        .await;
        if i == 6 {
            moments.push(clock(sql).await);
        }
    }
    moments.push(clock(sql).await);
    write(
        sql,
        json!({"user": "carol", "request_id": "r2"}),
        "DELETE FROM todo WHERE id = 3; UPDATE todo SET title = 'b2' WHERE id = 2;",
    )
    .await;
    moments.push(clock(sql).await);
    moments
}

/// Every page of `query`, following the cursors.
async fn pages<D: Database>(db: &mut D, mut query: ChangeQuery) -> Vec<Vec<StoredChange>> {
    let mut pages = Vec::new();
    loop {
        let page = query.fetch_page(&mut *db).await.unwrap();
        pages.push(page.changes);
        match page.next {
            // Through its URL form, as a web client would send it back.
            Some(next) => query = query.after(next.to_string().parse().unwrap()),
            None => return pages,
        }
    }
}

/// What a reader asks of the trail, read through `db`, as JSON.
async fn read_all<D: Database>(mut db: D, moments: &[DateTime<Utc>]) -> Value {
    let db = &mut db;
    let history = ChangeQuery::history("todo".parse().unwrap(), "2")
        .fetch(&mut *db)
        .await
        .unwrap();
    let diffs: Vec<Value> = history.iter().map(|c| json!(c.diff())).collect();
    let alice = ChangeFilter::new()
        .context_contains(json!({"user": "alice"}))
        .query()
        .order(Order::Desc)
        .fetch(&mut *db)
        .await
        .unwrap();
    let written = ChangeFilter::new()
        .table("todo")
        .operations([Operation::Create, Operation::Delete])
        .since(moments[1])
        .query()
        .fetch(&mut *db)
        .await
        .unwrap();
    let done_pages = pages(
        db,
        ChangeFilter::new()
            .table("todo")
            .column_changed("done")
            .query()
            .limit(2),
    )
    .await;
    let todo = TimeTravel::new("public.todo".parse().unwrap());
    let mut travel = Vec::new();
    for moment in moments {
        let row = todo.row_at_in(&mut *db, "3", *moment).await.unwrap();
        let table = todo.table_at_in(&mut *db, *moment).await.unwrap();
        travel.push(json!({"row": row, "table": table}));
    }
    let plan = Revert::new(ChangeFilter::new().context_contains(json!({"request_id": "r2"})))
        .by("test")
        .plan_in(&mut *db)
        .await
        .unwrap();
    json!({
        "history": history,
        "diffs": diffs,
        "alice": alice,
        "written": written,
        "done_pages": done_pages,
        "travel": travel,
        "revert": {"sql": plan.sql(), "changes": plan.changes, "conflicts": plan.conflicts},
    })
}

#[tokio::test]
async fn every_driver_reads_the_trail_as_tokio_postgres_does() {
    let (db, sql, tracker) = start(SCHEMA).await;
    let moments = history(&sql).await;
    tracker.sync().await.unwrap();
    let url = db.options().to_url();

    let reference = read_all(&sql, &moments).await;
    // The reference itself reads what was written.
    assert_eq!(reference["history"].as_array().unwrap().len(), 6);
    assert_eq!(reference["travel"][0]["table"], json!([]));
    assert_eq!(reference["travel"][1]["table"].as_array().unwrap().len(), 3);
    assert_eq!(reference["travel"][4]["row"], Value::Null, "row 3 deleted");

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    assert_eq!(read_all(&pool, &moments).await, reference, "sqlx pool");
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        read_all(&mut conn, &moments).await,
        reference,
        "sqlx connection"
    );
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(
        read_all(&mut tx, &moments).await,
        reference,
        "sqlx transaction"
    );
    tx.rollback().await.unwrap();

    let sea = sea_orm::Database::connect(&url).await.unwrap();
    assert_eq!(read_all(&sea, &moments).await, reference, "SeaORM");
    let txn = sea_orm::TransactionTrait::begin(&sea).await.unwrap();
    assert_eq!(
        read_all(&txn, &moments).await,
        reference,
        "SeaORM transaction"
    );
    drop(txn);

    let mut diesel = <diesel::PgConnection as diesel::Connection>::establish(&url).unwrap();
    let read = blocking(async { Ok(read_all(&mut diesel, &moments).await) }).unwrap();
    assert_eq!(read, reference, "Diesel");

    let mut diesel_async =
        <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(&url)
            .await
            .unwrap();
    assert_eq!(
        read_all(&mut diesel_async, &moments).await,
        reference,
        "diesel-async"
    );
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_column_filter_fills_every_page_where_filtering_fetched_pages_would_not() {
    let (_db, sql, tracker) = start(SCHEMA).await;
    history(&sql).await;
    tracker.sync().await.unwrap();
    let todo = || ChangeFilter::new().table("todo");
    let all = todo().query().fetch(&sql).await.unwrap();
    let expected: Vec<String> = all
        .iter()
        .filter(|c| c.diff().get("done").is_some())
        .map(|c| c.id.clone())
        .collect();
    // 3 CREATEs, 2 of the 12 UPDATEs, the DELETE.
    assert_eq!(expected.len(), 6);

    let filtered = pages(&mut &sql, todo().column_changed("done").query().limit(2)).await;
    assert_eq!(filtered.len(), 3);
    assert!(filtered.iter().all(|page| page.len() == 2), "{filtered:?}");
    let got: Vec<String> = filtered.concat().iter().map(|c| c.id.clone()).collect();
    assert_eq!(got, expected);

    // The same pages filtered after fetching: most come back empty.
    let fetched = pages(&mut &sql, todo().query().limit(2)).await;
    let empty = fetched
        .iter()
        .filter(|page| page.iter().all(|c| c.diff().get("done").is_none()))
        .count();
    assert!(empty >= 4, "{empty} of {} pages", fetched.len());

    // Newest first, and two columns at once (both changed).
    let newest = pages(
        &mut &sql,
        todo()
            .column_changed("done")
            .query()
            .order(Order::Desc)
            .limit(4),
    )
    .await;
    let mut reversed: Vec<String> = newest.concat().iter().map(|c| c.id.clone()).collect();
    reversed.reverse();
    assert_eq!(reversed, expected);
    let both = todo()
        .column_changed("done")
        .column_changed("note")
        .operation(Operation::Update)
        .query()
        .fetch(&sql)
        .await
        .unwrap();
    assert_eq!(both.len(), 2);
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_seaorm_entity_and_the_diesel_table_read_the_same_rows() {
    use diesel::prelude::*;
    use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _, QueryOrder as _};

    let (db, sql, tracker) = start(SCHEMA).await;
    history(&sql).await;
    tracker.sync().await.unwrap();
    let url = db.options().to_url();
    let reference = ChangeFilter::new()
        .table("todo")
        .query()
        .fetch(&sql)
        .await
        .unwrap();

    let sea = sea_orm::Database::connect(&url).await.unwrap();
    let models = sea_orm_changes::Entity::find()
        .filter(sea_orm_changes::Column::Table.eq("todo"))
        .order_by_asc(sea_orm_changes::Column::CommitLsn)
        .order_by_asc(sea_orm_changes::Column::Ordinal)
        .all(&sea)
        .await
        .unwrap();
    let from_entity: Vec<StoredChange> = models
        .into_iter()
        .map(|m| StoredChange::try_from(m).unwrap())
        .collect();
    assert_eq!(json!(from_entity), json!(reference));

    use diesel_schema::changes;
    let mut conn = diesel::PgConnection::establish(&url).unwrap();
    let keys: Vec<(Option<String>, String, Option<i64>)> = changes::table
        .filter(changes::table_.eq("todo"))
        .order((changes::commit_lsn.asc(), changes::ordinal.asc()))
        .select((
            changes::primary_key,
            changes::operation,
            changes::commit_lsn,
        ))
        .load(&mut conn)
        .unwrap();
    let expected: Vec<(Option<String>, String, Option<i64>)> = reference
        .iter()
        .map(|c| {
            (
                c.primary_key.clone(),
                c.operation.to_string(),
                Some(c.commit_lsn.to_int8()),
            )
        })
        .collect();
    assert_eq!(keys, expected);
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_revert_applies_in_a_drivers_transaction_and_refuses_outside_one() {
    let (db, sql, tracker) = start(SCHEMA).await;
    history(&sql).await;
    tracker.sync().await.unwrap();
    let before_r2 = rows(&sql, "todo", "id").await;
    let pool = sqlx::PgPool::connect(&db.options().to_url()).await.unwrap();
    let revert =
        Revert::new(ChangeFilter::new().context_contains(json!({"request_id": "r2"}))).by("test");
    let plan = revert.plan_in(&pool).await.unwrap();
    assert_eq!(plan.steps.len(), 2);

    // On a pool each statement is its own transaction: refused before anything is written.
    let error = plan.apply_in(&pool).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config, "{}", error.report());
    assert_eq!(rows(&sql, "todo", "id").await, before_r2);

    let mut tx = pool.begin().await.unwrap();
    let outcome = plan.apply_in(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!((outcome.statements, outcome.rows), (2, 2));
    let now = rows(&sql, "todo", "id").await;
    assert_eq!(now.len(), 3, "row 3 is back");
    assert_eq!(now[1]["title"], "b");
    assert_eq!(now[2]["title"], "c");

    // The revert is in the trail with its own context.
    tracker.sync().await.unwrap();
    let reverted = ChangeFilter::new()
        .context_contains(json!({"by": "test"}))
        .query()
        .fetch(&pool)
        .await
        .unwrap();
    assert_eq!(reverted.len(), 2);
    #[derive(serde::Deserialize)]
    struct RevertContext {
        by: String,
        changes: usize,
        reverted: Value,
    }
    let context: RevertContext = reverted[0].context_as().unwrap();
    assert_eq!((context.by.as_str(), context.changes), ("test", 2));
    assert_eq!(context.reverted, json!({"context": {"request_id": "r2"}}));
    // A context that does not fit the type is a clear error.
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Request {
        user_id: i64,
    }
    let error = reverted[0].context_as::<Request>().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(error.report().contains("user_id"), "{}", error.report());
    tracker.shutdown().await.unwrap();
}
