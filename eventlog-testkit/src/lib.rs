//! Test support for the event log, used only as a dev-dependency:
//!
//! - [`conformance`]: the suite every [`eventlog::EventLog`] backend must pass, and
//!   [`conformance_tests!`], which writes one test per case for a backend;
//! - [`nats_server`]: real `nats-server` processes (one, or a JetStream cluster) on loopback;
//! - [`kurrentdb_server`]: a local KurrentDB gRPC endpoint (no KurrentDB server runs here).

pub mod conformance;
pub mod kurrentdb_server;
pub mod nats_server;

/// For [`conformance_tests!`]'s skips.
#[doc(hidden)]
pub use test_support;
