//! The conformance suite against [`KurrentLog`]: in every run against the local KurrentDB
//! endpoint of `eventlog-testkit` (generated from the client's own `.proto` files), and against
//! a real KurrentDB server when `CHAT_TEST_KURRENTDB_URL` is set (`cargo test -p eventlog --test
//! it kurrentdb::live`); no KurrentDB server can be installed on the machines this project is
//! developed on, so there those record themselves as skipped (listed by `scripts/test`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use eventlog::kurrentdb::{KurrentLog, Options};
use eventlog::{EventLog, ExpectedVersion};
use eventlog_testkit::conformance::{events, read_everything};
use eventlog_testkit::kurrentdb_server::KurrentDbServer;
use tempfile::TempDir;

/// A KurrentDB to connect to, and a directory of index files; each `make` is a log under a
/// stream prefix of its own, so logs share the server without seeing each other.
pub struct Fixture {
    url: String,
    _local: Option<KurrentDbServer>,
    dir: TempDir,
    made: AtomicUsize,
    run: String,
}

impl Fixture {
    fn new(url: String, local: Option<KurrentDbServer>) -> Self {
        Self {
            url,
            _local: local,
            dir: TempDir::new().expect("temp dir"),
            made: AtomicUsize::new(0),
            run: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// A fresh local endpoint.
    pub async fn local() -> Self {
        let server = KurrentDbServer::start().await;
        Self::new(server.url(), Some(server))
    }

    /// The server `CHAT_TEST_KURRENTDB_URL` names, if it names one.
    pub fn live() -> Option<Self> {
        let url = std::env::var("CHAT_TEST_KURRENTDB_URL").ok()?;
        Some(Self::new(url, None))
    }

    /// Options for log number `n` (same `n`, same prefix and index).
    pub fn options(&self, n: usize) -> Options {
        let mut o = Options::new(&self.url, self.dir.path().join(format!("index-{n}.db")));
        o.stream_prefix = format!("t{}{n}-", self.run);
        o
    }

    pub fn next(&self) -> usize {
        self.made.fetch_add(1, Ordering::Relaxed)
    }

    pub async fn make(&self) -> Arc<dyn EventLog> {
        Arc::new(
            KurrentLog::connect(self.options(self.next()))
                .await
                .expect("connect"),
        )
    }
}

eventlog_testkit::conformance_tests!(Fixture::local().await);

mod live {
    use super::Fixture;

    eventlog_testkit::conformance_tests!(
        optional = Fixture::live(),
        skip = "CHAT_TEST_KURRENTDB_URL is not set: no live KurrentDB"
    );
}

/// A log that reconnects with its index file deleted rebuilds the index from `$all`: a stale
/// retry is still a duplicate, and ids stored in one stream are still refused in another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_index_is_rebuilt_from_all() {
    let fixture = Fixture::local().await;
    let options = fixture.options(fixture.next());
    let log = KurrentLog::connect(options.clone()).await.expect("connect");
    let batch = events(3);
    let original = log
        .append("room-1", ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("append");
    log.append("room-1", ExpectedVersion::Exact(3), events(1))
        .await
        .expect("more");
    log.close().await;

    std::fs::remove_file(&options.index_path).expect("remove index");
    let log = KurrentLog::connect(options).await.expect("reconnect");
    let again = log
        .append("room-1", ExpectedVersion::Exact(4), batch.clone())
        .await
        .expect("stale retry");
    assert!(again.duplicate);
    assert_eq!(
        again,
        eventlog::AppendResult {
            duplicate: true,
            ..original
        }
    );
    let err = log
        .append("room-2", ExpectedVersion::NoStream, batch)
        .await
        .expect_err("mismatch");
    assert_eq!(err.kind(), eventlog::ErrorKind::IdempotencyMismatch);
    assert_eq!(read_everything(&log).await.len(), 4);
    log.close().await;
}

/// Positions are the events' prepare positions: one append's events have distinct, increasing
/// positions though KurrentDB gives them one commit position, and reading or subscribing from
/// the middle of an append starts right after that event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_inside_one_append_are_distinct_and_resumable() {
    let fixture = Fixture::local().await;
    let log = fixture.make().await;
    log.append("a", ExpectedVersion::NoStream, events(5))
        .await
        .expect("append");
    log.append("b", ExpectedVersion::NoStream, events(2))
        .await
        .expect("append");
    let all = read_everything(log.as_ref()).await;
    assert_eq!(all.len(), 7);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    for i in 0..all.len() {
        let rest = log.read_all(all[i].position, 100).await.expect("read_all");
        let want: Vec<_> = all[i + 1..].iter().map(|e| e.event_id).collect();
        assert_eq!(rest.iter().map(|e| e.event_id).collect::<Vec<_>>(), want);
        let mut sub = log.subscribe(all[i].position);
        let got = eventlog_testkit::conformance::collect_count(
            &mut sub,
            all[i].position,
            all.len() - i - 1,
        )
        .await;
        assert_eq!(got.iter().map(|e| e.event_id).collect::<Vec<_>>(), want);
    }
    log.close().await;
}
