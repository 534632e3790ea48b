//! The baseline: a bare WebSocket broadcast server with chatd's frame shape and nothing else
//! (no persistence, no auth, no projections). `GET /ws?user=<id>&rooms=<id>,<id>`; a `send`
//! gets the next seq of its room, one serialised `event` frame shared by every member's bounded
//! queue, and an `ack`. What chatd achieves is reported as a fraction of this.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use uuid::Uuid;

/// Frames queued per connection before it is dropped (as chatd's default).
const QUEUE: usize = 4096;

#[derive(Default)]
struct Room {
    seq: u64,
    members: Vec<(u64, mpsc::Sender<Arc<str>>)>,
}

type Rooms = Arc<Mutex<HashMap<String, Room>>>;

#[derive(Deserialize)]
struct Send {
    #[serde(rename = "type")]
    kind: String,
    room_id: String,
    body: String,
    client_msg_id: String,
}

/// Serves until the process ends.
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let rooms: Rooms = Arc::default();
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

async fn connection(stream: TcpStream, rooms: Rooms, id: u64) {
    let _ = stream.set_nodelay(true);
    let mut query = String::new();
    #[allow(clippy::result_large_err)] // the callback's signature is tungstenite's
    let callback = |req: &Request, resp: Response| {
        query = req.uri().query().unwrap_or_default().to_owned();
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async(stream, callback).await;
    let Ok(ws) = ws else { return };
    let params: HashMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let user = params.get("user").copied().unwrap_or_default().to_owned();
    let joined: Vec<String> = params
        .get("rooms")
        .map(|r| {
            r.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let (tx, mut rx) = mpsc::channel::<Arc<str>>(QUEUE);
    {
        let mut rooms = rooms.lock().unwrap_or_else(|e| e.into_inner());
        for room in &joined {
            rooms
                .entry(room.clone())
                .or_default()
                .members
                .push((id, tx.clone()));
        }
    }
    let (mut sink, mut incoming) = ws.split();
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(text) => if sink.send(Message::text(text.to_string())).await.is_err() { break },
                None => break,
            },
            msg = incoming.next() => {
                let Some(Ok(Message::Text(text))) = msg else {
                    if matches!(msg, Some(Ok(_))) { continue }
                    break;
                };
                let Ok(send) = serde_json::from_str::<Send>(text.as_str()) else { continue };
                if send.kind != "send" {
                    continue;
                }
                let message_id = Uuid::new_v4();
                let seq = {
                    let mut rooms = rooms.lock().unwrap_or_else(|e| e.into_inner());
                    let room = rooms.entry(send.room_id.clone()).or_default();
                    room.seq += 1;
                    let frame: Arc<str> = json!({"type": "event", "room_id": send.room_id, "seq": room.seq,
                        "event": {"type": "message_sent", "seq": room.seq, "message_id": message_id,
                                  "sender_id": user, "body": send.body}})
                    .to_string()
                    .into();
                    // A full queue drops the member, as chatd does.
                    room.members.retain(|(_, m)| m.try_send(frame.clone()).is_ok());
                    room.seq
                };
                let ack = json!({"type": "ack", "client_msg_id": send.client_msg_id,
                    "message_id": message_id, "seq": seq});
                if sink.send(Message::text(ack.to_string())).await.is_err() {
                    break;
                }
            }
        }
    }
    let mut rooms = rooms.lock().unwrap_or_else(|e| e.into_inner());
    for room in &joined {
        if let Some(r) = rooms.get_mut(room) {
            r.members.retain(|(m, _)| *m != id);
        }
    }
}
