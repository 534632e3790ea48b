//! chat-loadgen: measures chatd the way its users load it.
//!
//! It provisions users and rooms through the REST API, opens WebSocket connections, sends at a
//! target rate (open loop: each message has an intended send time, and latency is measured from
//! it, so a slow server shows up as latency, not as a lower offered load), and accounts for every
//! event each connection receives (see [`accounting`]): per room, seqs must arrive once and in
//! order, so loss, duplicates and reordering are counted exactly. Throughput is what *arrived*
//! inside the measured window; a run whose p99 exceeds the bound or whose backlog grows is
//! reported saturated, and [`findmax`] searches for the highest rate that is not.

pub mod accounting;
pub mod baseline;
pub mod client;
pub mod findmax;
pub mod provision;
pub mod readside;
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

use crate::accounting::Window;
use crate::client::{ConnPlan, ConnRoom, Endpoint, Go, Shared};
use crate::provision::Plan;
use crate::report::{Latency, Measured, Report, Server};
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

/// A target ready to be loaded: users and rooms exist, and where each room's seq stands.
#[derive(Debug)]
pub struct Prepared {
    target: &'static str,
    plan: Plan,
    endpoint: Endpoint,
    /// Per room, the seq connections resume after (advanced by every step).
    start_seqs: Vec<u64>,
    /// Times chatd's read side late in each window (none for the baseline).
    probe: Option<readside::Probe>,
}

impl Prepared {
    pub fn target(&self) -> &'static str {
        self.target
    }
}

/// Provisions the scenario's users and rooms on the target (made up for the baseline).
pub async fn prepare(s: &Scenario, opts: &Options) -> anyhow::Result<Prepared> {
    raise_fd_limit(s.connections as u64 + 4096);
    let template = "{spinner} {msg} [{bar:40}] {pos}/{len} ({elapsed})";
    Ok(match &opts.target {
        Target::Chatd { url, prefix } => {
            let pb = bar(opts.progress, 0, template);
            let plan = provision::chatd(url, prefix, s, &pb).await?;
            pb.finish_and_clear();
            let start_seqs = provision::room_seqs(url, &plan).await?;
            let probe = readside::Probe::provision(url, prefix).await?;
            let ws_base = url.replacen("http://", "ws://", 1);
            let host = url.trim_start_matches("http://").trim_end_matches('/');
            let addr = host
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve {host}"))?
                .next()
                .context("no address")?;
            Prepared {
                target: "chatd",
                plan,
                endpoint: Endpoint {
                    ws_base,
                    addr,
                    baseline: false,
                    source_addrs: opts.source_addrs,
                },
                start_seqs,
                probe: Some(probe),
            }
        }
        Target::Baseline { addr } => Prepared {
            target: "baseline",
            plan: provision::synthetic(s),
            endpoint: Endpoint {
                ws_base: format!("ws://{addr}"),
                addr: *addr,
                baseline: true,
                source_addrs: opts.source_addrs,
            },
            start_seqs: vec![0; s.rooms],
            probe: None,
        },
    })
}

/// Runs one scenario against one target.
pub async fn run(s: &Scenario, opts: &Options) -> anyhow::Result<Report> {
    let mut prepared = prepare(s, opts).await?;
    step(s, &mut prepared, opts).await
}

