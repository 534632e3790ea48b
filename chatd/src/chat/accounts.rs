//! Accounts: registering, logging in, sessions (refresh-token rotation), profiles and friend
//! lists.

use chrono::Utc;
use projector::queries::{self, UserView};
use schema::session::{Session, SessionCommand};
use schema::user::{User, UserCommand};
use schema::{DisplayName, DomainError, Password, SessionId, UserId, Username, streams};

use super::Chat;
use super::auth;
use super::commands::Executed;
use super::error::{ChatError, Result};

/// Tokens handed out at login and refresh.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
    pub user_id: UserId,
}

/// Someone, with whether they are online right now.
#[derive(Debug, Clone)]
pub struct Person {
    pub user: UserView,
    pub online: bool,
}

impl Chat {
    pub async fn register(
        &self,
        username: Username,
        password: Password,
        display_name: Option<DisplayName>,
    ) -> Result<UserView> {
        let user_id = UserId::for_username(&username);
        let stream = streams::user(user_id);
        let mut loaded = None;
        self.catch_up::<User>(&stream, &mut loaded).await?;
        // Check before the expensive hash; the append below re-checks atomically.
        if loaded
            .as_ref()
            .is_some_and(|l| l.state.registered.is_some())
        {
            return Err(DomainError::UsernameTaken.into());
        }
        let password_hash = self
            .auth
            .hash_password(password)
            .await
            .map_err(|e| ChatError::Internal(e.to_string()))?;
        let display_name = display_name.unwrap_or_else(|| DisplayName::from(&username));
        let command = UserCommand::Register {
            username: username.clone(),
            display_name: display_name.clone(),
            password_hash,
        };
        self.command(&stream, &mut loaded, &command).await?;
        Ok(UserView {
            user_id,
            username: username.as_str().to_owned(),
            display_name: display_name.as_str().to_owned(),
        })
    }

    pub async fn login(&self, username: &str, password: String) -> Result<Tokens> {
        let registered = match Username::parse(username) {
            Ok(name) => {
                let mut loaded = None;
                self.catch_up::<User>(&streams::user(UserId::for_username(&name)), &mut loaded)
                    .await?;
                loaded.and_then(|l| l.state.registered)
            }
            Err(_) => None,
        };
        let hash = registered.as_ref().map(|r| r.password_hash.clone());
        if !self.auth.verify_password(password, hash).await {
            return Err(ChatError::InvalidCredentials);
        }
        let user = registered.ok_or(ChatError::InvalidCredentials)?;
        self.start_session(user.user_id).await
    }

    async fn start_session(&self, user_id: UserId) -> Result<Tokens> {
        let session_id = SessionId::new();
        let refresh_token = auth::new_refresh_token(session_id);
        let command = SessionCommand::Start {
            session_id,
            user_id,
            token_hash: auth::token_hash(&refresh_token),
            expires_at: self.auth.refresh_expiry(Utc::now()),
        };
        self.command::<Session>(&streams::session(session_id), &mut None, &command)
            .await?;
        Ok(self.tokens(user_id, session_id, refresh_token))
    }

    fn tokens(&self, user_id: UserId, session_id: SessionId, refresh_token: String) -> Tokens {
        Tokens {
            access_token: self.auth.issue_access(user_id, session_id),
            refresh_token,
            expires_in: self.auth.access_ttl().as_secs(),
            user_id,
        }
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens> {
        let session_id =
            auth::refresh_token_session(refresh_token).ok_or(DomainError::InvalidRefreshToken)?;
        let new_token = auth::new_refresh_token(session_id);
        let now = Utc::now();
        let command = SessionCommand::Refresh {
            presented_hash: auth::token_hash(refresh_token),
            new_hash: auth::token_hash(&new_token),
            now,
            expires_at: self.auth.refresh_expiry(now),
        };
        let mut loaded = None;
        let Executed { events, .. } = self
            .command::<Session>(&streams::session(session_id), &mut loaded, &command)
            .await?;
        Session::refresh_outcome(&events)?;
        let user_id = loaded
            .and_then(|l| l.state.user_id)
            .ok_or(DomainError::InvalidRefreshToken)?;
        Ok(self.tokens(user_id, session_id, new_token))
    }

    pub async fn logout(&self, refresh_token: &str) -> Result<()> {
        let session_id =
            auth::refresh_token_session(refresh_token).ok_or(DomainError::InvalidRefreshToken)?;
        let command = SessionCommand::End {
            presented_hash: auth::token_hash(refresh_token),
        };
        // The session is over either way (a spent token revokes it): 204.
        self.command::<Session>(&streams::session(session_id), &mut None, &command)
            .await?;
        Ok(())
    }

    async fn user_command(&self, actor: UserId, command: UserCommand) -> Result<()> {
        self.command::<User>(&streams::user(actor), &mut None, &command)
            .await?;
        Ok(())
    }

    pub async fn add_friend(&self, actor: UserId, friend: UserId) -> Result<()> {
        if actor != friend {
            self.require_users(vec![friend]).await?;
        }
        self.user_command(actor, UserCommand::AddFriend { friend })
            .await
    }

    pub async fn remove_friend(&self, actor: UserId, friend: UserId) -> Result<()> {
        self.user_command(actor, UserCommand::RemoveFriend { friend })
            .await
    }

    pub async fn friends(&self, actor: UserId) -> Result<Vec<Person>> {
        let friends = self
            .models
            .read(move |c| queries::friends(c, actor))
            .await?;
        Ok(self.with_presence(friends))
    }

    pub(super) fn with_presence(&self, users: Vec<UserView>) -> Vec<Person> {
        users
            .into_iter()
            .map(|user| Person {
                online: self.presence.is_online(user.user_id),
                user,
            })
            .collect()
    }

    pub async fn user(&self, id: UserId) -> Result<Option<UserView>> {
        Ok(self.models.read(move |c| queries::user(c, id)).await?)
    }

    pub async fn search_users(&self, prefix: String, limit: usize) -> Result<Vec<UserView>> {
        Ok(self
            .models
            .read(move |c| queries::search_users(c, &prefix, limit))
            .await?)
    }
}
