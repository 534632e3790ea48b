//! Servers that cannot keep up, over real sockets: the run must say so (saturated, sustained
//! far below offered, the missing answers in the tail), and find-max must stop below their
//! capacity.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use loadgen::accounting::CEILING_US;
use loadgen::findmax::{self, Search};
use loadgen::{Options, Target};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket server that reads sends and acknowledges each after `service` (`None`: never),
/// one at a time: its capacity is one send per `service`.
async fn server(service: Option<Duration>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let mut seq = 0;
                while let Some(Ok(msg)) = ws.next().await {
                    let Some(service) = service else { continue };
                    let Ok(send) = serde_json::from_str::<Value>(msg.to_text().unwrap_or(""))
                    else {
                        continue;
                    };
                    tokio::time::sleep(service).await; // the work a send costs this server
                    seq += 1;
                    let ack =
                        json!({"type": "ack", "client_msg_id": send["client_msg_id"], "seq": seq});
                    if ws.send(Message::text(ack.to_string())).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn opts(addr: SocketAddr) -> Options {
    Options {
        target: Target::Baseline { addr },
        server_pid: None,
        source_addrs: 1,
        progress: false,
    }
}

/// One user alone in one room, sending.
const ALONE: [&str; 8] = [
    "--users",
    "1",
    "--rooms",
    "1",
    "--members",
    "1",
    "--size",
    "64",
];

fn flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut f = ALONE.to_vec();
    f.extend_from_slice(extra);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_saturated_with_nothing_sustained() {
    let addr = server(None).await;
    let s = crate::scenario(&flags(&[
        "--rate",
        "100",
        "--duration",
        "1.5",
        "--warmup",
        "0.5",
        "--drain",
        "1",
    ]));
    let r = loadgen::run(&s, &opts(addr)).await.unwrap();
    assert!(r.counts.sent >= 150, "{:?}", r.counts);
    assert_eq!(
        r.counts.unanswered, r.counts.sent,
        "every send counted as unanswered"
    );
    assert_eq!(r.sustained_acked_per_sec, 0.0);
    assert_eq!(r.offered_per_sec, 100.0);
    assert_eq!(
        r.ack_latency.count, r.counts.sent_in_window,
        "none left out"
    );
    assert!(
        r.ack_latency.p50_ms >= CEILING_US as f64 / 1000.0,
        "in the tail at one hour"
    );
    assert!(r.saturated, "{r:#?}");
    assert!(r.backlog_end.answers > r.backlog_start.answers + 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_slower_than_the_offered_rate_is_saturated_at_its_own_pace() {
    // 40 sends/s at most, offered 200/s.
    let addr = server(Some(Duration::from_millis(25))).await;
    let s = crate::scenario(&flags(&[
        "--rate",
        "200",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--drain",
        "1",
    ]));
    let r = loadgen::run(&s, &opts(addr)).await.unwrap();
    assert!(r.saturated, "{r:#?}");
    assert!(
        r.sustained_acked_per_sec <= 40.0 && r.sustained_acked_per_sec > 0.0,
        "sustained is what arrived: {}",
        r.sustained_acked_per_sec
    );
    assert!(
        r.saturation
            .iter()
            .any(|w| w.contains("answer backlog grew")),
        "{:?}",
        r.saturation
    );
    // Overdue when sending stopped: still sent, then unanswered when the drain ended.
    assert_eq!(r.counts.sent, 500, "2.5 s × 200/s, none skipped");
    assert_eq!(r.counts.acked + r.counts.unanswered, r.counts.sent);
    assert!(r.counts.unanswered > 0);
    assert_eq!(r.ack_latency.count, r.counts.sent_in_window);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_max_stops_below_a_servers_capacity() {
    let addr = server(Some(Duration::from_millis(25))).await;
    let s = crate::scenario(&flags(&[
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--drain",
        "0.5",
    ]));
    let search = Search {
        start: 10.0,
        max: 10_000.0,
        min: 1.0,
        precision: 0.3,
        max_steps: 12,
        cooldown: Duration::ZERO,
    };
    let r = findmax::find_max(&s, &opts(addr), &search, |_| {})
        .await
        .unwrap();
    let saturated_at = r.saturated_at.expect("some step saturated");
    assert!(
        r.max_rate < 45.0,
        "held more than its capacity of 40/s: {:#?}",
        r.steps
    );
    assert!(saturated_at <= r.max_rate * 1.3 + 1.0, "{:#?}", r.steps);
    let held = r.held.as_ref().expect("10/s holds");
    assert!(!held.saturated);
    assert_eq!(held.offered_per_sec, r.max_rate);
}