/// One measured run at `s.rate` on a prepared target.
pub async fn step(s: &Scenario, p: &mut Prepared, opts: &Options) -> anyhow::Result<Report> {
    if p.endpoint.baseline {
        // The baseline cannot resume: fresh rooms, so nothing of an earlier step arrives.
        p.plan = provision::synthetic(s);
        p.start_seqs = vec![0; s.rooms];
    }
    let room_ids: Vec<String> = p.plan.rooms.iter().map(|(id, _)| id.clone()).collect();
    let rooms_of = p.plan.rooms_of();
    let online = s.online_users().max(1);
    let user_of = |c: usize| c % online;
    let mut conns_in_room = vec![0u64; room_ids.len()];
    for c in 0..s.connections {
        for &r in &rooms_of[user_of(c)] {
            conns_in_room[r] += 1;
        }
    }
    let shared = Arc::new(Shared::new(&room_ids));
    let (go_tx, go_rx) = watch::channel(None);
    let rss_before = opts.server_pid.and_then(sysmon::read).map(|(_, rss)| rss);

    let mut tasks = Vec::with_capacity(s.connections);
    for c in 0..s.connections {
        let user = user_of(c);
        let sender = c < s.senders;
        let conn = ConnPlan {
            index: c,
            user_id: p.plan.users[user].0.clone(),
            token: p.plan.users[user].1.clone(),
            rooms: rooms_of[user]
                .iter()
                .map(|&r| ConnRoom {
                    index: r,
                    id: room_ids[r].clone(),
                    start_seq: p.start_seqs[r],
                    recipients: conns_in_room[r].saturating_sub(1),
                })
                .collect(),
            rate: if sender && !rooms_of[user].is_empty() {
                s.rate / s.senders as f64
            } else {
                0.0
            },
            phase: c as f64 / s.senders.max(1) as f64,
            body_size: s.size,
            churn: s.churn_secs.map(Duration::from_secs_f64),
            resume: s.resume,
        };
        tasks.push(tokio::spawn(client::run(
            p.endpoint.clone(),
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
    if !all_connected {
        shared.stop.send_replace(true);
        anyhow::bail!(
            "only {} of {} connections opened: {:?}",
            shared.connected.load(Ordering::Relaxed),
            s.connections,
            shared.errors.lock().map(|e| e.clone()).unwrap_or_default()
        );
    }
    // Let the resumes settle before measuring memory and starting the clock.
    let settle = if s.preset == Preset::Idle { 1000 } else { 300 };
    tokio::time::sleep(Duration::from_millis(settle)).await;
    let rss_connected = opts.server_pid.and_then(sysmon::read).map(|(_, rss)| rss);

    let (sampler_stop, sampler_rx) = watch::channel(false);
    let sampler = opts
        .server_pid
        .map(|pid| tokio::spawn(sysmon::sample(pid, Duration::from_secs(1), sampler_rx)));
    let generator_before =
        sysmon::read(std::process::id()).map(|(ticks, _)| (ticks, std::time::Instant::now()));
    let t0 = Instant::now() + Duration::from_millis(20);
    let (from, end) = (t0 + s.warmup(), t0 + s.warmup() + s.duration());
    let window_opened_at = chrono::Utc::now() + (from - Instant::now());
    let window = Window {
        run: uuid::Uuid::new_v4().as_u128() as u32,
        from_us: shared.us(from),
        to_us: shared.us(end),
    };
    go_tx.send_replace(Some(Go { t0, end, window }));
    // How far the read side is behind, in the window's last quarter, under the load.
    let probe_at = from + s.duration().mul_f64(0.75);
    let read_side = p.probe.clone().map(|probe| {
        tokio::spawn(async move {
            tokio::time::sleep_until(probe_at).await;
            probe.measure(readside::LIMIT).await
        })
    });

    let pb = bar(
        opts.progress,
        (s.warmup() + s.duration()).as_secs(),
        "{spinner} {msg} [{bar:40}] {pos}/{len} s",
    );
    let live = shared.live.clone();
    let mut last = (Instant::now(), 0u64, 0u64);
    let mut backlog_start = None;
    while Instant::now() < end {
        let next = (Instant::now() + Duration::from_millis(500)).min(end);
        let next = match backlog_start {
            None if next >= from => from,
            _ => next,
        };
        tokio::time::sleep_until(next).await;
        if backlog_start.is_none() && Instant::now() >= from {
            backlog_start = Some(live.backlog());
        }
        let (answered, delivered) = (
            live.answered.load(Ordering::Relaxed),
            live.delivered.load(Ordering::Relaxed),
        );
        let secs = last.0.elapsed().as_secs_f64().max(1e-3);
        pb.set_position(t0.elapsed().as_secs());
        pb.set_message(format!(
            "{} answered/s, {} deliveries/s{}",
            ((answered - last.1) as f64 / secs) as u64,
            ((delivered - last.2) as f64 / secs) as u64,
            if Instant::now() < from {
                " (warming up)"
            } else {
                ""
            }
        ));
        last = (Instant::now(), answered, delivered);
    }
    let backlog_end = live.backlog();
    pb.finish_and_clear();

    // Sending is over: wait for the answers, then for every connection to hold every event.
    let drain_until = Instant::now() + Duration::from_secs_f64(s.drain_secs);
    wait_until(
        drain_until.saturating_duration_since(Instant::now()),
        || live.backlog().answers == 0,
    )
    .await;
    shared.acks_settled.send_replace(true);
    // Done when every connection holds every event, or when nothing has arrived for a while
    // (what is missing then is lost, or behind when nothing after it came).
    let mut quiet = (live.delivered.load(Ordering::Relaxed), Instant::now());
    wait_until(
        drain_until.saturating_duration_since(Instant::now()),
        || {
            let delivered = live.delivered.load(Ordering::Relaxed);
            if delivered != quiet.0 {
                quiet = (delivered, Instant::now());
            }
            shared.caught_up.load(Ordering::Relaxed) >= s.connections
                || quiet.1.elapsed() > Duration::from_secs(3)
        },
    )
    .await;
    shared.stop.send_replace(true);
    for t in tasks {
        let _ = t.await;
    }

    sampler_stop.send_replace(true);
    let generator_cpu = generator_before
        .and_then(|(ticks, at)| sysmon::cpu_percent_since(std::process::id(), ticks, at));
    let samples = match sampler {
        Some(h) => h.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let read_side = match read_side {
        Some(probe) => Some(probe.await.context("the read-side probe")?),
        None => None,
    };

    let ledgers = std::mem::take(&mut *shared.results.lock().unwrap_or_else(|e| e.into_inner()));
    let mut tally = accounting::settle(&ledgers);
    // The next step resumes after everything this one saw.
    for l in &ledgers {
        for (&r, t) in &l.tracks {
            p.start_seqs[r] = p.start_seqs[r].max(t.last);
        }
    }
    for (&r, &seq) in &tally.final_seq {
        p.start_seqs[r] = p.start_seqs[r].max(seq);
    }
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
    let sent = live.sent.load(Ordering::Relaxed).max(1);
    let measured = Measured {
        window_opened_at,
        window_secs: window.secs(),
        offered_per_sec: s.rate,
        recipients_per_send: live.expected_deliveries.load(Ordering::Relaxed) as f64 / sent as f64,
        backlog_start: backlog_start.unwrap_or_default(),
        backlog_end,
        counts: tally.counts,
        ack: Latency::of(&tally.ack),
        delivery: Latency::of(&tally.delivery),
        send_lag: Latency::of(&tally.send_lag),
        timeline: report::SlotLatency::timeline(&mut tally.slots),
        read_side,
    };
    let errors = shared.errors.lock().map(|e| e.clone()).unwrap_or_default();
    Ok(Report::new(
        p.target,
        s,
        measured,
        shared.reconnects.load(Ordering::Relaxed),
        errors,
        server,
        generator_cpu,
    ))
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
