//! The live endpoints in the OpenAPI document: the WebSocket (a 101 response whose frames are
//! the `ClientFrame` and `ServerFrame` schemas) and the SSE stream (`text/event-stream`).

use std::sync::Arc;

use poem::web::sse::Event;
use poem::{IntoResponse, Request, Response};
use poem_openapi::auth::ApiKey;
use poem_openapi::param::Header;
use poem_openapi::payload::EventStream;
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::{ApiResponse, Object, OpenApi, SecurityScheme};

use super::websocket::Upgrade as WebSocket;
use super::{ApiError, BearerAuth, Caller, Tag};
use crate::chat::{Chat, Refusal};
use crate::live::Hub;
use crate::live::connections::{sse, ws};
use crate::live::frames::{ClientFrame, Notification, ServerFrame};

#[derive(Debug)]
pub struct Api {
    pub chat: Arc<Chat>,
    pub hub: Hub,
}

/// The access token in the `access_token` query parameter, for browsers' `WebSocket` and
/// `EventSource`, which cannot set headers.
#[derive(Debug, SecurityScheme)]
#[oai(
    ty = "api_key",
    key_name = "access_token",
    key_in = "query",
    checker = "check_query_token"
)]
pub struct QueryToken(Caller);

async fn check_query_token(req: &Request, key: ApiKey) -> poem::Result<Caller> {
    super::caller(req, &key.key)
}

/// A bearer header or the `access_token` query parameter.
#[derive(Debug, SecurityScheme)]
pub enum LiveAuth {
    Bearer(BearerAuth),
    Query(QueryToken),
}

impl LiveAuth {
    fn caller(self) -> Caller {
        match self {
            Self::Bearer(BearerAuth(c)) | Self::Query(QueryToken(c)) => c,
        }
    }
}

/// Not a message: the two directions of the WebSocket protocol, each a JSON text frame with a
/// `type`.
#[derive(Object)]
#[allow(dead_code)] // documentation only
struct WebSocketFrames {
    /// What the client sends.
    client_to_server: ClientFrame,
    /// What the server sends.
    server_to_client: ServerFrame,
}

/// The upgrade to a WebSocket, documented as a 101 with the protocol's frames.
pub struct Upgrade(Response);

impl IntoResponse for Upgrade {
    fn into_response(self) -> Response {
        self.0
    }
}

impl ApiResponse for Upgrade {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "Switching to the WebSocket protocol. Every message is a JSON text \
                              frame: the client sends `ClientFrame`s, the server sends \
                              `ServerFrame`s (see docs/websocket.md).",
                status: Some(101),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: "application/json",
                    schema: WebSocketFrames::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        WebSocketFrames::register(registry);
    }
}

type Notifications = EventStream<futures::stream::BoxStream<'static, Notification>>;

#[OpenApi(tag = "Tag::Live")]
impl Api {
    /// The live connection: resume, then room events, acks, unread counts, typing and
    /// presence. A missing or bad token is refused here with 401; no socket is served. The
    /// socket is closed with 4001 when the session ends and 4002 when the token expires,
    /// unless renewed by an `auth` frame.
    #[oai(path = "/ws", method = "get")]
    async fn ws(&self, auth: LiveAuth, socket: WebSocket) -> Result<Upgrade, ApiError> {
        let (chat, hub, caller) = (self.chat.clone(), self.hub.clone(), auth.caller());
        // Counted from here, so a burst of upgrades cannot overshoot the limit.
        let slot = chat.limits().live.open(caller.0).map_err(Refusal::from)?;
        let upgraded = socket.on_upgrade(ws::socket_config(), move |stream| async move {
            ws::serve(chat, hub, caller, stream).await;
            drop(slot);
        });
        Ok(Upgrade(upgraded))
    }

    /// Notifications as Server-Sent Events: `message` (others' new messages in your rooms;
    /// the SSE `id` is a log position), `mention` (one of them that mentions you, right after
    /// its `message`, with the same `id`) and `unread` (your counts, mentions included; the
    /// first ones are a baseline of every room with unread messages). Send `Last-Event-ID` to
    /// get the `message` and `mention` events you missed. Comment lines every 15 s keep the
    /// stream alive. The stream ends with a `closed` event when the session ends
    /// (`session_ended`) or the token expires (`token_expired`).
    #[oai(path = "/notifications", method = "get")]
    async fn notifications(
        &self,
        auth: LiveAuth,
        #[oai(name = "Last-Event-ID")] last_event_id: Header<Option<u64>>,
    ) -> Result<Notifications, ApiError> {
        let caller = auth.caller();
        let slot = self
            .chat
            .limits()
            .live
            .open(caller.0)
            .map_err(Refusal::from)?;
        let stream = sse::notifications(
            self.chat.clone(),
            self.hub.clone(),
            caller,
            last_event_id.0,
            slot,
        )
        .await?;
        Ok(EventStream::new(stream)
            .keep_alive(sse::HEARTBEAT)
            .to_event(|n| match n {
                Notification::Unread(u) => Event::message(u.to_json_string()).event_type("unread"),
                Notification::Message(m) => Event::message(m.to_json_string())
                    .event_type("message")
                    .id(m.position.to_string()),
                Notification::Mention(m) => Event::message(m.to_json_string())
                    .event_type("mention")
                    .id(m.position.to_string()),
                Notification::Closed(c) => Event::message(c.to_json_string()).event_type("closed"),
            }))
    }
}
