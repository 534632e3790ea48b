//! Receivers that speak the `_bulk` and Slack webhook wire formats, and helpers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem::http::StatusCode;
use poem::listener::{Acceptor, TcpAcceptor};
use poem::{Body, Request, Response, Server};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Lines written by the log layer, kept in memory.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    pub fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn json_lines(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

pub struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = CaptureWriter;
    fn make_writer(&'a self) -> CaptureWriter {
        CaptureWriter(self.0.clone())
    }
}

/// Polls `cond` until it holds; panics after `within` (real time: for tests that do not pause
/// the clock).
pub async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A port on 127.0.0.1 that refuses connections until a server is started on it: bound (so
/// no other process can take it) but not listening. [`FakeEs::start_on`] listens on it.
#[derive(Debug)]
pub struct HeldPort(tokio::net::TcpSocket);

impl HeldPort {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // No SO_REUSEADDR, so that no other socket can bind the port meanwhile.
        socket.set_reuseaddr(false).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        Self(socket)
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap()
    }
}

fn any_port() -> tokio::net::TcpListener {
    let socket = HeldPort::new();
    socket.0.listen(1024).unwrap()
}

async fn serve<F, Fut>(
    listener: tokio::net::TcpListener,
    handler: F,
) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response> + Send + 'static,
{
    let acceptor = TcpAcceptor::from_tokio(listener).unwrap();
    let addr = *acceptor.local_addr()[0].as_socket_addr().unwrap();
    let app = poem::endpoint::make(handler);
    let task = tokio::spawn(async move {
        let _ = Server::new_with_acceptor(acceptor).run(app).await;
    });
    (addr, task)
}

/// One scripted answer of the fake Elasticsearch.
#[derive(Debug, Clone)]
pub enum EsReply {
    /// The whole request fails with this status.
    Status(u16),
    /// 200 with these statuses for the first items (the rest 201).
    Items(Vec<u16>),
}

/// One `_bulk` request as received.
#[derive(Debug, Clone)]
pub struct BulkRequest {
    pub path: String,
    pub content_type: String,
    pub actions: Vec<Value>,
    pub docs: Vec<Value>,
}

#[derive(Default)]
struct EsState {
    requests: Mutex<Vec<BulkRequest>>,
    /// Documents acknowledged with 2xx, in order.
    indexed: Mutex<Vec<Value>>,
    script: Mutex<VecDeque<EsReply>>,
    down: AtomicBool,
}

/// A fake Elasticsearch that speaks `_bulk`.
pub struct FakeEs {
    pub addr: SocketAddr,
    state: Arc<EsState>,
    changed: watch::Receiver<usize>,
    task: JoinHandle<()>,
}

impl Drop for FakeEs {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeEs {
    pub async fn start() -> Self {
        Self::serve(any_port()).await
    }

    /// Listens on a port held so far.
    pub async fn start_on(port: HeldPort) -> Self {
        Self::serve(port.0.listen(1024).unwrap()).await
    }

