//! Typed identifiers. All are UUIDs on the wire.
//!
//! Some ids are *deterministic* (UUIDv5 over a namespace and a natural key). That turns a
//! uniqueness rule into "this stream must not exist yet", which the event log checks
//! atomically in a single append, on every backend, with no reservation table to go stale.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::Username;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered (v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    };
}

id_type!(
    /// A user account.
    UserId
);
id_type!(
    /// A room (group or direct).
    RoomId
);
id_type!(
    /// A message within a room.
    MessageId
);
id_type!(
    /// An event in the log; the log deduplicates appends by it.
    EventId
);
id_type!(
    /// A login session: one refresh-token family.
    SessionId
);

// Namespaces for the deterministic ids. Changing one would orphan existing data.
const NS_USER: Uuid = Uuid::from_u128(0x5c1e_7b0a_2f4d_4e0e_9a51_3b7f_0c6d_a001);
const NS_DIRECT: Uuid = Uuid::from_u128(0x5c1e_7b0a_2f4d_4e0e_9a51_3b7f_0c6d_a002);
const NS_CLIENT_MSG: Uuid = Uuid::from_u128(0x5c1e_7b0a_2f4d_4e0e_9a51_3b7f_0c6d_a003);

impl UserId {
    /// The id of the account with this username (case-insensitive), so registering a taken
    /// name is an append to a stream that already exists.
    pub fn for_username(username: &Username) -> Self {
        Self(Uuid::new_v5(&NS_USER, username.canonical().as_bytes()))
    }
}

impl RoomId {
    /// The one direct room between two users, whichever of them asks.
    pub fn direct(a: UserId, b: UserId) -> Self {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(lo.0.as_bytes());
        key[16..].copy_from_slice(hi.0.as_bytes());
        Self(Uuid::new_v5(&NS_DIRECT, &key))
    }
}

impl MessageId {
    /// The id of a message sent with a client-chosen idempotency key. A retry of the same send,
    /// however much later, yields the same id and therefore the same event id, which the log
    /// recognises and refuses to store twice.
    pub fn for_client_msg(room: RoomId, sender: UserId, client_msg_id: &str) -> Self {
        let mut key = Vec::with_capacity(32 + client_msg_id.len());
        key.extend_from_slice(room.0.as_bytes());
        key.extend_from_slice(sender.0.as_bytes());
        key.extend_from_slice(client_msg_id.as_bytes());
        let hashed = Uuid::new_v5(&NS_CLIENT_MSG, &key);
        match Uuid::try_parse(client_msg_id) {
            // A UUIDv7 key lends its 48-bit timestamp: still a pure function of the inputs,
            // but ids of new messages then sort near each other, which keeps the log's
            // event-id index appends cheap (random ids dirty a random index page each).
            Ok(k) if k.get_version_num() == 7 => {
                let mut bytes = *hashed.as_bytes();
                bytes[..6].copy_from_slice(&k.as_bytes()[..6]);
                Self(uuid::Builder::from_custom_bytes(bytes).into_uuid())
            }
            _ => Self(hashed),
        }
    }
}

/// A map keyed by ids, for the hot paths that look ids up per delivered event (the hub's
/// audience and connections, the in-memory unread counts): foldhash instead of std's SipHash,
/// still seeded per process (user ids derive from chosen usernames).
pub type IdMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// The set counterpart of [`IdMap`].
pub type IdSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_room_id_is_symmetric_and_pair_specific() {
        let (a, b, c) = (UserId::new(), UserId::new(), UserId::new());
        assert_eq!(RoomId::direct(a, b), RoomId::direct(b, a));
        assert_ne!(RoomId::direct(a, b), RoomId::direct(a, c));
    }

    #[test]
    fn username_id_ignores_case() {
        let lower = Username::parse("alice").unwrap();
        let upper = Username::parse("ALICE").unwrap();
        assert_eq!(UserId::for_username(&lower), UserId::for_username(&upper));
        assert_ne!(
            UserId::for_username(&lower),
            UserId::for_username(&Username::parse("bob").unwrap())
        );
    }

    #[test]
    fn a_v7_client_key_gives_a_time_ordered_but_deterministic_id() {
        let (room, sender) = (RoomId::new(), UserId::new());
        let k1 = Uuid::now_v7().to_string();
        let id = MessageId::for_client_msg(room, sender, &k1);
        assert_eq!(id, MessageId::for_client_msg(room, sender, &k1));
        assert_eq!(
            id.0.as_bytes()[..6],
            Uuid::parse_str(&k1).unwrap().as_bytes()[..6]
        );
        assert_ne!(id, MessageId::for_client_msg(room, UserId::new(), &k1));
        let plain = MessageId::for_client_msg(room, sender, "not-a-uuid");
        assert_eq!(plain.0.get_version_num(), 5);
    }

    #[test]
    fn client_msg_id_scopes_by_room_and_sender() {
        let (r1, r2, u1, u2) = (RoomId::new(), RoomId::new(), UserId::new(), UserId::new());
        let id = MessageId::for_client_msg(r1, u1, "x");
        assert_eq!(id, MessageId::for_client_msg(r1, u1, "x"));
        assert_ne!(id, MessageId::for_client_msg(r2, u1, "x"));
        assert_ne!(id, MessageId::for_client_msg(r1, u2, "x"));
        assert_ne!(id, MessageId::for_client_msg(r1, u1, "y"));
    }
}
