//! The conformance suite every [`EventLog`] backend must pass.
//!
//! Each case is a public async function taking a factory that makes a **fresh, empty** log;
//! cases call it once or more and close what they make. A backend's integration tests get one
//! `#[tokio::test]` per case from [`conformance_tests!`](crate::conformance_tests), the one
//! list of cases:
//!
//! ```ignore
//! eventlog_testkit::conformance_tests!(Fixture::new());
//! ```
//!
//! The cases panic on failure, like tests do. They wait on conditions with deadlines
//! ([`DEADLINE`]), never by sleeping. They assume positions are strictly increasing, not that
//! they are gapless: they compare what a subscription yields with what `read_all` returns.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use eventlog::{
    AppendResult, Error, ErrorKind, EventLog, ExpectedVersion, NewEvent, RecordedEvent,
    Subscription,
};
use futures::StreamExt;
use tokio::time::timeout;
use uuid::Uuid;

/// How long a case waits for something that should happen (an event on a subscription, a
/// task to finish) before failing.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// One `#[tokio::test]` (multi-thread flavour: several cases race tasks against each other)
/// per conformance case, in the module where it is invoked.
///
/// `conformance_tests!(FIXTURE)`: `FIXTURE` is an expression (it may `.await`) evaluated
/// afresh in every test; its value has `async fn make(&self) -> Arc<dyn EventLog>` returning a
/// fresh, empty log.
///
/// `conformance_tests!(optional = FIXTURE, skip = "why")`: for a backend whose server may not
/// run here, `FIXTURE` is an `Option`; with `None`, each test records itself as skipped with
/// the reason (`test_support::skip!`, listed at the end of `scripts/test`) and checks nothing.
#[macro_export]
macro_rules! conformance_tests {
    (optional = $fixture:expr, skip = $why:literal) => {
        $crate::conformance_tests!(@cases [optional $why] [$fixture]);
    };
    (@cases $mode:tt [$fixture:expr]) => {
        $crate::conformance_tests!(@each $mode [$fixture]
            append_and_read_round_trip,
            expected_version_is_enforced,
            malformed_requests_are_rejected,
            racing_appenders_have_one_winner,
            reappend_returns_original_result,
            partially_stored_ids_are_a_mismatch,
            ids_stored_in_another_stream_are_a_mismatch,
            racing_duplicates_write_once,
            batch_append_writes_groups_in_order,
            batch_append_is_idempotent_per_group,
            read_stream_ranges,
            read_all_pages,
            subscribe_catches_up_then_goes_live,
            subscribe_from_a_middle_position,
            subscribe_sees_concurrent_appends_once_in_order,
            subscribe_during_appends_has_no_seam_gap,
            subscribers_see_the_same_sequence,
            close_ends_appends_and_subscriptions,
        );
    };
    (@each $mode:tt [$fixture:expr] $($case:ident),* $(,)?) => {
        $( $crate::conformance_tests!(@one $mode [$fixture] $case); )*
    };
    (@one [plain] [$fixture:expr] $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let fixture = $fixture;
            $crate::conformance::$case(|| fixture.make()).await;
        }
    };
    (@one [optional $why:literal] [$fixture:expr] $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let Some(fixture) = $fixture else {
                $crate::test_support::skip!("{}", $why);
                return;
            };
            $crate::conformance::$case(|| fixture.make()).await;
        }
    };
    ($fixture:expr) => {
        $crate::conformance_tests!(@cases [plain] [$fixture]);
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A new event with a random id.
pub fn event(event_type: &str, data: &[u8]) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        data: data.to_vec(),
        metadata: br#"{"trace":"t"}"#.to_vec(),
    }
}

