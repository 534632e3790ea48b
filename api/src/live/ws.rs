//! `GET /v1/ws`: one task per connection.
//!
//! The connection registers with the hub *before* it replays anything, so live frames that
//! arrive during a catch-up wait in its queue; each room's last sent seq then drops what the
//! catch-up already sent and fills any gap from the log. Per room: seq order, no gap, no
//! duplicate across the seam.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use poem::web::Data;
use poem::web::websocket::{CloseCode, Message, WebSocket, WebSocketStream};
use poem::{IntoResponse, Request, Response, handler};
use schema::{MessageBody, RoomId, UserId, streams};
use serde_json::json;

use super::frames::{self, ClientFrame, EventFrame};
use super::hub::{Disconnect, Hub};
use crate::http::ApiError;
use crate::service::{Chat, ServiceError};

/// Close code telling the client to reconnect and resume (it fell behind, or the server is
/// going away). 4000–4999 are application codes.
pub const CLOSE_RESUME: u16 = 4000;
const PING_EVERY: Duration = Duration::from_secs(20);
/// A peer that sends nothing (not even a pong) for this long is dead.
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// Frames a client may send per second, and in a burst.
const RATE: f64 = 20.0;
const BURST: f64 = 40.0;
const CATCH_UP_PAGE: usize = 500;
/// Live frames wait (in the bounded queue) until the client's first frame — normally its
/// `resume` — has been handled, so a replay never arrives after newer live events; a client
/// that says nothing goes live after this long.
const RESUME_GRACE: Duration = Duration::from_secs(2);

fn token(req: &Request) -> Option<String> {
    if let Some(h) = req.header("authorization") {
        return h.strip_prefix("Bearer ").map(str::to_owned);
    }
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("access_token=").map(str::to_owned))
}

/// Authenticates at the upgrade: no or a bad token is a 401, never a served socket.
#[handler]
pub async fn ws(
    req: &Request,
    socket: WebSocket,
    chat: Data<&Arc<Chat>>,
    hub: Data<&Hub>,
) -> Response {
    let Some(claims) = token(req).and_then(|t| chat.auth().verify_access(&t)) else {
        return ApiError::unauthorized("a valid access token is required (header or access_token)")
            .into_response();
    };
    let (chat, hub, user) = (chat.0.clone(), hub.0.clone(), UserId(claims.sub));
    socket
        .on_upgrade(move |stream| async move {
            if let Err(e) = Connection::run(chat, hub, user, stream).await {
                tracing::debug!(error = %e, "websocket ended with an error");
            }
        })
        .into_response()
}

struct Connection {
    chat: Arc<Chat>,
    user: UserId,
    /// Last seq sent per room; rooms not present start live.
    sent: HashMap<RoomId, u64>,
    tokens: f64,
    refilled: Instant,
}

type Sink = futures::stream::SplitSink<WebSocketStream, Message>;

