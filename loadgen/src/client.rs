//! One task per WebSocket connection: connects (spread over source addresses), resumes,
//! sends open-loop if it is a sender, and accounts for every event it receives.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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

/// Latencies are recorded in microseconds, up to one minute.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// t = 0 of the run; message bodies carry their intended send time relative to it.
    pub epoch: std::time::Instant,
    /// Intended send times (µs since epoch) inside [from, to) are measured (set at go).
    pub window_from: AtomicU64,
    pub window_to: AtomicU64,
    pub room_index: HashMap<String, usize>,
    /// Highest acknowledged seq per room.
    pub final_seq: Vec<AtomicU64>,
    /// Sends stop.
    pub sending_over: AtomicBool,
    /// Every send has been answered (or given up on): `final_seq` is final.
    pub acks_settled: AtomicBool,
    /// Everyone stops (drain done or given up).
    pub stop: watch::Sender<bool>,
    pub connected: AtomicUsize,
    pub caught_up: AtomicUsize,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    pub acked_in_window: AtomicU64,
    pub delivered_in_window: AtomicU64,
    pub reconnects: AtomicU64,
    /// Sends whose connection dropped before the answer (stored or not: unknown).
    pub unanswered: AtomicU64,
    pub errors: Mutex<BTreeMap<String, u64>>,
    pub results: Mutex<Vec<ConnResult>>,
    /// Handshakes in flight.
    pub handshakes: Semaphore,
}

