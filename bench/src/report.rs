//! The result of one load run, as printed for people and as JSON for the benchmark runner.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::stats::Histogram;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Length of the measured window in seconds.
    pub elapsed_s: f64,
    pub published: u64,
    /// Confirmed by the broker (acks and nacks); 0 without confirms.
    pub confirmed: u64,
    pub nacked: u64,
    /// Messages received by all consumers (each fanout copy counts).
    pub consumed: u64,
    pub publish_rate: f64,
    pub consume_rate: f64,
    /// End-to-end latency, publish to delivery, in microseconds; None without samples.
    pub latency_p50_us: Option<f64>,
    pub latency_p99_us: Option<f64>,
    /// CPU time this load generator used over the window.
    pub cpu_s: f64,
    /// Its CPU per message moved: per delivery, or per publish when nothing is consumed.
    pub cpu_us_per_msg: Option<f64>,
    /// Counts reached (count runs) and no errors.
    pub complete: bool,
    pub errors: Vec<String>,
}

fn rate(count: u64, over: Duration) -> f64 {
    if over.is_zero() {
        0.0
    } else {
        count as f64 / over.as_secs_f64()
    }
}

impl Report {
    pub fn fill(
        &mut self,
        elapsed: Duration,
        publish_time: Duration,
        consume_time: Duration,
        latency: &Histogram,
        cpu: Duration,
    ) {
        self.elapsed_s = elapsed.as_secs_f64();
        self.publish_rate = rate(self.published, publish_time);
        self.consume_rate = rate(self.consumed, consume_time);
        let us = |ns: u64| ns as f64 / 1000.0;
        self.latency_p50_us = latency.percentile(0.50).map(us);
        self.latency_p99_us = latency.percentile(0.99).map(us);
        self.cpu_s = cpu.as_secs_f64();
        let moved = if self.consumed > 0 {
            self.consumed
        } else {
            self.published
        };
        self.cpu_us_per_msg = (moved > 0).then(|| cpu.as_secs_f64() * 1e6 / moved as f64);
    }

    pub fn human(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        let mut s = format!(
            "window {:.2} s | published {} ({:.0} msg/s, confirmed {}, nacked {}) | consumed {} ({:.0} msg/s)\n\
             latency p50 {} us, p99 {} us | loadgen CPU {:.2} s, {} us/msg | {}",
            self.elapsed_s,
            self.published,
            self.publish_rate,
            self.confirmed,
            self.nacked,
            self.consumed,
            self.consume_rate,
            opt(self.latency_p50_us),
            opt(self.latency_p99_us),
            self.cpu_s,
            self.cpu_us_per_msg.map_or("-".to_string(), |v| format!("{v:.2}")),
            if self.complete { "complete" } else { "INCOMPLETE" },
        );
        for e in &self.errors {
            s.push_str("\nerror: ");
            s.push_str(e);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_cpu_per_message() {
        let mut h = Histogram::default();
        h.record(2_000);
        let mut r = Report {
            published: 1000,
            consumed: 500,
            ..Default::default()
        };
        r.fill(
            Duration::from_secs(2),
            Duration::from_secs(2),
            Duration::from_millis(500),
            &h,
            Duration::from_millis(5),
        );
        assert_eq!(r.publish_rate, 500.0);
        assert_eq!(r.consume_rate, 1000.0);
        assert_eq!(r.cpu_us_per_msg, Some(10.0));
        assert_eq!(r.latency_p50_us, Some(2.0));
        let back: Report =
            serde_json::from_str(&serde_json::to_string(&r).expect("serializes")).expect("parses");
        assert_eq!(back.consumed, 500);
    }
}
