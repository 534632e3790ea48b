//! Tests read no settings from the developer's environment. This test runs two other tests of
//! this binary again, in a child process whose environment has hostile values for chatd's
//! settings (a listen address, NATS server and OTLP collector that refuse connections, a data
//! dir that cannot exist, a log format chatd refuses, logging off): one builds the server
//! in-process from `Settings::for_data_dir`, the other starts the real binary. Both must pass.
//!
//! The only variables tests read are explicit test inputs: `CHAT_TEST_*` gates (a live
//! Elasticsearch), and where the tools are (`CHAT_NATS_SERVER`, `CHAT_DOCKER_COMPOSE`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Values a developer might have exported, every one of which breaks a test that reads it
/// (quickly: the addresses refuse connections rather than time out).
const HOSTILE: &[(&str, &str)] = &[
    ("CHAT_LISTEN", "127.0.0.1:1"),
    ("CHAT_DATA_DIR", "/nonexistent/chatd-hostile"),
    ("CHAT_NATS_URL", "nats://127.0.0.1:1"),
    ("CHAT_JWT_SECRET", "x"),
    ("CHAT_LOG_FORMAT", "xml"),
    ("CHAT_ARGON2_MEMORY_KIB", "0"),
    ("CHAT_WS_RATE", "0"),
    ("CHAT_REQUEST_RATE", "1"),
    ("CHAT_MAX_CONNECTIONS", "1"),
    ("CHAT_HEADER_READ_TIMEOUT_SECS", "0"),
    ("CHAT_PROJECTOR_NICE", "99"),
    ("CHAT_SEARCH_NICE", "99"),
    ("CHAT_SEARCH_IDLE", "sometimes"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"),
    ("OTEL_SERVICE_NAME", "hostile"),
    ("RUST_LOG", "off"),
];

/// An in-process server, and the real binary (whose `/metrics` it scrapes).
const TESTS: [&str; 2] = [
    "accounts::register_login_and_read_own_profile",
    "metrics::metrics_are_prometheus_text_and_move_with_traffic",
];

#[test]
fn tests_pass_with_hostile_chat_settings_in_the_environment() {
    // Output to files, not pipes: a server the child started (and failed to stop) would hold a
    // pipe open and keep this test waiting.
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(TESTS)
        .args(["--exact", "--test-threads", "2"])
        .envs(HOSTILE.iter().copied())
        .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(
        status.is_some_and(|s| s.success())
            && stdout.contains(&format!("test result: ok. {} passed", TESTS.len())),
        "with {HOSTILE:?} exported ({status:?}):\n{stdout}\n{stderr}"
    );
}
