//! Why a use case failed, and the one table of what clients are told: every error kind is a
//! [`Code`] with its HTTP status and its stable machine-readable name, here and nowhere else.
//! REST renders a refusal as problem details, the WebSocket as an `error` frame; both take the
//! code from this table. (The model is meilisearch's `make_error_codes!`.)

use schema::{DomainError, UserId};

/// Declares [`Code`] from `Variant => status, "code";` lines.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident => $status:literal, $code:literal;)*) => {
        /// Every stable error code a client can receive, with its HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($(#[$doc])* $variant,)*
        }

        impl Code {
            /// Every code, in table order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The HTTP status a REST response with this code has.
            pub fn status(self) -> u16 {
                match self {
                    $(Code::$variant => $status,)*
                }
            }

            /// The stable name clients match on (`code` of a problem or an `error` frame).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $code,)*
                }
            }
        }
    };
}

error_codes! {
    // ---- refused by a domain rule or a value
    /// A value is invalid (too long, empty, malformed).
    ValidationFailed => 400, "validation_failed";
    /// The username is in use (compared without case).
    UsernameTaken => 409, "username_taken";
    /// The room does not exist, or the caller is not in it (or may not enter it): the same
    /// answer either way, so room ids cannot be probed.
    RoomNotFound => 404, "room_not_found";
    MessageNotFound => 404, "message_not_found";
    UserNotFound => 404, "user_not_found";
    /// Something else that does not exist.
    NotFound => 404, "not_found";
    NotAllowed => 403, "not_allowed";
    /// Only a message's sender may edit or delete it.
    NotTheSender => 403, "not_the_sender";
    DirectWithSelf => 400, "direct_with_self";
    InvalidRefreshToken => 401, "invalid_refresh_token";
    /// A used refresh token was presented again: the session is revoked.
    RefreshTokenReused => 401, "refresh_token_reused";
    /// Unknown username or wrong password (deliberately not told apart).
    InvalidCredentials => 401, "invalid_credentials";
    InvalidQuery => 400, "invalid_query";
    /// Your role in the room is too low for this (or not above the member's).
    InsufficientRole => 403, "insufficient_role";
    /// The user is banned from the room.
    Banned => 403, "banned";
    /// The room is archived: read-only until the owner unarchives it.
    RoomArchived => 409, "room_archived";
    /// One of you has blocked the other.
    Blocked => 403, "blocked";
    /// The current password given to confirm a change is wrong.
    WrongPassword => 403, "wrong_password";
    MemberNotFound => 404, "member_not_found";
    SessionNotFound => 404, "session_not_found";
    FriendRequestNotFound => 404, "friend_request_not_found";
    InvitationNotFound => 404, "invitation_not_found";
    InvalidCursor => 400, "invalid_cursor";

    // ---- the request itself
    /// No valid access token.
    Unauthorized => 401, "unauthorized";
    /// The access token's session has ended (logout, refresh-token reuse, revocation): log
    /// in again.
    SessionEnded => 401, "session_ended";
    /// A live connection's access token expired and no fresh one came in an `auth` frame
    /// (a close reason, never an HTTP response).
    TokenExpired => 401, "token_expired";
    InvalidParameter => 400, "invalid_parameter";
    InvalidBody => 400, "invalid_body";
    InvalidPath => 400, "invalid_path";
    UnreadableBody => 400, "unreadable_body";
    UnsupportedMediaType => 415, "unsupported_media_type";
    PayloadTooLarge => 413, "payload_too_large";
    RouteNotFound => 404, "route_not_found";
    MethodNotAllowed => 405, "method_not_allowed";
    /// A client error the framework raised that has no code of its own.
    BadRequest => 400, "bad_request";

    // ---- WebSocket frames (sent as `error` frames, never as HTTP responses)
    BadFrame => 400, "bad_frame";
    UnknownType => 400, "unknown_type";
    FrameTooLarge => 413, "frame_too_large";
    RateLimited => 429, "rate_limited";

    // ---- the server
    /// The stream kept changing under the command; retry.
    Contention => 409, "contention";
    ShuttingDown => 503, "shutting_down";
    /// Storage or the search index is unavailable; retry.
    Unavailable => 503, "unavailable";
    /// The projections have not caught up with the log yet (`/readyz`).
    NotReady => 503, "not_ready";
    Internal => 500, "internal";
}

/// The detail of every `room_not_found`.
const ROOM_NOT_FOUND: &str = "no such room, or you are not in it";

/// What a client is told about a failure: a code from the table and words for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub detail: String,
}

