//! The REST interface: routes, the OpenAPI document and its UI, auth, limits.

use std::net::IpAddr;
use std::sync::Arc;

use poem::endpoint::make_sync;
use poem::error::ReadBodyError;
use poem::http::StatusCode;
use poem::middleware::{CatchPanic, NormalizePath, TrailingSlash};
use poem::web::{Html, Json as PoemJson};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route, handler};
use poem_openapi::auth::Bearer;
use poem_openapi::{OpenApiService, SecurityScheme, Tags};
use schema::{SessionId, UserId};
use tracing::Instrument;

use crate::chat::{Chat, Code, Search};
use crate::live::Hub;
use crate::ops::health::Readiness;
use crate::ops::metrics;

mod accounts;
mod admin;
mod allow;
pub mod error;
mod features;
mod friends;
mod messages;
mod models;
mod openapi;
mod rooms;
mod search;
pub mod server;
mod upgrade;
mod web;
pub mod websocket;

pub use error::{ApiError, Problem};

#[derive(Tags)]
enum Tag {
    /// Registering, logging in and looking people up.
    Accounts,
    /// Creating, joining and leaving rooms; invitations.
    Rooms,
    /// Running a group room: roles, kick and ban, name, topic and visibility, archive,
    /// delete, the member list.
    Administration,
    /// Sending, editing and deleting messages, history, read markers and unread counts.
    Messages,
    /// Friend requests and friends (who see your presence), and blocking.
    Friends,
    /// Live delivery: the WebSocket and the notification stream.
    Live,
    /// Full-text search of your messages.
    Search,
}

/// The answer of a command that returns nothing.
#[derive(poem_openapi::ApiResponse)]
enum Done {
    /// Done (also when there was nothing to do).
    #[oai(status = 204)]
    NoContent,
}

pub use crate::chat::auth::Caller;

/// A bearer access token from `POST /v1/auth/login`.
#[derive(Debug, SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_bearer")]
pub struct BearerAuth(pub Caller);

/// A read (`GET`) waits until the read models show the caller's sends that were answered at
/// durability (`Chat::fence_reads`): read-your-writes without making the sends wait.
async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<Caller> {
    let caller = caller(req, &bearer.token)?;
    if req.method() == poem::http::Method::GET
        && let Some(chat) = req.data::<Arc<Chat>>()
    {
        chat.fence_reads(caller.0).await;
    }
    Ok(caller)
}

/// The caller an access token names, within their request rate (`CHAT_REQUEST_RATE`): 401
/// `unauthorized` for a missing, malformed, forged or expired one, 401 `session_ended` once
/// its session has ended, 429 over the rate.
pub(crate) fn caller(req: &Request, token: &str) -> poem::Result<Caller> {
    let chat = req
        .data::<Arc<Chat>>()
        .ok_or_else(|| ApiError::unauthorized("server misconfigured"))?;
    let claims = chat.auth().verify_access(token).map_err(ApiError::from)?;
    let user = UserId(claims.sub);
    chat.limits()
        .requests
        .take(user, 1)
        .map_err(|l| ApiError::from(crate::chat::Refusal::from(l)))?;
    Ok(Caller(user, SessionId(claims.sid), claims.exp))
}

/// The client's address: the peer's, or, when the peer is a trusted proxy
/// (`CHAT_TRUSTED_PROXIES`), the last address in `X-Forwarded-For` that is not one.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

fn client_ip(req: &Request, trusted: &[ipnet::IpNet]) -> IpAddr {
    let peer = req
        .remote_addr()
        .as_socket_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    client_address(peer, forwarded, trusted)
}

/// The client behind `peer`: `peer` itself unless it is trusted, else the last address of
/// the `X-Forwarded-For` chain that is not trusted (each proxy appends the one it saw).
fn client_address<'a>(
    peer: IpAddr,
    forwarded: impl Iterator<Item = &'a str>,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let chain: Vec<IpAddr> = forwarded
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    chain
        .iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(chain.first())
        .copied()
        .unwrap_or(peer)
}

/// Caps request bodies, chunked ones included (the `Content-Length` header alone could lie
/// or be absent).
async fn limit_body<E: Endpoint>(next: E, mut req: Request, max: usize) -> poem::Result<Response> {
    if let Some(len) = req
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
        && len > max as u64
    {
        return Err(ReadBodyError::PayloadTooLarge.into());
    }
    let body = req.take_body().into_bytes_limit(max).await?;
    req.set_body(body);
    next.call(req).await.map(IntoResponse::into_response)
}

type Apis = (
    accounts::Api,
    admin::Api,
    friends::Api,
    rooms::Api,
    messages::Api,
    features::Api,
    upgrade::Api,
    search::Api,
);

pub fn api_service(chat: Arc<Chat>, hub: Hub, search: Search) -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            accounts::Api { chat: chat.clone() },
            admin::Api { chat: chat.clone() },
            friends::Api { chat: chat.clone() },
            rooms::Api { chat: chat.clone() },
            messages::Api { chat: chat.clone() },
            features::Api { chat: chat.clone() },
            upgrade::Api { chat, hub },
            search::Api { search },
        ),
        "chatd",
        env!("CARGO_PKG_VERSION"),
    )
    .url_prefix("/v1")
    .description(
        "Event-sourced chat server. Every command is appended to the event log and answered \
         once durable; reads come from projections of the log. Errors are RFC 9457 problem \
         details with a stable `code`.",
    )
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

