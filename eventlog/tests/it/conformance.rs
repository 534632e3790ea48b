//! Every conformance case against a fresh [`eventlog::sqlite::SqliteLog`].

use eventlog::conformance;
use eventlog::sqlite::Options;

use crate::Fixture;

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

/// The whole suite in one go, as another backend would run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all() {
    let fixture = Fixture::new();
    conformance::run_all(|| fixture.make()).await;
}

/// The subscription cases again with tiny batches, a tiny live buffer and tiny catch-up pages:
/// subscribers lag all the time and must recover from the file without gaps or duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_with_tiny_buffers() {
    let fixture = Fixture::with_options(Options {
        max_batch: 3,
        live_capacity: 2,
        catch_up_page: 5,
        ..Options::default()
    });
    let make = || fixture.make();
    conformance::subscribe_catches_up_then_goes_live(&make).await;
    conformance::subscribe_from_a_middle_position(&make).await;
    conformance::subscribe_sees_concurrent_appends_once_in_order(&make).await;
    conformance::subscribe_during_appends_has_no_seam_gap(&make).await;
    conformance::subscribers_see_the_same_sequence(&make).await;
}
