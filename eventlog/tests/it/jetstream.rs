//! The conformance suite against [`JetStreamLog`] on a real `nats-server`, and what is
//! particular to JetStream: retries after the duplicate window, the index rebuilding itself,
//! reading a long stream from the middle.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eventlog::follow::Shared;
use eventlog::jetstream::{IndexFeed, JetStreamLog, Options};
use eventlog::{EventLog, ExpectedVersion};
use eventlog_testkit::conformance::{events, read_everything};
use eventlog_testkit::nats_server::NatsServer;
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

eventlog_testkit::conformance_tests!(Fixture::new());

/// Waits until JetStream has forgotten message ids published now: a probe stream with the
/// same duplicate window is sent the same id until it stores it again.
async fn wait_for_window_to_pass(fixture: &Fixture, window: Duration) {
    let client = async_nats::connect(fixture.server.url())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "PROBE".into(),
        subjects: vec!["probe".into()],
        duplicate_window: window,
        ..Default::default()
    })
    .await
    .expect("probe stream");
    let publish = || async {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", "probe");
        js.publish_with_headers("probe", h, "x".into())
            .await
            .expect("publish")
            .await
            .expect("ack")
    };
    assert!(!publish().await.duplicate);
    let deadline = std::time::Instant::now() + window * 20;
    while publish().await.duplicate {
        assert!(
            std::time::Instant::now() < deadline,
            "the window never passed"
        );
        tokio::time::sleep(window / 10).await;
    }
}

/// A retry long after JetStream's duplicate window is still recognised: the original result,
/// nothing written, even with a stale expected version — and even when the node's index was
/// deleted in between and had to be rebuilt from the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_the_duplicate_window_is_still_a_duplicate() {
    let fixture = Fixture::new();
    let window = Duration::from_millis(500);
    let n = fixture.next();
    let options = Options {
        duplicate_window: window,
        ..fixture.options(n)
    };
    let log = JetStreamLog::connect(options.clone())
        .await
        .expect("connect");
    let send = events(1);
    let batch = events(3);
    let original = log
        .append("room-1", ExpectedVersion::NoStream, send.clone())
        .await
        .expect("send");
    let original_batch = log
        .append("room-1", ExpectedVersion::Exact(1), batch.clone())
        .await
        .expect("batch");
    wait_for_window_to_pass(&fixture, window).await;

    for (request, first) in [(&send, &original), (&batch, &original_batch)] {
        for expected in [
            ExpectedVersion::Any,
            ExpectedVersion::Exact(4),
            ExpectedVersion::NoStream,
        ] {
            let again = log
                .append("room-1", expected, request.clone())
                .await
                .expect("retry");
            assert!(again.duplicate, "{expected}");
            assert_eq!(
                (again.first_position, again.last_version),
                (first.first_position, first.last_version)
            );
        }
    }
    assert_eq!(read_everything(&log).await.len(), 4);
    log.close().await;

    // Lose the index; a new log rebuilds it from the stream before trusting it.
    std::fs::remove_file(&options.index_path).expect("remove index");
    let log = JetStreamLog::connect(options).await.expect("reconnect");
    let again = log
        .append("room-1", ExpectedVersion::Any, send.clone())
        .await
        .expect("retry after index loss");
    assert!(again.duplicate);
    assert_eq!(again.first_position, original.first_position);
    // Ids stored in one stream are still refused in another.
    let err = log
        .append("room-2", ExpectedVersion::NoStream, batch.clone())
        .await
        .expect_err("mismatch");
    assert_eq!(err.kind(), eventlog::ErrorKind::IdempotencyMismatch);
    assert_eq!(read_everything(&log).await.len(), 4);
    log.close().await;
}

/// Reading a long stream from a middle version returns exactly the asked range, with streams
/// interleaved, whether the index has seen the events or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_stream_from_the_middle_of_a_long_stream() {
    let fixture = Fixture::new();
    let log = JetStreamLog::connect(fixture.options(fixture.next()))
        .await
        .expect("connect");
    for i in 0..60u64 {
        log.append("long", ExpectedVersion::at(i * 10), events(10))
            .await
            .expect("append");
        log.append(&format!("noise-{i}"), ExpectedVersion::Any, events(1))
            .await
            .expect("noise");
    }
    for (from, limit) in [(1, 5), (257, 3), (300, 600), (595, 10), (600, 1), (601, 5)] {
        let read = log.read_stream("long", from, limit).await.expect("read");
        let versions: Vec<u64> = read.iter().map(|e| e.version).collect();
        let want: Vec<u64> = (from..=600).take(limit).collect();
        assert_eq!(versions, want, "from {from} limit {limit}");
        assert!(read.iter().all(|e| e.stream == "long"));
    }
    log.close().await;
}

/// A node's index can follow the node's shared follower instead of a consumer of its own: the
/// stream then has one consumer for the node, and a retry after the duplicate window is still
/// recognised (the index, fed through the follower, has the original).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_can_be_fed_by_the_shared_follower() {
    let fixture = Fixture::new();
    let window = Duration::from_millis(500);
    let options = Options {
        duplicate_window: window,
        index_feed: IndexFeed::Given,
        ..fixture.options(fixture.next())
    };
    let jetstream = JetStreamLog::connect(options.clone())
        .await
        .expect("connect");
    let (shared, follower) = Shared::start(Arc::new(jetstream.clone()), 64)
        .await
        .expect("shared");
    let follower = tokio::spawn(follower);
    let log: Arc<dyn EventLog> = shared;
    jetstream.index_from(Arc::downgrade(&log));

    let send = events(2);
    let original = log
        .append("room-1", ExpectedVersion::NoStream, send.clone())
        .await
        .expect("send");
    // Both the shared follower and the index have seen it once the index answers for it.
    wait_for_window_to_pass(&fixture, window).await;
    let again = log
        .append("room-1", ExpectedVersion::Any, send)
        .await
        .expect("retry");
    assert!(again.duplicate);
    assert_eq!(again.first_position, original.first_position);
    assert_eq!(read_everything(log.as_ref()).await.len(), 2);

    let client = async_nats::connect(fixture.server.url())
        .await
        .expect("connect");
    let mut stream = async_nats::jetstream::new(client)
        .get_stream(&options.stream)
        .await
        .expect("stream");
    let consumers = stream.info().await.expect("info").state.consumer_count;
    assert_eq!(
        consumers, 1,
        "one consumer for the node, shared by the index"
    );

    log.close().await;
    follower
        .await
        .expect("follower")
        .expect("follower ended cleanly");
}
