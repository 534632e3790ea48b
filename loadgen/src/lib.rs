//! chat-loadgen: measures chatd the way its users load it.
//!
//! It provisions users and rooms through the REST API, opens WebSocket connections, sends at a
//! target rate (open loop: each message has an intended send time, and latency is measured from
//! it, so a slow server shows up as latency, not as a lower offered load), and accounts for every
//! event each connection receives: per room, seqs must arrive once and in order, so loss,
//! duplicates and reordering are counted exactly.

pub mod baseline;
pub mod client;
pub mod provision;
pub mod report;
pub mod scenario;
pub mod sysmon;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::{ConnPlan, Endpoint, Shared, histogram};
use crate::report::{Latency, Machine, Report, Server};
use crate::scenario::{Preset, Scenario};

/// What to load.
#[derive(Debug, Clone)]
pub enum Target {
    /// A running chatd at this base URL (`http://host:port`).
    Chatd { url: String, prefix: String },
    /// A bare broadcast server at this address.
    Baseline { addr: SocketAddr },
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    /// Server process to sample (CPU, RSS).
    pub server_pid: Option<u32>,
    pub source_addrs: u8,
    /// Show progress bars.
    pub progress: bool,
}

/// Lets this process open `want` files, raising the hard limit too when allowed.
pub fn raise_fd_limit(want: u64) -> u64 {
    let want = want.max(1024);
    if rlimit::setrlimit(rlimit::Resource::NOFILE, want, want).is_ok() {
        return want;
    }
    rlimit::increase_nofile_limit(want).unwrap_or(0)
}

