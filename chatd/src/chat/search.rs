//! The search use case: who may search what, on top of the `search` crate's index.
//!
//! The caller's current rooms come from the read models at the moment of the query and go
//! into the query itself (a room-id term set), so a page is never filtered after the fact:
//! pages are full and totals count only what the caller may see. Leaving a room takes its
//! messages out of the caller's results at once.

use std::sync::Arc;

use ::search::{SearchIndex, SearchPage, SearchRequest, Sort, UserQuery};
use chrono::{DateTime, Utc};
use projector::Progress;
use schema::{DomainError, RoomId, UserId};

use super::Chat;
use super::error::{ChatError, Result};

/// What a client asked for, parsed.
#[derive(Debug, Clone)]
pub struct SearchParams {
    pub q: String,
    pub room: Option<RoomId>,
    pub sender: Option<UserId>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub sort: Sort,
    pub limit: usize,
    pub cursor: Option<String>,
}

/// Member-only search over the index, with how far the index is.
#[derive(Debug, Clone)]
pub struct Search {
    chat: Arc<Chat>,
    index: SearchIndex,
    progress: Progress,
}

impl Search {
    pub fn new(chat: Arc<Chat>, index: SearchIndex, progress: Progress) -> Self {
        Self {
            chat,
            index,
            progress,
        }
    }

    /// The log position up to which every message change is searchable.
    pub fn indexed(&self) -> u64 {
        self.progress.position()
    }

    pub async fn search(&self, actor: UserId, params: SearchParams) -> Result<SearchPage> {
        let query = UserQuery::parse(&params.q)?;
        let (_, mut rooms) = self.chat.rooms_at_checkpoint(actor).await?;
        if let Some(room) = params.room {
            if !rooms.contains(&room) {
                return Err(DomainError::NotAMember.into()); // 404, as for no room at all
            }
            rooms = vec![room];
        }
        let request = SearchRequest {
            query,
            rooms,
            sender: params.sender,
            from: params.from,
            to: params.to,
            sort: params.sort,
            limit: params.limit,
            cursor: params.cursor,
        };
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.search(&request))
            .await
            .map_err(|e| ChatError::Internal(format!("search task: {e}")))?
            .map_err(Into::into)
    }
}
