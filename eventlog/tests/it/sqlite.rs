//! Behaviour specific to [`SqliteLog`]: persistence across reopening, group commit, recovery
//! from lag and from storage failures, closing with appends queued.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use eventlog::sqlite::{Options, SqliteLog};
use eventlog::{AppendResult, Error, ErrorKind, EventLog, ExpectedVersion};
use eventlog_testkit::conformance::{collect_count, events, read_everything};
use futures::future::join_all;

use crate::Fixture;

type Pending<'a> = Pin<Box<dyn Future<Output = eventlog::Result<AppendResult>> + Send + 'a>>;

/// Polls each append once, which queues it with the writer (the send never waits: the queue
/// has room), without waiting for the answers.
async fn submit_all(appends: &mut [Pending<'_>]) {
    for append in appends {
        assert!(
            futures::poll!(append.as_mut()).is_pending(),
            "answered while the writer is paused"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_everything_and_continues() {
    let fixture = Fixture::new();
    let path = fixture.fresh_path();
    let log = SqliteLog::open(&path).await.unwrap();
    assert_eq!(log.path(), path);
    let retry = events(2);
    log.append("a", ExpectedVersion::NoStream, retry.clone())
        .await
        .unwrap();
    log.append("b", ExpectedVersion::NoStream, events(3))
        .await
        .unwrap();
    log.append("a", ExpectedVersion::Exact(2), events(1))
        .await
        .unwrap();
    let before = read_everything(&log).await;
    log.close().await;
    assert_eq!(
        log.read_all(0, 10).await.unwrap_err().kind(),
        ErrorKind::Closed
    );
    assert_eq!(log.head().await.unwrap_err().kind(), ErrorKind::Closed);

    let log = SqliteLog::open(&path).await.unwrap();
    assert_eq!(read_everything(&log).await, before);
    assert_eq!(log.head().await.unwrap(), 6);
    // Idempotency survives the restart.
    let again = log.append("a", ExpectedVersion::Any, retry).await.unwrap();
    assert!(again.duplicate);
    assert_eq!((again.first_position, again.first_version), (1, 1));
    assert_eq!(again.recorded_at, before[0].recorded_at);
    // Versions and positions carry on.
    let next = log
        .append("a", ExpectedVersion::Exact(3), events(2))
        .await
        .unwrap();
    assert_eq!((next.first_version, next.last_version), (4, 5));
    assert_eq!((next.first_position, next.last_position), (7, 8));
    let err = log
        .append("b", ExpectedVersion::NoStream, events(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::VersionConflict { actual: 3, .. }),
        "{err:?}"
    );
    log.close().await;

    let log = SqliteLog::open(&path).await.unwrap();
    assert_eq!(log.head().await.unwrap(), 8);
    assert_eq!(log.read_stream("a", 1, 100).await.unwrap().len(), 5);
    log.close().await;
}

/// Reads of a stream whose older events are in the stream index and whose newest are not
/// yet (it is written every `index_every` events): every window of versions and every limit
/// gives exactly the stream's events, before and after reopening (which rebuilds what the
/// writer knows of the events not indexed), and version checks see the newest events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_reads_and_versions_span_the_index_and_the_events_after_it() {
    let options = Options {
        index_every: 7,
        ..Options::default()
    };
    let fixture = Fixture::with_options(options.clone());
    let path = fixture.fresh_path();
    let open = || SqliteLog::open_with(&path, options.clone());
    let log = open().await.unwrap();
    // 3 streams, appends of 1-3 events interleaved: 40 events, indexed in a few goes.
    let streams = ["a", "b", "c"];
    let mut versions = [0u64; 3];
    for i in 0..20 {
        let s = i % 3;
        let n = 1 + i % 3;
        let expected = match versions[s] {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v),
        };
        log.append(streams[s], expected, events(n)).await.unwrap();
        versions[s] += n as u64;
    }

    async fn check(log: &SqliteLog, streams: &[&str], versions: &[u64]) {
        let all = read_everything(log).await;
        for (stream, &last) in streams.iter().zip(versions) {
            let of_stream: Vec<_> = all.iter().filter(|e| e.stream == *stream).collect();
            assert_eq!(of_stream.len() as u64, last);
            for from in 1..=last + 1 {
                for limit in [1, 2, 5, 100] {
                    let got = log.read_stream(stream, from, limit).await.unwrap();
                    let want: Vec<_> = of_stream
                        .iter()
                        .filter(|e| e.version >= from)
                        .take(limit)
                        .map(|e| (**e).clone())
                        .collect();
                    assert_eq!(got, want, "{stream} from {from} limit {limit}");
                }
            }
            let err = log
                .append(stream, ExpectedVersion::Exact(last - 1), events(1))
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::VersionConflict { actual, .. } if actual == last),
                "{stream}: {err:?}"
            );
        }
    }
    check(&log, &streams, &versions).await;
    // Some events of every stream are not indexed when the log closes (a transaction writes
    // the index before its own events).
    append_one_each(&log, &streams, &mut versions).await;
    log.close().await;

    let log = open().await.unwrap();
    check(&log, &streams, &versions).await;
    // Appends carry on from the versions the reopened writer rebuilt.
    append_one_each(&log, &streams, &mut versions).await;
    check(&log, &streams, &versions).await;
    log.close().await;

    async fn append_one_each(log: &SqliteLog, streams: &[&str], versions: &mut [u64]) {
        for (stream, version) in streams.iter().zip(versions) {
            let r = log
                .append(stream, ExpectedVersion::Exact(*version), events(1))
                .await
                .unwrap();
            assert_eq!(r.first_version, *version + 1);
            *version += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_appends_go_out_in_one_batch() {
    let fixture = Fixture::new();
    let log = fixture.open().await;
    log.append("warm-up", ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();
    let before = log.stats();
    assert_eq!(before.batches, 1);

    let pause = log.pause_writer().await.unwrap();
    let streams: Vec<String> = (0..100).map(|i| format!("s{i}")).collect();
    let mut appends: Vec<Pending<'_>> = streams
        .iter()
        .map(|s| log.append(s, ExpectedVersion::NoStream, events(2)))
        .collect();
    submit_all(&mut appends).await;
    assert_eq!(log.queued(), 100);
    drop(pause);
    let results = join_all(appends).await;

    let after = log.stats();
    assert_eq!(after.batches - before.batches, 1, "{after:?}");
    assert_eq!(after.requests - before.requests, 100);
    assert_eq!(after.events - before.events, 200);
    // One transaction, one timestamp; positions in submission order.
    let mut next_position = 2;
    for r in &results {
        let r = r.as_ref().unwrap();
        assert_eq!(r.recorded_at, results[0].as_ref().unwrap().recorded_at);
        assert_eq!(
            (r.first_position, r.last_position),
            (next_position, next_position + 1)
        );
        next_position += 2;
    }
    assert_eq!(log.head().await.unwrap(), 201);
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_writer_lets_the_next_requests_join_its_next_commit() {
    // Long enough that the test's own steps always fit inside it.
    let fixture = Fixture::with_options(Options {
        commit_every: Duration::from_secs(3),
        ..Options::default()
    });
    let log = fixture.open().await;
    log.append("a", ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();
    assert_eq!(log.stats().batches, 1);
    // Busy (a transaction began just now): the next request is taken off the queue and
    // waits; one submitted only after that still joins it.
    let mut first: Pending<'_> = Box::pin(log.append("b", ExpectedVersion::NoStream, events(1)));
    submit_all(std::slice::from_mut(&mut first)).await;
    while log.queued() > 0 {
        tokio::task::yield_now().await;
    }
    let second = log.append("c", ExpectedVersion::NoStream, events(1));
    let (first, second) = tokio::join!(first, second);
    let (first, second) = (first.unwrap(), second.unwrap());
    let stats = log.stats();
    assert_eq!((stats.batches, stats.requests), (2, 3), "{stats:?}");
    assert_eq!(first.recorded_at, second.recorded_at, "one transaction");
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_capped_at_max_batch() {
    let fixture = Fixture::with_options(Options {
        max_batch: 10,
        ..Options::default()
    });
    let log = fixture.open().await;
    let pause = log.pause_writer().await.unwrap();
    let mut appends: Vec<Pending<'_>> = (0..35)
        .map(|_| log.append("s", ExpectedVersion::Any, events(1)))
        .collect();
    submit_all(&mut appends).await;
    drop(pause);
    for r in join_all(appends).await {
        r.unwrap();
    }
    let stats = log.stats();
    assert_eq!((stats.batches, stats.requests, stats.events), (4, 35, 35));
    let versions: Vec<u64> = log
        .read_stream("s", 1, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, (1..=35).collect::<Vec<_>>());
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_share_commits() {
    let fixture = Fixture::new();
    let log = Arc::new(fixture.open().await);
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                let stream = format!("s{t}");
                for v in 0..20 {
                    log.append(&stream, ExpectedVersion::at(v), events(1))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let stats = log.stats();
    assert_eq!(stats.requests, 64 * 20);
    // 64 appenders with one append in flight each: commits must be shared. (Each appender's
    // own appends are sequential, so at least 20 batches are needed.)
    assert!(stats.batches < stats.requests / 2, "{stats:?}");
    assert_eq!(log.head().await.unwrap(), 64 * 20);
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_requests_leave_the_rest_of_their_batch_alone() {
    let fixture = Fixture::new();
    let log = fixture.open().await;
    let stored = events(2);
    log.append("old", ExpectedVersion::NoStream, stored.clone())
        .await
        .unwrap();
    let before = log.stats();

    let a = events(2);
    let partial = vec![stored[0].clone(), events(1).remove(0)];
    let pause = log.pause_writer().await.unwrap();
    let mut appends: Vec<Pending<'_>> = vec![
        log.append("s1", ExpectedVersion::NoStream, a.clone()), // written
        log.append("s2", ExpectedVersion::Exact(5), events(1)), // conflict
        log.append("s1", ExpectedVersion::Exact(2), events(1)), // sees the first one: written
        log.append("s1", ExpectedVersion::NoStream, a.clone()), // duplicate of the first one
        log.append("old", ExpectedVersion::Any, partial),       // idempotency mismatch
        log.append("s2", ExpectedVersion::Exact(2), a.clone()), // ids in another stream
        log.append("s1", ExpectedVersion::NoStream, events(1)), // conflict, after writes
        log.append("s3", ExpectedVersion::NoStream, events(3)), // written
    ];
    submit_all(&mut appends).await;
    drop(pause);
    let mut results = join_all(appends).await.into_iter();
    let mut next = || results.next().unwrap();

    let first = next().unwrap();
    assert_eq!(
        (first.first_position, first.last_position, first.duplicate),
        (3, 4, false)
    );
    assert!(matches!(
        next(),
        Err(Error::VersionConflict { actual: 0, .. })
    ));
    let second = next().unwrap();
    assert_eq!((second.first_version, second.first_position), (3, 5));
    assert_eq!(
        next().unwrap(),
        AppendResult {
            duplicate: true,
            ..first
        }
    );
    assert_eq!(next().unwrap_err().kind(), ErrorKind::IdempotencyMismatch);
    assert_eq!(next().unwrap_err().kind(), ErrorKind::IdempotencyMismatch);
    assert!(matches!(
        next(),
        Err(Error::VersionConflict { actual: 3, .. })
    ));
    let third = next().unwrap();
    // Failed requests took no positions: the log stays gapless.
    assert_eq!((third.first_position, third.last_position), (6, 8));
    assert_eq!(first.recorded_at, third.recorded_at);

    let stats = log.stats();
    assert_eq!(
        (
            stats.batches - before.batches,
            stats.requests - before.requests
        ),
        (1, 8)
    );
    let all = read_everything(&log).await;
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=8).collect::<Vec<_>>());
    assert_eq!(log.head().await.unwrap(), 8);
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_subscriber_catches_up_from_the_file() {
    let fixture = Fixture::with_options(Options {
        live_capacity: 4,
        ..Options::default()
    });
    let log = fixture.open().await;
    let mut sub = log.subscribe(0);
    // The subscriber is not polled while 100 appends go by: it lags far behind its buffer.
    for v in 0..100 {
        log.append("s", ExpectedVersion::at(v), events(1))
            .await
            .unwrap();
    }
    let seen = collect_count(&mut sub, 0, 100).await;
    let positions: Vec<u64> = seen.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=100).collect::<Vec<_>>());
    // And it is live again afterwards.
    let r = log
        .append("s", ExpectedVersion::Exact(100), events(1))
        .await
        .unwrap();
    assert_eq!(
        collect_count(&mut sub, 100, 1).await[0].position,
        r.first_position
    );
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_answers_appends_queued_before_it() {
    let fixture = Fixture::new();
    let path = fixture.fresh_path();
    let log = SqliteLog::open(&path).await.unwrap();
    let mut sub = log.subscribe(0);
    log.append("s", ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();
    // The subscriber has caught up and is live.
    collect_count(&mut sub, 0, 1).await;
    let pause = log.pause_writer().await.unwrap();
    let mut appends: Vec<Pending<'_>> = (0..50)
        .map(|_| log.append("s", ExpectedVersion::Any, events(1)))
        .collect();
    submit_all(&mut appends).await;

    // The first poll of close stops new appends, then waits for the (paused) writer.
    let mut close = log.close();
    assert!(futures::poll!(close.as_mut()).is_pending());
    assert_eq!(
        log.append("s", ExpectedVersion::Any, events(1))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Closed
    );
    assert_eq!(
        log.pause_writer().await.unwrap_err().kind(),
        ErrorKind::Closed
    );
    drop(pause);
    close.await;
    for r in join_all(appends).await {
        r.unwrap();
    }
    // Live subscribers get everything committed, then the end.
    let live = collect_count(&mut sub, 1, 50).await;
    assert_eq!(live.last().unwrap().position, 51);
    assert!(futures::StreamExt::next(&mut sub).await.is_none());

    let log = SqliteLog::open(&path).await.unwrap();
    assert_eq!(log.read_stream("s", 1, 100).await.unwrap().len(), 51);
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_file_fails_the_batch_and_the_log_recovers() {
    let fixture = Fixture::new();
    let path = fixture.fresh_path();
    let options = Options {
        busy_timeout: Duration::from_millis(20),
        ..Options::default()
    };
    let log = SqliteLog::open_with(&path, options).await.unwrap();
    log.append("s", ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();

    // Another process holds the write lock.
    let intruder = rusqlite::Connection::open(&path).unwrap();
    intruder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = log
        .append("s", ExpectedVersion::Exact(1), events(2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert_eq!(log.stats().failed_batches, 1);
    intruder.execute_batch("ROLLBACK").unwrap();
    drop(intruder);

    // Nothing of the failed batch was written and positions stay gapless.
    let r = log
        .append("s", ExpectedVersion::Exact(1), events(2))
        .await
        .unwrap();
    assert_eq!((r.first_position, r.first_version), (2, 2));
    assert_eq!(log.head().await.unwrap(), 3);
    log.close().await;
}

#[tokio::test]
async fn opening_a_file_of_another_kind_fails() {
    let fixture = Fixture::new();
    let path = fixture.fresh_path();
    std::fs::write(
        &path,
        b"this is not a database, it is a plain text file of some length",
    )
    .unwrap();
    let err = SqliteLog::open(&path).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}

/// Set for the child process of [`commits_are_flushed_with_fdatasync`]: the directory it writes
/// its log in.
const SYNC_TRACE_DIR: &str = "EVENTLOG_TEST_SYNC_TRACE_DIR";
/// Appends one at a time in the child: each is its own commit.
const TRACED_APPENDS: usize = 5;

/// A commit flushes the WAL with `fdatasync`, never `fsync`: on Linux `fsync` also writes the
/// file's inode (its modification time) and waits for that second write, on every commit.
/// SQLite's bundled build uses `fdatasync` only when compiled with `HAVE_FDATASYNC`
/// (`.cargo/config.toml`). Runs this test binary's [`appends_for_the_sync_trace`] under `strace`.
#[test]
fn commits_are_flushed_with_fdatasync() {
    // `strace` may be missing, or not allowed to trace (no ptrace in some containers).
    let probe = std::process::Command::new("strace")
        .args(["-qq", "-e", "trace=none", "true"])
        .output();
    match probe {
        Err(e) => {
            test_support::skip!("strace cannot run ({e}): cannot see which sync call commits use");
            return;
        }
        Ok(out) if !out.status.success() => {
            test_support::skip!(
                "strace cannot trace here ({}): cannot see which sync call commits use",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Ok(_) => {}
    }
    let dir = tempfile::TempDir::new().unwrap();
    let trace = dir.path().join("trace.txt");
    let exe = std::env::current_exe().unwrap();
    let status = std::process::Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-y",
            "-e",
            "signal=none",
            "-e",
            "trace=fsync,fdatasync",
            "-o",
        ])
        .arg(&trace)
        .arg(exe)
        .args(["--exact", "sqlite::appends_for_the_sync_trace", "--ignored"])
        .args(["--test-threads", "1", "--quiet"])
        .env(SYNC_TRACE_DIR, dir.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the traced child failed: {status}");
    let trace = std::fs::read_to_string(&trace).unwrap();
    let calls: Vec<&str> = trace.lines().filter(|l| l.contains("sync(")).collect();
    let fsyncs: Vec<&&str> = calls.iter().filter(|l| l.contains(" fsync(")).collect();
    assert!(fsyncs.is_empty(), "fsync calls: {fsyncs:#?}");
    let wal_flushes = calls
        .iter()
        .filter(|l| l.contains(" fdatasync(") && l.contains("log.db-wal>"))
        .count();
    assert!(
        wal_flushes >= TRACED_APPENDS,
        "{wal_flushes} fdatasync calls on the WAL for {TRACED_APPENDS} commits: {calls:#?}"
    );
}

/// The child of [`commits_are_flushed_with_fdatasync`]; does nothing outside it.
#[tokio::test]
#[ignore = "run by commits_are_flushed_with_fdatasync under strace"]
async fn appends_for_the_sync_trace() {
    let Some(dir) = std::env::var_os(SYNC_TRACE_DIR) else {
        return;
    };
    let log = SqliteLog::open(std::path::Path::new(&dir).join("log.db"))
        .await
        .unwrap();
    for _ in 0..TRACED_APPENDS {
        log.append("s", ExpectedVersion::Any, events(1))
            .await
            .unwrap();
    }
    log.close().await;
}
