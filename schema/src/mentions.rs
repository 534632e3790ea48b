//! Mentions: `@username`, `@all` and `@here` in a message body, parsed once when the message is
//! sent or edited and stored on its event, so every reader counts the same mentions.
//!
//! A user id is a pure function of the username ([`UserId::for_username`]), so parsing needs no
//! lookup; the room aggregate keeps only the mentions of its current members.

use serde::{Deserialize, Serialize};

use crate::ids::UserId;
use crate::values::{Username, limits};

/// One mention on a message event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Mention {
    /// `@username` of a member.
    User { user_id: UserId },
    /// `@all`: every member.
    All,
    /// `@here`: the members online when the message was sent (or edited). Presence is not in
    /// the log, so the node that takes the command resolves it into `user_ids`, and every
    /// projection reads the same list on replay. Events written before `user_ids` existed have
    /// none and address every member, as they were counted then.
    Here {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_ids: Option<Vec<UserId>>,
    },
}

impl Mention {
    /// `@here` not yet resolved (as [`parse`] returns it).
    pub const HERE: Self = Self::Here { user_ids: None };

    /// Whether this mention addresses `user`.
    pub fn addresses(&self, user: UserId) -> bool {
        match self {
            Self::User { user_id } => *user_id == user,
            Self::All | Self::Here { user_ids: None } => true,
            Self::Here {
                user_ids: Some(users),
            } => users.contains(&user),
        }
    }

    /// Whether this mention addresses every member (`@all`, or an `@here` from before it was
    /// resolved on the event).
    pub fn addresses_all(&self) -> bool {
        matches!(self, Self::All | Self::Here { user_ids: None })
    }

    /// The members this mention names one by one (a user, or those `@here` resolved to).
    pub fn named(&self) -> &[UserId] {
        match self {
            Self::User { user_id } => std::slice::from_ref(user_id),
            Self::Here {
                user_ids: Some(users),
            } => users,
            Self::All | Self::Here { user_ids: None } => &[],
        }
    }
}

/// Whether `body` has `@here` (cheap: the sending node asks before it resolves presence).
pub fn has_here(body: &str) -> bool {
    parse(body, |_| false).contains(&Mention::HERE)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// The mentions in `body`, in order of first appearance, without repeats, keeping user mentions
/// for which `is_member` holds (at most [`limits::MENTIONS_PER_MESSAGE`] of them). An `@` counts
/// only at the start or after a character that cannot be part of a username (so `a@b.com` is
/// no mention); trailing `.`/`-` are sentence punctuation (`@bob.` mentions `bob`).
pub fn parse(body: &str, is_member: impl Fn(UserId) -> bool) -> Vec<Mention> {
    let mut out: Vec<Mention> = Vec::new();
    let mut users = 0;
    let mut prev: Option<char> = None;
    for (i, c) in body.char_indices() {
        let starts = c == '@' && !prev.is_some_and(|p| is_name_char(p) || p == '@');
        prev = Some(c);
        if !starts {
            continue;
        }
        let rest = &body[i + 1..];
        let end = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
        let name = rest[..end].trim_end_matches(['.', '-']);
        let mention = match name.to_ascii_lowercase().as_str() {
            "all" | "everyone" => Some(Mention::All),
            "here" => Some(Mention::HERE),
            _ => Username::parse(name)
                .ok()
                .map(|u| UserId::for_username(&u))
                .filter(|id| is_member(*id))
                .map(|user_id| Mention::User { user_id }),
        };
        let Some(mention) = mention else { continue };
        if out.contains(&mention) {
            continue;
        }
        if matches!(mention, Mention::User { .. }) {
            if users == limits::MENTIONS_PER_MESSAGE {
                continue;
            }
            users += 1;
        }
        out.push(mention);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> UserId {
        UserId::for_username(&Username::parse(name).unwrap())
    }

    #[test]
    fn finds_members_all_and_here_once_each() {
        let members = [id("alice"), id("bob.k")];
        let m = parse(
            "@Alice look, @bob.k. and @all @here @alice again; @carol is not here",
            |u| members.contains(&u),
        );
        assert_eq!(
            m,
            vec![
                Mention::User {
                    user_id: id("alice")
                },
                Mention::User {
                    user_id: id("bob.k")
                },
                Mention::All,
                Mention::HERE,
            ]
        );
        assert!(has_here("ping @here."));
        assert!(!has_here("ping @all, not here"));
    }

    #[test]
    fn an_at_inside_a_word_is_no_mention() {
        let all = |_| true;
        assert!(parse("mail alice@example.com", all).is_empty());
        assert!(parse("@@alice @ alice @", all).is_empty());
        assert_eq!(
            parse("(@alice)", all),
            vec![Mention::User {
                user_id: id("alice")
            }]
        );
        assert_eq!(
            parse("안녕@alice", all),
            vec![Mention::User {
                user_id: id("alice")
            }],
            "Korean text runs straight into a mention"
        );
    }

    #[test]
    fn user_mentions_are_capped() {
        let body: String = (0..60).map(|i| format!("@user{i} ")).collect();
        let m = parse(&format!("{body} @all"), |_| true);
        assert_eq!(m.len(), limits::MENTIONS_PER_MESSAGE + 1);
        assert_eq!(m.last(), Some(&Mention::All));
    }

    #[test]
    fn serialises_as_a_tagged_list() {
        let v = serde_json::to_value(vec![
            Mention::User {
                user_id: id("alice"),
            },
            Mention::All,
        ])
        .unwrap();
        assert_eq!(v[0]["kind"], "user");
        assert_eq!(v[0]["user_id"], id("alice").to_string());
        assert_eq!(v[1], serde_json::json!({"kind": "all"}));
    }

    #[test]
    fn here_carries_the_members_it_was_resolved_to_and_old_events_address_everyone() {
        let (alice, bob) = (id("alice"), id("bob"));
        let resolved = Mention::Here {
            user_ids: Some(vec![alice]),
        };
        let v = serde_json::to_value(&resolved).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kind": "here", "user_ids": [alice.to_string()]})
        );
        assert_eq!(serde_json::from_value::<Mention>(v).unwrap(), resolved);
        assert!(resolved.addresses(alice) && !resolved.addresses(bob));
        assert!(!resolved.addresses_all());
        assert_eq!(resolved.named(), &[alice]);

        let old: Mention = serde_json::from_value(serde_json::json!({"kind": "here"})).unwrap();
        assert_eq!(old, Mention::HERE);
        assert!(old.addresses(bob) && old.addresses_all() && old.named().is_empty());
    }
}
