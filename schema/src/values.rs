//! Validated values. Each is parsed once where data enters the system and trusted afterwards.

use serde::{Deserialize, Serialize};

use crate::{DomainError, Result};

/// The limits the domain enforces, in one place so the API docs can quote them.
pub mod limits {
    pub const USERNAME_MIN: usize = 3;
    pub const USERNAME_MAX: usize = 32;
    pub const DISPLAY_NAME_MAX: usize = 64;
    pub const ROOM_NAME_MAX: usize = 100;
    pub const MESSAGE_BODY_MAX: usize = 4_000;
    pub const PASSWORD_MIN: usize = 8;
    pub const PASSWORD_MAX: usize = 256;
    /// Members named in one create or invite request.
    pub const MEMBERS_PER_REQUEST: usize = 1_000;
    /// Length of a client-chosen idempotency key.
    pub const CLIENT_MSG_ID_MAX: usize = 128;
    /// Characters of a reaction (an emoji, possibly a joined sequence, or a short code).
    pub const EMOJI_MAX: usize = 16;
    /// Pinned messages per room.
    pub const PINS_PER_ROOM: usize = 50;
    /// Users one message can mention by name (`@all`/`@here` aside).
    pub const MENTIONS_PER_MESSAGE: usize = 50;
    /// A room's topic.
    pub const TOPIC_MAX: usize = 500;
    /// A person's status message.
    pub const STATUS_MESSAGE_MAX: usize = 140;
}

/// Invisible formatting characters (soft hyphen, zero-width space, bidi marks, embeddings,
/// overrides and isolates, word joiner, BOM): in a name they enable spoofing.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{200B}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Whether a text shows anything: at least one character that is neither whitespace nor
/// invisible (zero-width joiners included).
fn has_visible(s: &str) -> bool {
    s.chars().any(|c| {
        !c.is_whitespace() && !is_invisible_format(c) && !matches!(c, '\u{200C}' | '\u{200D}')
    })
}

fn has_control(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
}

