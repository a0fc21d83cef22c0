//! The coordinator's metrics, as Prometheus text.

use proxyfleet_common::metrics::Exposition;

use crate::scheduler::Metrics;

/// The page served at `/metrics`.
pub(crate) fn render(m: &Metrics) -> String {
    let mut e = Exposition::new();
    e.family(
        "proxyfleet_jobs",
        "gauge",
        "Jobs the coordinator holds, by state.",
    );
    for (state, n) in &m.jobs_by_state {
        e.sample(
            "proxyfleet_jobs",
            &[("state", &state.to_ascii_lowercase())],
            *n as f64,
        );
    }
    e.family(
        "proxyfleet_chunks",
        "gauge",
        "Chunks of the jobs held, by state.",
    );
    for (state, n) in &m.chunks_by_state {
        e.sample("proxyfleet_chunks", &[("state", state)], *n as f64);
    }
    e.family("proxyfleet_workers", "gauge", "Worker sessions, by status.");
    for (status, n) in &m.workers_by_status {
        e.sample("proxyfleet_workers", &[("status", status)], *n as f64);
    }
    e.family(
        "proxyfleet_workers_connected",
        "gauge",
        "Worker sessions open.",
    )
    .sample(
        "proxyfleet_workers_connected",
        &[],
        m.workers_by_status.values().sum::<u64>() as f64,
    );
    e.family("proxyfleet_leases", "gauge", "Leases held by workers now.")
        .sample("proxyfleet_leases", &[], m.leases_live as f64);
    let c = &m.counters;
    let counters: [(&str, &str, u64); 10] = [
        (
            "proxyfleet_leases_granted_total",
            "Leases granted to workers.",
            c.leases_granted,
        ),
        (
            "proxyfleet_leases_completed_total",
            "Leases whose every verdict was recorded.",
            c.leases_completed,
        ),
        (
            "proxyfleet_leases_expired_total",
            "Leases taken back from workers silent past the lease TTL.",
            c.leases_expired,
        ),
        (
            "proxyfleet_leases_requeued_total",
            "Leases taken back from vanished workers and queued again.",
            c.leases_requeued,
        ),
        (
            "proxyfleet_leases_handed_back_total",
            "Leases handed back by draining workers.",
            c.leases_handed_back,
        ),
        (
            "proxyfleet_stale_verdicts_refused_total",
            "Verdicts refused because their lease had ended.",
            c.stale_verdicts_refused,
        ),
        (
            "proxyfleet_duplicate_verdicts_refused_total",
            "Verdicts refused because another lease of their chunk recorded the proxy first.",
            c.duplicate_verdicts_refused,
        ),
        (
            "proxyfleet_speculative_leases_total",
            "Backup leases granted at a job's tail for the unchecked proxies of a slow lease.",
            c.speculative_leases,
        ),
        (
            "proxyfleet_chunks_cut_total",
            "Chunks whose attempts ran out, cut in halves to find a poison proxy.",
            c.chunks_cut,
        ),
        (
            "proxyfleet_chunks_failed_total",
            "Pieces of one proxy whose attempts ran out: that proxy is poison.",
            c.chunks_failed,
        ),
    ];
    for (name, help, value) in counters {
        e.family(name, "counter", help)
            .sample(name, &[], value as f64);
    }
    e.family(
        "proxyfleet_verdicts_total",
        "counter",
        "Verdicts recorded, by outcome.",
    );
    e.sample(
        "proxyfleet_verdicts_total",
        &[("usable", "true")],
        c.verdicts_usable as f64,
    );
    e.sample(
        "proxyfleet_verdicts_total",
        &[("usable", "false")],
        c.verdicts_unusable as f64,
    );
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Counters;

    #[test]
    fn the_page_names_every_family_once() {
        let m = Metrics {
            counters: Counters {
                leases_granted: 3,
                verdicts_usable: 2,
                ..Counters::default()
            },
            ..Metrics::default()
        };
        let page = render(&m);
        assert!(
            page.contains("proxyfleet_leases_granted_total 3\n"),
            "{page}"
        );
        assert!(
            page.contains("proxyfleet_verdicts_total{usable=\"true\"} 2\n"),
            "{page}"
        );
        let types: Vec<&str> = page.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut unique = types.clone();
        unique.dedup();
        assert_eq!(types.len(), unique.len());
    }
}
