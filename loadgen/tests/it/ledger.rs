//! The accounting, fed made-up streams with exact expected totals.

use std::sync::Arc;

use loadgen::accounting::{self, Backlog, CEILING_US, Counts, Ledger, Live, Mark, Window};
use loadgen::findmax::{Search, next_rate};
use loadgen::readside::ReadSide;
use loadgen::report::{Latency, Measured, SlotLatency, saturation};

const W: Window = Window {
    run: 7,
    from_us: 1_000_000,
    to_us: 2_000_000,
};

fn mark(conn: usize, intended_us: u64) -> Option<Mark> {
    Some(Mark {
        run: W.run,
        conn,
        intended_us,
    })
}

/// Three connections in room 0 (each resuming after seq 10); connection 0 sends.
fn room_of_three(live: &Arc<Live>) -> Vec<Ledger> {
    (0..3)
        .map(|c| Ledger::new(c, W, live.clone(), [(0, 10, 2)]))
        .collect()
}

/// Times (µs) of the sends of `lossy_stream`: one in the warm-up, five in the window.
const INTENDED: [u64; 6] = [
    500_000, 1_100_000, 1_200_000, 1_300_000, 1_400_000, 1_500_000,
];

/// Connection 0 sends six messages (seqs 11–16, acked 1 ms later); connection 1 gets them
/// with 13 and 14 swapped and 13 twice; connection 2 misses 13–15; connection 0 gets its
/// echoes; connection 1 also sees an earlier run's message and a non-message event.
fn lossy_stream(live: &Arc<Live>) -> Vec<Ledger> {
    let mut l = room_of_three(live);
    for (i, &t) in INTENDED.iter().enumerate() {
        l[0].sent(format!("k{i}"), 0, t, t);
    }
    for (i, &t) in INTENDED.iter().enumerate() {
        assert_eq!(
            l[0].acked(&format!("k{i}"), 11 + i as u64, t + 1000),
            Some(0)
        );
    }
    let at = |i: usize| INTENDED[i] + 5000; // delivered 5 ms after intended
    for (seq, i) in [
        (11, 0),
        (12, 1),
        (14, 3),
        (13, 2),
        (13, 2),
        (15, 4),
        (16, 5),
    ] {
        l[1].event(0, seq, mark(0, INTENDED[i]), at(i));
    }
    l[1].event(
        0,
        17,
        Some(Mark {
            run: 6,
            conn: 2,
            intended_us: 1_600_000,
        }),
        1_600_000,
    );
    l[1].event(0, 18, None, 1_700_000);
    for (seq, i) in [(11, 0), (12, 1), (16, 5)] {
        l[2].event(0, seq, mark(0, INTENDED[i]), at(i));
    }
    for (i, &t) in INTENDED.iter().enumerate() {
        l[0].event(0, 11 + i as u64, mark(0, t), t + 2000);
    }
    l
}

#[test]
fn loss_duplicates_and_reordering_are_counted_exactly() {
    let live = Arc::new(Live::default());
    let t = accounting::settle(&lossy_stream(&live));
    let c = &t.counts;
    assert_eq!((c.sent, c.sent_in_window), (6, 5));
    assert_eq!(
        (c.acked, c.failed, c.unanswered, c.stray_answers),
        (6, 0, 0, 0)
    );
    // Connection 1 got all six (13 once counted, once a duplicate), connection 2 three.
    assert_eq!(c.delivered, 9);
    assert_eq!(c.echoes, 6, "the sender's own copies are not deliveries");
    assert_eq!(
        c.foreign, 2,
        "an earlier run's message and a non-message event"
    );
    assert_eq!(c.duplicates, 1);
    assert_eq!(c.out_of_order, 1, "13 after 14");
    // Acked up to 16: connection 2 lacks 13, 14, 15; connection 1 has everything (17 and 18
    // are beyond the last ack and not owed). Connection 0 had all its echoes.
    assert_eq!((c.lost, c.behind), (3, 0), "holes: 16 arrived after them");
    assert_eq!(t.final_seq[&0], 16);
    // The three it lacks were all intended inside the window: in the tail at one hour.
    assert_eq!(c.undelivered, 3);
    assert_eq!(
        t.delivery.len(),
        5 + 2 + 3,
        "in-window deliveries + missing ones"
    );
    assert_eq!(t.delivery.count_at(CEILING_US), 3);
    assert_eq!(
        t.delivery.value_at_quantile(0.5),
        t.delivery.highest_equivalent(5000)
    );
    assert_eq!(t.ack.len(), 5, "only sends intended inside the window");
    assert_eq!(t.ack.max(), t.ack.highest_equivalent(1000));
    // Everything answered; 6 sends × 2 recipients − 9 delivered: connection 2 still owes 13–15.
    assert_eq!(
        live.backlog(),
        Backlog {
            answers: 0,
            deliveries: 3
        }
    );
}

