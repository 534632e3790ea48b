//! One task per WebSocket connection: connects (spread over source addresses), resumes,
//! sends open-loop if it is a sender, and hands everything it sees to its [`Ledger`].

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::accounting::{Ledger, Live, Mark, Window};

/// Where and how connections connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `ws://host:port`.
    pub ws_base: String,
    pub addr: SocketAddr,
    /// Baseline: rooms go in the URL and there is no resume.
    pub baseline: bool,
    /// Loopback source addresses to spread client sockets over (1 = the default address).
    pub source_addrs: u8,
}

/// How long a churning connection stays down before it reconnects.
pub const CHURN_DOWNTIME: Duration = Duration::from_millis(50);
/// Sends written out together at most, when the schedule is behind.
const SEND_BATCH: usize = 64;

/// The start signal: when sending starts and ends, and the measured window.
#[derive(Debug, Clone, Copy)]
pub struct Go {
    pub t0: Instant,
    /// No send is intended at or after this.
    pub end: Instant,
    pub window: Window,
}

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// Time 0 of every µs timestamp of the run.
    pub epoch: Instant,
    pub room_index: HashMap<String, usize>,
    /// Highest acknowledged seq per room.
    pub final_seq: Vec<AtomicU64>,
    pub live: Arc<Live>,
    /// Every send has been answered (or given up on): `final_seq` is final.
    pub acks_settled: watch::Sender<bool>,
    /// Everyone stops (drain done or given up).
    pub stop: watch::Sender<bool>,
    pub connected: AtomicUsize,
    pub caught_up: AtomicUsize,
    pub reconnects: AtomicU64,
    pub errors: Mutex<BTreeMap<String, u64>>,
    pub results: Mutex<Vec<Ledger>>,
    /// Handshakes in flight.
    pub handshakes: Semaphore,
}

impl Shared {
    pub fn new(room_ids: &[String]) -> Self {
        Self {
            epoch: Instant::now(),
            room_index: room_ids
                .iter()
                .enumerate()
                .map(|(i, r)| (r.clone(), i))
                .collect(),
            final_seq: room_ids.iter().map(|_| AtomicU64::new(0)).collect(),
            live: Arc::default(),
            acks_settled: watch::channel(false).0,
            stop: watch::channel(false).0,
            connected: AtomicUsize::new(0),
            caught_up: AtomicUsize::new(0),
            reconnects: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            results: Mutex::new(Vec::new()),
            handshakes: Semaphore::new(128),
        }
    }

    pub fn us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64
    }

    fn now_us(&self) -> u64 {
        self.us(Instant::now())
    }

    fn error(&self, code: &str) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code.to_owned())
            .or_default() += 1;
    }
}

/// One of a connection's rooms.
#[derive(Debug, Clone)]
pub struct ConnRoom {
    pub index: usize,
    pub id: String,
    /// The seq the connection resumes after.
    pub start_seq: u64,
    /// Other connections in the room.
    pub recipients: u64,
}

/// One connection's plan.
#[derive(Debug, Clone)]
pub struct ConnPlan {
    pub index: usize,
    pub user_id: String,
    pub token: String,
    pub rooms: Vec<ConnRoom>,
    /// Messages per second this connection sends (0: none).
    pub rate: f64,
    /// Where in its send interval this sender starts (0–1): senders are spread evenly over
    /// the interval, so together they send at a steady rate rather than in bursts.
    pub phase: f64,
    pub body_size: usize,
    /// Mean lifetime before a drop, when churning.
    pub churn: Option<Duration>,
    pub resume: bool,
}

