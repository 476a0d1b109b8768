//! Filter rules on a real server, through the JSON-lines sink: masked and hashed values never
//! reach the sink, ignored columns and tables leave nothing, UPDATEs of ignored columns only
//! are skipped (and what happens without the old row), operations per table, `only`, and the
//! keyed hash across restarts and keys.

use std::path::Path;
use std::time::{Duration, Instant};

use bemi_core::rules::{HashKey, Rules, TableRule};
use bemi_core::sink::JsonLinesSink;
use bemi_core::{Operation, Tracker, TrackerHandle};
use bemi_testkit::TestDatabase;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

const KEY_A: &str = "the first key, 32 bytes long ...";
const KEY_B: &str = "the second key, 32 bytes long ..";

fn rules(key: &str) -> Rules {
    Rules::new()
        .ignore_table("public.sess*")
        .table(
            TableRule::new("public.users")
                .ignore(["updated_at"])
                .mask(["password_digest"])
                .hash(["email"]),
        )
        .table(TableRule::new("public.plain").ignore(["updated_at"]))
        .table(TableRule::new("public.*_log").operations([Operation::Create]))
        .table(TableRule::new("public.profiles").only(["a"]))
        .hash_key(HashKey::new(key).unwrap())
}

/// A tracker of `db` writing JSON lines to `path` (appending) under `rules`.
async fn track(db: &TestDatabase, path: &Path, rules: Rules) -> TrackerHandle {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .unwrap();
    Tracker::builder(db.options(), JsonLinesSink::new(file))
        .slot(db.slot())
        .publication(db.publication())
        .replica_identity(false)
        .rules(rules)
        .start()
        .await
        .unwrap()
}

