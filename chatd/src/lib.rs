//! `chatd`: the chat server.
//!
//! - [`config`]: typed settings from flags and `CHAT_…` variables;
//! - [`datadir`]: the data directory's permissions (owner only) and the secret file check;
//! - [`app`]: [`app::App::build`] opens storage and binds the listener,
//!   [`app::App::run_until_stopped`] serves and shuts down gracefully; `rebuild`;
//! - [`service`]: the application service — commands on aggregates, queries on read models;
//! - [`auth`]: password hashing, access tokens, refresh tokens;
//! - [`http`]: the REST interface (poem-openapi), its error mapping and its OpenAPI document;
//! - [`live`]: the fan-out hub and the WebSocket endpoint;
//! - [`search`]: member-only full-text search over the `search` crate's index;
//! - [`security`]: security events (authentication failures) as ECS lines, counted;
//! - [`metrics`]: Prometheus metrics and `/metrics`;
//! - [`monitor`]: projection lag and the alert rules, once a second.

pub mod app;
pub mod auth;
pub mod config;
pub mod datadir;
pub mod http;
pub mod live;
pub mod metrics;
pub mod monitor;
pub mod search;
pub mod security;
pub mod service;

pub use app::App;
pub use config::Settings;
