//! What the gateway counts, and its metrics page (Prometheus text format).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Outcomes of an attempt through an upstream, as `by_upstream` counts them.
const ATTEMPT_OUTCOMES: [&str; 4] = ["ok", "connect", "handshake", "timeout"];

/// `scheme://host:port` of a pool key, without its credentials.
fn without_credentials(key: &str) -> String {
    match key.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{host}")
        }
        None => key.rsplit_once('@').map_or(key, |(_, h)| h).to_string(),
    }
}

/// Upper bounds of the upstream latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Counters shared by every connection.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Client connections (requests) by outcome: ok, no_upstream, upstreams_failed, refused.
    pub outcomes: Mutex<BTreeMap<&'static str, u64>>,
    /// Attempts by upstream (its pool key; shown without credentials) and outcome: ok, connect,
    /// handshake, timeout.
    pub by_upstream: Mutex<HashMap<String, [u64; 4]>>,
    /// Attempts on another upstream after one failed.
    pub retries: AtomicU64,
    /// Upstream failures neither cooled down nor reported: too much of the set was cooling.
    pub held_back: AtomicU64,
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

    /// An attempt through the upstream whose pool key is `key`.
    pub fn attempt(&self, key: &str, outcome: &'static str) {
        let i = ATTEMPT_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        let mut map = self.by_upstream.lock().unwrap_or_else(|e| e.into_inner());
        // Found without allocating: most attempts go through an upstream met before.
        match map.get_mut(key) {
            Some(counts) => counts[i] += 1,
            None => {
                let mut counts = [0; 4];
                counts[i] = 1;
                map.insert(key.to_string(), counts);
            }
        }
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
        let by_upstream: BTreeMap<String, [u64; 4]> = self
            .by_upstream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(key, counts)| (without_credentials(key), *counts))
            .collect();
        for (upstream, counts) in by_upstream {
            let upstream = upstream.replace('\\', "\\\\").replace('"', "\\\"");
            for (outcome, n) in ATTEMPT_OUTCOMES.iter().zip(counts).filter(|(_, n)| *n > 0) {
                out.push_str(&format!(
                    "proxyfleet_gateway_upstream_attempts_total{{upstream=\"{upstream}\",outcome=\"{outcome}\"}} {n}\n"
                ));
            }
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
        out.push_str(&format!(
            "# HELP proxyfleet_gateway_failures_held_back_total Upstream failures neither cooled down nor reported, because the most upstreams allowed were cooling down already.\n# TYPE proxyfleet_gateway_failures_held_back_total counter\nproxyfleet_gateway_failures_held_back_total {}\n",
            self.held_back.load(Ordering::Relaxed)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_upstreams_without_credentials() {
        let m = Metrics::default();
        m.attempt("socks5://fleet:secret@127.0.0.1:1080", "ok");
        m.attempt("socks5://fleet:secret@127.0.0.1:1080", "ok");
        m.attempt("http://127.0.0.1:8080", "connect");
        m.outcome("ok");
        m.ready_after(Duration::from_millis(3));
        let page = m.render();
        assert!(!page.contains("secret"), "{page}");
        assert!(page.contains(
            "proxyfleet_gateway_upstream_attempts_total{upstream=\"socks5://127.0.0.1:1080\",outcome=\"ok\"} 2"
        ), "{page}");
        assert!(page.contains(
            "proxyfleet_gateway_upstream_attempts_total{upstream=\"http://127.0.0.1:8080\",outcome=\"connect\"} 1"
        ), "{page}");
        assert!(page.contains("proxyfleet_gateway_requests_total{outcome=\"ok\"} 1"));
        assert!(page.contains("proxyfleet_gateway_upstream_ready_seconds_bucket{le=\"0.005\"} 1"));
    }
}
