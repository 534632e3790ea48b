//! `GET /v1/ws`: one task per connection.
//!
//! The connection registers with the hub *before* it replays anything, so live frames that
//! arrive during a catch-up wait in its queue; each room's last sent seq then drops what the
//! catch-up already sent and fills any gap from the log. Per room: seq order, no gap, no
//! duplicate across the seam.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use schema::events::Event;
use schema::{IdMap, MessageBody, MessageId, RoomId, SessionId, UserId, streams};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::unread::{self, UnreadPush};
use crate::chat::auth::Caller;
use crate::chat::auth::TokenRefusal;
use crate::chat::{Chat, ChatError, Code, Consistency, Refusal};
use crate::live::frames::{AckFrame, ClientFrame, EventFrame, PongFrame, ServerFrame};
use crate::live::hub::{ConnKind, Disconnect, Hub, Outbound};
use crate::ops::metrics::{ConnectionGauge, names};
use tracing::Instrument;

/// A server-side WebSocket over an upgraded HTTP connection (the upgrade is `http`'s).
pub type Socket = tokio_tungstenite::WebSocketStream<poem::Upgraded>;

/// Close code telling the client to reconnect and resume (it fell behind, or the server is
/// going away). 4000–4999 are application codes.
pub const CLOSE_RESUME: u16 = 4000;
const PING_EVERY: Duration = Duration::from_secs(20);
/// A peer that sends nothing (not even a pong) for this long is dead.
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// Queued frames written out together, at most.
const BATCH: usize = 512;
/// A busy connection writes at most this often: frames that come sooner after a write wait
/// (in the hub's queue, without waking the task) and go out together with the next one. A
/// connection of a busy room gets thousands of frames a second; one write (and one wake-up)
/// each would cost more than everything else it does. An idle connection writes at once.
const WRITE_EVERY: Duration = Duration::from_millis(5);
/// A peer that takes nothing we write for this long has stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const CATCH_UP_PAGE: usize = 500;
/// Live frames wait (in the bounded queue) until the client's first frame — normally its
/// `resume` — has been handled, so a replay never arrives after newer live events; a client
/// that says nothing goes live after this long.
const RESUME_GRACE: Duration = Duration::from_secs(2);

/// Buffers sized for many mostly idle connections: the library's defaults (128 KiB read
/// buffer allocated up front) would cost ~130 KiB per connection. Messages over 64 KiB close
/// the connection (1009); up to that, frames over [`MAX_CLIENT_FRAME`] get an error frame.
///
/// [`MAX_CLIENT_FRAME`]: crate::live::frames::MAX_CLIENT_FRAME
pub fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024))
}

/// Close code: the connection's session has ended (log in again).
pub const CLOSE_SESSION_ENDED: u16 = 4001;
/// Close code: the access token expired and no fresh one came in an `auth` frame (reconnect
/// with a fresh token).
pub const CLOSE_TOKEN_EXPIRED: u16 = 4002;

/// Serves an upgraded socket of an authenticated caller. The frames it may send come out of
/// the user's send budget (`CHAT_WS_RATE`), shared by all their sockets and REST sends.
pub async fn serve(chat: Arc<Chat>, hub: Hub, caller: Caller, stream: Socket) {
    if let Err(e) = Connection::run(chat, hub, caller, stream).await {
        tracing::debug!(error = %e, "websocket ended with an error");
    }
}

/// When a token expiring at `exp` (Unix seconds) expires, as a timer deadline.
pub(super) fn expiry(exp: i64) -> tokio::time::Instant {
    let left = (exp - chrono::Utc::now().timestamp()).max(0);
    tokio::time::Instant::now() + Duration::from_secs(left as u64)
}

struct Connection {
    chat: Arc<Chat>,
    hub: Hub,
    user: UserId,
    session: SessionId,
    /// When the newest token presented expires.
    expires: tokio::time::Instant,
    /// Last seq sent per room; rooms not present start live.
    sent: IdMap<RoomId, u64>,
    unread: UnreadPush,
    /// `chat_deliveries_total{transport="ws"}`, and the deliveries of this turn not yet
    /// added to it (added once per write, not once per frame).
    delivered: metrics::Counter,
    delivered_now: u64,
}

/// The socket's sending half. Frames are buffered and flushed once per turn of the
/// connection's loop, so a burst of frames costs one write, not one each. Every write has a
/// deadline: a peer that takes nothing for [`WRITE_TIMEOUT`] has stopped reading, and the
/// connection ends.
struct Sink(futures::stream::SplitSink<Socket, Message>);

