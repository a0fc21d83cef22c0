//! `run` and `demo`: a coordinator and workers in this process, a job through them, the usable
//! proxies out on stdout; the data directory they make is removed at the end unless kept.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use proxyfleet_common::net::listen;
use proxyfleet_coordinator::CoordinatorConfig;
use proxyfleet_farm::lists::{Answer, ListServer};
use proxyfleet_farm::sim::Farm;
use proxyfleet_proto::v1 as pb;
use proxyfleet_worker::WorkerConfig;
use tokio::sync::watch;

use crate::args::{CheckArgs, DataArgs, DemoArgs, FarmArgs, JobArgs, RunArgs, SourceArgs};
use crate::client::{self, Failure};
use crate::progress::Say;

/// What an embedded cluster is made of.
struct Embedded {
    job: JobArgs,
    workers: usize,
    max_checks: usize,
    allow_private_targets: bool,
    judge_listen: std::net::SocketAddr,
    judge_url: Option<String>,
    data: DataDir,
    output: Option<PathBuf>,
    /// Print the usable proxies as JSON rather than one a line.
    json: bool,
    /// Serve a gateway over the pool here after the check, until interrupted.
    gateway_listen: Option<std::net::SocketAddr>,
}

/// Where an embedded run keeps its coordinator's data, and whether it is removed at the end.
struct DataDir {
    path: PathBuf,
    /// Removed at the end: this run made it and was not asked to keep it.
    remove: bool,
}

impl DataDir {
    /// The directory the user named (kept), or a new one of this run under the system's
    /// temporary directory, removed at the end unless `--keep-data`.
    fn new(args: &DataArgs, command: &str) -> Result<DataDir, Failure> {
        if let Some(path) = &args.data_dir {
            return Ok(DataDir {
                path: path.clone(),
                remove: false,
            });
        }
        let path =
            fresh_dir(&std::env::temp_dir(), &format!("proxyfleet-{command}")).map_err(|e| {
                failure(format!(
                    "cannot make a data directory under {}: {e}; name one with --data-dir",
                    std::env::temp_dir().display()
                ))
            })?;
        Ok(DataDir {
            path,
            remove: !args.keep_data,
        })
    }

    /// Says where the data lives and what becomes of it.
    fn announce(&self, say: Say) {
        say.note(format!(
            "data: {}{}",
            self.path.display(),
            if self.remove {
                " (removed at the end; --keep-data keeps it)"
            } else {
                ""
            }
        ));
    }

    /// Removes the directory if this run is to; says so when that fails.
    fn finish(&self, say: Say) {
        if self.remove
            && let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            say.warn(format!(
                "warning: cannot remove {}: {e}",
                self.path.display()
            ));
        }
    }
}