impl Connection {
    async fn run(
        chat: Arc<Chat>,
        hub: Hub,
        user: UserId,
        stream: WebSocketStream,
    ) -> anyhow::Result<()> {
        let (mut sink, mut incoming) = stream.split();
        let Some(mut reg) = hub.register(user).await else {
            close(&mut sink, CLOSE_RESUME, "server is restarting").await;
            return Ok(());
        };
        let mut conn = Connection {
            chat,
            user,
            sent: HashMap::new(),
            tokens: BURST,
            refilled: Instant::now(),
        };
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut last_heard = Instant::now();
        let mut live = false;
        let grace = tokio::time::sleep(RESUME_GRACE);
        tokio::pin!(grace);
        let result = loop {
            tokio::select! {
                () = &mut grace, if !live => live = true,
                frame = reg.frames.recv(), if live => match frame {
                    Some(frame) => {
                        if let Err(e) = conn.forward(&mut sink, frame).await {
                            break Err(e);
                        }
                    }
                    None => {
                        let (code, why) = match reg.reason.get() {
                            Disconnect::TooSlow => (CLOSE_RESUME, "too slow: reconnect and resume"),
                            _ => (u16::from(CloseCode::Restart), "server is restarting: resume"),
                        };
                        close(&mut sink, code, why).await;
                        break Ok(());
                    }
                },
                message = incoming.next() => {
                    last_heard = Instant::now();
                    match message {
                        Some(Ok(Message::Text(text))) => {
                            if let Err(e) = conn.on_text(&mut sink, &text).await {
                                break Err(e);
                            }
                            live = true;
                        }
                        Some(Ok(Message::Binary(_))) => {
                            conn.reply(&mut sink, frames::error(None, "bad_frame", "frames are JSON text")).await?;
                        }
                        Some(Ok(Message::Close(_))) | None => break Ok(()),
                        Some(Ok(_)) => {} // ping/pong: the library answers pings
                        Some(Err(e)) => break Err(e.into()),
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > IDLE_LIMIT {
                        close(&mut sink, u16::from(CloseCode::Away), "no traffic: presumed dead").await;
                        break Ok(());
                    }
                    if sink.send(Message::Ping(Vec::new())).await.is_err() {
                        break Ok(());
                    }
                }
            }
        };
        hub.unregister(reg.id).await;
        result
    }

    async fn reply(&self, sink: &mut Sink, text: String) -> anyhow::Result<()> {
        sink.send(Message::Text(text)).await?;
        Ok(())
    }

    /// Sends a live frame unless the catch-up already did; fills a gap from the log first.
    async fn forward(&mut self, sink: &mut Sink, frame: EventFrame) -> anyhow::Result<()> {
        if let Some(&last) = self.sent.get(&frame.room) {
            if frame.seq <= last {
                return Ok(());
            }
            if frame.seq > last + 1 {
                self.catch_up(sink, frame.room, last, Some(frame.seq - 1))
                    .await?;
            }
        }
        sink.send(Message::Text(frame.text.to_string())).await?;
        self.sent.insert(frame.room, frame.seq);
        Ok(())
    }

    /// Sends the room's events with seq in (after, until] from the log.
    async fn catch_up(
        &mut self,
        sink: &mut Sink,
        room: RoomId,
        after: u64,
        until: Option<u64>,
    ) -> anyhow::Result<()> {
        let stream = streams::room(room);
        let mut next = after + 1;
        loop {
            let page = self.chat.log_read(&stream, next, CATCH_UP_PAGE).await?;
            let n = page.len();
            for recorded in page {
                if until.is_some_and(|u| recorded.version > u) {
                    return Ok(());
                }
                let frame = EventFrame::new(room, &recorded);
                sink.send(Message::Text(frame.text.to_string())).await?;
                self.sent.insert(room, recorded.version);
                next = recorded.version + 1;
            }
            if n < CATCH_UP_PAGE {
                return Ok(());
            }
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * RATE).min(BURST);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    async fn on_text(&mut self, sink: &mut Sink, text: &str) -> anyhow::Result<()> {
        if !self.allow() {
            return self
                .reply(sink, frames::error(None, "rate_limited", "slow down"))
                .await;
        }
        let frame = match ClientFrame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                return self
                    .reply(sink, frames::error(None, e.code, &e.detail))
                    .await;
            }
        };
        match frame {
            ClientFrame::Ping => self.reply(sink, frames::pong()).await,
            ClientFrame::Resume { rooms } => {
                for (room, after) in rooms {
                    if let Err(e) = self.chat.require_member(self.user, room).await {
                        let (code, detail) = problem(e);
                        self.reply(sink, frames::error(Some(&room.to_string()), &code, &detail))
                            .await?;
                        continue;
                    }
                    let from = self.sent.get(&room).copied().unwrap_or(after).max(after);
                    self.catch_up(sink, room, from, None).await?;
                    self.sent.entry(room).or_insert(after);
                }
                Ok(())
            }
            ClientFrame::Send {
                room_id,
                body,
                client_msg_id,
            } => {
                let result = match (
                    MessageBody::parse(&body),
                    schema::values::parse_client_msg_id(&client_msg_id),
                ) {
                    (Ok(body), Ok(key)) => {
                        self.chat
                            .send(self.user, room_id, body, Some(key.to_owned()))
                            .await
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e.into()),
                };
                let text = match result {
                    Ok(sent) => json!({"type": "ack", "client_msg_id": client_msg_id,
                        "message_id": sent.message_id, "seq": sent.seq})
                    .to_string(),
                    Err(e) => {
                        let (code, detail) = problem(e);
                        frames::error(Some(&client_msg_id), &code, &detail)
                    }
                };
                self.reply(sink, text).await
            }
            ClientFrame::Read { room_id, seq } => {
                match self.chat.mark_read(self.user, room_id, seq).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        let (code, detail) = problem(e);
                        self.reply(
                            sink,
                            frames::error(Some(&room_id.to_string()), &code, &detail),
                        )
                        .await
                    }
                }
            }
            // Typing indicators arrive with presence (issue 4, next step); accepted and ignored.
            ClientFrame::Typing { .. } => Ok(()),
        }
    }
}

/// The stable code and detail the REST API would give for this error.
fn problem(e: ServiceError) -> (String, String) {
    let ApiError::Problem(_, p) = ApiError::from(e);
    (p.0.code, p.0.detail)
}

async fn close(sink: &mut Sink, code: u16, reason: &str) {
    let _ = sink
        .send(Message::Close(Some((
            CloseCode::from(code),
            reason.to_owned(),
        ))))
        .await;
    let _ = sink.close().await;
}