/// 3–32 ASCII letters, digits, `_`, `.` or `-`. Unique without regard to case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self> {
        let n = raw.chars().count();
        if !(limits::USERNAME_MIN..=limits::USERNAME_MAX).contains(&n) {
            return Err(DomainError::invalid(
                "username",
                format!(
                    "must be {}–{} characters",
                    limits::USERNAME_MIN,
                    limits::USERNAME_MAX
                ),
            ));
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(DomainError::invalid(
                "username",
                "may contain only letters a–z, digits, '_', '.' and '-'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form uniqueness is decided on.
    pub fn canonical(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

/// A person's name as shown to others: 1–64 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self> {
        let s = raw.trim();
        let n = s.chars().count();
        if n == 0 || n > limits::DISPLAY_NAME_MAX {
            return Err(DomainError::invalid(
                "display_name",
                format!("must be 1–{} characters", limits::DISPLAY_NAME_MAX),
            ));
        }
        if has_control(s) || s.contains(['\n', '\r', '\t']) || s.chars().any(is_invisible_format) {
            return Err(DomainError::invalid(
                "display_name",
                "must not contain control characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&Username> for DisplayName {
    fn from(u: &Username) -> Self {
        Self(u.0.clone())
    }
}

/// A group room's name: 1–100 characters after trimming, one line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoomName(String);

impl RoomName {
    pub fn parse(raw: &str) -> Result<Self> {
        let s = raw.trim();
        let n = s.chars().count();
        if n == 0 || n > limits::ROOM_NAME_MAX {
            return Err(DomainError::invalid(
                "name",
                format!("must be 1–{} characters", limits::ROOM_NAME_MAX),
            ));
        }
        if has_control(s) || s.contains(['\n', '\r', '\t']) || s.chars().any(is_invisible_format) {
            return Err(DomainError::invalid(
                "name",
                "must not contain control characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One line of optional text (0–`max` characters after trimming, no control or invisible
/// formatting characters); empty clears it.
fn one_line(field: &'static str, raw: &str, max: usize) -> Result<String> {
    let s = raw.trim();
    if s.chars().count() > max {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if has_control(s) || s.contains(['\n', '\r', '\t']) || s.chars().any(is_invisible_format) {
        return Err(DomainError::invalid(
            field,
            "must be one line without control characters",
        ));
    }
    Ok(s.to_owned())
}

/// A room's topic: 0–500 characters, one line; empty clears it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Topic(String);

impl Topic {
    pub fn parse(raw: &str) -> Result<Self> {
        one_line("topic", raw, limits::TOPIC_MAX).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A person's status message: 0–140 characters, one line; empty clears it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StatusMessage(String);

impl StatusMessage {
    pub fn parse(raw: &str) -> Result<Self> {
        one_line("status_message", raw, limits::STATUS_MESSAGE_MAX).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message's text: 1–4,000 characters after trimming surrounding whitespace. Line breaks
/// and tabs are kept; other control characters (NUL included) are refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageBody(String);

impl MessageBody {
    pub fn parse(raw: &str) -> Result<Self> {
        let s = raw.trim();
        let n = s.chars().count();
        if n == 0 || !has_visible(s) {
            return Err(DomainError::invalid("body", "must not be empty"));
        }
        if n > limits::MESSAGE_BODY_MAX {
            return Err(DomainError::invalid(
                "body",
                format!("must be at most {} characters", limits::MESSAGE_BODY_MAX),
            ));
        }
        if has_control(s) {
            return Err(DomainError::invalid(
                "body",
                "must not contain control characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A reaction: 1–16 characters with something visible, no whitespace or control characters
/// (an emoji such as `👍` or `👩‍💻`, or a short code such as `:party:`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Emoji(String);

impl Emoji {
    pub fn parse(raw: &str) -> Result<Self> {
        let n = raw.chars().count();
        if n == 0 || n > limits::EMOJI_MAX || !has_visible(raw) {
            return Err(DomainError::invalid(
                "emoji",
                format!("must be 1–{} characters", limits::EMOJI_MAX),
            ));
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(DomainError::invalid(
                "emoji",
                "must not contain whitespace or control characters",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password as typed; never stored, only its hash is.
#[derive(Clone)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

impl Password {
    pub fn parse(raw: &str) -> Result<Self> {
        let n = raw.chars().count();
        if !(limits::PASSWORD_MIN..=limits::PASSWORD_MAX).contains(&n) {
            return Err(DomainError::invalid(
                "password",
                format!(
                    "must be {}–{} characters",
                    limits::PASSWORD_MIN,
                    limits::PASSWORD_MAX
                ),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Who may join a room without an invite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    #[default]
    Private,
    Public,
}

/// Validates a client-chosen idempotency key: 1–128 printable characters.
pub fn parse_client_msg_id(raw: &str) -> Result<&str> {
    if raw.is_empty() || raw.len() > limits::CLIENT_MSG_ID_MAX || raw.chars().any(char::is_control)
    {
        return Err(DomainError::invalid(
            "client_msg_id",
            format!(
                "must be 1–{} printable characters",
                limits::CLIENT_MSG_ID_MAX
            ),
        ));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_rules() {
        for ok in ["abc", "a.b-c_d", "User123", &"x".repeat(32)] {
            assert!(Username::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["ab", &"x".repeat(33), "with space", "한국어", "a/b", ""] {
            assert!(Username::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn body_is_trimmed_and_counted_in_characters() {
        assert_eq!(MessageBody::parse("  hi \n").unwrap().as_str(), "hi");
        assert!(MessageBody::parse(" \n\t ").is_err());
        // 4,000 Hangul syllables are 12,000 bytes but 4,000 characters: allowed.
        assert!(MessageBody::parse(&"가".repeat(4_000)).is_ok());
        assert!(MessageBody::parse(&"가".repeat(4_001)).is_err());
        assert!(MessageBody::parse("nul\0byte").is_err());
        assert_eq!(
            MessageBody::parse("line1\nline2").unwrap().as_str(),
            "line1\nline2"
        );
        assert!(
            MessageBody::parse("\u{200B}\u{200B}").is_err(),
            "only zero-width spaces"
        );
        assert!(
            MessageBody::parse("👩\u{200D}💻").is_ok(),
            "emoji with a joiner"
        );
    }

    #[test]
    fn names_are_single_line() {
        assert!(RoomName::parse("general").is_ok());
        assert!(RoomName::parse("   ").is_err());
        assert!(RoomName::parse("two\nlines").is_err());
        assert!(RoomName::parse(&"r".repeat(101)).is_err());
        assert!(DisplayName::parse(&"d".repeat(65)).is_err());
        assert_eq!(DisplayName::parse(" 김철수 ").unwrap().as_str(), "김철수");
        assert!(
            DisplayName::parse("admin\u{202E}nimda").is_err(),
            "bidi override"
        );
        assert!(
            RoomName::parse("general\u{200B}").is_err(),
            "zero-width space"
        );
    }

    #[test]
    fn emoji_rules() {
        for ok in ["👍", "👩\u{200D}💻", ":party:", "🇰🇷", "+1"] {
            assert!(Emoji::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", " ", "👍 👍", "a\nb", &"x".repeat(17), "\u{200B}"] {
            assert!(Emoji::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn password_is_never_printed() {
        let p = Password::parse("correct horse").unwrap();
        assert!(!format!("{p:?}").contains("horse"));
        assert!(Password::parse("short").is_err());
    }
}
