//! Every conformance case against a fresh [`eventlog::sqlite::SqliteLog`], with the default
//! options and again with tiny buffers.

use crate::Fixture;

eventlog_testkit::conformance_tests!(Fixture::new());

/// The suite again with tiny batches, a tiny live buffer and tiny catch-up pages: subscribers
/// lag all the time and must recover from the file without gaps or duplicates; and the stream
/// index written every two events, so that reads of a stream span its indexed part and the
/// tail after it (with the default, the suite's streams are never indexed).
mod tiny_buffers {
    use eventlog::sqlite::Options;

    use crate::Fixture;

    eventlog_testkit::conformance_tests!(Fixture::with_options(Options {
        max_batch: 3,
        live_capacity: 2,
        catch_up_page: 5,
        index_every: 2,
        ..Options::default()
    }));
}
