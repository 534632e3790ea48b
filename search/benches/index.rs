#![allow(clippy::unwrap_used)] // a benchmark reports failure by panicking
//! Search at scale (run: `cargo bench -p search --bench index`).
//!
//! 1. A deterministic corpus of 1,000,000 Korean/English chat messages across 1,000 rooms
//!    is written to a real SQLite event log (not timed).
//! 2. Indexing throughput: the indexer (`search::run`, default settings) catches up from
//!    position 0 until everything is committed and searchable; three runs into fresh
//!    directories.
//! 3. Query latency for a user in 100 rooms: Korean and English words and phrases, both
//!    sorts, 20 hits with snippets, through `SearchIndex::search` as the API calls it.
//!
//! `BENCH_MESSAGES`, `BENCH_ROOMS`, `BENCH_RUNS`, `BENCH_QUERIES` override the sizes. Under
//! `cargo test` this is a small smoke run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventlog::sqlite::SqliteLog;
use eventlog::{EventLog, ExpectedVersion, NewEvent};
use projector::Progress;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use schema::{Event, MessageBody, MessageId, RoomId, UserId, streams};
use search::{IndexerSettings, SearchIndex, SearchRequest, Sort, UserQuery};
use tokio_util::sync::CancellationToken;

const KOREAN: &[&str] = &[
    "안녕하세요",
    "오늘",
    "내일",
    "회의",
    "회의실에서",
    "채팅방에서",
    "점심",
    "저녁은",
    "같이",
    "먹을래요",
    "서울에서",
    "부산",
    "만나요",
    "프로젝트",
    "배포는",
    "언제",
    "하나요",
    "확인했습니다",
    "감사합니다",
    "문서를",
    "공유해",
    "주세요",
    "코드",
    "리뷰",
    "부탁드립니다",
    "버그가",
    "있어요",
    "수정했어요",
    "서버가",
    "느려요",
    "데이터베이스",
    "검색",
    "기능이",
    "잘",
    "됩니다",
    "주말에",
    "뭐",
    "해요",
    "커피",
    "한잔",
    "할까요",
    "고객",
    "요청사항",
    "일정",
    "변경",
    "테스트",
    "통과했어요",
    "금요일까지",
    "완료",
    "예정입니다",
    "사진",
    "보내드릴게요",
    "ㅋㅋㅋ",
    "네",
    "좋아요",
    "알겠습니다",
    "지금",
    "가는",
    "중이에요",
    "퇴근",
];

const ENGLISH: &[&str] = &[
    "the",
    "a",
    "to",
    "is",
    "and",
    "we",
    "you",
    "it",
    "in",
    "on",
    "for",
    "meeting",
    "deploy",
    "release",
    "server",
    "database",
    "search",
    "index",
    "query",
    "latency",
    "review",
    "please",
    "thanks",
    "lunch",
    "coffee",
    "tomorrow",
    "today",
    "friday",
    "weekend",
    "bug",
    "fixed",
    "broken",
    "test",
    "passed",
    "failed",
    "build",
    "pipeline",
    "customer",
    "request",
    "schedule",
    "changed",
    "docs",
    "shared",
    "link",
    "photo",
    "call",
    "later",
    "now",
    "okay",
    "sounds",
    "good",
    "great",
    "sure",
    "rust",
    "tokio",
    "tantivy",
    "kubernetes",
    "cluster",
    "memory",
    "cpu",
    "alert",
    "incident",
    "postmortem",
    "roadmap",
    "quarter",
    "budget",
    "design",
    "mockup",
    "feedback",
    "merge",
    "branch",
    "rollback",
    "hotfix",
    "metrics",
];

