//! The stale-verdict count means what it says: verdicts a worker checked for a lease that was no
//! longer its own, each counted once. A worker reconnecting to a restarted coordinator again and
//! again, with nothing new to report, adds nothing to it, nor does one whose connection broke
//! after its verdicts were recorded but before it heard so. A worker frozen past the lease TTL,
//! then resumed, or cut off past it, has every verdict it checked for its expired lease refused
//! and counted, those lost with its connection included.

use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_proto::v1::coordinator_client::CoordinatorClient;
use proxyfleet_tests::harness::{self, CoordinatorProc, Proc, TempDir, WAIT_LIMIT};
use proxyfleet_tests::relay::{Direction, Relay};
use proxyfleet_tests::sim::{Behavior, Farm, SimProxy};
use tonic::transport::Channel;

/// Jobs here: checks that never time out on their own, small chunks in the list's order, and no
/// usable proxy needed.
const JOB_OPTIONS: &[&str] = &[
    "--timeout",
    "5m",
    "--chunk-size",
    "5",
    "--keep-order",
    "--min-usable",
    "0",
];

/// A job's progress now.
async fn progress(client: &mut CoordinatorClient<Channel>, job_id: &str) -> pb::JobProgress {
    harness::job(client, job_id)
        .await
        .progress
        .expect("a job has progress")
}

/// Waits until the worker `name` has a session after `previous` (a session id; 0 for any) that
/// holds a lease and has spoken at least `after` past its hello: whatever the worker sent on
/// connecting has been handled by then, since a session's messages are handled in order.
async fn settled(client: &CoordinatorClient<Channel>, name: &str, previous: u64, after: Duration) {
    harness::wait_for(&format!("{name} to settle in"), WAIT_LIMIT, || {
        let mut client = client.clone();
        async move {
            harness::workers(&mut client)
                .await
                .iter()
                .any(|w| {
                    w.worker_id == name
                        && w.session_id > previous
                        && !w.lease_ids.is_empty()
                        && w.connected_ms.saturating_sub(w.last_seen_ms_ago)
                            >= after.as_millis() as u64
                })
                .then_some(())
        }
    })
    .await
}

