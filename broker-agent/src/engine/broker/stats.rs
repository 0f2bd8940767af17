//! Engine-wide counters, all atomics so that the hot path never takes a lock for them.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    pub confirmed: AtomicU64,
    pub returned: AtomicU64,
    pub connections: AtomicI64,
    pub channels: AtomicI64,
    pub queues: AtomicI64,
    pub ready: AtomicI64,
    pub unacked: AtomicI64,
    /// Body bytes of messages held in memory by queues (ready and unacked); drives the memory
    /// alarm and the paging of bodies to disk.
    pub message_bytes: AtomicI64,
    /// Beyond this many resident body bytes, bodies of messages that are also in a queue log
    /// are dropped from memory and read back on delivery (0 = never page out).
    pub body_budget: AtomicI64,
    /// Message bodies currently paged out (on disk only).
    pub paged_out: AtomicI64,
}

impl Stats {
    /// Whether resident message bodies exceed the budget.
    pub fn over_budget(&self) -> bool {
        let budget = self.body_budget.load(Ordering::Relaxed);
        budget > 0 && self.message_bytes.load(Ordering::Relaxed) > budget
    }

    pub fn add(counter: &AtomicI64, n: i64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicI64) -> u64 {
        counter.load(Ordering::Relaxed).max(0) as u64
    }
}
