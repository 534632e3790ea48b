//! `spawn_app()` starts the real server in-process on port 0 with a fresh data dir;
//! `ChatdProcess` runs the real `chatd` binary for tests that kill it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chatd::{App, Settings};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PASSWORD: &str = "correct horse battery";

/// Limits out of the way, for tests that are not about them: many users registered from
/// one address, messages sent as fast as the server takes them. (The tests of the limits,
/// `limits.rs`, set small ones.)
pub const GENEROUS_LIMITS: &[(&str, &str)] = &[
    ("CHAT_WS_RATE", "1000000"),
    ("CHAT_REQUEST_RATE", "1000000"),
    ("CHAT_REGISTRATIONS_PER_MIN", "1000000"),
    ("CHAT_INVITES_PER_MIN", "1000000"),
    ("CHAT_RESUMES_PER_MIN", "1000000"),
    ("CHAT_LOGIN_FAILURES_PER_ACCOUNT", "1000000"),
    ("CHAT_LOGIN_FAILURES_PER_ADDRESS", "1000000"),
    ("CHAT_LIVE_CONNECTIONS_PER_USER", "100000"),
];

/// Default settings for `data_dir` with [`GENEROUS_LIMITS`] (the variable `CHAT_X_Y` is the
/// flag `--x-y`) and then `flags`.
pub fn settings(data_dir: &Path, flags: &[&str]) -> Settings {
    let mut all: Vec<String> = GENEROUS_LIMITS
        .iter()
        .map(|(var, value)| {
            let flag = var
                .trim_start_matches("CHAT_")
                .to_lowercase()
                .replace('_', "-");
            format!("--{flag}={value}")
        })
        .collect();
    // Two hub shards whatever the machine: the sharded hub (presence and typing across shards)
    // is the one every in-process test drives.
    all.push("--hub-shards=2".to_owned());
    all.extend(flags.iter().map(|f| (*f).to_owned()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    Settings::for_data_dir_with(data_dir, &all).expect("settings parse")
}

pub fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// A registered, logged-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub username: String,
    pub token: String,
    pub refresh: String,
}

/// Talks to a running server at `base`.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    pub http: Client,
}

