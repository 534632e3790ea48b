//! The once-a-second monitor: projection lag gauges, Prometheus upkeep, and the alert rules
//! that page on-call engineers (through Slack when it is configured).
//!
//! The rules ([`Rules`]) are pure: given a [`Sample`] of the node's state they say which
//! alerts start and which end, so they are tested without a clock or a webhook.
//! - **projection lag**: a projection's oldest unapplied event is older than
//!   `CHAT_ALERT_LAG_SECS`; resolved when it is back under half of that;
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

use chrono::Utc;
use eventlog::EventLog;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Failures, install, names};

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

/// The alert rules and what they remember between samples.
#[derive(Debug)]
pub struct Rules {
    thresholds: Thresholds,
    /// Counter values over the last minute, oldest first.
    history: VecDeque<(Instant, u64, u64)>,
    firing: HashSet<String>,
}

impl Rules {
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            history: VecDeque::new(),
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
        while self
            .history
            .front()
            .is_some_and(|(at, ..)| now.duration_since(*at) > WINDOW)
        {
            self.history.pop_front();
        }
        let (errors_then, drops_then) = self
            .history
            .front()
            .map_or((0, 0), |&(_, errors, drops)| (errors, drops));
        let errors = sample.append_errors - errors_then;
        let drops = sample.forced_disconnects - drops_then;
        // The window starts at the oldest sample kept, so "since then" covers the last minute.
        let new_errors = errors > 0 || (self.history.len() == 1 && sample.append_errors > 0);
        if new_errors {
            self.raise(
                &mut changes,
                "eventlog_append_errors".into(),
                "Event-log appends are failing".into(),
                format!(
                    "{} appends failed in the last minute ({} since start): commands are \
                     being refused.",
                    errors.max(1),
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
        let Ok(head) = watched.log.head().await else {
            continue; // the log's own errors are reported where they happen
        };
        let mut sample = Sample {
            append_errors: watched.failures.append_errors.load(Ordering::Relaxed),
            forced_disconnects: watched.failures.forced_disconnects.load(Ordering::Relaxed),
            ..Sample::default()
        };
        for (name, position) in &watched.projections {
            let applied = *position.borrow();
            let (events, seconds) = lag(watched.log.as_ref(), head, applied).await;
            metrics::gauge!(names::PROJECTION_LAG_EVENTS, "projection" => *name).set(events as f64);
            metrics::gauge!(names::PROJECTION_LAG_SECONDS, "projection" => *name).set(seconds);
            sample.lag.push((name, events, seconds));
        }
        for change in rules.evaluate(&sample, Instant::now()) {
            on_change(change);
        }
    }
}

/// How far a projection at `position` is behind `head`: in events, and the age of the
/// oldest event it has not applied.
async fn lag(log: &dyn EventLog, head: u64, position: u64) -> (u64, f64) {
    let events = head.saturating_sub(position);
    if events == 0 {
        return (0, 0.0);
    }
    let seconds = match log.read_all(position, 1).await {
        Ok(next) => next.first().map_or(0.0, |e| {
            (Utc::now() - e.recorded_at).num_milliseconds().max(0) as f64 / 1000.0
        }),
        Err(_) => 0.0,
    };
    (events, seconds)
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
        assert_eq!(resolved_at, Some(61), "a minute after the last failure");
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
        let drops = |n| Sample {
            forced_disconnects: n,
            ..Sample::default()
        };
        assert!(r.evaluate(&drops(0), t).is_empty());
        assert!(
            r.evaluate(&drops(9), t + Duration::from_secs(30))
                .is_empty()
        );
        assert_eq!(
            keys(&r.evaluate(&drops(10), t + Duration::from_secs(40))),
            ["+fanout_drops"]
        );
        // 80 s after the start the window holds only samples from 30 s on: 1 drop.
        assert_eq!(
            keys(&r.evaluate(&drops(10), t + Duration::from_secs(80))),
            ["-fanout_drops"]
        );
    }
}
