//! Values round-trip through a real server and arrive as the JSON that BEMI-COMPAT.md's table
//! specifies.

use std::time::Duration;

use bemi_core::testing::{EventTap, TestDatabase};
use bemi_core::RowEvent;

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
