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
use poem::web::websocket::{CloseCode, Message, WebSocketConfig, WebSocketStream};
use schema::events::Event;
use schema::{MessageBody, MessageId, RoomId, UserId, streams};

use super::unread::{self, UnreadPush};
use crate::chat::{Chat, ChatError, Code, Refusal};
use crate::live::frames::{AckFrame, ClientFrame, EventFrame, PongFrame, ServerFrame};
use crate::live::hub::{ConnKind, Disconnect, Hub, Outbound};
use crate::ops::metrics::{ConnectionGauge, names};
use tracing::Instrument;

/// Close code telling the client to reconnect and resume (it fell behind, or the server is
/// going away). 4000–4999 are application codes.
pub const CLOSE_RESUME: u16 = 4000;
const PING_EVERY: Duration = Duration::from_secs(20);
/// A peer that sends nothing (not even a pong) for this long is dead.
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// Queued frames written out together, at most.
const BATCH: usize = 64;
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

/// Serves an upgraded socket of an authenticated user.
/// `rate`: frames the client may send per second (bursts of twice as many).
pub async fn serve(chat: Arc<Chat>, hub: Hub, user: UserId, rate: u32, stream: WebSocketStream) {
    if let Err(e) = Connection::run(chat, hub, user, f64::from(rate), stream).await {
        tracing::debug!(error = %e, "websocket ended with an error");
    }
}

struct Connection {
    chat: Arc<Chat>,
    hub: Hub,
    user: UserId,
    /// Last seq sent per room; rooms not present start live.
    sent: HashMap<RoomId, u64>,
    unread: UnreadPush,
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

/// The socket's sending half. Frames are buffered and flushed once per turn of the
/// connection's loop, so a burst of frames costs one write, not one each. Every write has a
/// deadline: a peer that takes nothing for [`WRITE_TIMEOUT`] has stopped reading, and the
/// connection ends.
struct Sink(futures::stream::SplitSink<WebSocketStream, Message>);

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
        user: UserId,
        rate: f64,
        stream: WebSocketStream,
    ) -> anyhow::Result<()> {
        let (sink, mut incoming) = stream.split();
        let mut sink = Sink(sink);
        let Some(mut reg) = hub.register(user, ConnKind::WebSocket).await else {
            close(&mut sink, CLOSE_RESUME, "server is restarting").await;
            return Ok(());
        };
        let _open = ConnectionGauge::open(names::WS_CONNECTIONS);
        let mut conn = Connection {
            chat,
            hub,
            user,
            sent: HashMap::new(),
            unread: UnreadPush::default(),
            rate,
            tokens: 2.0 * rate,
            refilled: Instant::now(),
        };
        // The first unread push is the baseline: every room with unread messages.
        conn.unread.mark(0);
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut last_heard = Instant::now();
        let mut live = false;
        let grace = tokio::time::sleep(RESUME_GRACE);
        tokio::pin!(grace);
        let flush = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(flush);
        let mut flush_armed = false;
        loop {
            if live && !flush_armed && conn.unread.is_dirty() {
                flush
                    .as_mut()
                    .reset(tokio::time::Instant::now() + unread::COALESCE);
                flush_armed = true;
            }
            tokio::select! {
                () = &mut grace, if !live => live = true,
                () = &mut flush, if flush_armed => {
                    flush_armed = false;
                    conn.push_unread(&mut sink).await?;
                }
                item = reg.frames.recv(), if live => match item {
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
                    if sink.send(Message::Ping(Vec::new())).await.is_err() {
                        return Ok(());
                    }
                }
            }
            sink.flush().await?;
        }
    }

    async fn reply(&self, sink: &mut Sink, frame: ServerFrame) -> anyhow::Result<()> {
        sink.send(Message::Text(frame.text())).await?;
        Ok(())
    }

    async fn outbound(&mut self, sink: &mut Sink, item: Outbound) -> anyhow::Result<()> {
        match item {
            Outbound::Event(frame) => {
                if frame.touches_unread_of(self.user) {
                    self.unread.mark(frame.position);
                }
                self.forward(sink, frame).await
            }
            Outbound::Notice(text) => {
                sink.send(Message::Text(text.to_string())).await?;
                Ok(())
            }
            Outbound::ReadMoved { position } => {
                self.unread.mark(position);
                Ok(())
            }
        }
    }

    async fn push_unread(&mut self, sink: &mut Sink) -> anyhow::Result<()> {
        let frames = match self.unread.changes(&self.chat, self.user).await {
            Ok(Some(frames)) => frames,
            // The read models have not caught up yet: the next flush tries again.
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read unread counts for a push");
                return Ok(());
            }
        };
        for frame in frames {
            self.reply(sink, ServerFrame::Unread(frame)).await?;
        }
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
        delivered();
        if frame.leaver == Some(self.user) {
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
        let mut next = after + 1;
        loop {
            let page = self
                .chat
                .log()
                .read_stream(&stream, next, CATCH_UP_PAGE)
                .await?;
            let n = page.len();
            // As live: an event the hub cannot decode is not delivered (it logs it).
            let events: Vec<Option<Event>> = page
                .iter()
                .map(|r| Event::decode(&r.event_type, r.schema_version, &r.data).ok())
                .collect();
            // Messages show their state now (read counts, replies, reactions, pin).
            let sent: Vec<_> = page
                .iter()
                .zip(&events)
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
            for (recorded, event) in page.into_iter().zip(events) {
                if until.is_some_and(|u| recorded.version > u) {
                    return Ok(());
                }
                if let Some(event) = event {
                    let state = match event {
                        Event::MessageSent { .. } => extras.next(),
                        _ => None,
                    };
                    let frame = EventFrame::new(room, &recorded, &event, state.as_ref());
                    sink.send(Message::Text(frame.text.to_string())).await?;
                    delivered();
                }
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
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * self.rate)
            .min(2.0 * self.rate);
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
            ClientFrame::Resume(resume) => {
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
                        let sent = self.chat.send(
                            self.user,
                            RoomId(send.room_id),
                            body,
                            Some(key.to_owned()),
                            send.reply_to.map(MessageId),
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
                let room = RoomId(read.room_id);
                match self.chat.mark_read(self.user, room, read.seq).await {
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
        .send(Message::Close(Some((
            CloseCode::from(code),
            reason.to_owned(),
        ))))
        .await;
    sink.close().await;
}

/// Counts one event frame written to a WebSocket.
fn delivered() {
    metrics::counter!(names::DELIVERIES, "transport" => "ws").increment(1);
}
