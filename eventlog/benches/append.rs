//! Durable appends per second into [`SqliteLog`] with 1, 16 and 256 concurrent appenders.
//!
//! Each appender appends single events (about 200 bytes of JSON) to its own stream with exact
//! expected versions, in a loop, for a fixed time. Prints appends/s, per-append latency
//! percentiles, how many commits (fsyncs) it took and their mean duration.
//!
//! ```text
//! cargo bench -p eventlog --bench append
//! BENCH_SECS=10 BENCH_DIR=/mnt/disk cargo bench -p eventlog --bench append
//! ```
//!
//! `BENCH_APPENDERS=256` runs one of the three only. `BENCH_DIR` picks the directory for the database files (default: the system temp dir, which
//! must be a real disk, not tmpfs, for the numbers to mean anything).

use std::time::{Duration, Instant};

use eventlog::sqlite::SqliteLog;
use eventlog::{EventLog, ExpectedVersion, NewEvent};
use uuid::Uuid;

const CONCURRENCY: [usize; 3] = [1, 16, 256];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; under `cargo test` this is a one-second smoke run that
    // keeps the benchmark working without spending CI time on it.
    let full = std::env::args().any(|a| a == "--bench");
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if full { 5 } else { 1 });
    let dir = match std::env::var_os("BENCH_DIR") {
        Some(dir) => tempfile::TempDir::new_in(dir)?,
        None => tempfile::TempDir::new()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "durable appends into {} for {secs} s each",
        dir.path().display()
    );
    println!(
        "{:>10} {:>10} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "appenders",
        "appends",
        "appends/s",
        "p50 µs",
        "p99 µs",
        "commits",
        "per commit",
        "commit µs"
    );
    let only: Option<usize> = std::env::var("BENCH_APPENDERS")
        .ok()
        .and_then(|s| s.parse().ok());
    for concurrency in CONCURRENCY
        .into_iter()
        .filter(|c| only.is_none_or(|o| o == *c))
    {
        let path = dir.path().join(format!("bench-{concurrency}.db"));
        runtime.block_on(run(&path, concurrency, Duration::from_secs(secs)))?;
    }
    Ok(())
}

async fn run(
    path: &std::path::Path,
    concurrency: usize,
    duration: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let log = SqliteLog::open(path).await?;
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                let stream = format!("room-{t}");
                let mut version = 0;
                let mut latencies = Vec::with_capacity(4096);
                while Instant::now() < deadline {
                    let begin = Instant::now();
                    let r = log
                        .append(&stream, ExpectedVersion::at(version), vec![event(version)])
                        .await?;
                    latencies.push(begin.elapsed());
                    version = r.last_version;
                }
                Ok::<_, eventlog::Error>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();
    let stats = log.stats();
    log.close().await;

    latencies.sort_unstable();
    let percentile = |p: f64| {
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len() - 1);
        latencies[i].as_micros()
    };
    println!(
        "{:>10} {:>10} {:>12.0} {:>10} {:>10} {:>10} {:>10.1} {:>10}",
        concurrency,
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(0.50),
        percentile(0.99),
        stats.batches,
        stats.requests as f64 / stats.batches.max(1) as f64,
        stats.commit_micros / stats.batches.max(1),
    );
    Ok(())
}

/// `BENCH_IDS=v7` uses time-ordered ids, as the server does for every event except sends with
/// a client idempotency key (UUIDv5, effectively random). The default, random v4, is the
/// worst case for the `event_id` index.
fn event_id() -> Uuid {
    static V7: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *V7.get_or_init(|| std::env::var("BENCH_IDS").is_ok_and(|v| v == "v7")) {
        Uuid::now_v7()
    } else {
        Uuid::new_v4()
    }
}

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: event_id(),
        event_type: "MessageSent".into(),
        schema_version: 1,
        data: format!(
            r#"{{"message_id":"{}","sender":"user-0b6f1d0e","body":"message number {n}, long enough to be a typical chat line of some hundred bytes or so","mentions":[]}}"#,
            Uuid::new_v4()
        )
        .into_bytes(),
        metadata: br#"{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}"#.to_vec(),
    }
}
