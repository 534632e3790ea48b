//! Security events: one structured log line per authentication failure, in ECS terms
//! (`event.category: authentication`, `event.outcome: failure`, `event.action`,
//! `event.reason`), so a SIEM or a Kibana search finds them without parsing messages; and a
//! count of failed logins for the alert rule in [`crate::ops::monitor`].
//!
//! Failures are recorded where they become refusals with a code (`chat::error`), the one
//! place every refusal passes through.

use std::sync::atomic::{AtomicU64, Ordering};

/// Failed logins since the process started (every node counts its own).
static FAILED_LOGINS: AtomicU64 = AtomicU64::new(0);

/// An authentication failure worth a security event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// A login with a wrong username or password.
    InvalidCredentials,
    /// A refresh token that was already rotated was presented again: it may have been
    /// stolen, and its whole session is revoked.
    RefreshTokenReused,
    /// A login refused because of earlier failures for the account or from the address.
    LoginThrottled,
    /// A registration refused because of too many from the address.
    RegisterThrottled,
}

impl AuthFailure {
    fn action(self) -> &'static str {
        match self {
            Self::InvalidCredentials | Self::LoginThrottled => "login",
            Self::RefreshTokenReused => "token-refresh",
            Self::RegisterThrottled => "register",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Self::InvalidCredentials => "invalid_credentials",
            Self::RefreshTokenReused => "refresh_token_reused",
            Self::LoginThrottled | Self::RegisterThrottled => "throttled",
        }
    }
}

/// Logs the security event for `failure` and counts it.
pub fn auth_failure(failure: AuthFailure) {
    if failure == AuthFailure::InvalidCredentials {
        FAILED_LOGINS.fetch_add(1, Ordering::Relaxed);
    }
    event(failure, None);
}

/// Logs the security event for a request from `source` refused by a limit.
pub fn throttled(failure: AuthFailure, source: std::net::IpAddr) {
    event(failure, Some(source));
}

fn event(failure: AuthFailure, source: Option<std::net::IpAddr>) {
    tracing::warn!(
        event.kind = "event",
        event.category = "authentication",
        "event.type" = "denied",
        event.outcome = "failure",
        event.action = failure.action(),
        event.reason = failure.reason(),
        source.ip = source.map(tracing::field::display),
        "authentication failed: {}",
        failure.reason()
    );
}

/// Failed logins in this process so far.
pub fn failed_logins() -> u64 {
    FAILED_LOGINS.load(Ordering::Relaxed)
}
