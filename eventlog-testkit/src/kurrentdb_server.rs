//! A local KurrentDB gRPC endpoint, for testing the KurrentDB backend where no KurrentDB server
//! can run.
//!
//! The service is generated (build.rs) from the `.proto` files of the `kurrentdb` client
//! release chatd uses, and implements the part of KurrentDB's documented Streams semantics the
//! backend relies on, in memory:
//!
//! - `Append` with an expected revision (`NoStream`, a revision, `Any`, `StreamExists`): a wrong
//!   one is answered with `WrongExpectedVersion` (current and expected revision), nothing
//!   written. A retry of stored events is idempotent as KurrentDB documents it: with the same
//!   expected revision, events whose ids are exactly those stored right after it are answered
//!   with success and no position, and nothing is written; with `Any`, ids stored consecutively
//!   anywhere in the stream likewise. One append is one implicit transaction: its events share
//!   the commit position (the first event's prepare position), each has its own prepare
//!   position, and positions grow like offsets in a transaction log.
//! - `Read` of one stream (forwards/backwards, from a revision, start or end, with a count;
//!   `StreamNotFound` for an unknown stream), of `$all` (forwards from a position, inclusive, or
//!   backwards from one, exclusive; start or end) with a server-side stream-name prefix filter,
//!   and subscriptions to `$all` from a position (exclusive) or the start: a confirmation, the
//!   stored events, `CaughtUp`, then live events as they are appended.
//!
//! Not implemented (answered `Unimplemented`): stream subscriptions, regex filters, deletes,
//! batch append, persistent subscriptions, and every other service (server features, gossip:
//! the client then assumes an older single node, as it does against a real one without them).

// tonic's `Status` is the error type of every handler; boxing it only here would not help.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::{Stream, TryStreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

#[allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    missing_debug_implementations
)]
mod proto {
    pub mod event_store {
        pub mod client {
            tonic::include_proto!("event_store.client");
            pub mod streams {
                tonic::include_proto!("event_store.client.streams");
            }
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
}

use proto::event_store::client::streams::read_req::options::{
    self as read_options, AllOptions, FilterOptions, StreamOptions, all_options, filter_options,
    stream_options,
};
use proto::event_store::client::streams::streams_server::{Streams, StreamsServer};
use proto::event_store::client::streams::{self as pb, append_req, append_resp, read_resp};
use proto::event_store::client::{Empty, StreamIdentifier, uuid as pb_uuid};

/// A running endpoint on a free loopback port; stops when dropped.
#[derive(Debug)]
pub struct KurrentDbServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    subscriptions: Arc<AtomicUsize>,
}

impl KurrentDbServer {
    /// Starts an empty endpoint.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let service = Service::default();
        let subscriptions = service.subscriptions.clone();
        let service = StreamsServer::new(service);
        // No Nagle delay on answers (a real server's socket setting too).
        let incoming = TcpListenerStream::new(listener).inspect_ok(|s| {
            let _ = s.set_nodelay(true);
        });
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                eprintln!("local KurrentDB endpoint failed: {e}");
            }
        });
        Self {
            addr,
            stop: Some(stop),
            subscriptions,
        }
    }

    /// The `$all` subscriptions open now (each ends when its client goes away).
    pub fn subscriptions(&self) -> usize {
        self.subscriptions.load(Ordering::SeqCst)
    }

    /// The connection string for the client.
    pub fn url(&self) -> String {
        format!("kurrentdb://127.0.0.1:{}?tls=false", self.addr.port())
    }
}

impl Drop for KurrentDbServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One stored event.
#[derive(Debug, Clone)]
struct Record {
    stream: String,
    revision: u64,
    id: Uuid,
    metadata: HashMap<String, String>,
    custom_metadata: Vec<u8>,
    data: Vec<u8>,
    commit: u64,
    prepare: u64,
}

impl Record {
    fn position(&self) -> (u64, u64) {
        (self.commit, self.prepare)
    }
}