/// `n` new events with random ids.
pub fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| event("Numbered", format!(r#"{{"n":{i}}}"#).as_bytes()))
        .collect()
}

/// Every stored event, paging through `read_all`.
pub async fn read_everything(log: &dyn EventLog) -> Vec<RecordedEvent> {
    let mut all: Vec<RecordedEvent> = Vec::new();
    loop {
        let after = all.last().map_or(0, |e| e.position);
        let page = log.read_all(after, 100).await.expect("read_all");
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// The next item of `sub`, failing the case if it does not come in time, ends or is an error.
pub async fn next_event(sub: &mut Subscription) -> Arc<RecordedEvent> {
    match timeout(DEADLINE, sub.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(err))) => panic!("subscription failed: {err}"),
        Ok(None) => panic!("subscription ended"),
        Err(_) => panic!("no event on the subscription within {DEADLINE:?}"),
    }
}

/// Events from a subscription started `after`, up to the first one at or past `position`,
/// checking they come in strictly increasing position order.
pub async fn collect_until(
    sub: &mut Subscription,
    after: u64,
    position: u64,
) -> Vec<Arc<RecordedEvent>> {
    let mut out: Vec<Arc<RecordedEvent>> = Vec::new();
    let mut last = after;
    while last < position {
        last = push_next(sub, last, &mut out).await;
    }
    out
}

/// The next `count` events from a subscription started `after`, checking they come in
/// strictly increasing position order.
pub async fn collect_count(
    sub: &mut Subscription,
    after: u64,
    count: usize,
) -> Vec<Arc<RecordedEvent>> {
    let mut out: Vec<Arc<RecordedEvent>> = Vec::with_capacity(count);
    let mut last = after;
    while out.len() < count {
        last = push_next(sub, last, &mut out).await;
    }
    out
}

async fn push_next(sub: &mut Subscription, last: u64, out: &mut Vec<Arc<RecordedEvent>>) -> u64 {
    let event = next_event(sub).await;
    assert!(
        event.position > last,
        "subscription went from position {last} to {} (not strictly increasing)",
        event.position
    );
    let position = event.position;
    out.push(event);
    position
}

fn expect_error<T: std::fmt::Debug>(result: eventlog::Result<T>, kind: ErrorKind) -> Error {
    match result {
        Err(err) if err.kind() == kind => err,
        other => panic!("expected a {kind:?} error, got {other:?}"),
    }
}

fn keys<'a>(events: impl IntoIterator<Item = &'a RecordedEvent>) -> Vec<(u64, Uuid)> {
    events
        .into_iter()
        .map(|e| (e.position, e.event_id))
        .collect()
}

async fn join<T>(handle: tokio::task::JoinHandle<T>) -> T {
    timeout(DEADLINE, handle)
        .await
        .expect("task deadline")
        .expect("task panicked")
}

// ---------------------------------------------------------------------------------------------
// Appending and reading

/// What goes in comes back, with versions 1.., strictly increasing positions, one
/// `recorded_at` per append, `read_all` in commit order across streams and `head` at the end.
pub async fn append_and_read_round_trip<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    let log = make().await;
    assert_eq!(log.head().await.expect("head"), 0);
    assert!(log.read_all(0, 10).await.expect("read_all").is_empty());

    let before = Utc::now();
    let a1 = vec![
        event("RoomCreated", br#"{"name":"general"}"#),
        NewEvent {
            event_id: Uuid::new_v4(),
            event_type: "Binary".into(),
            schema_version: 7,
            data: vec![0, 159, 146, 150, 255],
            metadata: Vec::new(),
        },
        NewEvent {
            data: Vec::new(),
            ..event("Empty", b"")
        },
    ];
    let b1 = events(2);
    let a2 = events(1);

    let ra1 = log
        .append("room-a", ExpectedVersion::NoStream, a1.clone())
        .await
        .expect("a1");
    let rb1 = log
        .append("room-b", ExpectedVersion::NoStream, b1.clone())
        .await
        .expect("b1");
    let ra2 = log
        .append("room-a", ExpectedVersion::Exact(3), a2.clone())
        .await
        .expect("a2");

    assert_eq!((ra1.first_version, ra1.last_version), (1, 3));
    assert_eq!((rb1.first_version, rb1.last_version), (1, 2));
    assert_eq!((ra2.first_version, ra2.last_version), (4, 4));
    for r in [&ra1, &rb1, &ra2] {
        assert!(!r.duplicate);
        assert!(r.first_position >= 1);
        assert!(r.last_position >= r.first_position);
        let skew = chrono::Duration::minutes(5);
        assert!(r.recorded_at > before - skew && r.recorded_at < Utc::now() + skew);
    }
    // Strictly increasing within an append too; not necessarily consecutive (KurrentDB's are
    // log offsets).
    assert!(ra1.last_position > ra1.first_position);
    assert!(rb1.first_position > ra1.last_position);
    assert!(ra2.first_position > rb1.last_position);
    assert_eq!(log.head().await.expect("head"), ra2.last_position);

    // read_stream returns every field as appended.
    let stream_a = log
        .read_stream("room-a", 1, 100)
        .await
        .expect("read_stream");
    assert_eq!(stream_a.len(), 4);
    let sent: Vec<(&NewEvent, &AppendResult)> = a1
        .iter()
        .map(|e| (e, &ra1))
        .chain(a2.iter().map(|e| (e, &ra2)))
        .collect();
    let mut last_position = 0;
    for (i, (stored, (sent, result))) in stream_a.iter().zip(&sent).enumerate() {
        assert_eq!(stored.stream, "room-a");
        assert_eq!(stored.version, i as u64 + 1);
        assert!(stored.position > last_position);
        last_position = stored.position;
        assert_eq!(stored.event_id, sent.event_id);
        assert_eq!(stored.event_type, sent.event_type);
        assert_eq!(stored.schema_version, sent.schema_version);
        assert_eq!(stored.data, sent.data);
        assert_eq!(stored.metadata, sent.metadata);
        assert_eq!(stored.recorded_at, result.recorded_at);
    }
    assert_eq!(stream_a[0].position, ra1.first_position);
    assert_eq!(stream_a[2].position, ra1.last_position);
    assert_eq!(stream_a[3].position, ra2.first_position);

    // read_all interleaves the streams in commit order.
    let all = read_everything(log.as_ref()).await;
    let order: Vec<(&str, u64)> = all.iter().map(|e| (e.stream.as_str(), e.version)).collect();
    assert_eq!(
        order,
        [
            ("room-a", 1),
            ("room-a", 2),
            ("room-a", 3),
            ("room-b", 1),
            ("room-b", 2),
            ("room-a", 4)
        ]
    );
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(all[3].event_id, b1[0].event_id);
    assert_eq!(all[3].recorded_at, rb1.recorded_at);
    assert_eq!(
        all.last().map(|e| e.position),
        Some(log.head().await.expect("head"))
    );
    log.close().await;
}

