//! The results: a JSON report, a summary table and a latency plot (SVG).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

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
    pub sent: u64,
    pub acked: u64,
    /// Sends whose connection dropped before their ack.
    pub unanswered: u64,
    pub delivered: u64,
    /// Acknowledged sends per second of the measured window.
    pub acked_per_sec: f64,
    /// Deliveries (message events received by members) per second of the measured window.
    pub deliveries_per_sec: f64,
    pub ack_latency: Latency,
    pub delivery_latency: Latency,
    /// Events some connection should have received and did not.
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub errors: BTreeMap<String, u64>,
    pub server: Option<Server>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
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
        Self {
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
            "{} · {:?}: {} users, {} rooms × {} members, {} connections, {} senders at {} msg/s, {} B, {} s (+{} s warm-up) · {} cores, {} GiB",
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
            self.machine.memory_gib
        );
        let _ = writeln!(
            out,
            "  {:<24}{:>14}",
            "acked sends/s",
            format!("{:.0}", self.acked_per_sec)
        );
        let _ = writeln!(
            out,
            "  {:<24}{:>14}",
            "deliveries/s",
            format!("{:.0}", self.deliveries_per_sec)
        );
        let _ = writeln!(
            out,
            "  {:<24}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "latency (ms)", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, l) in [
            ("send → ack", &self.ack_latency),
            ("send → delivery", &self.delivery_latency),
        ] {
            let _ = writeln!(
                out,
                "  {:<24}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
                name, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
        }
        let _ = writeln!(
            out,
            "  sent {} · acked {} · unanswered {} · delivered {} · reconnects {}",
            self.sent, self.acked, self.unanswered, self.delivered, self.reconnects
        );
        let _ = writeln!(
            out,
            "  lost {} · duplicates {} · out of order {}",
            self.lost, self.duplicates, self.out_of_order
        );
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
