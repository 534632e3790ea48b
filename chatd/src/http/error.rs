//! Every error the REST API returns, rendered as RFC 9457 problem details
//! (`application/problem+json`) with the status and stable `code` of the one table,
//! [`crate::chat::Code`].

use poem::error::{MethodNotAllowedError, NotFoundError, ReadBodyError};
use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::error::{
    AuthorizationError, ContentTypeError, ParseParamError, ParsePathError, ParseRequestPayloadError,
};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};
use schema::DomainError;

use crate::chat::auth::TokenRefusal;
use crate::chat::{ChatError, Code, Refusal};

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
    /// Refused by a limit (`rate_limited`, `login_throttled`, `register_throttled`,
    /// `too_many_connections`): retry after `Retry-After` seconds.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(
        Json<Problem>,
        /// Seconds to wait before retrying.
        #[oai(header = "Retry-After")]
        u64,
    ),
    /// The server is saturated or stopping (`overloaded`, `unavailable`, `shutting_down`):
    /// retry, after `Retry-After` seconds when given.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(
        Json<Problem>,
        /// Seconds to wait before retrying.
        #[oai(header = "Retry-After")]
        Option<u64>,
    ),
    /// A problem; see `code`.
    #[oai(content_type = "application/problem+json")]
    Problem(StatusCode, Json<Problem>),
}

impl ApiError {
    /// A problem with the code's status from the table.
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        Self::with_retry(code, detail, None)
    }

    /// A problem with the code's status, and `Retry-After` when the refusal says when.
    fn with_retry(code: Code, detail: impl Into<String>, retry_after: Option<u64>) -> Self {
        let status =
            StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let problem = problem(status, code, detail);
        match status {
            StatusCode::TOO_MANY_REQUESTS => {
                Self::TooManyRequests(problem, retry_after.unwrap_or(1))
            }
            StatusCode::SERVICE_UNAVAILABLE => Self::Unavailable(problem, retry_after),
            _ => Self::Problem(status, problem),
        }
    }

    /// A problem whose status is not the table's (an error the framework raised with its own).
    fn with_status(status: StatusCode, code: Code, detail: impl Into<String>) -> Self {
        Self::Problem(status, problem(status, code, detail))
    }

    /// 503 `not_ready`, to retry in a second.
    pub fn not_ready(detail: impl Into<String>) -> Self {
        Self::with_retry(Code::NotReady, detail, Some(1))
    }

    pub fn invalid_parameter(detail: impl Into<String>) -> Self {
        Self::new(Code::InvalidParameter, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(Code::Unauthorized, detail)
    }
}

fn problem(status: StatusCode, code: Code, detail: impl Into<String>) -> Json<Problem> {
    Json(Problem {
        ty: "about:blank".into(),
        title: status.canonical_reason().unwrap_or("Error").into(),
        status: status.as_u16(),
        detail: detail.into(),
        code: code.as_str().into(),
    })
}

impl From<TokenRefusal> for ApiError {
    fn from(r: TokenRefusal) -> Self {
        match r {
            TokenRefusal::Invalid => Self::unauthorized("the access token is invalid or expired"),
            TokenRefusal::SessionEnded => Self::new(
                Code::SessionEnded,
                "the access token's session has ended; log in again",
            ),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        Self::with_retry(r.code, r.detail, r.retry_after)
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        Refusal::from(e).into()
    }
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        Refusal::from(e).into()
    }
}

/// Renders errors raised outside our handlers (request parsing, routing, auth extraction,
/// body limits) as problems too, so clients see one error shape. Our own `ApiError`s pass
/// through untouched.
pub async fn render_framework_error(err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    let status = err.status();
    let code = if err.is::<ParseRequestPayloadError>() {
        Code::InvalidBody
    } else if err.is::<ParseParamError>() {
        Code::InvalidParameter
    } else if err.is::<ParsePathError>() {
        Code::InvalidPath
    } else if err.is::<ContentTypeError>() {
        Code::UnsupportedMediaType
    } else if err.is::<AuthorizationError>() {
        Code::Unauthorized
    } else if err.is::<NotFoundError>() {
        Code::RouteNotFound
    } else if err.is::<MethodNotAllowedError>() {
        Code::MethodNotAllowed
    } else if matches!(
        err.downcast_ref::<ReadBodyError>(),
        Some(ReadBodyError::PayloadTooLarge)
    ) {
        Code::PayloadTooLarge
    } else if err.is::<ReadBodyError>() {
        Code::UnreadableBody
    } else if status.is_server_error() {
        // Keeps the framework's own status (a 5xx other than 500, say).
        tracing::error!(error = %err, "unhandled server error");
        return ApiError::with_status(status, Code::Internal, "internal error").into_response();
    } else {
        return ApiError::with_status(status, Code::BadRequest, err.to_string()).into_response();
    };
    let detail = if code == Code::Unauthorized {
        "a valid bearer access token is required".to_owned()
    } else {
        err.to_string()
    };
    ApiError::new(code, detail).into_response()
}