/// `NoStream`, `Exact` and `Any` are checked; a rejected append writes nothing.
pub async fn expected_version_is_enforced<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    let log = make().await;
    // Exact on a stream that does not exist.
    let err = expect_error(
        log.append("s", ExpectedVersion::Exact(1), events(1)).await,
        ErrorKind::VersionConflict,
    );
    assert!(
        matches!(&err, Error::VersionConflict { stream, expected: ExpectedVersion::Exact(1), actual: 0 } if stream == "s"),
        "{err:?}"
    );
    log.append("s", ExpectedVersion::NoStream, events(3))
        .await
        .expect("create");
    let head = log.head().await.expect("head");

    let err = expect_error(
        log.append("s", ExpectedVersion::NoStream, events(1)).await,
        ErrorKind::VersionConflict,
    );
    assert!(
        matches!(&err, Error::VersionConflict { stream, expected: ExpectedVersion::NoStream, actual: 3 } if stream == "s"),
        "{err:?}"
    );
    for wrong in [1, 2, 4, 100] {
        let err = expect_error(
            log.append("s", ExpectedVersion::Exact(wrong), events(2))
                .await,
            ErrorKind::VersionConflict,
        );
        assert!(
            matches!(err, Error::VersionConflict { expected: ExpectedVersion::Exact(w), actual: 3, .. } if w == wrong),
            "{err:?}"
        );
    }
    // Nothing was written by the rejected appends.
    assert_eq!(log.head().await.expect("head"), head);
    assert_eq!(read_everything(log.as_ref()).await.len(), 3);

    let r = log
        .append("s", ExpectedVersion::Exact(3), events(1))
        .await
        .expect("exact");
    assert_eq!((r.first_version, r.last_version), (4, 4));
    let r = log
        .append("s", ExpectedVersion::Any, events(2))
        .await
        .expect("any, existing");
    assert_eq!((r.first_version, r.last_version), (5, 6));
    let r = log
        .append("t", ExpectedVersion::Any, events(1))
        .await
        .expect("any, new");
    assert_eq!((r.first_version, r.last_version), (1, 1));
    let r = log
        .append("s", ExpectedVersion::at(6), events(1))
        .await
        .expect("at(6)");
    assert_eq!(r.first_version, 7);
    let r = log
        .append("u", ExpectedVersion::at(0), events(1))
        .await
        .expect("at(0)");
    assert_eq!(r.first_version, 1);
    let versions: Vec<u64> = log
        .read_stream("s", 1, 100)
        .await
        .expect("read")
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, (1..=7).collect::<Vec<_>>());
    log.close().await;
}

/// No events, an event id twice in one request, an empty stream name and `Exact(0)` are
/// invalid, and write nothing.
pub async fn malformed_requests_are_rejected<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    let log = make().await;
    expect_error(
        log.append("s", ExpectedVersion::Any, Vec::new()).await,
        ErrorKind::InvalidArgument,
    );
    let e = event("E", b"{}");
    expect_error(
        log.append("s", ExpectedVersion::Any, vec![e.clone(), e.clone()])
            .await,
        ErrorKind::InvalidArgument,
    );
    let mut three = events(2);
    three.push(NewEvent {
        event_type: "Other".into(),
        ..three[0].clone()
    });
    expect_error(
        log.append("s", ExpectedVersion::Any, three).await,
        ErrorKind::InvalidArgument,
    );
    expect_error(
        log.append("", ExpectedVersion::Any, events(1)).await,
        ErrorKind::InvalidArgument,
    );
    expect_error(
        log.append("s", ExpectedVersion::Exact(0), events(1)).await,
        ErrorKind::InvalidArgument,
    );
    assert_eq!(log.head().await.expect("head"), 0);
    // The rejected event id was not consumed.
    let r = log
        .append("s", ExpectedVersion::NoStream, vec![e])
        .await
        .expect("append");
    assert!(!r.duplicate);
    log.close().await;
}