/// Makes a new directory `PREFIX-PID-N` under `parent` that did not exist before.
fn fresh_dir(parent: &std::path::Path, prefix: &str) -> std::io::Result<PathBuf> {
    let pid = std::process::id();
    let mut last = None;
    for _ in 0..16 {
        let path = parent.join(format!("{prefix}-{pid}-{:08x}", fastrand::u32(..)));
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free name")))
}

/// Exit code of an embedded run stopped by SIGINT or SIGTERM before its check ended, as a shell
/// reports a command ended by SIGINT.
const EXIT_INTERRUPTED: i32 = 130;

fn failure(e: impl std::fmt::Display) -> Failure {
    Failure::new(1, format!("error: {e}"))
}

pub async fn run(args: RunArgs, say: Say) -> Result<i32, Failure> {
    let inputs = client::read_inputs(&args.job.source)?;
    if args.job.check.judge.is_empty()
        && args.judge_url.is_none()
        && args.judge_listen.ip().is_loopback()
        && !args.allow_private_targets
    {
        say.note(format!(
            "note: the built-in judge listens on {}; proxies on other machines cannot reach it. Pass --judge URL, or --judge-listen 0.0.0.0:PORT with --judge-url http://PUBLIC-ADDRESS:PORT/judge",
            args.judge_listen
        ));
    }
    let data = DataDir::new(&args.data, "run")?;
    embedded(
        Embedded {
            job: args.job,
            workers: args.workers,
            max_checks: args.max_checks,
            allow_private_targets: args.allow_private_targets,
            judge_listen: args.judge_listen,
            judge_url: args.judge_url,
            data,
            output: args.output,
            json: args.json,
            gateway_listen: args.gateway_listen,
        },
        inputs,
        say,
    )
    .await
}

/// Runs simulated proxies and serves their list until interrupted.
pub async fn farm(args: FarmArgs, say: Say) -> Result<i32, Failure> {
    let farm = Farm::spawn(args.ip, args.working, args.black_holes, args.refused)
        .await
        .map_err(|e| {
            failure(format!(
                "cannot start the simulated proxies on {}: {e}",
                args.ip
            ))
        })?;
    let lines: Vec<String> = match &args.advertise {
        // The proxies listen on `ip`; clients reach them under the advertised name.
        Some(name) => farm
            .candidate_lines()
            .into_iter()
            .map(|line| match line.rsplit_once(&format!("{}:", args.ip)) {
                Some((prefix, port)) => format!("{prefix}{name}:{port}"),
                None => line,
            })
            .collect(),
        None => farm.candidate_lines(),
    };
    let list = ListServer::spawn_on(
        args.list,
        vec![(
            "/list.txt",
            vec![Answer::Body(200, lines.join("\n") + "\n")],
        )],
    )
    .await
    .map_err(|e| failure(format!("cannot serve the list on {}: {e}", args.list)))?;
    say.note(format!(
        "farm: {} working, {} black holes, {} refused; list at {}",
        farm.working.len(),
        farm.black_holes.len(),
        farm.refused.len(),
        list.url("/list.txt")
    ));
    shutdown_signal().await;
    drop(list);
    drop(farm);
    Ok(0)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub async fn demo(args: DemoArgs, say: Say) -> Result<i32, Failure> {
    let data = DataDir::new(&args.data, "demo")?;
    let farm = Farm::spawn(
        [127, 0, 0, 1].into(),
        args.working,
        args.black_holes,
        args.refused,
    )
    .await
    .map_err(|e| {
        failure(format!(
            "cannot start the simulated proxies on 127.0.0.1: {e}"
        ))
    })?;
    say.note(format!(
        "demo: {} working simulated proxies (HTTP and SOCKS5 with auth), {} black holes, {} refused addresses on 127.0.0.1; {} workers",
        farm.working.len(),
        farm.black_holes.len(),
        farm.refused.len(),
        args.workers
    ));
    let inputs = client::Inputs {
        text: farm.candidate_lines().join("\n"),
        label: "demo".into(),
        sources: Vec::new(),
    };
    let job = JobArgs {
        source: SourceArgs {
            file: None,
            sources: Vec::new(),
            sources_file: None,
        },
        name: "demo".into(),
        strict: true,
        keep_order: false,
        check: CheckArgs {
            timeout: args.timeout,
            judge: Vec::new(),
            connect_timeout: None,
            chunk_size: args.chunk_size,
            min_usable: args.working.max(1) as u64,
            deadline: Duration::from_secs(600),
            protocols: vec!["http".into()],
            max_attempts: None,
            pool: "demo".into(),
            max_latency: None,
            min_anonymity: None,
            require_https: false,
            revalidate_every: None,
            targets: Vec::new(),
            targets_only: false,
        },
    };
    let code = embedded(
        Embedded {
            job,
            workers: args.workers,
            max_checks: 256,
            allow_private_targets: true,
            judge_listen: "127.0.0.1:0".parse().expect("literal address"),
            judge_url: None,
            data,
            output: None,
            json: args.json,
            gateway_listen: None,
        },
        inputs,
        say,
    )
    .await?;
    drop(farm);
    Ok(code)
}

/// Runs the cluster and the job, prints the usable proxies, and removes the data directory
/// unless it is kept, however the run ended.
async fn embedded(e: Embedded, inputs: client::Inputs, say: Say) -> Result<i32, Failure> {
    // Installed before anything is started, so that an interrupt from here on is handled.
    let interrupts = match proxyfleet_common::signals::StopSignals::install() {
        Ok(interrupts) => interrupts,
        Err(err) => {
            e.data.finish(say);
            return Err(failure(format!("installing signal handlers: {err}")));
        }
    };
    e.data.announce(say);
    let outcome = cluster(&e, inputs, interrupts, say).await;
    if !e.data.remove
        && let Ok(_) = &outcome
    {
        say.note(format!(
            "data kept in {}: each job's results under jobs/, the pool's files under output/",
            e.data.path.display()
        ));
    }
    e.data.finish(say);
    outcome
}

async fn cluster(
    e: &Embedded,
    inputs: client::Inputs,
    mut interrupts: proxyfleet_common::signals::StopSignals,
    say: Say,
) -> Result<i32, Failure> {
    let grpc = listen(([127, 0, 0, 1], 0).into()).map_err(failure)?;
    let judge = listen(e.judge_listen).map_err(|err| {
        failure(format!(
            "cannot listen on {} for the judge: {err}",
            e.judge_listen
        ))
    })?;
    let grpc_addr = grpc.local_addr().map_err(failure)?;
    let judge_url = e.judge_url.clone().unwrap_or_else(|| {
        proxyfleet_coordinator::default_judge_url(judge.local_addr().expect("bound listener"))
    });
    let mut config = CoordinatorConfig::new(e.data.path.clone(), vec![judge_url]);
    config.allow_private_targets = e.allow_private_targets;
    config.lease_ttl = Duration::from_secs(10);
    let config = config.validate().map_err(failure)?;

    // Workers stop before the coordinator, so that none sees its session cut and says so.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (stop_workers_tx, stop_workers_rx) = watch::channel(false);
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let coordinator = tokio::spawn(proxyfleet_coordinator::run(
        grpc,
        judge,
        None,
        None,
        None,
        config,
        until_stopped(stop_rx.clone()),
    ));
    let url = format!("http://{grpc_addr}");
    let mut workers = Vec::new();
    for i in 0..e.workers.max(1) {
        let config = WorkerConfig {
            coordinator: url.clone(),
            worker_id: format!("embedded-{i}"),
            name: format!("embedded-{i}"),
            max_checks: e.max_checks,
            capacity: proxyfleet_worker::default_capacity(e.max_checks),
            drain_grace: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(1),
            extra_roots: Vec::new(),
            public_ips: Vec::new(),
            token: Default::default(),
            tls: None,
            metrics_listen: None,
            instant_checks: false,
        };
        workers.push(tokio::spawn(proxyfleet_worker::run(
            config,
            until_stopped(stop_workers_rx.clone()),
        )));
    }

    // The check, then the usable proxies out; an interrupt (Ctrl-C, SIGTERM) ends it early, and
    // the cluster still stops and the data directory is still removed below.
    let check = async {
        let mut coordinator_client = client::connect(&client::Remote::plain(&url)).await?;
        // A job left unfinished by an interrupted earlier run in this data dir would hold the
        // pool; this run replaces it.
        let jobs = coordinator_client
            .list_jobs(pb::ListJobsRequest {})
            .await
            .map_err(|s| failure(s.message()))?
            .into_inner()
            .jobs;
        for job in jobs
            .iter()
            .filter(|j| !crate::progress::is_terminal(j.state))
        {
            say.note(format!(
                "note: cancelling {}, left unfinished by an earlier run in {}",
                job.job_id,
                e.data.path.display()
            ));
            let _ = coordinator_client
                .cancel_job(pb::CancelJobRequest {
                    job_id: job.job_id.clone(),
                })
                .await;
        }
        let label = inputs.label.clone();
        let request = client::submit_request(&e.job, inputs)?;
        let job_id = client::submit(&mut coordinator_client, &url, request, &label, say).await?;
        say.note(format!("job {job_id}"));
        let code = client::watch(&mut coordinator_client, &url, &job_id, say, false).await?;
        let usable = usable_proxies(&mut coordinator_client, &url, &job_id).await?;
        if let Some(path) = &e.output {
            let tmp = path.with_extension("tmp");
            std::fs::write(
                &tmp,
                usable
                    .iter()
                    .map(|r| format!("{}\n", r.proxy))
                    .collect::<String>(),
            )
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|err| failure(format!("cannot write {}: {err}", path.display())))?;
        }
        if e.json {
            let rows: Vec<serde_json::Value> = usable.iter().map(client::result_json).collect();
            println!("{}", serde_json::Value::Array(rows));
        } else {
            let mut out = std::io::stdout().lock();
            for r in &usable {
                let _ = writeln!(out, "{}", r.proxy);
            }
        }
        Ok::<i32, Failure>(code)
    };
    let outcome = async {
        let code = tokio::select! {
            checked = check => checked?,
            () = interrupts.recv() => {
                return Err(Failure::new(
                    EXIT_INTERRUPTED,
                    "interrupted: the check did not finish",
                ));
            }
        };
        if let Some(listen) = e.gateway_listen {
            serve_gateway(&url, listen, &e.job.check.pool, e.allow_private_targets).await?;
        }
        Ok::<i32, Failure>(code)
    }
    .await;

    let _ = stop_workers_tx.send(true);
    for worker in workers {
        let _ = tokio::time::timeout(Duration::from_secs(5), worker).await;
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), coordinator).await;
    outcome
}

