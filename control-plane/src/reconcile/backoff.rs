//! Per-broker retry scheduling: failures back off exponentially with jitter, converged
//! brokers are looked at again only slowly, brokers with work in progress every pass.
//! Time is a parameter, so the schedule is tested without a clock.

use rand::Rng;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// First retry delay after a failure; doubles per consecutive failure...
const FAILURE_BASE: Duration = Duration::from_millis(500);
/// ...up to this.
const FAILURE_CAP: Duration = Duration::from_secs(30);
/// A converged broker is looked at again after this long even without a wake-up (to notice
/// a dead agent); a wake-up brings it forward.
pub const CONVERGED_RECHECK: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    not_before: Instant,
    /// Failures hold even against wake-ups; converged rechecks do not.
    failing: bool,
}

#[derive(Debug)]
pub struct Schedule<K> {
    entries: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Clone> Default for Schedule<K> {
    fn default() -> Self {
        Schedule {
            entries: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Schedule<K> {
    /// Whether `key` should be reconciled in a pass at `now`; `woken` passes skip only
    /// failing keys that are still backing off.
    pub fn due(&self, key: &K, now: Instant, woken: bool) -> bool {
        match self.entries.get(key) {
            None => true,
            Some(e) if e.failing => now >= e.not_before,
            Some(e) => woken || now >= e.not_before,
        }
    }

    pub fn failed(&mut self, key: &K, now: Instant) {
        let entry = self.entries.entry(key.clone()).or_insert(Entry {
            failures: 0,
            not_before: now,
            failing: true,
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

    pub fn converged(&mut self, key: &K, now: Instant) {
        self.entries.insert(
            key.clone(),
            Entry {
                failures: 0,
                not_before: now + CONVERGED_RECHECK,
                failing: false,
            },
        );
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
    fn failures_back_off_and_hold_against_wakeups() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        assert!(s.due(&"b", t0, false));
        s.failed(&"b", t0);
        assert!(
            !s.due(&"b", t0, true),
            "a wake-up does not bypass a failure backoff"
        );
        assert!(s.due(&"b", t0 + FAILURE_BASE, false));
        for _ in 0..20 {
            s.failed(&"b", t0);
        }
        assert_eq!(s.failures(&"b"), 21);
        assert!(!s.due(&"b", t0 + FAILURE_CAP / 2 - Duration::from_millis(1), false));
        assert!(s.due(&"b", t0 + FAILURE_CAP, false), "bounded by the cap");
        s.progressing(&"b");
        assert!(s.due(&"b", t0, false));
        assert_eq!(s.failures(&"b"), 0);
    }

    #[test]
    fn converged_keys_wait_unless_woken() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        s.converged(&"b", t0);
        assert!(!s.due(&"b", t0, false));
        assert!(s.due(&"b", t0, true));
        assert!(s.due(&"b", t0 + CONVERGED_RECHECK, false));
        s.retain(|_| false);
        assert!(s.due(&"b", t0, false));
    }
}