/// The changes in the file once one of table `table` with key `key` is there.
async fn lines_through(path: &Path, table: &str, key: &str) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        if lines
            .iter()
            .any(|c| c["table"] == table && c["primary_key"] == key)
        {
            return lines;
        }
        assert!(Instant::now() < deadline, "no {table} {key} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (table, operation, before, after) of each change.
fn summary(lines: &[Value]) -> Vec<(String, String, Value, Value)> {
    lines
        .iter()
        .map(|c| {
            (
                c["table"].as_str().unwrap().to_owned(),
                c["operation"].as_str().unwrap().to_owned(),
                c["before"].clone(),
                c["after"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn rules_apply_before_the_sink() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute(
        "CREATE TABLE users (id int PRIMARY KEY, name text, email text, password_digest text,
                             updated_at int);
         CREATE TABLE sessions (id int PRIMARY KEY, token text);
         CREATE TABLE audit_log (id int PRIMARY KEY, msg text);
         CREATE TABLE profiles (id int PRIMARY KEY, a text, b text);
         CREATE TABLE plain (id int PRIMARY KEY, note text, updated_at int);
         ALTER TABLE users REPLICA IDENTITY FULL;
         ALTER TABLE sessions REPLICA IDENTITY FULL;
         ALTER TABLE audit_log REPLICA IDENTITY FULL;
         ALTER TABLE profiles REPLICA IDENTITY FULL;",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("changes.jsonl");
    let tracker = track(&db, &path, rules(KEY_A)).await;
    sql.batch_execute(
        "INSERT INTO users VALUES (1, 'ann', 'ann@example.com', 'SECRET-DIGEST-1', 100);
         UPDATE users SET updated_at = 101 WHERE id = 1;
         UPDATE users SET name = 'Ann', updated_at = 102 WHERE id = 1;
         UPDATE users SET password_digest = 'SECRET-DIGEST-2', updated_at = 103 WHERE id = 1;
         INSERT INTO sessions VALUES (1, 'SECRET-SESSION');
         UPDATE sessions SET token = 'SECRET-SESSION-2';
         INSERT INTO audit_log VALUES (1, 'kept');
         UPDATE audit_log SET msg = 'not kept';
         DELETE FROM audit_log;
         INSERT INTO profiles VALUES (1, 'a1', 'SECRET-B');
         INSERT INTO plain VALUES (1, 'n', 1);
         UPDATE plain SET updated_at = 2;
         DELETE FROM users WHERE id = 1;
         INSERT INTO audit_log VALUES (2, 'last');",
    )
    .await
    .unwrap();
    let lines = lines_through(&path, "audit_log", "2").await;
    tracker.shutdown().await.unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("SECRET"), "{text}");
    assert!(!text.contains("updated_at"), "{text}");
    assert!(!text.contains("sessions"), "{text}");
    let hashed = lines[0]["after"]["email"].clone();
    assert!(
        hashed.as_str().unwrap().starts_with("hmac-sha256:"),
        "{hashed}"
    );
    let user = |name: &str| serde_json::json!({"id": 1, "name": name, "email": hashed, "password_digest": "[masked]"});
    let empty = serde_json::json!({});
    let changes = summary(&lines);
    let expected = [
        ("users", "CREATE", empty.clone(), user("ann")),
        // The updated_at-only UPDATE is skipped.
        ("users", "UPDATE", user("ann"), user("Ann")),
        // A masked column that changed: stored, both sides masked.
        ("users", "UPDATE", user("Ann"), user("Ann")),
        // sessions: ignored. audit_log: only CREATE.
        (
            "audit_log",
            "CREATE",
            empty.clone(),
            serde_json::json!({"id": 1, "msg": "kept"}),
        ),
        (
            "profiles",
            "CREATE",
            empty.clone(),
            serde_json::json!({"id": 1, "a": "a1"}),
        ),
        (
            "plain",
            "CREATE",
            empty.clone(),
            serde_json::json!({"id": 1, "note": "n"}),
        ),
        // REPLICA IDENTITY DEFAULT: no old row, so what changed is unknown: stored, without
        // the ignored column.
        (
            "plain",
            "UPDATE",
            empty.clone(),
            serde_json::json!({"id": 1, "note": "n"}),
        ),
        ("users", "DELETE", user("Ann"), empty.clone()),
        (
            "audit_log",
            "CREATE",
            empty.clone(),
            serde_json::json!({"id": 2, "msg": "last"}),
        ),
    ];
    let expected: Vec<(String, String, Value, Value)> = expected
        .into_iter()
        .map(|(t, o, b, a)| (t.to_owned(), o.to_owned(), b, a))
        .collect();
    assert_eq!(changes, expected);

    // The keyed hash: the same after a restart with the same key, another with another key.
    let restarted = track(&db, &path, rules(KEY_A)).await;
    sql.batch_execute("INSERT INTO users VALUES (2, 'ann2', 'ann@example.com', NULL, 1)")
        .await
        .unwrap();
    let lines = lines_through(&path, "users", "2").await;
    restarted.shutdown().await.unwrap();
    assert_eq!(lines.last().unwrap()["after"]["email"], hashed);
    assert_eq!(
        lines.last().unwrap()["after"]["password_digest"],
        Value::Null
    );

    let other_key = track(&db, &path, rules(KEY_B)).await;
    sql.batch_execute("INSERT INTO users VALUES (3, 'ann3', 'ann@example.com', NULL, 1)")
        .await
        .unwrap();
    let lines = lines_through(&path, "users", "3").await;
    other_key.shutdown().await.unwrap();
    let other = &lines.last().unwrap()["after"]["email"];
    assert!(
        other.as_str().unwrap().starts_with("hmac-sha256:"),
        "{other}"
    );
    assert_ne!(*other, hashed);
}

#[tokio::test]
async fn rules_that_cannot_work_stop_the_tracker_at_start() {
    let db = TestDatabase::create().await.unwrap();
    let rules = Rules::new().table(TableRule::new("users").hash(["email"]));
    let error = db
        .tracker_builder()
        .unwrap()
        .rules(rules)
        .start()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), bemi_core::ErrorKind::Config, "{error}");
    assert!(error.report().contains("no hash key"), "{}", error.report());
}

#[tokio::test]
async fn the_setup_leaves_the_replica_identity_of_ignored_tables_alone() {
    let db = TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute(
        "CREATE TABLE users (id int PRIMARY KEY, name text);
         CREATE TABLE sessions (id int PRIMARY KEY, token text);",
    )
    .await
    .unwrap();
    let tracker = db
        .tracker_builder()
        .unwrap()
        .rules(Rules::new().ignore_table("public.sess*"))
        .start()
        .await
        .unwrap();
    tracker.shutdown().await.unwrap();
    let identity = |table: &'static str| {
        let sql = &sql;
        async move {
            let row = sql
                .query_one(
                    "SELECT relreplident::text FROM pg_class WHERE oid = $1::text::regclass",
                    &[&table],
                )
                .await
                .unwrap();
            row.get::<_, String>(0)
        }
    };
    assert_eq!(identity("users").await, "f");
    assert_eq!(identity("sessions").await, "d");
}
