//! Throttling and bounds, transport-free: a bounded LRU map (for every per-key table, so
//! none grows without limit), keyed token buckets (request, send, registration, invite and
//! resume rates), exponential backoff after failed logins, and per-user live-connection
//! counts. [`Limits`] holds one of each, built from the `CHAT_*` limit settings
//! ([`crate::config::LimitSettings`]); a refusal is a [`Limited`], which the error table turns
//! into 429 or 503 with `Retry-After`.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hashlink::LinkedHashMap;
use schema::UserId;

/// What was limited: each is one stable error code (`chat::error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Too many failed logins for the account or from the address.
    Login,
    /// Too many registrations from the address.
    Register,
    /// The user's REST request rate, or their send budget (WebSocket frames and REST sends).
    Rate,
    /// The user's invitations per minute.
    Invites,
    /// The user's live (WebSocket and SSE) connections.
    Connections,
    /// The server is saturated (password hashing, connections): retry soon.
    Overloaded,
}

impl Limit {
    pub const ALL: [Limit; 6] = [
        Self::Login,
        Self::Register,
        Self::Rate,
        Self::Invites,
        Self::Connections,
        Self::Overloaded,
    ];

    /// The `limit` label of `chat_limited_total`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Register => "register",
            Self::Rate => "rate",
            Self::Invites => "invites",
            Self::Connections => "connections",
            Self::Overloaded => "overloaded",
        }
    }
}

/// A refusal by a limit, with when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub limit: Limit,
    pub retry_after: Duration,
}

impl Limited {
    /// A refusal, counted in `chat_limited_total`.
    pub fn new(limit: Limit, retry_after: Duration) -> Self {
        metrics::counter!(crate::ops::metrics::names::LIMITED, "limit" => limit.name())
            .increment(1);
        Self { limit, retry_after }
    }

    /// `Retry-After` in whole seconds, at least 1 (0 would invite an immediate retry).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// A map that holds at most `capacity` entries, forgetting the least recently used. Entries
/// the caller marks as in use are skipped (the map may then exceed its capacity until they
/// are released), so forgetting never splits something still shared.
#[derive(Debug)]
pub struct BoundedMap<K: Hash + Eq, V> {
    map: LinkedHashMap<K, V>,
    capacity: usize,
}

/// How many of the oldest entries an insert looks at for one it may forget.
const EVICTION_SCAN: usize = 8;

impl<K: Hash + Eq + Clone, V> BoundedMap<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: LinkedHashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    /// The entry for `key` (made the most recently used), inserted with `make` when missing;
    /// to make room, forgets the least recently used entry for which `in_use` is false.
    pub fn entry(
        &mut self,
        key: K,
        make: impl FnOnce() -> V,
        in_use: impl Fn(&V) -> bool,
    ) -> &mut V {
        if self.map.contains_key(&key) {
            self.map.to_back(&key);
        } else {
            if self.map.len() >= self.capacity {
                let victim = self
                    .map
                    .iter()
                    .take(EVICTION_SCAN)
                    .find(|(_, v)| !in_use(v))
                    .map(|(k, _)| k.clone());
                if let Some(victim) = victim {
                    self.map.remove(&victim);
                }
            }
            self.map.insert(key.clone(), make());
        }
        // Present: found or just inserted.
        self.map.get_mut(&key).expect("the entry exists")
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere mid-update of plain counters.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A token bucket per key: `rate` tokens a second up to `burst`.
#[derive(Debug)]
pub struct Buckets<K: Hash + Eq> {
    rate: f64,
    burst: f64,
    limit: Limit,
    buckets: Mutex<BoundedMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub fn new(limit: Limit, rate_per_sec: f64, burst: f64, keys: usize) -> Self {
        Self {
            rate: rate_per_sec,
            burst: burst.max(1.0),
            limit,
            buckets: Mutex::new(BoundedMap::new(keys)),
        }
    }

    /// `per_minute` tokens a minute, all of them available at once.
    pub fn per_minute(limit: Limit, per_minute: u32, keys: usize) -> Self {
        let n = f64::from(per_minute);
        Self::new(limit, n / 60.0, n, keys)
    }

    /// Takes `n` tokens for `key` (a request larger than the burst takes the whole burst).
    pub fn take(&self, key: K, n: u32) -> Result<(), Limited> {
        self.take_at(key, n, Instant::now())
    }

    fn take_at(&self, key: K, n: u32, now: Instant) -> Result<(), Limited> {
        let n = f64::from(n).min(self.burst);
        let mut buckets = lock(&self.buckets);
        let (tokens, at) = buckets.entry(key, || (self.burst, now), |_| false);
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.rate)
            .min(self.burst);
        *at = now;
        if *tokens >= n {
            *tokens -= n;
            Ok(())
        } else {
            let wait = (n - *tokens) / self.rate;
            Err(Limited::new(self.limit, Duration::from_secs_f64(wait)))
        }
    }
}

/// Exponential backoff per key: `free` attempts, then each further one must wait `base`,
/// doubling with every attempt up to `max`. An attempt counts until it is known to have
/// succeeded, so parallel guesses count too; a key quiet for `max` starts over.
#[derive(Debug)]
pub struct Backoff<K: Hash + Eq> {
    free: u32,
    base: Duration,
    max: Duration,
    entries: Mutex<BoundedMap<K, (u32, Instant)>>,
}

impl<K: Hash + Eq + Clone> Backoff<K> {
    pub fn new(free: u32, base: Duration, max: Duration, keys: usize) -> Self {
        Self {
            free,
            base,
            max: max.max(base),
            entries: Mutex::new(BoundedMap::new(keys)),
        }
    }

