//! The metrics endpoints of the coordinator and of a worker parse as Prometheus text, and their
//! counters match the job that ran.

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
