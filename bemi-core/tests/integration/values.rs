//! Values round-trip through a real server and arrive as the JSON that BEMI-COMPAT.md's table
//! specifies.

use std::time::Duration;

use bemi_core::RowEvent;
use bemi_testkit::{EventTap, TestDatabase};

#[tokio::test]
async fn values_convert_to_lossless_json() {
    let db = TestDatabase::create().await.expect("test database");
    let sql = db.connect().await.unwrap();
    sql.batch_execute(&format!(
        "ALTER DATABASE {} SET timezone = 'Asia/Kolkata';
         CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
         CREATE TYPE pair AS (n int, label text);
         CREATE TABLE v (
           id int PRIMARY KEY, i8 int8, n1 numeric, n2 numeric, n3 numeric, f1 float8, f2 float8,
           j jsonb, ta text[], i2d int4[], tz timestamptz, ts timestamp, d date, iv interval,
           b bytea, u uuid, e mood, dom posint, comp pair, nothing text, moods mood[],
           nets inet[], spans int4range[])",
        db.name()
    ))
    .await
    .unwrap();
    let mut tap = EventTap::start(&db).await.unwrap();

    // A new session, so that the database's non-UTC TimeZone applies to the literals.
    let sql = db.connect().await.unwrap();
    let zone: String = sql.query_one("SHOW timezone", &[]).await.unwrap().get(0);
    assert_eq!(zone, "Asia/Kolkata");
    sql.batch_execute(
        r#"INSERT INTO v VALUES (1, 9007199254740993, 12345678901234567890.123456789, 'NaN',
             'Infinity', 0.1, '-Infinity', '{"a": {"b": [1, 2.50, null, "x"]}, "c": true}',
             ARRAY[NULL, 'quo"te', 'com,ma', 'back\slash', 'NULL'], '{{1,2},{3,4}}',
             '2024-05-06 07:08:09.123456', '2024-05-06 07:08:09.5', '2024-02-29',
             '1 year 2 mons 3 days 04:05:06.789', '\x00ff10',
             'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', 42, ROW(1, 'a b'), NULL,
             ARRAY['sad', NULL, 'happy']::mood[], '{10.0.0.1,::1/128}', '{"[1,5)",empty}')"#,
    )
    .await
    .unwrap();

    let events = tap.next_transaction(Duration::from_secs(30)).await.unwrap();
    let RowEvent::Insert { new, .. } = &events[1] else {
        panic!("expected an insert: {events:?}");
    };
    let expected = concat!(
        r#"{"id":1,"i8":9007199254740993,"n1":12345678901234567890.123456789,"n2":"NaN","#,
        r#""n3":"Infinity","f1":0.1,"f2":"-Infinity","#,
        r#""j":{"a": {"b": [1, 2.50, null, "x"]}, "c": true},"#,
        r#""ta":[null,"quo\"te","com,ma","back\\slash","NULL"],"i2d":[[1,2],[3,4]],"#,
        // 07:08:09.123456 in Asia/Kolkata (+05:30) is 01:38:09.123456 UTC.
        r#""tz":"2024-05-06T01:38:09.123456Z","ts":"2024-05-06T07:08:09.500000","#,
        r#""d":"2024-02-29","iv":"P1Y2M3DT4H5M6.789S","b":"\\x00ff10","#,
        r#""u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","e":"happy","dom":"42","#,
        r#""comp":"(1,\"a b\")","nothing":null,"moods":["sad",null,"happy"],"#,
        r#""nets":["10.0.0.1","::1"],"spans":["[1,5)","empty"]}"#
    );
    assert_eq!(new.as_json(), expected);
    // And it is valid JSON whose exact numbers survive a lossless parser.
    let parsed: serde_json::Value = serde_json::from_str(new.as_json()).unwrap();
    assert_eq!(parsed["j"]["a"]["b"][3], "x");
    assert_eq!(parsed["ta"][0], serde_json::Value::Null);
}

/// Issue 13: documents nested deeper than serde_json's default limit of 128 are stored as JSON,
/// in values and in contexts; a hostile depth is recorded as text without stopping the tracker.
#[tokio::test]
async fn deep_json_is_stored_as_json() {
    use bemi_testkit::trail::{start, sync, write};

    let (_db, sql, tracker) = start(
        "CREATE TABLE docs (id int PRIMARY KEY, j jsonb);
         ALTER TABLE docs REPLICA IDENTITY FULL;",
    )
    .await;
    let nested = |depth: usize| format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
    let deep = nested(200);
    write(
        &sql,
        serde_json::json!({}),
        &format!("INSERT INTO docs VALUES (1, '{deep}');"),
    )
    .await;
    // The context itself is 200 levels deep.
    sql.batch_execute(&format!(
        "BEGIN;
         SELECT pg_logical_emit_message(true, '_bemi', '{deep}');
         INSERT INTO docs VALUES (2, '[]');
         COMMIT;
         BEGIN;
         SELECT pg_logical_emit_message(true, '_bemi', '{}');
         INSERT INTO docs VALUES (3, '[]');
         COMMIT;",
        nested(100_000)
    ))
    .await
    .unwrap();
    sync(&sql, &tracker).await;

    let row = |key: &'static str| {
        let (sql, deep) = (&sql, &deep);
        async move {
            sql.query_one(
                "SELECT jsonb_typeof(after->'j'), after->'j' = $2::text::jsonb, \
                        context = $2::text::jsonb, context->'_bemi_invalid'->>'error' \
                 FROM changes WHERE \"table\" = 'docs' AND primary_key = $1",
                &[&key, deep],
            )
            .await
            .unwrap()
        }
    };
    let value = row("1").await;
    assert_eq!(value.get::<_, &str>(0), "object", "stored as a document");
    assert!(value.get::<_, bool>(1));
    let context = row("2").await;
    assert!(
        context.get::<_, bool>(2),
        "a 200-level context is kept as it is"
    );
    let hostile = row("3").await;
    let error: &str = hostile.get(3);
    assert!(error.contains("nested deeper than"), "{error}");
    assert!(!tracker.is_finished());
    tracker.shutdown().await.unwrap();
}
