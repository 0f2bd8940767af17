//! Short-lived, in-memory caches for the authentication path, so that a request
//! from a known caller costs no database round trip before its handler runs.
//!
//! - [`PrincipalCache`]: access key id -> what verifying and authorizing its
//!   requests needs (the unsealed secret, the user, the compiled policies).
//! - [`ArnCache`]: broker or configuration id -> its ARN. An ARN never changes
//!   for an id (ids are random and never reused), so it needs no expiry.
//!
//! # Staleness bound of the principal cache
//!
//! An entry is served only while both hold:
//! 1. **No IAM write in this process since it was read.** Every IAM write in
//!    the store (it holds an [`IamWrite`]) and every IAM Query API action but
//!    `Get*`/`List*` calls [`iam_changed`] after it commits, which bumps a
//!    process-wide generation; entries read under an older generation are
//!    never served again. A deleted key, a detached policy or a new group
//!    membership therefore takes effect on the next request to this process.
//! 2. **It is younger than the TTL** (`--auth-cache-ttl-ms`, default 2 s). This
//!    bounds how long a *different* control-plane replica on the same database
//!    keeps using what it read before another replica's IAM write: at most the
//!    TTL. IAM itself is eventually consistent in the same way (AWS documents
//!    that changes can take seconds to be visible everywhere).
//!
//! The generation is read *before* the store is, and an entry is inserted
//! under that generation: a write that commits while the lookup runs bumps
//! the generation after its commit, so the possibly stale entry is never
//! served. Unknown keys are not cached (a new key works at once everywhere).
//! Resource tags are never cached: tag conditions always see the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

