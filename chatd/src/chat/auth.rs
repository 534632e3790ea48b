//! Credentials: argon2id password hashes, short-lived JWT access tokens, and opaque refresh
//! tokens whose rotation state lives in the event log (see `schema::session`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use schema::events::Event;
use schema::{SessionId, UserId, streams};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::error::ChatError;
use crate::limits::{Limit, Limited};

/// The authenticated caller, the session their token belongs to, and when the token expires
/// (Unix seconds): what a transport hands the layers below once a token checks out.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub UserId, pub SessionId, pub i64);

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: Uuid,
    /// The session (refresh-token family) it was issued under.
    pub sid: Uuid,
    pub iat: i64,
    pub exp: i64,
}

/// Why an access token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Malformed, forged (wrong key, another algorithm, `alg: none`), expired, or issued for
    /// longer than this server's access-token lifetime.
    Invalid,
    /// Its session has ended (logout, refresh-token reuse, or any other session-ending event).
    SessionEnded,
}

/// The sessions that have ended, whatever the reason: their access tokens are refused. Every
/// node builds it from the log (a `session_ended` event in `session-<id>`: the read models'
/// `ended_sessions` at start, then the events the hub consumes; see `live::hub`), so all
/// nodes agree. A session is kept for an access-token lifetime after it ended, after which
/// every token it had has expired anyway.
#[derive(Debug, Clone, Default)]
pub struct Revoked {
    ended: Arc<RwLock<Ended>>,
}

#[derive(Debug, Default)]
struct Ended {
    at: HashMap<SessionId, i64>,
    /// Prune when the set reaches this size.
    prune_at: usize,
}

impl Revoked {
    /// Records that `session` ended at `at` (idempotent). `keep`: how long to remember it.
    pub fn end(&self, session: SessionId, at: DateTime<Utc>, keep: Duration) {
        // A poisoned lock only means a panic elsewhere mid-insert; the map is still valid.
        let mut ended = self.ended.write().unwrap_or_else(|p| p.into_inner());
        ended.at.insert(session, at.timestamp());
        if ended.at.len() >= ended.prune_at {
            let horizon = Utc::now().timestamp() - keep.as_secs() as i64 - LEEWAY_SECS as i64;
            ended.at.retain(|_, t| *t >= horizon);
            ended.prune_at = (2 * ended.at.len()).max(1024);
        }
    }

    pub fn contains(&self, session: SessionId) -> bool {
        let ended = self.ended.read().unwrap_or_else(|p| p.into_inner());
        ended.at.contains_key(&session)
    }

    /// The session an event of `stream` ends, if it does.
    pub fn ended_by(stream: &str, event: &Event) -> Option<SessionId> {
        match event {
            Event::SessionEnded { .. } => streams::session_of(stream),
            _ => None,
        }
    }
}

/// Clock skew allowed on `exp`, in seconds.
const LEEWAY_SECS: u64 = 5;

#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    access_ttl: Duration,
    refresh_ttl: chrono::Duration,
    /// Password hashing is CPU-bound and deliberately slow: at most this many at once, so a
    /// burst of logins cannot starve the blocking pool or the machine.
    hashing: Arc<Semaphore>,
    /// How long a hash waits for a permit before it is refused as overloaded.
    hash_wait: Duration,
    /// Verified against when the user does not exist, so a login takes as long either way.
    dummy_hash: Arc<String>,
    /// Cost of new hashes (verification uses the cost stored in each hash).
    params: argon2::Params,
    revoked: Revoked,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("access_ttl", &self.access_ttl)
            .finish_non_exhaustive()
    }
}

/// The generated JWT secret's file in the data dir.
pub const SECRET_FILE: &str = "jwt_secret";

/// Reads the JWT secret: the configured one, else `<data_dir>/jwt_secret`, generated on first
/// start with 0600 permissions.
pub fn load_or_create_secret(data_dir: &Path, configured: Option<&str>) -> anyhow::Result<Vec<u8>> {
    if let Some(s) = configured {
        anyhow::ensure!(
            s.len() >= 32,
            "CHAT_JWT_SECRET must be at least 32 characters"
        );
        return Ok(s.as_bytes().to_vec());
    }
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => return Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => anyhow::bail!(
            "{} is too short; delete it to generate a new one",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let mut bytes = [0u8; 48];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret = URL_SAFE_NO_PAD.encode(bytes);
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(secret.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    tracing::info!(path = %path.display(), "generated a new JWT secret");
    Ok(secret.into_bytes())
}

fn hasher(params: &argon2::Params) -> Argon2<'static> {
    Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params.clone(),
    )
}

