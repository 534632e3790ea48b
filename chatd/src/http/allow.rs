//! `405 Method Not Allowed` answers carry the `Allow` header RFC 9110 requires, listing the
//! methods the OpenAPI document declares for the path.

use std::sync::Arc;

use poem::http::StatusCode;
use poem::http::header::{ALLOW, HeaderValue};
use poem::{Endpoint, IntoResponse, Request, Response};

/// Path templates (`/v1/rooms/{room_id}`) and their methods, from the OpenAPI document (the
/// routes outside it answer any method).
#[derive(Debug, Clone, Default)]
pub struct AllowTable(Arc<Vec<(Vec<String>, String)>>);

impl AllowTable {
    pub fn from_spec(openapi_json: &str) -> Self {
        let spec: serde_json::Value = serde_json::from_str(openapi_json).unwrap_or_default();
        let mut routes = Vec::new();
        for (path, item) in spec["paths"].as_object().into_iter().flatten() {
            let methods: Vec<String> = item
                .as_object()
                .into_iter()
                .flat_map(|ops| ops.keys())
                .filter(|m| {
                    ["get", "put", "post", "delete", "patch", "head", "options"]
                        .contains(&m.as_str())
                })
                .map(|m| m.to_ascii_uppercase())
                .collect();
            routes.push((segments(path), methods.join(", ")));
        }
        Self(Arc::new(routes))
    }

    /// The methods of the template `path` matches (`{…}` segments match any one segment).
    fn methods(&self, path: &str) -> Option<&str> {
        let wanted = segments(path);
        self.0
            .iter()
            .filter(|(template, _)| {
                template.len() == wanted.len()
                    && template
                        .iter()
                        .zip(&wanted)
                        .all(|(t, w)| t == w || t.starts_with('{'))
            })
            // A literal segment beats a parameter (`/v1/rooms/direct` over `/v1/rooms/{id}`).
            .max_by_key(|(template, _)| template.iter().filter(|t| !t.starts_with('{')).count())
            .map(|(_, methods)| methods.as_str())
    }
}

fn segments(path: &str) -> Vec<String> {
    path.trim_end_matches('/')
        .split('/')
        .map(str::to_owned)
        .collect()
}

/// Middleware: adds `Allow` to a 405 answer.
pub async fn add_allow<E: Endpoint>(
    ep: E,
    req: Request,
    table: AllowTable,
) -> poem::Result<Response> {
    let path = req.uri().path().to_owned();
    let mut resp = ep.call(req).await?.into_response();
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED
        && let Some(methods) = table.methods(&path)
        && let Ok(value) = HeaderValue::from_str(methods)
    {
        resp.headers_mut().insert(ALLOW, value);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_come_from_the_most_literal_matching_template() {
        let spec = r#"{"paths": {
            "/v1/rooms": {"get": {}, "post": {}},
            "/v1/rooms/{room_id}": {"get": {}, "parameters": []},
            "/v1/rooms/direct": {"post": {}}
        }}"#;
        let t = AllowTable::from_spec(spec);
        assert_eq!(t.methods("/v1/rooms"), Some("GET, POST"));
        assert_eq!(t.methods("/v1/rooms/"), Some("GET, POST"));
        assert_eq!(t.methods("/v1/rooms/abc"), Some("GET"));
        assert_eq!(t.methods("/v1/rooms/direct"), Some("POST"));
        assert_eq!(t.methods("/v1/nothing/here"), None);
    }
}
