//! Every error the API returns, mapped to a status and a stable `code` in one place, and
//! rendered as RFC 9457 problem details (`application/problem+json`).

use poem::error::{MethodNotAllowedError, NotFoundError, ReadBodyError};
use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::error::{
    AuthorizationError, ContentTypeError, ParseParamError, ParsePathError, ParseRequestPayloadError,
};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};
use schema::DomainError;

use crate::service::ServiceError;

/// RFC 9457 problem details with a stable machine-readable `code`.
#[derive(Debug, Clone, Object)]
pub struct Problem {
    /// Always `about:blank`: `code` identifies the problem.
    #[oai(rename = "type")]
    pub ty: String,
    /// The HTTP status phrase.
    pub title: String,
    pub status: u16,
    /// What went wrong, for people.
    pub detail: String,
    /// What went wrong, for programs; stable across releases.
    pub code: String,
}

/// The error response of every endpoint.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// A problem; see `code`.
    #[oai(content_type = "application/problem+json")]
    Problem(StatusCode, Json<Problem>),
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self::Problem(
            status,
            Json(Problem {
                ty: "about:blank".into(),
                title: status.canonical_reason().unwrap_or("Error").into(),
                status: status.as_u16(),
                detail: detail.into(),
                code: code.into(),
            }),
        )
    }

    pub fn bad_request(code: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        use StatusCode as S;
        let (status, code) = match &e {
            DomainError::Invalid { .. } => (S::BAD_REQUEST, "validation_failed"),
            DomainError::UsernameTaken => (S::CONFLICT, "username_taken"),
            DomainError::NotFound("room") => (S::NOT_FOUND, "room_not_found"),
            DomainError::NotFound("message") => (S::NOT_FOUND, "message_not_found"),
            DomainError::NotFound("user") => (S::NOT_FOUND, "user_not_found"),
            DomainError::NotFound(_) => (S::NOT_FOUND, "not_found"),
            DomainError::NotAMember => (S::FORBIDDEN, "not_a_member"),
            DomainError::NotAllowed(_) => (S::FORBIDDEN, "not_allowed"),
            DomainError::NotTheSender => (S::FORBIDDEN, "not_the_sender"),
            DomainError::RoomNotPublic => (S::FORBIDDEN, "room_not_public"),
            DomainError::DirectWithSelf => (S::BAD_REQUEST, "direct_with_self"),
            DomainError::InvalidRefreshToken => (S::UNAUTHORIZED, "invalid_refresh_token"),
            DomainError::RefreshTokenReused => {
                crate::security::auth_failure(crate::security::AuthFailure::RefreshTokenReused);
                (S::UNAUTHORIZED, "refresh_token_reused")
            }
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        use StatusCode as S;
        match e {
            ServiceError::Domain(d) => d.into(),
            ServiceError::InvalidCredentials => {
                crate::security::auth_failure(crate::security::AuthFailure::InvalidCredentials);
                Self::new(
                    S::UNAUTHORIZED,
                    "invalid_credentials",
                    "wrong username or password",
                )
            }
            ServiceError::UnknownUsers(ids) => {
                let list: Vec<String> = ids.iter().map(ToString::to_string).collect();
                Self::new(
                    S::NOT_FOUND,
                    "user_not_found",
                    format!("no such users: {}", list.join(", ")),
                )
            }
            ServiceError::Contention(_) => Self::new(
                S::CONFLICT,
                "contention",
                "the resource changed too often meanwhile; retry",
            ),
            ServiceError::ShuttingDown => Self::new(
                S::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down; retry",
            ),
            ServiceError::Search(e) if e.kind() == search::ErrorKind::InvalidQuery => {
                Self::bad_request("invalid_query", e.to_string())
            }
            ServiceError::Search(e) if e.kind() == search::ErrorKind::InvalidCursor => {
                Self::bad_request("invalid_cursor", e.to_string())
            }
            ServiceError::Search(e) if e.kind() == search::ErrorKind::Unavailable => {
                tracing::error!(error = %e, "search index unavailable");
                Self::new(
                    S::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "search is unavailable; retry",
                )
            }
            ServiceError::Log(e) if e.kind() == eventlog::ErrorKind::Closed => Self::new(
                S::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down; retry",
            ),
            ServiceError::Log(e) if e.kind() == eventlog::ErrorKind::Unavailable => {
                tracing::error!(error = %e, "event log unavailable");
                Self::new(
                    S::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "storage is unavailable; retry",
                )
            }
            other => {
                tracing::error!(error = %other, "internal error");
                Self::new(S::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
        }
    }
}

/// Renders errors raised outside our handlers (request parsing, routing, auth extraction,
/// body limits) as problems too, so clients see one error shape. Our own `ApiError`s pass
/// through untouched.
pub async fn render_framework_error(err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    use StatusCode as S;
    let status = err.status();
    let (status, code) = if err.is::<ParseRequestPayloadError>() {
        (S::BAD_REQUEST, "invalid_body")
    } else if err.is::<ParseParamError>() {
        (S::BAD_REQUEST, "invalid_parameter")
    } else if err.is::<ParsePathError>() {
        (S::BAD_REQUEST, "invalid_path")
    } else if err.is::<ContentTypeError>() {
        (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    } else if err.is::<AuthorizationError>() {
        (S::UNAUTHORIZED, "unauthorized")
    } else if err.is::<NotFoundError>() {
        (S::NOT_FOUND, "route_not_found")
    } else if err.is::<MethodNotAllowedError>() {
        (S::METHOD_NOT_ALLOWED, "method_not_allowed")
    } else if matches!(
        err.downcast_ref::<ReadBodyError>(),
        Some(ReadBodyError::PayloadTooLarge)
    ) {
        (S::PAYLOAD_TOO_LARGE, "payload_too_large")
    } else if err.is::<ReadBodyError>() {
        (S::BAD_REQUEST, "unreadable_body")
    } else if status.is_server_error() {
        (status, "internal")
    } else {
        (status, "bad_request")
    };
    let detail = if status.is_server_error() {
        tracing::error!(error = %err, "unhandled server error");
        "internal error".to_owned()
    } else if code == "unauthorized" {
        "a valid bearer access token is required".to_owned()
    } else {
        err.to_string()
    };
    ApiError::new(status, code, detail).into_response()
}