impl Sink {
    /// Buffers a frame (writing out when the buffer is full).
    async fn send(&mut self, message: Message) -> anyhow::Result<()> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.0.feed(message)).await {
            Ok(sent) => Ok(sent?),
            Err(_) => anyhow::bail!("the peer stopped reading"),
        }
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.0.flush()).await {
            Ok(flushed) => Ok(flushed?),
            Err(_) => anyhow::bail!("the peer stopped reading"),
        }
    }

    async fn close(&mut self) {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, self.0.close()).await;
    }
}

impl Connection {
    async fn run(
        chat: Arc<Chat>,
        hub: Hub,
        Caller(user, session, expires): Caller,
        stream: Socket,
    ) -> anyhow::Result<()> {
        let (sink, mut incoming) = stream.split();
        let mut sink = Sink(sink);
        let Some(mut reg) = hub.register(user, session, ConnKind::WebSocket).await else {
            close(&mut sink, CLOSE_RESUME, "server is restarting").await;
            return Ok(());
        };
        let unread = UnreadPush::watch(&chat, user);
        let _open = ConnectionGauge::open(names::WS_CONNECTIONS);
        let mut conn = Connection {
            chat,
            hub,
            user,
            session,
            expires: expiry(expires),
            sent: IdMap::default(),
            unread,
            delivered: metrics::counter!(names::DELIVERIES, "transport" => "ws"),
            delivered_now: 0,
        };
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut last_heard = Instant::now();
        let mut live = false;
        let grace = tokio::time::sleep(RESUME_GRACE);
        tokio::pin!(grace);
        let flush = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(flush);
        let mut flush_armed = false;
        // One timer for the token's expiry, moved when an `auth` frame extends it (a timer
        // made afresh each turn would be registered and dropped once per frame).
        let expired = tokio::time::sleep_until(conn.expires);
        tokio::pin!(expired);
        // When the last write went out, and the timer of the next one while it is held back.
        let mut written = tokio::time::Instant::now() - WRITE_EVERY;
        let next_write = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(next_write);
        let mut write_held = false;
        loop {
            if expired.deadline() != conn.expires {
                expired.as_mut().reset(conn.expires);
            }
            tokio::select! {
                () = &mut expired => {
                    close(&mut sink, CLOSE_TOKEN_EXPIRED, Code::TokenExpired.as_str()).await;
                    return Ok(());
                }
                () = &mut grace, if !live => live = true,
                // Unread counts changed (the first time: the baseline is ready); pushed
                // together after a pause.
                () = conn.unread.changed(), if live && !flush_armed => {
                    flush
                        .as_mut()
                        .reset(tokio::time::Instant::now() + unread::COALESCE);
                    flush_armed = true;
                }
                () = &mut flush, if flush_armed => {
                    flush_armed = false;
                    for frame in conn.unread.changes(&conn.chat).await? {
                        conn.reply(&mut sink, ServerFrame::Unread(frame)).await?;
                    }
                }
                () = &mut next_write, if write_held => {
                    write_held = false;
                    for _ in 0..BATCH {
                        if !live {
                            break;
                        }
                        let Ok(item) = reg.frames.try_recv() else { break };
                        conn.outbound(&mut sink, item).await?;
                    }
                }
                item = reg.frames.recv(), if live && !write_held => match item {
                    Some(item) => {
                        conn.outbound(&mut sink, item).await?;
                        // Take what else is queued now, to write it out in one go.
                        for _ in 0..BATCH {
                            let Ok(item) = reg.frames.try_recv() else { break };
                            conn.outbound(&mut sink, item).await?;
                        }
                    }
                    None => {
                        let (code, why) = match reg.reason.get() {
                            Disconnect::TooSlow => (CLOSE_RESUME, "too slow: reconnect and resume"),
                            Disconnect::SessionEnded => (CLOSE_SESSION_ENDED, Code::SessionEnded.as_str()),
                            _ => (u16::from(CloseCode::Restart), "server is restarting: resume"),
                        };
                        close(&mut sink, code, why).await;
                        return Ok(());
                    }
                },
                message = incoming.next() => {
                    last_heard = Instant::now();
                    match message {
                        Some(Ok(Message::Text(text))) => {
                            // Whatever was queued before this frame goes out before its
                            // answer (a `ping` is a barrier).
                            while live && let Ok(item) = reg.frames.try_recv() {
                                conn.outbound(&mut sink, item).await?;
                            }
                            conn.on_text(&mut sink, &text).await?;
                            live = true;
                        }
                        Some(Ok(Message::Binary(_))) => {
                            conn.reply(&mut sink, ServerFrame::error(None, Code::BadFrame, "frames are JSON text")).await?;
                        }
                        Some(Ok(Message::Close(_))) | None => return Ok(()),
                        Some(Ok(_)) => {} // ping/pong: the library answers pings
                        Some(Err(e)) => return Err(e.into()),
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > IDLE_LIMIT {
                        close(&mut sink, u16::from(CloseCode::Away), "no traffic: presumed dead").await;
                        return Ok(());
                    }
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        return Ok(());
                    }
                }
            }
            conn.delivered
                .increment(std::mem::take(&mut conn.delivered_now));
            let now = tokio::time::Instant::now();
            if now >= written + WRITE_EVERY {
                sink.flush().await?;
                written = now;
            } else if !write_held {
                next_write.as_mut().reset(written + WRITE_EVERY);
                write_held = true;
            }
        }
    }

