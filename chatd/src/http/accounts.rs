use std::sync::Arc;

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use schema::{DisplayName, Password, UserId, Username};
use uuid::Uuid;

use super::models::{LoginRequest, RefreshRequest, RegisterRequest, TokenResponse, User};
use super::{ApiError, BearerAuth, Tag};
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

#[OpenApi(tag = "Tag::Accounts")]
impl Api {
    /// Create an account.
    ///
    /// 409 `username_taken` when the name (compared without case) is in use.
    #[oai(path = "/auth/register", method = "post")]
    async fn register(&self, body: Json<RegisterRequest>) -> Result<Registered, ApiError> {
        let username = Username::parse(&body.username)?;
        let password = Password::parse(&body.password)?;
        let display_name = body
            .display_name
            .as_deref()
            .map(DisplayName::parse)
            .transpose()?;
        let user = self.chat.register(username, password, display_name).await?;
        Ok(Registered::Created(Json(user.into())))
    }

    /// Log in: a short-lived access token and a single-use refresh token.
    ///
    /// 401 `invalid_credentials` for an unknown user or a wrong password alike.
    #[oai(path = "/auth/login", method = "post")]
    async fn login(&self, body: Json<LoginRequest>) -> Result<Json<TokenResponse>, ApiError> {
        let Json(LoginRequest { username, password }) = body;
        Ok(Json(self.chat.login(&username, password.0).await?.into()))
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
