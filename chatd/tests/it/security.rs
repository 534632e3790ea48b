//! The outer ring of security: what the real binary does with secrets in its settings.
//!
//! Each test runs `chatd` as a child process with only the settings it gives (none from the
//! developer's environment) and its stdout and stderr captured in one file, so a test can
//! assert on everything the process printed.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use eventlog_testkit::nats_server::NatsServer;
use serde_json::Value;
use tempfile::TempDir;

/// A `chatd` process and the file holding everything it printed.
pub struct Chatd {
    pub child: tokio::process::Child,
    pub output: PathBuf,
    pub dir: TempDir,
}

impl Chatd {
    /// Starts `chatd` with `args` and `env` only (plus `RUST_LOG=info` unless given), its data
    /// dir `data` under a fresh temporary directory.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_in(tempfile::tempdir().expect("temp dir"), args, env)
    }

    /// [`Chatd::spawn`] with the data dir `<dir>/data`, which may be prepared beforehand. The
    /// process starts with umask 022, the usual default, so whatever makes its files private
    /// is chatd's doing.
    pub fn spawn_in(dir: TempDir, args: &[&str], env: &[(&str, &str)]) -> Self {
        let output = dir.path().join("output.log");
        let out = std::fs::File::create(&output).expect("output file");
        let err = out.try_clone().expect("output file");
        let child = tokio::process::Command::new("sh")
            .args(["-c", "umask 022 && exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_chatd"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .env_clear()
            .env("RUST_LOG", "info")
            .env("CHAT_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("chatd starts");
        Self { child, output, dir }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything printed so far.
    pub fn printed(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// The `chat.addr` of the first ECS line with this message, waiting up to a minute for
    /// it (panics, showing the output, if the process exits or the minute passes first).
    pub async fn address_logged(&mut self, message: &str) -> SocketAddr {
        let line = self.logged(message).await;
        line["chat.addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no chat.addr in {line}"))
    }

    /// The first ECS line with this message, waiting up to a minute for it (panics, showing
    /// the output, if the process exits or the minute passes first).
    pub async fn logged(&mut self, message: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let printed = self.printed();
            for line in printed.lines() {
                // poem logs a "listening" of its own.
                if let Ok(v) = serde_json::from_str::<Value>(line)
                    && v["message"] == message
                    && v["log.logger"] != "poem::server"
                {
                    return v;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chatd exited ({status}) before logging {message:?}:\n{printed}");
            }
            assert!(
                Instant::now() < deadline,
                "no {message:?} within a minute:\n{printed}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to a minute) for the process to exit by itself.
    pub async fn exit(&mut self) -> (ExitStatus, String) {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("chatd still running:\n{}", self.printed()))
            .expect("wait");
        (status, self.printed())
    }

    /// Waits until `/readyz` at `addr` answers 200 (so the server is serving, and its signal
    /// handlers are installed).
    pub async fn ready(&self, addr: SocketAddr) {
        let http = crate::helpers::client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("http://{addr}/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not ready within a minute:\n{}",
                self.printed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop(&mut self) -> String {
        let pid = self.child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let (status, printed) = self.exit().await;
        assert!(status.success(), "{status}:\n{printed}");
        printed
    }
}

impl Drop for Chatd {
    /// A failing test shows the end of what the server printed.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let printed = self.printed();
            let lines: Vec<&str> = printed.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            eprintln!("--- the last lines chatd printed:\n{}", tail.join("\n"));
        }
    }
}

/// A run must not print `secret`, and must have printed something (so an empty capture
/// cannot pass).
#[track_caller]
fn assert_not_printed(printed: &str, secret: &str) {
    assert!(!printed.trim().is_empty(), "nothing captured");
    assert!(
        !printed.contains(secret),
        "{secret:?} was printed:\n{printed}"
    );
}

const JWT_SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

/// Credentials in `CHAT_NATS_URL` work and are never printed: not in the start-up line, not in
/// the client library's debug lines, not in the error when NATS refuses them.
#[tokio::test]
async fn nats_credentials_in_the_url_are_used_and_never_printed() {
    let nats = NatsServer::start_with("authorization { user: chatd, password: \"n4tsPassw0rd\" }");
    let url = |password: &str| format!("nats://chatd:{password}@127.0.0.1:{}", nats.port);

    let good = url("n4tsPassw0rd");
    let mut chatd = Chatd::spawn(
        &[],
        &[
            ("CHAT_NATS_URL", &good),
            ("CHAT_JWT_SECRET", JWT_SECRET),
            ("RUST_LOG", "debug"),
        ],
    );
    let addr = chatd.address_logged("listening").await;
    chatd.ready(addr).await;
    let printed = chatd.stop().await;
    assert!(printed.contains("event log: NATS JetStream"), "{printed}");
    assert_not_printed(&printed, "n4tsPassw0rd");

    let bad = url("Wr0ngPassw0rd");
    let mut chatd = Chatd::spawn(
        &[],
        &[
            ("CHAT_NATS_URL", &bad),
            ("CHAT_JWT_SECRET", JWT_SECRET),
            ("RUST_LOG", "debug"),
        ],
    );
    let (status, printed) = chatd.exit().await;
    assert!(!status.success(), "{printed}");
    assert!(printed.contains("cannot connect to NATS"), "{printed}");
    assert_not_printed(&printed, "Wr0ngPassw0rd");
}

/// Nothing listening: the connection error names the server, not its credentials.
#[tokio::test]
async fn an_unreachable_nats_url_is_reported_without_its_token() {
    // Bound but not listening: held for the whole test, so nothing else can take it.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = held.local_addr().unwrap().port();
    let url = format!("nats://T0kenS3cret@127.0.0.1:{port}");
    let mut chatd = Chatd::spawn(
        &[],
        &[
            ("CHAT_NATS_URL", &url),
            ("CHAT_JWT_SECRET", JWT_SECRET),
            ("RUST_LOG", "debug"),
        ],
    );
    let (status, printed) = chatd.exit().await;
    assert!(!status.success(), "{printed}");
    assert!(
        printed.contains(&format!("127.0.0.1:{port}")),
        "the server is named: {printed}"
    );
    assert_not_printed(&printed, "T0kenS3cret");
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// Every entry under `dir` (itself included) with its mode.
fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = vec![(dir.to_owned(), mode(dir))];
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(modes(&path));
        } else {
            out.push((path.clone(), mode(&path)));
        }
    }
    out
}

/// After a start and some traffic, the data dir and everything in it — event log and read
/// models with their WAL files, search index, generated secret, and a file an older version
/// left readable — are owner-only.
#[tokio::test]
async fn the_data_dir_and_every_file_in_it_are_owner_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("left-by-an-older-version"), "x").unwrap();
    for (path, m) in [
        (data.clone(), 0o755),
        (data.join("left-by-an-older-version"), 0o644),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).unwrap();
    }
    let mut chatd = Chatd::spawn_in(dir, &[], &[]);
    let addr = chatd.address_logged("listening").await;
    chatd.ready(addr).await;
    let api = crate::helpers::Api::new(addr);
    let alice = api.user("alice").await;
    let room = api.create_room(&alice, "secrets", &[]).await;
    api.send(&alice, &room, "zanzibar").await;
    // Searchable means the index has committed its files.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, hits) = api.get("/v1/search?q=zanzibar", &alice.token).await;
        assert_eq!(status, 200, "{hits}");
        if hits["hits"].as_array().is_some_and(|h| !h.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "not indexed: {hits}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let listed = modes(&chatd.data_dir());
    let names: Vec<String> = listed
        .iter()
        .map(|(p, m)| format!("{:o} {}", m, p.display()))
        .collect();
    let names = names.join("\n");
    for wanted in [
        "events.db-wal",
        "readmodels.db-wal",
        "jwt_secret",
        "search/meta.json",
    ] {
        assert!(names.contains(wanted), "no {wanted} in\n{names}");
    }
    for (path, m) in &listed {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*m, want, "{} in\n{names}", path.display());
    }
    let printed = chatd.stop().await;
    assert!(printed.contains("now owner-only"), "{printed}");
}