    async fn reply(&self, sink: &mut Sink, frame: ServerFrame) -> anyhow::Result<()> {
        sink.send(Message::text(frame.text())).await?;
        Ok(())
    }

    async fn outbound(&mut self, sink: &mut Sink, item: Outbound) -> anyhow::Result<()> {
        match item {
            Outbound::Event(frame) => self.forward(sink, frame).await,
            Outbound::Notice(text) => {
                sink.send(Message::Text(text)).await?;
                Ok(())
            }
        }
    }

    /// Sends a live frame unless the catch-up already did; fills a gap from the log first.
    async fn forward(&mut self, sink: &mut Sink, frame: Arc<EventFrame>) -> anyhow::Result<()> {
        if let Some(&last) = self.sent.get(&frame.room) {
            if frame.seq <= last {
                return Ok(());
            }
            if frame.seq > last + 1 {
                self.catch_up(sink, frame.room, last, Some(frame.seq - 1))
                    .await?;
            }
        }
        sink.send(Message::Text(frame.text.clone())).await?;
        self.delivered_now += 1;
        if frame.removes(self.user) {
            // The room goes quiet; a later rejoin starts live from the join, without what
            // happened while away.
            self.sent.remove(&frame.room);
        } else {
            self.sent.insert(frame.room, frame.seq);
        }
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
        // Nothing comes after the largest seq (and `after + 1` would overflow).
        let Some(mut next) = after.checked_add(1) else {
            return Ok(());
        };
        loop {
            let page = self
                .chat
                .log()
                .read_stream(&stream, next, CATCH_UP_PAGE)
                .await?;
            let n = page.len();
            let page: Vec<_> = page
                .into_iter()
                .take_while(|recorded| until.is_none_or(|u| recorded.version <= u))
                .map(|recorded| {
                    // As live: an event the hub cannot decode is not delivered (it logs it).
                    let event = Event::decode(
                        &recorded.event_type,
                        recorded.schema_version,
                        &recorded.data,
                    );
                    (recorded, event.ok())
                })
                .collect();
            let done = n < CATCH_UP_PAGE || page.len() < n;
            // Read back from the log, so shown as the messages stand now.
            let now = self
                .chat
                .messages_now(room, page.iter().filter_map(|(_, e)| e.as_ref()))
                .await?;
            // Messages show their state now (read counts, replies, reactions, pin).
            let sent: Vec<_> = page
                .iter()
                .filter_map(|(r, e)| match e {
                    Some(Event::MessageSent {
                        message_id,
                        sender_id,
                        ..
                    }) => Some((*message_id, r.version, *sender_id)),
                    _ => None,
                })
                .collect();
            let mut extras = self.chat.extras(room, self.user, sent).await?.into_iter();
            for (recorded, event) in page {
                if let Some(event) = event {
                    let state = match event {
                        Event::MessageSent { .. } => extras.next(),
                        _ => None,
                    };
                    let frame =
                        EventFrame::new(room, &recorded, &event, now.of(&event), state.as_ref());
                    sink.send(Message::Text(frame.text.clone())).await?;
                    self.delivered_now += 1;
                }
                self.sent.insert(room, recorded.version);
                next = recorded.version + 1;
            }
            if done {
                return Ok(());
            }
        }
    }

