//! Operating the server: what it measures ([`metrics`], `/metrics`), the metered event log
//! ([`metered_log`]), the once-a-second [`monitor`] with its alert rules, and [`health`]
//! (`/healthz`, `/readyz`). Used by the layers above; uses none of them.

pub mod health;
pub mod metered_log;
pub mod metrics;
pub mod monitor;