/// A secret file others could have read is refused, with a message that says what to do;
/// once only its owner can read it, chatd starts.
#[tokio::test]
async fn a_jwt_secret_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let secret = data.join("jwt_secret");
    std::fs::write(&secret, "s".repeat(64)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut chatd = Chatd::spawn_in(dir, &[], &[]);
    let (status, printed) = chatd.exit().await;
    assert!(!status.success(), "{printed}");
    assert!(
        printed.contains("accessible to group or others (mode 0644)"),
        "{printed}"
    );
    assert_eq!(mode(&secret), 0o644, "left for the operator to deal with");

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let dir = std::mem::replace(&mut chatd.dir, tempfile::tempdir().unwrap());
    let mut chatd = Chatd::spawn_in(dir, &[], &[]);
    let addr = chatd.address_logged("listening").await;
    chatd.ready(addr).await;
    chatd.stop().await;
}

/// A short configured secret is accepted with a warning; a long one without.
#[tokio::test]
async fn a_short_jwt_secret_is_warned_about() {
    for (secret, warned) in [("x".repeat(32), true), ("y".repeat(64), false)] {
        let mut chatd = Chatd::spawn(&[], &[("CHAT_JWT_SECRET", &secret)]);
        let addr = chatd.address_logged("listening").await;
        chatd.ready(addr).await;
        let printed = chatd.stop().await;
        assert_eq!(
            printed.contains("the JWT secret is short"),
            warned,
            "{printed}"
        );
        assert_not_printed(&printed, &secret);
    }
}

/// A SIGTERM that arrives while the server is still starting (here: right after its first
/// line, before it listens) is a clean stop, not the default fatal signal. A readiness probe
/// that answers 200 therefore means a SIGTERM now drains rather than kills.
#[tokio::test]
async fn a_sigterm_during_startup_is_a_clean_stop() {
    let mut chatd = Chatd::spawn(&[], &[]);
    chatd.logged("open files limit").await;
    let printed = chatd.stop().await;
    assert!(printed.contains("shutdown requested"), "{printed}");
}