    async fn on_text(&mut self, sink: &mut Sink, text: &str) -> anyhow::Result<()> {
        if self.chat.limits().sends.take(self.user, 1).is_err() {
            return self
                .reply(
                    sink,
                    ServerFrame::error(None, Code::RateLimited, "slow down"),
                )
                .await;
        }
        let frame = match ClientFrame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                return self
                    .reply(sink, ServerFrame::error(None, e.code, &e.detail))
                    .await;
            }
        };
        match frame {
            ClientFrame::Ping(_) => self.reply(sink, ServerFrame::Pong(PongFrame {})).await,
            ClientFrame::Auth(auth) => {
                let refusal = match self.chat.auth().verify_access(&auth.access_token) {
                    Ok(claims) if claims.sub == self.user.0 && claims.sid == self.session.0 => {
                        self.expires = expiry(claims.exp);
                        return Ok(());
                    }
                    Ok(_) => Refusal::new(
                        Code::Unauthorized,
                        "a token of another session: open a new connection",
                    ),
                    Err(TokenRefusal::SessionEnded) => {
                        Refusal::new(Code::SessionEnded, "the session has ended")
                    }
                    Err(TokenRefusal::Invalid) => {
                        Refusal::new(Code::Unauthorized, "the access token is invalid or expired")
                    }
                };
                self.reply(
                    sink,
                    ServerFrame::error(None, refusal.code, &refusal.detail),
                )
                .await
            }
            ClientFrame::Resume(resume) => {
                let limits = self.chat.limits();
                if resume.rooms.len() > limits.resume_max_rooms {
                    let detail = format!("at most {} rooms per resume", limits.resume_max_rooms);
                    return self
                        .reply(sink, ServerFrame::error(None, Code::TooManyRooms, &detail))
                        .await;
                }
                if limits.resumes.take(self.user, 1).is_err() {
                    return self
                        .reply(
                            sink,
                            ServerFrame::error(None, Code::RateLimited, "too many resumes"),
                        )
                        .await;
                }
                for (room, after) in resume.rooms {
                    let room = RoomId(room);
                    if let Err(e) = self.chat.require_member(self.user, room).await {
                        self.reply(sink, refusal(room.to_string(), e)).await?;
                        continue;
                    }
                    // The client's seq is authoritative: everything after it, even what went
                    // out live before this resume (clients drop seqs they hold).
                    self.catch_up(sink, room, after, None).await?;
                    self.sent.entry(room).or_insert(after);
                }
                Ok(())
            }
            ClientFrame::Send(send) => {
                let result = match (
                    MessageBody::parse(&send.body),
                    schema::values::parse_client_msg_id(&send.client_msg_id),
                ) {
                    (Ok(body), Ok(key)) => {
                        // One trace per send, as for REST: its events carry the span's
                        // context to every consumer.
                        let span = tracing::info_span!("ws.send", room.id = %send.room_id);
                        let trace = tracecontext::of(&span);
                        let sent = self.chat.send_with(
                            self.user,
                            RoomId(send.room_id),
                            body,
                            Some(key.to_owned()),
                            send.reply_to.map(MessageId),
                            Consistency::Durable(self.user),
                        );
                        tracecontext::scope(trace, sent).instrument(span).await
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e.into()),
                };
                let frame = match result {
                    Ok(sent) => ServerFrame::Ack(AckFrame {
                        client_msg_id: send.client_msg_id,
                        message_id: sent.message_id.0,
                        seq: sent.seq,
                    }),
                    Err(e) => refusal(send.client_msg_id, e),
                };
                self.reply(sink, frame).await
            }
            ClientFrame::Read(read) => {
                // Like a send: once durable. The count moves on this socket when the read
                // models show it; the user's next read (GET) waits for them.
                let room = RoomId(read.room_id);
                let durable = Consistency::Durable(self.user);
                match self
                    .chat
                    .mark_read(self.user, room, read.seq, durable)
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(e) => self.reply(sink, refusal(room.to_string(), e)).await,
                }
            }
            ClientFrame::Typing(typing) => {
                let room = RoomId(typing.room_id);
                if self.hub.typing(self.user, room).await {
                    return Ok(());
                }
                // Not a member as far as the hub knows: answer as the REST API would.
                match self.chat.require_member(self.user, room).await {
                    Ok(()) => Ok(()),
                    Err(e) => self.reply(sink, refusal(room.to_string(), e)).await,
                }
            }
        }
    }
}

/// An `error` frame with the stable code and detail the REST API would give for `e`.
fn refusal(reference: String, e: ChatError) -> ServerFrame {
    let r = Refusal::from(e);
    ServerFrame::error(Some(reference), r.code, &r.detail)
}

async fn close(sink: &mut Sink, code: u16, reason: &str) {
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        })))
        .await;
    sink.close().await;
}