#[derive(Debug, Default)]
struct Log {
    /// Every event in `$all` order.
    all: Vec<Record>,
    /// Indexes into `all`, per stream, in revision order.
    streams: HashMap<String, Vec<usize>>,
    /// The next free offset of the "transaction log".
    offset: u64,
}

#[derive(Debug, Clone)]
struct Service {
    log: Arc<Mutex<Log>>,
    /// The number of events in `$all`, for live subscriptions.
    appended: watch::Sender<usize>,
    /// The `$all` subscriptions open now.
    subscriptions: Arc<AtomicUsize>,
}

impl Default for Service {
    fn default() -> Self {
        Self {
            log: Arc::new(Mutex::new(Log {
                // The log starts with the server's own records, as a real one does.
                offset: 1024,
                ..Log::default()
            })),
            appended: watch::channel(0).0,
            subscriptions: Arc::default(),
        }
    }
}

/// Counts one open subscription while it lives.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

fn stream_name(id: Option<StreamIdentifier>) -> Result<String, Status> {
    let id = id.ok_or_else(|| Status::invalid_argument("no stream identifier"))?;
    String::from_utf8(id.stream_name).map_err(|_| Status::invalid_argument("stream name"))
}

fn uuid_of(id: Option<proto::event_store::client::Uuid>) -> Result<Uuid, Status> {
    match id.and_then(|u| u.value) {
        Some(pb_uuid::Value::Structured(s)) => Ok(Uuid::from_u64_pair(
            s.most_significant_bits as u64,
            s.least_significant_bits as u64,
        )),
        Some(pb_uuid::Value::String(s)) => {
            s.parse().map_err(|_| Status::invalid_argument("event id"))
        }
        None => Err(Status::invalid_argument("no event id")),
    }
}

/// `(commit, prepare)` order, as `$all` is ordered.
type Pos = (u64, u64);

enum Expected {
    Any,
    NoStream,
    Exists,
    Revision(u64),
}

/// What an append does to the log.
enum Outcome {
    Written { last: u64, position: Pos },
    Idempotent { last: u64 },
    Wrong { current: Option<u64> },
}

impl Log {
    fn append(&mut self, stream: &str, expected: &Expected, events: Vec<Record>) -> Outcome {
        let existing: Vec<Uuid> = self
            .streams
            .get(stream)
            .map(|ix| ix.iter().map(|&i| self.all[i].id).collect())
            .unwrap_or_default();
        let current = existing.len().checked_sub(1).map(|r| r as u64);
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        // Idempotency: the stored events right after the expected revision (or, with `Any`,
        // wherever the first id is) are exactly these.
        let from = match expected {
            Expected::NoStream => Some(0),
            Expected::Revision(r) => Some(*r as usize + 1),
            Expected::Any | Expected::Exists => existing.iter().position(|id| *id == ids[0]),
        };
        if let Some(from) = from
            && existing.get(from..from + ids.len()) == Some(ids.as_slice())
        {
            return Outcome::Idempotent {
                last: (from + ids.len() - 1) as u64,
            };
        }
        let ok = match expected {
            Expected::Any => true,
            Expected::NoStream => current.is_none(),
            Expected::Exists => current.is_some(),
            Expected::Revision(r) => current == Some(*r),
        };
        if !ok {
            return Outcome::Wrong { current };
        }
        let commit = self.offset;
        let mut revision = current.map_or(0, |c| c + 1);
        for mut e in events {
            e.stream = stream.to_owned();
            e.revision = revision;
            e.commit = commit;
            e.prepare = self.offset;
            self.offset += 128 + e.data.len() as u64 + e.custom_metadata.len() as u64;
            revision += 1;
            self.streams
                .entry(stream.to_owned())
                .or_default()
                .push(self.all.len());
            self.all.push(e);
        }
        Outcome::Written {
            last: revision - 1,
            position: (commit, commit),
        }
    }