#[handler]
async fn readyz(req: &Request) -> Response {
    let Some(ready) = req.data::<Readiness>() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    match ready.check().await {
        Ok(status) => PoemJson(status).into_response(),
        Err(detail) => ApiError::new(Code::NotReady, detail).into_response(),
    }
}

/// How long an API request waits for the projections to catch up after a start before it is
/// refused with 503 `not_ready`.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Middleware on the API: nothing is served from read models behind what the log held at
/// start. After a crash they replay what they had not made durable, and until then they would
/// show an older state: acknowledged messages missing, a message deleted just before the crash
/// back again. A request waits (boundedly) for them, then gets 503 `not_ready` with
/// `Retry-After`. Once caught up this is one atomic read.
async fn caught_up<E: Endpoint>(ep: E, req: Request, ready: Readiness) -> poem::Result<Response> {
    let behind = ready.progress.position() < ready.head_at_start;
    if behind
        && let Err(e) = ready
            .progress
            .wait_for(ready.head_at_start, CATCH_UP_WAIT)
            .await
    {
        let detail = format!("starting: the read models are catching up with the log ({e})");
        return Ok(ApiError::not_ready(detail).into_response());
    }
    ep.call(req).await.map(IntoResponse::into_response)
}

/// Middleware: one span per request, continuing the caller's W3C trace when it sends a
/// `traceparent`. Events appended while handling the request carry the span's context (or,
/// without OpenTelemetry, the caller's), so projections and fan-out on every node join the
/// same trace.
async fn traced<E: Endpoint>(ep: E, req: Request) -> poem::Result<Response> {
    let header = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(tracecontext::parse);
    let span = tracing::info_span!(
        "http.request",
        http.request.method = %req.method(),
        url.path = %req.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(tp) = &header {
        tracecontext::set_parent(&span, tp);
    }
    let trace = tracecontext::of(&span).or(header);
    let result = tracecontext::scope(trace, ep.call(req))
        .instrument(span.clone())
        .await
        .map(IntoResponse::into_response);
    let status = match &result {
        Ok(resp) => resp.status(),
        Err(e) => e.status(),
    };
    span.record("http.response.status_code", status.as_u16());
    result
}

/// `route` with the operations endpoints: `/healthz`, `/readyz`, `/metrics`.
fn with_ops(route: Route) -> Route {
    route
        .at("/healthz", healthz)
        .at("/readyz", readyz)
        .at("/metrics", metrics::render)
}

/// The admin listener's application (`CHAT_ADMIN_LISTEN`): the operations endpoints alone.
pub fn admin_routes(readiness: Readiness) -> impl Endpoint + use<> {
    with_ops(Route::new())
        .with(NormalizePath::new(TrailingSlash::Trim))
        .data(readiness)
        .with(CatchPanic::new())
        .catch_all_error(error::render_framework_error)
}

/// The whole HTTP application.
pub fn routes(
    chat: Arc<Chat>,
    hub: Hub,
    readiness: Readiness,
    settings: &crate::config::Settings,
    search: Search,
) -> impl Endpoint + use<> {
    let max_body = settings.max_body_bytes;
    let api = api_service(chat.clone(), hub, search);
    let trusted = settings.limits.trusted_proxies.clone();
    let generated = api.spec();
    let openapi = openapi::declare_limits(&generated, settings.limits.invite_max_users);
    metrics::register_routes(&openapi);
    let allow = allow::AllowTable::from_spec(&openapi);
    // The UI embeds the document: the one with the limits declared.
    let ui = api.swagger_ui_html().replacen(&generated, &openapi, 1);
    let spec = make_sync(move |_| {
        Response::builder()
            .content_type("application/json")
            .body(openapi.clone())
    });
    let gate = readiness.clone();
    let api = api.around(move |ep, req| caught_up(ep, req, gate.clone()));
    let public = web::mount(Route::new())
        .nest("/v1", api)
        .at("/openapi.json", spec)
        .at("/docs", make_sync(move |_| Html(ui.clone())));
    // With an admin listener the operations endpoints are served there only.
    let public = if settings.admin_listen.is_some() {
        public
    } else {
        with_ops(public)
    };
    public
        .with(NormalizePath::new(TrailingSlash::Trim))
        .around(move |ep, req| limit_body(ep, req, max_body))
        .around(move |ep, mut req| {
            let ip = client_ip(&req, &trusted);
            req.set_data(ClientIp(ip));
            async move { ep.call(req).await.map(IntoResponse::into_response) }
        })
        .around(traced)
        .data(chat)
        .data(readiness)
        .with(CatchPanic::new())
        .around(metrics::track_http)
        .catch_all_error(error::render_framework_error)
        .around(move |ep, req| allow::add_allow(ep, req, allow.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let from =
            |peer: &str, xff: &[&str]| client_address(ip(peer), xff.iter().copied(), &trusted);
        assert_eq!(from("203.0.113.9", &["1.2.3.4"]), ip("203.0.113.9"));
        assert_eq!(from("10.0.0.2", &["1.2.3.4"]), ip("1.2.3.4"));
        // A client's own X-Forwarded-For comes first; the proxy appends what it saw.
        assert_eq!(from("10.0.0.2", &["6.6.6.6, 1.2.3.4"]), ip("1.2.3.4"));
        assert_eq!(from("10.0.0.2", &["1.2.3.4", "10.0.0.3"]), ip("1.2.3.4"));
        assert_eq!(from("10.0.0.2", &["junk"]), ip("10.0.0.2"));
    }
}
