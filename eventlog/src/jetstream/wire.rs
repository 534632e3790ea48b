//! How events look on the wire: one JetStream message per event.
//!
//! - **Subject** `<prefix>.<stream>`, with the stream name escaped into one subject token:
//!   ASCII letters, digits and `-` stay; every other byte becomes `_` and two hex digits
//!   (`room-1.2` → `room-1_2E2`). The escaping is a bijection, so subjects decode back.
//! - **Payload**: the event's data, untouched (a `nats sub` shows the JSON).
//! - **Headers**: `Nats-Msg-Id` (the event id, for JetStream's duplicate window),
//!   `Chat-Version`, `Chat-Event-Type`, `Chat-Schema-Version`, `Chat-Recorded-At` (microseconds
//!   since the epoch, the same for every event of one append), `Chat-Metadata` (base64, when
//!   not empty) and the W3C `traceparent` / `tracestate` when the metadata carries them.

use async_nats::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Error, NewEvent, RecordedEvent, Result};

pub const MSG_ID: &str = "Nats-Msg-Id";
pub const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
pub const VERSION: &str = "Chat-Version";
pub const EVENT_TYPE: &str = "Chat-Event-Type";
pub const SCHEMA_VERSION: &str = "Chat-Schema-Version";
pub const RECORDED_AT: &str = "Chat-Recorded-At";
pub const METADATA: &str = "Chat-Metadata";
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// The subject token for a stream name.
pub fn encode_stream(stream: &str) -> String {
    let mut out = String::with_capacity(stream.len());
    for b in stream.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

/// The stream name a subject token stands for.
pub fn decode_stream(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = token.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Headers of one event about to be published.
pub fn headers(event: &NewEvent, version: u64, recorded_at: DateTime<Utc>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(MSG_ID, event.event_id.to_string().as_str());
    h.insert(VERSION, version.to_string().as_str());
    h.insert(EVENT_TYPE, header_safe(&event.event_type).as_str());
    h.insert(SCHEMA_VERSION, event.schema_version.to_string().as_str());
    h.insert(
        RECORDED_AT,
        recorded_at.timestamp_micros().to_string().as_str(),
    );
    if !event.metadata.is_empty() {
        h.insert(METADATA, STANDARD.encode(&event.metadata).as_str());
        if let Ok(serde_json::Value::Object(meta)) =
            serde_json::from_slice::<serde_json::Value>(&event.metadata)
        {
            for name in TRACE_HEADERS {
                if let Some(serde_json::Value::String(v)) = meta.get(name) {
                    h.insert(name, header_safe(v).as_str());
                }
            }
        }
    }
    h
}

/// Event types are free text; a header value must not contain line breaks.
fn header_safe(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str> {
    headers
        .get(name)
        .map(|v| v.as_str())
        .ok_or_else(|| corrupt(format_args!("header {name} is missing")))
}

fn number<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Result<T> {
    header(headers, name)?
        .parse()
        .map_err(|_| corrupt(format_args!("header {name} is not a number")))
}

pub fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!(
        "unexpected message in the JetStream stream: {what}"
    ))
}

/// Reads a stored event back from its subject, stream sequence, headers and payload.
pub fn decode(
    prefix: &str,
    subject: &str,
    sequence: u64,
    headers: &HeaderMap,
    payload: &[u8],
) -> Result<RecordedEvent> {
    let stream = subject
        .strip_prefix(prefix)
        .and_then(|s| s.strip_prefix('.'))
        .and_then(decode_stream)
        .ok_or_else(|| corrupt(format_args!("subject {subject} is not an event subject")))?;
    let event_id: Uuid = header(headers, MSG_ID)?
        .parse()
        .map_err(|_| corrupt("Nats-Msg-Id is not a UUID"))?;
    let micros: i64 = number(headers, RECORDED_AT)?;
    let metadata = match headers.get(METADATA) {
        Some(v) => STANDARD
            .decode(v.as_str())
            .map_err(|_| corrupt("Chat-Metadata is not base64"))?,
        None => Vec::new(),
    };
    Ok(RecordedEvent {
        stream,
        version: number(headers, VERSION)?,
        position: sequence,
        event_id,
        event_type: header(headers, EVENT_TYPE)?.to_owned(),
        schema_version: number(headers, SCHEMA_VERSION)?,
        data: payload.to_vec(),
        metadata,
        recorded_at: DateTime::from_timestamp_micros(micros)
            .ok_or_else(|| corrupt("Chat-Recorded-At is out of range"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_round_trip_through_subject_tokens() {
        for name in ["room-0191", "s", "a.b", "x y", "_", "한글", "a*b>c", "A_5F"] {
            let token = encode_stream(name);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{token}"
            );
            assert_eq!(decode_stream(&token).as_deref(), Some(name));
        }
        assert_eq!(encode_stream("room-1.2"), "room-1_2E2");
        assert_eq!(decode_stream("bad_Z"), None);
    }

    #[test]
    fn an_event_round_trips_through_headers() {
        let event = NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "message_sent".into(),
            schema_version: 3,
            data: br#"{"body":"hi"}"#.to_vec(),
            metadata:
                br#"{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#
                    .to_vec(),
        };
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("time");
        let h = headers(&event, 7, at);
        assert_eq!(
            h.get("traceparent").map(|v| v.as_str()),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        let back =
            decode("chat.events", "chat.events.room-1_2E2", 42, &h, &event.data).expect("decode");
        assert_eq!(back.stream, "room-1.2");
        assert_eq!((back.version, back.position), (7, 42));
        assert_eq!(back.event_id, event.event_id);
        assert_eq!(back.event_type, event.event_type);
        assert_eq!(back.schema_version, 3);
        assert_eq!(back.data, event.data);
        assert_eq!(back.metadata, event.metadata);
        assert_eq!(back.recorded_at, at);
    }
}
