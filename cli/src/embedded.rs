//! `run` and `demo`: a coordinator and workers in this process, a job through them, results out.

use std::path::PathBuf;
use std::time::Duration;

use proxyfleet_common::net::listen;
use proxyfleet_coordinator::CoordinatorConfig;
use proxyfleet_farm::lists::{Answer, ListServer};
use proxyfleet_farm::sim::Farm;
use proxyfleet_proto::v1 as pb;
use proxyfleet_worker::WorkerConfig;
use tokio::sync::watch;

use crate::args::{CheckArgs, DemoArgs, FarmArgs, JobArgs, RunArgs, SourceArgs};
use crate::client::{self, Failure};

/// What an embedded cluster is made of.
struct Embedded {
    job: JobArgs,
    workers: usize,
    max_checks: usize,
    allow_private_targets: bool,
    judge_listen: std::net::SocketAddr,
    judge_url: Option<String>,
    data_dir: PathBuf,
    output: Option<PathBuf>,
    /// Serve a gateway over the pool here after the check, until interrupted.
    gateway_listen: Option<std::net::SocketAddr>,
}

fn wall_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn failure(e: impl std::fmt::Display) -> Failure {
    Failure::new(1, format!("error: {e}"))
}

pub async fn run(args: RunArgs) -> Result<i32, Failure> {
    let inputs = client::read_inputs(&args.job.source)?;
    if args.job.check.judge.is_empty()
        && args.judge_url.is_none()
        && args.judge_listen.ip().is_loopback()
        && !args.allow_private_targets
    {
        eprintln!(
            "note: the built-in judge listens on {}; proxies on other machines cannot reach it. Pass --judge URL, or --judge-listen 0.0.0.0:PORT with --judge-url http://PUBLIC-ADDRESS:PORT/judge",
            args.judge_listen
        );
    }
    embedded(
        Embedded {
            job: args.job,
            workers: args.workers,
            max_checks: args.max_checks,
            allow_private_targets: args.allow_private_targets,
            judge_listen: args.judge_listen,
            judge_url: args.judge_url,
            data_dir: args.data_dir,
            output: args.output,
            gateway_listen: args.gateway_listen,
        },
        inputs,
    )
    .await
}

/// Runs simulated proxies and serves their list until interrupted.
pub async fn farm(args: FarmArgs) -> Result<i32, Failure> {
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
    eprintln!(
        "farm: {} working, {} black holes, {} refused; list at {}",
        farm.working.len(),
        farm.black_holes.len(),
        farm.refused.len(),
        list.url("/list.txt")
    );
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

pub async fn demo(args: DemoArgs) -> Result<i32, Failure> {
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
    eprintln!(
        "demo: {} working simulated proxies (HTTP and SOCKS5 with auth), {} black holes, {} refused addresses on 127.0.0.1; {} workers",
        farm.working.len(),
        farm.black_holes.len(),
        farm.refused.len(),
        args.workers
    );
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
        timeout: args.timeout,
        check: CheckArgs {
            judge: Vec::new(),
            connect_timeout: None,
            chunk_size: args.chunk_size,
            min_usable: args.working.max(1) as u64,
            deadline: Duration::from_secs(600),
            protocols: vec!["http".into()],
            max_attempts: None,
            pool: "demo".into(),
            name: "demo".into(),
            strict: true,
            keep_order: false,
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
            // Each demo in a directory of its own: nothing from an earlier one comes back.
            data_dir: args
                .data_dir
                .join(format!("run-{}-{}", std::process::id(), wall_secs())),
            output: None,
            gateway_listen: None,
        },
        inputs,
    )
    .await?;
    drop(farm);
    Ok(code)
}

async fn embedded(e: Embedded, inputs: client::Inputs) -> Result<i32, Failure> {
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
    let mut config = CoordinatorConfig::new(e.data_dir.clone(), vec![judge_url]);
    config.allow_private_targets = e.allow_private_targets;
    config.lease_ttl = Duration::from_secs(10);
    let config = config.validate().map_err(failure)?;

    let (stop_tx, stop_rx) = watch::channel(false);
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
            until_stopped(stop_rx.clone()),
        )));
    }

    let outcome = async {
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
            eprintln!(
                "note: cancelling {}, left unfinished by an earlier run in {}",
                job.job_id,
                e.data_dir.display()
            );
            let _ = coordinator_client
                .cancel_job(pb::CancelJobRequest {
                    job_id: job.job_id.clone(),
                })
                .await;
        }
        let label = inputs.label.clone();
        let request = client::submit_request(&e.job, inputs)?;
        let job_id = client::submit(&mut coordinator_client, &url, request, &label).await?;
        let code = client::watch(&mut coordinator_client, &url, &job_id).await?;
        let usable = usable_proxies(&mut coordinator_client, &url, &job_id).await?;
        if let Some(path) = &e.output {
            let tmp = path.with_extension("tmp");
            std::fs::write(
                &tmp,
                usable.iter().map(|p| format!("{p}\n")).collect::<String>(),
            )
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|err| failure(format!("cannot write {}: {err}", path.display())))?;
        }
        for proxy in &usable {
            println!("{proxy}");
        }
        if let Some(listen) = e.gateway_listen {
            serve_gateway(&url, listen, &e.job.check.pool, e.allow_private_targets).await?;
        }
        Ok::<i32, Failure>(code)
    }
    .await;

    let _ = stop_tx.send(true);
    for worker in workers {
        let _ = tokio::time::timeout(Duration::from_secs(5), worker).await;
    }
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

async fn usable_proxies(
    client: &mut client::Client,
    url: &str,
    job_id: &str,
) -> Result<Vec<String>, Failure> {
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
    Ok(rows.into_iter().map(|r| r.proxy).collect())
}
