//! Secrets never appear in help, errors or logs, and the logs are usable: a wrong LOG_LEVEL is
//! refused, piped output has no colour codes, and each error text appears once.

use std::io::Read as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bemi_core::ConnectOptions;
use bemi_temp_postgres::TempPostgres;

/// A password with every character that URLs treat specially (`%7/` is no percent-encoding).
const PASSWORD: &str = "Zq%7/w?x@Secret-42";
/// [`PASSWORD`] percent-encoded, as it goes into a URL.
const ENCODED: &str = "Zq%257%2Fw%3Fx%40Secret-42";
/// A value the workload writes, which the audit trail stores and logs must not show.
const AUDITED: &str = "audited-value-7781";
const WAIT: Duration = Duration::from_secs(120);

/// Fails when `text` holds the password, in any form or part, or an audited value.
fn assert_clean(what: &str, text: &str) {
    for secret in [PASSWORD, ENCODED, "Secret-42", "w?x", "Zq%", AUDITED] {
        assert!(!text.contains(secret), "{what} shows {secret:?}:\n{text}");
    }
}

fn bemi(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bemi"));
    cmd.args(args).env_clear().envs(env.iter().copied());
    cmd
}

fn run(mut cmd: Command) -> (Output, String) {
    let out = cmd.output().expect("bemi runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

async fn server() -> TempPostgres {
    let pg = tokio::task::spawn_blocking(|| {
        TempPostgres::builder()
            .hba_line("host all tracker 127.0.0.1/32 scram-sha-256")
            .start()
    })
    .await
    .unwrap()
    .expect("throwaway PostgreSQL");
    pg.psql(
        "postgres",
        &format!(
            "CREATE DATABASE shop; CREATE ROLE tracker SUPERUSER LOGIN PASSWORD '{PASSWORD}';"
        ),
    )
    .unwrap();
    pg
}

#[test]
fn help_hides_the_values_of_secret_variables() {
    let url = format!("postgres://tracker:{ENCODED}@db.internal:5432/shop");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("DESTINATION_DATABASE_URL", url.as_str()),
        ("DB_PASSWORD", PASSWORD),
        ("DESTINATION_DB_PASSWORD", PASSWORD),
        ("BEMI_UI_TOKEN", PASSWORD),
    ];
    for command in [
        &[][..],
        &["run"],
        &["setup"],
        &["status"],
        &["demo"],
        &["history"],
        &["changes"],
        &["revert"],
        &["ui"],
    ] {
        let args: Vec<&str> = command.iter().copied().chain(["--help"]).collect();
        let (out, text) = run(bemi(&args, &env));
        assert!(out.status.success(), "{text}");
        assert_clean(&format!("bemi {}", args.join(" ")), &text);
    }
}

#[tokio::test]
async fn failing_connections_never_show_the_password() {
    let pg = server().await;
    let port = pg.port().to_string();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let url = |user: &str, password: &str, port: &str| {
        format!("postgres://{user}:{password}@127.0.0.1:{port}/shop?connect_timeout=5")
    };
    let urls = [
        // Unencoded: `%7/` is no percent-encoding, `/` and `?` would end the password early.
        url("tracker", PASSWORD, &port),
        url("tracker", &PASSWORD.replace('%', "%25"), &port),
        url("tracker", &PASSWORD.replace(['/', '?'], ""), &port),
        // Encoded, but wrong (a mistyped password is a secret too), or nothing listening.
        url("tracker", &format!("{ENCODED}-wrong"), &port),
        url("tracker", ENCODED, &closed),
        format!("host=127.0.0.1 port={port} user=tracker password={PASSWORD}-wrong dbname=shop"),
        format!("host=127.0.0.1 port={port} user=tracker password={PASSWORD} word dbname=shop"),
    ];
    for database_url in &urls {
        for command in ["status", "setup"] {
            let (out, text) = run(bemi(&[command], &[("DATABASE_URL", database_url)]));
            assert!(
                !out.status.success(),
                "{command} with {database_url}: {text}"
            );
            assert!(text.contains("error"), "{text}");
            assert_clean(&format!("bemi {command} with a failing URL"), &text);
        }
    }
    // The password in DB_PASSWORD, refused by the server, or the server unreachable.
    let wrong = format!("{PASSWORD}-wrong");
    for (password, port) in [(wrong.as_str(), port.as_str()), (PASSWORD, closed.as_str())] {
        let env = [
            ("DB_HOST", "127.0.0.1"),
            ("DB_PORT", port),
            ("DB_NAME", "shop"),
            ("DB_USER", "tracker"),
            ("DB_PASSWORD", password),
        ];
        let (out, text) = run(bemi(&["status"], &env));
        assert!(!out.status.success(), "{text}");
        assert_clean("bemi status with DB_PASSWORD", &text);
    }
}

#[tokio::test]
async fn a_trace_log_of_the_worker_shows_no_password_no_values_and_no_colour() {
    let pg = server().await;
    let superuser = pg.url("shop");
    let source = format!("postgres://tracker:{ENCODED}@127.0.0.1:{}/shop", pg.port());
    pg.psql(
        "shop",
        "CREATE TABLE secrets (id int PRIMARY KEY, value text)",
    )
    .unwrap();
    let (out, text) = run(bemi(&["setup"], &[("DATABASE_URL", &superuser)]));
    assert!(out.status.success(), "{text}");

    let mut worker = bemi(
        &["run"],
        &[("DATABASE_URL", &source), ("LOG_LEVEL", "trace")],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let sql = superuser
        .parse::<ConnectOptions>()
        .unwrap()
        .connect()
        .await
        .unwrap();
    sql.batch_execute(&format!(
        "INSERT INTO secrets VALUES (1, '{AUDITED}');
         UPDATE secrets SET value = '{AUDITED}-2' WHERE id = 1;
         SELECT pg_logical_emit_message(true, '_bemi', '{{\"note\": \"{AUDITED}\"}}');
         DELETE FROM secrets;"
    ))
    .await
    .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let stored: i64 = sql
            .query_one("SELECT count(*) FROM changes", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if stored >= 3 {
            break;
        }
        let stopped = worker.try_wait().unwrap().is_some();
        if stopped || Instant::now() > deadline {
            let _ = worker.kill();
            let mut log = String::new();
            worker
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut log)
                .unwrap();
            panic!("{stored} of 3 changes stored; the worker logged:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored: String = sql
        .query_one(
            "SELECT after::text FROM changes WHERE operation = 'CREATE'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        stored.contains(AUDITED),
        "the workload went through: {stored}"
    );

    let pid = worker.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = worker.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("TRACE"), "a trace-level log: {log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a pipe: {log}");
    assert_clean("the worker's trace log", &log);
}

#[test]
fn a_log_level_that_does_not_exist_is_refused_with_the_levels() {
    for level in ["WARNING", "verbose"] {
        let (out, text) = run(bemi(&["status"], &[("LOG_LEVEL", level)]));
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(text.contains(level), "{text}");
        assert!(text.contains("error, warn, info, debug, trace"), "{text}");
    }
    // Bemi's own spelling, in capitals, is fine.
    let (_, text) = run(bemi(&["status"], &[("LOG_LEVEL", "WARN")]));
    assert!(!text.contains("invalid value"), "{text}");
}

#[tokio::test]
async fn a_server_error_is_printed_once_without_colour() {
    let pg = server().await;
    let (out, text) = run(bemi(
        &["changes", "--table", "secrets"],
        &[
            ("DATABASE_URL", &pg.url("shop")),
            ("BEMI_DESTINATION_SCHEMA", "nowhere"),
        ],
    ));
    assert!(!out.status.success(), "{text}");
    assert_eq!(text.matches("does not exist").count(), 1, "{text}");
    assert!(!text.contains('\u{1b}'), "{text}");
}
