//! The worker's metrics: checks by outcome, check latency, checks in flight, leases held.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proxyfleet_common::metrics::Exposition;
use proxyfleet_proto::v1 as pb;

/// Upper bounds of the check latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Totals since the worker started; shared by every check.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// Checks by verdict reason (index: the protobuf value).
    by_reason: [AtomicU64; 16],
    /// Checks per latency bucket (not cumulative).
    latency: [AtomicU64; BUCKETS.len()],
    latency_sum_micros: AtomicU64,
    checks: AtomicU64,
    /// Leases held now.
    pub leases: AtomicU64,
    /// Sessions opened with the coordinator (1, then one more per reconnection).
    pub sessions: AtomicU64,
}

impl WorkerMetrics {
    pub fn record(&self, reason: i32, total: Duration) {
        let slot = usize::try_from(reason)
            .unwrap_or(0)
            .min(self.by_reason.len() - 1);
        self.by_reason[slot].fetch_add(1, Ordering::Relaxed);
        let seconds = total.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|le| seconds <= *le) {
            self.latency[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_sum_micros
            .fetch_add(total.as_micros() as u64, Ordering::Relaxed);
        self.checks.fetch_add(1, Ordering::Relaxed);
    }

    /// The page served at `/metrics`; `in_flight` of `max_checks` are running now.
    pub fn render(&self, in_flight: usize, max_checks: usize) -> String {
        let mut e = Exposition::new();
        e.family(
            "proxyfleet_worker_checks_total",
            "counter",
            "Checks done, by verdict reason.",
        );
        for (i, n) in self.by_reason.iter().enumerate() {
            let Ok(reason) = pb::Reason::try_from(i as i32) else {
                continue;
            };
            let name = reason
                .as_str_name()
                .trim_start_matches("REASON_")
                .to_ascii_lowercase();
            e.sample(
                "proxyfleet_worker_checks_total",
                &[("reason", &name)],
                n.load(Ordering::Relaxed) as f64,
            );
        }
        let mut cumulative = 0;
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .zip(&self.latency)
            .map(|(le, n)| {
                cumulative += n.load(Ordering::Relaxed);
                (*le, cumulative)
            })
            .collect();
        e.family(
            "proxyfleet_worker_check_duration_seconds",
            "histogram",
            "Time a check took.",
        )
        .histogram(
            "proxyfleet_worker_check_duration_seconds",
            &buckets,
            self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            self.checks.load(Ordering::Relaxed),
        );
        e.family(
            "proxyfleet_worker_checks_in_flight",
            "gauge",
            "Checks running now.",
        )
        .sample("proxyfleet_worker_checks_in_flight", &[], in_flight as f64);
        e.family(
            "proxyfleet_worker_max_checks",
            "gauge",
            "Checks this worker runs at once at most.",
        )
        .sample("proxyfleet_worker_max_checks", &[], max_checks as f64);
        e.family("proxyfleet_worker_leases", "gauge", "Leases held now.")
            .sample(
                "proxyfleet_worker_leases",
                &[],
                self.leases.load(Ordering::Relaxed) as f64,
            );
        e.family(
            "proxyfleet_worker_sessions_total",
            "counter",
            "Sessions opened with the coordinator.",
        )
        .sample(
            "proxyfleet_worker_sessions_total",
            &[],
            self.sessions.load(Ordering::Relaxed) as f64,
        );
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_land_in_their_reason_and_bucket() {
        let m = WorkerMetrics::default();
        m.record(pb::Reason::None as i32, Duration::from_millis(30));
        m.record(pb::Reason::Timeout as i32, Duration::from_secs(20));
        let page = m.render(3, 8);
        assert!(
            page.contains("proxyfleet_worker_checks_total{reason=\"none\"} 1\n"),
            "{page}"
        );
        assert!(
            page.contains("proxyfleet_worker_checks_total{reason=\"timeout\"} 1\n"),
            "{page}"
        );
        assert!(
            page.contains("proxyfleet_worker_check_duration_seconds_bucket{le=\"0.05\"} 1\n"),
            "{page}"
        );
        assert!(
            page.contains("proxyfleet_worker_check_duration_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{page}"
        );
        assert!(
            page.contains("proxyfleet_worker_checks_in_flight 3\n"),
            "{page}"
        );
    }
}
