//! The WebSocket upgrade, done here rather than by poem's extractor so that the connection
//! gets tungstenite's own stream: its text frames are `Utf8Bytes`, so the hub's one serialised
//! frame is written to every recipient without a per-recipient copy (poem's `Message::Text`
//! holds a `String`).

use std::future::Future;

use poem::error::WebSocketError;
use poem::http::header::{self, HeaderValue};
use poem::http::{Method, StatusCode};
use poem::{Body, FromRequest, IntoResponse, OnUpgrade, Request, RequestBody, Response};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::live::connections::ws::Socket;

/// A request to upgrade to a WebSocket (RFC 6455 §4.2.1); refused with 400 otherwise.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade").finish_non_exhaustive()
    }
}

impl<'a> FromRequest<'a> for Upgrade {
    async fn from_request(req: &'a Request, _body: &mut RequestBody) -> poem::Result<Self> {
        let headers = req.headers();
        let upgrade_websocket = headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let connection_upgrade = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
        if req.method() != Method::GET
            || !upgrade_websocket
            || !connection_upgrade
            || headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13"))
        {
            return Err(WebSocketError::InvalidProtocol.into());
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(WebSocketError::InvalidProtocol)?;
        Ok(Self {
            key,
            on_upgrade: req.take_upgrade()?,
        })
    }
}

impl Upgrade {
    /// The 101 response; once it is sent, `serve` runs with the socket.
    pub fn on_upgrade<F, Fut>(self, config: WebSocketConfig, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let socket = Socket::from_raw_socket(upgraded, Role::Server, Some(config)).await;
            serve(socket).await;
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .body(Body::empty())
            .into_response()
    }
}
