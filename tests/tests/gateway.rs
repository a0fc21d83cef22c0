//! The rotating gateway, as clients use it: HTTP forward requests and SOCKS5 tunnels through a
//! pool of simulated proxies with different egress addresses, rotation and sticky sessions seen
//! by the target, an upstream killed mid-run with no client request failing, a coordinator
//! restart under it, and its authentication and connection cap.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CliProc, CoordinatorProc, WAIT_LIMIT};
use proxyfleet_tests::sim::{Behavior, ProxySpec, SimProxy};
use proxyfleet_tests::sites::Site;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `count` working proxies, alternately HTTP and SOCKS5, each leaving from its own loopback
/// address 127.0.0.(11 + i).
async fn egress_farm(count: u8) -> Vec<SimProxy> {
    let mut proxies = Vec::new();
    for i in 0..count {
        let egress = IpAddr::from([127, 0, 0, 11 + i]);
        let spec = if i % 2 == 0 {
            ProxySpec::http()
        } else {
            ProxySpec::socks5()
        };
        proxies.push(
            SimProxy::spawn(
                [127, 0, 0, 1].into(),
                Behavior::Proxy(spec.with_egress(egress)),
            )
            .await
            .unwrap(),
        );
    }
    proxies
}

/// Refreshes the default pool with `proxies` and waits until its live set holds them all.
async fn fill_pool(coordinator: &CoordinatorProc, proxies: &[SimProxy], extra: &[&str]) {
    let lines: Vec<String> = proxies.iter().map(SimProxy::candidate_line).collect();
    let mut options = vec!["--timeout", "5s"];
    options.extend_from_slice(extra);
    let job = coordinator.submit(&lines, &options).await;
    let mut client = coordinator.client().await;
    let ended = harness::wait_terminal(&mut client, &job, WAIT_LIMIT).await;
    assert_eq!(ended.state, pb::JobState::Succeeded as i32, "{ended:?}");
    harness::wait_for("the pool's live set", WAIT_LIMIT, || {
        let mut client = client.clone();
        let want = lines.len() as u64;
        async move { (default_pool(&mut client, false).await?.live == want).then_some(()) }
    })
    .await;
}

/// The default pool as the coordinator serves it, with the members out of the live set too when
/// `include_dead`; None if the call fails.
async fn default_pool(
    client: &mut pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>,
    include_dead: bool,
) -> Option<pb::Pool> {
    let filter = include_dead.then(|| pb::PoolFilter {
        include_dead: true,
        ..Default::default()
    });
    let request = pb::GetPoolRequest {
        pool: "default".into(),
        filter,
        ..Default::default()
    };
    Some(client.get_pool(request).await.ok()?.into_inner())
}

/// Four upstreams in the default pool, whose members one failure takes out (rounds come every 10
/// minutes, long after a test), and a gateway over them that answered once, with its failed
/// upstreams cooling down for 10 minutes and its metrics on `metrics`.
struct FourUpstreams {
    proxies: Vec<SimProxy>,
    target: Site,
    coordinator: CoordinatorProc,
    _worker: harness::Proc,
    _gateway: CliProc,
    addr: SocketAddr,
    metrics: SocketAddr,
}

async fn four_upstreams_behind_a_gateway() -> FourUpstreams {
    let proxies = egress_farm(4).await;
    let target = Site::icanhazip([127, 0, 0, 1].into()).await.unwrap();
    let coordinator = CoordinatorProc::start(&["--max-failures", "1"]).await;
    let worker = coordinator.worker("w", &["--max-checks", "16"]);
    fill_pool(&coordinator, &proxies, &[]).await;
    let metrics = harness::quiet_port();
    let metrics_arg = metrics.to_string();
    let (gateway, addr) = gateway(
        &coordinator,
        &["--cooldown", "10m", "--metrics-listen", &metrics_arg],
    )
    .await;
    let target_addr = target.addr;
    harness::wait_for("the gateway's first answer", WAIT_LIMIT, || async move {
        (http_get(addr, target_addr, None).await.0 == 200).then_some(())
    })
    .await;
    FourUpstreams {
        proxies,
        target,
        coordinator,
        _worker: worker,
        _gateway: gateway,
        addr,
        metrics,
    }
}

