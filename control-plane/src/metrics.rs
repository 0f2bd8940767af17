//! A small Prometheus registry: API latency by route, reconcile counts and durations
//! (recorded by the reconcilers through [`Metrics::reconcile_finished`]), and brokers
//! by state (read from the store at scrape time). Rendered in the text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use parking_lot::Mutex;

use crate::model::BrokerState;
use crate::store::BrokerStateCount;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Per bucket (not cumulative); rendered cumulatively.
    counts: [u64; BUCKETS_SECONDS.len()],
    count: u64,
    sum_seconds: f64,
}

impl Histogram {
    fn observe(&mut self, elapsed: Duration) {
        let s = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS_SECONDS.iter().position(|bound| s <= *bound) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum_seconds += s;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, n) in BUCKETS_SECONDS.iter().zip(self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_seconds);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Keyed by (method, route template, status).
    api: Mutex<BTreeMap<(String, String, u16), Histogram>>,
    /// Keyed by (reconciler, outcome).
    reconcile: Mutex<BTreeMap<(String, String), Histogram>>,
    /// Changes of leader of replicated brokers, keyed by kind (`failover`, `switchover`):
    /// from the old leader's last sign of life (failover) or the request (switchover) to
    /// the promotion's commit.
    leadership: Mutex<BTreeMap<String, Histogram>>,
    /// The control-plane lease as this replica last saw it; `None` where no lease task
    /// runs (in-process tests).
    lease: Mutex<Option<LeaseGauge>>,
}

