//! Mentions: `@username`, `@all` and `@here` in a message body, parsed once when the message is
//! sent or edited and stored on its event, so every reader counts the same mentions.
//!
//! A user id is a pure function of the username ([`UserId::for_username`]), so parsing needs no
//! lookup; the room aggregate keeps only the mentions of its current members.

use serde::{Deserialize, Serialize};

use crate::ids::UserId;
use crate::values::{Username, limits};

/// One mention on a message event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Mention {
    /// `@username` of a member.
    User { user_id: UserId },
    /// `@all`: every member.
    All,
    /// `@here`: every member (counted like `@all`; presence is not known to the log).
    Here,
}

impl Mention {
    /// Whether this mention addresses `user`.
    pub fn addresses(&self, user: UserId) -> bool {
        match self {
            Self::User { user_id } => *user_id == user,
            Self::All | Self::Here => true,
        }
    }
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
            "here" => Some(Mention::Here),
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
                Mention::Here,
            ]
        );
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
}
