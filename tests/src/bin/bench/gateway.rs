//! The gateway's table: HTTP requests to a loopback target through one upstream directly, through
//! `proxyfleet gateway` rotating over four upstreams, and through pproxy (PyPI) rotating
//! round-robin over the same four, side by side in one run: requests per second, CPU of the
//! middle process per request, and latency (p50, p99) with what the middle adds to the direct
//! path, at 1, 64 and 512 concurrent clients, three runs each (min / median). Then the same
//! paths at fixed offered rates, where below a path's capacity latency is what the middle adds
//! rather than the queue a saturated machine builds. Each load runs in three rounds, every path
//! once a round, and the CPU ratio to pproxy is taken round by round.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc};
use proxyfleet_tests::sim::{self, Behavior, ProxySpec, SimProxy};
use proxyfleet_tests::sites::{Reply, Site};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// Requests per run, by concurrency.
fn requests(clients: usize) -> usize {
    match clients {
        1 => 2_000,
        64 => 20_000,
        _ => 40_000,
    }
}

/// What one run measured.
struct Sample {
    per_second: f64,
    /// CPU milliseconds of the middle process per request (0 for the direct path).
    cpu_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: usize,
}

/// The source address of client `c`: each client connects from an address of its own, so that a
/// run's tens of thousands of short connections do not reuse one address's ports while the
/// other side still holds them in TIME_WAIT.
fn client_ip(c: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 90 + (c / 250) as u8, 1 + (c % 250) as u8)
}

/// One request through `proxy` to `target` from `source`: its latency counted from `since`, or
/// None if it failed.
async fn one(
    source: Ipv4Addr,
    proxy: SocketAddr,
    target: SocketAddr,
    since: Instant,
) -> Option<Duration> {
    let socket = TcpSocket::new_v4().ok()?;
    sim::bind_source(&socket, IpAddr::V4(source)).ok()?;
    let mut stream = socket.connect(proxy).await.ok()?;
    let _ = stream.set_nodelay(true);
    let request =
        format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::with_capacity(256);
    stream.read_to_end(&mut answer).await.ok()?;
    answer.starts_with(b"HTTP/1.1 200").then(|| since.elapsed())
}

/// How the clients send.
#[derive(Clone, Copy)]
enum Load {
    /// Each client sends its next request as soon as its previous one is answered.
    Closed { clients: usize },
    /// `rate` requests a second in all for `PACED_RUN`, spread over `clients`, each sent at its
    /// scheduled time (or as soon as its client is free, if late) and timed from that schedule,
    /// so a stall counts against every request it delays.
    Paced { clients: usize, rate: usize },
}

/// How long a paced run offers its rate.
const PACED_RUN: Duration = Duration::from_secs(5);

impl Load {
    fn clients(self) -> usize {
        match self {
            Load::Closed { clients } | Load::Paced { clients, .. } => clients,
        }
    }

    fn total(self) -> usize {
        match self {
            Load::Closed { clients } => requests(clients),
            Load::Paced { rate, .. } => rate * PACED_RUN.as_secs() as usize,
        }
    }

    /// When request `n` of the run is due, for paced runs.
    fn due(self, started: Instant, n: usize) -> Option<Instant> {
        match self {
            Load::Closed { .. } => None,
            Load::Paced { rate, .. } => {
                Some(started + Duration::from_secs_f64(n as f64 / rate as f64))
            }
        }
    }
}