    async fn serve(listener: tokio::net::TcpListener) -> Self {
        let state = Arc::new(EsState::default());
        let (tx, changed) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let s = state.clone();
        let (addr, task) = serve(listener, move |req: Request| {
            let s = s.clone();
            let tx = tx.clone();
            async move {
                let response = bulk(&s, req).await;
                tx.send_modify(|n| *n += 1);
                response
            }
        })
        .await;
        Self {
            addr,
            state,
            changed,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn script(&self, replies: impl IntoIterator<Item = EsReply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// While down, every request gets 503.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    pub fn requests(&self) -> Vec<BulkRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn indexed(&self) -> Vec<Value> {
        self.state.indexed.lock().unwrap().clone()
    }

    /// Waits (real time) until `cond` holds on the indexed documents.
    pub async fn wait_indexed(&self, within: Duration, cond: impl Fn(&[Value]) -> bool) {
        let mut changed = self.changed.clone();
        let deadline = Instant::now() + within;
        loop {
            if cond(&self.indexed()) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                panic!(
                    "timed out; indexed {} documents: {:?}",
                    self.indexed().len(),
                    self.indexed()
                );
            }
        }
    }
}

async fn bulk(s: &EsState, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = req.into_body().into_string().await.unwrap();
    let mut lines = body.lines();
    let mut actions = Vec::new();
    let mut docs = Vec::new();
    while let Some(action) = lines.next() {
        actions.push(serde_json::from_str::<Value>(action).unwrap());
        docs.push(serde_json::from_str::<Value>(lines.next().unwrap()).unwrap());
    }
    assert!(body.ends_with('\n'), "NDJSON must end with a newline");
    s.requests.lock().unwrap().push(BulkRequest {
        path,
        content_type,
        actions,
        docs: docs.clone(),
    });
    let reply = if s.down.load(Ordering::SeqCst) {
        EsReply::Status(503)
    } else {
        s.script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(EsReply::Items(Vec::new()))
    };
    let statuses: Vec<u16> = match reply {
        EsReply::Status(code) => {
            return es_response(
                code,
                json!({"error": {"type": "unavailable"}, "status": code}),
            );
        }
        EsReply::Items(first) => (0..docs.len())
            .map(|i| first.get(i).copied().unwrap_or(201))
            .collect(),
    };
    let mut items = Vec::new();
    for (doc, status) in docs.into_iter().zip(&statuses) {
        if (200..300).contains(status) {
            s.indexed.lock().unwrap().push(doc);
            items.push(json!({"create": {"_index": ".ds-logs-chatd-default", "status": status}}));
        } else {
            items.push(json!({"create": {"status": status, "error": {"type": "es_rejected_execution_exception", "reason": "busy"}}}));
        }
    }
    let errors = statuses.iter().any(|s| !(200..300).contains(s));
    es_response(200, json!({"took": 1, "errors": errors, "items": items}))
}

fn es_response(status: u16, body: Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .header("x-elastic-product", "Elasticsearch")
        .body(Body::from_string(body.to_string()))
}

/// One scripted answer of the fake Slack.
#[derive(Debug, Clone, Copy)]
pub enum SlackReply {
    Ok,
    TooManyRequests { retry_after_secs: u64 },
    Status(u16),
}

#[derive(Default)]
struct SlackState {
    /// Every request, answered or not: (arrival, body).
    received: Mutex<Vec<(Instant, Value)>>,
    script: Mutex<VecDeque<SlackReply>>,
}

/// A fake Slack incoming webhook.
pub struct FakeSlack {
    pub addr: SocketAddr,
    state: Arc<SlackState>,
    changed: watch::Receiver<usize>,
    task: JoinHandle<()>,
}

impl Drop for FakeSlack {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeSlack {
    pub async fn start() -> Self {
        let state = Arc::new(SlackState::default());
        let (tx, changed) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let s = state.clone();
        let (addr, task) = serve(any_port(), move |req: Request| {
            let s = s.clone();
            let tx = tx.clone();
            async move {
                assert_eq!(req.uri().path(), "/services/T000/B000/XXXX");
                let body: Value =
                    serde_json::from_str(&req.into_body().into_string().await.unwrap()).unwrap();
                s.received.lock().unwrap().push((Instant::now(), body));
                let reply = s
                    .script
                    .lock()
                    .unwrap()
                    .pop_front()
                    .unwrap_or(SlackReply::Ok);
                tx.send_modify(|n| *n += 1);
                match reply {
                    SlackReply::Ok => Response::builder().body("ok"),
                    SlackReply::TooManyRequests { retry_after_secs } => Response::builder()
                        .status(StatusCode::TOO_MANY_REQUESTS)
                        .header("retry-after", retry_after_secs.to_string())
                        .body("rate_limited"),
                    SlackReply::Status(code) => Response::builder()
                        .status(StatusCode::from_u16(code).unwrap())
                        .body("error"),
                }
            }
        })
        .await;
        Self {
            addr,
            state,
            changed,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/services/T000/B000/XXXX", self.addr)
    }

    pub fn script(&self, replies: impl IntoIterator<Item = SlackReply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    pub fn received(&self) -> Vec<(Instant, Value)> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests have arrived. Works with the paused clock: the timeout is
    /// tokio time, which only moves when everything is idle.
    pub async fn wait_requests(&self, n: usize) -> Vec<(Instant, Value)> {
        let mut changed = self.changed.clone();
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                panic!("timed out waiting for {n} webhook requests; got {got:#?}");
            }
        }
    }
}

/// The header text of a Block Kit message.
pub fn header(body: &Value) -> String {
    body["blocks"][0]["text"]["text"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// All mrkdwn/plain text of a message, for `contains` checks.
pub fn all_text(body: &Value) -> String {
    body.to_string()
}