    /// How long `key` must still wait, or `None` (and the attempt is counted).
    fn attempt_at(&self, key: K, now: Instant) -> Option<Duration> {
        let mut entries = lock(&self.entries);
        let (count, last) = entries.entry(key, || (0, now), |_| false);
        let quiet = now.saturating_duration_since(*last);
        if quiet >= self.max {
            *count = 0;
        }
        if *count >= self.free {
            let doublings = (*count - self.free).min(30);
            let wait = self.base.saturating_mul(1 << doublings).min(self.max);
            if quiet < wait {
                return Some(wait - quiet);
            }
        }
        *count += 1;
        *last = now;
        None
    }

    /// Forgets `key`'s attempts (a successful login for its account).
    fn reset(&self, key: &K) {
        lock(&self.entries).remove(key);
    }

    /// Takes back one attempt of `key` (a success that must not clear the key: an address).
    fn refund(&self, key: &K) {
        let mut entries = lock(&self.entries);
        if let Some(e) = entries.map.get_mut(key) {
            e.0 = e.0.saturating_sub(1);
        }
    }
}

/// The source address as limits key it: IPv6 by /64 (one host usually holds a whole /64).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// Live connections per user, and the most each may hold.
#[derive(Debug)]
pub struct LiveConnections {
    max: usize,
    open: Arc<Mutex<HashMap<UserId, usize>>>,
}

/// One open live connection; dropping it closes it in the count.
#[derive(Debug)]
pub struct LiveSlot {
    user: UserId,
    open: Arc<Mutex<HashMap<UserId, usize>>>,
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

impl LiveConnections {
    /// A slot for one more live connection of `user`, unless they hold the most already.
    pub fn open(&self, user: UserId) -> Result<LiveSlot, Limited> {
        let mut open = lock(&self.open);
        let n = open.entry(user).or_default();
        if *n >= self.max {
            // A connection closes when the client wants; a few seconds is a fair guess.
            return Err(Limited::new(Limit::Connections, Duration::from_secs(5)));
        }
        *n += 1;
        Ok(LiveSlot {
            user,
            open: self.open.clone(),
        })
    }
}

/// Every limit of one node.
#[derive(Debug)]
pub struct Limits {
    /// REST requests per user.
    pub requests: Buckets<UserId>,
    /// WebSocket frames and REST sends per user.
    pub sends: Buckets<UserId>,
    /// Users invited (to new or existing rooms) per user.
    pub invites: Buckets<UserId>,
    /// The most users one request may invite.
    pub invite_max_users: usize,
    /// WebSocket `resume` frames per user.
    pub resumes: Buckets<UserId>,
    /// The most rooms one `resume` frame may name.
    pub resume_max_rooms: usize,
    /// The most log events an SSE `Last-Event-ID` replay scans.
    pub sse_replay_limit: u64,
    /// The most rooms held in memory (room actors).
    pub room_cache: usize,
    /// Registrations per source address.
    pub registrations: Buckets<IpAddr>,
    login_accounts: Backoff<String>,
    login_addresses: Backoff<IpAddr>,
    pub live: LiveConnections,
}

/// A password check of a signed-in user (password change, account deletion) let through.
#[derive(Debug)]
#[must_use]
pub struct PasswordCheck<'a> {
    limits: &'a Limits,
    account: String,
}

impl PasswordCheck<'_> {
    /// The password was right: the account starts over.
    pub fn succeeded(self) {
        self.limits.login_accounts.reset(&self.account);
    }
}

/// A login attempt let through; tell it how it ended.
#[derive(Debug)]
#[must_use]
pub struct LoginAttempt<'a> {
    limits: &'a Limits,
    account: String,
    address: IpAddr,
}

impl LoginAttempt<'_> {
    /// The password was right: the account starts over, the address gets its attempt back.
    pub fn succeeded(self) {
        self.limits.login_accounts.reset(&self.account);
        self.limits.login_addresses.refund(&self.address);
    }
}