/// The control-plane lease as a replica sees it (see `reconcile::lease`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseGauge {
    /// This replica's name.
    pub replica: String,
    /// Whether this replica holds it (and runs the reconcilers).
    pub held: bool,
    /// Who holds it as last read ('' when nobody does).
    pub holder: String,
    /// Its fencing counter as last read.
    pub term: i64,
    /// Tenures this replica started and ended.
    pub acquired: u64,
    pub lost: u64,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one answered API request; `route` is the template (`/v1/brokers/{broker-id}`),
    /// never the raw path, so ids do not explode the label set.
    pub fn observe_api(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.api
            .lock()
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default()
            .observe(elapsed);
    }

    /// Records one reconcile pass: `reconciler` names the loop (`provision`, `health`,
    /// ...), `outcome` is `ok` or `error`.
    pub fn reconcile_finished(&self, reconciler: &str, outcome: &str, elapsed: Duration) {
        self.reconcile
            .lock()
            .entry((reconciler.to_owned(), outcome.to_owned()))
            .or_default()
            .observe(elapsed);
    }

    /// Records one change of leader of a replicated broker (`kind`: `failover` or
    /// `switchover`).
    pub fn leadership_changed(&self, kind: &str, elapsed: Duration) {
        self.leadership
            .lock()
            .entry(kind.to_owned())
            .or_default()
            .observe(elapsed);
    }

    /// Records what the lease task saw last.
    pub fn set_lease(&self, gauge: LeaseGauge) {
        *self.lease.lock() = Some(gauge);
    }

    pub fn lease(&self) -> Option<LeaseGauge> {
        self.lease.lock().clone()
    }

    pub fn render(&self, brokers: &[BrokerStateCount]) -> String {
        let mut out = String::new();
        if let Some(lease) = self.lease() {
            out.push_str("# HELP mooring_control_plane_lease_held 1 while this replica holds the control-plane lease and runs the reconcilers.\n");
            out.push_str("# TYPE mooring_control_plane_lease_held gauge\n");
            let _ = writeln!(
                out,
                "mooring_control_plane_lease_held{{replica=\"{}\",holder=\"{}\"}} {}",
                escape(&lease.replica),
                escape(&lease.holder),
                u8::from(lease.held)
            );
            out.push_str("# HELP mooring_control_plane_lease_term The control-plane lease's fencing counter, as last read.\n");
            out.push_str("# TYPE mooring_control_plane_lease_term gauge\n");
            let _ = writeln!(out, "mooring_control_plane_lease_term {}", lease.term);
            out.push_str("# HELP mooring_control_plane_lease_transitions_total Tenures of this replica started (acquired) and ended (lost).\n");
            out.push_str("# TYPE mooring_control_plane_lease_transitions_total counter\n");
            let _ = writeln!(
                out,
                "mooring_control_plane_lease_transitions_total{{kind=\"acquired\"}} {}",
                lease.acquired
            );
            let _ = writeln!(
                out,
                "mooring_control_plane_lease_transitions_total{{kind=\"lost\"}} {}",
                lease.lost
            );
        }
        {
            let leadership = self.leadership.lock();
            out.push_str("# HELP mooring_leadership_change_duration_seconds Failovers and switchovers of replicated brokers, to the promotion's commit.\n");
            out.push_str("# TYPE mooring_leadership_change_duration_seconds histogram\n");
            for kind in ["failover", "switchover"] {
                let empty = Histogram::default();
                let h = leadership.get(kind).unwrap_or(&empty);
                h.render(
                    &mut out,
                    "mooring_leadership_change_duration_seconds",
                    &format!("kind=\"{kind}\""),
                );
            }
            out.push_str("# HELP mooring_failovers_total Failovers of replicated brokers.\n");
            out.push_str("# TYPE mooring_failovers_total counter\n");
            let failovers = leadership.get("failover").map_or(0, |h| h.count);
            let _ = writeln!(out, "mooring_failovers_total {failovers}");
        }
        out.push_str("# HELP mooring_api_request_duration_seconds Public API latency by route.\n");
        out.push_str("# TYPE mooring_api_request_duration_seconds histogram\n");
        for ((method, route, status), h) in self.api.lock().iter() {
            let labels = format!(
                "method=\"{method}\",route=\"{}\",status=\"{status}\"",
                escape(route)
            );
            h.render(&mut out, "mooring_api_request_duration_seconds", &labels);
        }
        out.push_str("# HELP mooring_reconcile_duration_seconds Reconcile passes by reconciler and outcome.\n");
        out.push_str("# TYPE mooring_reconcile_duration_seconds histogram\n");
        for ((reconciler, outcome), h) in self.reconcile.lock().iter() {
            let labels = format!(
                "reconciler=\"{}\",outcome=\"{}\"",
                escape(reconciler),
                escape(outcome)
            );
            h.render(&mut out, "mooring_reconcile_duration_seconds", &labels);
        }
        out.push_str("# HELP mooring_brokers Brokers by state.\n");
        out.push_str("# TYPE mooring_brokers gauge\n");
        // Every state, zeros included, so that alerts see a series drop to 0 rather than vanish.
        for state in BrokerState::ALL {
            let count: i64 = brokers
                .iter()
                .filter(|b| b.state == *state)
                .map(|b| b.count)
                .sum();
            let _ = writeln!(out, "mooring_brokers{{state=\"{state}\"}} {count}");
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets_and_gauges() {
        let m = Metrics::new();
        m.observe_api("GET", "/v1/brokers", 200, Duration::from_millis(3));
        m.observe_api("GET", "/v1/brokers", 200, Duration::from_secs(20));
        m.reconcile_finished("provision", "ok", Duration::from_millis(1));
        let text = m.render(&[BrokerStateCount {
            state: BrokerState::Running,
            count: 4,
        }]);
        let labels = "method=\"GET\",route=\"/v1/brokers\",status=\"200\"";
        assert!(text.contains(&format!(
            "mooring_api_request_duration_seconds_bucket{{{labels},le=\"0.0025\"}} 0"
        )));
        assert!(text.contains(&format!(
            "mooring_api_request_duration_seconds_bucket{{{labels},le=\"0.005\"}} 1"
        )));
        assert!(text.contains(&format!(
            "mooring_api_request_duration_seconds_bucket{{{labels},le=\"10\"}} 1"
        )));
        assert!(text.contains(&format!(
            "mooring_api_request_duration_seconds_count{{{labels}}} 2"
        )));
        assert!(text.contains(
            "mooring_reconcile_duration_seconds_count{reconciler=\"provision\",outcome=\"ok\"} 1"
        ));
        assert!(text.contains("mooring_brokers{state=\"RUNNING\"} 4"));
        assert!(text.contains("mooring_failovers_total 0"));
        m.leadership_changed("failover", Duration::from_millis(1_800));
        let text = m.render(&[]);
        assert!(text.contains("mooring_failovers_total 1"));
        assert!(text.contains(
            "mooring_leadership_change_duration_seconds_bucket{kind=\"failover\",le=\"2.5\"} 1"
        ));
        assert!(text.contains(
            "mooring_leadership_change_duration_seconds_bucket{kind=\"failover\",le=\"1\"} 0"
        ));
        assert!(text.contains("mooring_brokers{state=\"DELETION_IN_PROGRESS\"} 0"));
    }
}
