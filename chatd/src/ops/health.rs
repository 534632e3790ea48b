//! Health: `/healthz` says the process serves; `/readyz` says it can serve reads that reflect
//! the log ([`Readiness`]).

use std::sync::Arc;

use eventlog::EventLog;
use projector::Progress;

/// Whether the server can serve reads that reflect the log: the log answers and the
/// projections have caught up with what the log held at start.
#[derive(Debug, Clone)]
pub struct Readiness {
    pub log: Arc<dyn EventLog>,
    pub progress: Progress,
    pub head_at_start: u64,
    /// How far the search index is; reported, not required (a rebuilding index must not
    /// keep the rest of the API from serving).
    pub indexed: Progress,
}

impl Readiness {
    pub async fn check(&self) -> Result<serde_json::Value, String> {
        let head = self
            .log
            .head()
            .await
            .map_err(|e| format!("event log: {e}"))?;
        let applied = self.progress.position();
        if applied < self.head_at_start {
            return Err(format!(
                "projections catching up: {applied} of {}",
                self.head_at_start
            ));
        }
        Ok(serde_json::json!({
            "status": "ready",
            "log_head": head,
            "projected": applied,
            "indexed": self.indexed.position(),
        }))
    }
}
