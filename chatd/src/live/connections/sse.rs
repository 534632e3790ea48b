//! `GET /v1/notifications`: Server-Sent Events for clients that only need to be told (a
//! notification service worker, a badge in another tab).
//!
//! `message` events (others' messages in your rooms; the SSE `id` is the log position) and
//! `unread` events (your counts, the first ones a baseline of every room with unread messages).
//! With `Last-Event-ID` the stream first replays the `message` events after that position,
//! scanning at most `CHAT_SSE_REPLAY_LIMIT` log events, a page at a time as the client reads,
//! keeping only the caller's rooms; further behind than that it starts live and the
//! unread baseline tells the client where it stands. Like the WebSocket, the connection
//! registers with the hub before it replays, and live events at or below the replayed position
//! are dropped, so nothing is missed or repeated at the seam.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use schema::events::Event;
use schema::{RoomId, UserId, streams};

use super::unread::{self, UnreadPush};
use crate::chat::auth::Caller;
use crate::chat::view::event_view;
use crate::chat::{Chat, ChatError, Code, Result};
use crate::limits::LiveSlot;
use crate::live::frames::{ClosedNotice, MessageNotice, Notification};
use crate::live::hub::{ConnKind, Disconnect, Hub, Outbound, Registration};
use crate::ops::metrics::{ConnectionGauge, names};

/// Comment lines sent when nothing else is, so proxies keep the stream open and dead peers are
/// found.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// Log events read per page of a `Last-Event-ID` replay (which scans at most
/// `CHAT_SSE_REPLAY_LIMIT` of them).
const REPLAY_PAGE: usize = 500;

struct Sse {
    chat: Arc<Chat>,
    user: UserId,
    reg: Registration,
    unread: UnreadPush,
    pending: VecDeque<Notification>,
    /// Live events at or below this position were covered by the replay.
    replayed_to: u64,
    /// The `Last-Event-ID` replay still to be read.
    replay: Option<Replay>,
    flush_at: Option<tokio::time::Instant>,
    /// Fires when the token the stream was opened with expires: the stream ends then. One
    /// timer for the stream's life (one made afresh per notification would be registered and
    /// dropped once per message).
    expired: Pin<Box<tokio::time::Sleep>>,
    /// `chat_deliveries_total{transport="sse"}`.
    delivered: metrics::Counter,
    /// The stream ends once `pending` is sent.
    ending: bool,
    _open: ConnectionGauge,
    _slot: LiveSlot,
}

/// The notification stream of `caller`, resuming after `last_event_id` when given. It ends
/// with a `closed` notification when the token expires or the session ends.
pub async fn notifications(
    chat: Arc<Chat>,
    hub: Hub,
    Caller(user, session, expires): Caller,
    last_event_id: Option<u64>,
    slot: LiveSlot,
) -> Result<BoxStream<'static, Notification>> {
    let reg = hub
        .register(user, session, ConnKind::Sse)
        .await
        .ok_or(ChatError::ShuttingDown)?;
    let unread = UnreadPush::watch(&chat, user);
    let mut sse = Sse {
        chat,
        user,
        reg,
        unread,
        pending: VecDeque::new(),
        replayed_to: 0,
        replay: None,
        flush_at: None,
        expired: Box::pin(tokio::time::sleep_until(super::ws::expiry(expires))),
        delivered: metrics::counter!(names::DELIVERIES, "transport" => "sse"),
        ending: false,
        _open: ConnectionGauge::open(names::SSE_CONNECTIONS),
        _slot: slot,
    };
    if let Some(after) = last_event_id {
        let limit = sse.chat.limits().sse_replay_limit;
        sse.start_replay(after, limit).await?;
    }
    Ok(stream::unfold(sse, Sse::next).boxed())
}

/// Whether `event` makes `me` a member of its room (`Some(true)`), ends it (`Some(false)`), or
/// neither.
fn membership(me: UserId, event: &Event) -> Option<bool> {
    match event {
        Event::RoomCreated { members, .. } if members.contains(&me) => Some(true),
        Event::MemberJoined { user_id, .. } if *user_id == me => Some(true),
        Event::MemberLeft { user_id } if *user_id == me => Some(false),
        _ => None,
    }
}

