//! The index on disk: its schema, its version, its checkpoint, and the shared reader.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tantivy::schema::{
    BytesOptions, FAST, Field, INDEXED, IndexRecordOption, STORED, Schema, TextFieldIndexing,
    TextOptions,
};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{Index, IndexReader, ReloadPolicy, Searcher};

use crate::Result;
use crate::analyzer::{ChatTokenizer, Mode, TOKENIZER};

/// Bump when the schema, the analysis or the meaning of a document changes: an index written
/// with another version is deleted and rebuilt from the log on open.
pub const INDEX_VERSION: u32 = 1;

/// The fields of a message document.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    /// UUID bytes; the key edits and deletes address.
    pub message_id: Field,
    /// UUID bytes; the membership filter.
    pub room_id: Field,
    /// UUID bytes.
    pub sender_id: Field,
    /// The message's seq in its room (of its `message_sent`).
    pub seq: Field,
    /// When it was sent, µs since the epoch (fast: sorting and time ranges).
    pub sent_at: Field,
    /// Global log position of its `message_sent`: unique, the tiebreak of every sort.
    pub position: Field,
    /// The current text.
    pub body: Field,
}

pub(crate) const SENT_AT: &str = "sent_at";
pub(crate) const POSITION: &str = "position";

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let id = || BytesOptions::default().set_indexed().set_stored();
    let message_id = b.add_bytes_field("message_id", id());
    let room_id = b.add_bytes_field("room_id", id());
    let sender_id = b.add_bytes_field("sender_id", id());
    let seq = b.add_u64_field("seq", STORED);
    let sent_at = b.add_i64_field(SENT_AT, INDEXED | FAST | STORED);
    let position = b.add_u64_field(POSITION, FAST | STORED);
    let body = b.add_text_field(
        "body",
        TextOptions::default().set_stored().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(TOKENIZER)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        ),
    );
    let fields = Fields {
        message_id,
        room_id,
        sender_id,
        seq,
        sent_at,
        position,
        body,
    };
    (b.build(), fields)
}

/// What every commit carries: the index format and the log position it reflects.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Payload {
    pub version: u32,
    pub position: u64,
}

impl Payload {
    pub fn encode(&self) -> String {
        // Two integers: cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The search index: a Tantivy index in its own directory, and a reader shared by queries.
/// Cheap to clone. The indexer ([`crate::run`]) is its only writer.
#[derive(Clone)]
pub struct SearchIndex {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub dir: PathBuf,
    pub index: Index,
    pub reader: IndexReader,
    pub fields: Fields,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl SearchIndex {
    /// Opens the index in `dir`, creating it when missing and recreating it (empty, to be
    /// rebuilt from the log) when it was written by another [`INDEX_VERSION`] or cannot be
    /// opened. Blocking.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if dir.join("meta.json").exists() {
            match Self::open_existing(&dir) {
                Ok(Some(index)) => return Ok(index),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e,
                        "cannot open the search index; rebuilding it from the log");
                }
            }
            Self::delete(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let (schema, fields) = schema();
        let index = Index::create_in_dir(&dir, schema)?;
        tracing::info!(dir = %dir.display(), "created search index; it will be built from the log");
        Self::with_index(dir, index, fields)
    }

    /// Opens `dir` unless it holds another version (`None`).
    fn open_existing(dir: &Path) -> Result<Option<Self>> {
        let index = Index::open_in_dir(dir)?;
        let (schema, fields) = schema();
        let metas = index.load_metas()?;
        let found = metas
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_str::<Payload>(p).ok())
            .map(|p| p.version);
        // Documents without a readable checkpoint cannot be trusted: replaying from 0 would
        // add them twice.
        let usable = match found {
            Some(version) => version == INDEX_VERSION,
            None => metas.segments.is_empty(),
        };
        if !usable || index.schema() != schema {
            tracing::warn!(dir = %dir.display(), ?found, want = INDEX_VERSION,
                "search index has another version; rebuilding it from the log");
            return Ok(None);
        }
        Self::with_index(dir.to_path_buf(), index, fields).map(Some)
    }

    fn with_index(dir: PathBuf, index: Index, fields: Fields) -> Result<Self> {
        index.tokenizers().register(
            TOKENIZER,
            TextAnalyzer::from(ChatTokenizer::new(Mode::Index)),
        );
        // Reloaded by the indexer right after each commit, so a published position is
        // always searchable.
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir,
                index,
                reader,
                fields,
            }),
        })
    }

    /// Opens the index for a log whose last position is `head`. An index that claims to have
    /// seen more than the log holds belongs to another (or a restored older) log: it is
    /// rebuilt rather than left to skip new events. Blocking.
    pub fn open_for_log(dir: impl AsRef<Path>, head: u64) -> Result<Self> {
        let dir = dir.as_ref();
        let index = Self::open(dir)?;
        let checkpoint = index.checkpoint()?;
        if checkpoint <= head {
            return Ok(index);
        }
        tracing::warn!(
            checkpoint,
            head,
            "search index is ahead of the event log; rebuilding it"
        );
        drop(index);
        Self::delete(dir)?;
        Self::open(dir)
    }

    /// Removes the index directory, so the next open rebuilds it from the log.
    pub fn delete(dir: &Path) -> Result<()> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The log position of the last commit (0 when nothing was committed). Blocking (reads
    /// `meta.json`).
    pub fn checkpoint(&self) -> Result<u64> {
        Ok(payload(&self.inner.index)?.map_or(0, |p| p.position))
    }

    /// Number of messages in the searchable index.
    pub fn num_docs(&self) -> u64 {
        self.searcher().num_docs()
    }

    pub(crate) fn searcher(&self) -> Searcher {
        self.inner.reader.searcher()
    }
}

fn payload(index: &Index) -> Result<Option<Payload>> {
    let metas = index.load_metas()?;
    Ok(metas
        .payload
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok()))
}
