//! The user account aggregate (`user-<id>`, where the id is derived from the username).

use crate::events::Event;
use crate::ids::UserId;
use crate::values::{DisplayName, Username};
use crate::{Aggregate, DomainError, Result};

#[derive(Debug, Clone, Default)]
pub struct User {
    pub registered: Option<Registered>,
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
}

impl Aggregate for User {
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
        }
    }

    fn evolve(&mut self, event: &Event) {
        if let Event::UserRegistered {
            user_id,
            username,
            display_name,
            password_hash,
        } = event
        {
            self.registered = Some(Registered {
                user_id: *user_id,
                username: username.clone(),
                display_name: display_name.clone(),
                password_hash: password_hash.clone(),
            });
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
        let events = given::<User>(&[]).when(register("alice")).events();
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
    fn refuses_a_taken_username() {
        let first = given::<User>(&[]).when(register("alice")).events();
        given::<User>(&first)
            .when(register("alice"))
            .then_error(DomainError::UsernameTaken);
    }
}