/// Serves a gateway over `pool` of the in-process coordinator on `listen` until interrupted.
async fn serve_gateway(
    url: &str,
    listen: std::net::SocketAddr,
    pool: &str,
    allow_private: bool,
) -> Result<(), Failure> {
    if !listen.ip().is_loopback() {
        return Err(Failure::new(
            client::EXIT_BAD_INPUT,
            format!(
                "error: --gateway-listen {listen} is off loopback; anyone who reaches it could use the proxies. Use `proxyfleet gateway --users FILE` for that"
            ),
        ));
    }
    let listener = proxyfleet_common::net::listen(listen).map_err(|err| {
        failure(format!(
            "cannot listen on {listen} (--gateway-listen): {err}"
        ))
    })?;
    let mut config = proxyfleet_gateway::GatewayConfig::new(
        client::endpoint(&client::Remote::plain(url))?,
        pool,
    );
    config.allow_private_upstreams = allow_private;
    eprintln!(
        "gateway: HTTP and SOCKS5 on {} through pool {pool:?}; Ctrl-C stops",
        listener.local_addr().map_err(failure)?
    );
    proxyfleet_gateway::run(
        listener,
        config,
        std::sync::Arc::new(proxyfleet_gateway::Metrics::default()),
        shutdown_signal(),
    )
    .await
    .map_err(|err| failure(format!("the gateway stopped: {err}")))
}

/// The job's usable proxies, fastest first.
async fn usable_proxies(
    client: &mut client::Client,
    url: &str,
    job_id: &str,
) -> Result<Vec<pb::ProxyResult>, Failure> {
    let pages = client
        .get_results(pb::GetResultsRequest {
            job_id: job_id.to_string(),
            usable_only: true,
            follow: false,
        })
        .await
        .map_err(|s| failure(format!("reading results from {url}: {}", s.message())))?
        .into_inner();
    let mut rows = proxyfleet_common::results::read_all(pages)
        .await
        .map_err(|s| failure(s.message()))?;
    rows.sort_by_key(|r| r.latency_ms);
    Ok(rows)
}
