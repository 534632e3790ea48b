//! The once-a-second monitor: projection lag gauges, Prometheus upkeep, and the alert rules
//! that page on-call engineers (through Slack when it is configured).
//!
//! The rules ([`Rules`]) are pure: given a [`Sample`] of the node's state they say which
//! alerts start and which end, so they are tested without a clock or a webhook.
//! - **projection lag**: a projection has been behind for longer than `CHAT_ALERT_LAG_SECS`
//!   (see [`LagClock`]); resolved when it is back under half of that;
//! - **append errors**: any failed event-log append (other than a version conflict) in the
//!   last minute; resolved after a minute without one;
//! - **fan-out drops**: at least `CHAT_ALERT_DISCONNECTS_PER_MIN` live clients disconnected
//!   as too slow in the last minute; resolved when the minute is under the threshold.
//!
//! Log shipping failures are watched by the `observability` crate itself.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use eventlog::EventLog;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metered_log::Failures;
use super::metrics::{install, names};

const WINDOW: Duration = Duration::from_secs(60);

/// What the monitor watches.
#[derive(Debug)]
pub struct Watched {
    pub log: Arc<dyn EventLog>,
    /// Each projection's applied position, by its label.
    pub projections: Vec<(&'static str, watch::Receiver<u64>)>,
    pub failures: Arc<Failures>,
    pub thresholds: Thresholds,
}

/// When the alert rules fire.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// A projection this far behind (age of its oldest unapplied event) is an incident.
    pub lag: Duration,
    /// This many forced disconnects within a minute is an incident.
    pub disconnects_per_minute: u64,
}

/// The node's state at one instant, as the rules see it.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// (projection, events behind, seconds behind).
    pub lag: Vec<(&'static str, u64, f64)>,
    /// Counters since start.
    pub append_errors: u64,
    pub forced_disconnects: u64,
}

/// An alert starting or ending. Keys are stable, so a repeat is the same alert.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Raise {
        key: String,
        title: String,
        message: String,
    },
    Resolve {
        key: String,
        message: String,
    },
}

/// How long a projection has been behind, in seconds: the time since the log's head first
/// moved past what the projection has applied, measured against that head. The clock
/// restarts each time the projection reaches the head it was chasing, so a projection that
/// keeps up under load reads as milliseconds, and one that catches up quickly after a restart
/// does not count the downtime (the age of the oldest unapplied event would).
#[derive(Debug, Default)]
pub struct LagClock {
    /// The head being chased and when it was first seen ahead of the projection.
    chasing: Option<(u64, Instant)>,
}

impl LagClock {
    pub fn seconds(&mut self, head: u64, applied: u64, now: Instant) -> f64 {
        match self.chasing {
            Some((target, since)) if applied < target => {
                return now.duration_since(since).as_secs_f64();
            }
            _ => self.chasing = None,
        }
        if applied < head {
            self.chasing = Some((head, now));
        }
        0.0
    }
}

/// The alert rules and what they remember between samples.
#[derive(Debug)]
pub struct Rules {
    thresholds: Thresholds,
    /// Counter values over the last minute, oldest first.
    history: VecDeque<(Instant, u64, u64)>,
    /// The newest sample older than the window (zeros at start): the counters' baseline.
    baseline: (u64, u64),
    firing: HashSet<String>,
}

