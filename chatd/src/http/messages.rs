use std::sync::Arc;

use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use schema::values::parse_client_msg_id;
use schema::{MessageBody, MessageId, RoomId};
use uuid::Uuid;

use super::models::{
    ChangeResponse, EditRequest, HistoryPage, ReadRequest, RoomUnread, SendRequest, SendResponse,
    UnreadResponse,
};
use super::{ApiError, BearerAuth, Tag};
use crate::chat::{Chat, Consistency};

pub(super) const DEFAULT_LIMIT: u64 = 50;
pub(super) const MAX_LIMIT: u64 = 200;

#[derive(Debug)]
pub struct Api {
    pub chat: Arc<Chat>,
}

#[derive(ApiResponse)]
enum Sent {
    /// The message is stored durably.
    #[oai(status = 201)]
    Created(
        Json<SendResponse>,
        /// `return=minimal` when the request asked for it (RFC 7240).
        #[oai(header = "Preference-Applied")]
        Option<String>,
    ),
    /// A retry with a known `client_msg_id`: the original message, nothing new stored.
    #[oai(status = 200)]
    AlreadySent(
        Json<SendResponse>,
        /// `return=minimal` when the request asked for it (RFC 7240).
        #[oai(header = "Preference-Applied")]
        Option<String>,
    ),
}

/// The RFC 7240 preference that lets a send skip read-your-writes.
const RETURN_MINIMAL: &str = "return=minimal";

/// Whether a `Prefer` header value asks for `return=minimal` (RFC 7240: comma-separated
/// preferences, names case-insensitive, values optionally quoted, parameters after `;`).
fn prefers_minimal(prefer: &str) -> bool {
    prefer.split(',').any(|preference| {
        let head = preference.split(';').next().unwrap_or_default();
        let (name, value) = head.split_once('=').unwrap_or((head, ""));
        name.trim().eq_ignore_ascii_case("return")
            && value
                .trim()
                .trim_matches('"')
                .eq_ignore_ascii_case("minimal")
    })
}

#[derive(ApiResponse)]
enum Read {
    /// The marker is at `seq` (or already was further).
    #[oai(status = 204)]
    Done,
}

#[OpenApi(tag = "Tag::Messages")]
impl Api {
    /// Edit one of your own messages (403 `not_the_sender` otherwise).
    #[oai(path = "/rooms/:room_id/messages/:message_id", method = "patch")]
    async fn edit(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        message_id: Path<Uuid>,
        body: Json<EditRequest>,
    ) -> Result<Json<ChangeResponse>, ApiError> {
        let text = MessageBody::parse(&body.body)?;
        let changed = self
            .chat
            .edit(auth.0.0, RoomId(room_id.0), MessageId(message_id.0), text)
            .await?;
        Ok(Json(changed.into()))
    }

    /// Delete one of your own messages (403 `not_the_sender` otherwise). The timeline keeps a
    /// `message_deleted` event; the text is never shown again (history, room lists, counts,
    /// search, WebSocket resume, SSE replay).
    #[oai(path = "/rooms/:room_id/messages/:message_id", method = "delete")]
    async fn delete(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        message_id: Path<Uuid>,
    ) -> Result<Json<ChangeResponse>, ApiError> {
        let changed = self
            .chat
            .delete(auth.0.0, RoomId(room_id.0), MessageId(message_id.0))
            .await?;
        Ok(Json(changed.into()))
    }

    /// Move your read marker forward.
    #[oai(path = "/rooms/:room_id/read", method = "post")]
    async fn read(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        body: Json<ReadRequest>,
    ) -> Result<Read, ApiError> {
        self.chat
            .mark_read(
                auth.0.0,
                RoomId(room_id.0),
                body.seq,
                Consistency::ReadYourWrites,
            )
            .await?;
        Ok(Read::Done)
    }

