//! A proxy that kills every worker that checks it is found and set aside: its chunk is cut in
//! halves until it is alone, it ends `poison`, every other candidate is checked, and the job ends.

use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, Crew};
use proxyfleet_tests::poison::PoisonProxy;
use proxyfleet_tests::sim::Farm;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_kills_its_checkers_ends_poison_and_the_job_goes_on() {
    let farm = Farm::spawn([127, 0, 0, 1].into(), 99, 0, 0).await.unwrap();
    let poison = PoisonProxy::spawn().await.unwrap();
    let mut lines = farm.working_lines();
    lines.insert(37, poison.candidate_line());
    let coordinator = CoordinatorProc::start(&[]).await;
    let mut crew = Crew::start(&coordinator.url, "w", 2, &[], coordinator.dir.path());
    let job_id = coordinator
        .submit(
            &lines,
            &[
                "--chunk-size",
                "100",
                "--max-attempts",
                "3",
                "--min-usable",
                "1",
            ],
        )
        .await;
    let mut client = coordinator.client().await;
    // Killed workers come back, as a supervisor would bring them.
    let started = tokio::time::Instant::now();
    let job = loop {
        crew.tend().await;
        let job = harness::job(&mut client, &job_id).await;
        if job.state >= pb::JobState::Succeeded as i32 {
            break job;
        }
        assert!(
            started.elapsed() < harness::WAIT_LIMIT,
            "the job did not end: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let progress = job.progress.clone().unwrap_or_default();
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let results = harness::results(&mut client, &job_id).await;
    assert_eq!(results.len(), 100);
    let poisoned: Vec<&pb::ProxyResult> = results
        .iter()
        .filter(|r| r.reason == pb::Reason::Poison as i32)
        .collect();
    assert_eq!(poisoned.len(), 1, "{poisoned:?}");
    assert_eq!(poisoned[0].proxy, poison.candidate_line());
    assert!(!poisoned[0].checked);
    let usable = results.iter().filter(|r| r.usable).count();
    assert_eq!(usable, 99, "every other candidate was checked: {results:?}");
    assert_eq!(
        (
            progress.proxies_poison,
            progress.proxies_unchecked,
            progress.proxies_checked
        ),
        (1, 1, 99)
    );
    assert!(job.reason.contains("poison"), "{}", job.reason);
    // Every loss of the poison candidate killed a worker, and not many more than it takes to
    // narrow a chunk of 100 down to one (3 attempts whole, 7 halvings, 3 attempts alone, and a
    // few deaths holding two pieces, which charge neither).
    let kills = poison.kills();
    assert!((3..=20).contains(&kills), "{kills} workers killed");
}
