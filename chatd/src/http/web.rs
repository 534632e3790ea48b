//! The web client: the files of the top-level `web/` directory, embedded in the binary.
//!
//! `/` serves `index.html` and `/app/<version>/<file>` the rest, where `<version>` is a hash of
//! every file: a new build changes the URLs, so assets are cached as immutable and the page
//! itself is revalidated (`no-cache` with an `ETag`). Everything is served with a strict
//! Content-Security-Policy: scripts, styles and connections from this origin only, no inline
//! code, no framing.

use std::sync::LazyLock;

use poem::http::{HeaderValue, StatusCode, header};
use poem::web::Path;
use poem::{Request, Response, Route, get, handler};
use sha2::{Digest, Sha256};

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! assets {
    ($($name:literal => $content_type:literal),* $(,)?) => {
        &[$(Asset {
            name: $name,
            content_type: $content_type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../web/", $name)),
        }),*]
    };
}

/// Every file of `web/` but the page (a test checks that none is missing).
const ASSETS: &[Asset] = assets! {
    "main.js" => "text/javascript; charset=utf-8",
    "api.js" => "text/javascript; charset=utf-8",
    "live.js" => "text/javascript; charset=utf-8",
    "dom.js" => "text/javascript; charset=utf-8",
    "app.css" => "text/css; charset=utf-8",
    "icon.svg" => "image/svg+xml",
};

const INDEX: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../web/index.html"));

/// `connect-src 'self'` covers the WebSocket on this host and port (CSP Level 3).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

struct Built {
    version: String,
    index: String,
    index_etag: String,
    etags: Vec<String>,
}

fn hex(bytes: &[u8], len: usize) -> String {
    let digest = Sha256::digest(bytes);
    digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..len]
        .to_owned()
}

static BUILT: LazyLock<Built> = LazyLock::new(|| {
    let mut all = Sha256::new();
    for a in ASSETS {
        all.update(a.name.as_bytes());
        all.update(a.bytes);
    }
    let version = hex(&all.finalize(), 12);
    let page = INDEX.replace("%VERSION%", &version);
    Built {
        index_etag: format!("\"{}\"", hex(page.as_bytes(), 16)),
        etags: ASSETS
            .iter()
            .map(|a| format!("\"{}\"", hex(a.bytes, 16)))
            .collect(),
        version,
        index: page,
    }
});

/// Adds the client's routes to the application's.
pub fn mount(route: Route) -> Route {
    route
        .at("/", get(index))
        .at("/app/:version/*file", get(asset))
}

#[handler]
fn index(req: &Request) -> Response {
    let b = &*BUILT;
    respond(
        req,
        "text/html; charset=utf-8",
        &b.index_etag,
        REVALIDATE,
        b.index.clone().into_bytes(),
    )
}

#[handler]
fn asset(req: &Request, Path((version, file)): Path<(String, String)>) -> poem::Result<Response> {
    let b = &*BUILT;
    let i = ASSETS
        .iter()
        .position(|a| a.name == file)
        .ok_or(poem::error::NotFoundError)?;
    // An old page asking for an old version gets today's file, revalidated each time.
    let cache = if version == b.version {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    let a = &ASSETS[i];
    Ok(respond(
        req,
        a.content_type,
        &b.etags[i],
        cache,
        a.bytes.to_vec(),
    ))
}

fn respond(
    req: &Request,
    content_type: &str,
    etag: &str,
    cache: &'static str,
    body: Vec<u8>,
) -> Response {
    let fresh = req
        .header(header::IF_NONE_MATCH)
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let builder = Response::builder()
        .header(header::ETAG, etag)
        .header(header::CACHE_CONTROL, cache)
        .header(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        )
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer");
    if fresh {
        builder.status(StatusCode::NOT_MODIFIED).finish()
    } else {
        builder.content_type(content_type).body(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_web_is_served_and_the_page_names_only_served_files() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../web");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .expect("web/ exists")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8")
            })
            .filter(|n| n != "index.html")
            .collect();
        on_disk.sort();
        let mut served: Vec<String> = ASSETS.iter().map(|a| a.name.to_owned()).collect();
        served.sort();
        assert_eq!(on_disk, served, "list every file of web/ in ASSETS");

        let b = &*BUILT;
        let prefix = format!("/app/{}/", b.version);
        let named: Vec<&str> = b
            .index
            .split(&prefix)
            .skip(1)
            .map(|rest| &rest[..rest.find('"').expect("quoted")])
            .collect();
        assert!(named.contains(&"main.js"), "{named:?}");
        for n in named {
            assert!(ASSETS.iter().any(|a| a.name == n), "{n} is not served");
        }
        assert!(!b.index.contains("%VERSION%"));
    }

    #[test]
    fn modules_import_only_served_files() {
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(a.bytes).expect("utf-8");
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let from = line.rsplit("'./").next().expect("relative import");
                let name = &from[..from.find('\'').expect("quoted")];
                assert!(
                    ASSETS.iter().any(|x| x.name == name),
                    "{} imports {name}, which is not served",
                    a.name
                );
            }
        }
    }
}
