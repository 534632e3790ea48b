//! The user account aggregate (`user-<id>`, where the id is derived from the username).

use std::collections::HashSet;

use crate::events::Event;
use crate::ids::UserId;
use crate::values::{DisplayName, Username};
use crate::{Aggregate, DomainError, Result};

#[derive(Debug, Clone, Default)]
pub struct UserAggregate {
    pub registered: Option<Registered>,
    pub friends: HashSet<UserId>,
}

#[derive(Debug, Clone)]
pub struct Registered {
    pub user_id: UserId,
    pub username: Username,
    pub display_name: DisplayName,
    pub password_hash: String,
}

#[derive(Debug, Clone)]
pub enum UserCommand {
    /// The password is hashed before the command is built: hashing is slow I/O-free work the
    /// caller runs off the async threads.
    Register {
        username: Username,
        display_name: DisplayName,
        password_hash: String,
    },
    /// Put someone on the friend list (one-directional, like a contact list). Idempotent.
    AddFriend { friend: UserId },
    /// Take someone off the friend list. Idempotent.
    RemoveFriend { friend: UserId },
}

impl Aggregate for UserAggregate {
    type Command = UserCommand;

    fn decide(&self, command: &UserCommand) -> Result<Vec<Event>> {
        match command {
            UserCommand::Register {
                username,
                display_name,
                password_hash,
            } => {
                if self.registered.is_some() {
                    return Err(DomainError::UsernameTaken);
                }
                Ok(vec![Event::UserRegistered {
                    user_id: UserId::for_username(username),
                    username: username.clone(),
                    display_name: display_name.clone(),
                    password_hash: password_hash.clone(),
                }])
            }
            UserCommand::AddFriend { friend } => {
                let me = self
                    .registered
                    .as_ref()
                    .ok_or(DomainError::NotFound("user"))?;
                if *friend == me.user_id {
                    return Err(DomainError::NotAllowed("you cannot befriend yourself"));
                }
                if self.friends.contains(friend) {
                    return Ok(vec![]);
                }
                Ok(vec![Event::FriendAdded { friend_id: *friend }])
            }
            UserCommand::RemoveFriend { friend } => {
                self.registered
                    .as_ref()
                    .ok_or(DomainError::NotFound("user"))?;
                if !self.friends.contains(friend) {
                    return Ok(vec![]);
                }
                Ok(vec![Event::FriendRemoved { friend_id: *friend }])
            }
        }
    }

    fn evolve(&mut self, event: &Event) {
        match event {
            Event::UserRegistered {
                user_id,
                username,
                display_name,
                password_hash,
            } => {
                self.registered = Some(Registered {
                    user_id: *user_id,
                    username: username.clone(),
                    display_name: display_name.clone(),
                    password_hash: password_hash.clone(),
                });
            }
            Event::FriendAdded { friend_id } => {
                self.friends.insert(*friend_id);
            }
            Event::FriendRemoved { friend_id } => {
                self.friends.remove(friend_id);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given;

    fn register(name: &str) -> UserCommand {
        let username = Username::parse(name).unwrap();
        UserCommand::Register {
            display_name: DisplayName::from(&username),
            username,
            password_hash: "$argon2id$stub".into(),
        }
    }

    #[test]
    fn registers_a_new_user_under_the_username_id() {
        let events = given::<UserAggregate>(&[]).when(register("alice")).events();
        let [
            Event::UserRegistered {
                user_id, username, ..
            },
        ] = events.as_slice()
        else {
            panic!("expected one UserRegistered, got {events:?}");
        };
        assert_eq!(username.as_str(), "alice");
        assert_eq!(*user_id, UserId::for_username(username));
    }

    #[test]
    fn friends_are_added_and_removed_idempotently() {
        let registered = given::<UserAggregate>(&[]).when(register("alice")).events();
        let me = UserId::for_username(&Username::parse("alice").unwrap());
        let bob = UserId::new();
        given::<UserAggregate>(&registered)
            .when(UserCommand::AddFriend { friend: bob })
            .then(&[Event::FriendAdded { friend_id: bob }]);
        let with_bob = [registered[0].clone(), Event::FriendAdded { friend_id: bob }];
        given::<UserAggregate>(&with_bob)
            .when(UserCommand::AddFriend { friend: bob })
            .then(&[]);
        given::<UserAggregate>(&with_bob)
            .when(UserCommand::RemoveFriend { friend: bob })
            .then(&[Event::FriendRemoved { friend_id: bob }]);
        given::<UserAggregate>(&registered)
            .when(UserCommand::RemoveFriend { friend: bob })
            .then(&[]);
        given::<UserAggregate>(&registered)
            .when(UserCommand::AddFriend { friend: me })
            .then_error(DomainError::NotAllowed("you cannot befriend yourself"));
    }

    #[test]
    fn refuses_a_taken_username() {
        let first = given::<UserAggregate>(&[]).when(register("alice")).events();
        given::<UserAggregate>(&first)
            .when(register("alice"))
            .then_error(DomainError::UsernameTaken);
    }
}
