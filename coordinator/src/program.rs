//! The `proxyfleet-coordinator` program: parses the command line (under it, the config file), sets
//! up logs, runs the coordinator until SIGINT or SIGTERM.

use crate::{Cli, CoordinatorConfig};
use anyhow::Context;
use clap::CommandFactory;
use proxyfleet_common::config_file::{self, Program};
use proxyfleet_common::net::listen;
use proxyfleet_common::signals::StopSignals;
use tokio::net::TcpListener;

/// Runs the program as its binary does, on the caller's runtime; the `proxyfleet` binary calls
/// it when started under this program's name (the image ships one binary under three names).
pub async fn main() -> anyhow::Result<()> {
    // Flags, then the environment, then `[coordinator]` of --config, then the defaults.
    let cli: Cli = config_file::parse(&[Program::new("coordinator", Cli::command())]);
    proxyfleet_common::logging::init(&cli.log_format, "info");
    let open_files = match proxyfleet_common::net::raise_open_files_limit() {
        Ok(limit) => {
            tracing::info!(
                open_files = limit.soft,
                hard = limit.hard,
                was = limit.before,
                "open files limit"
            );
            Some(limit.soft)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open files limit");
            None
        }
    };
    crate::check_exposure(&cli, crate::tokens_given(&cli))?;
    let grpc = listen(cli.listen).with_context(|| {
        format!(
            "cannot listen on {} (--listen); is another coordinator running?",
            cli.listen
        )
    })?;
    let grpc_addr = grpc.local_addr()?;
    let judge_addr = cli.judge_listen.unwrap_or_else(|| {
        let mut a = grpc_addr;
        a.set_port(if cli.listen.port() == 0 {
            0
        } else {
            grpc_addr.port().wrapping_add(1)
        });
        a
    });
    let judge = listen(judge_addr)
        .with_context(|| format!("cannot listen on {judge_addr} for the judge (--judge-listen)"))?;
    // The HTTP API: where told, or on none with "off"; by default on the gRPC address with the
    // port after the judge's, and a default port that is taken only costs a warning.
    let http = match cli.http_listen.as_deref().map(str::trim) {
        Some("off") => None,
        Some(addr) => {
            let addr: std::net::SocketAddr = addr
                .parse()
                .with_context(|| format!("--http-listen {addr:?} is not ADDR:PORT or off"))?;
            Some(listen(addr).with_context(|| {
                format!(
                    "cannot listen on {addr} for the HTTP API (--http-listen; off turns it off)"
                )
            })?)
        }
        None => {
            let port = if cli.listen.port() == 0 {
                Some(0)
            } else {
                judge.local_addr()?.port().checked_add(1)
            };
            match port.map(|port| std::net::SocketAddr::new(grpc_addr.ip(), port)) {
                Some(addr) => match listen(addr) {
                    Ok(listener) => Some(listener),
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "the HTTP API's default port is taken: serving no HTTP API (give --http-listen ADDR)");
                        None
                    }
                },
                None => None,
            }
        }
    };
    let http_addr = match &http {
        Some(h) => h.local_addr()?.to_string(),
        None => "none".to_string(),
    };
    let config = CoordinatorConfig::from_cli(&cli, judge.local_addr()?)?;
    if let Some(limit) = open_files.filter(|&l| l < config.open_files_wanted()) {
        tracing::warn!(
            open_files = limit,
            wanted = config.open_files_wanted(),
            max_connections = config.max_connections,
            judge_max_connections = config.judge_max_connections,
            "the open files limit is below what the connection caps allow: when it is reached, accepts pause until connections close (raise ulimit -n or lower the caps)"
        );
    }

    let judge_tls = match (&cli.judge_tls_cert, &cli.judge_tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls_acceptor(cert, key)?),
        _ => None,
    };
    let metrics =
        match cli.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for metrics (--metrics-listen)")
            })?),
            None => None,
        };
    let metrics_addr = match &metrics {
        Some(m) => m.local_addr()?.to_string(),
        None => "none".to_string(),
    };
    // Handlers first: a signal sent as soon as the address is printed stops the coordinator
    // cleanly rather than killing it.
    let shutdown = shutdown_signal()?;
    // The bound addresses on stdout, for scripts and tests that asked for port 0.
    println!(
        "listening grpc={} judge={} judge_url={} metrics={metrics_addr} http={http_addr}",
        grpc_addr,
        judge.local_addr()?,
        config.judge_urls.join(",")
    );
    Ok(crate::run(grpc, judge, judge_tls, http, metrics, config, shutdown).await?)
}

/// Completes on SIGTERM or SIGINT; the handlers are installed when this is called, not when the
/// future is first polled.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut signals = StopSignals::install().context("installing SIGTERM and SIGINT handlers")?;
    Ok(async move { signals.recv().await })
}
