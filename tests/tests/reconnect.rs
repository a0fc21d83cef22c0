//! Workers reconnect by themselves: one started before its coordinator, and through a coordinator
//! killed with SIGKILL and started again, keeps serving jobs and still drains on SIGTERM.

use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, TempDir, WAIT_LIMIT};
use proxyfleet_tests::sim::Farm;

async fn connected(coordinator: &CoordinatorProc, name: &str) {
    let client = coordinator.client().await;
    harness::wait_for(&format!("{name} to connect"), WAIT_LIMIT, || {
        let mut client = client.clone();
        async move {
            harness::workers(&mut client)
                .await
                .iter()
                .any(|w| w.worker_id == name)
                .then_some(())
        }
    })
    .await;
}

async fn run_job(coordinator: &CoordinatorProc, farm: &Farm) {
    let job_id = coordinator
        .submit(
            &farm.candidate_lines(),
            &["--timeout", "1s", "--chunk-size", "5", "--min-usable", "3"],
        )
        .await;
    let mut client = coordinator.client().await;
    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_rides_out_coordinator_restarts() {
    let farm = Farm::spawn([127, 0, 0, 1].into(), 3, 2, 15).await.unwrap();
    let listen = harness::quiet_port().to_string();
    let logs = TempDir::new("reconnect");
    let mut worker = harness::worker(
        &format!("http://{listen}"),
        "w1",
        &["--max-checks", "16"],
        logs.path(),
    );

    // Nothing listens yet: the worker keeps retrying with backoff.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        worker.wait(Duration::from_millis(10)).await.is_none(),
        "the worker must not give up"
    );

    let first = CoordinatorProc::start_on(&listen, &[]).await;
    connected(&first, "w1").await;
    run_job(&first, &farm).await;

    first.crash().await;
    let second = CoordinatorProc::start_on(&listen, &[]).await;
    connected(&second, "w1").await;
    run_job(&second, &farm).await;

    worker.signal(libc::SIGTERM);
    let status = worker
        .wait(Duration::from_secs(30))
        .await
        .expect("the worker exits after draining");
    assert_eq!(status.code(), Some(0), "log:\n{}", worker.log_text());
}