/// Tasks racing to append with the same expected version: one wins each round, the others
/// get a conflict naming the winner's version; the stream stays gapless.
pub async fn racing_appenders_have_one_winner<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    const TASKS: usize = 16;
    const ROUNDS: u64 = 5;
    let log = make().await;
    for round in 0..ROUNDS {
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (log, barrier) = (log.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    log.append("contended", ExpectedVersion::at(round), events(1))
                        .await
                })
            })
            .collect();
        let mut winners = 0;
        for task in tasks {
            match join(task).await {
                Ok(r) => {
                    winners += 1;
                    assert_eq!(r.first_version, round + 1);
                }
                Err(Error::VersionConflict { actual, .. }) => assert_eq!(actual, round + 1),
                Err(err) => panic!("unexpected error: {err}"),
            }
        }
        assert_eq!(winners, 1, "round {round}");
    }
    let stored = log.read_stream("contended", 1, 100).await.expect("read");
    let versions: Vec<u64> = stored.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=ROUNDS).collect::<Vec<_>>());
    assert_eq!(read_everything(log.as_ref()).await.len() as u64, ROUNDS);
    log.close().await;
}

// ---------------------------------------------------------------------------------------------
// Idempotency

/// Appending stored events again returns the original result marked `duplicate` and writes
/// nothing, whatever version it expects.
pub async fn reappend_returns_original_result<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    let log = make().await;
    log.append("other", ExpectedVersion::NoStream, events(2))
        .await
        .expect("other");
    let batch = events(3);
    let original = log
        .append("s", ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("first");
    assert!(!original.duplicate);
    let expected = AppendResult {
        duplicate: true,
        ..original
    };

    let again = log
        .append("s", ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("retry");
    assert_eq!(again, expected);

    // The stream moves on; the retry's expected version is stale now.
    log.append("s", ExpectedVersion::Exact(3), events(2))
        .await
        .expect("more");
    let head = log.head().await.expect("head");
    let total = read_everything(log.as_ref()).await.len();
    for stale in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(3),
        ExpectedVersion::Any,
    ] {
        let again = log
            .append("s", stale, batch.clone())
            .await
            .expect("stale retry");
        assert_eq!(again, expected, "{stale}");
    }
    // A single stored event on its own is a duplicate too.
    let single = log
        .append("s", ExpectedVersion::Exact(1), vec![batch[0].clone()])
        .await;
    let single = single.expect("single retry");
    assert!(single.duplicate);
    assert_eq!(single.first_position, original.first_position);
    assert_eq!((single.first_version, single.last_version), (1, 1));

    assert_eq!(log.head().await.expect("head"), head);
    assert_eq!(read_everything(log.as_ref()).await.len(), total);
    assert_eq!(log.read_stream("s", 1, 100).await.expect("read").len(), 5);
    log.close().await;
}

/// Some ids stored and some not, or stored in another order: a mismatch, nothing written.
pub async fn partially_stored_ids_are_a_mismatch<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    let log = make().await;
    let batch = events(2);
    log.append("s", ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("first");
    let head = log.head().await.expect("head");

    let overlap = vec![batch[1].clone(), event("New", b"{}")];
    let reversed = vec![batch[1].clone(), batch[0].clone()];
    let extended = vec![batch[0].clone(), batch[1].clone(), event("New", b"{}")];
    for request in [overlap, reversed, extended] {
        for expected in [ExpectedVersion::Any, ExpectedVersion::Exact(2)] {
            expect_error(
                log.append("s", expected, request.clone()).await,
                ErrorKind::IdempotencyMismatch,
            );
        }
    }
    assert_eq!(log.head().await.expect("head"), head);
    assert_eq!(log.read_stream("s", 1, 100).await.expect("read").len(), 2);
    log.close().await;
}

/// Ids stored in one stream appended to another: a mismatch, nothing written.
pub async fn ids_stored_in_another_stream_are_a_mismatch<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    let log = make().await;
    let batch = events(2);
    log.append("s", ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("first");
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Any] {
        expect_error(
            log.append("t", expected, batch.clone()).await,
            ErrorKind::IdempotencyMismatch,
        );
        expect_error(
            log.append("t", expected, vec![batch[0].clone()]).await,
            ErrorKind::IdempotencyMismatch,
        );
    }
    assert!(log.read_stream("t", 1, 100).await.expect("read").is_empty());
    assert_eq!(read_everything(log.as_ref()).await.len(), 2);
    log.close().await;
}

