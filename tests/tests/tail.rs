//! A job's tail does not wait on a frozen worker: while the worker holding the last leases is
//! stopped (for just under the lease TTL), an idle worker is leased their unchecked candidates
//! again, the job ends on it, and each candidate keeps one verdict.

use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc};
use proxyfleet_tests::sim::{Behavior, Farm, SimProxy};
use tokio::time::Instant;

const LEASE_TTL: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_ends_on_an_idle_worker_while_the_one_holding_its_last_leases_is_frozen() {
    // Fast proxies, and slow ones in every chunk: the first worker cannot finish before it is
    // frozen.
    let farm = Farm::spawn([127, 0, 0, 1].into(), 90, 0, 0).await.unwrap();
    let mut slow = Vec::new();
    for _ in 0..30 {
        slow.push(
            SimProxy::spawn(
                [127, 0, 0, 1].into(),
                Behavior::slow(Duration::from_millis(1500)),
            )
            .await
            .unwrap(),
        );
    }
    let mut lines = Vec::new();
    for (i, fast) in farm.working_lines().into_iter().enumerate() {
        lines.push(fast);
        if i % 3 == 2 {
            lines.push(slow[i / 3].candidate_line());
        }
    }
    assert_eq!(lines.len(), 120);
    let ttl = format!("{}s", LEASE_TTL.as_secs());
    let coordinator = CoordinatorProc::start(&["--lease-ttl", &ttl]).await;
    let frozen = coordinator.worker("frozen", &[]);
    let mut client = coordinator.client().await;
    harness::wait_for("the first worker", harness::WAIT_LIMIT, || {
        let mut client = client.clone();
        async move { (!harness::workers(&mut client).await.is_empty()).then_some(()) }
    })
    .await;
    let job_id = coordinator
        .submit(
            &lines,
            &["--chunk-size", "40", "--timeout", "3s", "--min-usable", "1"],
        )
        .await;
    harness::wait_holding(&client, "frozen").await;
    frozen.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let thaw = stopped + LEASE_TTL - Duration::from_secs(2);
    let idle = coordinator.worker("idle", &[]);

    let job = harness::wait_for("the job to end", LEASE_TTL, || {
        let mut client = client.clone();
        let job_id = job_id.clone();
        async move {
            let job = harness::job(&mut client, &job_id).await;
            (job.state >= pb::JobState::Succeeded as i32).then_some(job)
        }
    })
    .await;
    let ended = Instant::now();
    assert!(
        ended < thaw,
        "the job ended {:?} after the freeze, not before the thaw",
        ended - stopped
    );
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let progress = job.progress.clone().unwrap_or_default();
    assert!(progress.speculative_leases > 0, "{job:?}");
    assert_eq!(
        (progress.proxies_checked, progress.proxies_unchecked),
        (120, 0)
    );

    // The frozen worker wakes before its TTL and sends what it had: nothing is counted twice.
    tokio::time::sleep_until(thaw).await;
    frozen.signal(libc::SIGCONT);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let job = harness::job(&mut client, &job_id).await;
    let progress = job.progress.clone().unwrap_or_default();
    assert_eq!(progress.proxies_checked, 120, "{job:?}");
    let results = harness::results(&mut client, &job_id).await;
    assert_eq!(results.len(), 120);
    let mut proxies: Vec<&str> = results.iter().map(|r| r.proxy.as_str()).collect();
    proxies.sort_unstable();
    proxies.dedup();
    assert_eq!(proxies.len(), 120, "one verdict each");
    assert_eq!(results.iter().filter(|r| r.usable).count(), 120);
    let workers = harness::workers(&mut client).await;
    let accepted = |name: &str| {
        workers
            .iter()
            .find(|w| w.name == name)
            .map_or(0, |w| w.verdicts_accepted)
    };
    assert!(accepted("idle") > 0, "{workers:?}");
    drop(idle);
}
