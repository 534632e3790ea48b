//! Running a query: the membership filter inside the query, sorting with a unique tiebreak,
//! cursors with search-after semantics, and highlighted snippets.
//!
//! **Sorts.** `recent`: sent time, newest first. `relevance`: BM25 score, best first. Both
//! break ties by the log position of the message's `message_sent`, which is unique, so the
//! order is total and a cursor (the last hit's sort key) splits the results exactly: no hit
//! twice, none skipped.
//!
//! **Stable relevance pages.** A BM25 score depends on index-wide statistics (how many
//! messages, how many contain each term), which move as messages arrive. The first page
//! freezes the statistics of its terms into the cursor and every later page scores with
//! them, so a message keeps its score across pages and the cursor stays exact while new
//! messages are indexed. (Newly indexed messages are scored with the frozen statistics too
//! and appear on a later page if they sort after the cursor.)

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeZone, Utc};
use schema::{MessageId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{
    Bm25StatisticsProvider, BooleanQuery, ConstScoreQuery, Occur, Query, RangeQuery, TermQuery,
    TermSetQuery,
};
use tantivy::schema::{Field, IndexRecordOption, Value};
use tantivy::snippet::SnippetGenerator;
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{DocId, Score, SegmentReader, TantivyDocument, Term};

use crate::analyzer::{ChatTokenizer, Mode};
use crate::index::{POSITION, SENT_AT, SearchIndex};
use crate::query::{UserQuery, clause_query};
use crate::{Error, Result};

/// Longest snippet, in bytes of the message text (about 60 Hangul syllables or 180 Latin
/// letters).
const SNIPPET_BYTES: usize = 180;

/// How hits are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// Best match first (BM25).
    Relevance,
    /// Newest first.
    #[default]
    Recent,
}

/// A query with its filters, as the API hands it over. The rooms are the membership filter:
/// only messages of these rooms can match.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: UserQuery,
    /// The rooms to search (the caller's, or the one asked for). Empty finds nothing.
    pub rooms: Vec<RoomId>,
    pub sender: Option<UserId>,
    /// Sent at or after.
    pub from: Option<DateTime<Utc>>,
    /// Sent before.
    pub to: Option<DateTime<Utc>>,
    pub sort: Sort,
    pub limit: usize,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// One matching message.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub room_id: RoomId,
    pub message_id: MessageId,
    pub seq: u64,
    pub sender_id: UserId,
    pub sent_at: DateTime<Utc>,
    /// A fragment of the current text around the best match, HTML-escaped, matches wrapped
    /// in `<mark>…</mark>`, `…` where text was cut.
    pub snippet: String,
    /// BM25 score (with `relevance`; with `recent` still the query's score).
    pub score: f32,
}

/// A page of hits.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    pub hits: Vec<Hit>,
    /// Every message of the searched rooms that matches (all pages together).
    pub total: u64,
    /// Pass back for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Frozen BM25 statistics of the first page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stats {
    /// Documents in the index.
    n: u64,
    /// Body tokens in the index.
    t: u64,
    /// Document frequency of each of the query's positive terms, in their sorted order.
    df: Vec<u64>,
}

/// What a cursor carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cursor {
    /// Fingerprint of the query, filters and sort it belongs to.
    q: u64,
    /// Sort key of the last hit: score bits (relevance) or sent time (recent) …
    k: i64,
    /// … and its position.
    p: u64,
    s: Stats,
}

impl Cursor {
    fn encode(&self) -> String {
        // Plain data: serialising cannot fail.
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    fn decode(text: &str) -> Result<Self> {
        if text.len() > 4096 {
            return Err(Error::InvalidCursor("too long"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| Error::InvalidCursor("not base64url"))?;
        serde_json::from_slice(&bytes).map_err(|_| Error::InvalidCursor("malformed"))
    }
}

/// FNV-1a: a stable fingerprint (not a secret: the cursor only positions the caller's own
/// results, and membership is enforced on every page regardless).
fn fingerprint(req: &SearchRequest) -> u64 {
    let text = format!(
        "{}|{:?}|{:?}|{:?}|{:?}",
        req.query.canonical(),
        req.sender,
        req.from.map(|t| t.timestamp_micros()),
        req.to.map(|t| t.timestamp_micros()),
        req.sort,
    );
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// BM25 statistics with the query's terms frozen; anything else is asked of the searcher.
struct FrozenStats<'a> {
    live: &'a tantivy::Searcher,
    body: Field,
    stats: &'a Stats,
    df: HashMap<Term, u64>,
}

impl Bm25StatisticsProvider for FrozenStats<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        if field == self.body {
            Ok(self.stats.t)
        } else {
            self.live.total_num_tokens(field)
        }
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.stats.n)
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        match self.df.get(term) {
            Some(df) => Ok(*df),
            // Terms not frozen (exclusions, filters) do not affect the order, but BM25 asserts
            // that no term is in more documents than the (frozen) total.
            None => Ok(self.live.doc_freq(term)?.min(self.stats.n)),
        }
    }
}

