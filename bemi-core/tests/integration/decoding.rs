//! The replication client and decoder against a real server: every kind of change, in order,
//! with its values.

use std::time::Duration;

use bemi_core::RowEvent;
use bemi_testkit::{EventTap, TestDatabase};
use bytes::Bytes;
use futures_util::SinkExt as _;

const WAIT: Duration = Duration::from_secs(30);

/// A compact, exact rendering of an event for comparison.
fn render(event: &RowEvent) -> String {
    let name = |r: &bemi_core::RelationInfo| format!("{}.{}", r.schema, r.table);
    let key = |k: &Option<String>| k.clone().unwrap_or_else(|| "-".into());
    match event {
        RowEvent::Begin { .. } => "BEGIN".into(),
        RowEvent::Commit { .. } => "COMMIT".into(),
        RowEvent::Insert {
            relation,
            new,
            primary_key,
        } => format!(
            "INSERT {} pk={} new={}",
            name(relation),
            key(primary_key),
            new.as_json()
        ),
        RowEvent::Update {
            relation,
            old,
            new,
            primary_key,
        } => format!(
            "UPDATE {} pk={} old={} new={}",
            name(relation),
            key(primary_key),
            old.as_ref().map_or("none", |o| o.as_json()),
            new.as_json()
        ),
        RowEvent::Delete {
            relation,
            old,
            primary_key,
        } => format!(
            "DELETE {} pk={} old={}",
            name(relation),
            key(primary_key),
            old.as_json()
        ),
        RowEvent::Truncate {
            relations,
            cascade,
            restart_identity,
        } => format!(
            "TRUNCATE {} cascade={cascade} restart={restart_identity}",
            relations
                .iter()
                .map(|r| name(r))
                .collect::<Vec<_>>()
                .join(",")
        ),
        RowEvent::Message {
            transactional,
            prefix,
            content,
            ..
        } => format!(
            "MESSAGE {prefix} transactional={transactional} {}",
            String::from_utf8_lossy(content)
        ),
        other => format!("{other:?}"),
    }
}

async fn next(tap: &mut EventTap) -> Vec<String> {
    tap.next_transaction(WAIT)
        .await
        .expect("a transaction")
        .iter()
        .map(render)
        .collect()
}