impl Refusal {
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

/// Why a use case failed.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A domain rule refused the command or a value was invalid.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// Unknown username or wrong password (deliberately not told apart).
    #[error("wrong username or password")]
    InvalidCredentials,
    /// Users named in the request do not exist.
    #[error("unknown users: {0:?}")]
    UnknownUsers(Vec<UserId>),
    /// The stream kept changing; the client may retry.
    #[error("too much contention on {0}; retry")]
    Contention(String),
    /// The event log failed.
    #[error(transparent)]
    Log(#[from] eventlog::Error),
    /// The read models failed.
    #[error(transparent)]
    ReadModel(#[from] projector::Error),
    /// The query or cursor was refused, or the search index failed.
    #[error(transparent)]
    Search(#[from] search::Error),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Anything else: a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = ChatError> = std::result::Result<T, E>;

fn domain_code(e: &DomainError) -> Code {
    match e {
        DomainError::Invalid { .. } => Code::ValidationFailed,
        DomainError::UsernameTaken => Code::UsernameTaken,
        // Not in the room (or a private room one may not join) reads as no room at all.
        DomainError::NotFound("room") | DomainError::NotAMember | DomainError::RoomNotPublic => {
            Code::RoomNotFound
        }
        DomainError::NotFound("message") => Code::MessageNotFound,
        DomainError::NotFound("user") => Code::UserNotFound,
        DomainError::NotFound("member") => Code::MemberNotFound,
        DomainError::NotFound("session") => Code::SessionNotFound,
        DomainError::NotFound("friend request") => Code::FriendRequestNotFound,
        DomainError::NotFound("invitation") => Code::InvitationNotFound,
        DomainError::NotFound(_) => Code::NotFound,
        DomainError::NotAllowed(_) => Code::NotAllowed,
        DomainError::NotTheSender => Code::NotTheSender,
        DomainError::DirectWithSelf => Code::DirectWithSelf,
        DomainError::InvalidRefreshToken => Code::InvalidRefreshToken,
        DomainError::RefreshTokenReused => Code::RefreshTokenReused,
        DomainError::InsufficientRole => Code::InsufficientRole,
        DomainError::Banned => Code::Banned,
        DomainError::RoomArchived => Code::RoomArchived,
        DomainError::Blocked => Code::Blocked,
        DomainError::WrongPassword => Code::WrongPassword,
    }
}

impl From<DomainError> for Refusal {
    fn from(e: DomainError) -> Self {
        if matches!(e, DomainError::RefreshTokenReused) {
            crate::security::auth_failure(crate::security::AuthFailure::RefreshTokenReused);
        }
        let code = domain_code(&e);
        // One wording too: the detail must not tell the cases apart either.
        let detail = if code == Code::RoomNotFound {
            ROOM_NOT_FOUND.to_owned()
        } else {
            e.to_string()
        };
        Self::new(code, detail)
    }
}

impl From<ChatError> for Refusal {
    /// What the client is told. Server-side failures are logged here, once, and told only
    /// as a code (their details are for the log).
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::Domain(d) => d.into(),
            ChatError::InvalidCredentials => {
                crate::security::auth_failure(crate::security::AuthFailure::InvalidCredentials);
                Self::new(Code::InvalidCredentials, "wrong username or password")
            }
            ChatError::UnknownUsers(ids) => {
                let list: Vec<String> = ids.iter().map(ToString::to_string).collect();
                Self::new(
                    Code::UserNotFound,
                    format!("no such users: {}", list.join(", ")),
                )
            }
            ChatError::Contention(_) => Self::new(
                Code::Contention,
                "the resource changed too often meanwhile; retry",
            ),
            ChatError::ShuttingDown => {
                Self::new(Code::ShuttingDown, "the server is shutting down; retry")
            }
            ChatError::Search(e) if e.kind() == search::ErrorKind::InvalidQuery => {
                Self::new(Code::InvalidQuery, e.to_string())
            }
            ChatError::Search(e) if e.kind() == search::ErrorKind::InvalidCursor => {
                Self::new(Code::InvalidCursor, e.to_string())
            }
            ChatError::Search(e) if e.kind() == search::ErrorKind::Unavailable => {
                tracing::error!(error = %e, "search index unavailable");
                Self::new(Code::Unavailable, "search is unavailable; retry")
            }
            ChatError::Log(e) if e.kind() == eventlog::ErrorKind::Closed => {
                Self::new(Code::ShuttingDown, "the server is shutting down; retry")
            }
            ChatError::Log(e) if e.kind() == eventlog::ErrorKind::Unavailable => {
                tracing::error!(error = %e, "event log unavailable");
                Self::new(Code::Unavailable, "storage is unavailable; retry")
            }
            other => {
                tracing::error!(error = %other, "internal error");
                Self::new(Code::Internal, "internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_statuses_are_errors() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_str()), "{} twice", code.as_str());
            assert!((400..600).contains(&code.status()), "{code:?}");
            let name = code.as_str();
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
        }
    }

    #[test]
    fn server_failures_tell_no_details() {
        let r = Refusal::from(ChatError::Internal("the disk is on fire".into()));
        assert_eq!(
            (r.code, r.detail.as_str()),
            (Code::Internal, "internal error")
        );
        let r = Refusal::from(ChatError::Domain(DomainError::NotFound("room")));
        assert_eq!(r.code, Code::RoomNotFound);
    }

    #[test]
    fn a_room_one_is_not_in_reads_as_no_room_at_all() {
        let missing = Refusal::from(DomainError::NotFound("room"));
        assert_eq!(missing.code, Code::RoomNotFound);
        for e in [DomainError::NotAMember, DomainError::RoomNotPublic] {
            assert_eq!(Refusal::from(e), missing);
        }
    }
}