fn filter(query: Box<dyn Query>) -> (Occur, Box<dyn Query>) {
    (Occur::Must, Box::new(ConstScoreQuery::new(query, 0.0)))
}

fn uuid_term(field: Field, id: uuid::Uuid) -> Term {
    Term::from_field_bytes(field, id.as_bytes())
}

/// A hit's place in the order, bigger first: (sent time or score bits, position, score bits).
/// `None` marks a document at or before the cursor, which is left out.
type Key = Option<(i64, u64, u32)>;

impl SearchIndex {
    /// Runs a search. Blocking (call it from a blocking thread).
    pub fn search(&self, req: &SearchRequest) -> Result<SearchPage> {
        let fingerprint = fingerprint(req);
        let cursor = req.cursor.as_deref().map(Cursor::decode).transpose()?;
        let terms = req.query.positive_terms();
        if let Some(c) = &cursor {
            let s = &c.s;
            if c.q != fingerprint {
                return Err(Error::InvalidCursor("it belongs to another query or sort"));
            }
            if s.df.len() != terms.len() || s.n == 0 || s.df.iter().any(|df| *df > s.n) {
                return Err(Error::InvalidCursor("malformed"));
            }
        }
        let f = self.inner.fields;
        let searcher = self.searcher();
        let stats = match &cursor {
            Some(c) => c.s.clone(),
            None => Stats {
                n: searcher.total_num_docs()?.max(1),
                t: searcher.total_num_tokens(f.body)?,
                df: terms
                    .iter()
                    .map(|t| searcher.doc_freq(&Term::from_field_text(f.body, t)))
                    .collect::<tantivy::Result<_>>()?,
            },
        };
        let empty = SearchPage {
            hits: Vec::new(),
            total: 0,
            next_cursor: None,
        };
        if req.rooms.is_empty() || req.limit == 0 {
            return Ok(empty);
        }

        let mut clauses: Vec<(Occur, Box<dyn Query>)> = req
            .query
            .clauses()
            .iter()
            .map(|c| {
                let occur = if c.exclude {
                    Occur::MustNot
                } else {
                    Occur::Must
                };
                (occur, clause_query(f.body, c))
            })
            .collect();
        clauses.push(filter(Box::new(TermSetQuery::new(
            req.rooms.iter().map(|r| uuid_term(f.room_id, r.0)),
        ))));
        if let Some(sender) = req.sender {
            clauses.push(filter(Box::new(TermQuery::new(
                uuid_term(f.sender_id, sender.0),
                IndexRecordOption::Basic,
            ))));
        }
        if req.from.is_some() || req.to.is_some() {
            let bound = |t: Option<DateTime<Utc>>, inclusive: bool| match t {
                None => Bound::Unbounded,
                Some(t) => {
                    let term = Term::from_field_i64(f.sent_at, t.timestamp_micros());
                    if inclusive {
                        Bound::Included(term)
                    } else {
                        Bound::Excluded(term)
                    }
                }
            };
            if req.from.zip(req.to).is_some_and(|(a, b)| a >= b) {
                return Ok(empty);
            }
            clauses.push(filter(Box::new(RangeQuery::new(
                bound(req.from, true),
                bound(req.to, false),
            ))));
        }
        let query = BooleanQuery::new(clauses);

        let after = cursor.as_ref().map(|c| (c.k, c.p));
        let sort = req.sort;
        let top = TopDocs::with_limit(req.limit + 1).tweak_score(move |segment: &SegmentReader| {
            let columns = segment.fast_fields();
            let sent = columns.i64(SENT_AT).ok().map(|c| c.first_or_default_col(0));
            let position = columns
                .u64(POSITION)
                .ok()
                .map(|c| c.first_or_default_col(0));
            move |doc: DocId, score: Score| -> Key {
                let position = position.as_ref()?.get_val(doc);
                let primary = match sort {
                    Sort::Recent => sent.as_ref()?.get_val(doc),
                    // BM25 scores are never negative, and the bits of non-negative floats
                    // order like the floats.
                    Sort::Relevance => i64::from(score.max(0.0).to_bits()),
                };
                if after.is_some_and(|after| (primary, position) >= after) {
                    return None;
                }
                Some((primary, position, score.to_bits()))
            }
        });
        let frozen = FrozenStats {
            live: &searcher,
            body: f.body,
            stats: &stats,
            df: terms
                .iter()
                .zip(&stats.df)
                .map(|(t, df)| (Term::from_field_text(f.body, t), *df))
                .collect(),
        };
        let (total, found) =
            searcher.search_with_statistics_provider(&query, &(Count, top), &frozen)?;
        // Documents at or before the cursor sort last; they only fill a page that has room.
        let mut found: Vec<((i64, u64, u32), tantivy::DocAddress)> = found
            .into_iter()
            .filter_map(|(key, address)| key.map(|k| (k, address)))
            .collect();
        let more = found.len() > req.limit;
        found.truncate(req.limit);

        let snippets = snippet_generator(f.body, &terms);
        let mut hits = Vec::with_capacity(found.len());
        for ((_, _, score), address) in &found {
            let doc: TantivyDocument = searcher.doc(*address)?;
            let uuid = |field| {
                doc.get_first(field)
                    .and_then(|v| v.as_bytes())
                    .and_then(|b| uuid::Uuid::from_slice(b).ok())
                    .ok_or_else(|| Error::Task("a stored id is missing".into()))
            };
            let number = |field| doc.get_first(field).and_then(|v| v.as_u64());
            let sent = doc.get_first(f.sent_at).and_then(|v| v.as_i64());
            let body = doc
                .get_first(f.body)
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            hits.push(Hit {
                room_id: RoomId(uuid(f.room_id)?),
                message_id: MessageId(uuid(f.message_id)?),
                seq: number(f.seq).unwrap_or_default(),
                sender_id: UserId(uuid(f.sender_id)?),
                sent_at: sent
                    .and_then(|us| Utc.timestamp_micros(us).single())
                    .unwrap_or_default(),
                snippet: snippet(&snippets, body),
                score: f32::from_bits(*score),
            });
        }
        let next_cursor = match (more, found.last()) {
            (true, Some(((primary, position, _), _))) => Some(
                Cursor {
                    q: fingerprint,
                    k: *primary,
                    p: *position,
                    s: stats,
                }
                .encode(),
            ),
            _ => None,
        };
        Ok(SearchPage {
            hits,
            total: total as u64,
            next_cursor,
        })
    }
}

