//! What the gateway counts, and its metrics page (Prometheus text format).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the upstream latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Counters shared by every connection.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Client connections (requests) by outcome: ok, no_upstream, upstreams_failed, refused.
    pub outcomes: Mutex<BTreeMap<&'static str, u64>>,
    /// Attempts by upstream and outcome (ok, connect, handshake, timeout).
    pub by_upstream: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Attempts on another upstream after one failed.
    pub retries: AtomicU64,
    /// Tunnels open now.
    pub active: AtomicU64,
    /// Upstreams in the gateway's set.
    pub upstreams: AtomicU64,
    /// The pool's stream is open.
    pub following: AtomicBool,
    /// Time to a ready upstream (connect and handshake): counts per bucket, then the sum.
    latency: Mutex<([u64; BUCKETS.len() + 1], f64)>,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    *map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default() += 1;
}

impl Metrics {
    pub fn outcome(&self, outcome: &'static str) {
        bump(&self.outcomes, outcome);
    }

    pub fn attempt(&self, upstream: &str, outcome: &'static str) {
        bump(&self.by_upstream, (upstream.to_string(), outcome));
    }

    pub fn ready_after(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        h.0[i] += 1;
        h.1 += secs;
    }

    /// How many client connections ended with `outcome`.
    pub fn outcomes_of(&self, outcome: &str) -> u64 {
        self.outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(outcome)
            .copied()
            .unwrap_or(0)
    }

    /// The metrics page.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP proxyfleet_gateway_requests_total Client connections by outcome.\n# TYPE proxyfleet_gateway_requests_total counter\n");
        for (outcome, n) in self
            .outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out.push_str(&format!(
                "proxyfleet_gateway_requests_total{{outcome=\"{outcome}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP proxyfleet_gateway_upstream_attempts_total Attempts through each upstream by outcome.\n# TYPE proxyfleet_gateway_upstream_attempts_total counter\n");
        for ((upstream, outcome), n) in self
            .by_upstream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let upstream = upstream.replace('\\', "\\\\").replace('"', "\\\"");
            out.push_str(&format!(
                "proxyfleet_gateway_upstream_attempts_total{{upstream=\"{upstream}\",outcome=\"{outcome}\"}} {n}\n"
            ));
        }
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            ));
        };
        out.push_str(&format!(
            "# HELP proxyfleet_gateway_retries_total Attempts on another upstream after one failed.\n# TYPE proxyfleet_gateway_retries_total counter\nproxyfleet_gateway_retries_total {}\n",
            self.retries.load(Ordering::Relaxed)
        ));
        gauge(
            &mut out,
            "proxyfleet_gateway_active_tunnels",
            "Tunnels open now.",
            self.active.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "proxyfleet_gateway_pool_upstreams",
            "Upstreams in the gateway's set.",
            self.upstreams.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "proxyfleet_gateway_following",
            "1 while the pool's stream is open.",
            u64::from(self.following.load(Ordering::Relaxed)),
        );
        let (counts, sum) = *self.latency.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str("# HELP proxyfleet_gateway_upstream_ready_seconds Time to a ready upstream (connect and handshake).\n# TYPE proxyfleet_gateway_upstream_ready_seconds histogram\n");
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += counts[i];
            out.push_str(&format!(
                "proxyfleet_gateway_upstream_ready_seconds_bucket{{le=\"{bound}\"}} {cumulative}\n"
            ));
        }
        cumulative += counts[BUCKETS.len()];
        out.push_str(&format!(
            "proxyfleet_gateway_upstream_ready_seconds_bucket{{le=\"+Inf\"}} {cumulative}\nproxyfleet_gateway_upstream_ready_seconds_sum {sum}\nproxyfleet_gateway_upstream_ready_seconds_count {cumulative}\n"
        ));
        out
    }
}
