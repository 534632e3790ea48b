//! Integration tests: the real server on a free port, spoken to over HTTP.

mod accounts;
mod crash;
mod errors;
mod helpers;
mod messages;
mod ops;
mod rooms;