#[derive(Debug, Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    room_id: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    event: Option<EventPart<'a>>,
    #[serde(default, borrow)]
    client_msg_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, rename = "ref")]
    reference: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct EventPart<'a> {
    #[serde(default, borrow)]
    body: Option<Cow<'a, str>>,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(endpoint: &Endpoint, plan: &ConnPlan, shared: &Shared) -> anyhow::Result<Ws> {
    let url = if endpoint.baseline {
        let rooms: Vec<&str> = plan.rooms.iter().map(|r| r.id.as_str()).collect();
        format!(
            "{}/ws?user={}&rooms={}",
            endpoint.ws_base,
            plan.user_id,
            rooms.join(",")
        )
    } else {
        format!("{}/v1/ws?access_token={}", endpoint.ws_base, plan.token)
    };
    let _permit = shared.handshakes.acquire().await?;
    let socket = TcpSocket::new_v4()?;
    if endpoint.source_addrs > 1 && endpoint.addr.ip().is_loopback() {
        let host = 1 + (plan.index % usize::from(endpoint.source_addrs)) as u8;
        socket.bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)),
            0,
        ))?;
    }
    let stream = socket.connect(endpoint.addr).await?;
    stream.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        url,
        MaybeTlsStream::Plain(stream),
        Some(socket_config()),
    )
    .await?;
    Ok(ws)
}

/// Before each read the library zero-fills its read buffer up to `read_buffer_size` (128 KiB
/// by default): with one read per burst of deliveries that memset was a quarter of the
/// generator's CPU, taken from the server it measures on the same cores. 16 KiB still holds a
/// hub turn's batch for one connection in one read.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(16 * 1024)
}

/// The open-loop schedule of one sender: send `k` is intended at `first + k × interval`.
struct Schedule {
    first: Instant,
    interval: Duration,
    end: Instant,
}

impl Schedule {
    fn at(&self, k: u64) -> Option<Instant> {
        let t = self.first + self.interval.mul_f64(k as f64);
        (t < self.end).then_some(t)
    }
}

