//! Presence and typing across nodes, over plain NATS subjects (never persisted).
//!
//! Durable events reach every node through the shared log. Ephemeral state does not belong in
//! the log, so each node publishes its own on `<prefix>.presence` and `<prefix>.typing`
//! (`<prefix>` is `chat.live` by default) and listens to the others':
//! - `typing`: a member of a room is typing (already coalesced by the node it came from);
//! - `presence`: a user's first connection on that node opened, or their last one closed and
//!   the grace passed;
//! - `sync`: every [`SYNC_EVERY`] the full list of users online on that node. A node that has
//!   not been heard from for [`PEER_TIMEOUT`] (it crashed or lost NATS) counts as having no
//!   one online, so its users go offline on the other nodes.
//!
//! Each message names the node it came from (a random id per process), so a node ignores its
//! own. Messages are best-effort: a lost one is repaired by the next `sync`.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use schema::{RoomId, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

/// How often a node publishes its whole online list.
pub const SYNC_EVERY: Duration = Duration::from_secs(5);
/// A node silent for this long counts as gone.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(15);
/// Messages waiting to be published; beyond this, ephemeral messages are dropped.
const OUTBOX: usize = 4096;

/// What one node tells the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PeerMessage {
    Typing { room: RoomId, user: UserId },
    Presence { user: UserId, online: bool },
    Sync { users: Vec<UserId> },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    node: Uuid,
    name: String,
    #[serde(flatten)]
    message: PeerMessage,
}

/// The NATS link of one node.
#[derive(Debug, Clone)]
pub struct Peers {
    client: async_nats::Client,
    prefix: String,
    name: String,
    node: Uuid,
}

/// Publishes this node's messages without ever blocking the hub.
#[derive(Debug, Clone)]
pub struct Outbox(mpsc::Sender<PeerMessage>);

impl Outbox {
    pub fn send(&self, message: PeerMessage) {
        if self.0.try_send(message).is_err() {
            tracing::debug!("peer outbox full; dropping an ephemeral message");
        }
    }
}

impl Peers {
    pub fn new(client: async_nats::Client, prefix: String, name: String) -> Self {
        Self {
            client,
            prefix,
            name,
            node: Uuid::new_v4(),
        }
    }

    /// The other nodes' messages, with the id of the node each came from.
    pub async fn incoming(&self) -> anyhow::Result<BoxStream<'static, (Uuid, PeerMessage)>> {
        let own = self.node;
        let sub = self.client.subscribe(format!("{}.>", self.prefix)).await?;
        Ok(sub
            .filter_map(move |m| async move {
                match serde_json::from_slice::<Envelope>(&m.payload) {
                    Ok(e) if e.node != own => Some((e.node, e.message)),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(subject = %m.subject, error = %e, "bad peer message");
                        None
                    }
                }
            })
            .boxed())
    }

    /// Starts the publisher task; it ends when every [`Outbox`] is dropped.
    pub fn outbox(&self) -> Outbox {
        let (tx, mut rx) = mpsc::channel::<PeerMessage>(OUTBOX);
        let peers = self.clone();
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                let kind = match &message {
                    PeerMessage::Typing { .. } => "typing",
                    PeerMessage::Presence { .. } => "presence",
                    PeerMessage::Sync { .. } => "sync",
                };
                let envelope = Envelope {
                    node: peers.node,
                    name: peers.name.clone(),
                    message,
                };
                let Ok(payload) = serde_json::to_vec(&envelope) else {
                    continue;
                };
                let subject = format!("{}.{kind}", peers.prefix);
                if let Err(e) = peers.client.publish(subject, payload.into()).await {
                    tracing::debug!(error = %e, "cannot publish to peers");
                }
            }
        });
        Outbox(tx)
    }
}
