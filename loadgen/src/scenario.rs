//! What to run: a preset, adjusted by flags.

use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// 100 rooms × 10 members, all online, everyone sending.
    Throughput,
    /// One room of 10,000 members, 1,000 online, 10 senders.
    BigRoom,
    /// One room of 100 members, all online, all sending.
    HotRoom,
    /// As many idle connections as the machine allows (`--connections`), no messages.
    Idle,
    /// Like throughput, smaller, while clients disconnect and resume constantly.
    Churn,
}

/// Scenario flags. A preset sets the defaults; any flag overrides it.
#[derive(Debug, Clone, Args)]
pub struct ScenarioArgs {
    /// Starting point for the other flags.
    #[arg(long, value_enum, default_value = "throughput")]
    pub preset: Preset,
    /// Users to provision.
    #[arg(long)]
    pub users: Option<usize>,
    /// Rooms to create.
    #[arg(long)]
    pub rooms: Option<usize>,
    /// Members per room (users are dealt to rooms round-robin).
    #[arg(long)]
    pub members: Option<usize>,
    /// Fraction of users that connect (0–1).
    #[arg(long)]
    pub online: Option<f64>,
    /// Connections in total (default: one per online user; more are spread over the users).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Online users that send.
    #[arg(long)]
    pub senders: Option<usize>,
    /// Messages per second offered in total (open loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Message body size in bytes.
    #[arg(long)]
    pub size: Option<usize>,
    /// Measured seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds of load before measuring.
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Mean seconds a connection lives before it drops and resumes (churn).
    #[arg(long)]
    pub churn: Option<f64>,
    /// Reconnect without `resume` after a drop (to see loss being reported).
    #[arg(long)]
    pub no_resume: bool,
    /// Seconds to wait after sending stops for answers and deliveries still due; what has not
    /// come by then counts as unanswered or undelivered (in the latency tail at one hour).
    #[arg(long)]
    pub drain: Option<f64>,
    /// The latency bound: a run whose p99 send→ack or send→delivery exceeds it is saturated.
    #[arg(long, default_value_t = 1000.0)]
    pub p99_ms: f64,
    /// The bound for send→ack alone (default: --p99-ms).
    #[arg(long)]
    pub ack_p99_ms: Option<f64>,
    /// The bound for send→delivery alone (default: --p99-ms).
    #[arg(long)]
    pub delivery_p99_ms: Option<f64>,
    /// chatd only: how far its read side (read models, search) may be behind late in the
    /// window, timed by a probe's REST send and search under the load (see `readside`); past
    /// it the run is saturated. Below 5000.
    #[arg(long, default_value_t = 1000.0)]
    pub read_side_ms: f64,
}

/// A resolved scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub preset: Preset,
    pub users: usize,
    pub rooms: usize,
    pub members: usize,
    pub online: f64,
    pub connections: usize,
    pub senders: usize,
    pub rate: f64,
    pub size: usize,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub churn_secs: Option<f64>,
    pub resume: bool,
    pub drain_secs: f64,
    /// Saturated above these p99 latencies.
    pub ack_p99_ms: f64,
    pub delivery_p99_ms: f64,
    /// Saturated when chatd's read side is further behind than this late in the window.
    pub read_side_ms: f64,
}

impl ScenarioArgs {
    pub fn resolve(&self) -> anyhow::Result<Scenario> {
        // (users, rooms, members, online, senders, rate, size, duration, warmup, churn)
        let d = match self.preset {
            Preset::Throughput => (1000, 100, 10, 1.0, 1000, 50_000.0, 100, 20.0, 5.0, None),
            Preset::BigRoom => (10_000, 1, 10_000, 0.1, 10, 100.0, 100, 20.0, 5.0, None),
            Preset::HotRoom => (100, 1, 100, 1.0, 100, 1_000.0, 100, 20.0, 5.0, None),
            Preset::Idle => (1000, 100, 10, 1.0, 0, 0.0, 100, 30.0, 0.0, None),
            Preset::Churn => (500, 50, 10, 1.0, 500, 2_000.0, 100, 20.0, 5.0, Some(2.0)),
        };
        let users = self.users.unwrap_or(d.0);
        let online = self.online.unwrap_or(d.3);
        let online_users = ((users as f64) * online).ceil() as usize;
        let s = Scenario {
            preset: self.preset,
            users,
            rooms: self.rooms.unwrap_or(d.1),
            members: self.members.unwrap_or(d.2),
            online,
            connections: self.connections.unwrap_or(online_users),
            senders: self.senders.unwrap_or(d.4).min(online_users),
            rate: self.rate.unwrap_or(d.5),
            size: self.size.unwrap_or(d.6),
            duration_secs: self.duration.unwrap_or(d.7),
            warmup_secs: self.warmup.unwrap_or(d.8),
            churn_secs: self.churn.or(d.9),
            resume: !self.no_resume,
            drain_secs: self.drain.unwrap_or(15.0),
            ack_p99_ms: self.ack_p99_ms.unwrap_or(self.p99_ms),
            delivery_p99_ms: self.delivery_p99_ms.unwrap_or(self.p99_ms),
            read_side_ms: self.read_side_ms,
        };
        anyhow::ensure!(s.users > 0 && s.rooms > 0, "need users and rooms");
        anyhow::ensure!(
            s.members >= 1 && s.members <= s.users,
            "members per room must be between 1 and the number of users"
        );
        anyhow::ensure!((0.0..=1.0).contains(&s.online), "online is a fraction");
        anyhow::ensure!(
            s.connections >= online_users.min(1),
            "connections must cover the online users"
        );
        anyhow::ensure!(s.size >= 32 && s.size <= 4000, "size must be 32–4000 bytes");
        anyhow::ensure!(
            s.rate >= 0.0 && s.duration_secs > 0.0,
            "rate ≥ 0, duration > 0"
        );
        anyhow::ensure!(
            s.read_side_ms.is_finite() && s.read_side_ms < crate::readside::MAX_BOUND_MS,
            "--read-side-ms must be below {} (chatd answers a REST send after at most 5 s)",
            crate::readside::MAX_BOUND_MS
        );
        anyhow::ensure!(
            s.drain_secs >= 0.0
                && s.ack_p99_ms > 0.0
                && s.delivery_p99_ms > 0.0
                && s.read_side_ms > 0.0,
            "drain ≥ 0, bounds > 0"
        );
        Ok(s)
    }
}

impl Scenario {
    pub fn online_users(&self) -> usize {
        ((self.users as f64) * self.online).ceil() as usize
    }

    /// Users in room `r`: dealt round-robin so rooms overlap evenly.
    pub fn room_members(&self, r: usize) -> Vec<usize> {
        (0..self.members)
            .map(|j| (r * self.members + j) % self.users)
            .collect()
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_secs)
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_secs)
    }
}
