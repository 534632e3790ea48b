//! The chat itself, transport-free: every use case as a method of [`Chat`], the command
//! machinery under them, the one view of an event and the one table of error codes. Nothing
//! here knows HTTP, WebSocket or SSE; `http` and `live` adapt it.
//!
//! - [`commands`]: load an aggregate, decide, append with the expected version, retry on a
//!   conflict, wait for the projections (read-your-writes);
//! - use cases by area: [`accounts`] (registering, sessions, profiles, friends), [`rooms`],
//!   [`messages`] (sending, editing, deleting, history, read markers, unread counts),
//!   [`search`] (member-only full-text search), [`features`] (reactions, pins, readers,
//!   threads);
//! - [`auth`]: password hashes and tokens; [`presence`]: who is online;
//! - [`view`]: the client view of a room event; [`error`]: error kinds and their codes.

use std::sync::Arc;

use eventlog::EventLog;
use projector::{Progress, ReadModels};

use crate::limits::Limits;

pub mod accounts;
pub mod auth;
mod commands;
pub mod error;
pub mod features;
mod fence;
pub mod messages;
pub mod presence;
mod room_actor;
pub mod rooms;
pub mod search;
pub mod view;

pub use accounts::{Person, Tokens};
pub use auth::Auth;
pub use commands::Consistency;
pub use error::{ChatError, Code, Refusal, Result};
pub use messages::{Changed, History, Sent};
pub use presence::Presence;
pub use rooms::{Admin, RoomDetail};
pub use search::{Search, SearchParams};

/// The chat's use cases over the log and the read models. One per node, shared by every
/// request and connection.
#[derive(Debug)]
pub struct Chat {
    log: Arc<dyn EventLog>,
    models: ReadModels,
    progress: Progress,
    /// Read-your-writes for the commands answered at durability.
    fence: fence::ReadFence,
    auth: Auth,
    presence: Presence,
    /// One actor per active room, deciding and appending its commands in batches, so they do
    /// not conflict with each other on this node; other nodes are caught by the expected
    /// version.
    rooms: room_actor::RoomActors,
    limits: Limits,
}

impl Chat {
    pub fn new(
        log: Arc<dyn EventLog>,
        models: ReadModels,
        progress: Progress,
        auth: Auth,
        presence: Presence,
        limits: Limits,
    ) -> Self {
        Self {
            rooms: room_actor::RoomActors::new(log.clone(), models.clone(), limits.room_cache),
            log,
            models,
            fence: fence::ReadFence::new(progress.clone()),
            progress,
            auth,
            presence,
            limits,
        }
    }

    /// This node's throttles and bounds.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Who is online (as announced to their contacts).
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// The event log, for live delivery's catch-up reads (which must not wait for the
    /// projections).
    pub fn log(&self) -> &dyn EventLog {
        self.log.as_ref()
    }
}
