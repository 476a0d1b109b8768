//! Issue 13: the right data in every shape of table, on a real server through the tracker:
//! arrays with bounds, rows never changed since tracking began, replica identities other than
//! FULL, keys that are never sent, names with dots and quotes, partitioned tables.

use bemi_query::{ChangeFilter, ChangeQuery, Revert, TableName, TimeTravel};
use bemi_testkit::trail::{clock, start, sync, write};
use serde_json::{json, Value};
use tokio_postgres::Client;

fn value(raw: &serde_json::value::RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap()
}

/// The text form of the arrays of row 1 of `arrtest`.
async fn array_texts(sql: &Client) -> (String, String) {
    let row = sql
        .query_one("SELECT e::text, f::text FROM arrtest WHERE id = 1", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn arrays_with_bounds_round_trip_through_time_travel_and_revert() {
    let (_db, mut sql, tracker) = start(
        "CREATE TABLE arrtest (id int PRIMARY KEY, e numeric[], f int4[]);
         ALTER TABLE arrtest REPLICA IDENTITY FULL;
         INSERT INTO arrtest VALUES (1, '{2.2}', '{5}');",
    )
    .await;
    write(
        &sql,
        json!({"step": "bounds"}),
        "UPDATE arrtest SET e[0] = '1.1', f = '[4:4]={NULL}' WHERE id = 1;",
    )
    .await;
    let bounded = array_texts(&sql).await;
    assert_eq!(
        bounded,
        ("[0:1]={1.1,2.2}".to_owned(), "[4:4]={NULL}".to_owned())
    );
    let moment = clock(&sql).await;
    write(
        &sql,
        json!({"step": "plain"}),
        "UPDATE arrtest SET e = '{9}', f = '{1}' WHERE id = 1;",
    )
    .await;
    sync(&sql, &tracker).await;

    // Stored as the text, which a JSON array could not hold.
    let history = ChangeQuery::history("arrtest".parse().unwrap(), "1")
        .fetch(&sql)
        .await
        .unwrap();
    assert_eq!(
        value(&history[0].after),
        json!({"id": 1, "e": "[0:1]={1.1,2.2}", "f": "[4:4]={NULL}"})
    );
    assert_eq!(
        value(&history[1].after),
        json!({"id": 1, "e": [9], "f": [1]})
    );
    // Time travel gives the bounded arrays back.
    let row = TimeTravel::new("arrtest".parse().unwrap())
        .row_at(&sql, &sql, "1", moment)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        value(&row.row),
        json!({"id": 1, "e": "[0:1]={1.1,2.2}", "f": "[4:4]={NULL}"})
    );
    // Reverting the last update restores them exactly.
    Revert::new(ChangeFilter::new().context_contains(json!({"step": "plain"})))
        .run(&mut sql)
        .await
        .unwrap();
    assert_eq!(array_texts(&sql).await, bounded);
    tracker.shutdown().await.unwrap();
}

/// The table as `rows` of trail.rs gives it, as JSON values ordered by `id`.
async fn snapshot(sql: &Client, table: &str) -> Vec<Value> {
    bemi_testkit::trail::rows(sql, table, "id").await
}

async fn travel(sql: &Client, table: &str, at: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
    let rows = TimeTravel::new(table.parse().unwrap())
        .table_at(sql, sql, at)
        .await
        .unwrap();
    assert!(rows.iter().all(|r| r.unknown_columns.is_empty()));
    rows.iter().map(|r| value(&r.row)).collect()
}

#[tokio::test]
async fn time_travel_of_a_table_includes_rows_never_changed_since_tracking_began() {
    let (_db, mut sql, tracker) = start(
        "CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, total numeric(10, 2));
         ALTER TABLE orders REPLICA IDENTITY FULL;
         INSERT INTO orders SELECT g, 'new', g * 1.5 FROM generate_series(1, 50) g;",
    )
    .await;
    let start_moment = clock(&sql).await;
    let at_start = snapshot(&sql, "orders").await;
    // 20 of the 50 rows change while tracked, in two requests.
    write(
        &sql,
        json!({"request_id": "r1"}),
        "UPDATE orders SET status = 'paid' WHERE id <= 10;
         DELETE FROM orders WHERE id BETWEEN 11 AND 13;",
    )
    .await;
    let moment = clock(&sql).await;
    let at_moment = snapshot(&sql, "orders").await;
    write(
        &sql,
        json!({"request_id": "r2"}),
        "UPDATE orders SET total = 0 WHERE id BETWEEN 14 AND 20;
         INSERT INTO orders VALUES (51, 'new', 1);",
    )
    .await;
    sync(&sql, &tracker).await;

    assert_eq!(travel(&sql, "orders", start_moment).await, at_start);
    assert_eq!(travel(&sql, "orders", moment).await, at_moment);
    assert_eq!(at_moment.len(), 47);
    // One record never changed, at both moments.
    let untouched = TimeTravel::new("orders".parse().unwrap())
        .row_at(&sql, &sql, "42", moment)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value(&untouched.row), at_moment[38]);

    // After reverting the second request, the past is unchanged and the present is the table.
    Revert::new(ChangeFilter::new().context_contains(json!({"request_id": "r2"})))
        .run(&mut sql)
        .await
        .unwrap();
    sync(&sql, &tracker).await;
    let now = clock(&sql).await;
    assert_eq!(travel(&sql, "orders", moment).await, at_moment);
    assert_eq!(travel(&sql, "orders", start_moment).await, at_start);
    assert_eq!(travel(&sql, "orders", now).await, at_moment);
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn time_travel_refuses_a_key_with_a_column_that_is_never_sent() {
    let (_db, sql, tracker) = start(
        "CREATE TABLE t (a int, b int GENERATED ALWAYS AS (a * 2) STORED, v text,
                         PRIMARY KEY (a, b));
         ALTER TABLE t REPLICA IDENTITY FULL;",
    )
    .await;
    write(&sql, json!({}), "INSERT INTO t (a, v) VALUES (1, 'x');").await;
    sync(&sql, &tracker).await;
    let at = clock(&sql).await;
    let error = TimeTravel::new("t".parse().unwrap())
        .table_at(&sql, &sql, at)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("generated column"), "{error}");
    // With the key columns given, the changes themselves show the key is missing.
    let error = TimeTravel::new("t".parse().unwrap())
        .key_columns(["a", "b"])
        .table_at(&sql, &sql, at)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("no value for the key columns"), "{error}");
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_full_identity_unknown_values_stay_unknown_in_diffs_and_time_travel() {
    let (_db, sql, tracker) = start(
        "CREATE TABLE notes (id int PRIMARY KEY, title text, body text);
         ALTER TABLE notes ALTER COLUMN body SET STORAGE EXTERNAL;
         CREATE TABLE coded (id int PRIMARY KEY, code text NOT NULL UNIQUE, v text);
         CREATE UNIQUE INDEX coded_id_code ON coded (id, code);
         -- a row from before tracking began
         INSERT INTO notes VALUES (1, 'old', repeat('x', 10000));",
    )
    .await;
    // The tracker's setup made both FULL; set them back, as a DBA may.
    sql.batch_execute(
        "ALTER TABLE coded REPLICA IDENTITY USING INDEX coded_id_code;
         ALTER TABLE notes REPLICA IDENTITY DEFAULT;",
    )
    .await
    .unwrap();
    let moment = clock(&sql).await;
    write(
        &sql,
        json!({}),
        "UPDATE notes SET title = 'new' WHERE id = 1;
         INSERT INTO coded VALUES (7, 'c7', 'v');
         DELETE FROM coded WHERE id = 7;",
    )
    .await;
    sync(&sql, &tracker).await;

    let history = ChangeQuery::history("notes".parse().unwrap(), "1")
        .fetch(&sql)
        .await
        .unwrap();
    let diff = history[0].diff();
    let title = diff.get("title").unwrap();
    assert!(title.before_unknown, "{diff}");
    assert_eq!(
        serde_json::to_value(&diff).unwrap(),
        json!({"id": [{"_bemi_unknown": true}, 1], "title": [{"_bemi_unknown": true}, "new"]})
    );
    // The unchanged TOASTed body was not sent: not a change, and not null.
    assert_eq!(diff.to_string(), r#"id: ? → 1, title: ? → "new""#);
    // At the moment, only the key is known: the rest is unknown, not null.
    let row = TimeTravel::new("notes".parse().unwrap())
        .row_at(&sql, &sql, "1", moment)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value(&row.row), json!({"id": 1}));
    assert_eq!(row.unknown_columns, ["title", "body"]);

    // USING INDEX: the DELETE's key comes from the old key tuple.
    let deleted = ChangeQuery::history("coded".parse().unwrap(), "7")
        .fetch(&sql)
        .await
        .unwrap();
    let operations: Vec<String> = deleted.iter().map(|c| c.operation.to_string()).collect();
    assert_eq!(operations, ["CREATE", "DELETE"]);
    tracker.shutdown().await.unwrap();
}