/// The id of the worker `name`'s session.
async fn session_of(client: &CoordinatorClient<Channel>, name: &str) -> u64 {
    let mut client = client.clone();
    harness::workers(&mut client)
        .await
        .iter()
        .find(|w| w.worker_id == name)
        .map(|w| w.session_id)
        .expect("the worker is connected")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_recorded_verdicts_adds_no_stale_ones() {
    // Four chunks, each of four refused addresses (answered at once) and one black hole (which
    // holds its check for the whole test): every chunk stays leased with verdicts recorded.
    let farm = Farm::spawn([127, 0, 0, 1].into(), 0, 4, 16).await.unwrap();
    let mut lines = Vec::new();
    for (i, black_hole) in farm.black_holes.iter().enumerate() {
        lines.extend(
            farm.refused[i * 4..i * 4 + 4]
                .iter()
                .map(|addr| format!("http://{addr}")),
        );
        lines.push(black_hole.candidate_line());
    }
    let listen = harness::quiet_port().to_string();
    let dir = TempDir::new("stale");
    let data = dir.path().join("data");
    // A short TTL for heartbeats every second.
    let options = ["--lease-ttl", "3s"];
    let mut coordinator = CoordinatorProc::start_over(&listen, &data, &options).await;
    let _worker = harness::worker(&coordinator.url, "w1", &["--max-checks", "64"], dir.path());
    let job_id = coordinator.submit(&lines, JOB_OPTIONS).await;
    let mut client = coordinator.client().await;
    harness::wait_for("the refused addresses' verdicts", WAIT_LIMIT, || {
        let mut client = client.clone();
        let job_id = job_id.clone();
        async move {
            let p = progress(&mut client, &job_id).await;
            (p.proxies_checked == 16 && p.chunks_leased == 4).then_some(())
        }
    })
    .await;
    assert_eq!(
        progress(&mut client, &job_id).await.stale_verdicts_refused,
        0
    );

    // A job of the same pool waits for this one; answering its submission waits until every
    // change before it is durable, the verdicts above included.
    coordinator
        .submit(&lines[..1], &["--min-usable", "0"])
        .await;

    // Killed, so that a restart charges no attempt.
    for restart in 1..=5 {
        coordinator.crash().await;
        coordinator = CoordinatorProc::start_over(&listen, &data, &options).await;
        client = coordinator.client().await;
        settled(&client, "w1", 0, Duration::from_millis(1500)).await;
        let p = progress(&mut client, &job_id).await;
        assert_eq!(
            (p.stale_verdicts_refused, p.proxies_checked),
            (0, 16),
            "after restart {restart}, nothing new was checked and nothing is stale: {p:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_checked_past_the_lease_ttl_are_refused_and_counted() {
    // One chunk: two refused addresses (answered at once, so the worker is seen checking) and
    // eight black holes, whose checks time out after 3 s.
    let farm = Farm::spawn([127, 0, 0, 1].into(), 0, 8, 2).await.unwrap();
    let mut lines: Vec<String> = farm
        .refused
        .iter()
        .map(|addr| format!("http://{addr}"))
        .collect();
    lines.extend(farm.black_holes.iter().map(|p| p.candidate_line()));
    let coordinator = CoordinatorProc::start(&["--lease-ttl", "2s"]).await;
    let worker = coordinator.worker("w1", &["--max-checks", "32"]);
    let job_id = coordinator
        .submit(
            &lines,
            &[
                "--timeout",
                "3s",
                "--chunk-size",
                "10",
                "--keep-order",
                "--min-usable",
                "0",
            ],
        )
        .await;
    let mut client = coordinator.client().await;

    // Frozen with the black holes' checks in flight; their lease expires meanwhile.
    harness::wait_for("the refused addresses' verdicts", WAIT_LIMIT, || {
        let mut client = client.clone();
        let job_id = job_id.clone();
        async move { (progress(&mut client, &job_id).await.proxies_checked == 2).then_some(()) }
    })
    .await;
    worker.signal(libc::SIGSTOP);
    harness::wait_silent(&client, "w1").await;
    assert_eq!(progress(&mut client, &job_id).await.proxies_checked, 2);
    // Past the checks' timeout too: resumed, the worker ends them at once, for a lease it lost.
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.signal(libc::SIGCONT);

    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    let p = job.progress.clone().expect("a job has progress");
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    assert_eq!(
        (p.proxies_checked, p.stale_verdicts_refused, p.reassignments),
        (10, 8, 1),
        "each black hole checked once for the job, and once late: {p:?}"
    );
}

/// Proxies that answer after 2 s: a worker is seen holding their lease well before its verdicts.
async fn slow_proxies(n: usize) -> Vec<SimProxy> {
    let mut proxies = Vec::new();
    for _ in 0..n {
        let proxy = SimProxy::spawn(
            [127, 0, 0, 1].into(),
            Behavior::slow(Duration::from_secs(2)),
        );
        proxies.push(proxy.await.unwrap());
    }
    proxies
}

/// A worker named w1 connecting through `relay`, with its metrics endpoint.
fn worker_through(relay: &Relay, coordinator: &CoordinatorProc) -> (Proc, std::net::SocketAddr) {
    let metrics = harness::quiet_port();
    let worker = harness::worker(
        &relay.url(),
        "w1",
        &[
            "--max-checks",
            "16",
            "--metrics-listen",
            &metrics.to_string(),
        ],
        coordinator.dir.path(),
    );
    (worker, metrics)
}

/// Waits until the worker's metrics endpoint shows `name` at `value`.
async fn worker_shows(metrics: std::net::SocketAddr, name: &str, value: f64) {
    harness::wait_for(
        &format!("the worker to show {name} {value}"),
        WAIT_LIMIT,
        || async move {
            let page = tokio::net::TcpStream::connect(metrics).await.ok()?;
            drop(page);
            (harness::sample(&harness::scrape(metrics).await, name) == value).then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_whose_confirmation_was_lost_are_not_counted_twice() {
    // One chunk: four slow proxies and a black hole that keeps it leased.
    let slow = slow_proxies(4).await;
    let farm = Farm::spawn([127, 0, 0, 1].into(), 0, 1, 0).await.unwrap();
    let mut lines: Vec<String> = slow.iter().map(SimProxy::candidate_line).collect();
    lines.push(farm.black_holes[0].candidate_line());
    let coordinator = CoordinatorProc::start(&["--lease-ttl", "3s"]).await;
    let relay = Relay::spawn(coordinator.grpc).await.unwrap();
    let (_worker, metrics) = worker_through(&relay, &coordinator);
    let job_id = coordinator.submit(&lines, JOB_OPTIONS).await;
    let mut client = coordinator.client().await;

    // The worker has its lease; from now on nothing the coordinator says reaches it.
    worker_shows(metrics, "proxyfleet_worker_leases", 1.0).await;
    relay.lose(Direction::Downstream);
    harness::wait_for(
        "the slow proxies' verdicts to be recorded",
        WAIT_LIMIT,
        || {
            let mut client = client.clone();
            let job_id = job_id.clone();
            async move { (progress(&mut client, &job_id).await.proxies_checked == 4).then_some(()) }
        },
    )
    .await;
    // The connection breaks before the worker heard they were recorded: it sends them again.
    let cut_off = session_of(&client, "w1").await;
    relay.cut();
    settled(&client, "w1", cut_off, Duration::from_millis(1500)).await;
    let p = progress(&mut client, &job_id).await;
    assert_eq!(
        (p.proxies_checked, p.stale_verdicts_refused),
        (4, 0),
        "recorded verdicts sent again are neither recorded nor counted again: {p:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_lost_in_a_partition_are_sent_again_and_counted_once() {
    let slow = slow_proxies(4).await;
    let lines: Vec<String> = slow.iter().map(SimProxy::candidate_line).collect();
    let coordinator = CoordinatorProc::start(&["--lease-ttl", "2s"]).await;
    let relay = Relay::spawn(coordinator.grpc).await.unwrap();
    let (_worker, metrics) = worker_through(&relay, &coordinator);
    let job_id = coordinator
        .submit(
            &lines,
            &["--timeout", "10s", "--chunk-size", "4", "--min-usable", "0"],
        )
        .await;
    let mut client = coordinator.client().await;

    // The worker has its lease; from now on nothing it sends reaches the coordinator, which
    // takes the lease back once the worker is silent past the TTL.
    worker_shows(metrics, "proxyfleet_worker_leases", 1.0).await;
    relay.lose(Direction::Upstream);
    harness::wait_for("the cut-off worker to be seen silent", WAIT_LIMIT, || {
        let mut client = client.clone();
        async move {
            harness::workers(&mut client)
                .await
                .iter()
                .any(|w| w.worker_id == "w1" && w.status == "silent")
                .then_some(())
        }
    })
    .await;
    // Its checks end meanwhile, and their verdicts go into the partition.
    worker_shows(
        metrics,
        "proxyfleet_worker_check_duration_seconds_count",
        4.0,
    )
    .await;
    assert_eq!(progress(&mut client, &job_id).await.proxies_checked, 0);
    relay.cut();

    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    let p = job.progress.clone().expect("a job has progress");
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    assert_eq!(
        (
            p.proxies_checked,
            p.proxies_usable,
            p.stale_verdicts_refused
        ),
        (4, 4, 4),
        "the lost verdicts came late, once each; the proxies were checked again: {p:?}"
    );
    let results = harness::results(&mut client, &job_id).await;
    assert_eq!(results.len(), 4);
    assert!(results.iter().all(|r| r.checked && r.usable));
}