#[test]
fn sustained_counts_arrivals_inside_the_window_only() {
    let live = Arc::new(Live::default());
    let mut l = room_of_three(&live);
    // Intended inside the window, answered after it closed: not sustained, but its full
    // latency is in the histogram.
    l[0].sent("late".into(), 0, 1_900_000, 1_900_000);
    l[0].acked("late", 11, 2_600_000);
    l[0].sent("later".into(), 0, 1_950_000, 1_950_000);
    l[0].acked("later", 13, 2_650_000);
    // Intended in the warm-up, answered inside: sustained, not in the latency.
    l[0].sent("early".into(), 0, 900_000, 900_000);
    l[0].acked("early", 12, 1_050_000);
    for c in [1, 2] {
        l[c].event(0, 11, mark(0, 1_900_000), 2_700_000);
        l[c].event(0, 12, mark(0, 900_000), 1_060_000);
    }
    for c in [1, 2] {
        l[c].event(0, 13, mark(0, 1_950_000), 2_700_000);
    }
    let t = accounting::settle(&l);
    assert_eq!(t.counts.acked_arrived_in_window, 1);
    assert_eq!(t.counts.delivered_arrived_in_window, 2);
    assert_eq!(t.counts.delivered, 6);
    assert_eq!(t.ack.len(), 2);
    assert_eq!(t.delivery.len(), 4);
    assert_eq!(t.ack.min(), t.ack.lowest_equivalent(700_000));
    assert_eq!(t.delivery.max(), t.delivery.highest_equivalent(800_000));
}

#[test]
fn failed_unanswered_and_stray_answers_are_failures_in_the_tail() {
    let live = Arc::new(Live::default());
    let mut l = room_of_three(&live);
    for (i, t) in [1_100_000, 1_200_000, 1_300_000, 500_000]
        .into_iter()
        .enumerate()
    {
        l[0].sent(format!("k{i}"), 0, t, t + 100);
    }
    l[0].failed("k0");
    l[0].acked("k1", 11, 1_210_000);
    l[0].acked("k1", 11, 1_220_000); // the same ack again
    l[0].acked("nobody", 12, 1_230_000);
    assert_eq!(l[0].pending(), 2);
    assert_eq!(live.backlog().answers, 2);
    // The run ends with k2 (in the window) and k3 (warm-up) unanswered.
    l[0].give_up_pending();
    let t = accounting::settle(&l);
    let c = &t.counts;
    assert_eq!(
        (c.acked, c.failed, c.unanswered, c.stray_answers),
        (1, 1, 2, 2)
    );
    assert_eq!(t.ack.len(), 3, "k0 (failed), k1, k2 (unanswered)");
    assert_eq!(t.ack.count_at(CEILING_US), 2);
    assert_eq!(t.send_lag.max(), 100);
    assert_eq!(live.backlog().answers, 0);
    // k1 (seq 11) reached nobody: two recipients owe it.
    assert_eq!(c.undelivered, 2);
    assert_eq!(
        (c.lost, c.behind),
        (0, 3),
        "seq 11 missing everywhere, the sender's echo too, and nothing after it: behind, not a hole"
    );
}

#[test]
fn marks_round_trip_and_bodies_have_the_asked_size() {
    let m = Mark {
        run: 0xdead_beef,
        conn: 42,
        intended_us: 123_456_789,
    };
    let body = m.body(100);
    assert_eq!(body.len(), 100);
    assert_eq!(Mark::parse(&body), Some(m));
    assert_eq!(Mark::parse("hello there"), None);
    assert_eq!(
        Mark::parse(&m.body(10)),
        Some(m),
        "too small: mark and 1 byte"
    );
}

fn latency(p99_ms: f64) -> Latency {
    let mut h = accounting::histogram();
    h.record((p99_ms * 1000.0) as u64).unwrap();
    Latency::of(&h)
}

/// The timeline puts each latency in the slot its send was intended in: the deliveries of
/// 13–15 that connection 2 never got (sends intended at 1.2–1.4 s) are the tail of exactly
/// those slots, and nothing lands in the slot no send was intended in.
#[test]
fn the_timeline_shows_where_in_the_window_the_tail_is() {
    let live = Arc::new(Live::default());
    let mut tally = accounting::settle(&lossy_stream(&live));
    let t = SlotLatency::timeline(&mut tally.slots);
    assert_eq!(t.len(), 6);
    assert_eq!((t[0].acks, t[0].deliveries), (0, 0));
    let ceiling_ms = CEILING_US as f64 / 1000.0;
    for (i, slot) in t.iter().enumerate().skip(1) {
        assert_eq!(slot.at_secs, i as f64 * 0.1);
        assert_eq!((slot.acks, slot.ack_p99_ms, slot.ack_max_ms), (1, 1.0, 1.0));
        assert_eq!(slot.deliveries, 2, "slot {i}");
        let worst = if (2..=4).contains(&i) {
            ceiling_ms
        } else {
            5.0
        };
        assert_eq!(slot.delivery_p99_ms, worst, "slot {i}");
        assert_eq!(slot.delivery_max_ms, worst, "slot {i}");
    }
    // A find-max step names how many slots were over the bound: here the three with losses.
    let mut m = measured(100, 1.0);
    m.timeline = t;
    let s = crate::scenario(&["--p99-ms", "100"]);
    let r = loadgen::report::Report::new("chatd", &s, m, 0, Default::default(), None, None);
    assert_eq!(r.slots_over_delivery_bound(), (3, 6));
}

