//! [`Shared`]: subscriptions served from one follower of the log. The whole conformance suite
//! runs through it (with the default buffer, and with a buffer of two events so consumers lag
//! and catch up from the log all the time); then a consumer that stops reading must not hold
//! back another, and must get everything, in order, once it reads again.

use std::sync::Arc;

use eventlog::follow::Shared;
use eventlog::{EventLog, ExpectedVersion};
use eventlog_testkit::conformance::{collect_count, events};

use crate::Fixture;

/// A fresh SQLite log behind a [`Shared`] follower with `capacity` events of buffer.
pub struct SharedFixture {
    fixture: Fixture,
    capacity: usize,
}

impl SharedFixture {
    pub fn new(capacity: usize) -> Self {
        Self {
            fixture: Fixture::new(),
            capacity,
        }
    }

    pub async fn make(&self) -> Arc<dyn EventLog> {
        let (log, follow) = Shared::start(self.fixture.make().await, self.capacity)
            .await
            .expect("start");
        // Ends when the log closes.
        tokio::spawn(follow);
        log
    }
}

eventlog_testkit::conformance_tests!(SharedFixture::new(eventlog::follow::DEFAULT_CAPACITY));

mod tiny_buffer {
    use super::SharedFixture;

    eventlog_testkit::conformance_tests!(SharedFixture::new(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_holds_no_one_back_and_catches_up_from_the_log() {
    let fixture = SharedFixture::new(8);
    let log = fixture.make().await;
    log.append("a", ExpectedVersion::NoStream, events(5))
        .await
        .expect("append");
    let mut fast = log.subscribe(0);
    let mut slow = log.subscribe(0);
    let mut late = log.subscribe(3);
    // Far more than the buffer, while `slow` reads nothing.
    let mut appended = 5;
    for _ in 0..20 {
        log.append("b", ExpectedVersion::Any, events(10))
            .await
            .expect("append");
        appended += 10;
    }
    let positions = |events: Vec<Arc<eventlog::RecordedEvent>>| {
        events.iter().map(|e| e.position).collect::<Vec<_>>()
    };
    let all: Vec<u64> = (1..=appended).collect();
    assert_eq!(
        positions(collect_count(&mut fast, 0, appended as usize).await),
        all
    );
    assert_eq!(
        positions(collect_count(&mut late, 3, appended as usize - 3).await),
        all[3..].to_vec()
    );
    assert_eq!(
        positions(collect_count(&mut slow, 0, appended as usize).await),
        all
    );
    // All three are live again: one more event reaches each once.
    log.append("c", ExpectedVersion::NoStream, events(1))
        .await
        .expect("append");
    for sub in [&mut fast, &mut slow, &mut late] {
        assert_eq!(
            positions(collect_count(sub, appended, 1).await),
            vec![appended + 1]
        );
    }
}