/// Bumped after every IAM write this process commits.
static IAM_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Records that an IAM write (principal, key, policy, membership) has just
/// committed: every principal cache in the process drops what it holds.
pub fn iam_changed() {
    IAM_GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// The current IAM generation: read it before reading the store, and insert
/// what was read under it.
pub fn iam_generation() -> u64 {
    IAM_GENERATION.load(Ordering::SeqCst)
}

/// Calls [`iam_changed`] when dropped. A store function that writes IAM state
/// holds one for its whole body, so the bump follows the write (commit) on every
/// way out, errors included.
#[must_use = "the bump happens when this is dropped"]
pub struct IamWrite;

impl Drop for IamWrite {
    fn drop(&mut self) {
        iam_changed();
    }
}

/// Default for `--auth-cache-ttl-ms`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(2);

/// Entries held at most; beyond, expired ones are dropped, then all (a miss
/// only costs a store read, so the bound matters more than the hit rate).
const MAX_ENTRIES: usize = 10_000;

struct Entry<V> {
    value: Arc<V>,
    generation: u64,
    fetched_at: Instant,
}

/// Access key id -> a verified principal `V`, valid for one IAM generation and
/// at most `ttl`. A `ttl` of zero disables it.
pub struct PrincipalCache<V> {
    ttl: Duration,
    entries: RwLock<HashMap<String, Entry<V>>>,
}

impl<V> PrincipalCache<V> {
    pub fn new(ttl: Duration) -> Self {
        PrincipalCache {
            ttl,
            entries: RwLock::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The entry for `key` if it was read under `generation` less than the TTL
    /// before `now`.
    pub fn get(&self, key: &str, generation: u64, now: Instant) -> Option<Arc<V>> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.read();
        let e = entries.get(key)?;
        let fresh =
            e.generation == generation && now.saturating_duration_since(e.fetched_at) < self.ttl;
        fresh.then(|| e.value.clone())
    }

    /// Remembers `value`, read from the store at `fetched_at` after
    /// [`iam_generation`] returned `generation`. Ignored when an IAM write has
    /// happened since (`current` differs): the value may predate it.
    pub fn insert(
        &self,
        key: &str,
        value: Arc<V>,
        generation: u64,
        current: u64,
        fetched_at: Instant,
    ) {
        if self.ttl.is_zero() || generation != current {
            return;
        }
        let mut entries = self.entries.write();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(key) {
            let ttl = self.ttl;
            entries.retain(|_, e| {
                e.generation == current && fetched_at.saturating_duration_since(e.fetched_at) < ttl
            });
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            key.to_owned(),
            Entry {
                value,
                generation,
                fetched_at,
            },
        );
    }

    /// Drops the entry of one key (for callers that learn it is unusable).
    pub fn remove(&self, key: &str) {
        self.entries.write().remove(key);
    }

    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Resource id (`b-…`, `c-…`) -> ARN, for resources whose ARN is fixed at
/// creation. Bounded; cleared when full.
#[derive(Default)]
pub struct ArnCache {
    entries: RwLock<HashMap<String, Arc<str>>>,
}

impl ArnCache {
    pub fn get(&self, id: &str) -> Option<Arc<str>> {
        self.entries.read().get(id).cloned()
    }

    /// Remembers the ARN of a resource that exists in the store.
    pub fn insert(&self, id: &str, arn: Arc<str>) {
        let mut entries = self.entries.write();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(id.to_owned(), arn);
    }
}

/// The caches one control plane's authentication layer shares.
pub struct AuthCaches<P> {
    pub principals: PrincipalCache<P>,
    pub arns: ArnCache,
}

impl<P> AuthCaches<P> {
    pub fn new(principal_ttl: Duration) -> Self {
        AuthCaches {
            principals: PrincipalCache::new(principal_ttl),
            arns: ArnCache::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_within_ttl_and_generation_only() {
        let cache = PrincipalCache::new(Duration::from_secs(2));
        let t0 = Instant::now();
        cache.insert("AKIA1", Arc::new("alice"), 7, 7, t0);
        assert_eq!(cache.get("AKIA1", 7, t0).as_deref(), Some(&"alice"));
        assert_eq!(
            cache
                .get("AKIA1", 7, t0 + Duration::from_millis(1999))
                .as_deref(),
            Some(&"alice")
        );
        // The TTL bounds what another replica's write can leave stale.
        assert!(cache.get("AKIA1", 7, t0 + Duration::from_secs(2)).is_none());
        // An IAM write in this process: stale at once.
        assert!(cache.get("AKIA1", 8, t0).is_none());
        assert!(cache.get("AKIA2", 7, t0).is_none());
    }

    #[test]
    fn a_lookup_that_raced_a_write_is_not_kept() {
        let cache = PrincipalCache::new(Duration::from_secs(2));
        let t0 = Instant::now();
        // Generation read as 3 before the store; a write bumped it to 4 meanwhile.
        cache.insert("AKIA1", Arc::new(1), 3, 4, t0);
        assert!(cache.is_empty());
        assert!(cache.get("AKIA1", 3, t0).is_none());
    }

    #[test]
    fn zero_ttl_disables() {
        let cache = PrincipalCache::new(Duration::ZERO);
        let t0 = Instant::now();
        cache.insert("AKIA1", Arc::new(1), 0, 0, t0);
        assert!(cache.get("AKIA1", 0, t0).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn stays_bounded() {
        let cache = PrincipalCache::new(Duration::from_secs(2));
        let t0 = Instant::now();
        for i in 0..MAX_ENTRIES + 10 {
            cache.insert(&format!("AKIA{i}"), Arc::new(i), 0, 0, t0);
        }
        assert!(cache.len() <= MAX_ENTRIES);
        assert!(cache
            .get(&format!("AKIA{}", MAX_ENTRIES + 9), 0, t0)
            .is_some());

        let arns = ArnCache::default();
        for i in 0..MAX_ENTRIES + 10 {
            arns.insert(&format!("b-{i}"), Arc::from(format!("arn:{i}")));
        }
        let last = MAX_ENTRIES + 9;
        assert_eq!(
            arns.get(&format!("b-{last}")).as_deref(),
            Some(format!("arn:{last}").as_str())
        );
    }

    #[test]
    fn iam_changes_bump_the_generation() {
        let before = iam_generation();
        iam_changed();
        assert!(iam_generation() > before);
    }
}
