//! Per-broker retry scheduling: failures back off exponentially with jitter, converged
//! brokers are looked at again only slowly (or as soon as their row changes), brokers with
//! work in progress every pass. Time is a parameter, so the schedule is tested without a
//! clock.
//!
//! A converged broker remembers a fingerprint of its row (version and generation): any write
//! to it — a reboot, a deletion, a user change — makes it due at once, while the many
//! wake-ups that concern other brokers leave it alone. That keeps a woken pass over a large
//! fleet proportional to what changed.

use rand::Rng;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// First retry delay after a failure; doubles per consecutive failure...
const FAILURE_BASE: Duration = Duration::from_millis(500);
/// ...up to this.
const FAILURE_CAP: Duration = Duration::from_secs(30);
/// A converged broker whose row did not change is looked at again after this long (to notice
/// a dead agent, or an agent's report that completes a change).
pub const CONVERGED_RECHECK: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
struct Entry<F> {
    failures: u32,
    not_before: Instant,
    /// Failures hold even against changes; converged rechecks do not.
    failing: bool,
    /// The row's fingerprint when it converged.
    seen: Option<F>,
}

#[derive(Debug)]
pub struct Schedule<K, F> {
    entries: HashMap<K, Entry<F>>,
}

impl<K: Hash + Eq + Clone, F> Default for Schedule<K, F> {
    fn default() -> Self {
        Schedule {
            entries: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, F: PartialEq> Schedule<K, F> {
    /// Whether `key`, whose row now has `fingerprint`, should be reconciled at `now`.
    pub fn due(&self, key: &K, now: Instant, fingerprint: &F) -> bool {
        match self.entries.get(key) {
            None => true,
            Some(e) if e.failing => now >= e.not_before,
            Some(e) => e.seen.as_ref() != Some(fingerprint) || now >= e.not_before,
        }
    }

    pub fn failed(&mut self, key: &K, now: Instant) {
        let entry = self.entries.entry(key.clone()).or_insert(Entry {
            failures: 0,
            not_before: now,
            failing: true,
            seen: None,
        });
        entry.failures = entry.failures.saturating_add(1);
        entry.failing = true;
        let step = FAILURE_BASE
            .saturating_mul(1u32 << entry.failures.min(16).saturating_sub(1))
            .min(FAILURE_CAP);
        // Uniform in the upper half of the step: spreads retries of brokers that failed together.
        let jittered = step / 2 + rand::thread_rng().gen_range(Duration::ZERO..=step / 2);
        entry.not_before = now + jittered;
    }

    /// The pass did work that needs a follow-up: look again at the next pass.
    pub fn progressing(&mut self, key: &K) {
        self.entries.remove(key);
    }

    pub fn converged(&mut self, key: &K, now: Instant, fingerprint: F) {
        let entry = Entry {
            failures: 0,
            not_before: now + CONVERGED_RECHECK,
            failing: false,
            seen: Some(fingerprint),
        };
        self.entries.insert(key.clone(), entry);
    }

    /// Drops keys that no longer exist.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }

    pub fn failures(&self, key: &K) -> u32 {
        self.entries.get(key).map_or(0, |e| e.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_even_when_the_row_changes() {
        let mut s: Schedule<&str, u32> = Schedule::default();
        let t0 = Instant::now();
        assert!(s.due(&"b", t0, &1));
        s.failed(&"b", t0);
        assert!(
            !s.due(&"b", t0, &2),
            "a change does not bypass a failure backoff"
        );
        assert!(s.due(&"b", t0 + FAILURE_BASE, &1));
        for _ in 0..20 {
            s.failed(&"b", t0);
        }
        assert_eq!(s.failures(&"b"), 21);
        assert!(!s.due(&"b", t0 + FAILURE_CAP / 2 - Duration::from_millis(1), &1));
        assert!(s.due(&"b", t0 + FAILURE_CAP, &1), "bounded by the cap");
        s.progressing(&"b");
        assert!(s.due(&"b", t0, &1));
        assert_eq!(s.failures(&"b"), 0);
    }

    #[test]
    fn converged_keys_wait_unless_their_row_changes() {
        let mut s: Schedule<&str, u32> = Schedule::default();
        let t0 = Instant::now();
        s.converged(&"b", t0, 7);
        assert!(!s.due(&"b", t0, &7));
        assert!(
            s.due(&"b", t0, &8),
            "a write to the row makes it due at once"
        );
        assert!(s.due(&"b", t0 + CONVERGED_RECHECK, &7));
        s.retain(|_| false);
        assert!(s.due(&"b", t0, &7));
    }
}
