//! The baseline server, in this process: a clean run is counted exactly.

use loadgen::{Options, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_baseline_run_counts_every_delivery_once() {
    let listener = loadgen::baseline::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(loadgen::baseline::serve(listener));
    let s = crate::scenario(&[
        "--users",
        "30",
        "--rooms",
        "3",
        "--members",
        "10",
        "--rate",
        "300",
        "--duration",
        "1.5",
        "--warmup",
        "0.5",
        "--size",
        "64",
        "--drain", // ends when everything has arrived
        "120",
    ]);
    let opts = Options {
        target: Target::Baseline { addr },
        server_pid: None,
        source_addrs: 4,
        progress: false,
    };
    let started = chrono::Utc::now();
    let r = loadgen::run(&s, &opts).await.unwrap();
    let opened = chrono::DateTime::parse_from_rfc3339(&r.window_opened_at).unwrap();
    // After the 0.5 s warm-up, and at least the 1.5 s window before the run ended.
    assert!(
        opened >= started + chrono::TimeDelta::milliseconds(500)
            && opened + chrono::TimeDelta::milliseconds(1500) <= chrono::Utc::now(),
        "the window opened after the warm-up, a window's length before the end: {started}, {opened}"
    );
    let c = &r.counts;
    assert_eq!(c.sent, 600);
    assert_eq!((c.acked, c.failed, c.unanswered), (600, 0, 0));
    assert_eq!(
        c.echoes, c.acked,
        "each sender got its own copy, not counted as delivered"
    );
    assert_eq!(c.delivered, c.acked * 9, "nine other members each");
    assert_eq!(
        (c.lost, c.duplicates, c.out_of_order, c.undelivered),
        (0, 0, 0, 0)
    );
    assert_eq!(r.ack_latency.count, c.sent_in_window);
    assert_eq!(r.delivery_latency.count, c.sent_in_window * 9);
    assert!(r.sustained_acked_per_sec > 0.0);
    assert_eq!(r.offered_deliveries_per_sec, 300.0 * 9.0);
    assert!(
        r.generator_cpu_avg_percent.is_some_and(|c| c > 0.0),
        "the generator's own CPU is reported: {:?}",
        r.generator_cpu_avg_percent
    );
}
