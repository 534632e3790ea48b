use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{ApiResponse, Object, OpenApi};
use schema::{DisplayName, Password, SessionId, StatusMessage, UserId, Username};
use uuid::Uuid;

use super::models::{LoginRequest, RefreshRequest, RegisterRequest, Text, TokenResponse, User};
use super::{ApiError, BearerAuth, ClientIp, Done, Tag};
use crate::chat::{Chat, Code};

#[derive(Debug)]
pub struct Api {
    pub chat: Arc<Chat>,
}

#[derive(ApiResponse)]
enum Registered {
    /// The account was created.
    #[oai(status = 201)]
    Created(Json<User>),
}

#[derive(ApiResponse)]
enum LoggedOut {
    /// The session has ended; its refresh token no longer works.
    #[oai(status = 204)]
    Done,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct ProfileRequest {
    /// 1–64 characters.
    pub display_name: MaybeUndefined<Text>,
    /// 0–140 characters, one line; empty or `null` clears it.
    pub status_message: MaybeUndefined<Text>,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct PasswordChangeRequest {
    pub current_password: Text,
    /// 8–256 characters.
    pub new_password: Text,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct DeleteAccountRequest {
    /// Your password, to confirm.
    pub password: Text,
}

#[derive(Debug, Object)]
pub struct Session {
    pub session_id: Uuid,
    pub started_at: DateTime<Utc>,
    /// The last login or refresh.
    pub last_used_at: DateTime<Utc>,
    /// When its refresh token expires unless refreshed.
    pub expires_at: DateTime<Utc>,
    /// The session of the token making this request.
    pub current: bool,
}

#[OpenApi(tag = "Tag::Accounts")]
impl Api {
    /// Create an account.
    ///
    /// 409 `username_taken` when the name (compared without case) is in use; 429
    /// `register_throttled` after too many registrations from one address
    /// (`CHAT_REGISTRATIONS_PER_MIN`).
    #[oai(path = "/auth/register", method = "post")]
    async fn register(
        &self,
        body: Json<RegisterRequest>,
        ip: Data<&ClientIp>,
    ) -> Result<Registered, ApiError> {
        let username = Username::parse(&body.username)?;
        let password = Password::parse(&body.password)?;
        let display_name = body
            .display_name
            .as_deref()
            .map(DisplayName::parse)
            .transpose()?;
        let user = self
            .chat
            .register(username, password, display_name, ip.0.0)
            .await?;
        Ok(Registered::Created(Json(user.into())))
    }

    /// Log in: a short-lived access token and a single-use refresh token.
    ///
    /// 401 `invalid_credentials` for an unknown user or a wrong password alike. After
    /// repeated failures for the account or from the address, 429 `login_throttled` until
    /// `Retry-After` (the wait doubles with each further attempt).
    #[oai(path = "/auth/login", method = "post")]
    async fn login(
        &self,
        body: Json<LoginRequest>,
        ip: Data<&ClientIp>,
    ) -> Result<Json<TokenResponse>, ApiError> {
        let Json(LoginRequest { username, password }) = body;
        Ok(Json(
            self.chat.login(&username, password.0, ip.0.0).await?.into(),
        ))
    }

    /// Exchange a refresh token for a new pair (rotation).
    ///
    /// The presented token stops working. Presenting an already-used token again revokes the
    /// whole session (401 `refresh_token_reused`): someone else may hold a copy.
    #[oai(path = "/auth/refresh", method = "post")]
    async fn refresh(&self, body: Json<RefreshRequest>) -> Result<Json<TokenResponse>, ApiError> {
        Ok(Json(self.chat.refresh(&body.refresh_token).await?.into()))
    }

    /// End the session of a refresh token.
    #[oai(path = "/auth/logout", method = "post")]
    async fn logout(&self, body: Json<RefreshRequest>) -> Result<LoggedOut, ApiError> {
        self.chat.logout(&body.refresh_token).await?;
        Ok(LoggedOut::Done)
    }

    /// The caller's own account.
    #[oai(path = "/users/me", method = "get")]
    async fn me(&self, auth: BearerAuth) -> Result<Json<User>, ApiError> {
        self.profile(UserId(auth_id(&auth))).await
    }

    /// Change your display name and/or status message; absent fields stay as they are.
    #[oai(path = "/users/me", method = "patch")]
    async fn update_me(
        &self,
        auth: BearerAuth,
        body: Json<ProfileRequest>,
    ) -> Result<Json<User>, ApiError> {
        let display_name = super::admin::update("display_name", &body.display_name, None)?;
        let display_name = display_name
            .as_deref()
            .map(DisplayName::parse)
            .transpose()?;
        let status_message = super::admin::update(
            "status_message",
            &body.status_message,
            Some(Text(String::new())),
        )?;
        let status_message = status_message
            .as_deref()
            .map(StatusMessage::parse)
            .transpose()?;
        let me = UserId(auth_id(&auth));
        self.chat
            .update_profile(me, display_name, status_message)
            .await?;
        self.profile(me).await
    }

    /// Change your password (403 `wrong_password` if `current_password` is wrong; wrong ones
    /// count toward the account's login backoff, 429 `login_throttled`). Every other session
    /// ends; this one stays.
    #[oai(path = "/users/me/password", method = "post")]
    async fn change_password(
        &self,
        auth: BearerAuth,
        body: Json<PasswordChangeRequest>,
    ) -> Result<Done, ApiError> {
        let new = Password::parse(&body.new_password)?;
        let BearerAuth(super::Caller(me, session, _)) = auth;
        self.chat
            .change_password(me, session, body.0.current_password.0, new)
            .await?;
        Ok(Done::NoContent)
    }

    /// Delete your account (403 `wrong_password` unless `password` is right; 429
    /// `login_throttled` as for a password change). Your profile is
    /// erased and your messages show as from a deleted user; every session ends; you leave
    /// every room. The username stays reserved: it cannot be registered again.
    #[oai(path = "/users/me", method = "delete")]
    async fn delete_me(
        &self,
        auth: BearerAuth,
        body: Json<DeleteAccountRequest>,
    ) -> Result<Done, ApiError> {
        let me = UserId(auth_id(&auth));
        self.chat.confirm_password(me, body.0.password.0).await?;
        self.chat.delete_account(me).await?;
        Ok(Done::NoContent)
    }

    /// Your sessions that have not ended (one per login), newest first.
    #[oai(path = "/sessions", method = "get")]
    async fn sessions(&self, auth: BearerAuth) -> Result<Json<Vec<Session>>, ApiError> {
        let BearerAuth(super::Caller(me, current, _)) = auth;
        let list = self.chat.sessions(me).await?;
        Ok(Json(
            list.into_iter()
                .map(|s| Session {
                    session_id: s.session_id.0,
                    started_at: s.started_at,
                    last_used_at: s.last_used_at,
                    expires_at: s.expires_at,
                    current: s.session_id == current,
                })
                .collect(),
        ))
    }

    /// End one of your sessions (404 `session_not_found` for any other). Its refresh token
    /// stops working.
    #[oai(path = "/sessions/:session_id", method = "delete")]
    async fn revoke(&self, auth: BearerAuth, session_id: Path<Uuid>) -> Result<Done, ApiError> {
        self.chat
            .revoke_session(auth.0.0, SessionId(session_id.0))
            .await?;
        Ok(Done::NoContent)
    }

    /// Find people by username prefix (case-insensitive), e.g. to invite them.
    #[oai(path = "/users", method = "get")]
    async fn search(
        &self,
        _auth: BearerAuth,
        /// Username prefix, 1–32 characters.
        q: Query<String>,
        /// At most this many results (1–100, default 20).
        limit: Query<Option<u32>>,
    ) -> Result<Json<Vec<User>>, ApiError> {
        let q = q.0.trim().to_owned();
        if q.is_empty() || q.chars().count() > schema::limits::USERNAME_MAX {
            return Err(ApiError::invalid_parameter("q must be 1–32 characters"));
        }
        let limit = limit.0.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(ApiError::invalid_parameter("limit must be 1–100"));
        }
        let users = self.chat.search_users(q, limit as usize).await?;
        Ok(Json(users.into_iter().map(Into::into).collect()))
    }

    /// One user's public profile.
    #[oai(path = "/users/:user_id", method = "get")]
    async fn user(&self, _auth: BearerAuth, user_id: Path<Uuid>) -> Result<Json<User>, ApiError> {
        self.profile(UserId(user_id.0)).await
    }
}

impl Api {
    async fn profile(&self, id: UserId) -> Result<Json<User>, ApiError> {
        match self.chat.user(id).await? {
            Some(u) => Ok(Json(u.into())),
            None => Err(ApiError::new(Code::UserNotFound, "no such user")),
        }
    }
}

fn auth_id(auth: &BearerAuth) -> Uuid {
    (auth.0).0.0
}
