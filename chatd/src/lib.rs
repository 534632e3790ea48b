//! `chatd`: the chat server. A request walks down the layers and never back up:
//! [`app`] (start-up) → [`http`] (REST) and [`live`] (WebSocket, SSE) → [`chat`] (the use
//! cases) → the `projector`, `search`, `eventlog` and `schema` crates; [`ops`] (metrics,
//! health, the monitor) sits beside them and uses none of them.
//!
//! - [`config`]: typed settings from flags and `CHAT_…` variables;
//! - [`app`]: [`app::App::build`] opens storage and binds the listener,
//!   [`app::App::run_until_stopped`] serves and shuts down gracefully; `rebuild`;
//! - [`chat`]: the use cases, transport-free: commands on aggregates, queries on read models,
//!   the one view of an event and the one table of error codes;
//! - [`http`]: the REST interface (poem-openapi), adapting requests to [`chat`];
//! - [`live`]: live delivery: connections (WebSocket, SSE), the audience of each event, presence;
//! - [`ops`]: metrics, the metered log, the monitor and its alert rules, health.

pub mod app;
pub mod chat;
pub mod config;
pub mod http;
pub mod live;
pub mod ops;

pub use app::App;
pub use config::Settings;