/// Starts `proxyfleet gateway` on 127.0.0.1:0 with `extra`; its address.
async fn gateway(coordinator: &CoordinatorProc, extra: &[&str]) -> (CliProc, SocketAddr) {
    let mut args = vec![
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--allow-private-upstreams",
        "--connect-timeout",
        "3s",
    ];
    args.extend_from_slice(extra);
    let mut proc = harness::spawn_cli(&coordinator.url, "gateway", &args, coordinator.dir.path());
    let line = proc
        .next_line()
        .await
        .expect("the gateway prints its address");
    let addr = line
        .strip_prefix("listening gateway=")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (proc, addr)
}

/// One GET of `target` (`host:port`) as an HTTP forward request through the gateway, with
/// `user`/`pass` as proxy credentials: the status and body.
async fn http_get(
    gateway: SocketAddr,
    target: SocketAddr,
    auth: Option<(&str, &str)>,
) -> (u16, String) {
    // Not listening yet (a gateway starting): status 0.
    let Ok(mut stream) = TcpStream::connect(gateway).await else {
        return (0, String::new());
    };
    let auth = auth
        .map(|(u, p)| {
            format!(
                "Proxy-Authorization: Basic {}\r\n",
                proxyfleet_common::dial::basic_auth(u, p)
            )
        })
        .unwrap_or_default();
    let request = format!(
        "GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n{auth}Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    read_answer(stream).await
}

async fn read_answer(mut stream: TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT_LIMIT, stream.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default();
    (status, body)
}

/// One GET of `target` through a SOCKS5 tunnel of the gateway, with `user`/`pass` when given:
/// the status and body; status 0 when the gateway refused.
async fn socks_get(
    gateway: SocketAddr,
    target: SocketAddr,
    auth: Option<(&str, &str)>,
) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(gateway).await else {
        return (0, String::new());
    };
    let mut reply = [0u8; 2];
    match auth {
        None => stream.write_all(&[5, 1, 0]).await.unwrap(),
        Some(_) => stream.write_all(&[5, 1, 2]).await.unwrap(),
    }
    if stream.read_exact(&mut reply).await.is_err() || reply[1] == 0xff {
        return (0, String::new());
    }
    if let Some((user, pass)) = auth {
        let mut sub = vec![1, user.len() as u8];
        sub.extend_from_slice(user.as_bytes());
        sub.push(pass.len() as u8);
        sub.extend_from_slice(pass.as_bytes());
        stream.write_all(&sub).await.unwrap();
        if stream.read_exact(&mut reply).await.is_err() || reply[1] != 0 {
            return (0, String::new());
        }
    }
    let IpAddr::V4(ip) = target.ip() else {
        panic!("an IPv4 target")
    };
    let mut connect = vec![5, 1, 0, 1];
    connect.extend_from_slice(&ip.octets());
    connect.extend_from_slice(&target.port().to_be_bytes());
    stream.write_all(&connect).await.unwrap();
    let mut head = [0u8; 10];
    if stream.read_exact(&mut head).await.is_err() || head[1] != 0 {
        return (0, String::new());
    }
    let request = format!("GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_answer(stream).await
}

/// What the target saw: the address each request came from.
fn counts(exits: &[String]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for exit in exits {
        *out.entry(exit.clone()).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_rotate_over_the_pool_and_sessions_stick() {
    let proxies = egress_farm(5).await;
    let target = Site::icanhazip([127, 0, 0, 1].into()).await.unwrap();
    let coordinator = CoordinatorProc::start(&[]).await;
    let _worker = coordinator.worker("w", &["--max-checks", "16"]);
    fill_pool(&coordinator, &proxies, &[]).await;
    let (_gateway, addr) = gateway(&coordinator, &[]).await;
    harness::wait_for("the gateway's first answer", WAIT_LIMIT, || async move {
        (http_get(addr, target.addr, None).await.0 == 200).then_some(())
    })
    .await;

    // 1,000 requests, half as HTTP forward requests, half through SOCKS5 tunnels, 20 at a time.
    let mut exits: Vec<(bool, u16, String)> = Vec::new();
    for batch in 0..50 {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..20 {
            let socks = (batch * 20 + i) % 2 == 1;
            let target = target.addr;
            set.spawn(async move {
                let (status, body) = if socks {
                    socks_get(addr, target, None).await
                } else {
                    http_get(addr, target, None).await
                };
                (socks, status, body)
            });
        }
        while let Some(done) = set.join_next().await {
            exits.push(done.unwrap());
        }
    }
    assert_eq!(exits.len(), 1_000);
    let failed: Vec<_> = exits
        .iter()
        .filter(|(_, status, _)| *status != 200)
        .collect();
    assert!(failed.is_empty(), "every request succeeds: {failed:?}");
    // Round-robin: over every connection, each of the five upstreams carries a fifth, within 2%.
    let all = counts(&exits.iter().map(|(_, _, b)| b.clone()).collect::<Vec<_>>());
    let expected: Vec<String> = (11..16).map(|i| format!("127.0.0.{i}")).collect();
    assert_eq!(all.keys().cloned().collect::<Vec<_>>(), expected, "{all:?}");
    for (exit, n) in &all {
        assert!(
            (180..=220).contains(n),
            "{exit} carried {n} of 1000: {all:?}"
        );
    }
    for socks in [false, true] {
        let front = counts(
            &exits
                .iter()
                .filter(|(s, _, _)| *s == socks)
                .map(|(_, _, b)| b.clone())
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            front.len(),
            5,
            "socks {socks}: every upstream used: {front:?}"
        );
    }

    // Sticky: a session key in the username keeps one upstream, over both front-ends.
    let mut sessions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for round in 0..20 {
        for s in 0..8 {
            let user = format!("client-session-s{s}");
            let (status, exit) = if round % 2 == 0 {
                http_get(addr, target.addr, Some((&user, "x"))).await
            } else {
                socks_get(addr, target.addr, Some((&user, "x"))).await
            };
            assert_eq!(status, 200);
            sessions.entry(user).or_default().push(exit);
        }
    }
    for (session, exits) in &sessions {
        let seen = counts(exits);
        assert_eq!(seen.len(), 1, "{session} kept one upstream: {seen:?}");
    }
    let spread: std::collections::BTreeSet<&String> = sessions.values().map(|e| &e[0]).collect();
    assert!(
        spread.len() >= 2,
        "sessions spread over upstreams: {sessions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_costs_no_client_request_and_leaves_the_gateways_set() {
    // One failure takes a member out, so the gateway's one report is enough.
    let FourUpstreams {
        mut proxies,
        target,
        coordinator,
        addr,
        metrics,
        _worker,
        _gateway,
    } = four_upstreams_behind_a_gateway().await;
    let dead = proxies[0].candidate_line();
    let mut exits = Vec::new();
    for i in 0..400 {
        if i == 100 {
            // 127.0.0.11 dies mid-run.
            drop(proxies.remove(0));
        }
        let (status, exit) = if i % 2 == 0 {
            http_get(addr, target.addr, None).await
        } else {
            socks_get(addr, target.addr, None).await
        };
        assert_eq!(status, 200, "request {i} failed: {exit:?}");
        exits.push(exit);
    }
    let after = counts(&exits[100..]);
    assert!(
        !after.contains_key("127.0.0.11"),
        "the dead upstream carried nothing after it died: {after:?}"
    );
    assert_eq!(after.len(), 3, "{after:?}");
    // The gateway told the coordinator: the proxy is out of the pool's live set, and so out of
    // every gateway's set, within seconds and before any revalidation round.
    let mut client = coordinator.client().await;
    let member = harness::wait_for(
        "the dead upstream out of the live set",
        Duration::from_secs(30),
        || {
            let mut client = client.clone();
            let dead = dead.clone();
            async move {
                let pool = default_pool(&mut client, true).await?;
                let member = pool.members.into_iter().find(|m| m.proxy == dead)?;
                (!member.live).then_some(member)
            }
        },
    )
    .await;
    assert!(
        member.last_detail.contains("reported by a client"),
        "{member:?}"
    );
    assert_eq!(default_pool(&mut client, false).await.unwrap().live, 3);
    let jobs = client
        .list_jobs(pb::ListJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(
        jobs.iter().all(|j| !j.name.starts_with("revalidate")),
        "no round ran: {jobs:?}"
    );
    // The gateway's metrics tell the same story, naming no credentials; its set is down to three
    // once the pool's removal reached it.
    let page = harness::wait_for("the gateway's set of three", WAIT_LIMIT, || async move {
        let page = harness::scrape(metrics).await;
        (harness::sample(&page, "proxyfleet_gateway_pool_upstreams") == 3.0).then_some(page)
    })
    .await;
    assert!(
        harness::sample(&page, "proxyfleet_gateway_retries_total") >= 1.0,
        "{page}"
    );
    let dead_url = dead.replace("fleet:secret@", "");
    assert!(
        page.contains(&format!(
            "proxyfleet_gateway_upstream_attempts_total{{upstream=\"{dead_url}\",outcome=\"connect\"}}"
        )),
        "{page}"
    );
    assert!(
        harness::sample(&page, "proxyfleet_gateway_requests_total{outcome=\"ok\"}") >= 400.0,
        "{page}"
    );
    assert_eq!(harness::sample(&page, "proxyfleet_gateway_following"), 1.0);
    assert!(page.contains("proxyfleet_gateway_upstream_ready_seconds_bucket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_loses_every_upstream_at_once_reports_at_most_half_the_pool() {
    // The default cap: half the pool cooling down at once.
    let FourUpstreams {
        mut proxies,
        target,
        coordinator,
        addr,
        metrics,
        _worker,
        _gateway,
    } = four_upstreams_behind_a_gateway().await;
    // Every upstream fails at once, as when the gateway's own network fails.
    proxies.clear();
    harness::wait_for(
        "the first request no upstream carries",
        WAIT_LIMIT,
        || async move { (http_get(addr, target.addr, None).await.0 == 502).then_some(()) },
    )
    .await;
    for _ in 0..20 {
        let (status, _) = http_get(addr, target.addr, None).await;
        assert_eq!(status, 502, "no upstream can carry it");
    }
    // Two of the four were cooled down and reported, and left the live set; the other two
    // failed past the cap, stayed in turn and were not reported.
    let mut client = coordinator.client().await;
    let live = || {
        let mut client = client.clone();
        async move { default_pool(&mut client, false).await.map(|p| p.live) }
    };
    harness::wait_for(
        "the reported upstreams out of the live set",
        WAIT_LIMIT,
        || {
            let live = live();
            async move { (live.await? == 2).then_some(()) }
        },
    )
    .await;
    let page = harness::scrape(metrics).await;
    assert!(
        harness::sample(&page, "proxyfleet_gateway_failures_held_back_total") >= 1.0,
        "{page}"
    );
    // Reports go out in batches every half second: nothing more comes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(live().await, Some(2));
    let pool = default_pool(&mut client, true).await.unwrap();
    // The gateway's set may shrink to the two left before the loop ends, and its cap with it
    // (one of two): a member it reports then is kept live by the coordinator. Either way, two
    // are out, on the gateway's word.
    let out: Vec<&pb::PoolMember> = pool.members.iter().filter(|m| !m.live).collect();
    assert_eq!(out.len(), 2, "{:#?}", pool.members);
    assert!(
        out.iter()
            .all(|m| m.last_detail.contains("reported by a client")),
        "{out:#?}"
    );

    // The coordinator holds the same line over every client together: the other two, reported
    // by another client, keep their failures but stay live for the next round to judge.
    let others: Vec<pb::ProxyReport> = pool
        .members
        .iter()
        .filter(|m| m.live)
        .map(|m| pb::ProxyReport {
            proxy: m.proxy.clone(),
            reason: pb::Reason::Refused as i32,
            detail: "connection refused".into(),
        })
        .collect();
    assert_eq!(others.len(), 2);
    let counted = client
        .report_proxies(pb::ReportProxiesRequest {
            pool: "default".into(),
            reports: others,
        })
        .await
        .unwrap()
        .into_inner()
        .counted;
    assert_eq!(counted, 2);
    // Readers see a change once the store has it: wait for the reports to show.
    let pool = harness::wait_for("the reports on the two live members", WAIT_LIMIT, || {
        let mut client = client.clone();
        async move {
            let pool = default_pool(&mut client, false).await?;
            pool.members.iter().all(|m| m.failures > 0).then_some(pool)
        }
    })
    .await;
    assert_eq!(pool.live, 2);
    assert!(
        pool.members
            .iter()
            .all(|m| m.last_detail.contains("kept live until the next round")),
        "{:#?}",
        pool.members
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_checked_and_the_per_client_cap_holds() {
    let proxies = egress_farm(2).await;
    let target = Site::icanhazip([127, 0, 0, 1].into()).await.unwrap();
    let coordinator = CoordinatorProc::start(&[]).await;
    let _worker = coordinator.worker("w", &["--max-checks", "8"]);
    fill_pool(&coordinator, &proxies, &[]).await;
    let users = coordinator
        .dir
        .write("users.txt", "# who may use it\nalice:wonder\n");
    let (_gateway, addr) = gateway(
        &coordinator,
        &["--users", users.to_str().unwrap(), "--max-per-client", "3"],
    )
    .await;
    harness::wait_for("the gateway's first answer", WAIT_LIMIT, || async move {
        (http_get(addr, target.addr, Some(("alice", "wonder")))
            .await
            .0
            == 200)
            .then_some(())
    })
    .await;
    // Right credentials, with options in the username, on both front-ends.
    assert_eq!(
        http_get(addr, target.addr, Some(("alice-session-a1", "wonder")))
            .await
            .0,
        200
    );
    assert_eq!(
        socks_get(addr, target.addr, Some(("alice", "wonder")))
            .await
            .0,
        200
    );
    // Wrong or missing: refused.
    assert_eq!(http_get(addr, target.addr, None).await.0, 407);
    assert_eq!(
        http_get(addr, target.addr, Some(("alice", "nope"))).await.0,
        407
    );
    assert_eq!(
        http_get(addr, target.addr, Some(("bob", "wonder"))).await.0,
        407
    );
    assert_eq!(socks_get(addr, target.addr, None).await.0, 0);
    assert_eq!(
        socks_get(addr, target.addr, Some(("alice", "nope")))
            .await
            .0,
        0
    );
    // Three connections held open from one address: a fourth is closed at once.
    let mut held = Vec::new();
    for _ in 0..3 {
        let s = TcpStream::connect(addr).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the fourth connection is closed: {read:?}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        http_get(addr, target.addr, Some(("alice", "wonder")))
            .await
            .0,
        200,
        "with the held connections gone, clients are served again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_through_a_coordinator_restart_and_follows_the_pool_after_it() {
    let mut proxies = egress_farm(4).await;
    let fourth = proxies.pop().unwrap();
    let target = Site::icanhazip([127, 0, 0, 1].into()).await.unwrap();
    let dir = harness::TempDir::new("gateway-restart");
    let data = dir.path().join("data");
    let listen = harness::quiet_port().to_string();
    let coordinator = CoordinatorProc::start_over(&listen, &data, &[]).await;
    let _worker = harness::worker(&coordinator.url, "w", &["--max-checks", "8"], dir.path());
    fill_pool(&coordinator, &proxies, &[]).await;
    let (_gateway, addr) = gateway(&coordinator, &[]).await;
    harness::wait_for("the gateway's first answer", WAIT_LIMIT, || async move {
        (http_get(addr, target.addr, None).await.0 == 200).then_some(())
    })
    .await;
    coordinator.crash().await;
    // Down: the last known set keeps serving.
    for i in 0..30 {
        let (status, exit) = if i % 2 == 0 {
            http_get(addr, target.addr, None).await
        } else {
            socks_get(addr, target.addr, None).await
        };
        assert_eq!(
            status, 200,
            "request {i} while the coordinator is down: {exit}"
        );
    }
    let coordinator = CoordinatorProc::start_over(&listen, &data, &[]).await;
    // A new proxy joins the pool after the restart: the gateway sends clients through it.
    let all: Vec<SimProxy> = proxies.into_iter().chain([fourth]).collect();
    fill_pool(&coordinator, &all, &[]).await;
    harness::wait_for(
        "a request through the new upstream",
        WAIT_LIMIT,
        || async move {
            let (status, exit) = http_get(addr, target.addr, None).await;
            (status == 200 && exit == "127.0.0.14").then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_checks_a_list_then_serves_a_gateway_over_it() {
    let proxies = egress_farm(3).await;
    let target = Site::icanhazip([127, 0, 0, 1].into()).await.unwrap();
    let dir = harness::TempDir::new("run-gateway");
    let list = dir.write(
        "list.txt",
        proxies
            .iter()
            .map(SimProxy::candidate_line)
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let listen = harness::quiet_port();
    let data = dir.path().join("data");
    let args = [
        "run",
        "--file",
        list.to_str().unwrap(),
        "--allow-private-targets",
        "--timeout",
        "5s",
        "--data-dir",
        data.to_str().unwrap(),
        "--gateway-listen",
        &listen.to_string(),
    ];
    let mut run = harness::spawn_cli("", "run", &args, dir.path());
    // The usable proxies first, on stdout, as without a gateway.
    let mut printed = Vec::new();
    while printed.len() < 3 {
        let line = run.next_line().await.expect("a usable proxy");
        if line.contains("://") {
            printed.push(line);
        }
    }
    printed.sort();
    let mut lines: Vec<String> = proxies.iter().map(SimProxy::candidate_line).collect();
    lines.sort();
    assert_eq!(printed, lines);
    // Then the gateway serves them, round-robin.
    harness::wait_for("the embedded gateway", WAIT_LIMIT, || async move {
        (http_get(listen, target.addr, None).await.0 == 200).then_some(())
    })
    .await;
    let mut exits = Vec::new();
    for i in 0..30 {
        let (status, exit) = if i % 2 == 0 {
            http_get(listen, target.addr, None).await
        } else {
            socks_get(listen, target.addr, None).await
        };
        assert_eq!(status, 200);
        exits.push(exit);
    }
    assert_eq!(counts(&exits).len(), 3, "{exits:?}");
    run.signal(libc::SIGTERM);
    let out = run.finish(WAIT_LIMIT).await;
    assert_eq!(out.code, 0, "the check SUCCEEDED: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_and_frees() {
    let proxies = egress_farm(2).await;
    let target = Site::icanhazip([127, 0, 0, 1].into()).await.unwrap();
    let coordinator = CoordinatorProc::start(&[]).await;
    let _worker = coordinator.worker("w", &["--max-checks", "8"]);
    fill_pool(&coordinator, &proxies, &[]).await;
    let (_gateway, addr) = gateway(&coordinator, &["--max-connections", "2"]).await;
    harness::wait_for("the gateway's first answer", WAIT_LIMIT, || async move {
        (http_get(addr, target.addr, None).await.0 == 200).then_some(())
    })
    .await;
    // Two clients hold their connections: a third waits, unserved, until one leaves.
    let held: Vec<TcpStream> = vec![
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = tokio::spawn(async move { http_get(addr, target.addr, None).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !third.is_finished(),
        "a third connection is not served at the cap"
    );
    drop(held);
    let (status, _) = tokio::time::timeout(WAIT_LIMIT, third)
        .await
        .expect("served once a slot frees")
        .unwrap();
    assert_eq!(status, 200);
}
