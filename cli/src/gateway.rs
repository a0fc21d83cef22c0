//! `proxyfleet gateway`: the gateway's flags made into its configuration, its listeners, and a
//! run until SIGINT or SIGTERM.

use std::sync::Arc;

use proxyfleet_gateway::{GatewayConfig, Metrics, Policy};

use crate::args::{GatewayArgs, Rotation};
use crate::client::{self, EXIT_BAD_INPUT, EXIT_UNREACHABLE, Failure, Remote};

/// The gateway's configuration from its flags; a mistake is named with the flag.
pub fn config(remote: &Remote, args: &GatewayArgs) -> Result<GatewayConfig, Failure> {
    let bad = |what: String| Failure::new(EXIT_BAD_INPUT, format!("error: {what}"));
    let users = match &args.users {
        Some(path) => Some(proxyfleet_gateway::read_users(path).map_err(|e| bad(e.to_string()))?),
        None if !args.listen.ip().is_loopback() => {
            return Err(bad(format!(
                "refusing to serve {} off loopback without --users: anyone who reaches it could use the pool's proxies",
                args.listen
            )));
        }
        None => None,
    };
    let defaults = match &args.defaults {
        Some(spec) => proxyfleet_gateway::wants::parse_defaults(spec)
            .map_err(|e| bad(format!("--defaults: {e}")))?,
        None => Default::default(),
    };
    if let Some(problem) = proxyfleet_coordinator::pool_name_problem(&args.pool) {
        return Err(bad(format!("--pool {:?}: {problem}", args.pool)));
    }
    let mut config = GatewayConfig::new(client::endpoint(remote)?, &args.pool);
    config.token = remote.token.clone();
    config.policy = match args.policy {
        Rotation::RoundRobin => Policy::RoundRobin,
        Rotation::Random => Policy::Random,
        Rotation::LeastLatency => Policy::LeastLatency,
        Rotation::LeastInFlight => Policy::LeastInFlight,
    };
    config.defaults = defaults;
    config.users = users;
    config.retries = args.retries;
    config.cooldown = args.cooldown;
    config.max_cooling_percent = args.max_cooling_percent;
    config.sticky_ttl = args.sticky_ttl;
    config.connect_timeout = args.connect_timeout;
    config.idle_timeout = args.idle_timeout;
    config.max_connections = args.max_connections.max(1);
    config.max_per_client = args.max_per_client.max(1);
    config.allow_private_upstreams = args.allow_private_upstreams;
    Ok(config)
}

/// Runs the gateway until SIGINT or SIGTERM; exit code 0 then.
pub async fn run(remote: Remote, args: GatewayArgs) -> Result<i32, Failure> {
    let config = config(&remote, &args)?;
    let threads = args.threads.clamp(1, 256);
    let listeners = proxyfleet_gateway::reuseport_listeners(args.listen, threads).map_err(|e| {
        Failure::new(
            EXIT_UNREACHABLE,
            format!("error: cannot listen on {} (--listen): {e}", args.listen),
        )
    })?;
    let addr = listeners[0]
        .local_addr()
        .map_err(|e| Failure::new(EXIT_UNREACHABLE, e.to_string()))?;
    let metrics = Arc::new(Metrics::default());
    let mut signals = proxyfleet_common::signals::StopSignals::install().map_err(|e| {
        Failure::new(
            EXIT_UNREACHABLE,
            format!("error: installing signal handlers: {e}"),
        )
    })?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_task = match args.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Failure::new(
                    EXIT_UNREACHABLE,
                    format!("error: cannot listen on {addr} (--metrics-listen): {e}"),
                )
            })?;
            let metrics = metrics.clone();
            let mut stop = stop_rx.clone();
            Some(tokio::spawn(proxyfleet_common::metrics::serve(
                listener,
                move || metrics.render(),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            )))
        }
        None => None,
    };
    // The bound address on stdout, for scripts and tests that asked for port 0.
    println!("listening gateway={addr}");
    let served = tokio::task::spawn_blocking(move || {
        proxyfleet_gateway::run_threads(listeners, config, metrics, stop_rx)
    });
    tokio::pin!(served);
    let outcome = tokio::select! {
        result = &mut served => result,
        _ = signals.recv() => {
            let _ = stop_tx.send(true);
            served.await
        }
    };
    let _ = stop_tx.send(true);
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    match outcome {
        Ok(Ok(())) => Ok(0),
        Ok(Err(e)) => Err(Failure::new(
            EXIT_UNREACHABLE,
            format!("error: the gateway stopped: {e}"),
        )),
        Err(e) => Err(Failure::new(
            EXIT_UNREACHABLE,
            format!("error: the gateway stopped: {e}"),
        )),
    }
}
