//! The proxyfleet benchmark: a simulated proxy farm on loopback, a coordinator and worker
//! processes from the same build, and one table row per run.
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p proxyfleet-tests --bin bench              # every run
//! cargo run --release -p proxyfleet-tests --bin bench -- overhead  # runs whose name has "overhead"
//! cargo run --release -p proxyfleet-tests --bin bench -- tail      # the tail table only
//! cargo run --release -p proxyfleet-tests --bin bench -- gateway   # the gateway against pproxy
//! ```
//!
//! It runs in a network namespace of its own (`unshare --net`), where no connection tracking
//! sees its loopback connections (`--host-network` runs it on the host's).
//!
//! Every run starts a fresh coordinator (with its own data dir) and fresh workers, waits until the
//! workers are connected, then times from the job's submission to the moment its watch stream
//! reports it ended. CPU seconds and peak RSS are read from `/proc` before the processes stop.
//! The lower bound of a run is Σ(what each candidate must cost: the timeout if it timed out, its
//! measured latency otherwise) ÷ total concurrency; efficiency is that bound ÷ wall time.

#[path = "bench/gateway.rs"]
mod gateway;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, Proc};
use proxyfleet_tests::sim::{Behavior, FARM_PASS, FARM_USER, Farm, ProxySpec, SimProxy};

/// Every check's timeout (and so what a black-holed candidate costs).
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long a "remote" working proxy waits before it answers.
const REMOTE_DELAY: Duration = Duration::from_millis(50);
/// No run may take longer than this; the bench fails rather than hang.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// The candidates of a run, by kind.
#[derive(Clone, Copy)]
struct Mix {
    working: usize,
    black_holed: usize,
    refused: usize,
    /// Generated addresses answered by workers running with `--instant-checks`.
    instant: usize,
    /// Working proxies that wait [`REMOTE_DELAY`] before answering, as one across a network does.
    remote: usize,
}

impl Mix {
    fn of(working: usize, black_holed: usize, refused: usize, instant: usize) -> Mix {
        Mix {
            working,
            black_holed,
            refused,
            instant,
            remote: 0,
        }
    }
}

/// One run: a mix, a number of workers and their concurrency.
struct Run {
    name: &'static str,
    mix: Mix,
    workers: usize,
    checks_per_worker: usize,
    chunk_size: u32,
    /// WatchJob streams held open for the whole run.
    watchers: usize,
}

/// What a run measured.
struct Row {
    name: &'static str,
    candidates: u64,
    workers: usize,
    concurrency: usize,
    wall: Duration,
    coordinator_cpu: f64,
    worker_cpu: Vec<f64>,
    farm_cpu: f64,
    coordinator_rss_mb: f64,
    worker_rss_mb: Vec<f64>,
    lower_bound: Duration,
    chunks: u64,
    usable: u64,
    timed_out: u64,
}

fn runs() -> Vec<Run> {
    let run = |name, mix, workers, checks_per_worker| Run {
        name,
        mix,
        workers,
        checks_per_worker,
        chunk_size: 100,
        watchers: 0,
    };
    let refused = Mix::of(0, 0, 120_000, 0);
    let black_holed = Mix::of(0, 4_000, 0, 0);
    let working = Mix::of(4_000, 0, 0, 0);
    let mixed = Mix::of(2_000, 10_000, 88_000, 0);
    let instant = Mix::of(0, 0, 0, 1_000_000);
    let remote = Mix {
        remote: 4_000,
        ..Mix::of(0, 0, 0, 0)
    };
    vec![
        run("refused", refused, 1, 1024),
        run("refused", refused, 2, 1024),
        run("black-holed", black_holed, 1, 500),
        run("black-holed", black_holed, 2, 500),
        run("black-holed", black_holed, 4, 500),
        run(
            "black-holed-8k",
            Mix {
                black_holed: 8_192,
                ..black_holed
            },
            1,
            4096,
        ),
        run("working", working, 1, 256),
        run("working", working, 2, 256),
        run("working-50ms", remote, 1, 128),
        run("working-50ms", remote, 2, 128),
        run("working-50ms", remote, 1, 256),
        run("working-50ms", remote, 2, 256),
        run("mixed", mixed, 1, 1024),
        run("mixed", mixed, 2, 1024),
        // With and without watchers, each first once: the first run after the farm's is slower.
        Run {
            name: "overhead+100-watchers",
            watchers: 100,
            ..run("overhead", instant, 2, 1024)
        },
        run("overhead", instant, 2, 1024),
        Run {
            name: "overhead+100-watchers",
            watchers: 100,
            ..run("overhead", instant, 2, 1024)
        },
        Run {
            name: "overhead-chunk-1000",
            chunk_size: 1000,
            ..run("overhead", instant, 2, 1024)
        },
    ]
}

