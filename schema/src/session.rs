//! Login sessions (`session-<id>`): one refresh-token family with rotation and reuse
//! detection. Only SHA-256 hashes of tokens are stored.
//!
//! Rotation: each refresh replaces the current token. Presenting a token that was already
//! rotated away means two parties hold the family (the classic stolen-token signal), so the
//! whole family is ended and the caller gets [`DomainError::RefreshTokenReused`] *after* the
//! revocation is durable — see [`Session::refresh_outcome`].

use chrono::{DateTime, Utc};

use crate::events::{Event, SessionEndReason};
use crate::ids::{SessionId, UserId};
use crate::{Aggregate, DomainError, Result};

#[derive(Debug, Clone, Default)]
pub struct SessionAggregate {
    pub user_id: Option<UserId>,
    pub current_hash: Option<String>,
    pub spent_hashes: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub ended: Option<SessionEndReason>,
}

#[derive(Debug, Clone)]
pub enum SessionCommand {
    Start {
        session_id: SessionId,
        user_id: UserId,
        token_hash: String,
        expires_at: DateTime<Utc>,
    },
    Refresh {
        presented_hash: String,
        new_hash: String,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    },
    End {
        presented_hash: String,
    },
    /// End the session on its owner's behalf (revoked from another session, password
    /// changed, account deleted). Idempotent; another user's session is `NotFound`.
    Revoke {
        user: UserId,
        reason: SessionEndReason,
    },
}

impl SessionAggregate {
    /// What a refresh should answer once the events `decide` returned are durable: rotation
    /// succeeds, a detected reuse is refused (after the revocation was stored).
    pub fn refresh_outcome(events: &[Event]) -> Result<()> {
        match events {
            [
                Event::SessionEnded {
                    reason: SessionEndReason::TokenReused,
                },
            ] => Err(DomainError::RefreshTokenReused),
            _ => Ok(()),
        }
    }

    fn check_presented(&self, presented: &str, now: DateTime<Utc>) -> Result<Option<Vec<Event>>> {
        if self.user_id.is_none() || self.ended.is_some() {
            return Err(DomainError::InvalidRefreshToken);
        }
        if self.spent_hashes.iter().any(|h| h == presented) {
            return Ok(Some(vec![Event::SessionEnded {
                reason: SessionEndReason::TokenReused,
            }]));
        }
        if self.current_hash.as_deref() != Some(presented)
            || self.expires_at.is_none_or(|e| e <= now)
        {
            return Err(DomainError::InvalidRefreshToken);
        }
        Ok(None)
    }
}

impl Aggregate for SessionAggregate {
    type Command = SessionCommand;

    fn decide(&self, command: &SessionCommand) -> Result<Vec<Event>> {
        match command {
            SessionCommand::Start {
                session_id,
                user_id,
                token_hash,
                expires_at,
            } => {
                if self.user_id.is_some() {
                    return Err(DomainError::NotAllowed("the session already exists"));
                }
                Ok(vec![Event::SessionStarted {
                    session_id: *session_id,
                    user_id: *user_id,
                    token_hash: token_hash.clone(),
                    expires_at: *expires_at,
                }])
            }
            SessionCommand::Refresh {
                presented_hash,
                new_hash,
                now,
                expires_at,
            } => {
                if let Some(revoke) = self.check_presented(presented_hash, *now)? {
                    return Ok(revoke);
                }
                Ok(vec![Event::SessionRefreshed {
                    token_hash: new_hash.clone(),
                    expires_at: *expires_at,
                }])
            }
            // Logging out is idempotent: an ended session stays ended. A spent token still
            // counts as reuse and revokes the family.
            SessionCommand::End { presented_hash } => {
                if self.user_id.is_none() {
                    return Err(DomainError::InvalidRefreshToken);
                }
                if self.ended.is_some() {
                    return Ok(vec![]);
                }
                if self.spent_hashes.iter().any(|h| h == presented_hash) {
                    return Ok(vec![Event::SessionEnded {
                        reason: SessionEndReason::TokenReused,
                    }]);
                }
                if self.current_hash.as_ref() != Some(presented_hash) {
                    return Err(DomainError::InvalidRefreshToken);
                }
                Ok(vec![Event::SessionEnded {
                    reason: SessionEndReason::Logout,
                }])
            }
            SessionCommand::Revoke { user, reason } => {
                if self.user_id != Some(*user) {
                    return Err(DomainError::NotFound("session"));
                }
                if self.ended.is_some() {
                    return Ok(vec![]);
                }
                Ok(vec![Event::SessionEnded { reason: *reason }])
            }
        }
    }

