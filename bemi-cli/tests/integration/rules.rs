//! The `[rules]` of `bemi.toml` with the real `bemi` binary on a real server: a masked
//! `password_digest` is nowhere (in `changes`, before or after, nor in the worker's log at
//! `trace`, the driver's statement log included), an `updated_at`-only UPDATE is skipped,
//! ignored tables leave no rows, operations per table are honored; an invalid file stops
//! `bemi run` with the line of the error; `bemi check-config` warns about what matches nothing.

use std::process::Command;

use serde_json::{json, Value};

use crate::worker_process::Worker;
use crate::workload::wait_for_stored;

const SECRET: &str = "SECRET-DIGEST";
const KEY: &str = "a hash key of at least 16 bytes";

fn config(db: &bemi_testkit::TestDatabase) -> String {
    format!(
        r#"[[source]]
database_url_env = "APP_DATABASE_URL"
slot = "{slot}"
publication = "{publication}"

[rules]
ignore_tables = ["public.sessions"]
hash_key_env = "APP_HASH_KEY"

[[rules.table]]
name = "public.users"
ignore = ["updated_at"]
mask = ["password_digest"]
hash = ["email"]

[[rules.table]]
name = "public.*_log"
operations = ["CREATE"]
"#,
        slot = db.slot(),
        publication = db.publication()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_records_under_the_rules_of_its_file() {
    let db = bemi_testkit::TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute(
        "CREATE TABLE users (id int PRIMARY KEY, name text, email text, password_digest text,
                             updated_at int);
         CREATE TABLE sessions (id int PRIMARY KEY, token text);
         CREATE TABLE audit_log (id int PRIMARY KEY, msg text);",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bemi.toml");
    std::fs::write(&path, config(&db)).unwrap();
    let path = path.display().to_string();
    let env = [
        ("APP_DATABASE_URL", db.options().to_url()),
        ("APP_HASH_KEY", KEY.to_owned()),
        // Everything at trace, the driver's statements and their parameters included.
        ("RUST_LOG", "trace,tokio_postgres=trace".to_owned()),
    ];
    let mut worker = Worker::start(&["--config", &path], &env);
    worker
        .wait_for_state(&db.slot(), "streaming", crate::worker_process::WAIT)
        .await;
    sql.batch_execute(&format!(
        "INSERT INTO users VALUES (1, 'ann', 'ann@example.com', '{SECRET}-1', 100);
         UPDATE users SET updated_at = 101 WHERE id = 1;
         UPDATE users SET name = 'Ann', updated_at = 102 WHERE id = 1;
         UPDATE users SET password_digest = '{SECRET}-2' WHERE id = 1;
         INSERT INTO sessions VALUES (1, '{SECRET}-session');
         INSERT INTO audit_log VALUES (1, 'kept');
         DELETE FROM audit_log;
         DELETE FROM users;"
    ))
    .await
    .unwrap();
    wait_for_stored(&sql, 5).await;
    // The worker logged each change at trace (and the driver its statements).
    worker.wait_for_log(&["change", "public.users", "DELETE"]);
    assert!(worker.terminate().success(), "{}", worker.log());
    let log = worker.log();
    assert!(log.contains("tokio_postgres"), "the driver's log is on");
    assert!(
        !log.contains(SECRET),
        "the log shows a masked value:\n{log}"
    );
    assert!(
        !log.contains("ann@example.com"),
        "the log shows a hashed value"
    );

    let rows: Vec<(String, String, Value, Value)> = sql
        .query(
            "SELECT \"table\", operation, before, after FROM changes ORDER BY commit_lsn, ordinal",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect();
    let all = format!("{rows:?}");
    assert!(!all.contains(SECRET), "{all}");
    let email = rows[0].3["email"].clone();
    assert!(email.as_str().unwrap().starts_with("hmac-sha256:"), "{all}");
    let user =
        |name: &str| json!({"id": 1, "name": name, "email": email, "password_digest": "[masked]"});
    let expected = vec![
        ("users", "CREATE", json!({}), user("ann")),
        ("users", "UPDATE", user("ann"), user("Ann")),
        ("users", "UPDATE", user("Ann"), user("Ann")),
        (
            "audit_log",
            "CREATE",
            json!({}),
            json!({"id": 1, "msg": "kept"}),
        ),
        ("users", "DELETE", user("Ann"), json!({})),
    ];
    let expected: Vec<(String, String, Value, Value)> = expected
        .into_iter()
        .map(|(t, o, b, a)| (t.to_owned(), o.to_owned(), b, a))
        .collect();
    assert_eq!(rows, expected);

    // `bemi status --config` prints the rules in force.
    let status = Command::new(env!("CARGO_BIN_EXE_bemi"))
        .args(["status", "--config", &path, "--slot", &db.slot()])
        .env_clear()
        .env("DATABASE_URL", db.options().to_url())
        .envs(env[..2].iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        text.contains("public.users: ignore updated_at; mask password_digest; hash email"),
        "{text}"
    );
}

/// Writes `text` as `rules.toml` in `dir` and returns its path.
fn rules_file(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `bemi ARGS` with only `env`; returns whether it succeeded, and stdout and stderr.
fn bemi(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bemi"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn an_invalid_file_stops_the_worker_with_its_line_and_check_config_warns() {
    let db = bemi_testkit::TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute("CREATE TABLE users (id int PRIMARY KEY, email text)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = db.options().to_url();
    let env = [("APP_DATABASE_URL", url.as_str()), ("APP_HASH_KEY", KEY)];
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let valid = config(&db);
    let cases = [
        // A syntax error on line 6.
        (
            "syntax.toml",
            valid.replacen("[rules]", "[rules", 1),
            "line 6, column 7",
        ),
        // An operation that does not exist, on line 18.
        (
            "operation.toml",
            valid.replacen("\"CREATE\"]", "\"DESTROY\"]", 1),
            "line 18, column 15",
        ),
        // Hashed columns and no key, for the rule on line 11.
        (
            "key.toml",
            valid.replacen("hash_key_env = \"APP_HASH_KEY\"\n", "\n", 1),
            "line 11, column 8",
        ),
    ];
    for (name, text, line) in &cases {
        let path = write(name, text);
        let (ok, out) = bemi(&["run", "--config", &path], &env);
        assert!(!ok && out.contains(line), "bemi run with {name}:\n{out}");
        let (ok, out) = bemi(&["check-config", &path], &env);
        assert!(!ok && out.contains(line), "check-config {name}:\n{out}");
    }

    // Valid, with a table and a column the database does not have: warnings, not errors.
    let path = write("valid.toml", &valid);
    let (ok, out) = bemi(&["check-config", &path], &env);
    assert!(ok, "{out}");
    assert!(
        out.contains("line 7, column 18: public.sessions matches no table"),
        "{out}"
    );
    assert!(
        out.contains("names column \"password_digest\", which no table it matches has"),
        "{out}"
    );
    assert!(out.contains("public.*_log matches no table"), "{out}");
    assert!(!out.contains("\"email\""), "email exists:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_single_source_of_the_variables_takes_rules_from_bemi_rules() {
    let db = bemi_testkit::TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute(
        "CREATE TABLE users (id int PRIMARY KEY, name text, password_digest text);
         CREATE TABLE sessions (id int PRIMARY KEY, token text);",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_file(
        &dir,
        "[rules]\nignore_tables = [\"sessions\"]\n\n[[rules.table]]\nname = \"users\"\nmask = [\"password_digest\"]\n",
    );
    let mut env = crate::worker_process::source_env(&db);
    env.push(("BEMI_RULES", rules.display().to_string()));
    let mut worker = Worker::start(&[], &env);
    worker
        .wait_for_state(&db.slot(), "streaming", crate::worker_process::WAIT)
        .await;
    sql.batch_execute(&format!(
        "INSERT INTO sessions VALUES (1, '{SECRET}-session');
         INSERT INTO users VALUES (1, 'ann', '{SECRET}');"
    ))
    .await
    .unwrap();
    wait_for_stored(&sql, 1).await;
    assert!(worker.terminate().success(), "{}", worker.log());
    let after: Value = sql
        .query_one("SELECT after FROM changes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        after,
        json!({"id": 1, "name": "ann", "password_digest": "[masked]"})
    );

    // A file with sources is for --config, not --rules.
    let file = dir.path().join("bemi.toml");
    std::fs::write(&file, config(&db)).unwrap();
    let url = db.options().to_url();
    let (ok, out) = bemi(
        &["run", "--rules", &file.display().to_string()],
        &[("DATABASE_URL", url.as_str())],
    );
    assert!(!ok && out.contains("run it with --config"), "{out}");
}

#[tokio::test]
async fn bemi_setup_leaves_ignored_tables_out_of_the_publication_it_creates() {
    let db = bemi_testkit::TestDatabase::create().await.unwrap();
    let sql = db.connect().await.unwrap();
    sql.batch_execute(
        "CREATE TABLE users (id int PRIMARY KEY);
         CREATE TABLE orders (id int PRIMARY KEY);
         CREATE TABLE sessions (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_file(
        &dir,
        "[rules]\ntrack = [\"users\", \"orders\", \"sessions\"]\nignore_tables = [\"sessions\"]\n",
    );
    let env = crate::worker_process::source_env(&db);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (ok, out) = bemi(&["setup", "--rules", &rules.display().to_string()], &env);
    assert!(ok, "{out}");

    let published: Vec<String> = sql
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
            &[&db.publication()],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(published, ["orders", "users"]);
    let identities: Vec<(String, String)> = sql
        .query(
            "SELECT relname::text, relreplident::text FROM pg_class
             WHERE relname IN ('users', 'orders', 'sessions') AND relkind = 'r' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        identities,
        [
            ("orders".to_owned(), "f".to_owned()),
            ("sessions".to_owned(), "d".to_owned()),
            ("users".to_owned(), "f".to_owned()),
        ]
    );
}