impl Rules {
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            history: VecDeque::new(),
            baseline: (0, 0),
            firing: HashSet::new(),
        }
    }

    /// The alerts that start or end with this sample, taken at `now`.
    pub fn evaluate(&mut self, sample: &Sample, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        let limit = self.thresholds.lag.as_secs_f64();
        for &(projection, events, seconds) in &sample.lag {
            let key = format!("projection_lag:{projection}");
            if seconds > limit {
                self.raise(
                    &mut changes,
                    key,
                    format!("Projection {projection} is lagging"),
                    format!(
                        "The {projection} projection is {seconds:.0} s ({events} events) behind \
                         the event log (threshold {limit:.0} s): reads, search or live delivery \
                         are stale on this node."
                    ),
                );
            } else if seconds <= limit / 2.0 {
                self.resolve(
                    &mut changes,
                    key,
                    format!("The {projection} projection has caught up."),
                );
            }
        }

        self.history
            .push_back((now, sample.append_errors, sample.forced_disconnects));
        while let Some(&(at, errors, drops)) = self.history.front()
            && now.duration_since(at) > WINDOW
        {
            self.baseline = (errors, drops);
            self.history.pop_front();
        }
        // Since the newest sample older than a minute: the last minute, also across a gap
        // in sampling.
        let errors = sample.append_errors - self.baseline.0;
        let drops = sample.forced_disconnects - self.baseline.1;
        if errors > 0 {
            self.raise(
                &mut changes,
                "eventlog_append_errors".into(),
                "Event-log appends are failing".into(),
                format!(
                    "{errors} appends failed in the last minute ({} since start): commands \
                     are being refused.",
                    sample.append_errors
                ),
            );
        } else {
            self.resolve(
                &mut changes,
                "eventlog_append_errors".into(),
                "No failed appends for a minute.".into(),
            );
        }
        if drops >= self.thresholds.disconnects_per_minute {
            self.raise(
                &mut changes,
                "fanout_drops".into(),
                "Live clients are being dropped".into(),
                format!(
                    "{drops} clients were disconnected in the last minute because they could \
                     not keep up (threshold {}).",
                    self.thresholds.disconnects_per_minute
                ),
            );
        } else {
            self.resolve(
                &mut changes,
                "fanout_drops".into(),
                format!("{drops} forced disconnects in the last minute: under the threshold."),
            );
        }
        changes
    }

    fn raise(&mut self, changes: &mut Vec<Change>, key: String, title: String, message: String) {
        if self.firing.insert(key.clone()) {
            changes.push(Change::Raise {
                key,
                title,
                message,
            });
        }
    }

    fn resolve(&mut self, changes: &mut Vec<Change>, key: String, message: String) {
        if self.firing.remove(&key) {
            changes.push(Change::Resolve { key, message });
        }
    }
}

