//! `bemi history`, `bemi changes` and `bemi revert` run as a user would, against a database
//! whose changes a tracker (in this process) records.

use std::process::Output;

use bemi_testkit::trail::{clock, rows, start, sync, write};
use bemi_testkit::TestDatabase;
use serde_json::{json, Value};
use tokio_postgres::Client;

/// Runs `bemi` with `args` and `--database-url` for `db`.
async fn bemi(db: &TestDatabase, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_bemi"))
        .args(args)
        .args(["--database-url", &db.options().to_url()])
        .env_remove("DATABASE_URL")
        .env_remove("DB_HOST")
        .env_remove("DB_NAME")
        .env_remove("DESTINATION_DATABASE_URL")
        .output()
        .await
        .expect("bemi runs")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "bemi failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json_out(output: &Output) -> Value {
    let text = stdout(output);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The tracked table of these tests.
const TODO: &str =
    "CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL, done bool NOT NULL DEFAULT false);
     ALTER TABLE todo REPLICA IDENTITY FULL;";

async fn todo(sql: &Client) -> Vec<Value> {
    rows(sql, "todo", "id").await
}

#[tokio::test]
async fn history_changes_and_time_travel_from_the_command_line() {
    let (db, sql, tracker) = start(TODO).await;
    write(
        &sql,
        json!({"user": "alice"}),
        "INSERT INTO todo VALUES (1, 'a0'), (2, 'b');",
    )
    .await;
    let created = clock(&sql).await.to_rfc3339();
    for i in 1..=5 {
        write(
            &sql,
            json!({"user": "alice", "step": i}),
            &format!("UPDATE todo SET task = 'a{i}' WHERE id = 1;"),
        )
        .await;
    }
    let updated = clock(&sql).await.to_rfc3339();
    write(
        &sql,
        json!({"user": "bob"}),
        "DELETE FROM todo WHERE id = 1;",
    )
    .await;
    let deleted = clock(&sql).await.to_rfc3339();
    write(
        &sql,
        json!({"user": "carol"}),
        "INSERT INTO todo VALUES (1, 'again');",
    )
    .await;
    sync(&sql, &tracker).await;

    // History as a table, oldest first.
    let text = stdout(&bemi(&db, &["history", "todo", "1"]).await);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 9, "{text}");
    assert!(lines[0].starts_with("COMMITTED AT"), "{text}");
    let operations: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(
        operations,
        ["CREATE", "UPDATE", "UPDATE", "UPDATE", "UPDATE", "UPDATE", "DELETE", "CREATE"]
    );
    assert!(lines[3].contains(r#"task: "a1" → "a2""#), "{text}");
    assert!(lines[7].contains(r#"{"user": "bob"}"#), "{text}");

    // History as JSON, with diffs.
    let history = json_out(&bemi(&db, &["history", "public.todo", "1", "--json"]).await);
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), 8);
    assert_eq!(history[2]["diff"], json!({"task": ["a1", "a2"]}));
    assert_eq!(
        history[2]["after"],
        json!({"id": 1, "task": "a2", "done": false})
    );
    assert_eq!(history[2]["context"], json!({"user": "alice", "step": 2}));
    assert_eq!(history[6]["operation"], json!("DELETE"));
    assert_eq!(history[0]["diff"]["task"], json!([null, "a0"]));

    // Filters and their negations.
    let bob = json_out(
        &bemi(
            &db,
            &[
                "changes",
                "--table",
                "todo",
                "--context",
                r#"{"user": "bob"}"#,
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(bob["changes"].as_array().unwrap().len(), 1);
    assert_eq!(bob["changes"][0]["before"]["task"], json!("a5"));
    assert_eq!(bob["next_cursor"], Value::Null);
    let filtered = json_out(
        &bemi(
            &db,
            &[
                "changes",
                "--table",
                "todo",
                "--operation",
                "update,create",
                "--not-context",
                r#"{"step": 3}"#,
                "--after",
                r#"{"id": 1}"#,
                "--not-after",
                r#"{"task": "a5"}"#,
                "--before",
                r#"{"id": 1}"#,
                "--not-before",
                r#"{"task": "a0"}"#,
                "--json",
            ],
        )
        .await,
    );
    let tasks: Vec<&Value> = filtered["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["after"]["task"])
        .collect();
    assert_eq!(tasks, [&json!("a2"), &json!("a4")]);
    let window = json_out(
        &bemi(
            &db,
            &[
                "changes", "--table", "todo", "--since", &updated, "--until", &deleted, "--json",
            ],
        )
        .await,
    );
    assert_eq!(window["changes"][0]["operation"], json!("DELETE"));
    assert_eq!(window["changes"].as_array().unwrap().len(), 1);

    // Pages: the printed cursor continues where the page ended.
    let first = stdout(
        &bemi(
            &db,
            &["changes", "--table", "todo", "--limit", "4", "--desc"],
        )
        .await,
    );
    let cursor = first
        .lines()
        .find_map(|l| l.strip_prefix("next page: --cursor "))
        .unwrap_or_else(|| panic!("no cursor in {first}"))
        .to_owned();
    assert_eq!(first.lines().filter(|l| l.contains("todo")).count(), 4);
    let rest = json_out(
        &bemi(
            &db,
            &[
                "changes", "--table", "todo", "--limit", "10", "--desc", "--cursor", &cursor,
                "--json",
            ],
        )
        .await,
    );
    let rest = rest["changes"].as_array().unwrap();
    assert_eq!(rest.len(), 5);
    assert_eq!(rest[4]["after"]["task"], json!("a0"));

    // Time travel.
    let at = |time: &str, pk: Option<&str>| {
        let mut args = vec!["history", "todo"];
        args.extend(pk);
        args.extend(["--at", time, "--json"]);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| {
        let db = &db;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            json_out(&bemi(db, &args).await)
        }
    };
    assert_eq!(
        run(at(&created, Some("1"))).await,
        json!({"id": 1, "task": "a0", "done": false})
    );
    assert_eq!(
        run(at(&updated, Some("1"))).await,
        json!({"id": 1, "task": "a5", "done": false})
    );
    assert_eq!(run(at(&deleted, Some("1"))).await, Value::Null);
    assert_eq!(
        run(at(&deleted, None)).await,
        json!([{"id": 2, "task": "b", "done": false}])
    );
    let text = stdout(&bemi(&db, &["history", "todo", "1", "--at", &deleted]).await);
    assert!(text.contains("did not exist"), "{text}");
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn revert_from_the_command_line_with_dry_run_conflicts_and_force() {
    let (db, sql, tracker) = start(
        "CREATE TABLE todo (id int PRIMARY KEY, task text NOT NULL, done bool NOT NULL DEFAULT false);
         ALTER TABLE todo REPLICA IDENTITY FULL;
         INSERT INTO todo VALUES (1, 'a'), (2, 'b'), (3, 'c');",
    )
    .await;
    let earlier = todo(&sql).await;
    write(
        &sql,
        json!({"request_id": "r1"}),
        "INSERT INTO todo VALUES (4, 'd'); UPDATE todo SET done = true WHERE id = 1;
         DELETE FROM todo WHERE id = 2;",
    )
    .await;
    sync(&sql, &tracker).await;
    let changed = todo(&sql).await;

    // A dry run prints the SQL and changes nothing.
    let context = r#"{"request_id": "r1"}"#;
    let dry = stdout(&bemi(&db, &["revert", "--context", context, "--dry-run"]).await);
    assert!(dry.contains("BEGIN;"), "{dry}");
    assert!(
        dry.contains("pg_logical_emit_message(true, '_bemi'"),
        "{dry}"
    );
    assert!(dry.contains("DELETE FROM \"public\".\"todo\""), "{dry}");
    assert!(dry.contains("INSERT INTO \"public\".\"todo\""), "{dry}");
    assert!(!dry.contains("conflict"), "{dry}");
    assert_eq!(todo(&sql).await, changed);
    let dry = json_out(
        &bemi(
            &db,
            &["revert", "--context", context, "--dry-run", "--json"],
        )
        .await,
    );
    assert_eq!(dry["changes"], json!(3));
    assert_eq!(dry["conflicts"], json!([]));

    // Nothing selected: refused.
    let none = bemi(&db, &["revert"]).await;
    assert!(!none.status.success());

    // The revert restores the table and is tracked with its own context.
    let done = stdout(&bemi(&db, &["revert", "--context", context, "--by", "cli-test"]).await);
    assert!(done.contains("reverted 3 change(s)"), "{done}");
    assert_eq!(todo(&sql).await, earlier);
    sync(&sql, &tracker).await;
    let reverted = json_out(
        &bemi(
            &db,
            &["changes", "--context", r#"{"by": "cli-test"}"#, "--json"],
        )
        .await,
    );
    let reverted = reverted["changes"].as_array().unwrap();
    assert_eq!(reverted.len(), 3);
    assert_eq!(
        reverted[0]["context"],
        json!({
            "reverted": {"context": {"request_id": "r1"}, "database": db.name()},
            "by": "cli-test",
            "changes": 3
        })
    );

    // A later edit to a row of the request makes the revert refuse and name it.
    write(
        &sql,
        json!({"request_id": "r2"}),
        "UPDATE todo SET task = 'c2' WHERE id = 3;",
    )
    .await;
    sql.batch_execute("UPDATE todo SET done = true WHERE id = 3")
        .await
        .unwrap();
    sync(&sql, &tracker).await;
    let before = todo(&sql).await;
    let r2 = r#"{"request_id": "r2"}"#;
    let refused = bemi(&db, &["revert", "--context", r2]).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("revert refused"), "{stderr}");
    assert!(stderr.contains("public.todo 3"), "{stderr}");
    assert_eq!(todo(&sql).await, before);
    let dry = stdout(&bemi(&db, &["revert", "--context", r2, "--dry-run"]).await);
    assert!(
        dry.contains("-- conflict: public.todo 3: changed since"),
        "{dry}"
    );
    let forced = stdout(&bemi(&db, &["revert", "--context", r2, "--force"]).await);
    assert!(
        forced.contains("overrode conflict: public.todo 3"),
        "{forced}"
    );
    // The request's own change is undone; the later edit to another column stays.
    let mut expected = earlier.clone();
    expected[2]["done"] = json!(true);
    assert_eq!(todo(&sql).await, expected);
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_commands_read_only_the_tracked_database_s_changes() {
    let (db, sql, tracker) = start(TODO).await;
    write(
        &sql,
        json!({"request_id": "r1"}),
        "INSERT INTO todo VALUES (1, 'mine');",
    )
    .await;
    let after = clock(&sql).await.to_rfc3339();
    sync(&sql, &tracker).await;
    tracker.shutdown().await.unwrap();
    // One `changes` table serving another database too: its own `todo` row 1.
    sql.batch_execute(
        r#"INSERT INTO changes (primary_key, before, after, context, database, schema, "table",
             operation, committed_at, queued_at, transaction_id, position, commit_lsn, ordinal)
           VALUES ('1', '{}', '{"id": 1, "task": "theirs", "done": false}',
             '{"request_id": "r1"}', 'another_app', 'public', 'todo', 'CREATE', now(), now(),
             1, 1, 1, 0)"#,
    )
    .await
    .unwrap();

    let history = json_out(&bemi(&db, &["history", "todo", "1", "--json"]).await);
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{history}");
    assert_eq!(history[0]["after"]["task"], "mine");
    let changes = json_out(&bemi(&db, &["changes", "--table", "todo", "--json"]).await);
    assert_eq!(
        changes["changes"].as_array().map(Vec::len),
        Some(1),
        "{changes}"
    );
    let row = json_out(&bemi(&db, &["history", "todo", "1", "--at", &after, "--json"]).await);
    assert_eq!(row["task"], "mine");
    // a revert selects this database's changes only, so it is not refused
    let dry = json_out(
        &bemi(
            &db,
            &[
                "revert",
                "--context",
                r#"{"request_id": "r1"}"#,
                "--dry-run",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(dry["changes"], json!(1), "{dry}");
}

#[tokio::test]
async fn a_composite_key_typed_with_spaces_finds_its_record() {
    let (db, sql, tracker) = start(
        "CREATE TABLE slot (room text, day int, who text, PRIMARY KEY (room, day));
         ALTER TABLE slot REPLICA IDENTITY FULL;",
    )
    .await;
    write(
        &sql,
        json!({"user": "alice"}),
        "INSERT INTO slot VALUES ('a b', 1, 'x'); UPDATE slot SET who = 'y';",
    )
    .await;
    sync(&sql, &tracker).await;
    tracker.shutdown().await.unwrap();
    let key = r#"["a b", 1]"#;
    let history = json_out(&bemi(&db, &["history", "slot", key, "--json"]).await);
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");
    let changes =
        json_out(&bemi(&db, &["changes", "--table", "slot", "--pk", key, "--json"]).await);
    assert_eq!(
        changes["changes"].as_array().map(Vec::len),
        Some(2),
        "{changes}"
    );
}

#[tokio::test]
async fn table_names_with_dots_and_quotes_are_written_as_postgresql_writes_them() {
    let (db, sql, tracker) = start(
        r#"CREATE SCHEMA "Billing Dept";
           CREATE TABLE "Billing Dept"."In""voice.2024" (id int PRIMARY KEY, v text);"#,
    )
    .await;
    write(
        &sql,
        json!({"user": "alice"}),
        r#"INSERT INTO "Billing Dept"."In""voice.2024" VALUES (1, 'a');"#,
    )
    .await;
    sync(&sql, &tracker).await;

    let quoted = r#""Billing Dept"."In""voice.2024""#;
    let history = json_out(&bemi(&db, &["history", quoted, "1", "--json"]).await);
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");
    assert_eq!(history[0]["schema"], json!("Billing Dept"));
    assert_eq!(history[0]["table"], json!("In\"voice.2024"));
    let changes = json_out(&bemi(&db, &["changes", "--table", quoted, "--json"]).await);
    assert_eq!(changes["changes"].as_array().unwrap().len(), 1, "{changes}");

    // Malformed names are refused, with the accepted forms.
    for args in [
        ["history", r#"Billing Dept..In"voice.2024"#, "1"],
        ["changes", "--table", r#""my.table"#],
    ] {
        let out = bemi(&db, &args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains("invalid table name"), "{stderr}");
        assert!(stderr.contains("schema.table"), "{stderr}");
    }
    tracker.shutdown().await.unwrap();
}

#[tokio::test]
async fn setup_publishes_a_table_whose_name_holds_a_dot() {
    let db = bemi_testkit::TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute(
        r#"CREATE TABLE "my.table" (id int PRIMARY KEY); CREATE TABLE other (id int);"#,
    )
    .await
    .unwrap();
    let slot = db.slot();
    let publication = db.publication();
    stdout(
        &bemi(
            &db,
            &[
                "setup",
                "--slot",
                &slot,
                "--publication",
                &publication,
                "--tables",
                r#""my.table""#,
            ],
        )
        .await,
    );
    let published: Vec<String> = sql
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, ["public.my.table"]);

    let tracker = db.spawn_tracker().unwrap();
    sql.batch_execute(r#"INSERT INTO other VALUES (1); INSERT INTO "my.table" VALUES (7);"#)
        .await
        .unwrap();
    db.wait_for_changes(1, &tracker, std::time::Duration::from_secs(120))
        .await
        .unwrap();
    let stored: Vec<(String, String)> = sql
        .query("SELECT \"table\", primary_key FROM changes", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(stored, [("my.table".to_owned(), "7".to_owned())]);
    tracker.shutdown().await.unwrap();
}