/// Event types that can change someone's membership.
const MEMBERSHIP_EVENTS: [&str; 3] = ["room_created", "member_joined", "member_left"];

/// A room event, decoded, when its room is in `rooms` or it changes membership: all a
/// replay of `me`'s notifications needs, the rest skipped undecoded. `rooms` must be the
/// caller's rooms just before this event (a page can join a room and then talk in it).
fn relevant(
    recorded: eventlog::RecordedEvent,
    rooms: &HashSet<RoomId>,
) -> Option<(eventlog::RecordedEvent, RoomId, Event)> {
    let room = streams::room_of(&recorded.stream)?;
    if !rooms.contains(&room) && !MEMBERSHIP_EVENTS.contains(&recorded.event_type.as_str()) {
        return None;
    }
    let event = Event::decode(
        &recorded.event_type,
        recorded.schema_version,
        &recorded.data,
    )
    .ok()?;
    Some((recorded, room, event))
}

/// A `Last-Event-ID` replay in progress: the log is read a page at a time as the client
/// takes the notifications, keeping only the caller's rooms.
struct Replay {
    /// Read after this position next.
    next: u64,
    /// Up to here (the head when the connection registered).
    end: u64,
    /// The caller's rooms at `next`.
    rooms: HashSet<RoomId>,
}

impl Sse {
    /// Prepares the replay of the `message` notifications after `after`. Membership at `after`
    /// is derived from a snapshot of the read models (rooms at checkpoint C): the caller's
    /// joins and leaves between `after` and C are undone, or those from C to `after` applied;
    /// then the replay follows joins and leaves as it goes.
    async fn start_replay(&mut self, after: u64, limit: u64) -> Result<()> {
        let log = self.chat.log();
        let head = log.head().await?;
        // An id from beyond the log (a restored backup, another server) resumes from now.
        let after = after.min(head);
        let (checkpoint, rooms) = self.chat.rooms_at_checkpoint(self.user).await?;
        let start = checkpoint.min(after);
        if head - start > limit {
            return Ok(()); // too far behind: live from now, with the unread baseline
        }
        let mut rooms: HashSet<RoomId> = rooms.into_iter().collect();
        let me = self.user;
        // Between the checkpoint and `after`, only the caller's membership matters.
        let mut changes = Vec::new();
        let mut position = start;
        while position < after.max(checkpoint) {
            let page = log.read_all(position, REPLAY_PAGE).await?;
            let Some(last) = page.last() else { break };
            position = last.position;
            let no_rooms = HashSet::new();
            for (recorded, room, event) in page.into_iter().filter_map(|r| relevant(r, &no_rooms)) {
                if recorded.position <= after.max(checkpoint)
                    && let Some(joined) = membership(me, &event)
                {
                    changes.push((recorded.position, room, joined));
                }
            }
        }
        if checkpoint > after {
            // Undo, newest first, what happened after `after`.
            for (_, room, joined) in changes.iter().rev() {
                if *joined {
                    rooms.remove(room);
                } else {
                    rooms.insert(*room);
                }
            }
        } else {
            for (_, room, joined) in changes {
                if joined {
                    rooms.insert(room);
                } else {
                    rooms.remove(&room);
                }
            }
        }
        self.replay = Some(Replay {
            next: after,
            end: head,
            rooms,
        });
        self.replayed_to = head;
        Ok(())
    }