/// `(operation, primary_key, before, after)` of the changes of `schema.table`, in commit order.
async fn stored(sql: &Client, schema: &str, table: &str) -> Vec<(String, String, Value, Value)> {
    sql.query(
        "SELECT operation::text, primary_key, before::text, after::text FROM changes \
         WHERE schema = $1 AND \"table\" = $2 ORDER BY commit_lsn, ordinal",
        &[&schema, &table],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let json = |i| serde_json::from_str::<Value>(r.get(i)).unwrap();
        (r.get(0), r.get(1), json(2), json(3))
    })
    .collect()
}

#[tokio::test]
async fn names_with_dots_and_quotes_are_found_by_their_quoted_name() {
    let (_db, sql, tracker) = start(
        r#"CREATE SCHEMA "Billing Dept";
           CREATE TABLE "Billing Dept"."In""voice.2024" (id int PRIMARY KEY, v text);"#,
    )
    .await;
    write(
        &sql,
        json!({"step": 1}),
        r#"INSERT INTO "Billing Dept"."In""voice.2024" VALUES (1, 'a');
           UPDATE "Billing Dept"."In""voice.2024" SET v = 'b' WHERE id = 1;"#,
    )
    .await;
    sync(&sql, &tracker).await;

    let table: TableName = r#""Billing Dept"."In""voice.2024""#.parse().unwrap();
    assert_eq!(
        table,
        TableName::qualified("Billing Dept", "In\"voice.2024")
    );
    let history = ChangeQuery::history(table.clone(), "1")
        .fetch(&sql)
        .await
        .unwrap();
    let operations: Vec<String> = history.iter().map(|c| c.operation.to_string()).collect();
    assert_eq!(operations, ["CREATE", "UPDATE"]);
    assert_eq!(history[1].qualified_table(), table);
    let row = TimeTravel::new(table)
        .row_at(&sql, &sql, "1", clock(&sql).await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value(&row.row), json!({"id": 1, "v": "b"}));
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_partitioned_table_is_tracked_under_its_own_name() {
    let (_db, sql, tracker) = start(
        "CREATE TABLE part (id int, region text, v text, PRIMARY KEY (id, region))
           PARTITION BY LIST (region);
         CREATE TABLE part_eu PARTITION OF part FOR VALUES IN ('eu');
         CREATE TABLE part_us PARTITION OF part FOR VALUES IN ('us');",
    )
    .await;
    for statement in [
        "INSERT INTO part VALUES (1, 'eu', 'a'), (2, 'us', 'b');",
        "UPDATE part SET v = 'a2' WHERE id = 1;",
        "UPDATE part SET region = 'us' WHERE id = 1;",
        "DELETE FROM part WHERE id = 2;",
    ] {
        write(&sql, json!({}), statement).await;
    }
    sync(&sql, &tracker).await;

    let leaves: i64 = sql
        .query_one(
            "SELECT count(*) FROM changes WHERE \"table\" IN ('part_eu', 'part_us')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaves, 0, "changes stored under a partition's name");
    let changes = stored(&sql, "public", "part").await;
    let summary: Vec<(&str, &str)> = changes
        .iter()
        .map(|(op, key, _, _)| (op.as_str(), key.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("CREATE", r#"[1,"eu"]"#),
            ("CREATE", r#"[2,"us"]"#),
            ("UPDATE", r#"[1,"eu"]"#),
            // PostgreSQL decodes a row moving between partitions as a DELETE from one and an
            // INSERT into the other (pgoutput does not flag the pair), even via the root.
            ("DELETE", r#"[1,"eu"]"#),
            ("CREATE", r#"[1,"us"]"#),
            ("DELETE", r#"[2,"us"]"#),
        ],
        "{changes:#?}"
    );
    // The partitions have REPLICA IDENTITY FULL too: the old rows are whole.
    assert_eq!(changes[2].2, json!({"id": 1, "region": "eu", "v": "a"}));
    assert_eq!(changes[3].2, json!({"id": 1, "region": "eu", "v": "a2"}));
    assert_eq!(changes[4].3, json!({"id": 1, "region": "us", "v": "a2"}));
    assert_eq!(changes[5].2, json!({"id": 2, "region": "us", "v": "b"}));

    let history = ChangeQuery::history("part".parse().unwrap(), r#"[1,"eu"]"#)
        .fetch(&sql)
        .await
        .unwrap();
    let operations: Vec<String> = history.iter().map(|c| c.operation.to_string()).collect();
    assert_eq!(operations, ["CREATE", "UPDATE", "DELETE"]);
    assert!(history.iter().all(|c| c.table == "part"));
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn keys_are_those_of_the_change_s_time_after_a_drop_or_a_new_primary_key() {
    let db = bemi_testkit::TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute(
        "CREATE TABLE gone (id int PRIMARY KEY, code text);
         CREATE TABLE rekeyed (x int PRIMARY KEY, y int NOT NULL);",
    )
    .await
    .unwrap();
    let tracker = db.tracker_builder().unwrap().start().await.unwrap();
    tracker.shutdown().await.unwrap();

    // while the tracker is stopped: a table is dropped, another gets a new primary key
    for statement in [
        "INSERT INTO gone VALUES (7, 'a')",
        "DROP TABLE gone",
        "INSERT INTO rekeyed VALUES (1, 10)",
        "ALTER TABLE rekeyed DROP CONSTRAINT rekeyed_pkey, ADD PRIMARY KEY (y)",
        "INSERT INTO rekeyed VALUES (2, 20)",
    ] {
        sql.batch_execute(statement).await.unwrap();
    }
    let tracker = db.tracker_builder().unwrap().start().await.unwrap();
    db.wait_for_changes(3, &tracker, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    tracker.shutdown().await.unwrap();
    let keys: Vec<(String, Option<String>)> = sql
        .query(
            "SELECT \"table\"::text, primary_key FROM changes ORDER BY commit_lsn, ordinal",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let expected = [("gone", "7"), ("rekeyed", "1"), ("rekeyed", "20")];
    let expected: Vec<(String, Option<String>)> = expected
        .iter()
        .map(|(t, k)| (t.to_string(), Some(k.to_string())))
        .collect();
    assert_eq!(keys, expected);
}
