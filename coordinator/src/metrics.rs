//! The coordinator's metrics, as Prometheus text.

use proxyfleet_common::metrics::Exposition;

use crate::pools::PoolSummary;
use crate::scheduler::Metrics;

/// The page served at `/metrics`: the scheduler's counts and, per pool, its committed sizes.
pub(crate) fn render(m: &Metrics, pools: &[PoolSummary]) -> String {
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
    pool_gauges(&mut e, m, pools);
    e.finish()
}

/// Per pool: what a scraper can use now, what the pool keeps, and how fresh it is.
fn pool_gauges(e: &mut Exposition, m: &Metrics, pools: &[PoolSummary]) {
    e.family(
        "proxyfleet_pool_live",
        "gauge",
        "Proxies in the pool's live set now: what its files and GetPool serve.",
    );
    for p in pools {
        e.sample(
            "proxyfleet_pool_live",
            &[("pool", &p.meta.name)],
            p.live as f64,
        );
    }
    e.family(
        "proxyfleet_pool_members",
        "gauge",
        "Proxies the pool keeps, live or not (forgotten a week after last seen usable).",
    );
    for p in pools {
        e.sample(
            "proxyfleet_pool_members",
            &[("pool", &p.meta.name)],
            p.total as f64,
        );
    }
    e.family(
        "proxyfleet_pool_last_refresh_success_timestamp_seconds",
        "gauge",
        "When the pool's newest refresh that succeeded ended (Unix seconds; 0: none held).",
    );
    for p in pools {
        let ended_ms = m.pools_refreshed_ms.get(&p.meta.name).copied().unwrap_or(0);
        e.sample(
            "proxyfleet_pool_last_refresh_success_timestamp_seconds",
            &[("pool", &p.meta.name)],
            ended_ms as f64 / 1000.0,
        );
    }
    e.family(
        "proxyfleet_pool_last_round_timestamp_seconds",
        "gauge",
        "When the pool's newest revalidation round started (Unix seconds; 0: none yet).",
    );
    for p in pools {
        e.sample(
            "proxyfleet_pool_last_round_timestamp_seconds",
            &[("pool", &p.meta.name)],
            p.meta.last_round_ms as f64 / 1000.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{Counters, PoolMeta};

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
        let pools = [PoolSummary {
            meta: PoolMeta {
                name: "eu".into(),
                settings: None,
                revalidate_every: std::time::Duration::ZERO,
                last_round_ms: 1_700_000_000_000,
                round_job: None,
                version: 3,
            },
            live: 7,
            total: 9,
            files: String::new(),
        }];
        let m = Metrics {
            pools_refreshed_ms: [("eu".to_string(), 1_600_000_000_500)].into(),
            ..m
        };
        let page = render(&m, &pools);
        for line in [
            "proxyfleet_pool_live{pool=\"eu\"} 7\n",
            "proxyfleet_pool_members{pool=\"eu\"} 9\n",
            "proxyfleet_pool_last_refresh_success_timestamp_seconds{pool=\"eu\"} 1600000000.5\n",
            "proxyfleet_pool_last_round_timestamp_seconds{pool=\"eu\"} 1700000000\n",
        ] {
            assert!(page.contains(line), "{line} in {page}");
        }
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
