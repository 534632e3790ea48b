//! Integration tests: the shipper and the alert sender against real HTTP receivers on
//! 127.0.0.1:0, log lines through a local subscriber, spans through the in-memory exporter.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod ecs;
mod live;
mod shipper;
mod slack;
mod support;
mod traces;
