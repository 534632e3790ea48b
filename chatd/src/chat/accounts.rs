//! Accounts: registering, logging in, sessions (refresh-token rotation, listing, revoking),
//! profiles, passwords, withdrawal, blocking, and friendships with consent.

use std::collections::HashSet;

use std::net::IpAddr;

use chrono::Utc;
use projector::queries::{self, SessionView, UserView};
use schema::events::SessionEndReason;
use schema::friendship::{FriendshipAggregate, FriendshipCommand};
use schema::room::RoomCommand;
use schema::session::{SessionAggregate, SessionCommand};
use schema::user::{UserAggregate, UserCommand};
use schema::{
    DisplayName, DomainError, Password, SessionId, StatusMessage, UserId, Username, streams,
};

use super::Chat;
use super::auth;
use super::commands::{Executed, Loaded};
use super::error::{ChatError, Result};
use crate::limits::address_key;
use crate::security::{self, AuthFailure};

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
    /// Registers `username`, asked from `source` (registrations per address are limited).
    pub async fn register(
        &self,
        username: Username,
        password: Password,
        display_name: Option<DisplayName>,
        source: IpAddr,
    ) -> Result<UserView> {
        if let Err(limited) = self.limits.registrations.take(address_key(source), 1) {
            security::throttled(AuthFailure::RegisterThrottled, source);
            return Err(limited.into());
        }
        let user_id = UserId::for_username(&username);
        let stream = streams::user(user_id);
        let mut loaded = None;
        self.catch_up::<UserAggregate>(&stream, &mut loaded).await?;
        // Check before the expensive hash; the append below re-checks atomically.
        if loaded
            .as_ref()
            .is_some_and(|l| l.state.registered.is_some())
        {
            return Err(DomainError::UsernameTaken.into());
        }
        let password_hash = self.auth.hash_password(password).await?;
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
            status_message: None,
            deleted: false,
        })
    }

    /// Logs in, asked from `source`: after repeated failures for the account or from the
    /// address, further attempts must wait (exponential backoff).
    pub async fn login(&self, username: &str, password: String, source: IpAddr) -> Result<Tokens> {
        let attempt = match self.limits.login(username, source) {
            Ok(attempt) => attempt,
            Err(limited) => {
                security::throttled(AuthFailure::LoginThrottled, source);
                return Err(limited.into());
            }
        };
        let registered = match Username::parse(username) {
            Ok(name) => {
                let mut loaded = None;
                self.catch_up::<UserAggregate>(
                    &streams::user(UserId::for_username(&name)),
                    &mut loaded,
                )
                .await?;
                loaded.and_then(|l| l.state.active().cloned())
            }
            Err(_) => None,
        };
        let hash = registered.as_ref().map(|r| r.password_hash.clone());
        if !self.auth.verify_password(password, hash).await? {
            return Err(ChatError::InvalidCredentials);
        }
        let user = registered.ok_or(ChatError::InvalidCredentials)?;
        attempt.succeeded();
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
        self.command::<SessionAggregate>(&streams::session(session_id), &mut None, &command)
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
            .command::<SessionAggregate>(&streams::session(session_id), &mut loaded, &command)
            .await?;
        SessionAggregate::refresh_outcome(&events)?;
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
        self.command::<SessionAggregate>(&streams::session(session_id), &mut None, &command)
            .await?;
        Ok(())
    }

    async fn user_command(&self, actor: UserId, command: UserCommand) -> Result<()> {
        self.command::<UserAggregate>(&streams::user(actor), &mut None, &command)
            .await?;
        Ok(())
    }

    pub async fn update_profile(
        &self,
        actor: UserId,
        display_name: Option<DisplayName>,
        status_message: Option<StatusMessage>,
    ) -> Result<()> {
        let command = UserCommand::UpdateProfile {
            display_name,
            status_message,
        };
        self.user_command(actor, command).await
    }

    /// Refuses unless `password` is the account's (403 `wrong_password`).
    pub async fn confirm_password(&self, actor: UserId, password: String) -> Result<()> {
        let mut loaded = None;
        self.check_password(actor, &mut loaded, password).await
    }

    async fn check_password(
        &self,
        actor: UserId,
        loaded: &mut Option<Loaded<UserAggregate>>,
        password: String,
    ) -> Result<()> {
        self.catch_up::<UserAggregate>(&streams::user(actor), loaded)
            .await?;
        let Some(me) = loaded.as_ref().and_then(|l| l.state.active()) else {
            return Err(DomainError::NotFound("user").into());
        };
        // A stolen access token must not let anyone guess the password faster than a login
        // could: the account's login backoff counts these too.
        let attempt = self.limits.password_check(me.username.as_str())?;
        let hash = Some(me.password_hash.clone());
        if !self.auth.verify_password(password, hash).await? {
            return Err(DomainError::WrongPassword.into());
        }
        attempt.succeeded();
        Ok(())
    }

    /// Changes the password after checking the current one, then ends every other session.
    pub async fn change_password(
        &self,
        actor: UserId,
        session: SessionId,
        current: String,
        new: Password,
    ) -> Result<()> {
        let stream = streams::user(actor);
        let mut loaded = None;
        self.check_password(actor, &mut loaded, current).await?;
        let password_hash = self
            .auth
            .hash_password(new)
            .await
            .map_err(|e| ChatError::Internal(e.to_string()))?;
        let command = UserCommand::ChangePassword { password_hash };
        self.command(&stream, &mut loaded, &command).await?;
        self.end_sessions(actor, Some(session), SessionEndReason::PasswordChanged)
            .await
    }

    /// The caller's sessions that have not ended, newest first.
    pub async fn sessions(&self, actor: UserId) -> Result<Vec<SessionView>> {
        Ok(self
            .models
            .read(move |c| queries::sessions(c, actor))
            .await?)
    }

    /// Ends one of the caller's sessions (404 `session_not_found` for anyone else's).
    pub async fn revoke_session(&self, actor: UserId, session: SessionId) -> Result<()> {
        self.end_session(actor, session, SessionEndReason::Revoked)
            .await
    }

    async fn end_session(
        &self,
        actor: UserId,
        session: SessionId,
        reason: SessionEndReason,
    ) -> Result<()> {
        let command = SessionCommand::Revoke {
            user: actor,
            reason,
        };
        self.command::<SessionAggregate>(&streams::session(session), &mut None, &command)
            .await?;
        Ok(())
    }

    /// The one place that ends a user's sessions on their behalf: a `session_ended` event per
    /// session (which is what revokes its tokens everywhere), all but `except`.
    async fn end_sessions(
        &self,
        actor: UserId,
        except: Option<SessionId>,
        reason: SessionEndReason,
    ) -> Result<()> {
        for s in self.sessions(actor).await? {
            if Some(s.session_id) != except {
                self.end_session(actor, s.session_id, reason).await?;
            }
        }
        Ok(())
    }

    /// Withdraws the account: the profile is erased (messages stay, shown as from a deleted
    /// user), every session ends, the user leaves every room. The username stays reserved.
    /// Safe to repeat: each step is idempotent.
    pub async fn delete_account(&self, actor: UserId) -> Result<()> {
        self.user_command(actor, UserCommand::Delete).await?;
        self.end_sessions(actor, None, SessionEndReason::AccountDeleted)
            .await?;
        let (_, rooms) = self.rooms_at_checkpoint(actor).await?;
        for room in rooms {
            self.room_command(room, RoomCommand::Depart { user: actor })
                .await?;
        }
        Ok(())
    }

    pub async fn block(&self, actor: UserId, user: UserId) -> Result<()> {
        if actor != user {
            self.require_users(vec![user]).await?;
        }
        self.user_command(actor, UserCommand::Block { user }).await
    }

    pub async fn unblock(&self, actor: UserId, user: UserId) -> Result<()> {
        self.user_command(actor, UserCommand::Unblock { user })
            .await
    }

    pub async fn blocked_users(&self, actor: UserId) -> Result<Vec<UserView>> {
        Ok(self
            .models
            .read(move |c| queries::blocked_users(c, actor))
            .await?)
    }

    /// Whether one of the two has blocked the other.
    pub(super) async fn blocked_either(&self, a: UserId, b: UserId) -> Result<bool> {
        Ok(self
            .models
            .read(move |c| queries::blocked_either(c, a, b))
            .await?)
    }

    async fn friendship(
        &self,
        a: UserId,
        b: UserId,
        command: FriendshipCommand,
    ) -> Result<Vec<schema::Event>> {
        let executed = self
            .command::<FriendshipAggregate>(&streams::friendship(a, b), &mut None, &command)
            .await?;
        Ok(executed.events)
    }

    /// Asks `to` to be friends; if they had asked the caller, this accepts. True when the
    /// two are friends now.
    pub async fn request_friend(&self, actor: UserId, to: UserId) -> Result<bool> {
        if actor != to {
            self.require_users(vec![to]).await?;
        }
        let blocked = self.blocked_either(actor, to).await?;
        let command = FriendshipCommand::Request {
            from: actor,
            to,
            blocked,
        };
        self.friendship(actor, to, command).await?;
        let friends = self
            .models
            .read(move |c| Ok(queries::friends(c, actor)?.iter().any(|f| f.user_id == to)))
            .await?;
        Ok(friends)
    }

    /// Answers a request `from` made to the caller.
    pub async fn answer_friend_request(
        &self,
        actor: UserId,
        from: UserId,
        accept: bool,
    ) -> Result<()> {
        let command = if accept {
            FriendshipCommand::Accept { by: actor }
        } else {
            FriendshipCommand::Decline { by: actor }
        };
        self.friendship(actor, from, command).await?;
        Ok(())
    }

    /// Withdraws the caller's request to `to`.
    pub async fn cancel_friend_request(&self, actor: UserId, to: UserId) -> Result<()> {
        self.friendship(actor, to, FriendshipCommand::Cancel { by: actor })
            .await?;
        Ok(())
    }

    pub async fn unfriend(&self, actor: UserId, other: UserId) -> Result<()> {
        let command = FriendshipCommand::Unfriend { by: actor, other };
        self.friendship(actor, other, command).await?;
        Ok(())
    }

    /// Friend requests to the caller (`incoming`) or from them.
    pub async fn friend_requests(&self, actor: UserId, incoming: bool) -> Result<Vec<UserView>> {
        Ok(self
            .models
            .read(move |c| queries::friend_requests(c, actor, incoming))
            .await?)
    }

    pub async fn friends(&self, actor: UserId) -> Result<Vec<Person>> {
        let (friends, hidden) = self
            .models
            .read(move |c| {
                Ok((
                    queries::friends(c, actor)?,
                    queries::block_partners(c, actor)?,
                ))
            })
            .await?;
        Ok(self.with_presence(friends, &hidden))
    }

    /// `users` with whether each is online, as `hidden` (people in a block with the viewer)
    /// may not be seen.
    pub(super) fn with_presence(
        &self,
        users: Vec<UserView>,
        hidden: &HashSet<UserId>,
    ) -> Vec<Person> {
        users
            .into_iter()
            .map(|user| Person {
                online: self.is_visibly_online(user.user_id, hidden),
                user,
            })
            .collect()
    }

    pub(super) fn is_visibly_online(&self, user: UserId, hidden: &HashSet<UserId>) -> bool {
        !hidden.contains(&user) && self.presence.is_online(user)
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
