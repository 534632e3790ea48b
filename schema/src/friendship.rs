//! Friendships with consent (`friendship-<pair>`, one stream per pair of people): one asks,
//! the other accepts or declines, the asker may cancel, either may end it. Friends see each
//! other's presence; a one-sided friend list does not exist any more.

use crate::events::Event;
use crate::ids::UserId;
use crate::{Aggregate, DomainError, Result};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FriendshipAggregate {
    #[default]
    None,
    /// `from` asked `to`.
    Pending {
        from: UserId,
        to: UserId,
    },
    Friends,
}

#[derive(Debug, Clone)]
pub enum FriendshipCommand {
    /// `from` asks `to`. Asking someone who asked you accepts their request. `blocked`: one
    /// of them has blocked the other (checked by the caller against both accounts).
    Request {
        from: UserId,
        to: UserId,
        blocked: bool,
    },
    Accept {
        by: UserId,
    },
    Decline {
        by: UserId,
    },
    Cancel {
        by: UserId,
    },
    /// Idempotent.
    Unfriend {
        by: UserId,
        other: UserId,
    },
}

const NO_REQUEST: DomainError = DomainError::NotFound("friend request");

impl Aggregate for FriendshipAggregate {
    type Command = FriendshipCommand;

    fn decide(&self, command: &FriendshipCommand) -> Result<Vec<Event>> {
        match (command, *self) {
            (FriendshipCommand::Request { from, to, .. }, _) if from == to => {
                Err(DomainError::NotAllowed("you cannot befriend yourself"))
            }
            (FriendshipCommand::Request { blocked: true, .. }, _) => Err(DomainError::Blocked),
            (FriendshipCommand::Request { from, to, .. }, Self::None) => {
                Ok(vec![Event::FriendRequested {
                    from: *from,
                    to: *to,
                }])
            }
            (FriendshipCommand::Request { from, .. }, Self::Pending { from: asker, to }) => {
                if asker == *from {
                    Ok(vec![])
                } else {
                    Ok(vec![Event::FriendRequestAccepted { from: asker, to }])
                }
            }
            (FriendshipCommand::Request { .. }, Self::Friends) => Ok(vec![]),
            (FriendshipCommand::Accept { by }, Self::Pending { from, to }) if to == *by => {
                Ok(vec![Event::FriendRequestAccepted { from, to }])
            }
            (FriendshipCommand::Decline { by }, Self::Pending { from, to }) if to == *by => {
                Ok(vec![Event::FriendRequestDeclined { from, to }])
            }
            (FriendshipCommand::Cancel { by }, Self::Pending { from, to }) if from == *by => {
                Ok(vec![Event::FriendRequestCanceled { from, to }])
            }
            (FriendshipCommand::Unfriend { by, other }, Self::Friends) => {
                Ok(vec![Event::Unfriended {
                    by: *by,
                    other: *other,
                }])
            }
            (FriendshipCommand::Unfriend { .. }, _) => Ok(vec![]),
            (FriendshipCommand::Accept { .. }, Self::Friends) => Ok(vec![]),
            _ => Err(NO_REQUEST),
        }
    }

    fn evolve(&mut self, event: &Event) {
        *self = match event {
            Event::FriendRequested { from, to } => Self::Pending {
                from: *from,
                to: *to,
            },
            Event::FriendRequestAccepted { .. } => Self::Friends,
            Event::FriendRequestDeclined { .. }
            | Event::FriendRequestCanceled { .. }
            | Event::Unfriended { .. } => Self::None,
            _ => *self,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given;

    fn pair() -> (UserId, UserId) {
        (UserId::new(), UserId::new())
    }

    fn request(from: UserId, to: UserId) -> FriendshipCommand {
        FriendshipCommand::Request {
            from,
            to,
            blocked: false,
        }
    }

    #[test]
    fn a_request_needs_the_other_side_to_accept() {
        let (a, b) = pair();
        let asked = Event::FriendRequested { from: a, to: b };
        given::<FriendshipAggregate>(&[])
            .when(request(a, b))
            .then(std::slice::from_ref(&asked));
        given::<FriendshipAggregate>(std::slice::from_ref(&asked))
            .when(request(a, b))
            .then(&[]);
        // Only the addressee accepts or declines; only the asker cancels.
        given::<FriendshipAggregate>(std::slice::from_ref(&asked))
            .when(FriendshipCommand::Accept { by: a })
            .then_error(NO_REQUEST);
        given::<FriendshipAggregate>(std::slice::from_ref(&asked))
            .when(FriendshipCommand::Accept { by: b })
            .then(&[Event::FriendRequestAccepted { from: a, to: b }]);
        given::<FriendshipAggregate>(std::slice::from_ref(&asked))
            .when(FriendshipCommand::Decline { by: b })
            .then(&[Event::FriendRequestDeclined { from: a, to: b }]);
        given::<FriendshipAggregate>(std::slice::from_ref(&asked))
            .when(FriendshipCommand::Cancel { by: b })
            .then_error(NO_REQUEST);
        given::<FriendshipAggregate>(std::slice::from_ref(&asked))
            .when(FriendshipCommand::Cancel { by: a })
            .then(&[Event::FriendRequestCanceled { from: a, to: b }]);
        // Asking back accepts.
        given::<FriendshipAggregate>(std::slice::from_ref(&asked))
            .when(request(b, a))
            .then(&[Event::FriendRequestAccepted { from: a, to: b }]);
    }

    #[test]
    fn blocked_or_self_requests_are_refused_and_unfriending_is_idempotent() {
        let (a, b) = pair();
        given::<FriendshipAggregate>(&[])
            .when(FriendshipCommand::Request {
                from: a,
                to: b,
                blocked: true,
            })
            .then_error(DomainError::Blocked);
        given::<FriendshipAggregate>(&[])
            .when(request(a, a))
            .then_error(DomainError::NotAllowed("you cannot befriend yourself"));
        let friends = [
            Event::FriendRequested { from: a, to: b },
            Event::FriendRequestAccepted { from: a, to: b },
        ];
        given::<FriendshipAggregate>(&friends)
            .when(FriendshipCommand::Unfriend { by: b, other: a })
            .then(&[Event::Unfriended { by: b, other: a }]);
        given::<FriendshipAggregate>(&[])
            .when(FriendshipCommand::Unfriend { by: b, other: a })
            .then(&[]);
    }
}
