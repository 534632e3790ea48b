//! The limits the handlers enforce, declared in the OpenAPI document (so clients and
//! Schemathesis know them): numeric ranges of query parameters, lengths and characters of
//! request fields whose rules are plain, the invitation cap of the settings
//! (`CHAT_INVITE_MAX_USERS`), and that request bodies take no unknown fields. Declared here,
//! over the generated document, because some are settings and poem-openapi's validators are
//! compile-time (and would check a second time what the domain types already check).

use schema::limits;
use serde_json::{Value, json};

/// Request bodies: they refuse unknown fields (`deny_unknown_fields`).
const REQUEST_BODIES: &[&str] = &[
    "CreateRoomRequest",
    "DeleteAccountRequest",
    "DirectRoomRequest",
    "EditRequest",
    "FriendRequestBody",
    "InviteRequest",
    "LoginRequest",
    "PasswordChangeRequest",
    "ProfileRequest",
    "ReadRequest",
    "RefreshRequest",
    "RegisterRequest",
    "RoleRequest",
    "RoomSettingsRequest",
    "SendRequest",
    "TransferRequest",
];

/// `document` (the generated OpenAPI JSON) with the limits declared.
pub fn declare_limits(document: &str, invite_max_users: usize) -> String {
    let Ok(mut doc) = serde_json::from_str::<Value>(document) else {
        return document.to_owned();
    };
    let schemas = &mut doc["components"]["schemas"];
    for name in REQUEST_BODIES {
        if let Some(schema) = schemas.get_mut(*name).and_then(Value::as_object_mut) {
            schema.insert("additionalProperties".into(), json!(false));
        }
    }
    let mut property = |schema: &str, field: &str, constraints: Value| {
        if let (Some(p), Value::Object(c)) = (
            schemas[schema]["properties"][field].as_object_mut(),
            constraints,
        ) {
            p.extend(c);
        }
    };
    property(
        "RegisterRequest",
        "username",
        json!({
            "minLength": limits::USERNAME_MIN,
            "maxLength": limits::USERNAME_MAX,
            "pattern": "^[A-Za-z0-9_.-]*$",
        }),
    );
    let password = json!({"minLength": limits::PASSWORD_MIN, "maxLength": limits::PASSWORD_MAX});
    property("RegisterRequest", "password", password.clone());
    property("PasswordChangeRequest", "new_password", password);
    // Optional fields take `null` as absent.
    property("RegisterRequest", "display_name", json!({"nullable": true}));
    property("SendRequest", "client_msg_id", json!({"nullable": true}));
    // ... and these clear with `null` (as with an empty string).
    property(
        "ProfileRequest",
        "status_message",
        json!({"nullable": true}),
    );
    property("RoomSettingsRequest", "topic", json!({"nullable": true}));
    let cap = json!({"maxItems": invite_max_users});
    property("CreateRoomRequest", "member_ids", cap.clone());
    property("InviteRequest", "user_ids", cap);
    let seq = json!({"minimum": 0, "maximum": u64::MAX});
    property("ReadRequest", "seq", seq.clone());

    let mut parameter = |path: &str, name: &str, constraints: Value| {
        let Some(params) = doc["paths"][path]["get"]["parameters"].as_array_mut() else {
            return;
        };
        for p in params.iter_mut().filter(|p| p["name"] == name) {
            if let (Some(schema), Value::Object(c)) = (p["schema"].as_object_mut(), &constraints) {
                schema.extend(c.clone());
            }
        }
    };
    let page = |max: u64| json!({"minimum": 1, "maximum": max});
    parameter("/v1/users", "limit", page(100));
    parameter("/v1/rooms/public", "limit", page(100));
    parameter("/v1/search", "limit", page(100));
    parameter("/v1/rooms/{room_id}/messages", "limit", page(200));
    parameter("/v1/rooms/{room_id}/members", "limit", page(200));
    parameter(
        "/v1/rooms/{room_id}/messages/{message_id}/thread",
        "limit",
        page(200),
    );
    for name in ["before_seq", "after_seq"] {
        parameter("/v1/rooms/{room_id}/messages", name, seq.clone());
        parameter(
            "/v1/rooms/{room_id}/messages/{message_id}/thread",
            name,
            seq.clone(),
        );
    }
    parameter("/v1/notifications", "Last-Event-ID", seq);
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| document.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declares_the_invitation_cap_and_closed_bodies() {
        let doc = json!({
            "paths": {"/v1/users": {"get": {"parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer"}}
            ]}}},
            "components": {"schemas": {"InviteRequest": {"type": "object", "properties": {
                "user_ids": {"type": "array"}
            }}}}
        });
        let out: Value = serde_json::from_str(&declare_limits(&doc.to_string(), 7)).unwrap();
        let invite = &out["components"]["schemas"]["InviteRequest"];
        assert_eq!(invite["properties"]["user_ids"]["maxItems"], 7);
        assert_eq!(invite["additionalProperties"], false);
        let limit = &out["paths"]["/v1/users"]["get"]["parameters"][0]["schema"];
        assert_eq!(
            (&limit["minimum"], &limit["maximum"]),
            (&json!(1), &json!(100))
        );
    }
}
