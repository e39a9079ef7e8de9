//! Proxy API keys: constant-time checks and a brute-force guard.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;
use llm_proxy_core::telemetry;
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, ServerConfig};

/// Most client addresses the guard remembers; beyond, the stalest are forgotten.
const MAX_TRACKED_CLIENTS: usize = 10_000;

/// Result of checking a request's credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Auth is off, or the key is right; carries the key's label when on.
    Allowed(Option<String>),
    /// Missing or wrong key.
    Denied,
    /// Too many failures from this address; retry after the given time.
    LockedOut(Duration),
}

#[derive(Debug)]
struct Failures {
    count: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
}

/// Checks credentials and counts failures per client address.
#[derive(Debug)]
pub struct Authenticator {
    keys: Vec<Vec<u8>>,
    enforced: bool,
    max_failures: u32,
    window: Duration,
    lockout: Duration,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

impl Authenticator {
    /// Builds the checker from config.
    pub fn new(config: &AuthConfig) -> Authenticator {
        Authenticator {
            keys: config
                .api_keys
                .iter()
                .map(|k| k.expose().trim().as_bytes().to_vec())
                .collect(),
            enforced: config.enforced(),
            max_failures: config.max_failed_attempts,
            window: ServerConfig::secs(config.failure_window_seconds),
            lockout: ServerConfig::secs(config.lockout_seconds),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// True when requests must carry a key.
    pub fn enforced(&self) -> bool {
        self.enforced
    }

    /// Checks the credential in `headers` for a request from `client`.
    pub fn check(&self, headers: &HeaderMap, client: IpAddr) -> AuthDecision {
        if !self.enforced {
            return AuthDecision::Allowed(None);
        }
        let now = Instant::now();
        if let Some(wait) = self.locked(client, now) {
            return AuthDecision::LockedOut(wait);
        }
        let presented = credential(headers);
        if let Some(index) = presented.and_then(|p| self.find_key(p.as_bytes())) {
            return AuthDecision::Allowed(Some(format!("key-{}", index + 1)));
        }
        metrics::counter!(telemetry::AUTH_FAILURES_TOTAL).increment(1);
        match self.record_failure(client, now) {
            Some(wait) => AuthDecision::LockedOut(wait),
            None => AuthDecision::Denied,
        }
    }

    /// Index of the matching key. Every key is compared, in constant time
    /// per key, so timing does not tell which key (or how much of it) matched.
    fn find_key(&self, presented: &[u8]) -> Option<usize> {
        let mut found = None;
        for (i, key) in self.keys.iter().enumerate() {
            if bool::from(key.as_slice().ct_eq(presented)) {
                found = Some(i);
            }
        }
        found
    }

    fn locked(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&client)
            .and_then(|f| f.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Counts a failure; returns the lockout time if this one triggers it.
    fn record_failure(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED_CLIENTS && !map.contains_key(&client) {
            let window = self.window;
            map.retain(|_, f| {
                now.duration_since(f.window_start) < window
                    || f.locked_until.is_some_and(|u| u > now)
            });
            if map.len() >= MAX_TRACKED_CLIENTS {
                // Still full of live entries: forget the oldest window.
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, f)| f.window_start)
                    .map(|(ip, _)| *ip)
                {
                    map.remove(&oldest);
                }
            }
        }
        let entry = map.entry(client).or_insert(Failures {
            count: 0,
            window_start: now,
            locked_until: None,
        });
        if now.duration_since(entry.window_start) > self.window || entry.locked_until.is_some() {
            entry.count = 0;
            entry.window_start = now;
            entry.locked_until = None;
        }
        entry.count += 1;
        if entry.count >= self.max_failures {
            entry.locked_until = Some(now + self.lockout);
            metrics::counter!(telemetry::AUTH_LOCKOUTS_TOTAL).increment(1);
            tracing::warn!(client = %client, failures = entry.count, "client locked out after repeated auth failures");
            return Some(self.lockout);
        }
        None
    }
}

/// The credential a request carries: `Authorization: Bearer …` or `x-api-key`.
pub fn credential(headers: &HeaderMap) -> Option<&str> {
    llm_proxy_core::backend::client_credential(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use llm_proxy_core::Secret;

    fn auth(max: u32) -> Authenticator {
        Authenticator::new(&AuthConfig {
            api_keys: vec![Secret::new("alpha"), Secret::new("beta")],
            max_failed_attempts: max,
            ..AuthConfig::default()
        })
    }

    fn headers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn accepts_bearer_and_x_api_key() {
        let a = auth(5);
        let ip = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(
            a.check(&headers("authorization", "Bearer beta"), ip),
            AuthDecision::Allowed(Some("key-2".into()))
        );
        assert_eq!(
            a.check(&headers("x-api-key", "alpha"), ip),
            AuthDecision::Allowed(Some("key-1".into()))
        );
        assert_eq!(
            a.check(&headers("x-api-key", "alph"), ip),
            AuthDecision::Denied
        );
        assert_eq!(a.check(&HeaderMap::new(), ip), AuthDecision::Denied);
    }

    #[test]
    fn repeated_failures_lock_out_only_that_address() {
        let a = auth(3);
        let bad = IpAddr::from([127, 0, 0, 2]);
        let good = IpAddr::from([127, 0, 0, 3]);
        assert_eq!(
            a.check(&headers("x-api-key", "x"), bad),
            AuthDecision::Denied
        );
        assert_eq!(
            a.check(&headers("x-api-key", "x"), bad),
            AuthDecision::Denied
        );
        assert!(matches!(
            a.check(&headers("x-api-key", "x"), bad),
            AuthDecision::LockedOut(_)
        ));
        // Even the right key waits out the lockout.
        assert!(matches!(
            a.check(&headers("x-api-key", "alpha"), bad),
            AuthDecision::LockedOut(_)
        ));
        assert!(matches!(
            a.check(&headers("x-api-key", "alpha"), good),
            AuthDecision::Allowed(_)
        ));
    }

    #[test]
    fn off_when_no_keys() {
        let a = Authenticator::new(&AuthConfig::default());
        assert!(!a.enforced());
        assert_eq!(
            a.check(&HeaderMap::new(), IpAddr::from([127, 0, 0, 1])),
            AuthDecision::Allowed(None)
        );
    }
}
