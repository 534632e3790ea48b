//! The conformance suite against [`JetStreamLog`] on a real `nats-server`, and what is
//! particular to JetStream: retries after the duplicate window, the index rebuilding itself,
//! reading a long stream from the middle.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eventlog::conformance::{self, events, read_everything};
use eventlog::jetstream::{JetStreamLog, Options};
use eventlog::nats_server::NatsServer;
use eventlog::{EventLog, ExpectedVersion};
use tempfile::TempDir;

/// A server plus a directory of index files; each `make` is a fresh stream.
pub struct Fixture {
    pub server: NatsServer,
    dir: TempDir,
    made: AtomicUsize,
}

impl Fixture {
    pub fn new() -> Self {
        Self {
            server: NatsServer::start(),
            dir: TempDir::new().expect("temp dir"),
            made: AtomicUsize::new(0),
        }
    }

    /// Options for stream number `n` (same `n`, same stream and index).
    pub fn options(&self, n: usize) -> Options {
        let mut o = Options::new(
            self.server.url(),
            self.dir.path().join(format!("index-{n}.db")),
        );
        o.stream = format!("T{n}");
        o.subject_prefix = format!("t{n}.events");
        o
    }

    pub fn next(&self) -> usize {
        self.made.fetch_add(1, Ordering::Relaxed)
    }

    pub async fn make(&self) -> Arc<dyn EventLog> {
        Arc::new(
            JetStreamLog::connect(self.options(self.next()))
                .await
                .expect("connect"),
        )
    }
}

macro_rules! conformance_cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = Fixture::new();
                conformance::$case(|| fixture.make()).await;
            }
        )*
    };
}

conformance_cases!(
    append_and_read_round_trip,
    expected_version_is_enforced,
    malformed_requests_are_rejected,
    racing_appenders_have_one_winner,
    reappend_returns_original_result,
    partially_stored_ids_are_a_mismatch,
    ids_stored_in_another_stream_are_a_mismatch,
    racing_duplicates_write_once,
    read_stream_ranges,
    read_all_pages,
    subscribe_catches_up_then_goes_live,
    subscribe_from_a_middle_position,
    subscribe_sees_concurrent_appends_once_in_order,
    subscribe_during_appends_has_no_seam_gap,
    subscribers_see_the_same_sequence,
    close_ends_appends_and_subscriptions,
);