/// The same request sent by racing tasks is written once; every other task gets the same
/// result marked `duplicate`.
pub async fn racing_duplicates_write_once<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    const TASKS: usize = 16;
    let log = make().await;
    for round in 0..3u64 {
        let batch = events(2);
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (log, barrier, batch) = (log.clone(), barrier.clone(), batch.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    log.append("s", ExpectedVersion::at(round * 2), batch).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(join(task).await.expect("append"));
        }
        let written: Vec<_> = results.iter().filter(|r| !r.duplicate).collect();
        assert_eq!(written.len(), 1, "round {round}: {results:?}");
        let original = *written[0];
        assert_eq!(original.first_version, round * 2 + 1);
        for r in &results {
            assert_eq!(
                AppendResult {
                    duplicate: false,
                    ..*r
                },
                original
            );
        }
    }
    let stored = read_everything(log.as_ref()).await;
    assert_eq!(stored.len(), 6);
    assert_eq!(
        stored.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    log.close().await;
}

// ---------------------------------------------------------------------------------------------
// Batch appends

/// A batch's groups are written in order at consecutive versions with one `recorded_at`, each
/// answered with where it landed; the batch has one expected version, and a batch whose
/// expectation fails writes nothing.
pub async fn batch_append_writes_groups_in_order<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    let log = make().await;
    log.append("other", ExpectedVersion::NoStream, events(1))
        .await
        .expect("other");
    let groups = vec![events(2), events(1), events(3)];
    let answers = log
        .append_batch("s", ExpectedVersion::NoStream, groups.clone())
        .await
        .expect("batch");
    let answers: Vec<AppendResult> = answers.into_iter().map(|a| a.expect("group")).collect();
    let versions: Vec<(u64, u64)> = answers
        .iter()
        .map(|a| (a.first_version, a.last_version))
        .collect();
    assert_eq!(versions, [(1, 2), (3, 3), (4, 6)]);
    assert!(answers.iter().all(|a| !a.duplicate));
    assert!(
        answers
            .iter()
            .all(|a| a.recorded_at == answers[0].recorded_at)
    );
    let stored = log.read_stream("s", 1, 100).await.expect("read");
    let ids: Vec<Uuid> = groups.iter().flatten().map(|e| e.event_id).collect();
    assert_eq!(stored.iter().map(|e| e.event_id).collect::<Vec<_>>(), ids);
    // Each answer names its own events' positions.
    let mut i = 0;
    for answer in &answers {
        let n = (answer.last_version - answer.first_version + 1) as usize;
        assert_eq!(stored[i].position, answer.first_position);
        assert_eq!(stored[i + n - 1].position, answer.last_position);
        assert!(
            stored[i..i + n]
                .iter()
                .all(|e| e.recorded_at == answer.recorded_at)
        );
        i += n;
    }
    assert!(stored.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(log.head().await.expect("head"), answers[2].last_position);

    // One expected version for the batch: stale, nothing of it is written.
    let head = log.head().await.expect("head");
    for stale in [ExpectedVersion::NoStream, ExpectedVersion::Exact(5)] {
        expect_error(
            log.append_batch("s", stale, vec![events(1), events(2)])
                .await,
            ErrorKind::VersionConflict,
        );
    }
    assert_eq!(log.head().await.expect("head"), head);
    let more = log
        .append_batch("s", ExpectedVersion::Exact(6), vec![events(1), events(1)])
        .await
        .expect("more");
    let more: Vec<(u64, u64)> = more
        .into_iter()
        .map(|a| a.expect("group"))
        .map(|a| (a.first_version, a.last_version))
        .collect();
    assert_eq!(more, [(7, 7), (8, 8)]);
    expect_error(
        log.append_batch("s", ExpectedVersion::Any, vec![]).await,
        ErrorKind::InvalidArgument,
    );
    let twice = events(1);
    expect_error(
        log.append_batch("s", ExpectedVersion::Any, vec![twice.clone(), twice])
            .await,
        ErrorKind::InvalidArgument,
    );
    assert_eq!(log.read_stream("s", 1, 100).await.expect("read").len(), 8);
    log.close().await;
}

