//! WebSocket frames: JSON text frames with a `type`.

use std::collections::HashMap;
use std::sync::Arc;

use eventlog::RecordedEvent;
use schema::RoomId;
use serde::Deserialize;
use serde_json::{Value, json};

/// Largest client frame accepted, in bytes; larger ones get an `error` frame.
pub const MAX_CLIENT_FRAME: usize = 16 * 1024;

/// A frame from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Replay every event after these seqs, then stay live.
    Resume {
        #[serde(default)]
        rooms: HashMap<RoomId, u64>,
    },
    Send {
        room_id: RoomId,
        body: String,
        client_msg_id: String,
    },
    Read {
        room_id: RoomId,
        seq: u64,
    },
    Typing {
        room_id: RoomId,
    },
    Ping,
}

/// Why a client frame was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: &'static str,
    pub detail: String,
}

impl ClientFrame {
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        if text.len() > MAX_CLIENT_FRAME {
            return Err(FrameError {
                code: "frame_too_large",
                detail: format!("frames are limited to {MAX_CLIENT_FRAME} bytes"),
            });
        }
        let value: Value = serde_json::from_str(text).map_err(|e| FrameError {
            code: "bad_frame",
            detail: format!("not JSON: {e}"),
        })?;
        let known = ["resume", "send", "read", "typing", "ping"];
        match value.get("type").and_then(Value::as_str) {
            Some(t) if known.contains(&t) => {}
            Some(t) => {
                return Err(FrameError {
                    code: "unknown_type",
                    detail: format!("unknown frame type {t:?}"),
                });
            }
            None => {
                return Err(FrameError {
                    code: "bad_frame",
                    detail: "a frame needs a string `type`".into(),
                });
            }
        }
        serde_json::from_value(value).map_err(|e| FrameError {
            code: "bad_frame",
            detail: e.to_string(),
        })
    }
}

/// A room event ready to go out: serialised once, shared by every recipient.
#[derive(Debug, Clone)]
pub struct EventFrame {
    pub room: RoomId,
    pub seq: u64,
    pub text: Arc<str>,
}

impl EventFrame {
    /// `{"type":"event","room_id","seq","event":{…the event, with seq and at…}}`.
    pub fn new(room: RoomId, recorded: &RecordedEvent) -> Self {
        let mut event: Value = serde_json::from_slice(&recorded.data).unwrap_or_default();
        if let Some(obj) = event.as_object_mut() {
            obj.insert("seq".into(), recorded.version.into());
            obj.insert(
                "at".into(),
                recorded
                    .recorded_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    .into(),
            );
        }
        let frame =
            json!({"type": "event", "room_id": room, "seq": recorded.version, "event": event});
        Self {
            room,
            seq: recorded.version,
            text: frame.to_string().into(),
        }
    }
}

pub fn error(reference: Option<&str>, code: &str, detail: &str) -> String {
    match reference {
        Some(r) => json!({"type": "error", "ref": r, "code": code, "detail": detail}),
        None => json!({"type": "error", "code": code, "detail": detail}),
    }
    .to_string()
}

pub fn pong() -> String {
    json!({"type": "pong"}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_and_errors_have_codes() {
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping)
        ));
        let room = RoomId::new();
        let resume = format!(r#"{{"type":"resume","rooms":{{"{room}":7}}}}"#);
        match ClientFrame::parse(&resume) {
            Ok(ClientFrame::Resume { rooms }) => assert_eq!(rooms.get(&room), Some(&7)),
            other => panic!("{other:?}"),
        }
        assert_eq!(ClientFrame::parse("nope").unwrap_err().code, "bad_frame");
        assert_eq!(
            ClientFrame::parse(r#"{"type":"dance"}"#).unwrap_err().code,
            "unknown_type"
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"read"}"#).unwrap_err().code,
            "bad_frame"
        );
        assert_eq!(
            ClientFrame::parse(r#"{"kind":"ping"}"#).unwrap_err().code,
            "bad_frame"
        );
        let huge = format!(
            r#"{{"type":"ping","pad":"{}"}}"#,
            "x".repeat(MAX_CLIENT_FRAME)
        );
        assert_eq!(
            ClientFrame::parse(&huge).unwrap_err().code,
            "frame_too_large"
        );
    }
}