impl Auth {
    /// `hash_cost` is argon2id's (memory KiB, iterations) for new password hashes.
    pub fn new(
        secret: &[u8],
        access_ttl: Duration,
        refresh_ttl_days: u64,
        hash_cost: (u32, u32),
    ) -> anyhow::Result<Self> {
        let params = argon2::Params::new(hash_cost.0, hash_cost.1, 1, None)
            .map_err(|e| anyhow::anyhow!("invalid argon2 cost: {e}"))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let dummy = hasher(&params)
            .hash_password(
                b"not a real password",
                &SaltString::generate(&mut rand::thread_rng()),
            )
            .map(|h| h.to_string())
            .unwrap_or_default();
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            access_ttl,
            refresh_ttl: chrono::Duration::days(refresh_ttl_days as i64),
            hashing: Arc::new(Semaphore::new(num_cpus())),
            hash_wait: Duration::from_secs(2),
            dummy_hash: Arc::new(dummy),
            params,
            revoked: Revoked::default(),
        })
    }

    /// At most `concurrency` password hashes at once (default: one per CPU); a hash waits
    /// at most `wait` for its turn.
    pub fn with_hashing(mut self, concurrency: Option<usize>, wait: Duration) -> Self {
        self.hashing = Arc::new(Semaphore::new(concurrency.unwrap_or_else(num_cpus)));
        self.hash_wait = wait;
        self
    }

    /// A turn at hashing, waiting boundedly: a saturated server says so (503) instead of
    /// queueing without end.
    async fn hashing_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Limited> {
        let busy = Limited::new(Limit::Overloaded, Duration::from_secs(1));
        match tokio::time::timeout(self.hash_wait, self.hashing.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) | Err(_) => Err(busy),
        }
    }

    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    pub fn refresh_expiry(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> chrono::DateTime<chrono::Utc> {
        now + self.refresh_ttl
    }

    pub fn issue_access(&self, user: UserId, session: SessionId) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user.0,
            sid: session.0,
            iat: now,
            exp: now + self.access_ttl.as_secs() as i64,
        };
        // HS256 over a plain struct cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("jwt encodes")
    }

    /// The claims of a valid, unexpired access token of a session that has not ended.
    pub fn verify_access(&self, token: &str) -> Result<Claims, TokenRefusal> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| TokenRefusal::Invalid)?
            .claims;
        // Tokens never live longer than the lifetime set now, so an ended session is
        // remembered only that long (a token from a run with a longer lifetime is refused).
        if claims.exp - claims.iat > self.access_ttl.as_secs() as i64 {
            return Err(TokenRefusal::Invalid);
        }
        if self.revoked.contains(SessionId(claims.sid)) {
            return Err(TokenRefusal::SessionEnded);
        }
        Ok(claims)
    }

    /// The set of ended sessions.
    pub fn revoked(&self) -> &Revoked {
        &self.revoked
    }

    /// Records the sessions `events` of `stream` end (as soon as they are durable, so this
    /// node refuses their tokens before the hub sees the events).
    pub fn observe(&self, stream: &str, events: &[Event]) {
        for event in events {
            if let Some(session) = Revoked::ended_by(stream, event) {
                self.end_session(session, Utc::now());
            }
        }
    }

    /// Records that `session` ended at `at`.
    pub fn end_session(&self, session: SessionId, at: DateTime<Utc>) {
        self.revoked.end(session, at, self.access_ttl);
    }

    pub async fn hash_password(&self, password: schema::Password) -> Result<String, ChatError> {
        let _permit = self.hashing_permit().await?;
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut rand::thread_rng());
            hasher(&params)
                .hash_password(password.expose().as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| ChatError::Internal(format!("hashing failed: {e}")))
        })
        .await
        .map_err(|e| ChatError::Internal(e.to_string()))?
    }

    /// Checks a password against a stored hash; with no hash (unknown user) it still does the
    /// work and returns false.
    pub async fn verify_password(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, Limited> {
        let _permit = self.hashing_permit().await?;
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        Ok(tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
            && known)
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// A new refresh token for a session: the session id (so the server can find the family)
/// and 256 random bits, base64url.
pub fn new_refresh_token(session: SessionId) -> String {
    let mut bytes = [0u8; 48];
    bytes[..16].copy_from_slice(session.0.as_bytes());
    rand::thread_rng().fill_bytes(&mut bytes[16..]);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The session a refresh token claims to belong to.
pub fn refresh_token_session(token: &str) -> Option<SessionId> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    if bytes.len() != 48 {
        return None;
    }
    Uuid::from_slice(&bytes[..16]).ok().map(SessionId)
}

/// What the log stores instead of the token.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_token_carries_its_session() {
        let s = SessionId::new();
        let t = new_refresh_token(s);
        assert_eq!(refresh_token_session(&t), Some(s));
        assert_ne!(new_refresh_token(s), t);
        assert_eq!(refresh_token_session("garbage"), None);
    }

    #[test]
    fn access_tokens_verify_only_with_the_same_secret() {
        let a = Auth::new(&[1; 32], Duration::from_secs(60), 30, (1024, 1)).unwrap();
        let b = Auth::new(&[2; 32], Duration::from_secs(60), 30, (1024, 1)).unwrap();
        let (u, s) = (UserId::new(), SessionId::new());
        let t = a.issue_access(u, s);
        assert_eq!(a.verify_access(&t).map(|c| c.sub), Ok(u.0));
        assert_eq!(b.verify_access(&t).err(), Some(TokenRefusal::Invalid));
        assert_eq!(
            a.verify_access("not.a.jwt").err(),
            Some(TokenRefusal::Invalid)
        );
    }

    #[test]
    fn tokens_of_an_ended_session_are_refused_and_others_are_not() {
        let a = Auth::new(&[1; 32], Duration::from_secs(60), 30, (1024, 1)).unwrap();
        let (u, s, other) = (UserId::new(), SessionId::new(), SessionId::new());
        let (t, kept) = (a.issue_access(u, s), a.issue_access(u, other));
        a.observe(
            &streams::session(s),
            &[Event::SessionEnded {
                reason: schema::events::SessionEndReason::Logout,
            }],
        );
        assert_eq!(a.verify_access(&t).err(), Some(TokenRefusal::SessionEnded));
        assert!(a.verify_access(&kept).is_ok());
        // Long-ended sessions are forgotten once the set has to be pruned: their tokens have
        // expired by then.
        let old = Utc::now() - chrono::Duration::hours(1);
        for _ in 0..2048 {
            a.end_session(SessionId::new(), old);
        }
        assert!(a.revoked().contains(s), "recent: kept");
        assert!(a.revoked().ended.read().unwrap().at.len() < 1024);
    }
}
