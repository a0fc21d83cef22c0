//! The coordinator survives its own crash: killed with SIGKILL twice at random points of a job
//! over real worker processes and started again over the same data dir, it finishes the job with
//! every candidate exactly once and the same verdicts as a run without crashes. A corrupt data
//! dir stops it with a clear message instead of starting empty over it.

use std::collections::BTreeMap;
use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, TempDir, WAIT_LIMIT};
use proxyfleet_tests::sim::Farm;

const OPTIONS: &[&str] = &[
    "--timeout",
    "1s",
    "--chunk-size",
    "10",
    "--min-usable",
    "10",
];

/// Each candidate's verdict as a user reads it: usable, and why not.
async fn verdicts(coordinator: &CoordinatorProc, job_id: &str) -> BTreeMap<String, (bool, i32)> {
    let mut client = coordinator.client().await;
    let job = harness::wait_terminal(&mut client, job_id, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let results = harness::results(&mut client, job_id).await;
    let map: BTreeMap<String, (bool, i32)> = results
        .iter()
        .map(|r| (r.proxy.clone(), (r.usable, r.reason)))
        .collect();
    assert_eq!(map.len(), results.len(), "each candidate exactly once");
    assert!(results.iter().all(|r| r.checked), "every candidate checked");
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_survives_two_coordinator_crashes() {
    let farm = Farm::spawn([127, 0, 0, 1].into(), 10, 60, 330)
        .await
        .unwrap();
    let lines = farm.candidate_lines();

    // The reference: the same list without crashes.
    let reference = {
        let coordinator = CoordinatorProc::start(&[]).await;
        let _worker = coordinator.worker("ref", &["--max-checks", "16"]);
        let job_id = coordinator.submit(&lines, OPTIONS).await;
        verdicts(&coordinator, &job_id).await
    };

    let listen = harness::quiet_port().to_string();
    let dir = TempDir::new("recovery");
    let data = dir.path().join("data");
    let mut coordinator = CoordinatorProc::start_over(&listen, &data, &[]).await;
    let url = coordinator.url.clone();
    let _w1 = harness::worker(&url, "w1", &["--max-checks", "8"], dir.path());
    let _w2 = harness::worker(&url, "w2", &["--max-checks", "8"], dir.path());
    let job_id = coordinator.submit(&lines, OPTIONS).await;
    for crash in 0..2 {
        // A random point of the job: some chunks done, others leased or queued.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..1500))).await;
        coordinator.crash().await;
        // What was durable when it died: the verdict rows in its store. Verdicts it had
        // recorded but not committed were never acknowledged, and their workers send them again.
        let durable: u64 = {
            let db = rusqlite::Connection::open(data.join("proxyfleet.db")).unwrap();
            db.query_row(
                "SELECT count(*) FROM verdicts WHERE job_id = ?1",
                [&job_id],
                |r| r.get::<_, i64>(0),
            )
            .unwrap() as u64
        };
        coordinator = CoordinatorProc::start_over(&listen, &data, &[]).await;
        let mut client = coordinator.client().await;
        let after = harness::job(&mut client, &job_id).await;
        assert!(
            after.progress.as_ref().unwrap().proxies_checked >= durable,
            "crash {crash}: the {durable} durable verdicts survive ({after:?})"
        );
    }
    let recovered = verdicts(&coordinator, &job_id).await;
    assert_eq!(
        recovered, reference,
        "the same verdicts as a run without crashes"
    );

    // Finished jobs stay readable after a restart, results and all.
    coordinator.crash().await;
    let coordinator = CoordinatorProc::start_over(&listen, &data, &[]).await;
    let mut client = coordinator.client().await;
    let job = harness::job(&mut client, &job_id).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32);
    assert_eq!(
        harness::results(&mut client, &job_id).await.len(),
        lines.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_data_dir_stops_the_coordinator_with_a_clear_message() {
    let dir = TempDir::new("corrupt");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("proxyfleet.db"), vec![0x42; 16384]).unwrap();
    let data_arg = data.to_str().unwrap();
    let stderr = harness::coordinator_refuses(&[
        "--listen",
        "127.0.0.1:0",
        "--judge-listen",
        "127.0.0.1:0",
        "--data-dir",
        data_arg,
    ])
    .await;
    assert!(
        stderr.contains("proxyfleet.db") && stderr.contains("corrupt"),
        "{stderr}"
    );
    assert!(stderr.contains("will not start over it"), "{stderr}");
    // The file is left as it was.
    assert_eq!(
        std::fs::read(data.join("proxyfleet.db")).unwrap(),
        vec![0x42; 16384]
    );
}