/// Highlights the query's tokens wherever the index analysis finds them in the text (so a
/// one-character query highlights that character inside longer runs too).
fn snippet_generator(body: Field, terms: &[String]) -> SnippetGenerator {
    let terms: BTreeMap<String, Score> = terms.iter().map(|t| (t.clone(), 1.0)).collect();
    SnippetGenerator::new(
        terms,
        TextAnalyzer::from(ChatTokenizer::new(Mode::Index)),
        body,
        SNIPPET_BYTES,
    )
}

fn snippet(generator: &SnippetGenerator, body: &str) -> String {
    let mut snippet = generator.snippet(body);
    if snippet.is_empty() {
        // Matched without a highlightable token (cannot happen with one analyzer on both
        // sides, but a snippet is still due): the start of the text.
        let mut end = SNIPPET_BYTES.min(body.len());
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        let mut out = html_escape(&body[..end]);
        if end < body.len() {
            out.push('…');
        }
        return out;
    }
    snippet.set_snippet_prefix_postfix("<mark>", "</mark>");
    let range = snippet.fragment_range();
    let (head, tail) = (&body[..range.start], &body[range.end..]);
    let mut out = String::new();
    if only_punctuation(head) {
        out.push_str(&html_escape(head));
    } else {
        out.push('…');
    }
    out.push_str(&snippet.to_html());
    if only_punctuation(tail) {
        out.push_str(&html_escape(tail));
    } else {
        out.push('…');
    }
    out
}

/// Short text with no token in it: the fragment keeps it rather than an ellipsis (the
/// fragment starts and ends at tokens, which would cut off a closing `?` or `)`).
fn only_punctuation(text: &str) -> bool {
    text.len() <= 16 && crate::analyzer::analyze(text, Mode::Query).is_empty()
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}
