//! The `proxyfleet-worker` program: parses the command line (under it, the config file), sets up
//! logs, runs the worker; SIGTERM or Ctrl-C starts a drain, a second one exits at once.

use crate::{Cli, WorkerConfig};
use clap::CommandFactory;
use proxyfleet_common::config_file::{self, Program};

/// Runs the program as its binary does, on the caller's runtime; the `proxyfleet` binary calls
/// it when started under this program's name (the image ships one binary under three names).
pub async fn main() -> anyhow::Result<()> {
    // Flags, then the environment, then `[worker]` of --config, then the defaults.
    let cli: Cli = config_file::parse(&[Program::new("worker", Cli::command())]);
    proxyfleet_common::logging::init(&cli.log_format, "info");
    // Every check in flight holds a descriptor or two.
    match proxyfleet_common::net::raise_open_files_limit() {
        Ok(limit) => tracing::info!(
            open_files = limit.soft,
            hard = limit.hard,
            was = limit.before,
            "open files limit"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open files limit"),
    }
    let config = WorkerConfig::try_from(cli)?;
    let shutdown = shutdown_signal()?;
    Ok(crate::run(config, shutdown).await?)
}

/// Completes on the first SIGTERM or SIGINT; a second one ends the process with status 130. The
/// handlers are installed when this is called, so a signal during startup drains too.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use anyhow::Context;
    let mut signals = proxyfleet_common::signals::StopSignals::install()
        .context("installing SIGTERM and SIGINT handlers")?;
    Ok(async move {
        signals.recv().await;
        tracing::info!("shutdown requested: draining (send the signal again to exit at once)");
        // Whoever awaited this future has started the drain; a second signal ends the process.
        tokio::spawn(async move {
            signals.recv().await;
            std::process::exit(130);
        });
    })
}