/// Set in the bench's own network namespace, where it runs again.
const OWN_NETWORK: &str = "PROXYFLEET_BENCH_OWN_NETWORK";

fn main() -> anyhow::Result<()> {
    let mut filters: Vec<String> = std::env::args().skip(1).collect();
    if filters.iter().any(|f| f == "--help" || f == "-h") {
        println!(
            "usage: bench [--host-network] [NAME...]\n\nRuns every benchmark, or those whose name contains one of NAME; prints a table.\nBuild first: cargo build --release --workspace --bins\n\nThe bench runs in a network namespace of its own (unshare --net, with its loopback up), where no\nconnection tracking sees its connections: on a host whose firewall tracks loopback (Docker's does),\nthe tracking table fills under the bench's churn of short connections and new ones are dropped.\n--host-network runs it on the host's network instead; so does a host that does not allow unshare."
        );
        return Ok(());
    }
    let host_network = filters.iter().any(|f| f == "--host-network");
    filters.retain(|f| f != "--host-network");
    if std::env::var_os(OWN_NETWORK).is_some() {
        println!("network: a namespace of the bench's own, no connection tracking");
    } else {
        if !host_network {
            match rerun_in_own_network() {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    std::process::exit(
                        status
                            .code()
                            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
                    )
                }
                Err(e) => eprintln!(
                    "warning: cannot run in a network namespace of its own ({e:#}); running on the host's network"
                ),
            }
        }
        println!("network: the host's; {}", conntrack());
    }
    // The farm's largest need, 4,000 working proxies and 10,000 black holes listening plus a
    // connection per check in flight, fits under 20,000 descriptors.
    harness::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(filters))
}

/// Runs this bench again, with the same arguments, in a network namespace of its own with its
/// loopback up; its exit status.
fn rerun_in_own_network() -> anyhow::Result<std::process::ExitStatus> {
    use anyhow::Context;
    let probe = std::process::Command::new("unshare")
        .args(["--net", "sh", "-c", "ip link set lo up"])
        .stderr(std::process::Stdio::null())
        .status()
        .context("running unshare")?;
    anyhow::ensure!(
        probe.success(),
        "unshare --net with `ip link set lo up` (iproute2) failed here"
    );
    let exe = std::env::current_exe()?;
    let status = std::process::Command::new("unshare")
        .args([
            "--net",
            "--",
            "sh",
            "-c",
            r#"ip link set lo up && exec "$0" "$@""#,
        ])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(OWN_NETWORK, "1")
        .status()
        .context("running the bench under unshare --net")?;
    Ok(status)
}

/// The host's connection tracking table: how full it is, when the kernel tracks connections.
fn conntrack() -> String {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    match (read("nf_conntrack_count"), read("nf_conntrack_max")) {
        (Some(count), Some(max)) => format!(
            "connection tracking holds {count} of {max} entries: a full table drops new connections"
        ),
        _ => "no connection tracking".to_string(),
    }
}