/// Each group of a batch is judged by its ids on its own: a stored one gets its original
/// result, a partly stored one a mismatch, and neither stops the others from being written; a
/// batch of nothing but stored groups is answered whatever version it expects.
pub async fn batch_append_is_idempotent_per_group<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    let log = make().await;
    let stored = events(2);
    let original = log
        .append("s", ExpectedVersion::NoStream, stored.clone())
        .await
        .expect("first");
    let elsewhere = events(1);
    log.append("t", ExpectedVersion::NoStream, elsewhere.clone())
        .await
        .expect("elsewhere");
    let solo = events(2);
    log.append("s", ExpectedVersion::Exact(2), solo.clone())
        .await
        .expect("solo");
    let fresh = events(2);
    let partly = vec![solo[1].clone(), event("New", b"{}")];
    let batch = vec![stored.clone(), fresh.clone(), partly, elsewhere];
    let answers = log
        .append_batch("s", ExpectedVersion::Exact(4), batch.clone())
        .await
        .expect("batch");
    assert_eq!(answers.len(), 4);
    assert_eq!(
        answers[0].as_ref().expect("stored group"),
        &AppendResult {
            duplicate: true,
            ..original
        }
    );
    let written = *answers[1].as_ref().expect("fresh group");
    assert!(!written.duplicate);
    assert_eq!((written.first_version, written.last_version), (5, 6));
    for mismatch in &answers[2..] {
        match mismatch {
            Err(e) => assert_eq!(e.kind(), ErrorKind::IdempotencyMismatch, "{e}"),
            Ok(a) => panic!("expected a mismatch, got {a:?}"),
        }
    }
    let in_s = log.read_stream("s", 1, 100).await.expect("read");
    assert_eq!(
        in_s.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        stored
            .iter()
            .chain(&solo)
            .chain(&fresh)
            .map(|e| e.event_id)
            .collect::<Vec<_>>()
    );

    // The same batch again, with a stale expectation: every group is answered as before and
    // nothing is written (no conflict: there is nothing to write).
    let head = log.head().await.expect("head");
    for stale in [ExpectedVersion::NoStream, ExpectedVersion::Exact(4)] {
        let again = log
            .append_batch("s", stale, batch[..2].to_vec())
            .await
            .expect("retry");
        let again: Vec<AppendResult> = again.into_iter().map(|a| a.expect("group")).collect();
        assert!(again.iter().all(|a| a.duplicate), "{stale}: {again:?}");
        assert_eq!(again[0].first_position, original.first_position);
        assert_eq!(again[1].first_position, written.first_position);
        assert_eq!(again[1].last_version, 6);
    }
    // A stored group and a new one at a stale version: the new one conflicts, so nothing is
    // written; at the right version the new one is written after the stored one's answer.
    let new = events(1);
    expect_error(
        log.append_batch(
            "s",
            ExpectedVersion::Exact(4),
            vec![fresh.clone(), new.clone()],
        )
        .await,
        ErrorKind::VersionConflict,
    );
    assert_eq!(log.head().await.expect("head"), head);
    let answers = log
        .append_batch("s", ExpectedVersion::Exact(6), vec![fresh, new])
        .await
        .expect("retry with a new group");
    assert!(answers[0].as_ref().expect("stored").duplicate);
    let new = answers[1].as_ref().expect("new");
    assert_eq!((new.first_version, new.duplicate), (7, false));
    assert_eq!(log.read_stream("s", 1, 100).await.expect("read").len(), 7);
    log.close().await;
}

// ---------------------------------------------------------------------------------------------
// Reading

/// `read_stream` from a middle version, with limits, past the end and of unknown streams.
pub async fn read_stream_ranges<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    let log = make().await;
    let batch = events(10);
    log.append("s", ExpectedVersion::NoStream, batch[..6].to_vec())
        .await
        .expect("append");
    log.append("noise", ExpectedVersion::NoStream, events(3))
        .await
        .expect("noise");
    log.append("s", ExpectedVersion::Exact(6), batch[6..].to_vec())
        .await
        .expect("append");

    let versions = |events: Vec<RecordedEvent>| -> Vec<u64> {
        assert!(events.iter().all(|e| e.stream == "s"));
        events.iter().map(|e| e.version).collect()
    };
    let read = |from, limit| {
        let log = log.clone();
        async move {
            log.read_stream("s", from, limit)
                .await
                .expect("read_stream")
        }
    };
    assert_eq!(versions(read(1, 100).await), (1..=10).collect::<Vec<_>>());
    assert_eq!(versions(read(0, 100).await), (1..=10).collect::<Vec<_>>());
    assert_eq!(versions(read(4, 3).await), [4, 5, 6]);
    assert_eq!(versions(read(6, 2).await), [6, 7]);
    assert_eq!(versions(read(9, 10).await), [9, 10]);
    assert_eq!(versions(read(10, 1).await), [10]);
    assert!(read(11, 10).await.is_empty());
    assert!(read(1, 0).await.is_empty());
    let middle = read(7, 1).await;
    assert_eq!(middle[0].event_id, batch[6].event_id);
    assert!(
        log.read_stream("unknown", 1, 10)
            .await
            .expect("unknown")
            .is_empty()
    );
    assert!(
        log.read_stream("unknown", 0, 10)
            .await
            .expect("unknown")
            .is_empty()
    );
    log.close().await;
}

