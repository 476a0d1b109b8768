//! The `bemi` worker process: finding the binary, `bemi setup`, starting, killing and watching
//! `bemi run`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{BoxError, Soak, SLOT};

/// The `bemi` binary: `flag` when given, else the one next to this program, built first with
/// cargo (same profile and target directory) when this program runs under cargo.
pub(crate) fn bemi_binary(flag: Option<PathBuf>) -> Result<PathBuf, BoxError> {
    if let Some(path) = flag {
        return Ok(path);
    }
    let exe = std::env::current_exe()?;
    let sibling = exe.with_file_name("bemi");
    if let (Some(cargo), Some(profile_dir)) = (std::env::var_os("CARGO"), exe.parent()) {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let target_dir = profile_dir.parent().ok_or("no target directory")?;
        let mut build = Command::new(cargo);
        build
            .args(["build", "-p", "bemi-cli", "--bin", "bemi"])
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        if release {
            build.arg("--release");
        }
        let status = build.status()?;
        if !status.success() {
            return Err(format!("cargo build -p bemi-cli failed ({status})").into());
        }
    }
    if !sibling.exists() {
        return Err(format!(
            "{} is missing: build it with `cargo build -p bemi-cli` (add --release for a release \
             build of soak), or pass --bemi PATH",
            sibling.display()
        )
        .into());
    }
    Ok(sibling)
}

