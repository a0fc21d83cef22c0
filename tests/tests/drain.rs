//! A worker sent SIGTERM mid-chunk drains: it hands back (or finishes) its lease, no attempt is
//! charged, nothing is lost, and it exits 0.

use std::collections::HashSet;
use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, WAIT_LIMIT};
use proxyfleet_tests::sim::Farm;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_chunk_drains_without_charging_an_attempt() {
    // One chunk: 60 refused (instant) and 40 black holes (3 s each).
    let farm = Farm::spawn([127, 0, 0, 1].into(), 0, 40, 60).await.unwrap();
    let lines = farm.candidate_lines();
    let coordinator = CoordinatorProc::start(&["--lease-ttl", "10s"]).await;
    let job_id = coordinator
        .submit(
            &lines,
            &[
                "--timeout",
                "3s",
                "--chunk-size",
                "100",
                "--min-usable",
                "0",
            ],
        )
        .await;
    let mut client = coordinator.client().await;

    // A short grace: the worker must hand the lease back.
    let mut w1 = coordinator.worker("w1", &["--max-checks", "100", "--drain-grace", "1s"]);
    let mid_chunk = || {
        let mut client = client.clone();
        let job_id = job_id.clone();
        async move {
            let job = harness::job(&mut client, &job_id).await;
            let p = job.progress.unwrap();
            (p.proxies_checked >= 60 && p.chunks_leased == 1).then_some(p.proxies_checked)
        }
    };
    let checked_before = harness::wait_for("w1 to be mid-chunk", WAIT_LIMIT, mid_chunk).await;
    assert!(checked_before < 100, "the black holes are still in flight");
    w1.signal(libc::SIGTERM);
    let status = w1
        .wait(Duration::from_secs(30))
        .await
        .expect("w1 exits after its drain");
    assert_eq!(status.code(), Some(0), "log:\n{}", w1.log_text());

    let job = harness::job(&mut client, &job_id).await;
    let p = job.progress.unwrap();
    assert_eq!(job.state, pb::JobState::Checking as i32);
    assert_eq!(p.handed_back, 1, "{p:?}");
    assert_eq!(p.reassignments, 0, "{p:?}");
    assert_eq!(
        job.chunks[0].attempts, 0,
        "a drained hand-back costs no attempt"
    );
    assert_eq!(job.chunks[0].state, pb::ChunkState::Queued as i32);
    assert!(
        p.proxies_checked >= checked_before,
        "verdicts recorded before the hand-back stay"
    );

    // A long grace: the next worker finishes the chunk before exiting.
    let mut w2 = coordinator.worker("w2", &["--max-checks", "100", "--drain-grace", "60s"]);
    harness::wait_holding(&client, "w2").await;
    w2.signal(libc::SIGTERM);
    let status = w2
        .wait(Duration::from_secs(60))
        .await
        .expect("w2 exits after its drain");
    assert_eq!(status.code(), Some(0), "log:\n{}", w2.log_text());

    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    let p = job.progress.clone().unwrap();
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    assert_eq!((p.proxies_checked, p.proxies_total), (100, 100));
    assert_eq!((p.handed_back, p.reassignments), (1, 0), "{p:?}");
    assert_eq!(job.chunks[0].attempts, 0);
    let results = harness::results(&mut client, &job_id).await;
    let unique: HashSet<&str> = results.iter().map(|r| r.proxy.as_str()).collect();
    assert_eq!((results.len(), unique.len()), (100, 100));
    assert!(results.iter().all(|r| r.checked && !r.usable));
}

/// A SIGTERM sent the moment the coordinator says where it listens stops it cleanly (exit 0):
/// its handlers are in place before it says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_right_after_startup_stops_cleanly() {
    for _ in 0..3 {
        let mut coordinator = CoordinatorProc::start(&[]).await;
        let status = coordinator.stop().await;
        assert_eq!(
            status.code(),
            Some(0),
            "killed by the signal instead of stopping; log:\n{}",
            coordinator.proc.log_text()
        );
    }
}