/// `read_all` pages: after a position, with a limit, concatenating to the whole log.
pub async fn read_all_pages<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    let log = make().await;
    for i in 0..25 {
        log.append(
            &format!("s{}", i % 4),
            ExpectedVersion::Any,
            events(1 + i % 2),
        )
        .await
        .expect("append");
    }
    let all = log.read_all(0, 1000).await.expect("read_all");
    assert_eq!(all.len(), 37);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    let head = log.head().await.expect("head");
    assert_eq!(all.last().map(|e| e.position), Some(head));

    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = log.read_all(after, 7).await.expect("page");
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        assert!(page[0].position > after);
        after = last.position;
        paged.extend(page);
    }
    assert_eq!(keys(&paged), keys(&all));
    let from_middle = log.read_all(all[9].position, 5).await.expect("middle");
    assert_eq!(keys(&from_middle), keys(&all[10..15]));
    assert!(log.read_all(head, 10).await.expect("past head").is_empty());
    assert!(
        log.read_all(head + 1000, 10)
            .await
            .expect("far past head")
            .is_empty()
    );
    assert!(log.read_all(0, 0).await.expect("limit 0").is_empty());
    log.close().await;
}

// ---------------------------------------------------------------------------------------------
// Subscribing

/// From 0: the stored events, then live ones.
pub async fn subscribe_catches_up_then_goes_live<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    let log = make().await;
    log.append("a", ExpectedVersion::NoStream, events(3))
        .await
        .expect("a");
    log.append("b", ExpectedVersion::NoStream, events(2))
        .await
        .expect("b");
    let mut sub = log.subscribe(0);
    let head = log.head().await.expect("head");
    let stored = collect_until(&mut sub, 0, head).await;
    assert_eq!(
        keys(stored.iter().map(|e| e.as_ref())),
        keys(&read_everything(log.as_ref()).await)
    );

    let live = log
        .append("a", ExpectedVersion::Exact(3), events(2))
        .await
        .expect("live");
    let got = collect_until(&mut sub, head, live.last_position).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].position, live.first_position);
    assert_eq!((got[0].version, got[1].version), (4, 5));
    assert_eq!(got[0].recorded_at, live.recorded_at);
    let live = log
        .append("c", ExpectedVersion::NoStream, events(1))
        .await
        .expect("live");
    assert_eq!(next_event(&mut sub).await.position, live.first_position);
    log.close().await;
}

/// From a middle position: only what comes after it.
pub async fn subscribe_from_a_middle_position<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    let log = make().await;
    log.append("s", ExpectedVersion::NoStream, events(10))
        .await
        .expect("append");
    let all = read_everything(log.as_ref()).await;
    let after = all[4].position;
    let mut sub = log.subscribe(after);
    let got = collect_until(&mut sub, after, all[9].position).await;
    assert_eq!(keys(got.iter().map(|e| e.as_ref())), keys(&all[5..]));

    let live = log
        .append("s", ExpectedVersion::Exact(10), events(1))
        .await
        .expect("live");
    let event = next_event(&mut sub).await;
    assert_eq!((event.position, event.version), (live.first_position, 11));

    // From the head: live events only.
    let mut from_head = log.subscribe(live.last_position);
    let next = log
        .append("t", ExpectedVersion::Any, events(1))
        .await
        .expect("next");
    assert_eq!(
        next_event(&mut from_head).await.position,
        next.first_position
    );
    log.close().await;
}

/// Spawns `tasks` appenders, each appending `appends` times (alternately one and two events)
/// to its own stream with exact expected versions. [`appended_events`] says how many events
/// they write in all.
fn spawn_appenders(
    log: &Arc<dyn EventLog>,
    prefix: &str,
    tasks: usize,
    appends: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..tasks)
        .map(|t| {
            let log = log.clone();
            let stream = format!("{prefix}-{t}");
            tokio::spawn(async move {
                let mut version = 0;
                for i in 0..appends {
                    let r = log
                        .append(
                            &stream,
                            ExpectedVersion::at(version),
                            events(1 + (i + t) % 2),
                        )
                        .await
                        .expect("append");
                    version = r.last_version;
                }
            })
        })
        .collect()
}

/// How many events [`spawn_appenders`] writes.
fn appended_events(tasks: usize, appends: usize) -> usize {
    (0..tasks)
        .flat_map(|t| (0..appends).map(move |i| 1 + (i + t) % 2))
        .sum()
}

/// A task that subscribes after `after` and collects `count` events.
fn spawn_subscriber(
    log: &Arc<dyn EventLog>,
    after: u64,
    count: usize,
) -> tokio::task::JoinHandle<Vec<Arc<RecordedEvent>>> {
    let mut sub = log.subscribe(after);
    tokio::spawn(async move { collect_count(&mut sub, after, count).await })
}