async fn bench(filters: Vec<String>) -> anyhow::Result<()> {
    let selected: Vec<Run> = runs()
        .into_iter()
        .filter(|r| filters.is_empty() || filters.iter().any(|f| r.name.contains(f.as_str())))
        .collect();
    let tails: Vec<Tail> = tails()
        .into_iter()
        .filter(|t| filters.is_empty() || filters.iter().any(|f| t.name.contains(f.as_str())))
        .collect();
    if !selected.is_empty() {
        print_header();
    }
    for (n, run) in selected.iter().enumerate() {
        // A farm of its own for every run, on an address of its own: what it serves fits the
        // descriptor limit, and ports left in TIME_WAIT by one run are not in the next one's way.
        let n = n as u8;
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 10 + n, 1));
        let m = run.mix;
        let farm = Farm::spawn(ip, 0, m.black_holed, m.refused).await?;
        let mut working = Vec::with_capacity(m.working + m.remote);
        for i in 0..m.working + m.remote {
            // HTTP and SOCKS5 with auth, alternating; each leaves for the judge from an address
            // of its own, as proxies on many hosts do.
            let spec = if i % 2 == 0 {
                ProxySpec::http()
            } else {
                ProxySpec::socks5().with_auth(FARM_USER, FARM_PASS)
            };
            let egress = Ipv4Addr::new(127, 100 + n, (i / 250) as u8, (i % 250 + 1) as u8);
            let spec = spec.with_egress(IpAddr::V4(egress));
            let behavior = if i < m.working {
                Behavior::Proxy(spec)
            } else {
                Behavior::Slow {
                    delay: REMOTE_DELAY,
                    spec,
                }
            };
            working.push(SimProxy::spawn(ip, behavior).await?);
        }
        let mut lines = farm.candidate_lines();
        lines.extend(working.iter().map(SimProxy::candidate_line));
        lines.extend(instant_lines(m.instant));
        let row = measure(run, lines).await?;
        print_row(&row);
    }
    if !tails.is_empty() {
        bench_tails(&tails).await?;
    }
    if filters.is_empty() || filters.iter().any(|f| "gateway".contains(f.as_str())) {
        gateway::bench().await?;
    }
    Ok(())
}

/// A job's tail, measured with a setting and without it (the peer), three times each.
struct Tail {
    name: &'static str,
    /// What the run changes, and the arguments that change it (coordinator's, workers').
    settings: [(
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
    ); 2],
    /// Freeze the worker holding the leases (SIGSTOP) once it holds them, and start another.
    freeze: bool,
}

fn tails() -> Vec<Tail> {
    vec![
        // 2,653 candidates in chunks of 40, each chunk holding one black hole, on 2 workers of 16
        // check slots: a worker that may hold only 2 leases idles 14 slots behind the black holes.
        Tail {
            name: "tail-slow-chunks",
            settings: [
                (
                    "2 leases a worker (--max-leases 2)",
                    &[],
                    &["--max-leases", "2"],
                ),
                ("a lease a check slot (default)", &[], &[]),
            ],
            freeze: false,
        },
        // 1,000 candidates in chunks of 100, a slow proxy in every chunk; the worker holding them
        // is frozen for good and an idle one joins; the lease TTL is 30 s.
        Tail {
            name: "tail-frozen-worker",
            settings: [
                ("no speculative leases", &["--no-speculation"], &[]),
                ("speculative leases (default)", &[], &[]),
            ],
            freeze: true,
        },
    ]
}

async fn bench_tails(tails: &[Tail]) -> anyhow::Result<()> {
    println!();
    println!("| tail | setting | min s | median s | runs s |");
    println!("|---|---|---:|---:|---|");
    for (n, tail) in tails.iter().enumerate() {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 60 + n as u8, 1));
        let (lines, _farm) = tail_farm(ip, tail.freeze).await?;
        for (label, coordinator_args, worker_args) in tail.settings {
            let mut walls = Vec::new();
            for _ in 0..3 {
                walls.push(measure_tail(tail, coordinator_args, worker_args, &lines).await?);
            }
            let runs: Vec<String> = walls.iter().map(|w| format!("{w:.1}")).collect();
            walls.sort_by(f64::total_cmp);
            println!(
                "| {} | {label} | {:.1} | {:.1} | {} |",
                tail.name,
                walls[0],
                walls[1],
                runs.join(", ")
            );
        }
    }
    Ok(())
}