impl Shared {
    pub fn new(room_ids: &[String]) -> Self {
        Self {
            epoch: std::time::Instant::now(),
            window_from: AtomicU64::new(u64::MAX),
            window_to: AtomicU64::new(u64::MAX),
            room_index: room_ids
                .iter()
                .enumerate()
                .map(|(i, r)| (r.clone(), i))
                .collect(),
            final_seq: room_ids.iter().map(|_| AtomicU64::new(0)).collect(),
            sending_over: AtomicBool::new(false),
            acks_settled: AtomicBool::new(false),
            stop: watch::channel(false).0,
            connected: AtomicUsize::new(0),
            caught_up: AtomicUsize::new(0),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            acked_in_window: AtomicU64::new(0),
            delivered_in_window: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            unanswered: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            results: Mutex::new(Vec::new()),
            handshakes: Semaphore::new(128),
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn in_window(&self, t: u64) -> bool {
        t >= self.window_from.load(Ordering::Relaxed) && t < self.window_to.load(Ordering::Relaxed)
    }

    pub fn error_count(&self) -> u64 {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
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

/// Per room, what one connection received.
#[derive(Debug, Default, Clone)]
pub struct RoomTrack {
    pub last: u64,
    pub missing: BTreeSet<u64>,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl RoomTrack {
    fn receive(&mut self, seq: u64) {
        if seq == self.last + 1 {
            self.last = seq;
        } else if seq > self.last {
            self.missing.extend(self.last + 1..seq);
            self.last = seq;
        } else if self.missing.remove(&seq) {
            self.out_of_order += 1;
        } else {
            self.duplicates += 1;
        }
    }

    /// Events this connection should have and does not.
    pub fn lost(&self, final_seq: u64) -> u64 {
        self.missing.len() as u64 + final_seq.saturating_sub(self.last)
    }
}

/// One connection's results.
#[derive(Debug)]
pub struct ConnResult {
    pub ack: Histogram<u64>,
    pub delivery: Histogram<u64>,
    /// (room index, track).
    pub rooms: Vec<(usize, RoomTrack)>,
}

/// One connection's plan.
#[derive(Debug, Clone)]
pub struct ConnPlan {
    pub index: usize,
    pub user_id: String,
    pub token: String,
    /// (room index, room id).
    pub rooms: Vec<(usize, String)>,
    /// Messages per second this connection sends (0: none).
    pub rate: f64,
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
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct EventPart<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    body: Option<Cow<'a, str>>,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(endpoint: &Endpoint, plan: &ConnPlan, shared: &Shared) -> anyhow::Result<Ws> {
    let url = if endpoint.baseline {
        let rooms: Vec<&str> = plan.rooms.iter().map(|(_, id)| id.as_str()).collect();
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
    let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await?;
    Ok(ws)
}

/// Runs one connection until told to stop. `go` carries the time sending starts.
pub async fn run(
    endpoint: Endpoint,
    plan: ConnPlan,
    shared: Arc<Shared>,
    mut go: watch::Receiver<Option<Instant>>,
) {
    let mut ack = histogram();
    let mut delivery = histogram();
    let mut tracks: HashMap<usize, RoomTrack> = plan
        .rooms
        .iter()
        .map(|(r, _)| (*r, RoomTrack::default()))
        .collect();
    let mut stop = shared.stop.subscribe();
    // client_msg_id → (intended send time, room index)
    let mut pending: HashMap<String, (u64, usize)> = HashMap::new();
    let mut sent_count: u64 = 0;
    let mut first = true;
    let mut caught_up = false;
    let pad = "x".repeat(plan.body_size);
    let mut rng = fastrand_seed(plan.index as u64);
    'connection: loop {
        // Whatever was in flight on the previous connection will never be answered.
        shared
            .unanswered
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        pending.clear();
        let mut ws = match connect(&endpoint, &plan, &shared).await {
            Ok(ws) => ws,
            Err(e) => {
                shared.error(&format!("connect: {e}"));
                if *stop.borrow() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
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
                .map(|(r, id)| (id.as_str(), tracks[r].last))
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
        let lifetime = plan.churn.map(|mean| {
            // Exponentially distributed lifetimes, so drops come at any moment.
            let u = (rng() as f64 / u64::MAX as f64).max(1e-9);
            mean.mul_f64(-u.ln()).min(mean * 10)
        });
        let dies_at = lifetime.map(|l| Instant::now() + l);
        let interval = (plan.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / plan.rate));
        let mut next_send: Option<Instant> = None;
        loop {
            if next_send.is_none()
                && !shared.sending_over.load(Ordering::Relaxed)
                && let (Some(interval), Some(start)) = (interval, *go.borrow())
            {
                // Spread senders over the first interval, then keep the schedule.
                let phase = interval.mul_f64((plan.index % 1000) as f64 / 1000.0);
                next_send = Some(start + phase + interval.mul_f64(sent_count as f64));
            }
            if !caught_up && shared.acks_settled.load(Ordering::Relaxed) {
                let done = tracks
                    .iter()
                    .all(|(r, t)| t.last >= shared.final_seq[*r].load(Ordering::Relaxed));
                if done {
                    caught_up = true;
                    shared.caught_up.fetch_add(1, Ordering::Relaxed);
                }
            }
            let send_at = next_send.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let die_at = dies_at
                .filter(|_| !shared.sending_over.load(Ordering::Relaxed))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = stop.changed() => break 'connection,
                _ = go.changed() => {}
                () = tokio::time::sleep_until(die_at) => {
                    drop(ws); // no close handshake: a dropped network
                    tokio::time::sleep(CHURN_DOWNTIME).await;
                    continue 'connection;
                }
                () = tokio::time::sleep_until(send_at), if next_send.is_some() => {
                    if shared.sending_over.load(Ordering::Relaxed) {
                        next_send = None;
                        continue;
                    }
                    let intended = send_at;
                    let intended_us = intended.into_std().duration_since(shared.epoch).as_micros() as u64;
                    let (room_index, room_id) = &plan.rooms[(sent_count as usize) % plan.rooms.len()];
                    let head = format!("lg {intended_us} ");
                    let body = format!("{head}{}", &pad[..plan.body_size.saturating_sub(head.len()).max(1)]);
                    // UUIDv7 keys, as the API recommends: ordered ids keep the log's writes cheap.
                    let key = uuid::Uuid::now_v7().to_string();
                    let frame = json!({"type": "send", "room_id": room_id, "body": body, "client_msg_id": key});
                    pending.insert(key, (intended_us, *room_index));
                    sent_count += 1;
                    next_send = interval.map(|i| intended + i);
                    shared.sent.fetch_add(1, Ordering::Relaxed);
                    if ws.send(Message::text(frame.to_string())).await.is_err() {
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
                    let Ok(frame) = serde_json::from_str::<Frame<'_>>(text.as_str()) else {
                        shared.error("unparsable frame");
                        continue;
                    };
                    match frame.kind.as_ref() {
                        "event" => {
                            let (Some(room), Some(seq)) = (frame.room_id.as_deref(), frame.seq) else { continue };
                            let Some(&r) = shared.room_index.get(room) else { continue };
                            if let Some(track) = tracks.get_mut(&r) {
                                track.receive(seq);
                            }
                            let Some(ev) = frame.event else { continue };
                            if ev.kind != "message_sent" {
                                continue;
                            }
                            let Some(t) = ev.body.as_deref().and_then(|b| b.strip_prefix("lg ")).and_then(|b| b.split(' ').next()).and_then(|t| t.parse::<u64>().ok()) else { continue };
                            shared.delivered.fetch_add(1, Ordering::Relaxed);
                            if shared.in_window(t) {
                                shared.delivered_in_window.fetch_add(1, Ordering::Relaxed);
                                let _ = delivery.record(shared.now_us().saturating_sub(t).max(1));
                            }
                        }
                        "ack" => {
                            let Some(key) = frame.client_msg_id else { continue };
                            let Some((t, room)) = pending.remove(key.as_ref()) else { continue };
                            if let Some(seq) = frame.seq {
                                shared.final_seq[room].fetch_max(seq, Ordering::Relaxed);
                            }
                            shared.acked.fetch_add(1, Ordering::Relaxed);
                            if shared.in_window(t) {
                                shared.acked_in_window.fetch_add(1, Ordering::Relaxed);
                                let _ = ack.record(shared.now_us().saturating_sub(t).max(1));
                            }
                        }
                        "error" => shared.error(frame.code.as_deref().unwrap_or("error")),
                        _ => {}
                    }
                }
            }
        }
    }
    shared
        .results
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(ConnResult {
            ack,
            delivery,
            rooms: tracks.into_iter().collect(),
        });
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
