//! Who is online, as announced to others.
//!
//! A user is online while they have at least one live connection (WebSocket or SSE) on any of
//! their devices. The hub writes this set; the REST handlers read it for the `online` field of
//! friends and room members. Going online is announced at once; going offline only after the
//! user has had no connection for a grace period, so a flapping connection (a phone changing
//! networks, a page reload) never makes them blink offline and never storms their contacts.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use schema::UserId;

#[derive(Debug, Clone, Default)]
pub struct Presence(Arc<RwLock<HashSet<UserId>>>);

impl Presence {
    pub fn is_online(&self, user: UserId) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&user)
    }

    /// Records an announced change (the live hub is the one announcer); false when it was
    /// already so.
    pub fn set(&self, user: UserId, online: bool) -> bool {
        let mut set = self.0.write().unwrap_or_else(|e| e.into_inner());
        if online {
            set.insert(user)
        } else {
            set.remove(&user)
        }
    }

    /// How many users are online.
    pub fn count(&self) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}
