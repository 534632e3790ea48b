//! The chat domain, pure and free of I/O.
//!
//! - [`ids`]: typed UUID identifiers, including the deterministic ones that make uniqueness
//!   rules (one account per username, one direct room per pair, one message per
//!   `client_msg_id`) a property of the id rather than of a lookup table.
//! - [`values`]: validated newtypes ([`Username`], [`MessageBody`], …) built once at the edge
//!   and trusted afterwards, plus the [`limits`] they enforce.
//! - [`events`]: the past-tense facts stored in the log, versioned and serde-tagged.
//! - [`user`], [`room`], [`session`], [`friendship`]: aggregates as pure `decide(state, command)` and
//!   `evolve(state, event)` functions.
//! - [`mentions`]: `@username`, `@all` and `@here` found in a message body.
//! - [`unread`]: the definition of unread counts as a pure fold over the log, which the
//!   projections are tested against.
//!
//! Stream naming lives here too ([`streams`]) because it is part of the domain's rules: every
//! command touches exactly one stream, so every invariant is checked by one optimistic append.

pub mod events;
pub mod friendship;
pub mod ids;
pub mod mentions;
pub mod room;
pub mod session;
pub mod streams;
pub mod unread;
pub mod user;
pub mod values;

mod error;

pub use error::{DomainError, Result};
pub use events::{Event, EventKind};
pub use ids::{EventId, IdMap, IdSet, MessageId, RoomId, SessionId, UserId};
pub use values::{
    DisplayName, Emoji, MessageBody, Password, RoomName, StatusMessage, Topic, Username,
    Visibility, limits,
};

/// An aggregate: state rebuilt by folding its stream's events, and the rules that decide
/// which events a command produces. `decide` holds every rule; `evolve` cannot fail.
pub trait Aggregate: Default + Clone + Send + Sync + 'static {
    type Command;

    /// Validates the command against the current state and returns the events to append
    /// (possibly none, when the command is already satisfied).
    fn decide(&self, command: &Self::Command) -> Result<Vec<Event>>;

    /// Applies one of this aggregate's events.
    fn evolve(&mut self, event: &Event);

    /// Folds events into a fresh state.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut state = Self::default();
        for e in events {
            state.evolve(e);
        }
        state
    }
}

/// Given/when/then for aggregates: `given(events).when(command).then(events)`.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub struct Given<A: Aggregate>(A);

    pub fn given<A: Aggregate>(events: &[Event]) -> Given<A> {
        Given(A::replay(events))
    }

    impl<A: Aggregate> Given<A> {
        pub fn when(self, command: A::Command) -> Then {
            Then(self.0.decide(&command))
        }
    }

    pub struct Then(pub Result<Vec<Event>>);

    impl Then {
        #[track_caller]
        pub fn then(self, expected: &[Event]) {
            assert_eq!(self.0.as_deref(), Ok(expected));
        }

        #[track_caller]
        pub fn then_error(self, expected: DomainError) {
            assert_eq!(self.0, Err(expected));
        }

        /// The events, for assertions that need more than equality.
        #[track_caller]
        pub fn events(self) -> Vec<Event> {
            self.0.expect("command accepted")
        }
    }
}
