//! The results: a JSON report, a summary table and a latency plot (SVG).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::accounting::{Backlog, Counts};
use crate::readside::ReadSide;
use crate::scenario::Scenario;
use crate::sysmon::Sample;

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// (percentile, ms) points for plotting.
    #[serde(skip)]
    pub curve: Vec<(f64, f64)>,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        let mut curve = Vec::new();
        if !h.is_empty() {
            // Evenly spaced on a log scale of 1 / (1 - q), as HdrHistogram plots are.
            for i in 0..=80 {
                let q = 1.0 - 10f64.powf(-(i as f64) / 16.0);
                curve.push((q * 100.0, ms(h.value_at_quantile(q))));
            }
        }
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            curve,
        }
    }
}

/// The latencies of the sends intended in one slot ([`SLOT_US`]) of the window.
///
/// [`SLOT_US`]: crate::accounting::SLOT_US
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SlotLatency {
    /// Where the slot starts, in seconds from the window's start.
    pub at_secs: f64,
    pub acks: usize,
    pub ack_p99_ms: f64,
    pub ack_max_ms: f64,
    pub deliveries: usize,
    pub delivery_p99_ms: f64,
    pub delivery_max_ms: f64,
}

impl SlotLatency {
    /// One entry per slot, in order.
    pub fn timeline(slots: &mut [crate::accounting::Slot]) -> Vec<Self> {
        // (p99, max) in ms of a slot's latencies.
        fn tail(us: &mut [u32]) -> (f64, f64) {
            if us.is_empty() {
                return (0.0, 0.0);
            }
            us.sort_unstable();
            let at = |q: f64| us[((q * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1];
            (f64::from(at(0.99)) / 1000.0, f64::from(at(1.0)) / 1000.0)
        }
        let width = crate::accounting::SLOT_US as f64 / 1e6;
        slots
            .iter_mut()
            .enumerate()
            .map(|(i, slot)| {
                let (ack_p99_ms, ack_max_ms) = tail(&mut slot.ack);
                let (delivery_p99_ms, delivery_max_ms) = tail(&mut slot.delivery);
                Self {
                    at_secs: i as f64 * width,
                    acks: slot.ack.len(),
                    ack_p99_ms,
                    ack_max_ms,
                    deliveries: slot.delivery.len(),
                    delivery_p99_ms,
                    delivery_max_ms,
                }
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Server {
    pub pid: u32,
    pub cpu_avg_percent: f64,
    pub cpu_max_percent: f64,
    pub rss_before_kib: u64,
    pub rss_max_kib: u64,
    /// (RSS with every connection open − RSS before) / connections.
    pub rss_per_connection_bytes: Option<u64>,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `chatd` or `baseline`.
    pub target: String,
    pub scenario: Scenario,
    pub machine: Machine,
    pub connections: usize,
    pub reconnects: u64,
    /// When the measured window opened (UTC, RFC 3339): to line the timeline up with the
    /// server's logs, metrics and traces.
    pub window_opened_at: String,
    pub window_secs: f64,
    /// Sends per second offered (the schedule), and the deliveries they call for.
    pub offered_per_sec: f64,
    pub offered_deliveries_per_sec: f64,
    /// Acks and deliveries that *arrived* inside the window, per second of it.
    pub sustained_acked_per_sec: f64,
    pub sustained_deliveries_per_sec: f64,
    /// Outstanding answers and deliveries when the window opened and when it closed.
    pub backlog_start: Backlog,
    pub backlog_end: Backlog,
    pub counts: Counts,
    /// Over sends intended inside the window; failures and missing answers at one hour.
    pub ack_latency: Latency,
    /// Over messages intended inside the window, per recipient; missing ones at one hour.
    pub delivery_latency: Latency,
    /// How late the generator made its sends (its own lag, not the server's).
    pub send_lag: Latency,
    /// Ack and delivery tails by slot of the window: where in the run the tail happened.
    pub timeline: Vec<SlotLatency>,
    /// How far chatd's read models and search were behind late in the window, under the load
    /// (`None` for the baseline, which has no read side).
    pub read_side: Option<ReadSide>,
    /// The run could not hold the offered rate within the bounds: why.
    pub saturated: bool,
    pub saturation: Vec<String>,
    pub errors: BTreeMap<String, u64>,
    pub server: Option<Server>,
    /// The load generator's own CPU over the same span as the server's (it shares the
    /// machine: what it takes, the server cannot have), in % of one core.
    pub generator_cpu_avg_percent: Option<f64>,
}

/// What a run measured, before it is judged.
#[derive(Debug, Clone)]
pub struct Measured {
    pub window_opened_at: chrono::DateTime<chrono::Utc>,
    pub window_secs: f64,
    pub offered_per_sec: f64,
    /// Deliveries each send calls for, on average.
    pub recipients_per_send: f64,
    pub backlog_start: Backlog,
    pub backlog_end: Backlog,
    pub counts: Counts,
    pub ack: Latency,
    pub delivery: Latency,
    pub send_lag: Latency,
    pub timeline: Vec<SlotLatency>,
    /// chatd's read side late in the window (`None` for the baseline).
    pub read_side: Option<ReadSide>,
}

/// A backlog that grows by more than this share of the window's offered work (or by
/// [`GROWTH_FLOOR`], if more) means the server did not keep up.
pub const GROWTH_SHARE: f64 = 0.02;
pub const GROWTH_FLOOR: f64 = 10.0;

/// Why a measured run is saturated under `s`'s bounds (empty: it held).
pub fn saturation(s: &Scenario, m: &Measured) -> Vec<String> {
    let mut why = Vec::new();
    if m.offered_per_sec > 0.0 && m.counts.sent_in_window == 0 {
        why.push("no send was due inside the window: nothing to judge".to_owned());
    }
    if m.ack.count > 0 && m.ack.p99_ms > s.ack_p99_ms {
        why.push(format!(
            "send→ack p99 {:.1} ms > {} ms",
            m.ack.p99_ms, s.ack_p99_ms
        ));
    }
    if m.delivery.count > 0 && m.delivery.p99_ms > s.delivery_p99_ms {
        why.push(format!(
            "send→delivery p99 {:.1} ms > {} ms",
            m.delivery.p99_ms, s.delivery_p99_ms
        ));
    }
    let offered = m.offered_per_sec * m.window_secs;
    let grew = |name: &str, start: u64, end: u64, work: f64, why: &mut Vec<String>| {
        let limit = (work * GROWTH_SHARE).max(GROWTH_FLOOR);
        if end as f64 - start as f64 > limit {
            why.push(format!(
                "{name} backlog grew {start} → {end} over the window"
            ));
        }
    };
    grew(
        "answer",
        m.backlog_start.answers,
        m.backlog_end.answers,
        offered,
        &mut why,
    );
    grew(
        "delivery",
        m.backlog_start.deliveries,
        m.backlog_end.deliveries,
        offered * m.recipients_per_send,
        &mut why,
    );
    if m.send_lag.count > 0 && m.send_lag.p99_ms > s.ack_p99_ms.min(s.delivery_p99_ms) {
        why.push(format!(
            "the load generator fell behind its schedule (send lag p99 {:.1} ms)",
            m.send_lag.p99_ms
        ));
    }
    if let Some(read_side) = &m.read_side {
        why.extend(read_side.saturation(s.read_side_ms));
    }
    why
}

impl Report {
    pub fn new(
        target: &str,
        scenario: &Scenario,
        m: Measured,
        reconnects: u64,
        errors: BTreeMap<String, u64>,
        server: Option<Server>,
        generator_cpu_avg_percent: Option<f64>,
    ) -> Self {
        let saturation = saturation(scenario, &m);
        let secs = m.window_secs.max(1e-9);
        Self {
            target: target.to_owned(),
            scenario: scenario.clone(),
            machine: Machine::this(),
            connections: scenario.connections,
            reconnects,
            window_opened_at: m
                .window_opened_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            window_secs: m.window_secs,
            offered_per_sec: m.offered_per_sec,
            offered_deliveries_per_sec: m.offered_per_sec * m.recipients_per_send,
            sustained_acked_per_sec: m.counts.acked_arrived_in_window as f64 / secs,
            sustained_deliveries_per_sec: m.counts.delivered_arrived_in_window as f64 / secs,
            backlog_start: m.backlog_start,
            backlog_end: m.backlog_end,
            counts: m.counts,
            ack_latency: m.ack,
            delivery_latency: m.delivery,
            send_lag: m.send_lag,
            timeline: m.timeline,
            read_side: m.read_side,
            saturated: !saturation.is_empty(),
            saturation,
            errors,
            server,
            generator_cpu_avg_percent,
        }
    }

    /// The 100 ms slots of the window whose delivery p99 is over the scenario's bound, and
    /// all of them: a few slow slots are a stall, most of them saturation.
    pub fn slots_over_delivery_bound(&self) -> (usize, usize) {
        let bound = self.scenario.delivery_p99_ms;
        let over = self
            .timeline
            .iter()
            .filter(|t| t.delivery_p99_ms > bound)
            .count();
        (over, self.timeline.len())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// The CPU's model name (`/proc/cpuinfo`): a VM's host can change between runs, and the
    /// same commit then gives other numbers.
    pub cpu_model: Option<String>,
    pub cores: usize,
    pub memory_gib: f64,
    /// 1, 5 and 15 minute load averages when the report was made (other work on the box).
    pub load_average: [f64; 3],
}

impl Machine {
    pub fn this() -> Self {
        let memory_kib: f64 = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            })
            .unwrap_or(0.0);
        let mut load_average = [0.0; 3];
        if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
            for (slot, v) in load_average.iter_mut().zip(l.split_whitespace()) {
                *slot = v.parse().unwrap_or(0.0);
            }
        }
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        });
        Self {
            cpu_model,
            load_average,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        }
    }
}

impl Report {
    /// The human summary.
    pub fn table(&self) -> String {
        let s = &self.scenario;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} · {:?}: {} users, {} rooms × {} members, {} connections, {} senders at {} msg/s, {} B, {} s (+{} s warm-up) · {} cores, {} GiB, load {:.1}",
            self.target,
            s.preset,
            s.users,
            s.rooms,
            s.members,
            self.connections,
            s.senders,
            s.rate,
            s.size,
            s.duration_secs,
            s.warmup_secs,
            self.machine.cores,
            self.machine.memory_gib,
            self.machine.load_average[0]
        );
        let _ = writeln!(
            out,
            "  {:<24}{:>14}{:>14}",
            "per second", "offered", "sustained"
        );
        let _ = writeln!(
            out,
            "  {:<24}{:>14.0}{:>14.0}",
            "acked sends", self.offered_per_sec, self.sustained_acked_per_sec
        );
        let _ = writeln!(
            out,
            "  {:<24}{:>14.0}{:>14.0}",
            "deliveries", self.offered_deliveries_per_sec, self.sustained_deliveries_per_sec
        );
        let _ = writeln!(
            out,
            "  {:<24}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "latency (ms)", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, l) in [
            ("send → ack", &self.ack_latency),
            ("send → delivery", &self.delivery_latency),
            ("generator send lag", &self.send_lag),
        ] {
            let _ = writeln!(
                out,
                "  {:<24}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
                name, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
        }
        let c = &self.counts;
        let _ = writeln!(
            out,
            "  sent {} · acked {} · failed {} · unanswered {} · delivered {} · echoes {} · undelivered {} · reconnects {}",
            c.sent,
            c.acked,
            c.failed,
            c.unanswered,
            c.delivered,
            c.echoes,
            c.undelivered,
            self.reconnects
        );
        let _ = writeln!(
            out,
            "  lost {} · behind at end {} · duplicates {} · out of order {} · backlog (answers/deliveries) {}/{} → {}/{}",
            c.lost,
            c.behind,
            c.duplicates,
            c.out_of_order,
            self.backlog_start.answers,
            self.backlog_start.deliveries,
            self.backlog_end.answers,
            self.backlog_end.deliveries
        );
        let bound = self.scenario.delivery_p99_ms;
        let mut slowest: Vec<&SlotLatency> = self.timeline.iter().collect();
        slowest.sort_by(|a, b| b.delivery_p99_ms.total_cmp(&a.delivery_p99_ms));
        if !slowest.is_empty() {
            let (over, _) = self.slots_over_delivery_bound();
            let list: Vec<String> = slowest
                .iter()
                .take(3)
                .map(|t| format!("{:.1} s: {:.0} ms", t.at_secs, t.delivery_p99_ms))
                .collect();
            let _ = writeln!(
                out,
                "  delivery p99 by {} ms slot: over {bound} ms in {over} of {} · slowest {} (median slot {:.0} ms)",
                crate::accounting::SLOT_US / 1000,
                self.timeline.len(),
                list.join(", "),
                slowest[slowest.len() / 2].delivery_p99_ms,
            );
        }
        if let Some(r) = &self.read_side {
            let _ = writeln!(
                out,
                "  read side late in the window: read models {} · search {} (bound {} ms)",
                read_side_ms(r.read_models_ms, r.limit_ms),
                read_side_ms(r.search_ms, r.limit_ms),
                self.scenario.read_side_ms
            );
        }
        if self.saturated {
            let _ = writeln!(out, "  SATURATED: {}", self.saturation.join("; "));
        } else {
            let _ = writeln!(
                out,
                "  held: p99 send→ack ≤ {} ms, send→delivery ≤ {} ms, no backlog growth{}",
                self.scenario.ack_p99_ms,
                self.scenario.delivery_p99_ms,
                if self.read_side.is_some() {
                    format!(", read side ≤ {} ms behind", self.scenario.read_side_ms)
                } else {
                    String::new()
                }
            );
        }
        if !self.errors.is_empty() {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(out, "  errors: {}", list.join(", "));
        }
        if let Some(srv) = &self.server {
            let _ = write!(
                out,
                "  server pid {}: CPU avg {:.0}% max {:.0}% · RSS {} → max {} MiB",
                srv.pid,
                srv.cpu_avg_percent,
                srv.cpu_max_percent,
                srv.rss_before_kib / 1024,
                srv.rss_max_kib / 1024
            );
            if let Some(b) = srv.rss_per_connection_bytes {
                let _ = write!(out, " · {:.1} KiB per connection", b as f64 / 1024.0);
            }
            let _ = writeln!(out);
        }
        if let Some(cpu) = self.generator_cpu_avg_percent {
            let _ = writeln!(
                out,
                "  load generator (same machine): CPU avg {cpu:.0}% of {} cores",
                self.machine.cores
            );
        }
        out
    }

    /// Latency by percentile, both curves, log scales.
    pub fn svg(&self) -> String {
        let (w, h, left, bottom, top, right) = (820.0, 420.0, 70.0, 50.0, 40.0, 20.0);
        let curves = [
            ("send → ack", "#1f77b4", &self.ack_latency.curve),
            ("send → delivery", "#d62728", &self.delivery_latency.curve),
        ];
        let max_ms = curves
            .iter()
            .flat_map(|(_, _, c)| c.iter().map(|p| p.1))
            .fold(1.0f64, f64::max);
        let (y_lo, y_hi) = (-2.0f64, max_ms.log10().ceil().max(0.0)); // 0.01 ms .. 10^k ms
        let x_max = 5.0; // up to 99.999%
        let x =
            |pct: f64| left + (-(1.0 - pct / 100.0).max(1e-5).log10()) / x_max * (w - left - right);
        let y = |ms: f64| top + (y_hi - ms.max(0.01).log10()) / (y_hi - y_lo) * (h - top - bottom);
        let mut svg = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="20" font-size="14">{} · {:?} · latency by percentile</text>
"#,
            self.target, self.scenario.preset
        );
        for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
            .iter()
            .enumerate()
        {
            let px = left + i as f64 / x_max * (w - left - right);
            let _ = writeln!(
                svg,
                r##"<line x1="{px}" y1="{top}" x2="{px}" y2="{}" stroke="#ddd"/><text x="{px}" y="{}" text-anchor="middle">{label}</text>"##,
                h - bottom,
                h - bottom + 16.0
            );
        }
        let mut e = y_lo as i32;
        while e <= y_hi as i32 {
            let ms = 10f64.powi(e);
            let py = y(ms);
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" y1="{py}" x2="{}" y2="{py}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{ms} ms</text>"##,
                w - right,
                left - 6.0,
                py + 4.0
            );
            e += 1;
        }
        for (i, (name, color, curve)) in curves.iter().enumerate() {
            if curve.is_empty() {
                continue;
            }
            let points: Vec<String> = curve
                .iter()
                .map(|(p, ms)| format!("{:.1},{:.1}", x(*p), y(*ms)))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            );
            let ly = top + 16.0 * (i as f64 + 1.0);
            let _ = writeln!(
                svg,
                r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{name}</text>"#,
                left + 10.0,
                left + 30.0,
                left + 36.0,
                ly + 4.0
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// A read-side delay for the console: milliseconds, or "> limit" when not seen within it.
pub fn read_side_ms(ms: Option<f64>, limit_ms: f64) -> String {
    ms.map_or(format!("> {limit_ms:.0} ms"), |ms| format!("{ms:.0} ms"))
}
