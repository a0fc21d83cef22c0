//! The metrics endpoints of the coordinator and of a worker parse as Prometheus text, and their
//! counters match the job that ran; the pool's gauges show its live set and last refresh; the
//! Grafana dashboard in docker/grafana/ names only metrics that the programs serve.

use std::collections::BTreeSet;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, WAIT_LIMIT};
use proxyfleet_tests::sim::Farm;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_job_did() {
    let coordinator = CoordinatorProc::start(&["--metrics-listen", "127.0.0.1:0"]).await;
    let worker_metrics = harness::quiet_port();
    let _worker = coordinator.worker(
        "w",
        &[
            "--max-checks",
            "8",
            "--metrics-listen",
            &worker_metrics.to_string(),
        ],
    );
    let farm = Farm::spawn([127, 0, 0, 1].into(), 3, 0, 2).await.unwrap();
    let job_id = coordinator
        .submit(
            &farm.candidate_lines(),
            &["--timeout", "2s", "--chunk-size", "2"],
        )
        .await;
    let mut client = coordinator.client().await;
    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32);

    let page = harness::scrape(coordinator.metrics.expect("metrics address")).await;
    assert_eq!(
        harness::sample(&page, "proxyfleet_verdicts_total{usable=\"true\"}"),
        3.0
    );
    assert_eq!(
        harness::sample(&page, "proxyfleet_verdicts_total{usable=\"false\"}"),
        2.0
    );
    assert_eq!(
        harness::sample(&page, "proxyfleet_jobs{state=\"succeeded\"}"),
        1.0
    );
    assert_eq!(
        harness::sample(&page, "proxyfleet_chunks{state=\"done\"}"),
        3.0
    );
    assert_eq!(
        harness::sample(&page, "proxyfleet_leases_granted_total"),
        3.0
    );
    assert_eq!(
        harness::sample(&page, "proxyfleet_leases_completed_total"),
        3.0
    );
    assert_eq!(
        harness::sample(&page, "proxyfleet_leases_requeued_total"),
        0.0
    );
    assert_eq!(harness::sample(&page, "proxyfleet_workers_connected"), 1.0);
    // The job fed the default pool: its gauges show the live set (once committed) and when its
    // refresh succeeded.
    let coordinator_metrics = coordinator.metrics.expect("metrics address");
    let page = harness::wait_for("the pool's gauges", WAIT_LIMIT, || async move {
        let page = harness::scrape(coordinator_metrics).await;
        page.contains("proxyfleet_pool_live{pool=\"default\"} 3\n")
            .then_some(page)
    })
    .await;
    assert_eq!(
        harness::sample(&page, "proxyfleet_pool_members{pool=\"default\"}"),
        3.0
    );
    let refreshed = harness::sample(
        &page,
        "proxyfleet_pool_last_refresh_success_timestamp_seconds{pool=\"default\"}",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        refreshed > now - 600.0 && refreshed <= now + 1.0,
        "{refreshed} against {now}"
    );

    let page = harness::scrape(worker_metrics).await;
    assert_eq!(
        harness::sample(&page, "proxyfleet_worker_checks_total{reason=\"none\"}"),
        3.0
    );
    assert_eq!(
        harness::sample(&page, "proxyfleet_worker_checks_total{reason=\"refused\"}"),
        2.0
    );
    assert_eq!(
        harness::sample(&page, "proxyfleet_worker_check_duration_seconds_count"),
        5.0
    );
    assert_eq!(
        harness::sample(
            &page,
            "proxyfleet_worker_check_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        5.0
    );
    assert_eq!(
        harness::sample(&page, "proxyfleet_worker_checks_in_flight"),
        0.0
    );
    assert_eq!(
        harness::sample(&page, "proxyfleet_worker_sessions_total"),
        1.0
    );
}

/// The metric families a Prometheus page declares (`# TYPE name kind`).
fn families(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Every `proxyfleet_…` name in a PromQL expression.
fn names_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("proxyfleet_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_names_only_metrics_the_programs_serve() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docker/grafana/proxyfleet.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .expect("the dashboard parses");
    let mut wanted = BTreeSet::new();
    let mut pool_panels = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            pool_panels += usize::from(expr.contains("proxyfleet_pool_"));
            wanted.extend(names_in(expr));
        }
    }
    assert!(pool_panels >= 3, "per-pool gauges in the dashboard");

    let coordinator = CoordinatorProc::start(&["--metrics-listen", "127.0.0.1:0"]).await;
    let worker_metrics = harness::quiet_port();
    let _worker = coordinator.worker("w", &["--metrics-listen", &worker_metrics.to_string()]);
    let gateway_metrics = harness::quiet_port();
    let mut gateway = harness::spawn_cli(
        &coordinator.url,
        "gateway",
        &[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &gateway_metrics.to_string(),
        ],
        coordinator.dir.path(),
    );
    let line = gateway.next_line().await.unwrap_or_default();
    assert!(line.starts_with("listening gateway="), "{line}");
    let mut served = BTreeSet::new();
    for addr in [
        coordinator.metrics.expect("metrics address"),
        worker_metrics,
        gateway_metrics,
    ] {
        harness::wait_for("a metrics endpoint", WAIT_LIMIT, || async move {
            tokio::net::TcpStream::connect(addr).await.ok()
        })
        .await;
        served.extend(families(&harness::scrape(addr).await));
    }
    // A histogram's series are its family's name with a suffix.
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| {
            !["", "_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|family| served.contains(family))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard asks for {missing:?}, which no program serves; served: {served:?}"
    );
}
