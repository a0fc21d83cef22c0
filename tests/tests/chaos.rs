//! Chaos: a job of 48,503 candidates on 4 workers survives 15 faults (10 worker SIGKILLs, 3
//! SIGSTOPs past the lease TTL, 2 coordinator SIGKILLs) with every candidate checked exactly
//! once, no chunk failed and the job SUCCEEDED; three runs, since faults land differently each
//! time.

use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, Crew, TempDir};
use proxyfleet_tests::sim::Farm;
use tokio::time::Instant;

const CANDIDATES: usize = 48_503;
const WORKING: usize = 100;
/// Each holds a check slot for the whole check timeout: 1,000 × 6 s over 256 slots keeps the
/// job checking for 23 s at the very least, long after the last fault.
const BLACK_HOLES: usize = 1_000;
const LEASE_TTL: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillWorker,
    FreezeWorker,
    KillCoordinator,
}

/// 10 worker kills, 3 freezes, 2 coordinator kills, interleaved.
const FAULTS: [Fault; 15] = {
    use Fault::*;
    [
        KillWorker,
        FreezeWorker,
        KillWorker,
        KillWorker,
        KillCoordinator,
        KillWorker,
        FreezeWorker,
        KillWorker,
        KillWorker,
        KillWorker,
        KillCoordinator,
        KillWorker,
        FreezeWorker,
        KillWorker,
        KillWorker,
    ]
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_candidate_is_checked_once_through_fifteen_faults_three_times() {
    harness::raise_fd_limit();
    let farm = Farm::spawn(
        [127, 0, 0, 1].into(),
        WORKING,
        BLACK_HOLES,
        CANDIDATES - WORKING - BLACK_HOLES,
    )
    .await
    .unwrap();
    let mut lines = farm.candidate_lines();
    assert_eq!(lines.len(), CANDIDATES);
    for run in 1..=3 {
        // Black holes spread over the chunks differently each run.
        fastrand::shuffle(&mut lines);
        chaos_run(run, &lines).await;
    }
}

async fn chaos_run(run: u32, lines: &[String]) {
    let dir = TempDir::new("chaos");
    let data = dir.path().join("data");
    let listen = harness::quiet_port().to_string();
    let ttl = format!("{}s", LEASE_TTL.as_secs());
    let extra = ["--lease-ttl", ttl.as_str()];
    let mut coordinator = Some(CoordinatorProc::start_over(&listen, &data, &extra).await);
    let url = coordinator.as_ref().unwrap().url.clone();
    let mut crew = Crew::start(
        &url,
        &format!("chaos{run}-"),
        4,
        &["--max-checks", "64"],
        dir.path(),
    );
    let job_id = coordinator
        .as_ref()
        .unwrap()
        .submit(lines, &["--timeout", "6s", "--min-usable", "1"])
        .await;

    // Workers frozen now, and when each thaws.
    let mut frozen: Vec<(usize, Instant)> = Vec::new();
    let started = Instant::now();
    let mut faults = FAULTS.iter().enumerate().peekable();
    let mut next_fault = started + Duration::from_millis(1500);
    let mut next_report = started;
    let job = loop {
        let now = Instant::now();
        for (i, _) in frozen.iter().filter(|(_, thaw)| *thaw <= now) {
            crew.workers[*i].signal(libc::SIGCONT);
        }
        frozen.retain(|(_, thaw)| *thaw > now);
        crew.tend().await;
        if coordinator.is_none() {
            coordinator = Some(CoordinatorProc::start_over(&listen, &data, &extra).await);
        }
        let mut client = coordinator.as_ref().unwrap().client().await;
        let job = harness::job(&mut client, &job_id).await;
        if job.state >= pb::JobState::Succeeded as i32 {
            break job;
        }
        if now >= next_report {
            let p = job.progress.clone().unwrap_or_default();
            eprintln!(
                "run {run}: {:?}: {} of {} checked, chunks {} queued {} leased {} done",
                started.elapsed(),
                p.proxies_checked,
                p.proxies_total,
                p.chunks_queued,
                p.chunks_leased,
                p.chunks_done
            );
            next_report = now + Duration::from_secs(10);
        }
        assert!(
            started.elapsed() < Duration::from_secs(200),
            "run {run}: the job did not end: {job:?}"
        );
        if now >= next_fault
            && let Some((n, fault)) = faults.next()
        {
            // Frozen workers are left to thaw; any other may be hit.
            let awake: Vec<usize> = (0..crew.workers.len())
                .filter(|i| frozen.iter().all(|(f, _)| f != i))
                .collect();
            let victim = awake[fastrand::usize(..awake.len())];
            match fault {
                Fault::KillWorker => crew.workers[victim].signal(libc::SIGKILL),
                Fault::FreezeWorker => {
                    crew.workers[victim].signal(libc::SIGSTOP);
                    frozen.push((victim, now + LEASE_TTL + Duration::from_secs(1)));
                }
                Fault::KillCoordinator => coordinator.take().unwrap().crash().await,
            }
            eprintln!(
                "run {run}: fault {} ({fault:?}) at {:?}",
                n + 1,
                started.elapsed()
            );
            next_fault = now + Duration::from_millis(1200);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        faults.peek().is_none(),
        "run {run}: the job ended before every fault was injected: {job:?}"
    );
    for (i, _) in &frozen {
        crew.workers[*i].signal(libc::SIGCONT);
    }

    let progress = job.progress.clone().unwrap_or_default();
    assert_eq!(
        job.state,
        pb::JobState::Succeeded as i32,
        "run {run}: {job:?}"
    );
    assert_eq!(
        (
            progress.proxies_total,
            progress.proxies_checked,
            progress.proxies_unchecked,
            progress.proxies_poison,
            progress.chunks_failed,
        ),
        (CANDIDATES as u64, CANDIDATES as u64, 0, 0, 0),
        "run {run}: {job:?}"
    );
    let mut client = coordinator.as_ref().unwrap().client().await;
    let results = harness::results(&mut client, &job_id).await;
    assert_eq!(results.len(), CANDIDATES, "run {run}");
    let mut proxies: Vec<&str> = results.iter().map(|r| r.proxy.as_str()).collect();
    proxies.sort_unstable();
    proxies.dedup();
    assert_eq!(proxies.len(), CANDIDATES, "run {run}: each candidate once");
    let unchecked: Vec<&pb::ProxyResult> = results.iter().filter(|r| !r.checked).collect();
    assert!(
        unchecked.is_empty(),
        "run {run}: {} unchecked: {:?}",
        unchecked.len(),
        &unchecked[..unchecked.len().min(5)]
    );
    assert_eq!(
        results.iter().filter(|r| r.usable).count(),
        WORKING,
        "run {run}: every working proxy found"
    );
    eprintln!(
        "run {run}: SUCCEEDED in {:?}; {} reassignments, {} stale and {} duplicate verdicts refused, {} backup leases, {} worker restarts",
        started.elapsed(),
        progress.reassignments,
        progress.stale_verdicts_refused,
        progress.duplicate_verdicts_refused,
        progress.speculative_leases,
        crew.restarts
    );
}
