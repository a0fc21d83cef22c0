//! Faults blame the right thing: a coordinator stopped and started again, as a deployment does,
//! costs the chunks its workers held no attempt.

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, TempDir};
use proxyfleet_tests::sim::Farm;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_coordinator_restarts_charge_no_attempt() {
    // Black holes keep every chunk leased while the coordinator restarts under it.
    let farm = Farm::spawn([127, 0, 0, 1].into(), 0, 4, 0).await.unwrap();
    let lines: Vec<String> = farm
        .black_holes
        .iter()
        .map(|p| p.candidate_line())
        .collect();
    let listen = harness::quiet_port().to_string();
    let dir = TempDir::new("blame");
    let data = dir.path().join("data");
    let mut coordinator = CoordinatorProc::start_over(&listen, &data, &[]).await;
    let _worker = harness::worker(&coordinator.url, "w", &[], dir.path());
    let job_id = coordinator
        .submit(
            &lines,
            &[
                "--chunk-size",
                "1",
                "--timeout",
                "120s",
                "--max-attempts",
                "3",
            ],
        )
        .await;
    let client = coordinator.client().await;
    harness::wait_holding(&client, "w").await;

    // More clean restarts than a chunk has attempts.
    for _ in 0..4 {
        let status = coordinator.stop().await;
        assert!(status.success(), "{status}");
        coordinator = CoordinatorProc::start_over(&listen, &data, &[]).await;
        let client = coordinator.client().await;
        // The worker is back at work, unless the restart failed the job.
        harness::wait_for(
            "the worker back at work, or the job ended",
            harness::WAIT_LIMIT,
            || {
                let mut client = client.clone();
                let job_id = job_id.clone();
                async move {
                    let job = harness::job(&mut client, &job_id).await;
                    let holding = harness::workers(&mut client)
                        .await
                        .iter()
                        .any(|w| w.worker_id == "w" && !w.lease_ids.is_empty());
                    (holding || job.state != pb::JobState::Checking as i32).then_some(())
                }
            },
        )
        .await;
    }

    let mut client = coordinator.client().await;
    let job = harness::job(&mut client, &job_id).await;
    assert_eq!(job.state, pb::JobState::Checking as i32, "{job:?}");
    let progress = job.progress.as_ref().expect("progress");
    assert_eq!(
        (progress.reassignments, progress.chunks_failed),
        (0, 0),
        "{job:?}"
    );
    assert!(
        job.chunks.iter().all(|c| c.attempts == 0),
        "no chunk was charged for a restart: {:?}",
        job.chunks
    );
}