/// A local endpoint speaking Slack's incoming-webhook protocol: it keeps what it was posted.
async fn fake_slack() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use poem::listener::{Acceptor, Listener};
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = got.clone();
    let app = poem::endpoint::make(move |mut req: poem::Request| {
        let kept = kept.clone();
        async move {
            let body = req
                .take_body()
                .into_json::<Value>()
                .await
                .unwrap_or_default();
            kept.lock().unwrap().push(body);
            "ok"
        }
    });
    let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let addr = *acceptor.local_addr()[0].as_socket_addr().unwrap();
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    (format!("http://{addr}/services/T0/B0/hook"), got)
}

/// Failed logins and a reused refresh token are ECS security events; a burst of failed logins
/// raises the alert, posted to Slack.
#[tokio::test]
async fn failed_logins_are_security_events_and_a_burst_pages() {
    let (webhook, posted) = fake_slack().await;
    let mut chatd = Chatd::spawn(
        &[],
        &[
            ("CHAT_SLACK_WEBHOOK_URL", &webhook),
            ("CHAT_ALERT_FAILED_LOGINS_PER_MIN", "3"),
            ("CHAT_ARGON2_MEMORY_KIB", "1024"),
            ("CHAT_ARGON2_ITERATIONS", "1"),
        ],
    );
    let addr = chatd.address_logged("listening").await;
    chatd.ready(addr).await;
    let api = crate::helpers::Api::new(addr);
    let alice = api.user("alice").await;
    for _ in 0..3 {
        let wrong = serde_json::json!({"username": "alice", "password": "not her password"});
        let got = api
            .call(reqwest::Method::POST, "/v1/auth/login", None, Some(wrong))
            .await;
        crate::helpers::assert_problem(
            &got,
            reqwest::StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        );
    }
    // Refresh twice with the same token: the second is a reuse.
    let refresh = serde_json::json!({"refresh_token": alice.refresh});
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/v1/auth/refresh",
            None,
            Some(refresh.clone()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got = api
        .call(
            reqwest::Method::POST,
            "/v1/auth/refresh",
            None,
            Some(refresh),
        )
        .await;
    crate::helpers::assert_problem(
        &got,
        reqwest::StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    while !posted.lock().unwrap().iter().any(|p| {
        p["text"]
            .as_str()
            .is_some_and(|t| t.contains("Many failed logins"))
    }) {
        assert!(
            Instant::now() < deadline,
            "no alert posted: {:?}\n{}",
            posted.lock().unwrap(),
            chatd.printed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let printed = chatd.stop().await;
    let events: Vec<Value> = printed
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event.category"] == "authentication")
        .collect();
    let actions: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            assert_eq!(e["event.outcome"], "failure", "{e}");
            assert_eq!(e["log.level"], "warn", "{e}");
            (
                e["event.action"].as_str().unwrap(),
                e["event.reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("login", "invalid_credentials"),
            ("login", "invalid_credentials"),
            ("login", "invalid_credentials"),
            ("token-refresh", "refresh_token_reused"),
        ],
        "{printed}"
    );
    assert!(
        events[0]["url.path"] == "/v1/auth/login",
        "the request's fields come with it: {}",
        events[0]
    );
}

/// With `CHAT_ADMIN_LISTEN`, the operations endpoints answer there and only there.
#[tokio::test]
async fn operations_endpoints_move_to_the_admin_listener() {
    let http = crate::helpers::client();
    let status = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.expect("request").status() }
    };
    let mut chatd = Chatd::spawn(&[], &[("CHAT_ADMIN_LISTEN", "127.0.0.1:0")]);
    let admin = chatd.address_logged("admin listening").await;
    let public = chatd.address_logged("listening").await;
    assert_ne!(admin, public);
    chatd.ready(admin).await;
    for path in ["/metrics", "/readyz", "/healthz"] {
        assert_eq!(status(format!("http://{admin}{path}")).await, 200, "{path}");
        let (code, body) = crate::helpers::Api::new(public)
            .call(reqwest::Method::GET, path, None, None)
            .await;
        assert_eq!(code, 404, "{path} on the public listener: {body}");
        assert_eq!(body["code"], "route_not_found", "{body}");
    }
    let metrics = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("chat_http_requests_total"), "{metrics}");
    // The API itself stays on the public listener only.
    assert_eq!(status(format!("http://{public}/openapi.json")).await, 200);
    assert_eq!(status(format!("http://{admin}/openapi.json")).await, 404);
    chatd.stop().await;

    // Unset: everything on the one listener, as before.
    let mut chatd = Chatd::spawn(&[], &[]);
    let public = chatd.address_logged("listening").await;
    chatd.ready(public).await;
    for path in ["/metrics", "/readyz", "/healthz"] {
        assert_eq!(
            status(format!("http://{public}{path}")).await,
            200,
            "{path}"
        );
    }
    let printed = chatd.stop().await;
    assert!(!printed.contains("admin listening"), "{printed}");
}