impl Limits {
    pub fn new(s: &crate::config::LimitSettings, ws_rate: u32) -> Self {
        let keys = s.limit_keys;
        let per_sec =
            |limit, rate: u32| Buckets::new(limit, f64::from(rate), 2.0 * f64::from(rate), keys);
        let backoff = |free| {
            (
                free,
                Duration::from_millis(s.login_backoff_ms),
                Duration::from_secs(s.login_backoff_max_secs),
            )
        };
        let (free, base, max) = backoff(s.login_failures_per_account);
        let login_accounts = Backoff::new(free, base, max, keys);
        let (free, base, max) = backoff(s.login_failures_per_address);
        let login_addresses = Backoff::new(free, base, max, keys);
        Self {
            requests: per_sec(Limit::Rate, s.request_rate),
            sends: per_sec(Limit::Rate, ws_rate),
            invites: Buckets::per_minute(Limit::Invites, s.invites_per_min, keys),
            invite_max_users: s.invite_max_users,
            resumes: Buckets::per_minute(Limit::Rate, s.resumes_per_min, keys),
            resume_max_rooms: s.resume_max_rooms,
            sse_replay_limit: s.sse_replay_limit,
            room_cache: s.room_cache,
            registrations: Buckets::per_minute(Limit::Register, s.registrations_per_min, keys),
            login_accounts,
            login_addresses,
            live: LiveConnections {
                max: s.live_connections_per_user,
                open: Arc::default(),
            },
        }
    }

    /// Lets a signed-in user's password check for `account` go ahead, or says how long to
    /// wait: failures count against the account's login backoff (and a backoff from failed
    /// logins holds these too).
    pub fn password_check(&self, account: &str) -> Result<PasswordCheck<'_>, Limited> {
        let account = account.to_lowercase();
        match self
            .login_accounts
            .attempt_at(account.clone(), Instant::now())
        {
            Some(wait) => Err(Limited::new(Limit::Login, wait)),
            None => Ok(PasswordCheck {
                limits: self,
                account,
            }),
        }
    }

    /// Lets a login for `account` from `address` go ahead, or says how long to wait.
    pub fn login(&self, account: &str, address: IpAddr) -> Result<LoginAttempt<'_>, Limited> {
        let now = Instant::now();
        let account = account.to_lowercase();
        let address = address_key(address);
        let wait = self.login_addresses.attempt_at(address, now).or_else(|| {
            let wait = self.login_accounts.attempt_at(account.clone(), now);
            if wait.is_some() {
                // Refused for the account: not an attempt from the address either.
                self.login_addresses.refund(&address);
            }
            wait
        });
        match wait {
            Some(wait) => Err(Limited::new(Limit::Login, wait)),
            None => Ok(LoginAttempt {
                limits: self,
                account,
                address,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_map_forgets_the_least_recently_used_unless_in_use() {
        let mut m = BoundedMap::new(2);
        m.entry(1, || "a", |_| false);
        m.entry(2, || "b", |_| false);
        m.entry(1, || "x", |_| false); // touches 1: 2 is now the oldest
        m.entry(3, || "c", |_| false);
        assert_eq!(
            (m.get(&1), m.get(&2), m.get(&3)),
            (Some(&"a"), None, Some(&"c"))
        );
        // Everything in use: grows rather than forget.
        m.entry(4, || "d", |_| true);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn buckets_refill_at_their_rate_and_say_when() {
        let b = Buckets::new(Limit::Rate, 2.0, 4.0, 10);
        let t0 = Instant::now();
        for _ in 0..4 {
            b.take_at(1, 1, t0).unwrap();
        }
        let refused = b.take_at(1, 1, t0).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        b.take_at(2, 1, t0).unwrap(); // another key has its own bucket
        b.take_at(1, 1, t0 + Duration::from_millis(500)).unwrap();
        assert!(b.take_at(1, 1, t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn backoff_doubles_after_the_free_attempts_and_forgets_quiet_keys() {
        let b = Backoff::new(2, Duration::from_secs(1), Duration::from_secs(8), 10);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(b.attempt_at("k", at(0)), None);
        assert_eq!(b.attempt_at("k", at(0)), None);
        assert_eq!(b.attempt_at("k", at(0)), Some(Duration::from_secs(1)));
        assert_eq!(b.attempt_at("k", at(1)), None); // the third attempt
        assert_eq!(b.attempt_at("k", at(1)), Some(Duration::from_secs(2)));
        assert_eq!(b.attempt_at("k", at(3)), None);
        assert_eq!(b.attempt_at("k", at(3)), Some(Duration::from_secs(4)));
        b.refund(&"k");
        assert_eq!(b.attempt_at("k", at(3)), Some(Duration::from_secs(2)));
        assert_eq!(
            b.attempt_at("k", at(20)),
            None,
            "quiet for the maximum: starts over"
        );
        b.reset(&"k");
        assert_eq!(b.attempt_at("k", at(20)), None);
    }

    #[test]
    fn ipv6_addresses_are_keyed_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
