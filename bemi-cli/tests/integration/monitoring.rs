//! `bemi run --metrics-listen`: `/metrics` scraped during a workload and parsed as Prometheus
//! text, a real Prometheus server scraping the worker with the alert rules of `docs/` loaded,
//! and those rules checked and unit-tested with `promtool`.
//!
//! Prometheus and promtool come from Debian's `prometheus` package, which `.ci/run` installs;
//! without them these tests fail and say so (tests never skip).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bemi_core::metrics;
use prometheus_parse::Value;

use crate::worker_process::{http_get, matching, source_env, value, Worker, WAIT};
use crate::workload::{database, transaction, wait_for_stored, CHANGES_PER_TRANSACTION};

const TRANSACTIONS: i64 = 300;

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

/// A command from Debian's `prometheus` package, or a failure that says how to get it.
fn prometheus_tool(name: &str) -> Command {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        found.is_ok_and(|status| status.success()),
        "`{name}` is not installed: it comes with Debian's `prometheus` package (apt-get install \
         prometheus), which .ci/run installs"
    );
    Command::new(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_scraped_during_a_workload_match_the_rows_stored() {
    let (db, sql) = database().await;
    let source = db.slot();
    let mut worker = Worker::start(&["--batch-size", "50"], &source_env(&db));
    worker.wait_for_state(&source, "streaming", WAIT).await;

    let writer = db.connect().await.unwrap();
    let workload = tokio::spawn(async move {
        for txn in 0..TRANSACTIONS {
            transaction(&writer, txn).await;
        }
    });
    // Scraped while the workload runs: parseable each time, counters never going back.
    let (mut scrapes, mut last) = (0, 0.0);
    while !workload.is_finished() {
        let scrape = worker.metrics().await;
        let stored = value(&scrape, metrics::CHANGES_STORED, &[("source", &source)]);
        assert!(
            stored >= last,
            "the counter went from {last} back to {stored}"
        );
        (scrapes, last) = (scrapes + 1, stored);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    workload.await.unwrap();
    assert!(scrapes > 0, "no scrape during the workload");
    let rows = TRANSACTIONS * CHANGES_PER_TRANSACTION;
    wait_for_stored(&sql, rows).await;

    // The writer counts a batch once the destination acknowledged it, a moment after its
    // rows are visible.
    let deadline = Instant::now() + WAIT;
    let scrape = loop {
        let scrape = worker.metrics().await;
        let counted = value(&scrape, metrics::CHANGES_STORED, &[("source", &source)]);
        if counted as i64 == rows || Instant::now() > deadline {
            break scrape;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let by_table = sql
        .query(
            "SELECT schema, \"table\", operation, count(*) FROM changes GROUP BY 1, 2, 3",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(by_table.len(), 3, "CREATE, UPDATE and DELETE of items");
    for row in &by_table {
        let (schema, table, operation): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        let labels = [
            ("source", source.as_str()),
            ("schema", &schema),
            ("table", &table),
            ("operation", &operation),
        ];
        assert_eq!(
            value(&scrape, metrics::CHANGES_STORED, &labels),
            row.get::<_, i64>(3) as f64,
            "{schema}.{table} {operation}"
        );
    }
    let only_source = [("source", source.as_str())];
    assert_eq!(
        value(&scrape, metrics::CHANGES_STORED, &only_source),
        rows as f64
    );
    // The sink's own writes in the same database are transactions too.
    assert!(value(&scrape, metrics::TRANSACTIONS, &only_source) >= TRANSACTIONS as f64);

    // Histograms with buckets: one observation per change, one per batch.
    let histogram = |name: &str| {
        let sample = matching(&scrape, name, &only_source)
            .next()
            .unwrap_or_else(|| panic!("{name} is missing"));
        let Value::Histogram(buckets) = &sample.value else {
            panic!("{name} is not a histogram: {:?}", sample.value);
        };
        let count = value(&scrape, &format!("{name}_count"), &only_source);
        let infinite = buckets.iter().find(|b| b.less_than.is_infinite());
        assert_eq!(
            infinite.map(|b| b.count),
            Some(count),
            "{name}: {buckets:?}"
        );
        count
    };
    assert_eq!(histogram(metrics::COMMIT_TO_STORED), rows as f64);
    let batches = histogram(metrics::BATCH_WRITE_DURATION);
    assert!(
        batches >= (rows / 50) as f64,
        "{batches} batches of at most 50"
    );

    let state = |state| {
        value(
            &scrape,
            metrics::TRACKER_STATE,
            &[("source", &source), ("state", state)],
        )
    };
    assert_eq!(state("streaming"), 1.0);
    assert_eq!(
        state("standby") + state("connecting") + state("stopped"),
        0.0
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(&scrape, metrics::BUILD_INFO, &[("version", version)]),
        1.0
    );
    let wal_status = |status| {
        value(
            &scrape,
            metrics::SLOT_WAL_STATUS,
            &[("source", &source), ("wal_status", status)],
        )
    };
    assert_eq!(wal_status("reserved"), 1.0, "a slot within max_wal_size");
    assert_eq!(wal_status("lost"), 0.0);
    assert!(
        value(&scrape, metrics::SLOT_SAFE_WAL_SIZE, &only_source).is_infinite(),
        "no max_slot_wal_keep_size on the test server"
    );
    assert!(matching(&scrape, metrics::REPLICATION_LAG_BYTES, &only_source).count() == 1);
    assert!(matching(&scrape, metrics::REPLICATION_LAG_SECONDS, &only_source).count() == 1);
    assert_eq!(value(&scrape, metrics::RECONNECTS, &only_source), 0.0);
    assert_eq!(value(&scrape, metrics::ERRORS, &only_source), 0.0);

    assert_eq!(worker.get("/healthz").await, (200, "ok\n".to_owned()));
    let (status, sources) = worker.readiness().await;
    assert_eq!(status, 200, "{sources:?}");
    assert_eq!(sources[&source]["state"], "streaming");
    assert_eq!(worker.terminate().code(), Some(0), "{}", worker.log());
}

/// A Prometheus server on a free port, killed when dropped.
struct Prometheus {
    child: Child,
    address: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` every second as job `bemi`, with the alert rules of `docs/`.
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: bemi\n    static_configs:\n      - targets: ['{target}']\n",
                rules = docs().join("prometheus-alerts.yml").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = prometheus_tool("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            address,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The JSON of an API call, once the server answers.
    async fn api(&self, path: &str) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let answer = tokio::net::TcpStream::connect(self.address).await;
            if answer.is_ok() {
                let (status, body) = http_get(self.address, path).await;
                if status == 200 {
                    return serde_json::from_str(&body).expect("JSON");
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus: {path}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The value of an instant query with one result, once it has one.
    async fn query(&self, query: &str) -> Option<f64> {
        let json = self
            .api(&format!("/api/v1/query?query={}", percent_encode(query)))
            .await;
        let result = json["data"]["result"].as_array()?.first()?.clone();
        result["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_server_scrapes_the_worker_with_the_alert_rules_loaded() {
    let (db, sql) = database().await;
    let source = db.slot();
    let mut worker = Worker::start(&[], &source_env(&db));
    worker.wait_for_state(&source, "streaming", WAIT).await;
    for txn in 0..50 {
        transaction(&sql, txn).await;
    }
    let rows = 50 * CHANGES_PER_TRANSACTION;
    wait_for_stored(&sql, rows).await;

    let prometheus = Prometheus::start(worker.address());
    let stored = format!("sum(bemi_changes_stored_total{{source=\"{source}\"}})");
    let deadline = Instant::now() + WAIT;
    while prometheus.query(&stored).await != Some(rows as f64) {
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw {rows} changes stored: {:?}\n{}",
            prometheus.query(&stored).await,
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(prometheus.query("up{job=\"bemi\"}").await, Some(1.0));
    let streaming = format!("bemi_tracker_state{{source=\"{source}\",state=\"streaming\"}}");
    assert_eq!(prometheus.query(&streaming).await, Some(1.0));

    // Every alert rule evaluates against the worker's series without error, and none fires.
    let deadline = Instant::now() + WAIT;
    loop {
        let rules = prometheus.api("/api/v1/rules").await;
        let rules: Vec<serde_json::Value> = rules["data"]["groups"]
            .as_array()
            .expect("rule groups")
            .iter()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = rules.len() == 9
            && rules.iter().all(|rule| {
                !rule["lastEvaluation"]
                    .as_str()
                    .unwrap_or("0001")
                    .starts_with("0001")
            });
        if evaluated {
            for rule in &rules {
                assert_eq!(rule["health"], "ok", "{rule}");
                assert_eq!(rule["state"], "inactive", "{rule}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "rules not evaluated: {rules:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(prometheus);
    assert_eq!(worker.terminate().code(), Some(0), "{}", worker.log());
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let check = prometheus_tool("promtool")
        .args(["check", "rules", "prometheus-alerts.yml"])
        .current_dir(docs())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 9 rules found"), "{text}");

    let test = prometheus_tool("promtool")
        .args(["test", "rules", "prometheus-alerts.test.yml"])
        .current_dir(docs())
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );

    // The rules name only metrics the worker exports.
    let rules = std::fs::read_to_string(docs().join("prometheus-alerts.yml")).unwrap();
    let exported = [
        metrics::TRACKER_STATE,
        metrics::REPLICATION_LAG_BYTES,
        metrics::REPLICATION_LAG_SECONDS,
        metrics::SLOT_WAL_STATUS,
        metrics::SLOT_SAFE_WAL_SIZE,
        metrics::RECONNECTS,
        metrics::ERRORS,
    ];
    let named: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("bemi_"))
        .collect();
    assert!(!named.is_empty());
    for name in named {
        assert!(
            exported.contains(&name),
            "{name} is not a metric of the worker"
        );
    }
}