    /// Queues the notifications of the replay's next page; ends the replay at its end.
    async fn replay_page(&mut self) -> Result<()> {
        let Some(replay) = self.replay.as_mut() else {
            return Ok(());
        };
        let page = self.chat.log().read_all(replay.next, REPLAY_PAGE).await?;
        let me = self.user;
        match page.last() {
            Some(last) if replay.next < replay.end => replay.next = last.position,
            _ => {
                self.replay = None;
                return Ok(());
            }
        }
        let end = replay.end;
        let mut notices = Vec::new();
        for recorded in page.into_iter().filter(|r| r.position <= end) {
            let Some((recorded, room, event)) = relevant(recorded, &replay.rooms) else {
                continue;
            };
            match (membership(me, &event), event) {
                (Some(true), _) => {
                    replay.rooms.insert(room);
                }
                (Some(false), _) => {
                    replay.rooms.remove(&room);
                }
                (None, event @ Event::MessageSent { sender_id, .. })
                    if sender_id != me && replay.rooms.contains(&room) =>
                {
                    notices.push((recorded, room, event));
                }
                _ => {}
            }
        }
        if replay.next >= end {
            self.replay = None;
        }
        // Read back from the read models, so shown as the messages stand now: a message
        // deleted since is not notified, an edited one previews its current text.
        let mut by_room: HashMap<RoomId, Vec<&Event>> = HashMap::new();
        for (_, room, event) in &notices {
            by_room.entry(*room).or_default().push(event);
        }
        let mut now = HashMap::new();
        for (room, events) in by_room {
            now.insert(room, self.chat.messages_now(room, events).await?);
        }
        for (recorded, room, event) in &notices {
            let view = event_view(
                event,
                recorded.version,
                recorded.recorded_at,
                now.get(room).and_then(|n| n.of(event)),
            );
            if let Some(notice) = MessageNotice::of(*room, recorded, event, &view) {
                let mentioned = matches!(event, Event::MessageSent { mentions, .. }
                    if mentions.iter().any(|m| m.addresses(me)));
                self.pending
                    .push_back(Notification::Message(notice.clone()));
                if mentioned {
                    self.pending.push_back(Notification::Mention(notice));
                }
            }
        }
        Ok(())
    }

    fn on(&mut self, item: Outbound) {
        match item {
            Outbound::Event(frame) => {
                if frame.position <= self.replayed_to {
                    return;
                }
                let mention = frame.mention_of(self.user);
                if let Some(notice) = &frame.notice
                    && notice.sender_id != self.user.0
                {
                    self.pending
                        .push_back(Notification::Message((**notice).clone()));
                }
                if let Some(mention) = mention {
                    self.pending.push_back(Notification::Mention(mention));
                }
            }
            Outbound::Notice(_) => {}
        }
    }

    /// Ends the stream with a `closed` notification saying why.
    fn end(&mut self, code: Code, detail: &str) {
        self.pending
            .push_back(Notification::Closed(ClosedNotice::new(code, detail)));
        self.ending = true;
    }

    async fn next(mut self) -> Option<(Notification, Self)> {
        loop {
            if let Some(n) = self.pending.pop_front() {
                if matches!(n, Notification::Message(_)) {
                    self.delivered.increment(1);
                }
                return Some((n, self));
            }
            if self.ending {
                return None;
            }
            if self.replay.is_some() {
                // Live events wait in the (bounded) queue until the replay is through.
                if let Err(e) = self.replay_page().await {
                    tracing::warn!(error = %e, "cannot read the log for an SSE replay");
                    return None; // the client reconnects with its Last-Event-ID
                }
                continue;
            }
            let flush_at = self.flush_at;
            let flush = async move {
                match flush_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.unread.changed(), if flush_at.is_none() => {
                    self.flush_at = Some(tokio::time::Instant::now() + unread::COALESCE);
                }
                () = flush => {
                    self.flush_at = None;
                    match self.unread.changes(&self.chat).await {
                        Ok(frames) => self.pending.extend(frames.into_iter().map(Notification::Unread)),
                        Err(e) => tracing::warn!(error = %e, "unread counts not pushed"),
                    }
                }
                () = self.expired.as_mut() => {
                    self.end(Code::TokenExpired, "the access token expired: reconnect with a fresh one");
                }
                item = self.reg.frames.recv() => match item {
                    Some(item) => self.on(item),
                    None if self.reg.reason.get() == Disconnect::SessionEnded => {
                        self.end(Code::SessionEnded, "the session has ended: log in again");
                    }
                    // Too slow or shutting down: the client reconnects with Last-Event-ID.
                    None => return None,
                },
            }
        }
    }
}
