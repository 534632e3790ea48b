use chrono::{DateTime, Utc};
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};
use schema::{RoomId, UserId};
use uuid::Uuid;

use super::{ApiError, BearerAuth, Tag};
use crate::chat::{Code, Search, SearchParams};

const DEFAULT_LIMIT: u64 = 20;
const MAX_LIMIT: u64 = 100;

#[derive(Debug)]
pub struct Api {
    pub search: Search,
}

/// How hits are ordered. Either way ties break by the order messages were stored, so the
/// order is total and cursors never repeat or skip a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum SearchSort {
    /// Newest first (the default).
    Recent,
    /// Best match first (BM25).
    Relevance,
}

/// One matching message.
#[derive(Debug, Object)]
pub struct SearchHit {
    pub room_id: Uuid,
    pub message_id: Uuid,
    /// The message's seq in its room (of its `message_sent`, also after edits).
    pub seq: u64,
    pub sender_id: Uuid,
    pub sent_at: DateTime<Utc>,
    /// A fragment of the message's current text around the best match: HTML-escaped, with
    /// each match wrapped in `<mark>…</mark>` and `…` where the text was cut. Safe to insert
    /// as HTML.
    pub snippet: String,
    /// Relevance score (BM25); higher is better. Comparable within one search only.
    pub score: f32,
}

#[derive(Debug, Object)]
pub struct SearchResults {
    pub hits: Vec<SearchHit>,
    /// How many messages match in all (every page together), counting only rooms you are in.
    pub total: u64,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[OpenApi(tag = "Tag::Search")]
impl Api {
    /// Search the messages of your rooms.
    ///
    /// Only rooms you are a member of right now are searched (leaving a room removes its
    /// messages from your results). Korean, Japanese and Chinese text is found by any part
    /// of a word: `채팅` finds `채팅방에서`, and a single character finds every message
    /// containing it.
    ///
    /// Query syntax (`q`, up to 256 characters): words are AND-ed; `"a phrase"` matches
    /// words next to each other; `-word` or `-"a phrase"` excludes. Everything else is
    /// plain text: there are no operators, fields or wildcards, and punctuation only
    /// separates words. Matching ignores case and width (`ＡＢＣ` = `abc`), not accents.
    ///
    /// Messages become searchable within about a second of being sent; edits and deletes
    /// likewise.
    ///
    /// Errors: 400 `invalid_query` (missing, empty, too long, or nothing searchable such as
    /// only punctuation or only `-exclusions`), 400 `invalid_cursor` (not from a previous
    /// page of the same query and sort), 400 `invalid_parameter` (bad `limit`, `sort`, ids,
    /// times, or `from` after `to`), 404 `room_not_found` for a `room_id` you are not
    /// in (whether or not it exists).
    #[oai(path = "/search", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn search(
        &self,
        auth: BearerAuth,
        /// What to look for.
        q: Query<Option<String>>,
        /// Only this room (you must be a member).
        room_id: Query<Option<Uuid>>,
        /// Only messages sent by this user.
        sender_id: Query<Option<Uuid>>,
        /// Only messages sent at or after this time (RFC 3339).
        from: Query<Option<DateTime<Utc>>>,
        /// Only messages sent before this time (RFC 3339).
        to: Query<Option<DateTime<Utc>>>,
        /// `recent` (default) or `relevance`.
        sort: Query<Option<SearchSort>>,
        /// Page size, 1–100 (default 20).
        limit: Query<Option<u64>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> Result<Json<SearchResults>, ApiError> {
        let limit = limit.0.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::invalid_parameter(format!(
                "limit must be 1–{MAX_LIMIT}"
            )));
        }
        if let (Some(from), Some(to)) = (from.0, to.0)
            && from > to
        {
            return Err(ApiError::invalid_parameter("from must not be after to"));
        }
        let Some(q) = q.0 else {
            return Err(ApiError::new(Code::InvalidQuery, "q is required"));
        };
        let params = SearchParams {
            q,
            room: room_id.0.map(RoomId),
            sender: sender_id.0.map(UserId),
            from: from.0,
            to: to.0,
            sort: match sort.0.unwrap_or(SearchSort::Recent) {
                SearchSort::Recent => search::Sort::Recent,
                SearchSort::Relevance => search::Sort::Relevance,
            },
            limit: limit as usize,
            cursor: cursor.0,
        };
        let page = self.search.search(auth.0.0, params).await?;
        Ok(Json(SearchResults {
            hits: page
                .hits
                .into_iter()
                .map(|h| SearchHit {
                    room_id: h.room_id.0,
                    message_id: h.message_id.0,
                    seq: h.seq,
                    sender_id: h.sender_id.0,
                    sent_at: h.sent_at,
                    snippet: h.snippet,
                    score: h.score,
                })
                .collect(),
            total: page.total,
            next_cursor: page.next_cursor,
        }))
    }
}
