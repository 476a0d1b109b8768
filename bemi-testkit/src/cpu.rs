//! The CPU each process of a benchmark uses: the benchmark's own process (the tracker), its
//! child processes (`pg_recvlogical`), and the server's processes by role (walsenders, the
//! backends of each database, background workers), read from Linux's `/proc` while they run.
//!
//! ```no_run
//! # fn run(postmaster: u32) {
//! let meter = bemi_testkit::cpu::CpuMeter::start(postmaster);
//! // … the work to measure …
//! let usage = meter.stop();
//! println!("{usage}");
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the processes are read: a process that ends is counted up to its last reading.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Linux's clock ticks per second for `/proc/<pid>/stat` times (`USER_HZ`, 100 on every
/// architecture Rust targets).
const TICKS_PER_SECOND: f64 = 100.0;

/// Samples processes' CPU time on a thread until [`stop`](Self::stop).
#[derive(Debug)]
pub struct CpuMeter {
    running: Arc<AtomicBool>,
    sampler: JoinHandle<BTreeMap<u32, Reading>>,
    started: Instant,
}

/// The CPU time a process used between its first and last reading.
#[derive(Debug)]
struct Reading {
    role: String,
    first: u64,
    last: u64,
}

/// CPU seconds by role over a wall-clock time.
#[derive(Debug, Clone)]
pub struct CpuUsage {
    /// Wall-clock time measured.
    pub wall: Duration,
    /// CPU seconds (user and system) by role.
    pub seconds: BTreeMap<String, f64>,
}

impl CpuMeter {
    /// Starts reading this process, its children and the children of the server whose
    /// postmaster is `postmaster` (see [`postmaster_pid`]). Times before the start are not
    /// counted.
    pub fn start(postmaster: u32) -> CpuMeter {
        let running = Arc::new(AtomicBool::new(true));
        let me = std::process::id();
        let sampler = std::thread::spawn({
            let running = Arc::clone(&running);
            move || {
                let mut readings = BTreeMap::new();
                let mut first_round = true;
                loop {
                    let last_round = !running.load(Ordering::Relaxed);
                    read_processes(me, postmaster, first_round, &mut readings);
                    first_round = false;
                    if last_round {
                        return readings;
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
            }
        });
        CpuMeter {
            running,
            sampler,
            started: Instant::now(),
        }
    }

    /// Stops reading and sums the CPU seconds by role.
    ///
    /// # Panics
    ///
    /// When the sampling thread panicked.
    pub fn stop(self) -> CpuUsage {
        self.running.store(false, Ordering::Relaxed);
        let wall = self.started.elapsed();
        let readings = self.sampler.join().expect("the CPU sampler");
        let mut seconds = BTreeMap::new();
        for reading in readings.into_values() {
            *seconds.entry(reading.role).or_insert(0.0) +=
                (reading.last - reading.first) as f64 / TICKS_PER_SECOND;
        }
        seconds.retain(|_, s| *s > 0.0);
        CpuUsage { wall, seconds }
    }
}

impl CpuUsage {
    /// The CPU seconds of roles whose name starts with `prefix`.
    pub fn of(&self, prefix: &str) -> f64 {
        self.seconds
            .iter()
            .filter(|(role, _)| role.starts_with(prefix))
            .map(|(_, s)| s)
            .sum()
    }

    /// All CPU seconds as cores busy on average over the wall-clock time.
    pub fn cores(&self) -> f64 {
        self.seconds.values().sum::<f64>() / self.wall.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for CpuUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wall = self.wall.as_secs_f64().max(1e-9);
        write!(f, "{:.2} cores:", self.cores())?;
        for (role, seconds) in &self.seconds {
            write!(f, " {role} {:.2}", seconds / wall)?;
        }
        Ok(())
    }
}

/// The postmaster's process id, from the first line of `postmaster.pid` in `data_dir`.
///
/// # Panics
///
/// When the file cannot be read.
pub fn postmaster_pid(data_dir: &std::path::Path) -> u32 {
    let pid = std::fs::read_to_string(data_dir.join("postmaster.pid")).expect("postmaster.pid");
    pid.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("a pid in postmaster.pid")
}

/// Reads the CPU time of `me`, its children and the postmaster's children into `readings`.
fn read_processes(
    me: u32,
    postmaster: u32,
    first_round: bool,
    readings: &mut BTreeMap<u32, Reading>,
) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Some((parent, ticks)) = stat(pid) else {
            continue;
        };
        let role = if pid == me {
            "tracker (benchmark process)".to_owned()
        } else if parent == me {
            command(pid, "comm").trim().to_owned()
        } else if parent == postmaster {
            server_role(&command(pid, "cmdline"))
        } else {
            continue;
        };
        readings
            .entry(pid)
            .and_modify(|r| r.last = ticks)
            .or_insert(Reading {
                role,
                first: if first_round { ticks } else { 0 },
                last: ticks,
            });
    }
}

/// A process's parent and its user and system CPU ticks, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let parent = fields.get(1)?.parse().ok()?;
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((parent, user + system))
}

fn command(pid: u32, file: &str) -> String {
    std::fs::read(format!("/proc/{pid}/{file}"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

/// A server process's role from its title: `postgres: walsender …`, `postgres: <user>
/// <database> <client> <state>`, `postgres: checkpointer`, ….
fn server_role(title: &str) -> String {
    let title = title.trim().trim_start_matches("postgres: ");
    let words: Vec<&str> = title.split_whitespace().collect();
    match words.as_slice() {
        ["walsender", ..] => "server: walsender".to_owned(),
        ["autovacuum", "worker", ..] => "server: autovacuum".to_owned(),
        [_user, database, client, ..] if client.contains('(') || client.starts_with('[') => {
            format!("server: backends of {database}")
        }
        _ => "server: background".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_roles_from_titles() {
        assert_eq!(
            server_role("postgres: walsender postgres 127.0.0.1(4242) START_REPLICATION"),
            "server: walsender"
        );
        assert_eq!(
            server_role("postgres: postgres audit 127.0.0.1(4243) INSERT"),
            "server: backends of audit"
        );
        assert_eq!(
            server_role("postgres: postgres postgres [local] idle"),
            "server: backends of postgres"
        );
        assert_eq!(server_role("postgres: checkpointer "), "server: background");
        assert_eq!(
            server_role("postgres: autovacuum worker audit"),
            "server: autovacuum"
        );
    }

    #[test]
    fn this_process_is_read() {
        let (parent, _) = stat(std::process::id()).expect("/proc/self");
        assert!(parent > 0);
        let meter = CpuMeter::start(0);
        let until = Instant::now() + Duration::from_millis(300);
        let mut spin = 0u64;
        while Instant::now() < until {
            spin = spin.wrapping_add(1);
        }
        let usage = meter.stop();
        assert!(spin > 0);
        assert!(
            usage.of("tracker") > 0.1,
            "300 ms of spinning counted: {usage}"
        );
    }
}