fn bar(progress: bool, len: u64, template: &str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// Waits until `done` holds or `limit` passes; false on timeout.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Runs one scenario against one target.
pub async fn run(s: &Scenario, opts: &Options) -> anyhow::Result<Report> {
    raise_fd_limit(s.connections as u64 + 4096);
    let template = "{spinner} {msg} [{bar:40}] {pos}/{len} ({elapsed})";
    let (plan, endpoint, target_name) = match &opts.target {
        Target::Chatd { url, prefix } => {
            let pb = bar(opts.progress, 0, template);
            let plan = provision::chatd(url, prefix, s, &pb).await?;
            pb.finish_and_clear();
            let ws_base = url.replacen("http://", "ws://", 1);
            let host = url.trim_start_matches("http://").trim_end_matches('/');
            let addr = host
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve {host}"))?
                .next()
                .context("no address")?;
            (
                plan,
                Endpoint {
                    ws_base,
                    addr,
                    baseline: false,
                    source_addrs: opts.source_addrs,
                },
                "chatd",
            )
        }
        Target::Baseline { addr } => (
            provision::synthetic(s),
            Endpoint {
                ws_base: format!("ws://{addr}"),
                addr: *addr,
                baseline: true,
                source_addrs: opts.source_addrs,
            },
            "baseline",
        ),
    };
    let room_ids: Vec<String> = plan.rooms.iter().map(|(id, _)| id.clone()).collect();
    let rooms_of = plan.rooms_of();
    let online = s.online_users().max(1);
    let shared = Arc::new(Shared::new(&room_ids));
    let (go_tx, go_rx) = watch::channel(None);
    let rss_before = opts.server_pid.and_then(sysmon::read).map(|(_, rss)| rss);

    let mut tasks = Vec::with_capacity(s.connections);
    for c in 0..s.connections {
        let user = c % online;
        let sender = c < s.senders;
        let conn = ConnPlan {
            index: c,
            user_id: plan.users[user].0.clone(),
            token: plan.users[user].1.clone(),
            rooms: rooms_of[user]
                .iter()
                .map(|&r| (r, room_ids[r].clone()))
                .collect(),
            rate: if sender && !rooms_of[user].is_empty() {
                s.rate / s.senders as f64
            } else {
                0.0
            },
            body_size: s.size,
            churn: s.churn_secs.map(Duration::from_secs_f64),
            resume: s.resume,
        };
        tasks.push(tokio::spawn(client::run(
            endpoint.clone(),
            conn,
            shared.clone(),
            go_rx.clone(),
        )));
    }
    let pb = bar(
        opts.progress,
        s.connections as u64,
        "connecting [{bar:40}] {pos}/{len} ({elapsed})",
    );
    let connect_limit = Duration::from_secs(60 + s.connections as u64 / 200);
    let all_connected = wait_until(connect_limit, || {
        let n = shared.connected.load(Ordering::Relaxed);
        pb.set_position(n as u64);
        n == s.connections
    })
    .await;
    pb.finish_and_clear();
    anyhow::ensure!(
        all_connected,
        "only {} of {} connections opened: {:?}",
        shared.connected.load(Ordering::Relaxed),
        s.connections,
        shared.errors.lock().map(|e| e.clone()).unwrap_or_default()
    );
    // Let the resumes settle before measuring memory and starting the clock.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = opts.server_pid.and_then(sysmon::read).map(|(_, rss)| rss);

    let (sampler_stop, sampler_rx) = watch::channel(false);
    let sampler = opts
        .server_pid
        .map(|pid| tokio::spawn(sysmon::sample(pid, Duration::from_secs(1), sampler_rx)));
    let t0 = Instant::now();
    let epoch_us = |t: Instant| t.into_std().duration_since(shared.epoch).as_micros() as u64;
    shared
        .window_from
        .store(epoch_us(t0 + s.warmup()), Ordering::Relaxed);
    shared
        .window_to
        .store(epoch_us(t0 + s.warmup() + s.duration()), Ordering::Relaxed);
    go_tx.send_replace(Some(t0));

    let total = s.warmup() + s.duration();
    let pb = bar(
        opts.progress,
        total.as_secs(),
        "{spinner} {msg} [{bar:40}] {pos}/{len} s",
    );
    let mut last = (Instant::now(), 0u64, 0u64);
    while t0.elapsed() < total {
        tokio::time::sleep(Duration::from_millis(500).min(total.saturating_sub(t0.elapsed())))
            .await;
        let (acked, delivered) = (
            shared.acked.load(Ordering::Relaxed),
            shared.delivered.load(Ordering::Relaxed),
        );
        let secs = last.0.elapsed().as_secs_f64().max(1e-3);
        pb.set_position(t0.elapsed().as_secs());
        pb.set_message(format!(
            "{} acked/s, {} deliveries/s{}",
            ((acked - last.1) as f64 / secs) as u64,
            ((delivered - last.2) as f64 / secs) as u64,
            if t0.elapsed() < s.warmup() {
                " (warming up)"
            } else {
                ""
            }
        ));
        last = (Instant::now(), acked, delivered);
    }
    pb.finish_and_clear();

    // Stop sending; wait for the answers, then for every connection to hold every event.
    shared.sending_over.store(true, Ordering::Relaxed);
    go_tx.send_replace(Some(t0));
    wait_until(Duration::from_secs(15), || {
        shared.acked.load(Ordering::Relaxed)
            + shared.error_count()
            + shared.unanswered.load(Ordering::Relaxed)
            >= shared.sent.load(Ordering::Relaxed)
    })
    .await;
    shared.acks_settled.store(true, Ordering::Relaxed);
    go_tx.send_replace(Some(t0));
    // Done when every connection holds every event, or when nothing has arrived for a while
    // (what is missing then is lost).
    let mut quiet = (shared.delivered.load(Ordering::Relaxed), Instant::now());
    wait_until(Duration::from_secs(30), || {
        let delivered = shared.delivered.load(Ordering::Relaxed);
        if delivered != quiet.0 {
            quiet = (delivered, Instant::now());
        }
        shared.caught_up.load(Ordering::Relaxed) >= s.connections
            || quiet.1.elapsed() > Duration::from_secs(3)
    })
    .await;
    shared.stop.send_replace(true);
    for t in tasks {
        let _ = t.await;
    }
    sampler_stop.send_replace(true);
    let samples = match sampler {
        Some(h) => h.await.unwrap_or_default(),
        None => Vec::new(),
    };

    let mut ack = histogram();
    let mut delivery = histogram();
    let (mut lost, mut duplicates, mut out_of_order) = (0, 0, 0);
    for r in shared
        .results
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        ack.add(&r.ack).ok();
        delivery.add(&r.delivery).ok();
        for (room, track) in &r.rooms {
            lost += track.lost(shared.final_seq[*room].load(Ordering::Relaxed));
            duplicates += track.duplicates;
            out_of_order += track.out_of_order;
        }
    }
    let secs = s.duration_secs;
    let server = opts.server_pid.map(|pid| {
        let cpu: Vec<f64> = samples.iter().map(|x| x.cpu_percent).collect();
        Server {
            pid,
            cpu_avg_percent: cpu.iter().sum::<f64>() / cpu.len().max(1) as f64,
            cpu_max_percent: cpu.iter().copied().fold(0.0, f64::max),
            rss_before_kib: rss_before.unwrap_or(0),
            rss_max_kib: samples
                .iter()
                .map(|x| x.rss_kib)
                .chain(rss_connected)
                .max()
                .unwrap_or(0),
            rss_per_connection_bytes: match (s.preset, rss_before, rss_connected) {
                (Preset::Idle, Some(b), Some(a)) => {
                    Some(a.saturating_sub(b) * 1024 / s.connections.max(1) as u64)
                }
                _ => None,
            },
            samples,
        }
    });
    let errors = shared.errors.lock().map(|e| e.clone()).unwrap_or_default();
    Ok(Report {
        target: target_name.to_owned(),
        scenario: s.clone(),
        machine: Machine::this(),
        connections: s.connections,
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        sent: shared.sent.load(Ordering::Relaxed),
        acked: shared.acked.load(Ordering::Relaxed),
        unanswered: shared.unanswered.load(Ordering::Relaxed),
        delivered: shared.delivered.load(Ordering::Relaxed),
        acked_per_sec: shared.acked_in_window.load(Ordering::Relaxed) as f64 / secs,
        deliveries_per_sec: shared.delivered_in_window.load(Ordering::Relaxed) as f64 / secs,
        ack_latency: Latency::of(&ack),
        delivery_latency: Latency::of(&delivery),
        lost,
        duplicates,
        out_of_order,
        errors,
        server,
    })
}

/// Starts the baseline server as a child process (`chat-loadgen baseline-server`), so that it
/// is measured like chatd: another process on the same machine.
pub async fn spawn_baseline() -> anyhow::Result<(tokio::process::Child, SocketAddr)> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["baseline-server", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the baseline server")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = lines
        .next_line()
        .await?
        .context("baseline server said nothing")?;
    let addr = line
        .strip_prefix("listening ")
        .context("unexpected baseline output")?
        .parse()?;
    Ok((child, addr))
}
