//! A JWKS document fetched at start and refreshed in the background (single flight,
//! interval from config or the response's `Cache-Control: max-age`). An unknown `kid`
//! forces at most one early refresh per cooldown. When the endpoint is down the last
//! good keys stay in use.

use crate::clock::now_ms;
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::DecodingKey;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct JwksSource {
    pub url: String,
    refresh_ms: u64,
    cooldown_ms: u64,
    /// kid → key; `None` until the first successful fetch.
    keys: ArcSwap<Option<HashMap<String, Arc<DecodingKey>>>>,
    next_refresh_ms: AtomicU64,
    last_forced_ms: AtomicU64,
    failing: AtomicBool,
    last_attempt_ms: AtomicU64,
    flight: tokio::sync::Mutex<()>,
    generation: AtomicU64,
}

pub enum KeyLookup {
    Found(Arc<DecodingKey>),
    /// Keys are loaded but none has this kid.
    Unknown,
    /// No key was ever obtained.
    Unavailable,
}

impl JwksSource {
    pub fn new(url: String, refresh: Duration, cooldown: Duration) -> JwksSource {
        JwksSource {
            url,
            refresh_ms: refresh.as_millis() as u64,
            cooldown_ms: cooldown.as_millis() as u64,
            keys: ArcSwap::from_pointee(None),
            next_refresh_ms: AtomicU64::new(0),
            last_forced_ms: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            last_attempt_ms: AtomicU64::new(0),
            flight: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        }
    }

    pub fn loaded(&self) -> bool {
        self.keys.load().is_some()
    }

    pub fn key_count(&self) -> usize {
        self.keys
            .load()
            .as_ref()
            .as_ref()
            .map(|k| k.len())
            .unwrap_or(0)
    }

    pub fn lookup(&self, kid: Option<&str>) -> KeyLookup {
        let keys = self.keys.load();
        let Some(map) = keys.as_ref() else {
            return KeyLookup::Unavailable;
        };
        let found = match kid {
            Some(k) => map.get(k),
            // no kid: only unambiguous with a single key
            None if map.len() == 1 => map.values().next(),
            None => map.get(""),
        };
        match found {
            Some(k) => KeyLookup::Found(k.clone()),
            None => KeyLookup::Unknown,
        }
    }

    pub fn due(&self) -> bool {
        now_ms() >= self.next_refresh_ms.load(Ordering::Relaxed)
    }

    /// Refresh now unless another task is already doing it (then wait for that one).
    pub async fn refresh(&self) {
        let seen = self.generation.load(Ordering::Acquire);
        let _g = self.flight.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return; // someone refreshed while we waited
        }
        self.last_attempt_ms
            .store(now_ms().max(1), Ordering::Relaxed);
        let result = crate::fetch::get(&self.url, Duration::from_secs(5)).await;
        let mut next = self.refresh_ms;
        match result.and_then(|f| {
            if f.status != 200 {
                return Err(format!("status {}", f.status));
            }
            if let Some(age) = f.cache_control.as_deref().and_then(crate::fetch::max_age) {
                // honour max-age, within sane bounds
                next = (age * 1000).clamp(10_000, 24 * 3_600_000);
            }
            let set: JwkSet =
                serde_json::from_slice(&f.body).map_err(|e| format!("invalid JWKS: {e}"))?;
            let mut map = HashMap::new();
            for jwk in &set.keys {
                match DecodingKey::from_jwk(jwk) {
                    Ok(k) => {
                        map.insert(jwk.common.key_id.clone().unwrap_or_default(), Arc::new(k));
                    }
                    Err(e) => log::warn!("JWKS {}: skipping a key: {e}", self.url),
                }
            }
            if map.is_empty() {
                return Err("no usable key in the JWKS".into());
            }
            Ok(map)
        }) {
            Ok(map) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    log::info!("JWKS {}: fetched again ({} keys)", self.url, map.len());
                } else {
                    log::debug!("JWKS {}: {} keys", self.url, map.len());
                }
                self.keys.store(Arc::new(Some(map)));
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "JWKS {}: fetch failed ({e}); {}",
                        self.url,
                        if self.loaded() {
                            "keeping the last good keys"
                        } else {
                            "no keys yet"
                        }
                    );
                }
                // retry sooner while failing
                next = next.min(if self.loaded() { 30_000 } else { 2_000 });
            }
        }
        self.next_refresh_ms
            .store(now_ms() + next, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// No key was ever obtained: try now, but not more than once a second (so a down
    /// identity provider is not hammered at the request rate).
    pub async fn ensure_loaded(&self) {
        let last = self.last_attempt_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms().saturating_sub(last) < 1000 {
            // wait for an attempt in progress, if any
            let _g = self.flight.lock().await;
            return;
        }
        self.refresh().await;
    }

    /// An unknown kid: refresh early, at most once per cooldown. Returns whether it did.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        let now = now_ms();
        let last = self.last_forced_ms.load(Ordering::Acquire);
        if last != 0 && now.saturating_sub(last) < self.cooldown_ms {
            return false;
        }
        if self
            .last_forced_ms
            .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // another request is forcing it: wait for that refresh
            let _g = self.flight.lock().await;
            return true;
        }
        self.refresh().await;
        true
    }
}