/// One run of `load`; `middle` is the process whose CPU counts.
async fn load(proxy: SocketAddr, target: SocketAddr, load: Load, middle: Option<i32>) -> Sample {
    let (clients, total) = (load.clients(), load.total());
    let cpu_before = middle.map_or(0.0, crate::cpu_seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        tasks.spawn(async move {
            let source = client_ip(c);
            // Client c sends requests c, c + clients, c + 2 × clients, …
            let mut latencies = Vec::with_capacity(total / clients + 1);
            let mut failed = 0;
            for n in (c..total).step_by(clients) {
                let since = match load.due(started, n) {
                    Some(due) => {
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                let request = one(source, proxy, target, since);
                match tokio::time::timeout(Duration::from_secs(10), request).await {
                    Ok(Some(l)) => latencies.push(l),
                    _ => failed += 1,
                }
            }
            (latencies, failed)
        });
    }
    let mut latencies = Vec::with_capacity(total);
    let mut failed = 0;
    while let Some(done) = tasks.join_next().await {
        let (l, f) = done.expect("a client task");
        latencies.extend(l);
        failed += f;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = middle.map_or(0.0, |pid| crate::cpu_seconds(pid) - cpu_before);
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Sample {
        per_second: latencies.len() as f64 / wall,
        cpu_ms: cpu * 1000.0 / latencies.len().max(1) as f64,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        failed,
    }
}

/// Min and median of three.
fn min_median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

/// Prints one table: every middle under each load, three runs each.
async fn table(middles: &[(String, SocketAddr, Option<i32>)], target: SocketAddr, loads: &[Load]) {
    println!(
        "| path | clients | offered/s | requests/s min / median | middle CPU ms/request min / median | pproxy's CPU ÷ this | p50 ms | p99 ms | added p50 ms | added p99 ms | failed |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &l in loads {
        let offered = match l {
            Load::Closed { .. } => "—".to_string(),
            Load::Paced { rate, .. } => rate.to_string(),
        };
        // Three rounds, every path once a round: a machine that slows down or speeds up during
        // the table weighs on every path alike.
        let mut runs: Vec<Vec<Sample>> = middles.iter().map(|_| Vec::new()).collect();
        for _ in 0..3 {
            for ((_, addr, pid), samples) in middles.iter().zip(&mut runs) {
                samples.push(load(*addr, target, l, *pid).await);
            }
        }
        // pproxy's CPU per request over this path's, round by round: the peer measured nearest in
        // time.
        let peer = middles
            .iter()
            .position(|(name, _, _)| name.starts_with("pproxy"))
            .map(|i| runs[i].iter().map(|s| s.cpu_ms).collect::<Vec<f64>>());
        let mut direct_p = (0.0, 0.0);
        for ((name, _, pid), samples) in middles.iter().zip(&runs) {
            let (rps_min, rps_med) = min_median(samples.iter().map(|s| s.per_second).collect());
            let (cpu_min, cpu_med) = min_median(samples.iter().map(|s| s.cpu_ms).collect());
            let (_, p50) = min_median(samples.iter().map(|s| s.p50_ms).collect());
            let (_, p99) = min_median(samples.iter().map(|s| s.p99_ms).collect());
            let failed: usize = samples.iter().map(|s| s.failed).sum();
            if pid.is_none() {
                direct_p = (p50, p99);
            }
            let cpu = if pid.is_some() {
                format!("{cpu_min:.3} / {cpu_med:.3}")
            } else {
                "—".into()
            };
            let ratio = match (&peer, pid) {
                (Some(peer), Some(_)) => {
                    let (_, ratio) = min_median(
                        peer.iter()
                            .zip(samples)
                            .map(|(p, s)| p / s.cpu_ms.max(f64::MIN_POSITIVE))
                            .collect(),
                    );
                    format!("{ratio:.1}×")
                }
                _ => "—".into(),
            };
            println!(
                "| {name} | {} | {offered} | {rps_min:.0} / {rps_med:.0} | {cpu} | {ratio} | {p50:.2} | {p99:.2} | {:.2} | {:.2} | {failed} |",
                l.clients(),
                p50 - direct_p.0,
                p99 - direct_p.1
            );
        }
    }
}

/// Runs the gateway table.
pub(crate) async fn bench() -> anyhow::Result<()> {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 80, 1));
    let target = Site::spawn(ip, |_| Reply::ok("ok\n")).await?;
    let mut upstreams = Vec::new();
    for i in 0..4u8 {
        let spec = ProxySpec::http().with_egress(IpAddr::V4(Ipv4Addr::new(127, 0, 81, 1 + i)));
        upstreams.push(SimProxy::spawn(ip, Behavior::Proxy(spec)).await?);
    }
    // The pool: a coordinator that checked the four.
    let coordinator = CoordinatorProc::start(&[]).await;
    let _worker = coordinator.worker("w", &["--max-checks", "8"]);
    let lines: Vec<String> = upstreams.iter().map(SimProxy::candidate_line).collect();
    let job = coordinator.submit(&lines, &["--timeout", "5s"]).await;
    let mut client = coordinator.client().await;
    let ended = harness::wait_terminal(&mut client, &job, Duration::from_secs(120)).await;
    anyhow::ensure!(
        ended.state == pb::JobState::Succeeded as i32,
        "the pool's refresh failed"
    );

    // One gateway on one thread (the default), as pproxy runs on one; one with a thread a core.
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();
    let mut gateways = Vec::new();
    for (label, threads) in [("one thread", "1"), ("a thread a core", cores.as_str())] {
        let mut args = vec![
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--allow-private-upstreams",
            "--max-per-client",
            "100000",
        ];
        args.extend(["--threads", threads]);
        let mut gateway = harness::spawn_cli(
            &coordinator.url,
            &format!("bench-gateway-{threads}"),
            &args,
            coordinator.dir.path(),
        );
        let line = gateway.next_line().await.unwrap_or_default();
        let addr: SocketAddr = line
            .strip_prefix("listening gateway=")
            .ok_or_else(|| anyhow::anyhow!("the gateway printed {line:?}"))?
            .parse()?;
        let pid = gateway.pid();
        gateways.push((label, addr, pid, gateway));
    }

    let pproxy_port = harness::quiet_port();
    let mut pproxy_cmd = tokio::process::Command::new("pproxy");
    pproxy_cmd
        .args(["-l", &format!("http://{pproxy_port}"), "-s", "rr"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for u in &upstreams {
        pproxy_cmd.args(["-r", &format!("http://{}", u.addr)]);
    }
    let pproxy = match pproxy_cmd.spawn() {
        Ok(child) => Some(child),
        Err(e) => {
            eprintln!("pproxy not run ({e}); install it with: python3 -m pip install pproxy");
            None
        }
    };
    let pproxy_pid = pproxy.as_ref().and_then(|c| c.id()).map(|p| p as i32);

    // Every middle answers before it is measured.
    let direct = upstreams[0].addr;
    let mut middles: Vec<(String, SocketAddr, Option<i32>)> =
        vec![("direct, one upstream".into(), direct, None)];
    for (label, addr, pid, _) in &gateways {
        middles.push((
            format!("proxyfleet gateway ({label}), 4 upstreams"),
            *addr,
            Some(*pid),
        ));
    }
    if let Some(pid) = pproxy_pid {
        middles.push(("pproxy -s rr, 4 upstreams".into(), pproxy_port, Some(pid)));
    }
    for (name, addr, _) in &middles {
        let addr = *addr;
        let t = target.addr;
        harness::wait_for(name, Duration::from_secs(60), || async move {
            one(client_ip(0), addr, t, Instant::now()).await.map(|_| ())
        })
        .await;
    }

    println!();
    println!("Closed loop: each client sends again as soon as it is answered.");
    let closed = [1usize, 64, 512].map(|clients| Load::Closed { clients });
    table(&middles, target.addr, &closed).await;
    println!();
    println!(
        "Paced: a fixed rate offered for {} s by 64 clients, latency timed from each request's schedule.",
        PACED_RUN.as_secs()
    );
    let paced = [250usize, 1_000, 2_500].map(|rate| Load::Paced { clients: 64, rate });
    table(&middles, target.addr, &paced).await;
    drop(pproxy);
    Ok(())
}
