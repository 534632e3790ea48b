//! Projector tests against a real SQLite event log.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod unread_property;
