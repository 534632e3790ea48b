//! The load generator's own accounting, against a real chatd (in this process, over real
//! sockets): it must count exactly what the server stored and delivered, report no loss when
//! there is none, and report loss when a connection comes back without resuming.

use chatd::{App, Settings};
use loadgen::scenario::Preset;
use loadgen::{Options, Target};
use serde_json::{Value, json};

struct Server {
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn chatd() -> Server {
    chatd_with(|_| {}).await
}

async fn chatd_with(tweak: impl FnOnce(&mut Settings)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::for_data_dir(dir.path());
    settings.argon2_memory_kib = 64;
    settings.argon2_iterations = 1;
    settings.ws_rate = 10_000;
    // Provisioning registers and logs in every user from one address as fast as it can.
    settings.limits.registrations_per_min = 1_000_000;
    settings.limits.request_rate = 1_000_000;
    settings.limits.invites_per_min = 1_000_000;
    tweak(&mut settings);
    let app = App::build(settings).await.unwrap();
    let url = format!("http://{}", app.addr());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    Server {
        url,
        _stop: tx,
        _dir: dir,
    }
}

fn scenario(extra: &[&str]) -> loadgen::scenario::Scenario {
    let mut args = vec![
        "--users",
        "6",
        "--rooms",
        "2",
        "--members",
        "3",
        "--rate",
        "150",
        "--duration",
        "2",
        "--warmup",
        "0",
        "--size",
        "64",
        // The drain ends when everything has arrived; a busy machine must not turn a slow
        // answer into a missing one.
        "--drain",
        "120",
    ];
    args.extend_from_slice(extra);
    let s = crate::scenario(&args);
    assert_eq!(s.preset, Preset::Throughput);
    s
}

fn opts(url: &str) -> Options {
    Options {
        target: Target::Chatd {
            url: url.to_owned(),
            prefix: "acct".into(),
        },
        server_pid: None,
        source_addrs: 4,
        progress: false,
    }
}

/// Messages the server stored, from its own room list (seq 1 is the room's creation).
async fn stored_messages(url: &str) -> u64 {
    let http = reqwest::Client::new();
    let mut total = 0;
    // acct0 is in room 0, acct3 in room 1 (members are dealt round-robin).
    for user in ["acct0", "acct3"] {
        let login: Value = http
            .post(format!("{url}/v1/auth/login"))
            .json(&json!({"username": user, "password": loadgen::provision::PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rooms: Value = http
            .get(format!("{url}/v1/rooms"))
            .bearer_auth(login["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rooms = rooms.as_array().unwrap();
        assert_eq!(rooms.len(), 1, "{rooms:?}");
        total += rooms[0]["last_seq"].as_u64().unwrap() - 1;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_run_counts_exactly_and_reports_no_loss() {
    let server = chatd().await;
    let s = scenario(&[]);
    let r = loadgen::run(&s, &opts(&server.url)).await.unwrap();
    let c = &r.counts;
    assert_eq!(c.sent, 300, "150/s for 2 s, every one sent");
    assert_eq!(c.acked, c.sent, "{:?}", r.errors);
    assert_eq!(
        stored_messages(&server.url).await,
        c.acked,
        "acks = what the server stored"
    );
    assert_eq!(c.echoes, c.acked, "the sender's own copy is not a delivery");
    assert_eq!(
        c.delivered,
        c.acked * 2,
        "both other members' connections got every message"
    );
    assert_eq!(
        (c.lost, c.duplicates, c.out_of_order, c.undelivered),
        (0, 0, 0, 0)
    );
    assert_eq!(c.foreign, 0, "resumed after the rooms' history");
    // Latencies cover every send intended inside the window (all of them: no warm-up).
    assert_eq!(r.ack_latency.count, c.sent);
    assert_eq!(r.delivery_latency.count, c.sent * 2);
    assert!(r.sustained_acked_per_sec > 0.0);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    // The read-side probe's message was answered and then found by a search.
    let read_side = r.read_side.as_ref().expect("chatd is probed");
    assert!(read_side.error.is_none(), "{read_side:?}");
    assert!(read_side.read_models_ms.is_some(), "{read_side:?}");
    assert!(read_side.search_ms.is_some(), "{read_side:?}");
    // In another room, by a user of its own: no connection of the load saw it.
    assert_eq!(c.foreign, 0);
    // The report names the machine's CPU (x86 Linux names it in /proc/cpuinfo).
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    assert!(
        r.machine
            .cpu_model
            .as_deref()
            .is_some_and(|m| !m.is_empty())
    );
}

/// A read side further behind than the bound saturates the run even though every ack and
/// delivery was in time: here a bound of 1 ms, which no search for a message sent over REST
/// (an append, the read models, then the index) can meet.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_side_behind_the_bound_saturates_the_run() {
    let server = chatd().await;
    let s = scenario(&["--read-side-ms", "1"]);
    let r = loadgen::run(&s, &opts(&server.url)).await.unwrap();
    assert_eq!(r.counts.acked, r.counts.sent, "{:?}", r.errors);
    let read_side = r.read_side.as_ref().expect("chatd is probed");
    assert!(read_side.search_ms.is_some(), "{read_side:?}");
    assert!(r.saturated);
    let behind: Vec<&str> = r
        .saturation
        .iter()
        .filter_map(|w| w.split(' ').next().filter(|_| w.contains("ms behind")))
        .collect();
    assert_eq!(behind.last(), Some(&"search"), "{:?}", r.saturation);
}

/// The probe's searches stay within a throttled server's request rate by waiting out its
/// 429s (`Retry-After`): the probe still finds its message, and reports no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_probe_waits_out_a_throttled_search() {
    let server = chatd_with(|s| s.limits.request_rate = 2).await;
    let s = scenario(&[]);
    let r = loadgen::run(&s, &opts(&server.url)).await.unwrap();
    let read_side = r.read_side.as_ref().expect("chatd is probed");
    assert!(read_side.error.is_none(), "{read_side:?}");
    assert!(read_side.search_ms.is_some(), "{read_side:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn churn_with_resume_loses_nothing_and_without_resume_loss_is_reported() {
    let server = chatd().await;
    let s = scenario(&["--churn", "0.3"]);
    let r = loadgen::run(&s, &opts(&server.url)).await.unwrap();
    assert!(r.reconnects > 0, "connections were dropped");
    assert_eq!(
        (r.counts.lost, r.counts.duplicates, r.counts.out_of_order),
        (0, 0, 0),
        "resume is lossless"
    );

    let s = scenario(&["--churn", "0.3", "--no-resume"]);
    let r = loadgen::run(&s, &opts(&server.url)).await.unwrap();
    assert!(r.reconnects > 0);
    assert!(
        r.counts.lost > 0,
        "events missed while disconnected must be reported as loss"
    );
    assert_eq!(r.counts.duplicates, 0);
}