    fn evolve(&mut self, event: &Event) {
        match event {
            Event::SessionStarted {
                user_id,
                token_hash,
                expires_at,
                ..
            } => {
                self.user_id = Some(*user_id);
                self.current_hash = Some(token_hash.clone());
                self.expires_at = Some(*expires_at);
            }
            Event::SessionRefreshed {
                token_hash,
                expires_at,
            } => {
                if let Some(old) = self.current_hash.replace(token_hash.clone()) {
                    self.spent_hashes.push(old);
                }
                self.expires_at = Some(*expires_at);
            }
            Event::SessionEnded { reason } => self.ended = Some(*reason),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::testing::given;

    fn started(now: DateTime<Utc>) -> Event {
        Event::SessionStarted {
            session_id: SessionId::new(),
            user_id: UserId::new(),
            token_hash: "h1".into(),
            expires_at: now + Duration::days(30),
        }
    }

    fn refresh(presented: &str, new: &str, now: DateTime<Utc>) -> SessionCommand {
        SessionCommand::Refresh {
            presented_hash: presented.into(),
            new_hash: new.into(),
            now,
            expires_at: now + Duration::days(30),
        }
    }

    #[test]
    fn refresh_rotates_the_current_token() {
        let now = Utc::now();
        given::<SessionAggregate>(&[started(now)])
            .when(refresh("h1", "h2", now))
            .then(&[Event::SessionRefreshed {
                token_hash: "h2".into(),
                expires_at: now + Duration::days(30),
            }]);
    }

    #[test]
    fn reusing_a_rotated_token_revokes_the_family() {
        let now = Utc::now();
        let history = [
            started(now),
            Event::SessionRefreshed {
                token_hash: "h2".into(),
                expires_at: now + Duration::days(30),
            },
        ];
        let events = given::<SessionAggregate>(&history)
            .when(refresh("h1", "h3", now))
            .events();
        assert_eq!(
            events,
            [Event::SessionEnded {
                reason: SessionEndReason::TokenReused
            }]
        );
        assert_eq!(
            SessionAggregate::refresh_outcome(&events),
            Err(DomainError::RefreshTokenReused)
        );
        // After revocation even the newest token is dead.
        let revoked = [history[0].clone(), history[1].clone(), events[0].clone()];
        given::<SessionAggregate>(&revoked)
            .when(refresh("h2", "h4", now))
            .then_error(DomainError::InvalidRefreshToken);
    }

    #[test]
    fn unknown_or_expired_tokens_are_refused() {
        let now = Utc::now();
        given::<SessionAggregate>(&[started(now)])
            .when(refresh("nope", "h2", now))
            .then_error(DomainError::InvalidRefreshToken);
        given::<SessionAggregate>(&[started(now)])
            .when(refresh("h1", "h2", now + Duration::days(31)))
            .then_error(DomainError::InvalidRefreshToken);
        given::<SessionAggregate>(&[])
            .when(refresh("h1", "h2", now))
            .then_error(DomainError::InvalidRefreshToken);
    }

    #[test]
    fn logout_ends_the_session() {
        let now = Utc::now();
        let events = given::<SessionAggregate>(&[started(now)])
            .when(SessionCommand::End {
                presented_hash: "h1".into(),
            })
            .events();
        assert_eq!(
            events,
            [Event::SessionEnded {
                reason: SessionEndReason::Logout
            }]
        );
        let ended = [started(now), events[0].clone()];
        given::<SessionAggregate>(&ended)
            .when(refresh("h1", "h2", now))
            .then_error(DomainError::InvalidRefreshToken);
        // Logging out again changes nothing and is not an error.
        given::<SessionAggregate>(&ended)
            .when(SessionCommand::End {
                presented_hash: "h1".into(),
            })
            .then(&[]);
    }

    #[test]
    fn only_the_owner_revokes_a_session() {
        let now = Utc::now();
        let start = started(now);
        let Event::SessionStarted { user_id, .. } = &start else {
            unreachable!()
        };
        let revoke = |user| SessionCommand::Revoke {
            user,
            reason: SessionEndReason::Revoked,
        };
        given::<SessionAggregate>(std::slice::from_ref(&start))
            .when(revoke(UserId::new()))
            .then_error(DomainError::NotFound("session"));
        let ended = Event::SessionEnded {
            reason: SessionEndReason::Revoked,
        };
        given::<SessionAggregate>(std::slice::from_ref(&start))
            .when(revoke(*user_id))
            .then(std::slice::from_ref(&ended));
        given::<SessionAggregate>(&[start.clone(), ended])
            .when(revoke(*user_id))
            .then(&[]);
    }
}
