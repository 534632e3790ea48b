//! Samples a server process's CPU and memory from /proc.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since sampling started.
    pub at: f64,
    /// CPU used since the previous sample, in % of one core.
    pub cpu_percent: f64,
    pub rss_kib: u64,
}

/// CPU ticks (user + system) and RSS of `pid`.
pub fn read(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields start after the closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .ok()?;
    Some((ticks, rss))
}

/// CPU `pid` used since it had `ticks` at `since`, in % of one core.
pub fn cpu_percent_since(pid: u32, ticks: u64, since: Instant) -> Option<f64> {
    let (now, _) = read(pid)?;
    let secs = since.elapsed().as_secs_f64().max(1e-3);
    Some(now.saturating_sub(ticks) as f64 / TICKS_PER_SEC / secs * 100.0)
}

/// The process listening on TCP `port` (via /proc/net/tcp{,6} and the processes' fds).
pub fn pid_of_port(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let listening = *state == "0A";
            let p = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if listening && p == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| Path::new(i) == target)
            {
                return Some(pid);
            }
        }
    }
    None
}

/// Samples every `every` until `stop`; returns the samples.
pub async fn sample(
    pid: u32,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Sample> {
    let start = Instant::now();
    let mut samples = Vec::new();
    let Some((mut ticks, _)) = read(pid) else {
        return samples;
    };
    let mut last = Instant::now();
    let mut interval = tokio::time::interval(every);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => break,
        }
        let Some((now_ticks, rss)) = read(pid) else {
            break;
        };
        let secs = last.elapsed().as_secs_f64();
        last = Instant::now();
        samples.push(Sample {
            at: start.elapsed().as_secs_f64(),
            cpu_percent: (now_ticks - ticks) as f64 / TICKS_PER_SEC / secs * 100.0,
            rss_kib: rss,
        });
        ticks = now_ticks;
    }
    samples
}

/// CPU below which a server counts as idle, in % of one core.
pub const IDLE_PERCENT: f64 = 10.0;

/// Waits until `pid` uses less than [`IDLE_PERCENT`] of a core over a quarter second (it has
/// worked off its backlog), at most `limit`; false if it never did.
pub async fn wait_idle(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let every = Duration::from_millis(250);
    let Some((mut ticks, _)) = read(pid) else {
        return false;
    };
    while Instant::now() < deadline {
        tokio::time::sleep(every).await;
        let Some((now, _)) = read(pid) else {
            return false;
        };
        if (now - ticks) as f64 / TICKS_PER_SEC / every.as_secs_f64() * 100.0 < IDLE_PERCENT {
            return true;
        }
        ticks = now;
    }
    false
}
