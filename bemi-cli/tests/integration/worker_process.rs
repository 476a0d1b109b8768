//! A `bemi run` process for the monitoring tests: its log captured, its monitoring endpoint
//! (`--metrics-listen` on a free port) queried over HTTP, killed when the test ends.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bemi_testkit::TestDatabase;
use prometheus_parse::{Sample, Scrape, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long a worker may take to start, stream or stop.
pub(crate) const WAIT: Duration = Duration::from_secs(120);

/// A running `bemi run`.
pub(crate) struct Worker {
    child: Child,
    log: Arc<Mutex<String>>,
    address: SocketAddr,
}

/// The variables that point `bemi run` at `db`, its slot and its publication.
pub(crate) fn source_env(db: &TestDatabase) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", db.options().to_url()),
        ("BEMI_SLOT", db.slot()),
        ("BEMI_PUBLICATION", db.publication()),
    ]
}

impl Worker {
    /// Starts `bemi run ARGS` with only the variables `env` (and an info log), serving its
    /// monitoring endpoint on a free port, and waits until that serves.
    pub(crate) fn start(args: &[&str], env: &[(&str, String)]) -> Worker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bemi"))
            .arg("run")
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("LOG_LEVEL", "info")
            .env("BEMI_METRICS_LISTEN", "127.0.0.1:0")
            // The test server is shared: other tests' WAL counts in every slot's lag, which
            // must not make these tests' readiness checks fail (the rule has unit tests).
            .env("BEMI_READY_MAX_LAG_BYTES", (1u64 << 40).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bemi starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = lines.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let deadline = Instant::now() + WAIT;
        let address = loop {
            let text = log.lock().unwrap().clone();
            let announced = text
                .lines()
                .find(|line| line.contains("serving /metrics"))
                .and_then(|line| line.split("address=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .map(|address| address.parse::<SocketAddr>().expect("an address"));
            if let Some(address) = announced {
                break address;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("bemi exited with {status} before serving:\n{text}");
            }
            assert!(Instant::now() < deadline, "bemi did not serve:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        };
        Worker {
            child,
            log,
            address,
        }
    }

    /// What the worker logged so far.
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a line of the log holds all of `words` (the log reaches the test through a
    /// pipe, a moment after the worker wrote it); returns that line.
    pub(crate) fn wait_for_log(&self, words: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            let line = log
                .lines()
                .find(|line| words.iter().all(|word| line.contains(word)));
            if let Some(line) = line {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {words:?} in:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and waits for the process to be gone.
    pub(crate) fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and waits for the exit status.
    pub(crate) fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "bemi did not stop after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` on the monitoring endpoint: the status and the body.
    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.address, path).await
    }

    /// The address of the monitoring endpoint.
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    /// `/metrics`, parsed by a Prometheus text-format parser.
    pub(crate) async fn metrics(&self) -> Scrape {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        Scrape::parse(body.lines().map(|line| Ok(line.to_owned()))).expect("Prometheus text")
    }

    /// `/readyz`: its status and the state of each source by name.
    pub(crate) async fn readiness(&self) -> (u16, HashMap<String, serde_json::Value>) {
        let (status, body) = self.get("/readyz").await;
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let sources = json["sources"]
            .as_array()
            .expect("sources")
            .iter()
            .map(|source| {
                (
                    source["source"].as_str().unwrap().to_owned(),
                    source.clone(),
                )
            })
            .collect();
        (status, sources)
    }

    /// Waits until `/readyz` gives `source` the state `state`; returns how long that took.
    pub(crate) async fn wait_for_state(
        &self,
        source: &str,
        state: &str,
        timeout: Duration,
    ) -> Duration {
        let began = Instant::now();
        loop {
            let (_, sources) = self.readiness().await;
            if sources[source]["state"] == state {
                return began.elapsed();
            }
            assert!(
                began.elapsed() < timeout,
                "{source} is not {state} after {timeout:?}: {sources:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A plain HTTP/1.0 GET (so no chunked body): the status and the body.
pub(crate) async fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connect to {address}: {e}"));
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8(response).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status");
    (status, body.to_owned())
}

/// The value of the counter or gauge `name` with all of `labels`, summed over its other labels
/// (0 when there is none).
pub(crate) fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    matching(scrape, name, labels)
        .map(|sample| match sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            ref other => panic!("{name} is not a number: {other:?}"),
        })
        .sum()
}

/// The samples named `name` with all of `labels`.
pub(crate) fn matching<'a>(
    scrape: &'a Scrape,
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a Sample> + 'a {
    scrape.samples.iter().filter(move |sample| {
        sample.metric == name
            && labels
                .iter()
                .all(|(key, value)| sample.labels.get(key) == Some(*value))
    })
}