/// Runs one connection until told to stop; its ledger goes to `shared.results`.
pub async fn run(
    endpoint: Endpoint,
    plan: ConnPlan,
    shared: Arc<Shared>,
    mut go: watch::Receiver<Option<Go>>,
) {
    let mut ledger = Ledger::new(
        plan.index,
        Window {
            run: 0,
            from_us: u64::MAX,
            to_us: u64::MAX,
        },
        shared.live.clone(),
        plan.rooms
            .iter()
            .map(|r| (r.index, r.start_seq, r.recipients)),
    );
    let mut stop = shared.stop.subscribe();
    let mut settled = shared.acks_settled.subscribe();
    let mut schedule: Option<Schedule> = None;
    let mut sent_count: u64 = 0;
    let mut first = true;
    let mut caught_up = false;
    let mut rng = fastrand_seed(plan.index as u64);
    'connection: loop {
        // Whatever was in flight on the previous connection will never be answered.
        ledger.give_up_pending();
        if *stop.borrow() {
            break;
        }
        let mut ws = match connect(&endpoint, &plan, &shared).await {
            Ok(ws) => ws,
            Err(e) => {
                shared.error(&format!("connect: {e}"));
                tokio::select! {
                    _ = stop.changed() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        if first {
            shared.connected.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        if !endpoint.baseline && (first || plan.resume) {
            let rooms: HashMap<&str, u64> = plan
                .rooms
                .iter()
                .map(|r| (r.id.as_str(), ledger.tracks[&r.index].last))
                .collect();
            let resume = json!({"type": "resume", "rooms": rooms}).to_string();
            if ws.send(Message::text(resume)).await.is_err() {
                continue;
            }
        } else if !endpoint.baseline {
            // Without resume the rooms start live: whatever happened meanwhile is lost.
            let _ = ws.send(Message::text(r#"{"type":"resume"}"#)).await;
        }
        first = false;
        let dies_at = plan.churn.map(|mean| {
            // Exponentially distributed lifetimes, so drops come at any moment.
            let u = (rng() as f64 / u64::MAX as f64).max(1e-9);
            Instant::now() + mean.mul_f64(-u.ln()).min(mean * 10)
        });
        loop {
            if schedule.is_none()
                && plan.rate > 0.0
                && let Some(g) = *go.borrow()
            {
                let interval = Duration::from_secs_f64(1.0 / plan.rate);
                schedule = Some(Schedule {
                    first: g.t0 + interval.mul_f64(plan.phase),
                    interval,
                    end: g.end,
                });
            }
            if !caught_up && *settled.borrow() {
                let done = ledger
                    .tracks
                    .iter()
                    .all(|(r, t)| t.last >= shared.final_seq[*r].load(Ordering::Relaxed));
                if done {
                    caught_up = true;
                    shared.caught_up.fetch_add(1, Ordering::Relaxed);
                }
            }
            let next_send = schedule.as_ref().and_then(|s| s.at(sent_count));
            // Churn only while sending; the drain is measured on stable connections.
            let die_at = dies_at.filter(|_| next_send.is_some());
            tokio::select! {
                _ = stop.changed() => break 'connection,
                _ = settled.changed() => {}
                _ = go.changed() => {
                    if let Some(g) = *go.borrow() {
                        ledger.set_window(g.window);
                    }
                }
                () = sleep_until(die_at) => {
                    drop(ws); // no close handshake: a dropped network
                    tokio::time::sleep(CHURN_DOWNTIME).await;
                    continue 'connection;
                }
                () = sleep_until(next_send) => {
                    // Everything due goes out now (the schedule may be behind), in one write.
                    let now = Instant::now();
                    let now_us = shared.us(now);
                    let mut batch = 0;
                    while batch < SEND_BATCH
                        && let Some(at) = schedule.as_ref().and_then(|s| s.at(sent_count))
                        && at <= now
                    {
                        let room = &plan.rooms[(sent_count as usize) % plan.rooms.len()];
                        let mark = Mark { run: ledger.window().run, conn: plan.index, intended_us: shared.us(at) };
                        // UUIDv7 keys, as the API recommends: ordered ids keep the log's writes cheap.
                        let key = uuid::Uuid::now_v7().to_string();
                        let frame = json!({"type": "send", "room_id": room.id, "body": mark.body(plan.body_size), "client_msg_id": key});
                        ledger.sent(key, room.index, mark.intended_us, now_us);
                        sent_count += 1;
                        batch += 1;
                        if ws.feed(Message::text(frame.to_string())).await.is_err() {
                            continue 'connection;
                        }
                    }
                    if ws.flush().await.is_err() {
                        continue 'connection;
                    }
                }
                msg = ws.next() => {
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(frame))) => {
                            shared.error(&format!("closed: {}", frame.map_or(0, |f| u16::from(f.code))));
                            continue 'connection;
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => continue 'connection,
                    };
                    let now_us = shared.now_us();
                    let Ok(frame) = serde_json::from_str::<Frame<'_>>(text.as_str()) else {
                        shared.error("unparsable frame");
                        continue;
                    };
                    match frame.kind.as_ref() {
                        "event" => {
                            let (Some(room), Some(seq)) = (frame.room_id.as_deref(), frame.seq) else { continue };
                            let Some(&r) = shared.room_index.get(room) else { continue };
                            let mark = frame.event.and_then(|e| e.body).and_then(|b| Mark::parse(&b));
                            ledger.event(r, seq, mark, now_us);
                        }
                        "ack" => {
                            let (Some(key), Some(seq)) = (frame.client_msg_id, frame.seq) else { continue };
                            if let Some(room) = ledger.acked(&key, seq, now_us) {
                                shared.final_seq[room].fetch_max(seq, Ordering::Relaxed);
                            }
                        }
                        "error" => {
                            shared.error(frame.code.as_deref().unwrap_or("error"));
                            if let Some(key) = frame.reference {
                                ledger.failed(&key);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    ledger.give_up_pending();
    shared
        .results
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(ledger);
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A tiny xorshift generator (no dependency needed for jitter).
fn fastrand_seed(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}
