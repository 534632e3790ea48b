//! Integration tests: the real server on a free port, spoken to over HTTP.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod accounts;
mod admin;
mod authz;
mod cluster;
mod crash;
mod environment;
mod errors;
mod features;
mod friends;
mod helpers;
#[cfg(feature = "kurrentdb")]
mod kurrentdb;
mod leaks;
mod limits;
mod messages;
mod metrics;
mod ops;
mod revocation;
mod rooms;
mod search;
mod security;
mod soak;
mod sse;
mod traces;
mod unread;
mod web;
mod ws;
mod wsfuzz;