fn assert_same_events(seen: &[Arc<RecordedEvent>], expected: &[RecordedEvent], what: &str) {
    let positions: HashSet<u64> = seen.iter().map(|e| e.position).collect();
    assert_eq!(
        positions.len(),
        seen.len(),
        "{what}: a position was delivered twice"
    );
    assert_eq!(
        keys(seen.iter().map(|e| e.as_ref())),
        keys(expected),
        "{what}"
    );
}

/// A subscriber running while many tasks append sees every event once, in order, exactly
/// what `read_all` returns.
pub async fn subscribe_sees_concurrent_appends_once_in_order<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    let log = make().await;
    log.append("before", ExpectedVersion::NoStream, events(5))
        .await
        .expect("before");
    let total = 5 + appended_events(16, 40);
    let subscriber = spawn_subscriber(&log, 0, total);
    let appenders = spawn_appenders(&log, "busy", 16, 40);
    for task in appenders {
        join(task).await;
    }
    let seen = join(subscriber).await;
    let all = read_everything(log.as_ref()).await;
    assert_eq!(all.len(), total);
    assert_same_events(&seen, &all, "subscriber");
    log.close().await;
}

/// Subscribing while appends are under way: no gap and no duplicate where catch-up hands over
/// to live. Repeated with fresh logs, since the seam moves.
pub async fn subscribe_during_appends_has_no_seam_gap<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    const TASKS: usize = 8;
    const APPENDS: usize = 60;
    for round in 0..5 {
        let log = make().await;
        let total = appended_events(TASKS, APPENDS);
        let appenders = spawn_appenders(&log, "busy", TASKS, APPENDS);
        // Wait for the log to be busy (a condition, not a nap): the first events arrive.
        let early = collect_count(&mut log.subscribe(0), 0, 20).await;

        // Subscribe from the start and from positions already passed, while appends go on;
        // each subscriber reads concurrently with the appenders.
        let mut subscribers = Vec::new();
        for skip in [0, 20, 0, 7, 0, 19] {
            let after = if skip == 0 {
                0
            } else {
                early[skip - 1].position
            };
            subscribers.push((after, spawn_subscriber(&log, after, total - skip)));
            tokio::task::yield_now().await;
        }
        for task in appenders {
            join(task).await;
        }
        let all = read_everything(log.as_ref()).await;
        assert_eq!(all.len(), total);
        for (after, subscriber) in subscribers {
            let seen = join(subscriber).await;
            let expected: Vec<RecordedEvent> =
                all.iter().filter(|e| e.position > after).cloned().collect();
            assert_same_events(&seen, &expected, &format!("round {round}, after {after}"));
        }
        log.close().await;
    }
}

/// Two subscribers, started at different times, see the same sequence.
pub async fn subscribers_see_the_same_sequence<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    let log = make().await;
    let total = appended_events(8, 30);
    let first = spawn_subscriber(&log, 0, total);
    let appenders = spawn_appenders(&log, "s", 8, 30);
    collect_count(&mut log.subscribe(0), 0, 10).await;
    let second = spawn_subscriber(&log, 0, total);
    for task in appenders {
        join(task).await;
    }
    let (a, b) = (join(first).await, join(second).await);
    let all = read_everything(log.as_ref()).await;
    assert_same_events(&a, &all, "first subscriber");
    assert_same_events(&b, &all, "second subscriber");
    log.close().await;
}

// ---------------------------------------------------------------------------------------------
// Closing

/// After `close`: appends fail with [`Error::Closed`], subscriptions end, and appends racing
/// with the close either succeed or fail with `Closed`.
pub async fn close_ends_appends_and_subscriptions<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventLog>>,
{
    let log = make().await;
    let first = log
        .append("s", ExpectedVersion::NoStream, events(2))
        .await
        .expect("append");
    let mut live = log.subscribe(0);
    collect_until(&mut live, 0, first.last_position).await;

    let racing: Vec<_> = (0..32)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move {
                log.append(&format!("r{i}"), ExpectedVersion::Any, events(1))
                    .await
            })
        })
        .collect();
    log.close().await;
    for task in racing {
        match join(task).await {
            Ok(r) => assert!(!r.duplicate),
            Err(Error::Closed) => {}
            Err(err) => panic!("append racing close: {err}"),
        }
    }
    expect_error(
        log.append("s", ExpectedVersion::Any, events(1)).await,
        ErrorKind::Closed,
    );
    // The live subscription ends, after delivering what was committed.
    drain_to_end(&mut live).await;
    // A subscription made after close ends too.
    drain_to_end(&mut log.subscribe(0)).await;
    // Closing twice is harmless.
    log.close().await;
}

async fn drain_to_end(sub: &mut Subscription) {
    loop {
        match timeout(DEADLINE, sub.next()).await {
            Ok(None) => return,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(err))) => assert_eq!(err.kind(), ErrorKind::Closed, "{err}"),
            Err(_) => panic!("subscription did not end within {DEADLINE:?} of close"),
        }
    }
}
