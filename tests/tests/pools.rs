//! The living pool: a refresh's usable proxies join their pool; revalidation rounds check the live
//! set again through the fleet and take out a proxy that fails K times in a row; a later refresh
//! brings it back; WatchPool followers and the pool's files see each change once; GetPool,
//! WatchPool (from grpcurl), the HTTP API (from Python's urllib) and the CLI serve the same set
//! behind the client token; the pool survives a kill -9; rounds keep their interval while a
//! refresh of 100,000 candidates runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, TempDir, WAIT_LIMIT, grpcurl, run};
use proxyfleet_tests::sim::{Behavior, Farm, SimProxy};

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A pool's members that pass `filter`, live ones only unless the filter says otherwise.
async fn get_pool(
    client: &mut pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>,
    pool: &str,
    filter: pb::PoolFilter,
) -> pb::Pool {
    client
        .get_pool(pb::GetPoolRequest {
            pool: pool.into(),
            filter: Some(filter),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn everyone() -> pb::PoolFilter {
    pb::PoolFilter {
        include_dead: true,
        ..Default::default()
    }
}

fn proxies(pool: &pb::Pool) -> BTreeSet<String> {
    pool.members.iter().map(|m| m.proxy.clone()).collect()
}

/// Runs a refresh of `lines` into `pool` and waits until it SUCCEEDED.
async fn refresh(coordinator: &CoordinatorProc, lines: &[String], extra: &[&str]) -> String {
    let mut options = vec!["--timeout", "5s", "--min-usable", "1"];
    options.extend_from_slice(extra);
    let job_id = coordinator.submit(lines, &options).await;
    let mut client = coordinator.client().await;
    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    job_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_proxy_leaves_the_live_set_and_a_later_refresh_brings_it_back() {
    const EVERY_MS: u64 = 1_000;
    const MAX_FAILURES: u64 = 2;
    let mut farm = Farm::spawn([127, 0, 0, 1].into(), 4, 0, 0).await.unwrap();
    let lines = farm.working_lines();
    let victim = lines[0].clone();
    let coordinator =
        CoordinatorProc::start(&["--revalidate-every", "1s", "--max-failures", "2"]).await;
    let _worker = coordinator.worker("w", &["--max-checks", "16"]);
    let mut client = coordinator.client().await;
    let output = coordinator.dir.path().join("data").join("output");

    // A follower from before the pool exists, and a reader of its files.
    let events: Arc<Mutex<Vec<pb::PoolEvent>>> = Arc::default();
    let follower = {
        let mut client = coordinator.client().await;
        let events = events.clone();
        tokio::spawn(async move {
            let mut stream = client
                .watch_pool(pb::WatchPoolRequest {
                    pool: "default".into(),
                    filter: None,
                })
                .await
                .unwrap()
                .into_inner();
            while let Ok(Some(event)) = stream.message().await {
                events.lock().unwrap().push(event);
            }
        })
    };
    let reading = Arc::new(AtomicBool::new(true));
    let reader = {
        let reading = reading.clone();
        let path = output.join("live_proxies.txt");
        std::thread::spawn(move || {
            let mut seen: Vec<Vec<String>> = Vec::new();
            while reading.load(Ordering::SeqCst) {
                let lines: Vec<String> = std::fs::read_to_string(&path)
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect();
                if seen.last() != Some(&lines) {
                    seen.push(lines);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        })
    };

    harness::wait_for("the follower's snapshot", WAIT_LIMIT, || {
        let started = !events.lock().unwrap().is_empty();
        async move { started.then_some(()) }
    })
    .await;
    let first = refresh(&coordinator, &lines, &[]).await;
    harness::wait_for("the four proxies in the live set", WAIT_LIMIT, || {
        let mut client = client.clone();
        async move {
            let pool = get_pool(&mut client, "default", pb::PoolFilter::default()).await;
            (pool.live == 4).then_some(pool)
        }
    })
    .await;
    // Rounds come: every member is checked again, and again.
    harness::wait_for("two rounds", WAIT_LIMIT, || {
        let mut client = client.clone();
        async move {
            let pool = get_pool(&mut client, "default", pb::PoolFilter::default()).await;
            pool.members.iter().all(|m| m.checks >= 3).then_some(())
        }
    })
    .await;

    // The victim dies: it leaves the live set within K rounds.
    let victim_addr = farm.working[0].addr;
    let victim_behavior = Behavior::Http;
    drop(farm.working.remove(0));
    let killed_at = wall_ms();
    let out = harness::wait_for("the dead proxy out of the live set", WAIT_LIMIT, || {
        let mut client = client.clone();
        let victim = victim.clone();
        async move {
            let pool = get_pool(&mut client, "default", everyone()).await;
            let member = pool.members.into_iter().find(|m| m.proxy == victim)?;
            (!member.live).then_some(member)
        }
    })
    .await;
    let took = wall_ms() - killed_at;
    // K rounds, each within an interval plus a check's timeout (5s), and room for a loaded
    // machine: the bound.
    let bound = MAX_FAILURES * (EVERY_MS + 5_000) + 10_000;
    assert!(
        took <= bound,
        "left the live set {took}ms after it died, more than {bound}ms"
    );
    assert_eq!(u64::from(out.failures), MAX_FAILURES, "{out:?}");
    assert_eq!(out.successes, 0);
    assert!(out.last_checked_ms >= killed_at, "{out:?}");
    assert!(out.last_seen_ms < killed_at, "{out:?}");
    assert_eq!(out.last_reason, pb::Reason::Refused as i32, "{out:?}");
    assert!(!out.last_detail.is_empty());
    let pool = get_pool(&mut client, "default", pb::PoolFilter::default()).await;
    assert_eq!(pool.live, 3);
    assert!(!proxies(&pool).contains(&victim));
    assert!(pool.members.iter().all(|m| m.failures == 0 && m.live));

    // It comes back; rounds check only the live set, so it stays out until a refresh finds it.
    let _back = SimProxy::spawn_on(victim_addr, victim_behavior)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3 * EVERY_MS)).await;
    let pool = get_pool(&mut client, "default", everyone()).await;
    let still = pool.members.iter().find(|m| m.proxy == victim).unwrap();
    assert!(!still.live, "rounds do not readmit: {still:?}");
    let second = refresh(&coordinator, &lines, &[]).await;
    let back = harness::wait_for("the proxy back in the live set", WAIT_LIMIT, || {
        let mut client = client.clone();
        let victim = victim.clone();
        async move {
            let pool = get_pool(&mut client, "default", pb::PoolFilter::default()).await;
            pool.members.into_iter().find(|m| m.proxy == victim)
        }
    })
    .await;
    assert!(
        back.live && back.failures == 0 && back.successes >= 1,
        "{back:?}"
    );
    assert_eq!(back.first_seen_ms, out.first_seen_ms, "its history stays");
    assert!(back.checks > out.checks);
    // The files hold it again once its refresh's files are written.
    harness::wait_for("the files with it again", WAIT_LIMIT, || {
        let back = std::fs::read_to_string(output.join("live_proxies.txt"))
            .unwrap_or_default()
            .lines()
            .any(|l| l == victim);
        async move { back.then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    reading.store(false, Ordering::SeqCst);
    let reads = reader.join().expect("the reader read whole files");
    follower.abort();

    // The follower saw each change once: the victim added, removed, added; the others added once
    // and never removed; versions only grow.
    let events = events.lock().unwrap().clone();
    assert_eq!(events[0].kind, pb::PoolEventKind::Snapshot as i32);
    assert!(events[0].pool.as_ref().unwrap().members.is_empty());
    let versions: Vec<u64> = events[1..].iter().map(|e| e.version).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    let mut kinds: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for e in &events[1..] {
        assert_ne!(
            e.kind,
            pb::PoolEventKind::Snapshot as i32,
            "one snapshot only"
        );
        let member = e.member.as_ref().unwrap();
        if e.kind != pb::PoolEventKind::Changed as i32 {
            kinds.entry(member.proxy.clone()).or_default().push(e.kind);
        }
    }
    let (added, removed) = (
        pb::PoolEventKind::Added as i32,
        pb::PoolEventKind::Removed as i32,
    );
    for line in &lines {
        let expected = if *line == victim {
            vec![added, removed, added]
        } else {
            vec![added]
        };
        assert_eq!(kinds.get(line), Some(&expected), "{line}: {kinds:?}");
    }
    // The files went the same way: the victim in, out, in, each once; no read held a line twice.
    for read in &reads {
        let unique: BTreeSet<&String> = read.iter().collect();
        assert_eq!(unique.len(), read.len(), "{read:?}");
    }
    let mut presence: Vec<bool> = reads.iter().map(|r| r.contains(&victim)).collect();
    presence.dedup();
    assert_eq!(presence, [false, true, false, true], "{reads:?}");
    let others: BTreeSet<&String> = lines[1..].iter().collect();
    let first_full = reads
        .iter()
        .position(|r| others.iter().all(|o| r.contains(o)))
        .unwrap();
    assert!(
        reads[first_full..]
            .iter()
            .all(|r| others.iter().all(|o| r.contains(o))),
        "a live proxy never left the files: {reads:?}"
    );
    // The members name the jobs that last checked them.
    let pool = get_pool(&mut client, "default", pb::PoolFilter::default()).await;
    assert!(
        pool.members
            .iter()
            .all(|m| m.last_job_id == second || m.last_job_id.starts_with("round-")),
        "{first} {second} {pool:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_grpcurl_http_and_the_cli_serve_the_same_pool_behind_the_client_token() {
    let farm = Farm::spawn([127, 0, 0, 1].into(), 6, 0, 2).await.unwrap();
    let coordinator = CoordinatorProc::start(&[
        "--worker-token",
        "worker-secret",
        "--client-token",
        "client-secret",
    ])
    .await;
    let _worker = coordinator.worker("w", &["--token", "worker-secret", "--max-checks", "16"]);
    let job_id = coordinator
        .submit(
            &farm.candidate_lines(),
            &["--token", "client-secret", "--timeout", "2s"],
        )
        .await;
    let out = coordinator
        .cli(&["--token", "client-secret", "watch", &job_id])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let working: BTreeSet<String> = farm.working_lines().into_iter().collect();
    let socks: BTreeSet<String> = working
        .iter()
        .filter(|l| l.starts_with("socks5://"))
        .cloned()
        .collect();
    let host = coordinator.grpc.to_string();
    let http = coordinator.http.expect("the HTTP API listens by default");
    let bearer = "authorization: Bearer client-secret";

    // grpcurl, no proto file: GetPool, then WatchPool's snapshot.
    let (code, out, err) = run(grpcurl().args([
        "-plaintext",
        "-H",
        bearer,
        "-d",
        r#"{"pool": "default"}"#,
        &host,
        "proxyfleet.v1.Coordinator/GetPool",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    let pool: serde_json::Value = serde_json::from_str(&out).unwrap();
    let from_grpcurl: BTreeSet<String> = pool["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["proxy"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(from_grpcurl, working, "{job_id}");
    let (_, out, err) = run(grpcurl().args([
        "-plaintext",
        "-max-time",
        "10",
        "-H",
        bearer,
        "-d",
        r#"{"pool": "default", "filter": {"protocols": ["PROTOCOL_SOCKS5"]}}"#,
        &host,
        "proxyfleet.v1.Coordinator/WatchPool",
    ]))
    .await;
    // The stream lasts until the client leaves: grpcurl leaves at -max-time, after the snapshot.
    let snapshot: serde_json::Value = serde_json::Deserializer::from_str(&out)
        .into_iter::<serde_json::Value>()
        .next()
        .unwrap_or_else(|| panic!("no event: {out} {err}"))
        .unwrap();
    assert_eq!(snapshot["kind"], "POOL_EVENT_KIND_SNAPSHOT", "{snapshot}");
    let watched: BTreeSet<String> = snapshot["pool"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["proxy"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(watched, socks);

    // A plain HTTP client.
    let url = |path: &str| format!("http://{http}{path}");
    let (status, body) =
        harness::http_get(&url("/pool/default?format=txt"), Some("client-secret")).await;
    assert_eq!(status, 200, "{body}");
    let from_http: BTreeSet<String> = body.lines().map(str::to_string).collect();
    assert_eq!(from_http, working);
    let (status, body) =
        harness::http_get(&url("/pool/default?protocol=socks5"), Some("client-secret")).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let from_http_json: BTreeSet<String> = json["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["proxy"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(from_http_json, socks);
    assert_eq!(json["live"], 6);
    let (status, body) = harness::http_get(
        &url("/pool/default/random?format=txt"),
        Some("client-secret"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(working.contains(body.trim()), "{body}");
    let (status, body) =
        harness::http_get(&url("/pool/default?order=fastest"), Some("client-secret")).await;
    assert_eq!(status, 400);
    assert!(body.contains("order"), "{body}");
    let (status, body) = harness::http_get(&url("/pool/nope"), Some("client-secret")).await;
    assert_eq!(status, 404);
    assert!(body.contains("known pools: default"), "{body}");

    // The CLI.
    let out = coordinator
        .cli(&["--token", "client-secret", "pool", "default"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let from_cli: BTreeSet<String> = out.stdout.lines().map(str::to_string).collect();
    assert_eq!(from_cli, working);
    let out = coordinator
        .cli(&["--token", "client-secret", "pool", "--protocol", "socks5"])
        .await;
    assert_eq!(
        out.stdout
            .lines()
            .map(str::to_string)
            .collect::<BTreeSet<_>>(),
        socks
    );
    let out = coordinator
        .cli(&["--token", "client-secret", "pool", "--format", "table"])
        .await;
    assert!(out.stdout.contains("6 live of 6 kept"), "{out:?}");

    // Tokens, on both: none, and the worker's.
    let (status, body) = harness::http_get(&url("/pool/default"), None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("client token is required"), "{body}");
    let (status, body) = harness::http_get(&url("/pool/default"), Some("worker-secret")).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = harness::http_get(&url("/pools"), Some("wrong")).await;
    assert_eq!(status, 401);
    let (code, _, err) = run(grpcurl().args([
        "-plaintext",
        "-d",
        r#"{"pool": "default"}"#,
        &host,
        "proxyfleet.v1.Coordinator/GetPool",
    ]))
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("Unauthenticated"), "{err}");
    let out = coordinator.cli(&["pool"]).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("client token is required"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_survives_a_kill_9_with_its_members_and_their_history() {
    let farm = Farm::spawn([127, 0, 0, 1].into(), 3, 0, 0).await.unwrap();
    let dir = TempDir::new("pool-restart");
    let data = dir.path().join("data");
    let listen = harness::quiet_port().to_string();
    let args = ["--revalidate-every", "1s"];
    let coordinator = CoordinatorProc::start_over(&listen, &data, &args).await;
    let _worker = harness::worker(&coordinator.url, "w", &["--max-checks", "8"], dir.path());
    refresh(&coordinator, &farm.working_lines(), &[]).await;
    let mut client = coordinator.client().await;
    let before = harness::wait_for("a few rounds", WAIT_LIMIT, || {
        let mut client = client.clone();
        async move {
            let pool = get_pool(&mut client, "default", everyone()).await;
            (pool.live == 3 && pool.members.iter().all(|m| m.checks >= 3)).then_some(pool)
        }
    })
    .await;
    coordinator.crash().await;
    let coordinator = CoordinatorProc::start_over(&listen, &data, &args).await;
    client = coordinator.client().await;
    let after = get_pool(&mut client, "default", everyone()).await;
    assert_eq!(after.live, 3);
    assert!(after.version >= before.version);
    assert_eq!(after.revalidate_every_ms, 1_000);
    for was in &before.members {
        let now = after
            .members
            .iter()
            .find(|m| m.proxy == was.proxy)
            .unwrap_or_else(|| panic!("{} lost in the restart", was.proxy));
        assert!(now.live);
        assert_eq!(now.first_seen_ms, was.first_seen_ms);
        // Every check the pool showed before was durable: none is lost.
        assert!(now.checks >= was.checks, "{now:?} {was:?}");
        assert!(now.checks_usable >= was.checks_usable);
        assert!(now.last_checked_ms >= was.last_checked_ms);
        assert_eq!(now.exit_ip, was.exit_ip);
        assert_eq!(now.anonymity, was.anonymity);
    }
    // Rounds go on after the restart.
    let most = before.members.iter().map(|m| m.checks).max().unwrap();
    harness::wait_for("a round after the restart", WAIT_LIMIT, || {
        let mut client = client.clone();
        async move {
            let pool = get_pool(&mut client, "default", everyone()).await;
            pool.members.iter().all(|m| m.checks > most).then_some(())
        }
    })
    .await;
    // Its files are there, and hold the live set.
    let txt = std::fs::read_to_string(data.join("output").join("live_proxies.txt")).unwrap();
    assert_eq!(
        txt.lines().map(str::to_string).collect::<BTreeSet<_>>(),
        farm.working_lines().into_iter().collect()
    );
}

/// Rounds of a pool of 20 proxies every 2 s while a refresh of 100,000 candidates (refused
/// addresses, and black holes that hold a check for its 3 s timeout) runs in another pool. The
/// bound: while the big refresh checks, each round starts at most `ROUND_SLACK_MS` (8 s) after it
/// is due (its interval after the last one started, or the last one's end if that came later) and
/// ends within 8 s of its start; measured here they take 0–2.5 s. Queued behind the refresh's
/// chunks instead, a round waits for most of the refresh (over 20 s) and the test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_keep_their_interval_while_a_big_refresh_runs() {
    const EVERY_MS: u64 = 2_000;
    const ROUND_SLACK_MS: u64 = 8_000;
    harness::raise_fd_limit();
    let farm = Farm::spawn([127, 0, 0, 1].into(), 20, 2_000, 0)
        .await
        .unwrap();
    let coordinator = CoordinatorProc::start(&[]).await;
    let _workers = [
        coordinator.worker("w1", &["--max-checks", "128"]),
        coordinator.worker("w2", &["--max-checks", "128"]),
    ];
    refresh(
        &coordinator,
        &farm.working_lines(),
        &["--pool", "live", "--revalidate-every", "2s"],
    )
    .await;
    // 100,000 candidates: refused addresses in 127.254.0.0/16 (nothing binds there), and the black
    // holes.
    let mut big: Vec<String> = (0..100_000 - farm.black_holes.len())
        .map(|i| {
            format!(
                "http://127.254.{}.{}:{}",
                i / 250 % 250,
                i % 250 + 1,
                1 + i / 62_500
            )
        })
        .collect();
    big.extend(farm.black_holes.iter().map(SimProxy::candidate_line));
    let big_id = coordinator
        .submit(
            &big,
            &[
                "--pool",
                "big",
                "--timeout",
                "3s",
                "--min-usable",
                "0",
                "--chunk-size",
                "100",
            ],
        )
        .await;
    let mut client = coordinator.client().await;
    let big_job = harness::wait_terminal(&mut client, &big_id, Duration::from_secs(600)).await;
    assert_eq!(big_job.state, pb::JobState::Succeeded as i32, "{big_job:?}");
    let (big_start, big_end) = (big_job.created_at_ms, big_job.ended_at_ms);
    let jobs = client
        .list_jobs(pb::ListJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let mut rounds: Vec<(u64, u64)> = jobs
        .iter()
        .filter(|j| {
            j.settings.as_ref().is_some_and(|s| s.pool == "live") && j.name == "revalidate live"
        })
        .map(|j| (j.created_at_ms, j.ended_at_ms))
        .collect();
    rounds.sort();
    let during: Vec<(u64, u64)> = rounds
        .iter()
        .copied()
        .filter(|&(start, _)| start >= big_start && start <= big_end)
        .collect();
    let checking_s = (big_end - big_start) / 1000;
    println!(
        "big refresh {checking_s}s; rounds during it (start offset ms, took ms): {:?}",
        during
            .iter()
            .map(|(s, e)| (s - big_start, e.saturating_sub(*s)))
            .collect::<Vec<_>>()
    );
    assert!(
        during.len() as u64 >= checking_s * 1000 / (EVERY_MS + ROUND_SLACK_MS) / 2,
        "rounds ran while the refresh checked for {checking_s}s: {during:?}"
    );
    for pair in rounds.windows(2) {
        let ((start, end), (next, _)) = (pair[0], pair[1]);
        if start < big_start || next > big_end {
            continue;
        }
        assert!(end > start, "{pair:?}");
        assert!(
            end - start <= ROUND_SLACK_MS,
            "a round took {}ms during the big refresh: {pair:?}",
            end - start
        );
        let due = (start + EVERY_MS).max(end);
        assert!(
            next <= due + ROUND_SLACK_MS,
            "a round started {}ms after it was due: {pair:?}",
            next.saturating_sub(due)
        );
    }
}