    /// Index in `all` of the first event after `pos` (or at it, when `inclusive`).
    fn seek(&self, pos: Pos, inclusive: bool) -> usize {
        self.all.partition_point(|r| {
            if inclusive {
                r.position() < pos
            } else {
                r.position() <= pos
            }
        })
    }
}

/// The server-side filter of a `$all` read: stream-name prefixes.
#[derive(Clone)]
struct Filter(Option<Vec<String>>);

impl Filter {
    fn of(option: Option<read_options::FilterOption>) -> Result<Self, Status> {
        match option {
            None | Some(read_options::FilterOption::NoFilter(_)) => Ok(Self(None)),
            Some(read_options::FilterOption::Filter(FilterOptions { filter, .. })) => {
                match filter {
                    Some(filter_options::Filter::StreamIdentifier(e)) if e.regex.is_empty() => {
                        Ok(Self(Some(e.prefix)))
                    }
                    _ => Err(Status::unimplemented(
                        "only stream-name prefix filters are implemented here",
                    )),
                }
            }
        }
    }

    fn admits(&self, r: &Record) -> bool {
        self.0
            .as_ref()
            .is_none_or(|prefixes| prefixes.iter().any(|p| r.stream.starts_with(p.as_str())))
    }
}

fn read_event(r: &Record, string_ids: bool) -> pb::ReadResp {
    let id = if string_ids {
        pb_uuid::Value::String(r.id.to_string())
    } else {
        let (most, least) = r.id.as_u64_pair();
        pb_uuid::Value::Structured(pb_uuid::Structured {
            most_significant_bits: most as i64,
            least_significant_bits: least as i64,
        })
    };
    pb::ReadResp {
        content: Some(read_resp::Content::Event(read_resp::ReadEvent {
            event: Some(read_resp::read_event::RecordedEvent {
                id: Some(proto::event_store::client::Uuid { value: Some(id) }),
                stream_identifier: Some(StreamIdentifier {
                    stream_name: r.stream.clone().into_bytes(),
                }),
                stream_revision: r.revision,
                prepare_position: r.prepare,
                commit_position: r.commit,
                metadata: r.metadata.clone(),
                custom_metadata: r.custom_metadata.clone(),
                data: r.data.clone(),
            }),
            link: None,
            position: Some(read_resp::read_event::Position::CommitPosition(r.commit)),
        })),
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<pb::ReadResp, Status>> + Send>>;

fn finite(items: Vec<pb::ReadResp>) -> ReadStream {
    Box::pin(futures::stream::iter(items.into_iter().map(Ok)))
}

#[tonic::async_trait]
impl Streams for Service {
    type ReadStream = ReadStream;
    type BatchAppendStream =
        Pin<Box<dyn Stream<Item = Result<pb::BatchAppendResp, Status>> + Send>>;

    async fn append(
        &self,
        request: Request<Streaming<pb::AppendReq>>,
    ) -> Result<Response<pb::AppendResp>, Status> {
        let mut messages = request.into_inner();
        let Some(append_req::Content::Options(options)) =
            messages.message().await?.and_then(|m| m.content)
        else {
            return Err(Status::invalid_argument(
                "an append starts with its options",
            ));
        };
        let stream = stream_name(options.stream_identifier)?;
        use append_req::options::ExpectedStreamRevision as E;
        let expected = match options.expected_stream_revision {
            Some(E::Revision(r)) => Expected::Revision(r),
            Some(E::NoStream(_)) => Expected::NoStream,
            Some(E::Any(_)) => Expected::Any,
            Some(E::StreamExists(_)) => Expected::Exists,
            None => return Err(Status::invalid_argument("no expected revision")),
        };
        // Ticks (100 ns) since the Unix epoch, as the server sends it.
        let created = chrono::Utc::now().timestamp_micros() as u64 * 10;
        let mut events = Vec::new();
        while let Some(message) = messages.message().await? {
            let Some(append_req::Content::ProposedMessage(m)) = message.content else {
                return Err(Status::invalid_argument("options sent twice"));
            };
            let mut metadata = m.metadata;
            metadata.insert("created".into(), created.to_string());
            events.push(Record {
                stream: String::new(),
                revision: 0,
                id: uuid_of(m.id)?,
                metadata,
                custom_metadata: m.custom_metadata,
                data: m.data,
                commit: 0,
                prepare: 0,
            });
        }
        if events.is_empty() {
            return Err(Status::invalid_argument("no events"));
        }
        let outcome = {
            let mut log = lock(&self.log);
            let outcome = log.append(&stream, &expected, events);
            self.appended.send_replace(log.all.len());
            outcome
        };
        use append_resp::success::{CurrentRevisionOption, PositionOption};
        let result = match outcome {
            Outcome::Written { last, position } => {
                append_resp::Result::Success(append_resp::Success {
                    current_revision_option: Some(CurrentRevisionOption::CurrentRevision(last)),
                    position_option: Some(PositionOption::Position(append_resp::Position {
                        commit_position: position.0,
                        prepare_position: position.1,
                    })),
                })
            }
            Outcome::Idempotent { last } => append_resp::Result::Success(append_resp::Success {
                current_revision_option: Some(CurrentRevisionOption::CurrentRevision(last)),
                position_option: Some(PositionOption::NoPosition(Empty {})),
            }),
            Outcome::Wrong { current } => {
                use append_resp::wrong_expected_version::{
                    CurrentRevisionOption as C, ExpectedRevisionOption as X,
                };
                append_resp::Result::WrongExpectedVersion(append_resp::WrongExpectedVersion {
                    current_revision_option: Some(match current {
                        Some(r) => C::CurrentRevision(r),
                        None => C::CurrentNoStream(Empty {}),
                    }),
                    expected_revision_option: Some(match expected {
                        Expected::Revision(r) => X::ExpectedRevision(r),
                        Expected::NoStream => X::ExpectedNoStream(Empty {}),
                        Expected::Any => X::ExpectedAny(Empty {}),
                        Expected::Exists => X::ExpectedStreamExists(Empty {}),
                    }),
                    ..Default::default()
                })
            }
        };
        Ok(Response::new(pb::AppendResp {
            result: Some(result),
        }))
    }

    async fn read(&self, request: Request<pb::ReadReq>) -> Result<Response<ReadStream>, Status> {
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("no read options"))?;
        let backwards = options.read_direction == 1;
        let string_ids = matches!(
            options.uuid_option.and_then(|u| u.content),
            Some(read_options::uuid_option::Content::String(_))
        );
        let count = match options.count_option {
            Some(read_options::CountOption::Count(n)) => Some(n as usize),
            Some(read_options::CountOption::Subscription(_)) => None,
            None => return Err(Status::invalid_argument("neither count nor subscription")),
        };
        match options.stream_option {
            Some(read_options::StreamOption::Stream(StreamOptions {
                stream_identifier,
                revision_option,
            })) => {
                let Some(count) = count else {
                    return Err(Status::unimplemented("stream subscriptions"));
                };
                let stream = stream_name(stream_identifier)?;
                let log = lock(&self.log);
                let Some(ix) = log.streams.get(&stream) else {
                    return Ok(Response::new(finite(vec![pb::ReadResp {
                        content: Some(read_resp::Content::StreamNotFound(
                            read_resp::StreamNotFound {
                                stream_identifier: Some(StreamIdentifier {
                                    stream_name: stream.into_bytes(),
                                }),
                            },
                        )),
                    }])));
                };
                let last = ix.len() as u64 - 1;
                let revisions: Vec<u64> = match (revision_option, backwards) {
                    (Some(stream_options::RevisionOption::Start(_)), false) => (0..=last).collect(),
                    (Some(stream_options::RevisionOption::Revision(r)), false) => {
                        (r..=last).collect()
                    }
                    (Some(stream_options::RevisionOption::End(_)), true) => {
                        (0..=last).rev().collect()
                    }
                    (Some(stream_options::RevisionOption::Revision(r)), true) => {
                        (0..=r.min(last)).rev().collect()
                    }
                    (Some(_), _) => Vec::new(),
                    (None, _) => return Err(Status::invalid_argument("no revision option")),
                };
                let items = revisions
                    .into_iter()
                    .take(count)
                    .map(|r| read_event(&log.all[ix[r as usize]], string_ids))
                    .collect();
                Ok(Response::new(finite(items)))
            }
            Some(read_options::StreamOption::All(AllOptions { all_option })) => {
                let filter = Filter::of(options.filter_option)?;
                let log = lock(&self.log);
                let end = (u64::MAX, u64::MAX);
                let from = match all_option {
                    Some(all_options::AllOption::Start(_)) => None,
                    Some(all_options::AllOption::End(_)) => Some(end),
                    Some(all_options::AllOption::Position(p)) => {
                        Some((p.commit_position, p.prepare_position))
                    }
                    None => return Err(Status::invalid_argument("no $all position")),
                };
                let Some(count) = count else {
                    // A subscription: from the start or after the position.
                    let next = from.map_or(0, |p| log.seek(p, false));
                    drop(log);
                    return Ok(Response::new(self.subscribe(next, filter, string_ids)));
                };
                let items: Vec<pb::ReadResp> = if backwards {
                    let before = from.map_or(0, |p| log.seek(p, true));
                    log.all[..before]
                        .iter()
                        .rev()
                        .filter(|r| filter.admits(r))
                        .take(count)
                        .map(|r| read_event(r, string_ids))
                        .collect()
                } else {
                    let start = from.map_or(0, |p| log.seek(p, true));
                    log.all[start..]
                        .iter()
                        .filter(|r| filter.admits(r))
                        .take(count)
                        .map(|r| read_event(r, string_ids))
                        .collect()
                };
                Ok(Response::new(finite(items)))
            }
            None => Err(Status::invalid_argument("no stream option")),
        }
    }

    async fn delete(&self, _: Request<pb::DeleteReq>) -> Result<Response<pb::DeleteResp>, Status> {
        Err(Status::unimplemented("delete"))
    }

    async fn tombstone(
        &self,
        _: Request<pb::TombstoneReq>,
    ) -> Result<Response<pb::TombstoneResp>, Status> {
        Err(Status::unimplemented("tombstone"))
    }

    async fn batch_append(
        &self,
        _: Request<Streaming<pb::BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        Err(Status::unimplemented("batch append"))
    }
}

impl Service {
    /// A `$all` subscription from index `next` of the log: confirmation, catch-up, `CaughtUp`,
    /// then live events. Ends when the client goes away.
    fn subscribe(&self, mut next: usize, filter: Filter, string_ids: bool) -> ReadStream {
        let (tx, rx) = mpsc::channel(64);
        let service = self.clone();
        let open = Open::new(&self.subscriptions);
        tokio::spawn(async move {
            let _open = open;
            let confirmation = pb::ReadResp {
                content: Some(read_resp::Content::Confirmation(
                    read_resp::SubscriptionConfirmation {
                        subscription_id: Uuid::new_v4().to_string(),
                    },
                )),
            };
            if tx.send(Ok(confirmation)).await.is_err() {
                return;
            }
            let mut appended = service.appended.subscribe();
            let mut caught_up = false;
            loop {
                let batch: Vec<Record> = {
                    let log = lock(&service.log);
                    let batch = log.all[next.min(log.all.len())..].to_vec();
                    next = log.all.len();
                    batch
                };
                for r in batch.iter().filter(|r| filter.admits(r)) {
                    if tx.send(Ok(read_event(r, string_ids))).await.is_err() {
                        return;
                    }
                }
                if !caught_up {
                    caught_up = true;
                    let message = pb::ReadResp {
                        content: Some(read_resp::Content::CaughtUp(read_resp::CaughtUp {
                            timestamp: Some(prost_types::Timestamp::from(
                                std::time::SystemTime::now(),
                            )),
                            stream_revision: None,
                            position: None,
                        })),
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = appended.wait_for(|n| *n > next) => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    () = tx.closed() => return,
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}
