//! Every conformance case against a fresh [`eventlog::sqlite::SqliteLog`], with the default
//! options and again with tiny buffers.

use crate::Fixture;

eventlog_testkit::conformance_tests!(Fixture::new());

/// The suite again with tiny batches, a tiny live buffer and tiny catch-up pages: subscribers
/// lag all the time and must recover from the file without gaps or duplicates.
mod tiny_buffers {
    use eventlog::sqlite::Options;

    use crate::Fixture;

    eventlog_testkit::conformance_tests!(Fixture::with_options(Options {
        max_batch: 3,
        live_capacity: 2,
        catch_up_page: 5,
        ..Options::default()
    }));
}