fn measured(backlog_end: u64, ack_p99_ms: f64) -> Measured {
    Measured {
        window_opened_at: chrono::Utc::now(),
        window_secs: 5.0,
        offered_per_sec: 1000.0,
        recipients_per_send: 9.0,
        backlog_start: Backlog {
            answers: 100,
            deliveries: 900,
        },
        backlog_end: Backlog {
            answers: backlog_end,
            deliveries: 900,
        },
        counts: Counts {
            sent_in_window: 5000,
            ..Counts::default()
        },
        ack: latency(ack_p99_ms),
        delivery: latency(10.0),
        send_lag: latency(1.0),
        timeline: Vec::new(),
        read_side: None,
    }
}

#[test]
fn a_run_is_saturated_when_p99_exceeds_the_bound_or_the_backlog_grows() {
    let s = crate::scenario(&["--p99-ms", "100"]);
    assert!(saturation(&s, &measured(100, 50.0)).is_empty());
    // 2 % of 5,000 offered = 100 more outstanding is still noise; 101 is growth.
    assert!(saturation(&s, &measured(200, 50.0)).is_empty());
    let why = saturation(&s, &measured(201, 50.0));
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(why[0].contains("answer backlog grew"), "{why:?}");
    let why = saturation(&s, &measured(100, 150.0));
    assert!(why.len() == 1 && why[0].contains("send→ack p99"), "{why:?}");
    let s = crate::scenario(&["--p99-ms", "100", "--ack-p99-ms", "200"]);
    assert!(saturation(&s, &measured(100, 150.0)).is_empty());
    // A rate so low that no send fell inside the window proves nothing.
    let mut m = measured(100, 50.0);
    m.counts.sent_in_window = 0;
    assert!(!saturation(&s, &m).is_empty());
}

#[test]
fn a_read_side_behind_by_more_than_the_bound_saturates_the_run() {
    let s = crate::scenario(&["--p99-ms", "100", "--read-side-ms", "500"]);
    let probed = |read_models_ms, search_ms, error: Option<&str>| {
        let mut m = measured(100, 50.0);
        m.read_side = Some(ReadSide {
            read_models_ms,
            search_ms,
            limit_ms: 5000.0,
            error: error.map(str::to_owned),
        });
        saturation(&s, &m)
    };
    assert!(probed(Some(40.0), Some(300.0), None).is_empty());
    assert!(
        probed(Some(500.0), Some(500.0), None).is_empty(),
        "at the bound"
    );
    let why = probed(Some(501.0), Some(700.0), None);
    assert_eq!(why.len(), 2, "{why:?}");
    assert!(why[0].starts_with("read models 501 ms behind"), "{why:?}");
    assert!(why[1].starts_with("search 700 ms behind"), "{why:?}");
    let why = probed(Some(40.0), None, None);
    assert_eq!(why, ["search more than 5000 ms behind late in the window"]);
    let why = probed(None, None, Some("the probe's send failed: 500"));
    assert_eq!(why, ["the probe's send failed: 500"]);
}

/// chatd answers a REST send after at most 5 s whatever its read models' lag: a bound at or
/// past that could not fail, and one that is not a number would not be a bound.
#[test]
fn a_read_side_bound_that_cannot_fail_is_refused() {
    assert!(crate::try_scenario(&["--read-side-ms", "4999"]).is_ok());
    for bad in ["5000", "60000", "inf", "NaN", "0"] {
        let err = crate::try_scenario(&["--read-side-ms", bad]);
        assert!(err.is_err(), "{bad} was taken");
    }
}

#[test]
fn the_search_doubles_then_bisects_to_the_precision() {
    let s = Search {
        start: 1000.0,
        max: 100_000.0,
        min: 1.0,
        precision: 0.1,
        max_steps: 20,
        cooldown: std::time::Duration::ZERO,
    };
    // A target that holds up to 5,000/s.
    let (mut held, mut saturated, mut tried) = (None, None, Vec::new());
    while let Some(rate) = next_rate(held, saturated, &s) {
        tried.push(rate);
        if rate <= 5000.0 {
            held = Some(rate);
        } else {
            saturated = Some(rate);
        }
    }
    assert_eq!(tried[..4], [1000.0, 2000.0, 4000.0, 8000.0]);
    let (lo, hi) = (held.unwrap(), saturated.unwrap());
    assert!(lo <= 5000.0 && hi > 5000.0 && hi <= lo * 1.1, "{tried:?}");
    // One that holds nothing: halves down to the minimum and stops.
    assert_eq!(next_rate(None, Some(1.0), &s), None);
    assert_eq!(next_rate(None, Some(1000.0), &s), Some(500.0));
    assert_eq!(next_rate(Some(100_000.0), None, &s), None, "capped");
    assert_eq!(
        next_rate(Some(1.0), Some(2.0), &s),
        None,
        "no rate between 1 and 2"
    );
}