/// Once a second until `shutdown`: samples the node, sets the lag gauges, runs Prometheus
/// upkeep and hands alert changes to `on_change`.
pub async fn run(
    watched: Watched,
    mut on_change: impl FnMut(Change) + Send,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut rules = Rules::new(watched.thresholds);
    let mut clocks: Vec<LagClock> = watched
        .projections
        .iter()
        .map(|_| LagClock::default())
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if let Some(handle) = install() {
            handle.run_upkeep();
        }
        let mut sample = Sample {
            append_errors: watched.failures.append_errors.load(Ordering::Relaxed),
            forced_disconnects: watched.failures.forced_disconnects.load(Ordering::Relaxed),
            ..Sample::default()
        };
        // Without the head (the log unreachable) the lag is unknown: the counter rules still
        // run, and that outage shows as failing appends.
        let head = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            head = watched.log.head() => head.ok(),
        };
        let now = Instant::now();
        for ((name, position), clock) in watched.projections.iter().zip(&mut clocks) {
            let Some(head) = head else { break };
            let applied = *position.borrow();
            let events = head.saturating_sub(applied);
            let seconds = clock.seconds(head, applied, now);
            metrics::gauge!(names::PROJECTION_LAG_EVENTS, "projection" => *name).set(events as f64);
            metrics::gauge!(names::PROJECTION_LAG_SECONDS, "projection" => *name).set(seconds);
            sample.lag.push((name, events, seconds));
        }
        for change in rules.evaluate(&sample, now) {
            on_change(change);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules::new(Thresholds {
            lag: Duration::from_secs(30),
            disconnects_per_minute: 10,
        })
    }

    fn keys(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Raise { key, .. } => format!("+{key}"),
                Change::Resolve { key, .. } => format!("-{key}"),
            })
            .collect()
    }

    fn lagging(seconds: f64) -> Sample {
        Sample {
            lag: vec![("search", 500, seconds), ("read_model", 0, 0.0)],
            ..Sample::default()
        }
    }

    #[test]
    fn lag_raises_once_and_resolves_under_half_the_threshold() {
        let mut r = rules();
        let t = Instant::now();
        assert!(r.evaluate(&lagging(5.0), t).is_empty());
        assert_eq!(
            keys(&r.evaluate(&lagging(31.0), t)),
            ["+projection_lag:search"]
        );
        assert!(r.evaluate(&lagging(90.0), t).is_empty(), "already firing");
        assert!(r.evaluate(&lagging(20.0), t).is_empty(), "hysteresis");
        assert_eq!(
            keys(&r.evaluate(&lagging(10.0), t)),
            ["-projection_lag:search"]
        );
        assert!(r.evaluate(&lagging(0.0), t).is_empty());
    }

    #[test]
    fn append_errors_fire_at_once_and_resolve_after_a_quiet_minute() {
        let mut r = rules();
        let t = Instant::now();
        let errors = |n| Sample {
            append_errors: n,
            ..Sample::default()
        };
        assert!(r.evaluate(&errors(0), t).is_empty());
        let raised = r.evaluate(&errors(3), t + Duration::from_secs(1));
        assert_eq!(keys(&raised), ["+eventlog_append_errors"]);
        let mut resolved_at = None;
        for s in 2..=70 {
            let changes = r.evaluate(&errors(3), t + Duration::from_secs(s));
            if !changes.is_empty() {
                assert_eq!(keys(&changes), ["-eventlog_append_errors"]);
                resolved_at = Some(s);
                break;
            }
        }
        assert_eq!(resolved_at, Some(62), "a minute after the last failure");
    }

    #[test]
    fn a_gap_in_sampling_neither_hides_errors_nor_flaps() {
        let mut r = rules();
        let t = Instant::now();
        let errors = |n| Sample {
            append_errors: n,
            ..Sample::default()
        };
        assert!(r.evaluate(&errors(0), t).is_empty());
        // The log was unreachable for two minutes; appends failed meanwhile.
        let later = t + Duration::from_secs(120);
        assert_eq!(
            keys(&r.evaluate(&errors(5), later)),
            ["+eventlog_append_errors"]
        );
        for s in 1..=60 {
            assert!(
                r.evaluate(&errors(5), later + Duration::from_secs(s))
                    .is_empty(),
                "still within a minute of the failures at {s} s"
            );
        }
    }

    #[test]
    fn lag_is_how_long_the_projection_has_been_chasing_the_head() {
        let mut c = LagClock::default();
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_secs(s);
        assert_eq!(c.seconds(100, 100, at(0)), 0.0, "caught up");
        assert_eq!(c.seconds(120, 100, at(1)), 0.0, "starts chasing 120");
        assert_eq!(c.seconds(150, 110, at(3)), 2.0);
        // 120 reached: the clock restarts against the new head, so a projection that keeps
        // up under load never accumulates lag.
        assert_eq!(c.seconds(200, 130, at(4)), 0.0);
        assert_eq!(c.seconds(260, 199, at(9)), 5.0);
        assert_eq!(c.seconds(260, 260, at(10)), 0.0);
        // A restart after downtime: the events are old, but the clock starts now.
        let mut fresh = LagClock::default();
        assert_eq!(fresh.seconds(1_000, 0, at(500)), 0.0);
        assert_eq!(fresh.seconds(1_000, 1_000, at(501)), 0.0);
    }

    #[test]
    fn errors_present_at_the_first_sample_count() {
        let mut r = rules();
        let changes = r.evaluate(
            &Sample {
                append_errors: 1,
                ..Sample::default()
            },
            Instant::now(),
        );
        assert_eq!(keys(&changes), ["+eventlog_append_errors"]);
    }

    #[test]
    fn fan_out_drops_count_over_a_sliding_minute() {
        let mut r = rules();
        let t = Instant::now();
        // Sampled every second: no drops until 30 s, nine at 30 s, one more at 40 s.
        let drops_at = |s: u64| match s {
            0..30 => 0,
            30..40 => 9,
            _ => 10,
        };
        let mut changes = Vec::new();
        for s in 0..=120 {
            let sample = Sample {
                forced_disconnects: drops_at(s),
                ..Sample::default()
            };
            for c in keys(&r.evaluate(&sample, t + Duration::from_secs(s))) {
                changes.push((s, c));
            }
        }
        // Ten within a minute at 40 s; the minute before 91 s holds only the last one.
        assert_eq!(
            changes,
            [
                (40, "+fanout_drops".to_owned()),
                (91, "-fanout_drops".to_owned())
            ]
        );
    }
}