/// The candidates of a tail run and the proxies behind them.
async fn tail_farm(ip: IpAddr, freeze: bool) -> anyhow::Result<(Vec<String>, Vec<SimProxy>)> {
    let (total, chunk, odd) = if freeze {
        (1_000, 100, Behavior::slow(Duration::from_millis(1500)))
    } else {
        (2_653, 40, Behavior::BlackHole)
    };
    let mut proxies = Vec::with_capacity(total);
    let mut lines = Vec::with_capacity(total);
    for i in 0..total {
        let behavior = if i % chunk == chunk / 2 {
            odd.clone()
        } else {
            Behavior::Http
        };
        let proxy = SimProxy::spawn(ip, behavior).await?;
        lines.push(proxy.candidate_line());
        proxies.push(proxy);
    }
    Ok((lines, proxies))
}

/// Seconds from submission to the job's end (from the freeze, for a frozen worker's tail).
async fn measure_tail(
    tail: &Tail,
    coordinator_args: &[&str],
    worker_args: &[&str],
    lines: &[String],
) -> anyhow::Result<f64> {
    let coordinator = CoordinatorProc::start(coordinator_args).await;
    let mut client = coordinator.client().await;
    let mut args = vec!["--max-checks", if tail.freeze { "256" } else { "16" }];
    args.extend_from_slice(worker_args);
    let first = coordinator.worker("tail-0", &args);
    let mut workers = vec![];
    if !tail.freeze {
        workers.push(coordinator.worker("tail-1", &args));
    }
    let expected = if tail.freeze { 1 } else { 2 };
    harness::wait_for("the workers to connect", RUN_LIMIT, || {
        let mut client = client.clone();
        async move { (harness::workers(&mut client).await.len() == expected).then_some(()) }
    })
    .await;
    let started = Instant::now();
    let job_id = client
        .submit_job(pb::SubmitJobRequest {
            candidates_text: lines.join("\n"),
            timeout_ms: 3_000,
            chunk_size: if tail.freeze { 100 } else { 40 },
            min_usable: Some(0),
            name: format!("bench {}", tail.name),
            ..Default::default()
        })
        .await?
        .into_inner()
        .job_id;
    let mut from = started;
    if tail.freeze {
        harness::wait_holding(&client, "tail-0").await;
        first.signal(libc::SIGSTOP);
        from = Instant::now();
        workers.push(coordinator.worker("tail-1", &args));
    }
    let job = tokio::time::timeout(RUN_LIMIT, watch_to_end(&mut client, &job_id))
        .await
        .map_err(|_| anyhow::anyhow!("{} did not end within {RUN_LIMIT:?}", tail.name))??;
    let wall = from.elapsed().as_secs_f64();
    if tail.freeze {
        first.signal(libc::SIGCONT);
    }
    let progress = job.progress.clone().unwrap_or_default();
    anyhow::ensure!(
        job.state == pb::JobState::Succeeded as i32
            && progress.proxies_checked == lines.len() as u64,
        "{}: the job ended {:?} with {} of {} checked: {}",
        tail.name,
        pb::JobState::try_from(job.state),
        progress.proxies_checked,
        lines.len(),
        job.reason
    );
    eprintln!(
        "  {}: {wall:.1} s, {} backup leases, {} duplicate verdicts refused",
        tail.name, progress.speculative_leases, progress.duplicate_verdicts_refused
    );
    Ok(wall)
}

/// `n` distinct loopback candidates for instant checks (never dialled).
fn instant_lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let host = i / 50_000;
            format!(
                "http://127.{}.{}.1:{}",
                10 + host / 250,
                host % 250,
                10_000 + i % 50_000
            )
        })
        .collect()
}

