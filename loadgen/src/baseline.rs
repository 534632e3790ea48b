//! The baseline: the best bare WebSocket broadcast server we can write on chatd's stack (tokio
//! and tokio-tungstenite, the library under chatd's web framework), with chatd's frame shapes
//! and nothing else (no persistence, no auth, no projections). It is the physical limit the
//! load generator measures chatd against, on the same machine.
//!
//! `GET /ws?user=<id>&rooms=<id>,<id>`. A `send` takes the next seq of its room and is fanned
//! out under that room's own lock (rooms live in sharded maps; no global lock): the `event`
//! frame is serialised once and every member's bounded queue gets a reference to the same
//! bytes. Each connection's task, like chatd's, takes a queued frame, feeds every other frame
//! already queued (up to [`BATCH`]) and flushes once per turn of its loop; the `ack` goes
//! through the same buffer.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use uuid::Uuid;

/// Frames queued per connection before it is dropped from its rooms (chatd's default).
const QUEUE: usize = 4096;
/// Queued frames written out together, at most (as chatd).
const BATCH: usize = 64;
/// Room map shards.
const SHARDS: usize = 64;

#[derive(Default)]
struct Room {
    seq: u64,
    members: Vec<(u64, mpsc::Sender<Utf8Bytes>)>,
}

/// Rooms by id, in shards; each room has its own lock, held while it numbers and fans out a
/// message (so members see a room's messages in seq order).
struct Rooms {
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<String, Arc<Mutex<Room>>>>>,
}

impl Rooms {
    fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn room(&self, id: &str) -> Arc<Mutex<Room>> {
        let shard = &self.shards[self.hasher.hash_one(id) as usize % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(room) = shard.get(id) {
            return room.clone();
        }
        shard.entry(id.to_owned()).or_default().clone()
    }
}

#[derive(Deserialize)]
struct Send<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    room_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    body: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    client_msg_id: std::borrow::Cow<'a, str>,
}

/// chatd's socket buffers (chatd/src/live/ws.rs), so both pay the same per connection.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024))
}

/// Serves until the process ends.
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let rooms = Arc::new(Rooms::new());
    let mut next_id = 0u64;
    loop {
        let (stream, _) = listener.accept().await?;
        next_id += 1;
        tokio::spawn(connection(stream, rooms.clone(), next_id));
    }
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    Ok(TcpListener::bind(addr).await?)
}

async fn connection(stream: TcpStream, rooms: Arc<Rooms>, id: u64) {
    let _ = stream.set_nodelay(true);
    let mut query = String::new();
    #[allow(clippy::result_large_err)] // the callback's signature is tungstenite's
    let callback = |req: &Request, resp: Response| {
        query = req.uri().query().unwrap_or_default().to_owned();
        Ok(resp)
    };
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(socket_config()))
            .await;
    let Ok(ws) = ws else { return };
    let params: HashMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let user = params.get("user").copied().unwrap_or_default().to_owned();
    let joined: Vec<Arc<Mutex<Room>>> = params
        .get("rooms")
        .into_iter()
        .flat_map(|r| r.split(','))
        .filter(|s| !s.is_empty())
        .map(|r| rooms.room(r))
        .collect();
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(QUEUE);
    for room in &joined {
        let mut room = room.lock().unwrap_or_else(|e| e.into_inner());
        room.members.push((id, tx.clone()));
    }
    drop(tx);
    let (mut sink, mut incoming) = ws.split();
    loop {
        let turn = tokio::select! {
            frame = rx.recv() => match frame {
                Some(frame) => {
                    let mut fed = sink.feed(Message::Text(frame)).await;
                    // Take what else is queued now, to write it out in one go.
                    for _ in 0..BATCH {
                        let Ok(frame) = rx.try_recv() else { break };
                        if fed.is_err() { break }
                        fed = sink.feed(Message::Text(frame)).await;
                    }
                    fed.is_ok()
                }
                None => false,
            },
            msg = incoming.next() => match msg {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Send<'_>>(text.as_str()) {
                    Ok(send) if send.kind == "send" => {
                        let ack = fan_out(&rooms, &user, &send);
                        sink.feed(Message::text(ack)).await.is_ok()
                    }
                    _ => true,
                },
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => false,
                Some(Ok(_)) => true,
            },
        };
        if !turn || sink.flush().await.is_err() {
            break;
        }
    }
    for room in &joined {
        let mut room = room.lock().unwrap_or_else(|e| e.into_inner());
        room.members.retain(|(m, _)| *m != id);
    }
}

/// Numbers the message, queues one shared frame for every member, and returns the ack.
fn fan_out(rooms: &Rooms, user: &str, send: &Send<'_>) -> String {
    let message_id = Uuid::new_v4();
    let room = rooms.room(&send.room_id);
    let mut room = room.lock().unwrap_or_else(|e| e.into_inner());
    room.seq += 1;
    let seq = room.seq;
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let frame = Utf8Bytes::from(
        json!({"type": "event", "room_id": send.room_id, "seq": seq,
            "event": {"type": "message_sent", "message_id": message_id, "sender_id": user,
                      "body": send.body, "client_msg_id": send.client_msg_id, "seq": seq, "at": at}})
        .to_string(),
    );
    // A full queue drops the member (chatd closes it; its client would resume).
    room.members
        .retain(|(_, m)| m.try_send(frame.clone()).is_ok());
    drop(room);
    json!({"type": "ack", "client_msg_id": send.client_msg_id, "message_id": message_id, "seq": seq})
        .to_string()
}