#[tokio::test]
async fn every_kind_of_change_arrives_in_order_with_its_values() {
    let db = TestDatabase::create().await.expect("test database");
    let sql = db.connect().await.expect("connect");
    sql.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
         ALTER TABLE items REPLICA IDENTITY FULL;
         CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent);
         CREATE TABLE big (id int PRIMARY KEY, blob text, n int);
         ALTER TABLE big ALTER COLUMN blob SET STORAGE EXTERNAL;
         ALTER TABLE big REPLICA IDENTITY FULL;
         CREATE TABLE nopk (a int, b text);
         ALTER TABLE nopk REPLICA IDENTITY FULL;
         CREATE TABLE pair (a int, b text, v text, PRIMARY KEY (a, b));
         INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);
         INSERT INTO big SELECT 1, string_agg(md5(random()::text), ''), 0 FROM generate_series(1, 3200);",
    )
    .await
    .expect("schema");
    let mut tap = EventTap::start(&db).await.expect("tap");

    // INSERT, UPDATE, DELETE
    sql.batch_execute(
        "BEGIN; INSERT INTO items VALUES (1, 'apple', 3);
         UPDATE items SET qty = 4 WHERE id = 1;
         INSERT INTO items VALUES (2, 'pear', 1);
         DELETE FROM items WHERE id = 2; COMMIT;",
    )
    .await
    .unwrap();
    assert_eq!(
        next(&mut tap).await,
        [
            "BEGIN",
            r#"INSERT public.items pk=1 new={"id":1,"name":"apple","qty":3}"#,
            r#"UPDATE public.items pk=1 old={"id":1,"name":"apple","qty":3} new={"id":1,"name":"apple","qty":4}"#,
            r#"INSERT public.items pk=2 new={"id":2,"name":"pear","qty":1}"#,
            r#"DELETE public.items pk=2 old={"id":2,"name":"pear","qty":1}"#,
            "COMMIT",
        ]
    );

    // TRUNCATE of two tables with CASCADE
    sql.batch_execute("TRUNCATE parent CASCADE").await.unwrap();
    let truncate = next(&mut tap).await;
    assert_eq!(truncate.len(), 3, "{truncate:?}");
    assert!(
        truncate[1] == "TRUNCATE public.parent,public.child cascade=true restart=false"
            || truncate[1] == "TRUNCATE public.child,public.parent cascade=true restart=false",
        "{truncate:?}"
    );

    // a 3-row COPY
    let sink = sql
        .copy_in("COPY items (id, name, qty) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"4\tfig\t1\n5\tkiwi\t2\n6\tlime\t\\N\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 3);
    assert_eq!(
        next(&mut tap).await,
        [
            "BEGIN",
            r#"INSERT public.items pk=4 new={"id":4,"name":"fig","qty":1}"#,
            r#"INSERT public.items pk=5 new={"id":5,"name":"kiwi","qty":2}"#,
            r#"INSERT public.items pk=6 new={"id":6,"name":"lime","qty":null}"#,
            "COMMIT",
        ]
    );

    // an UPDATE of a REPLICA IDENTITY FULL row with an untouched 100 KB incompressible value
    sql.batch_execute("UPDATE big SET n = 1 WHERE id = 1")
        .await
        .unwrap();
    let blob: String = sql
        .query_one("SELECT blob FROM big WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(blob.len(), 102_400);
    let events = tap.next_transaction(WAIT).await.unwrap();
    let RowEvent::Update {
        old,
        new,
        primary_key,
        ..
    } = &events[1]
    else {
        panic!("expected an update, got {events:?}");
    };
    assert_eq!(primary_key.as_deref(), Some("1"));
    let expected = |n: i32| serde_json::json!({"id": 1, "blob": blob, "n": n});
    assert_eq!(old.as_ref().map(|o| o.to_value()), Some(expected(0)));
    assert_eq!(new.to_value(), expected(1));

    // a primary-key change
    sql.batch_execute("UPDATE items SET id = 10 WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        next(&mut tap).await[1],
        r#"UPDATE public.items pk=10 old={"id":1,"name":"apple","qty":4} new={"id":10,"name":"apple","qty":4}"#
    );

    // a table without a primary key
    sql.batch_execute(
        "INSERT INTO nopk VALUES (1, 'x'); UPDATE nopk SET b = 'y'; DELETE FROM nopk;",
    )
    .await
    .unwrap();
    assert_eq!(
        next(&mut tap).await,
        [
            "BEGIN",
            r#"INSERT public.nopk pk=- new={"a":1,"b":"x"}"#,
            r#"UPDATE public.nopk pk=- old={"a":1,"b":"x"} new={"a":1,"b":"y"}"#,
            r#"DELETE public.nopk pk=- old={"a":1,"b":"y"}"#,
            "COMMIT",
        ]
    );

    // a composite primary key
    sql.batch_execute(
        "INSERT INTO pair VALUES (7, 'x', 'first'); UPDATE pair SET v = 'second'; DELETE FROM pair;",
    )
    .await
    .unwrap();
    assert_eq!(
        next(&mut tap).await,
        [
            "BEGIN",
            r#"INSERT public.pair pk=[7,"x"] new={"a":7,"b":"x","v":"first"}"#,
            r#"UPDATE public.pair pk=[7,"x"] old=none new={"a":7,"b":"x","v":"second"}"#,
            r#"DELETE public.pair pk=[7,"x"] old={"a":7,"b":"x"}"#,
            "COMMIT",
        ]
    );

    // ALTER TABLE ADD COLUMN and DROP COLUMN between changes
    sql.batch_execute(
        "ALTER TABLE items ADD COLUMN note text;
         INSERT INTO items VALUES (20, 'plum', 5, 'ripe');
         ALTER TABLE items DROP COLUMN qty;
         INSERT INTO items VALUES (21, 'date', 'dry');",
    )
    .await
    .unwrap();
    assert_eq!(
        next(&mut tap).await,
        [
            "BEGIN",
            r#"INSERT public.items pk=20 new={"id":20,"name":"plum","qty":5,"note":"ripe"}"#,
            r#"INSERT public.items pk=21 new={"id":21,"name":"date","note":"dry"}"#,
            "COMMIT",
        ]
    );

    // a rolled-back transaction that emitted a _bemi message leaves no trace
    sql.batch_execute(
        "BEGIN; SELECT pg_logical_emit_message(true, '_bemi', '{\"rolled\":\"back\"}');
         INSERT INTO items VALUES (30, 'ghost', NULL); ROLLBACK;",
    )
    .await
    .unwrap();

    // two _bemi messages in one transaction, each before its own rows
    sql.batch_execute(
        "BEGIN; SELECT pg_logical_emit_message(true, '_bemi', '{\"step\":1}');
         INSERT INTO items VALUES (31, 'one', NULL);
         SELECT pg_logical_emit_message(true, '_bemi', '{\"step\":2}');
         INSERT INTO items VALUES (32, 'two', NULL); COMMIT;",
    )
    .await
    .unwrap();
    assert_eq!(
        next(&mut tap).await,
        [
            "BEGIN",
            r#"MESSAGE _bemi transactional=true {"step":1}"#,
            r#"INSERT public.items pk=31 new={"id":31,"name":"one","note":null}"#,
            r#"MESSAGE _bemi transactional=true {"step":2}"#,
            r#"INSERT public.items pk=32 new={"id":32,"name":"two","note":null}"#,
            "COMMIT",
        ]
    );

    // a non-transactional message arrives alone
    sql.batch_execute("SELECT pg_logical_emit_message(false, 'other', 'hello')")
        .await
        .unwrap();
    assert_eq!(
        next(&mut tap).await,
        ["MESSAGE other transactional=false hello"]
    );
}
