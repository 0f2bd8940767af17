//! Latency histogram and confirm bookkeeping: the pure parts of the load generator.
//!
//! The histogram is log-linear (16 linear sub-buckets per power of two, so every bucket
//! is within about 6% of its values) and fixed-size, so recording a sample is a shift, a
//! count of leading zeros and an increment: cheap enough to run for every message.

/// Linear sub-buckets per power of two; 16 bounds the relative error near 1/16.
const SUB_BITS: u32 = 4;
const SUB_BUCKETS: u64 = 1 << SUB_BITS;
/// Enough buckets for every u64 value.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB_BUCKETS as usize;

/// A histogram of durations in nanoseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("max", &self.max)
            .finish()
    }
}

fn bucket_of(value: u64) -> usize {
    if value < SUB_BUCKETS {
        return value as usize;
    }
    let exp = 63 - value.leading_zeros(); // >= SUB_BITS here
    let sub = (value >> (exp - SUB_BITS)) & (SUB_BUCKETS - 1);
    ((exp - SUB_BITS + 1) as u64 * SUB_BUCKETS + sub) as usize
}

/// The largest value that falls in `bucket`, so that a reported percentile never
/// understates a latency.
fn bucket_high(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < SUB_BUCKETS {
        return bucket;
    }
    let exp = bucket / SUB_BUCKETS + u64::from(SUB_BITS) - 1;
    let sub = bucket % SUB_BUCKETS;
    let low = (SUB_BUCKETS + sub) << (exp - u64::from(SUB_BITS));
    let width = 1u64 << (exp - u64::from(SUB_BITS));
    low.saturating_add(width - 1)
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        self.counts[bucket_of(value)] += 1;
        self.total += 1;
        self.max = self.max.max(value);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value below or at which a fraction `q` (0..=1) of the samples lie, rounded up
    /// to the top of its bucket and never above the largest sample; None when empty.
    pub fn percentile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(bucket_high(bucket).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// Tracks which publish sequence numbers the broker has confirmed (acked or nacked).
///
/// Confirms may arrive out of order and either singly or with `multiple`, so it keeps
/// the contiguous confirmed prefix plus the stragglers above it.
#[derive(Debug, Default)]
pub struct ConfirmTracker {
    /// Every tag in 1..=prefix is confirmed.
    prefix: u64,
    /// Confirmed tags above `prefix + 1`, each not yet absorbed into the prefix.
    above: std::collections::BTreeSet<u64>,
}

impl ConfirmTracker {
    /// Record a basic.ack or basic.nack for `tag`; returns how many tags it newly confirmed.
    pub fn confirm(&mut self, tag: u64, multiple: bool) -> u64 {
        if tag <= self.prefix {
            return 0;
        }
        let before = self.confirmed();
        if multiple {
            self.above = self.above.split_off(&(tag + 1));
            self.prefix = tag;
        } else {
            self.above.insert(tag);
        }
        while self.above.remove(&(self.prefix + 1)) {
            self.prefix += 1;
        }
        self.confirmed() - before
    }

    /// How many distinct tags have been confirmed.
    pub fn confirmed(&self) -> u64 {
        self.prefix + self.above.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..100_000u64).chain([1 << 40, u64::MAX / 3, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b >= last, "bucket order broke at {v}");
            last = b;
            let high = bucket_high(b);
            assert!(high >= v, "bucket {b} top {high} below its value {v}");
            // relative error bound of the log-linear layout
            assert!(
                high - v <= v / 16 + 1,
                "bucket {b} too wide for {v}: top {high}"
            );
        }
        assert!(bucket_of(u64::MAX) < BUCKETS);
    }

    #[test]
    fn percentiles_of_a_uniform_range() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.percentile(0.5).expect("not empty");
        let p99 = h.percentile(0.99).expect("not empty");
        assert!((5_000_000..=5_400_000).contains(&p50), "p50 {p50}");
        assert!((9_900_000..=10_000_000).contains(&p99), "p99 {p99}");
        assert_eq!(h.percentile(1.0), Some(10_000_000));
        assert_eq!(h.count(), 10_000);
    }

    #[test]
    fn percentile_of_empty_and_single() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(0.5), None);
        h.record(7);
        assert_eq!(h.percentile(0.0), Some(7));
        assert_eq!(h.percentile(0.99), Some(7));
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for _ in 0..99 {
            a.record(100);
        }
        b.record(1_000_000);
        a.merge(&b);
        assert_eq!(a.count(), 100);
        assert!(a.percentile(0.5).expect("not empty") <= 103);
        assert_eq!(a.percentile(1.0), Some(1_000_000));
    }

    #[test]
    fn confirms_in_order_out_of_order_and_multiple() {
        let mut t = ConfirmTracker::default();
        assert_eq!(t.confirm(2, false), 1);
        assert_eq!(t.confirm(4, false), 1);
        assert_eq!(t.confirmed(), 2);
        // 1 joins the prefix and absorbs 2
        assert_eq!(t.confirm(1, false), 1);
        assert_eq!(t.confirmed(), 3);
        // multiple up to 5 confirms 3 and 5 (4 was already confirmed)
        assert_eq!(t.confirm(5, true), 2);
        assert_eq!(t.confirmed(), 5);
        // duplicates and stale tags count nothing
        assert_eq!(t.confirm(3, false), 0);
        assert_eq!(t.confirm(5, true), 0);
        assert_eq!(t.confirm(9, true), 4);
        assert_eq!(t.confirmed(), 9);
    }
}