/// A chat-like message: mostly short, sometimes long; Korean, English, or both.
fn message(rng: &mut StdRng) -> String {
    let words = match rng.gen_range(0..100) {
        0..=39 => rng.gen_range(1..=4),
        40..=79 => rng.gen_range(4..=10),
        80..=96 => rng.gen_range(10..=25),
        _ => rng.gen_range(25..=60),
    };
    let lang = rng.gen_range(0..10);
    let mut out = String::new();
    for i in 0..words {
        if i > 0 {
            out.push(' ');
        }
        let korean = match lang {
            0..=4 => true,
            5..=8 => false,
            _ => rng.gen_bool(0.5),
        };
        if korean {
            out.push_str(KOREAN[rng.gen_range(0..KOREAN.len())]);
        } else {
            out.push_str(ENGLISH[rng.gen_range(0..ENGLISH.len())]);
        }
    }
    if rng.gen_bool(0.2) {
        out.push(['?', '!', '.', '~'][rng.gen_range(0..4)]);
    }
    out
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes the corpus: `messages` sends spread over `rooms` rooms, appended in room chunks.
async fn write_corpus(log: &SqliteLog, rooms: &[RoomId], messages: usize) -> u64 {
    let mut rng = StdRng::seed_from_u64(7);
    let senders: Vec<UserId> = (0..10_000)
        .map(|i| UserId(uuid::Uuid::from_u128(i + 1)))
        .collect();
    let chunk = 500;
    let mut written = 0;
    let mut bytes = 0;
    while written < messages {
        let room = rooms[rng.gen_range(0..rooms.len())];
        let n = chunk.min(messages - written);
        let events: Vec<NewEvent> = (0..n)
            .map(|_| {
                let body = message(&mut rng);
                bytes += body.len();
                let e = Event::MessageSent {
                    message_id: MessageId::new(),
                    sender_id: senders[rng.gen_range(0..senders.len())],
                    body: MessageBody::parse(&body).unwrap(),
                    client_msg_id: None,
                    reply_to: None,
                    mentions: vec![],
                };
                NewEvent {
                    event_id: uuid::Uuid::now_v7(),
                    event_type: e.type_name().into(),
                    schema_version: 1,
                    data: e.encode(),
                    metadata: vec![],
                }
            })
            .collect();
        log.append(&streams::room(room), ExpectedVersion::Any, events)
            .await
            .unwrap();
        written += n;
    }
    println!(
        "corpus: {messages} messages in {} rooms, mean body {} bytes",
        rooms.len(),
        bytes / messages.max(1)
    );
    log.head().await.unwrap()
}

/// Indexes the whole log into a fresh directory; returns the seconds it took and the index.
async fn index_all(log: Arc<dyn EventLog>, dir: &std::path::Path, head: u64) -> (f64, SearchIndex) {
    let path = dir.to_path_buf();
    let index = tokio::task::spawn_blocking(move || SearchIndex::open(path))
        .await
        .unwrap()
        .unwrap();
    let (tx, progress) = Progress::new();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(search::run(
        log,
        index.clone(),
        tx.into(),
        stop.clone(),
        IndexerSettings::default(),
    ));
    progress
        .wait_for(head, Duration::from_secs(3600))
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    task.await.unwrap().unwrap();
    (secs, index)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

/// The query mix: (label, query text).
const QUERIES: &[(&str, &str)] = &[
    ("ko word", "회의"),
    ("ko word", "채팅"),
    ("ko word", "검색"),
    ("ko word", "배포"),
    ("ko inside word", "회의실"),
    ("ko 1 char", "잘"),
    ("ko phrase", "\"서울에서 만나요\""),
    ("ko phrase", "\"코드 리뷰\""),
    ("ko 2 words", "점심 같이"),
    ("en word", "deploy"),
    ("en word", "tantivy"),
    ("en common", "the"),
    ("en 2 words", "server latency"),
    ("en phrase", "\"code review\""),
    ("en phrase", "\"sounds good\""),
    ("mixed", "rust 서버가"),
    ("exclude", "meeting -friday"),
    ("rare", "postmortem 퇴근"),
];

fn query_latency(index: &SearchIndex, rooms: &[RoomId], queries: usize) {
    let mine: Vec<RoomId> = rooms.iter().take(100).copied().collect();
    let mut all = Vec::new();
    let mut by_sort = [Vec::new(), Vec::new()];
    let mut hits_total = 0u64;
    for i in 0..queries {
        let (_, q) = QUERIES[i % QUERIES.len()];
        let sort = if (i / QUERIES.len()).is_multiple_of(2) {
            Sort::Recent
        } else {
            Sort::Relevance
        };
        let req = SearchRequest {
            query: UserQuery::parse(q).unwrap(),
            rooms: mine.clone(),
            sender: None,
            from: None,
            to: None,
            sort,
            limit: 20,
            cursor: None,
        };
        let started = Instant::now();
        let page = index.search(&req).unwrap();
        let took = started.elapsed();
        hits_total += page.total;
        all.push(took);
        by_sort[usize::from(sort == Sort::Relevance)].push(took);
    }
    all.sort();
    for v in &mut by_sort {
        v.sort();
    }
    println!(
        "query latency, user in {} rooms, {queries} queries (mean {} matches/query): \
         p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        mine.len(),
        hits_total / queries.max(1) as u64,
        pct(&all, 0.5),
        pct(&all, 0.9),
        pct(&all, 0.99),
        pct(&all, 1.0)
    );
    for (name, v) in [("recent", &by_sort[0]), ("relevance", &by_sort[1])] {
        if !v.is_empty() {
            println!(
                "  {name:<9}: p50 {:.2} ms  p99 {:.2} ms",
                pct(v, 0.5),
                pct(v, 0.99)
            );
        }
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; under `cargo test` this is a small smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let (messages, rooms, runs, queries) = if full {
        (
            env("BENCH_MESSAGES", 1_000_000),
            env("BENCH_ROOMS", 1_000),
            env("BENCH_RUNS", 3),
            env("BENCH_QUERIES", 3_600),
        )
    } else {
        (3_000, 120, 1, 72)
    };
    let tmp = tempfile::tempdir().unwrap();
    let log = Arc::new(SqliteLog::open(tmp.path().join("events.db")).await.unwrap());
    let room_ids: Vec<RoomId> = (0..rooms)
        .map(|i| RoomId(uuid::Uuid::from_u128(0xA000_0000 + i as u128)))
        .collect();
    let started = Instant::now();
    let head = write_corpus(&log, &room_ids, messages).await;
    println!(
        "corpus written in {:.1} s (log head {head})",
        started.elapsed().as_secs_f64()
    );

    let mut rates = Vec::new();
    let mut last = None;
    for run in 0..runs {
        let dir = tmp.path().join(format!("search-{run}"));
        let (secs, index) = index_all(log.clone(), &dir, head).await;
        let rate = messages as f64 / secs;
        println!(
            "run {}: indexed {messages} messages in {secs:.1} s: {rate:.0} messages/s ({} docs)",
            run + 1,
            index.num_docs()
        );
        assert_eq!(index.num_docs(), messages as u64);
        rates.push(rate);
        if let Some(previous) = last.replace(index) {
            drop(previous);
        }
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "indexing: median {:.0} messages/s (min {:.0}, max {:.0}) over {runs} runs",
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1]
    );
    let index = last.unwrap();
    let size: u64 = std::fs::read_dir(index.dir())
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!("index size: {:.0} MiB", size as f64 / (1 << 20) as f64);
    // Warm up (first touches of the mmapped files), then measure.
    query_latency(&index, &room_ids, QUERIES.len().min(queries));
    query_latency(&index, &room_ids, queries);
    log.close().await;
}