/// A `bemi` command with nothing from our environment (no DATABASE_URL, DB_*, RUST_LOG).
fn command(bemi: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bemi);
    cmd.args(args)
        .env_clear()
        .env("LOG_LEVEL", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// `bemi setup` on the source: publication, replica identity (and the event trigger that keeps
/// it for new tables), slot.
pub(crate) fn setup(bemi: &Path, source_url: &str) -> Result<(), BoxError> {
    let out = command(
        bemi,
        &[
            "setup",
            "--database-url",
            source_url,
            "--slot",
            SLOT,
            "--publication",
            SLOT,
        ],
    )
    .output()?;
    if !out.status.success() {
        return Err(format!(
            "bemi setup failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// A worker that ended without being asked to.
#[derive(Debug, Clone)]
pub(crate) struct Exit {
    /// Which start it was (1 for the first).
    pub(crate) start: u32,
    /// Its exit status.
    pub(crate) status: String,
    /// The last lines of its stderr.
    pub(crate) tail: Vec<String>,
}

impl Exit {
    /// The line that best says why: the last error, else the last line.
    pub(crate) fn reason(&self) -> &str {
        self.tail
            .iter()
            .rev()
            .find(|l| l.contains("ERROR") || l.contains("Error") || l.contains("error"))
            .or(self.tail.last())
            .map_or("(no output)", String::as_str)
    }
}

/// How the final SIGTERM went.
#[derive(Debug)]
pub(crate) struct Stopped {
    /// True when the worker exited with status 0 within 30 s.
    pub(crate) clean: bool,
    /// What happened, in words.
    pub(crate) what: String,
}

/// The `bemi run` process, restarted as needed; killed when dropped.
#[derive(Debug)]
pub(crate) struct Worker {
    bemi: PathBuf,
    source_url: String,
    destination_url: String,
    logs: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
    exits: Vec<Exit>,
}

impl Worker {
    /// A worker not started yet, logging into `logs/worker-N.log`.
    pub(crate) fn new(
        bemi: PathBuf,
        source_url: String,
        destination_url: String,
        logs: PathBuf,
    ) -> Worker {
        Worker {
            bemi,
            source_url,
            destination_url,
            log: logs.join("worker-0.log"),
            logs,
            child: None,
            starts: 0,
            exits: Vec::new(),
        }
    }

    /// Starts `bemi run` with its stderr in a log file of its own, unless it runs.
    pub(crate) fn start(&mut self) -> std::io::Result<()> {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                self.child = Some(child);
                return Ok(());
            }
            self.record_exit(&mut child);
        }
        self.starts += 1;
        self.log = self.logs.join(format!("worker-{}.log", self.starts));
        let stderr = File::create(&self.log)?;
        let child = command(
            &self.bemi,
            &[
                "run",
                "--database-url",
                &self.source_url,
                "--destination-url",
                &self.destination_url,
                "--slot",
                SLOT,
                "--publication",
                SLOT,
            ],
        )
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// How many times the worker was started.
    pub(crate) fn starts(&self) -> u32 {
        self.starts
    }

    /// The workers that ended on their own.
    pub(crate) fn exits(&self) -> &[Exit] {
        &self.exits
    }

    /// SIGKILLs the worker and starts it again; says whether it was running.
    pub(crate) fn kill_and_restart(&mut self) -> std::io::Result<bool> {
        let mut was_running = false;
        if let Some(mut child) = self.child.take() {
            was_running = matches!(child.try_wait(), Ok(None));
            if was_running {
                child.kill()?;
                child.wait()?;
            } else {
                self.record_exit(&mut child);
            }
        }
        self.start()?;
        Ok(was_running)
    }

    /// The worker's exit, if it ended on its own since the last call (it is then not running).
    pub(crate) fn poll(&mut self) -> Option<Exit> {
        let child = self.child.as_mut()?;
        if !matches!(child.try_wait(), Ok(Some(_))) {
            return None;
        }
        let mut child = self.child.take()?;
        self.record_exit(&mut child);
        self.exits.last().cloned()
    }

    fn record_exit(&mut self, child: &mut Child) {
        let status = child
            .wait()
            .map_or_else(|e| format!("unknown ({e})"), |s| s.to_string());
        self.exits.push(Exit {
            start: self.starts,
            status,
            tail: tail(&self.log, 8),
        });
    }

    /// The last lines of the current worker's log.
    pub(crate) fn tail(&self, lines: usize) -> Vec<String> {
        tail(&self.log, lines)
    }

    /// Sends SIGTERM and waits up to 30 s for a clean exit (SIGKILL after that).
    pub(crate) fn terminate(&mut self) -> Stopped {
        let Some(mut child) = self.child.take() else {
            return Stopped {
                clean: false,
                what: "the worker was not running".into(),
            };
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while sent && Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Stopped {
                    clean: status.success(),
                    what: format!("SIGTERM: {status}"),
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        Stopped {
            clean: false,
            what: "did not stop within 30 s of SIGTERM; killed".into(),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The distinct warnings and errors in the workers' logs under `dir` (compared without their
/// time), at most `n`, oldest worker first: what to read first when a run fails.
pub(crate) fn warnings(dir: &Path, n: usize) -> Vec<String> {
    let mut logs: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .collect();
    logs.sort();
    let mut seen = std::collections::HashSet::new();
    logs.iter()
        .flat_map(|log| tail(log, usize::MAX))
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .filter(|line| seen.insert(line.split_once(' ').map_or("", |(_, rest)| rest).to_owned()))
        .take(n)
        .collect()
}

/// The last `n` lines of a log, without terminal escapes, each cut to 400 characters.
fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| {
            let mut clean = String::new();
            let mut escape = false;
            for c in l.chars() {
                match (escape, c) {
                    (_, '\u{1b}') => escape = true,
                    (true, 'm') => escape = false,
                    (true, _) => {}
                    (false, c) => clean.push(c),
                }
            }
            clean.chars().take(400).collect()
        })
        .collect()
}

/// Watches the worker: one that ends on its own is reported with its stderr and started again
/// a second later.
pub(crate) async fn monitor(soak: Arc<Soak>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let exit = soak.worker().poll();
        let Some(exit) = exit else { continue };
        let count = soak.worker().exits().len();
        if count <= 3 {
            soak.say(format!(
                "! FINDING: the worker (start {}) exited on its own ({}); its last lines:\n    {}",
                exit.start,
                exit.status,
                exit.tail.join("\n    ")
            ));
        } else {
            soak.say(format!(
                "! FINDING: the worker (start {}) exited on its own ({}): {}",
                exit.start,
                exit.status,
                exit.reason()
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Err(e) = soak.worker().start() {
            soak.say(format!("! could not start the worker again: {e}"));
        }
    }
}
