//! The user account aggregate (`user-<id>`, where the id is derived from the username).

use std::collections::HashSet;

use crate::events::Event;
use crate::ids::UserId;
use crate::values::{DisplayName, StatusMessage, Username};
use crate::{Aggregate, DomainError, Result};

#[derive(Debug, Clone, Default)]
pub struct UserAggregate {
    pub registered: Option<Registered>,
    /// The people this user has blocked.
    pub blocked: HashSet<UserId>,
    /// Withdrawn: the username stays taken, nothing else is left.
    pub deleted: bool,
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
    /// Change the display name and/or status message (`None`: unchanged).
    UpdateProfile {
        display_name: Option<DisplayName>,
        status_message: Option<StatusMessage>,
    },
    /// The caller checked the current password and hashed the new one.
    ChangePassword { password_hash: String },
    /// Idempotent.
    Block { user: UserId },
    /// Idempotent.
    Unblock { user: UserId },
    /// Withdraw the account. Idempotent.
    Delete,
}

impl UserAggregate {
    /// The account, if it exists and has not been deleted.
    pub fn active(&self) -> Option<&Registered> {
        self.registered.as_ref().filter(|_| !self.deleted)
    }

    fn me(&self) -> Result<&Registered> {
        self.active().ok_or(DomainError::NotFound("user"))
    }
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
            UserCommand::UpdateProfile {
                display_name,
                status_message,
            } => {
                self.me()?;
                if display_name.is_none() && status_message.is_none() {
                    return Ok(vec![]);
                }
                Ok(vec![Event::ProfileUpdated {
                    display_name: display_name.clone(),
                    status_message: status_message.clone(),
                }])
            }
            UserCommand::ChangePassword { password_hash } => {
                self.me()?;
                Ok(vec![Event::PasswordChanged {
                    password_hash: password_hash.clone(),
                }])
            }
            UserCommand::Block { user } => {
                let me = self.me()?;
                if *user == me.user_id {
                    return Err(DomainError::NotAllowed("you cannot block yourself"));
                }
                if self.blocked.contains(user) {
                    return Ok(vec![]);
                }
                Ok(vec![Event::UserBlocked { user_id: *user }])
            }
            UserCommand::Unblock { user } => {
                self.me()?;
                if !self.blocked.contains(user) {
                    return Ok(vec![]);
                }
                Ok(vec![Event::UserUnblocked { user_id: *user }])
            }
            UserCommand::Delete => {
                if self.registered.is_none() {
                    return Err(DomainError::NotFound("user"));
                }
                if self.deleted {
                    return Ok(vec![]);
                }
                Ok(vec![Event::AccountDeleted {}])
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
            Event::ProfileUpdated {
                display_name: Some(name),
                ..
            } => {
                if let Some(r) = &mut self.registered {
                    r.display_name = name.clone();
                }
            }
            Event::PasswordChanged { password_hash } => {
                if let Some(r) = &mut self.registered {
                    r.password_hash = password_hash.clone();
                }
            }
            Event::UserBlocked { user_id } => {
                self.blocked.insert(*user_id);
            }
            Event::UserUnblocked { user_id } => {
                self.blocked.remove(user_id);
            }
            Event::AccountDeleted {} => {
                self.deleted = true;
                self.blocked.clear();
                if let Some(r) = &mut self.registered {
                    r.password_hash.clear();
                }
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

    fn alice() -> (Vec<Event>, UserId) {
        let registered = given::<UserAggregate>(&[]).when(register("alice")).events();
        (
            registered,
            UserId::for_username(&Username::parse("alice").unwrap()),
        )
    }

    #[test]
    fn blocks_are_idempotent_and_not_of_yourself() {
        let (registered, me) = alice();
        let bob = UserId::new();
        given::<UserAggregate>(&registered)
            .when(UserCommand::Block { user: bob })
            .then(&[Event::UserBlocked { user_id: bob }]);
        let blocked = [registered[0].clone(), Event::UserBlocked { user_id: bob }];
        given::<UserAggregate>(&blocked)
            .when(UserCommand::Block { user: bob })
            .then(&[]);
        given::<UserAggregate>(&blocked)
            .when(UserCommand::Unblock { user: bob })
            .then(&[Event::UserUnblocked { user_id: bob }]);
        given::<UserAggregate>(&registered)
            .when(UserCommand::Block { user: me })
            .then_error(DomainError::NotAllowed("you cannot block yourself"));
    }

    #[test]
    fn profile_and_password_change_and_a_deleted_account_keeps_its_name_only() {
        let (registered, _) = alice();
        let name = DisplayName::parse("Alice L.").unwrap();
        given::<UserAggregate>(&registered)
            .when(UserCommand::UpdateProfile {
                display_name: Some(name.clone()),
                status_message: None,
            })
            .then(&[Event::ProfileUpdated {
                display_name: Some(name),
                status_message: None,
            }]);
        let changed = [
            registered[0].clone(),
            Event::PasswordChanged {
                password_hash: "$argon2id$new".into(),
            },
        ];
        let state = UserAggregate::replay(&changed);
        assert_eq!(state.active().unwrap().password_hash, "$argon2id$new");
        let deleted = [registered[0].clone(), Event::AccountDeleted {}];
        let state = UserAggregate::replay(&deleted);
        assert!(state.active().is_none(), "a deleted account cannot log in");
        given::<UserAggregate>(&deleted)
            .when(register("ALICE"))
            .then_error(DomainError::UsernameTaken);
        given::<UserAggregate>(&deleted)
            .when(UserCommand::UpdateProfile {
                display_name: Some(DisplayName::parse("back").unwrap()),
                status_message: None,
            })
            .then_error(DomainError::NotFound("user"));
        given::<UserAggregate>(&deleted)
            .when(UserCommand::Delete)
            .then(&[]);
    }

    #[test]
    fn refuses_a_taken_username() {
        let first = given::<UserAggregate>(&[]).when(register("alice")).events();
        given::<UserAggregate>(&first)
            .when(register("alice"))
            .then_error(DomainError::UsernameTaken);
    }
}
