use std::sync::Arc;

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use schema::values::parse_client_msg_id;
use schema::{MessageBody, RoomId};
use uuid::Uuid;

use super::models::{HistoryPage, SendRequest, SendResponse};
use super::{ApiError, BearerAuth, Tag};
use crate::service::Chat;

const DEFAULT_LIMIT: u64 = 50;
const MAX_LIMIT: u64 = 200;

#[derive(Debug)]
pub struct Api {
    pub chat: Arc<Chat>,
}

#[derive(ApiResponse)]
enum Sent {
    /// The message is stored durably.
    #[oai(status = 201)]
    Created(Json<SendResponse>),
    /// A retry with a known `client_msg_id`: the original message, nothing new stored.
    #[oai(status = 200)]
    AlreadySent(Json<SendResponse>),
}

#[OpenApi(tag = "Tag::Messages")]
impl Api {
    /// Send a message. Answered only once it is durable.
    #[oai(path = "/rooms/:room_id/messages", method = "post")]
    async fn send(
        &self,
        auth: BearerAuth,
        room_id: Path<Uuid>,
        body: Json<SendRequest>,
    ) -> Result<Sent, ApiError> {
        let text = MessageBody::parse(&body.body)?;
        let key = body
            .client_msg_id
            .as_deref()
            .map(parse_client_msg_id)
            .transpose()?
            .map(str::to_owned);
        let sent = self
            .chat
            .send(auth.0.0, RoomId(room_id.0), text, key)
            .await?;
        let duplicate = sent.duplicate;
        let body = Json(SendResponse::from(sent));
        Ok(if duplicate {
            Sent::AlreadySent(body)
        } else {
            Sent::Created(body)
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
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("limit must be 1–{MAX_LIMIT}"),
            ));
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
        let events = page
            .events
            .into_iter()
            .map(|e| {
                let mut v: serde_json::Value = serde_json::from_str(&e.event).unwrap_or_default();
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("seq".into(), e.seq.into());
                    obj.insert(
                        "at".into(),
                        e.recorded_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                            .into(),
                    );
                }
                v
            })
            .collect();
        Ok(Json(HistoryPage {
            events,
            has_more: page.has_more,
        }))
    }
}
