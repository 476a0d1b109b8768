//! CPU time of the benchmark's two sides, read from Linux's per-thread scheduler statistics
//! (`/proc/<pid>/task/<tid>/schedstat`, nanoseconds): the clients (every thread of this process)
//! and the server (the postmaster and every process it started).
//!
//! Client and server share the machine's cores, so a way's throughput mixes both; their CPU
//! time per transaction says which side a context costs, and how much of a server's capacity
//! it takes where the server has cores of its own.

use std::fs;
use std::ops::{AddAssign, Sub};
use std::path::Path;

use bemi_temp_postgres::TempPostgres;

/// CPU time used so far, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct CpuTime {
    pub(super) client: u64,
    pub(super) server: u64,
}

impl Sub for CpuTime {
    type Output = CpuTime;

    fn sub(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            client: self.client.saturating_sub(earlier.client),
            server: self.server.saturating_sub(earlier.server),
        }
    }
}

impl AddAssign for CpuTime {
    fn add_assign(&mut self, more: CpuTime) {
        self.client += more.client;
        self.server += more.server;
    }
}

/// Reads [`CpuTime`] for this process and one server.
#[derive(Debug)]
pub(super) struct CpuClock {
    postmaster: u32,
}

impl CpuClock {
    /// The clock of `pg`'s server.
    ///
    /// # Panics
    ///
    /// When the server's `postmaster.pid` cannot be read.
    pub(super) fn of(pg: &TempPostgres) -> CpuClock {
        let pid_file = pg.data_dir().join("postmaster.pid");
        let text = fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("read {}: {e}", pid_file.display()));
        let postmaster = text
            .lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .unwrap_or_else(|| panic!("no PID in {}", pid_file.display()));
        CpuClock { postmaster }
    }

    /// The server's time is read first and the clients' last, so that the reading itself,
    /// which is the clients' work, is left out of what follows.
    pub(super) fn before(&self) -> CpuTime {
        let server = self.server();
        CpuTime {
            client: process_ns(Path::new("/proc/self")),
            server,
        }
    }

    /// The clients' time is read first, for the same reason as in [`CpuClock::before`].
    pub(super) fn after(&self) -> CpuTime {
        let client = process_ns(Path::new("/proc/self"));
        CpuTime {
            client,
            server: self.server(),
        }
    }

    /// The postmaster's time and its children's (backends, WAL writer, checkpointer, …).
    fn server(&self) -> u64 {
        let mut total = process_ns(Path::new(&format!("/proc/{}", self.postmaster)));
        let Ok(entries) = fs::read_dir("/proc") else {
            return total;
        };
        for entry in entries.flatten() {
            let is_pid = entry
                .file_name()
                .to_str()
                .is_some_and(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()));
            if is_pid && parent(&entry.path()) == Some(self.postmaster) {
                total += process_ns(&entry.path());
            }
        }
        total
    }
}

/// The parent PID of the process at `dir` (`/proc/<pid>`), if it still runs.
fn parent(dir: &Path) -> Option<u32> {
    let stat = fs::read_to_string(dir.join("stat")).ok()?;
    // `pid (comm) state ppid …`; comm may hold spaces and parentheses, so read after the last ')'
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// CPU nanoseconds of every thread of the process at `dir`; 0 once it has exited.
fn process_ns(dir: &Path) -> u64 {
    let Ok(tasks) = fs::read_dir(dir.join("task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_s_parent_and_cpu_time() {
        let me = std::process::id();
        let dir = format!("/proc/{me}");
        assert_eq!(
            parent(Path::new(&dir)),
            Some(std::os::unix::process::parent_id())
        );
        let spent = process_ns(Path::new(&dir));
        // burn some CPU and see it counted
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_ns(Path::new(&dir)) > spent);
    }
}