impl Api {
    pub fn new(addr: std::net::SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            http: client(),
        }
    }

    /// Sends a request and returns the status and the JSON body (Null when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, _, value) = self.respond(method, path, token, body).await;
        (status, value)
    }

    /// [`Self::call`], with the response's headers.
    pub async fn respond(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body read");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, headers, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    pub async fn register(&self, username: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/auth/register",
                None,
                Some(json!({"username": username, "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["user_id"].as_str().expect("user_id").to_owned()
    }

    pub async fn login(&self, username: &str) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/auth/login",
                None,
                Some(json!({"username": username, "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    pub async fn user(&self, username: &str) -> TestUser {
        let id = self.register(username).await;
        let tokens = self.login(username).await;
        TestUser {
            id,
            username: username.to_owned(),
            token: tokens["access_token"].as_str().expect("access").to_owned(),
            refresh: tokens["refresh_token"]
                .as_str()
                .expect("refresh")
                .to_owned(),
        }
    }

    /// `POST /v1/auth/<action>` (`refresh` or `logout`) with a refresh token.
    pub async fn session_call(&self, action: &str, refresh: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/v1/auth/{action}"),
            None,
            Some(json!({"refresh_token": refresh})),
        )
        .await
    }

    /// `a` asks `b` to be friends and `b` accepts: they see each other's presence.
    pub async fn befriend(&self, a: &TestUser, b: &TestUser) {
        let (status, body) = self
            .post("/v1/friends/requests", &a.token, json!({"user_id": b.id}))
            .await;
        assert_eq!(
            (status, &body["status"]),
            (StatusCode::OK, &json!("requested"))
        );
        let (status, body) = self
            .post(
                &format!("/v1/friends/requests/{}/accept", a.id),
                &b.token,
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }

    pub async fn create_room(&self, owner: &TestUser, name: &str, members: &[&TestUser]) -> String {
        let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        let (status, body) = self
            .post(
                "/v1/rooms",
                &owner.token,
                json!({"name": name, "member_ids": ids}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["room_id"].as_str().expect("room_id").to_owned()
    }

    pub async fn send(&self, user: &TestUser, room: &str, text: &str) -> Value {
        let (status, body) = self
            .post(
                &format!("/v1/rooms/{room}/messages"),
                &user.token,
                json!({"body": text}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Every event of a room, paging backwards from the newest.
    pub async fn full_history(&self, user: &TestUser, room: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let path = match before {
                Some(b) => format!("/v1/rooms/{room}/messages?limit=200&before_seq={b}"),
                None => format!("/v1/rooms/{room}/messages?limit=200"),
            };
            let (status, page) = self.get(&path, &user.token).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let mut events = page["events"].as_array().expect("events").clone();
            before = events.first().and_then(|e| e["seq"].as_u64());
            events.extend(all);
            all = events;
            if !page["has_more"].as_bool().expect("has_more") {
                return all;
            }
        }
    }
}

/// The server running in this process.
#[derive(Debug)]
pub struct TestApp {
    pub api: Api,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: Option<TempDir>,
}

impl std::ops::Deref for TestApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

pub async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut app = spawn_app_in(dir.path()).await;
    app._dir = Some(dir);
    app
}

/// Like [`spawn_app`] with settings changed by `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = settings(dir.path(), &[]);
    tweak(&mut settings);
    let mut app = start(settings).await;
    app._dir = Some(dir);
    app
}

pub async fn spawn_app_in(data_dir: &Path) -> TestApp {
    start(settings(data_dir, &[])).await
}

async fn start(settings: Settings) -> TestApp {
    let app = App::build(settings).await.expect("app builds");
    let api = Api::new(app.addr());
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    TestApp {
        api,
        stop: Some(tx),
        task: Some(task),
        _dir: None,
    }
}

impl TestApp {
    /// Graceful shutdown; returns the server's result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task
            .take()
            .expect("running")
            .await
            .expect("server task")
    }
}

/// The real `chatd` binary as a child process.
#[derive(Debug)]
pub struct ChatdProcess {
    pub child: tokio::process::Child,
    pub api: Api,
}

impl ChatdProcess {
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[]).await
    }

    /// Starts with extra environment variables (settings): these and nothing else, whatever
    /// `CHAT_*`, `OTEL_*` or `RUST_LOG` the test runner's environment has.
    pub async fn start_with(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_on(data_dir, "127.0.0.1:0", env).await
    }

    /// Starts listening on `listen` (e.g. the port of a server that was stopped).
    pub async fn start_on(data_dir: &Path, listen: &str, env: &[(&str, &str)]) -> Self {
        let mut child = chatd()
            .args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .envs(GENEROUS_LIMITS.iter().copied())
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("chatd starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == "listening"
                {
                    // ECS lines put fields that are not ECS under `chat.`.
                    return v["chat.addr"]
                        .as_str()
                        .expect("addr field")
                        .parse()
                        .expect("socket addr");
                }
            }
            panic!("chatd exited before listening");
        })
        .await
        .expect("chatd listening within 60 s");
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            api: Api::new(addr),
        }
    }

    /// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`, `RssAnon`, …).
    pub fn memory_kib(&self, field: &str) -> u64 {
        Self::memory_kib_of(self.pid(), field)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// [`Self::memory_kib`] of any process.
    pub fn memory_kib_of(pid: u32, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
    }

    pub fn kill9(&mut self) {
        self.child.start_kill().expect("SIGKILL sent");
    }

    pub fn terminate(&self) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "SIGTERM delivered");
    }

    pub async fn wait(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("chatd exits")
            .expect("wait")
    }
}

/// The real `chatd` binary, with none of the settings in this process's environment.
fn chatd() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatd"));
    for name in test_support::inherited_settings() {
        cmd.env_remove(name);
    }
    cmd
}

/// Runs `chatd rebuild` on a data dir and checks it succeeded.
pub async fn rebuild(data_dir: &Path) {
    let status = chatd()
        .arg("--data-dir")
        .arg(data_dir)
        .arg("rebuild")
        .stdout(Stdio::null())
        .status()
        .await
        .expect("chatd rebuild runs");
    assert!(status.success(), "chatd rebuild failed: {status}");
}

/// Asserts a problem+json response with the given status and code.
#[track_caller]
pub fn assert_problem(got: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["code"], code, "{}", got.1);
    assert_eq!(got.1["status"], status.as_u16(), "{}", got.1);
}
