//! `find-max`: the highest offered rate a target holds within the latency bound.
//!
//! Steps the offered rate (doubling from `start` until a step saturates, halving if the first
//! does), then bisects between the highest rate that held and the lowest that did not, until
//! they are within `precision` of each other. Each step is a short [`step`] on the same
//! provisioned users and rooms; between steps it waits for the server to go idle, so one
//! step's backlog does not weigh on the next.

use std::time::Duration;

use serde::Serialize;

use crate::readside::ReadSide;
use crate::report::{Report, read_side_ms};
use crate::scenario::Scenario;
use crate::{Options, step};

/// How to search.
#[derive(Debug, Clone)]
pub struct Search {
    /// The first rate tried (msg/s).
    pub start: f64,
    /// Never offer more than this.
    pub max: f64,
    /// Give up below this (the target holds nothing).
    pub min: f64,
    /// Stop when the highest held and the lowest saturated rate are within this fraction.
    pub precision: f64,
    pub max_steps: usize,
    /// Longest wait for the server to go idle between steps.
    pub cooldown: Duration,
}

/// The next rate to try, given the highest rate that held and the lowest that saturated so
/// far; `None` when the search is done.
pub fn next_rate(held: Option<f64>, saturated: Option<f64>, s: &Search) -> Option<f64> {
    let rate = match (held, saturated) {
        (None, None) => s.start,
        (Some(lo), None) if lo >= s.max => return None,
        (Some(lo), None) => (lo * 2.0).min(s.max),
        (None, Some(hi)) if hi <= s.min => return None,
        (None, Some(hi)) => (hi / 2.0).max(s.min),
        (Some(lo), Some(hi)) if hi <= lo * (1.0 + s.precision) => return None,
        (Some(lo), Some(hi)) => (lo + hi) / 2.0,
    };
    let rate = rate.round().max(1.0);
    // Rates are whole: no step between two neighbours, and none tried twice.
    let tried = held.is_some_and(|lo| rate <= lo) || saturated.is_some_and(|hi| rate >= hi);
    (!tried).then_some(rate)
}

/// One step, in brief.
#[derive(Debug, Clone, Serialize)]
pub struct StepSummary {
    pub offered_per_sec: f64,
    pub saturated: bool,
    pub saturation: Vec<String>,
    pub sustained_acked_per_sec: f64,
    pub sustained_deliveries_per_sec: f64,
    pub ack_p99_ms: f64,
    pub delivery_p99_ms: f64,
    pub send_lag_p99_ms: f64,
    pub lost: u64,
    /// Not arrived when the step's drain ended (a late server, not a skipping one).
    pub behind: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub server_cpu_avg_percent: Option<f64>,
    pub generator_cpu_avg_percent: Option<f64>,
    /// 100 ms slots of the window whose delivery p99 is over the bound, of `slots`: a few
    /// are a stall, most of them saturation.
    pub slots_over_delivery_bound: usize,
    pub slots: usize,
    /// chatd's read models and search late in the window (see `readside`; `None` for the
    /// baseline).
    pub read_side: Option<ReadSide>,
}