    /// Unread counts: messages after your read marker, not sent by you, not deleted; of them,
    /// those that mention you and the replies in threads you take part in.
    #[oai(path = "/unread", method = "get")]
    async fn unread(&self, auth: BearerAuth) -> Result<Json<UnreadResponse>, ApiError> {
        let (total, rooms) = self.chat.unread(auth.0.0).await?;
        let rooms = rooms
            .into_iter()
            .map(|(r, n)| RoomUnread {
                room_id: r.0,
                unread_count: n.unread,
                mention_count: n.mentions,
                thread_unread_count: n.thread_unread,
            })
            .collect();
        Ok(Json(UnreadResponse {
            total: total.unread,
            mention_total: total.mentions,
            thread_unread_total: total.thread_unread,
            rooms,
        }))
    }

    /// Send a message. Answered only once it is durable. `@username` (of a member), `@all`
    /// and `@here` in the body are stored as the event's `mentions`.
    ///
    /// By default the answer also waits until your own reads (history, room list, unread,
    /// search excepted) show the message (read-your-writes). With `Prefer: return=minimal`
    /// (RFC 7240) it comes as soon as the message is durable, and says so with
    /// `Preference-Applied: return=minimal`: the body is the same, and your next read (`GET`)
    /// waits until it shows the message instead. For senders that do not read back what they
    /// send (bots, bridges, load). Sends count against the same per-user budget as WebSocket frames
    /// (429 `rate_limited` beyond it).
    #[oai(path = "/rooms/:room_id/messages", method = "post")]
    async fn send(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        body: Json<SendRequest>,
        /// `return=minimal`: answer once the message is durable, without waiting for the read
        /// models (see above). Other preferences are ignored.
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
    ) -> Result<Sent, ApiError> {
        // The budget of the user's WebSocket frames (`CHAT_WS_RATE`): one for both ways in.
        self.chat
            .limits()
            .sends
            .take(auth.0.0, 1)
            .map_err(crate::chat::Refusal::from)?;
        let text = MessageBody::parse(&body.body)?;
        let key = body
            .client_msg_id
            .as_deref()
            .map(parse_client_msg_id)
            .transpose()?
            .map(str::to_owned);
        let minimal = prefer.0.as_deref().is_some_and(prefers_minimal);
        let consistency = if minimal {
            Consistency::Durable(auth.0.0)
        } else {
            Consistency::ReadYourWrites
        };
        let sent = self
            .chat
            .send_with(
                auth.0.0,
                RoomId(room_id.0),
                text,
                key,
                body.reply_to.map(MessageId),
                consistency,
            )
            .await?;
        let duplicate = sent.duplicate;
        let body = Json(SendResponse::from(sent));
        let applied = minimal.then(|| RETURN_MINIMAL.to_owned());
        Ok(if duplicate {
            Sent::AlreadySent(body, applied)
        } else {
            Sent::Created(body, applied)
        })
    }

    /// Page through a room's events. Members only.
    ///
    /// Without bounds: the newest `limit` events. With `before_seq`: the newest `limit`
    /// older than it. With `after_seq`: the oldest `limit` newer than it (for catching up).
    /// Always oldest first within the page.
    #[oai(path = "/rooms/:room_id/messages", method = "get")]
    async fn history(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        /// Only events with a smaller seq.
        before_seq: Query<Option<u64>>,
        /// Only events with a larger seq.
        after_seq: Query<Option<u64>>,
        /// Page size, 1–200 (default 50).
        limit: Query<Option<u64>>,
    ) -> Result<Json<HistoryPage>, ApiError> {
        let limit = limit.0.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::invalid_parameter(format!(
                "limit must be 1–{MAX_LIMIT}"
            )));
        }
        let page = self
            .chat
            .history(
                auth.0.0,
                RoomId(room_id.0),
                before_seq.0,
                after_seq.0,
                limit as usize,
            )
            .await?;
        Ok(Json(HistoryPage {
            events: page.events,
            has_more: page.has_more,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::prefers_minimal;

    #[test]
    fn return_minimal_is_found_among_preferences() {
        for yes in [
            "return=minimal",
            "RETURN=Minimal",
            "respond-async, return=minimal",
            "return = \"minimal\"; foo=bar",
            "wait=5,return=minimal",
        ] {
            assert!(prefers_minimal(yes), "{yes}");
        }
        for no in [
            "",
            "return=representation",
            "minimal",
            "return",
            "x-return=minimal",
        ] {
            assert!(!prefers_minimal(no), "{no}");
        }
    }
}
