//! Memory follows the jobs at work, not history: a coordinator holding many ended jobs restarts
//! small, and still serves every row of its oldest job, from the store.

use std::collections::BTreeSet;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, TempDir, WAIT_LIMIT};

const JOBS: usize = 60;
const CANDIDATES: usize = 20_000;
/// The most the restarted coordinator may ever have held in memory (VmHWM).
const RESTART_LIMIT_MB: f64 = 80.0;

/// Peak and current resident memory of a process, in MB.
fn memory_mb(pid: i32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Reads a job's results: every page, or the followed stream.
async fn read_results(
    coordinator: &CoordinatorProc,
    job_id: &str,
    follow: bool,
) -> Vec<pb::ProxyResult> {
    let mut client = coordinator.client().await;
    let mut stream = client
        .get_results(pb::GetResultsRequest {
            job_id: job_id.to_string(),
            usable_only: false,
            follow,
        })
        .await
        .expect("GetResults")
        .into_inner();
    let mut rows = Vec::new();
    while let Some(page) = tokio::time::timeout(WAIT_LIMIT, stream.message())
        .await
        .expect("a results page in time")
        .expect("a results page")
    {
        rows.extend(page.results);
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_ended_jobs_restart_small_and_the_oldest_still_reads_whole() {
    let dir = TempDir::new("memory");
    let data = dir.path().join("data");
    let mut coordinator = CoordinatorProc::start_over("127.0.0.1:0", &data, &[]).await;
    // Workers that answer at once: what is measured is the coordinator's memory, not checks.
    let _workers: Vec<_> = (0..2)
        .map(|i| {
            coordinator.worker(
                &format!("w{i}"),
                &["--instant-checks", "--max-checks", "4096"],
            )
        })
        .collect();
    let lines: Vec<String> = (0..CANDIDATES)
        .map(|i| {
            format!(
                "127.{}.{}.1:{}",
                1 + i / 60_000,
                (i / 250) % 240,
                1000 + i % 250
            )
        })
        .collect();
    assert_eq!(
        lines.iter().collect::<BTreeSet<_>>().len(),
        CANDIDATES,
        "distinct candidates"
    );
    // One pool: the jobs run one after another, as a coordinator refreshing on a schedule does.
    let mut jobs = Vec::new();
    for _ in 0..JOBS {
        jobs.push(
            coordinator
                .submit(&lines, &["--min-usable", "0", "--chunk-size", "500"])
                .await,
        );
    }
    let mut client = coordinator.client().await;
    for job_id in &jobs {
        let job = harness::wait_terminal(&mut client, job_id, WAIT_LIMIT * 4).await;
        let progress = job.progress.clone().expect("progress");
        assert_eq!(
            (progress.proxies_total, progress.proxies_checked),
            (CANDIDATES as u64, CANDIDATES as u64),
            "{job:?}"
        );
    }
    let (running_peak, running_now) = memory_mb(coordinator.proc.pid());
    let status = coordinator.stop().await;
    assert!(status.success(), "{status}");

    let coordinator = CoordinatorProc::start_over("127.0.0.1:0", &data, &[]).await;
    let mut client = coordinator.client().await;
    // Every job is back, ended, with its counts.
    let listed = client
        .list_jobs(pb::ListJobsRequest {})
        .await
        .expect("ListJobs")
        .into_inner()
        .jobs;
    assert_eq!(listed.len(), JOBS);
    let oldest = &jobs[0];
    let job = harness::job(&mut client, oldest).await;
    assert_eq!(
        job.progress.as_ref().map(|p| p.proxies_checked),
        Some(CANDIDATES as u64),
        "{job:?}"
    );
    // The oldest job's rows, paged and followed, each candidate once with its verdict.
    for follow in [false, true] {
        let rows = read_results(&coordinator, oldest, follow).await;
        assert_eq!(rows.len(), CANDIDATES, "follow: {follow}");
        let distinct: BTreeSet<&str> = rows.iter().map(|r| r.proxy.as_str()).collect();
        assert_eq!(distinct.len(), CANDIDATES, "follow: {follow}");
        assert!(rows.iter().all(|r| r.checked), "every row has its verdict");
    }
    let (restart_peak, restart_now) = memory_mb(coordinator.proc.pid());
    eprintln!(
        "coordinator memory: running with {JOBS} ended jobs of {CANDIDATES}: peak {running_peak:.1} MB, \
         now {running_now:.1} MB; after a restart and reading the oldest job: peak \
         {restart_peak:.1} MB, now {restart_now:.1} MB"
    );
    assert!(
        restart_peak < RESTART_LIMIT_MB,
        "the restarted coordinator peaked at {restart_peak:.1} MB (limit {RESTART_LIMIT_MB} MB)"
    );
}
