use thiserror::Error;

/// Why a value was rejected or a command refused. Carries no HTTP words: the `chatd` crate maps
/// each variant to a status and a stable error code in one table.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    /// A value failed validation at the edge (field name and reason).
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The username belongs to an existing account.
    #[error("username is taken")]
    UsernameTaken,
    /// The aggregate the command addresses does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The caller is not a member of the room.
    #[error("not a member of this room")]
    NotAMember,
    /// The command is not allowed for this kind of room (e.g. inviting into a direct room).
    #[error("{0}")]
    NotAllowed(&'static str),
    /// Only the sender of a message may edit or delete it.
    #[error("only the sender may change this message")]
    NotTheSender,
    /// A private room can be entered only by invitation.
    #[error("this room is private; ask a member for an invite")]
    RoomNotPublic,
    /// A direct room needs two different people.
    #[error("cannot open a direct room with yourself")]
    DirectWithSelf,
    /// The refresh token is unknown, expired, or its session was ended.
    #[error("refresh token is invalid")]
    InvalidRefreshToken,
    /// A refresh token that was already rotated was presented again; the whole session is
    /// revoked because the token has probably been stolen.
    #[error("refresh token was already used; the session has been revoked")]
    RefreshTokenReused,
    /// The caller's role in the room does not allow this (or not over that member).
    #[error("your role in this room does not allow this")]
    InsufficientRole,
    /// The user is banned from the room.
    #[error("banned from this room")]
    Banned,
    /// The room is archived: read-only.
    #[error("the room is archived (read-only)")]
    RoomArchived,
    /// One of the two has blocked the other.
    #[error("not possible between you and this user (blocked)")]
    Blocked,
    /// The current password given to confirm a change is wrong.
    #[error("the current password is wrong")]
    WrongPassword,
}

impl DomainError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// Result of domain operations.
pub type Result<T, E = DomainError> = std::result::Result<T, E>;
