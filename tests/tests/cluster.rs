//! A coordinator and three worker processes through a few thousand candidates while one worker is
//! SIGKILLed and another frozen (SIGSTOP) past the lease TTL, then resumed.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, WAIT_LIMIT};
use proxyfleet_tests::sim::Farm;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_survives_a_killed_and_a_frozen_worker() {
    let farm = Farm::spawn([127, 0, 0, 1].into(), 30, 600, 2400)
        .await
        .unwrap();
    let lines = farm.candidate_lines();
    let coordinator = CoordinatorProc::start(&["--lease-ttl", "2s"]).await;
    let w1 = coordinator.worker("w1", &["--max-checks", "32"]);
    let w2 = coordinator.worker("w2", &["--max-checks", "32"]);
    let _w3 = coordinator.worker("w3", &["--max-checks", "32"]);
    let job_id = coordinator
        .submit(
            &lines,
            &[
                "--timeout",
                "2s",
                "--chunk-size",
                "50",
                "--min-usable",
                "30",
            ],
        )
        .await;
    let mut client = coordinator.client().await;

    harness::wait_holding(&client, "w1").await;
    w1.signal(libc::SIGKILL);

    // Frozen while its checks are in flight, so it wakes up with verdicts for expired leases.
    harness::wait_working(&client, "w2").await;
    w2.signal(libc::SIGSTOP);
    harness::wait_silent(&client, "w2").await;
    // Leave it frozen a little past the expiry, then let it send its late verdicts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    w2.signal(libc::SIGCONT);

    let watched = coordinator.cli(&["watch", &job_id]).await;
    assert_eq!(watched.code, 0, "watch: {watched:?}");
    assert!(watched.stderr.contains("SUCCEEDED"), "{watched:?}");

    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    let progress = job.progress.clone().unwrap();
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    assert_eq!(progress.proxies_total, lines.len() as u64);
    assert_eq!(progress.proxies_checked, lines.len() as u64);
    assert!(
        progress.reassignments >= 2,
        "the killed and the frozen worker's leases were reassigned: {progress:?}"
    );

    // Each candidate exactly once; the working ones usable, no other.
    let results = harness::results(&mut client, &job_id).await;
    assert_eq!(results.len(), lines.len());
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for r in &results {
        *seen.entry(r.proxy.as_str()).or_default() += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "a candidate appears twice");
    let expected: BTreeSet<String> = farm.working_lines().into_iter().collect();
    assert_eq!(
        seen.keys().map(|k| k.to_string()).collect::<BTreeSet<_>>(),
        lines.iter().cloned().collect()
    );
    let usable: BTreeSet<String> = results
        .iter()
        .filter(|r| r.usable)
        .map(|r| r.proxy.clone())
        .collect();
    assert_eq!(usable, expected);
    assert!(results.iter().all(|r| r.checked));
    for r in results.iter().filter(|r| !r.usable) {
        let reason = pb::Reason::try_from(r.reason).unwrap();
        assert!(
            matches!(reason, pb::Reason::Refused | pb::Reason::Timeout),
            "{r:?}"
        );
    }
    for r in results.iter().filter(|r| r.usable) {
        assert_eq!(r.exit_ip, "127.0.0.1", "{r:?}");
    }

    // The frozen worker woke up holding expired leases: its late verdicts were refused and counted.
    let refused = harness::wait_for(
        "the frozen worker's late verdicts to be refused",
        Duration::from_secs(30),
        || {
            let mut client = client.clone();
            let job_id = job_id.clone();
            async move {
                let p = harness::job(&mut client, &job_id).await.progress.unwrap();
                (p.stale_verdicts_refused > 0).then_some(p.stale_verdicts_refused)
            }
        },
    )
    .await;
    assert!(refused > 0);
    let done_counts: u64 = harness::job(&mut client, &job_id)
        .await
        .progress
        .unwrap()
        .proxies_checked;
    assert_eq!(
        done_counts,
        lines.len() as u64,
        "refused verdicts were not counted as checks"
    );
}
