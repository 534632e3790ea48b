//! The load generator's own accounting, against a real chatd (in this process, over real
//! sockets): it must count exactly what the server stored and delivered, report no loss when
//! there is none, and report loss when a connection comes back without resuming.
#![allow(clippy::unwrap_used)]

use chatd::{App, Settings};
use loadgen::scenario::{Preset, ScenarioArgs};
use loadgen::{Options, Target};
use serde_json::{Value, json};

struct Server {
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn chatd() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::for_data_dir(dir.path());
    settings.argon2_memory_kib = 64;
    settings.argon2_iterations = 1;
    settings.ws_rate = 10_000;
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
    #[derive(clap::Parser)]
    struct P {
        #[command(flatten)]
        s: ScenarioArgs,
    }
    let mut args = vec![
        "x",
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
    ];
    args.extend_from_slice(extra);
    let s = <P as clap::Parser>::parse_from(args).s.resolve().unwrap();
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
    assert!(
        r.sent >= 200,
        "about 150/s for 2 s were offered: {}",
        r.sent
    );
    assert_eq!(r.acked, r.sent, "{:?}", r.errors);
    assert_eq!(
        stored_messages(&server.url).await,
        r.acked,
        "acks = what the server stored"
    );
    assert_eq!(
        r.delivered,
        r.acked * 3,
        "every member's connection got every message"
    );
    assert_eq!((r.lost, r.duplicates, r.out_of_order), (0, 0, 0));
    // Rates and latencies cover the sends intended inside the measured window.
    let measured = r.ack_latency.count;
    assert_eq!(measured as f64, (r.acked_per_sec * s.duration_secs).round());
    assert!(measured > 0 && measured <= r.acked);
    assert_eq!(r.delivery_latency.count, measured * 3);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn churn_with_resume_loses_nothing_and_without_resume_loss_is_reported() {
    let server = chatd().await;
    let s = scenario(&["--churn", "0.3"]);
    let r = loadgen::run(&s, &opts(&server.url)).await.unwrap();
    assert!(r.reconnects > 0, "connections were dropped");
    assert_eq!(
        (r.lost, r.duplicates, r.out_of_order),
        (0, 0, 0),
        "resume is lossless"
    );

    let s = scenario(&["--churn", "0.3", "--no-resume"]);
    let r = loadgen::run(&s, &opts(&server.url)).await.unwrap();
    assert!(r.reconnects > 0);
    assert!(
        r.lost > 0,
        "events missed while disconnected must be reported as loss"
    );
    assert_eq!(r.duplicates, 0);
}