impl StepSummary {
    fn of(r: &Report) -> Self {
        Self {
            offered_per_sec: r.offered_per_sec,
            saturated: r.saturated,
            saturation: r.saturation.clone(),
            sustained_acked_per_sec: r.sustained_acked_per_sec,
            sustained_deliveries_per_sec: r.sustained_deliveries_per_sec,
            ack_p99_ms: r.ack_latency.p99_ms,
            delivery_p99_ms: r.delivery_latency.p99_ms,
            send_lag_p99_ms: r.send_lag.p99_ms,
            lost: r.counts.lost,
            behind: r.counts.behind,
            duplicates: r.counts.duplicates,
            out_of_order: r.counts.out_of_order,
            server_cpu_avg_percent: r.server.as_ref().map(|s| s.cpu_avg_percent),
            generator_cpu_avg_percent: r.generator_cpu_avg_percent,
            slots_over_delivery_bound: r.slots_over_delivery_bound().0,
            slots: r.slots_over_delivery_bound().1,
            read_side: r.read_side.clone(),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{:>9.0}/s offered → {:>9.0} acked/s, {:>10.0} deliveries/s sustained · p99 ack {:>8.1} ms, delivery {:>8.1} ms ({}/{} slots over){} · CPU server {} generator {} · {}",
            self.offered_per_sec,
            self.sustained_acked_per_sec,
            self.sustained_deliveries_per_sec,
            self.ack_p99_ms,
            self.delivery_p99_ms,
            self.slots_over_delivery_bound,
            self.slots,
            self.read_side(),
            percent(self.server_cpu_avg_percent),
            percent(self.generator_cpu_avg_percent),
            if self.saturated {
                format!("saturated ({})", self.saturation.join("; "))
            } else {
                "held".to_owned()
            }
        )
    }
}

impl StepSummary {
    /// " · read side …" for chatd (the baseline has none: empty).
    fn read_side(&self) -> String {
        self.read_side.as_ref().map_or(String::new(), |r| {
            format!(
                " · read side {} / {}",
                read_side_ms(r.read_models_ms, r.limit_ms),
                read_side_ms(r.search_ms, r.limit_ms)
            )
        })
    }
}

fn percent(p: Option<f64>) -> String {
    p.map_or("?".to_owned(), |p| format!("{p:.0}%"))
}

/// A search's result for one target.
#[derive(Debug, Clone, Serialize)]
pub struct FindMax {
    pub target: String,
    pub ack_p99_ms: f64,
    pub delivery_p99_ms: f64,
    /// The highest offered rate that held (0: none did).
    pub max_rate: f64,
    /// The lowest offered rate that saturated (None: none did up to the search's maximum).
    pub saturated_at: Option<f64>,
    /// The full report of the step at `max_rate`.
    pub held: Option<Report>,
    pub steps: Vec<StepSummary>,
}

impl FindMax {
    pub fn sustained_acked_per_sec(&self) -> f64 {
        self.held
            .as_ref()
            .map_or(0.0, |r| r.sustained_acked_per_sec)
    }

    pub fn sustained_deliveries_per_sec(&self) -> f64 {
        self.held
            .as_ref()
            .map_or(0.0, |r| r.sustained_deliveries_per_sec)
    }
}

/// Searches `s` (its rate is ignored) on one target; `each` sees every step as it ends.
pub async fn find_max(
    s: &Scenario,
    opts: &Options,
    search: &Search,
    mut each: impl FnMut(&StepSummary),
) -> anyhow::Result<FindMax> {
    let mut prepared = crate::prepare(s, opts).await?;
    let mut held: Option<Report> = None;
    let mut saturated: Option<f64> = None;
    let mut steps = Vec::new();
    while steps.len() < search.max_steps {
        let Some(rate) = next_rate(held.as_ref().map(|r| r.offered_per_sec), saturated, search)
        else {
            break;
        };
        if let Some(pid) = opts.server_pid {
            crate::sysmon::wait_idle(pid, search.cooldown).await;
        }
        let scenario = Scenario { rate, ..s.clone() };
        let report = step(&scenario, &mut prepared, opts).await?;
        let summary = StepSummary::of(&report);
        each(&summary);
        steps.push(summary);
        if report.saturated {
            saturated = Some(saturated.map_or(rate, |hi| hi.min(rate)));
        } else if held.as_ref().is_none_or(|h| h.offered_per_sec < rate) {
            held = Some(report);
        }
    }
    Ok(FindMax {
        target: prepared.target().to_owned(),
        ack_p99_ms: s.ack_p99_ms,
        delivery_p99_ms: s.delivery_p99_ms,
        max_rate: held.as_ref().map_or(0.0, |r| r.offered_per_sec),
        saturated_at: saturated,
        held,
        steps,
    })
}