async fn measure(run: &Run, lines: Vec<String>) -> anyhow::Result<Row> {
    let coordinator = CoordinatorProc::start(&[]).await;
    let mut client = coordinator.client().await;
    let max_checks = run.checks_per_worker.to_string();
    let mut worker_args = vec!["--max-checks", max_checks.as_str()];
    if run.mix.instant > 0 {
        worker_args.push("--instant-checks");
    }
    let workers: Vec<Proc> = (0..run.workers)
        .map(|i| coordinator.worker(&format!("bench-{i}"), &worker_args))
        .collect();
    harness::wait_for("the workers to connect", RUN_LIMIT, || {
        let mut client = client.clone();
        async move { (harness::workers(&mut client).await.len() == run.workers).then_some(()) }
    })
    .await;
    let text = lines.join("\n");
    drop(lines);
    let farm_cpu_before = own_cpu_seconds();

    let sampler = std::env::var_os("BENCH_TRACE").map(|_| {
        let pid = coordinator.proc.pid();
        tokio::spawn(async move {
            let t = Instant::now();
            loop {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let rss = status
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .unwrap_or("")
                    .to_string();
                eprintln!(
                    "  {:?} coordinator {rss} cpu {:.2}",
                    t.elapsed(),
                    cpu_seconds(pid)
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    });
    let started = Instant::now();
    let submitted = client
        .submit_job(pb::SubmitJobRequest {
            candidates_text: text,
            timeout_ms: TIMEOUT.as_millis() as u64,
            chunk_size: run.chunk_size,
            min_usable: Some(0),
            name: format!("bench {}", run.name),
            ..Default::default()
        })
        .await?
        .into_inner();
    let job_id = submitted.job_id;
    if std::env::var_os("BENCH_TRACE").is_some() {
        eprintln!("  submitted after {:?}", started.elapsed());
    }
    let watchers: Vec<_> = (0..run.watchers)
        .map(|_| {
            let mut client = client.clone();
            let job_id = job_id.clone();
            tokio::spawn(async move { watch_to_end(&mut client, &job_id).await })
        })
        .collect();
    let job = tokio::time::timeout(RUN_LIMIT, watch_to_end(&mut client, &job_id))
        .await
        .map_err(|_| anyhow::anyhow!("{} did not end within {RUN_LIMIT:?}", run.name))??;
    let wall = started.elapsed();
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    let farm_cpu = own_cpu_seconds() - farm_cpu_before;
    for watcher in watchers {
        watcher.await??;
    }
    anyhow::ensure!(
        job.state == pb::JobState::Succeeded as i32,
        "{}: the job ended {:?}: {}",
        run.name,
        pb::JobState::try_from(job.state),
        job.reason
    );

    if std::env::var_os("BENCH_TRACE").is_some() {
        let log = coordinator.proc.log_text();
        for what in ["job submitted", "lease granted", "lease done", "job ended"] {
            if let Some(line) = log.lines().find(|l| l.contains(what)) {
                eprintln!("  first {what}: {}", line.get(..60).unwrap_or(line));
            }
        }
    }
    let coordinator_cpu = cpu_seconds(coordinator.proc.pid());
    let coordinator_rss_mb = peak_rss_mb(coordinator.proc.pid());
    let worker_cpu = workers.iter().map(|w| cpu_seconds(w.pid())).collect();
    let worker_rss_mb = workers.iter().map(|w| peak_rss_mb(w.pid())).collect();

    let results = harness::results(&mut client, &job_id).await;
    let progress = job.progress.unwrap_or_default();
    anyhow::ensure!(
        results.len() as u64 == progress.proxies_total
            && progress.proxies_checked == progress.proxies_total,
        "{}: {} results, {} checked of {}",
        run.name,
        results.len(),
        progress.proxies_checked,
        progress.proxies_total
    );
    let mut latencies: Vec<u32> = results.iter().map(|r| r.latency_ms).collect();
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    eprintln!(
        "  latency ms: p50 {} p90 {} p99 {} max {}",
        pick(0.5),
        pick(0.9),
        pick(0.99),
        pick(1.0)
    );
    let mut cost = Duration::ZERO;
    let mut timed_out = 0;
    for r in &results {
        if r.reason == pb::Reason::Timeout as i32 {
            timed_out += 1;
            cost += TIMEOUT;
        } else {
            cost += Duration::from_millis(u64::from(r.latency_ms));
        }
    }
    let concurrency = run.workers * run.checks_per_worker;
    Ok(Row {
        name: run.name,
        candidates: progress.proxies_total,
        workers: run.workers,
        concurrency,
        wall,
        coordinator_cpu,
        worker_cpu,
        farm_cpu,
        coordinator_rss_mb,
        worker_rss_mb,
        lower_bound: cost / concurrency as u32,
        chunks: progress.chunks_total,
        usable: progress.proxies_usable,
        timed_out,
    })
}

/// Follows a job's progress until it ends; returns its last snapshot.
async fn watch_to_end(
    client: &mut proxyfleet_proto::v1::coordinator_client::CoordinatorClient<
        tonic::transport::Channel,
    >,
    job_id: &str,
) -> anyhow::Result<pb::Job> {
    let mut stream = client
        .watch_job(pb::WatchJobRequest {
            job_id: job_id.to_string(),
        })
        .await?
        .into_inner();
    let started = Instant::now();
    let mut first = None;
    while let Some(job) = stream.message().await? {
        if std::env::var_os("BENCH_TRACE").is_some() {
            let p = job.progress.clone().unwrap_or_default();
            eprintln!(
                "  {:?} checked {} leased {}",
                started.elapsed(),
                p.proxies_checked,
                p.chunks_leased
            );
        }
        if first.is_none() && job.progress.as_ref().is_some_and(|p| p.proxies_checked > 0) {
            first = Some(started.elapsed());
        }
        if job.state >= pb::JobState::Succeeded as i32 {
            if std::env::var_os("BENCH_TRACE").is_some() {
                eprintln!(
                    "  first verdicts seen after {first:?}, end after {:?}",
                    started.elapsed()
                );
            }
            return Ok(job);
        }
    }
    anyhow::bail!("the watch stream of {job_id} ended before the job did")
}

fn print_header() {
    println!(
        "| run | candidates | workers | concurrency | wall s | checks/s | coord CPU s | worker CPU s | checks per worker CPU-s | farm CPU s | coord RSS MB | worker RSS MB (max) | lower bound s | efficiency | chunks/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
}

fn print_row(r: &Row) {
    let wall = r.wall.as_secs_f64();
    let worker_cpu: f64 = r.worker_cpu.iter().sum();
    let worker_rss = r.worker_rss_mb.iter().copied().fold(0.0, f64::max);
    println!(
        "| {} | {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} |",
        r.name,
        r.candidates,
        r.workers,
        r.concurrency,
        wall,
        r.candidates as f64 / wall,
        r.coordinator_cpu,
        worker_cpu,
        r.candidates as f64 / worker_cpu.max(1e-9),
        r.farm_cpu,
        r.coordinator_rss_mb,
        worker_rss,
        r.lower_bound.as_secs_f64(),
        r.lower_bound.as_secs_f64() / wall,
        r.chunks as f64 / wall,
    );
    eprintln!(
        "  {}: {} usable, {} timed out; worker CPU {:?} s, RSS {:?} MB",
        r.name, r.usable, r.timed_out, r.worker_cpu, r.worker_rss_mb
    );
}

/// CPU seconds (user + system) a live process has used, from /proc/PID/stat.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which ends with the last ')': state is the first, utime
    // and stime the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// Peak resident set size of a live process, in MB (VmHWM in /proc/PID/status).
fn peak_rss_mb(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// CPU seconds this process (the farm and the bench's client) has used.
fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
