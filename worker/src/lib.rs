//! proxyfleet worker: holds a session with the coordinator, checks the proxies of the chunks it is
//! leased and streams verdicts back; drains on shutdown.

pub mod check;
pub mod echo;
pub mod judges;
mod ledger;
pub mod metrics;
pub mod program;
pub mod session;
pub mod targets;

use std::future::Future;
use std::time::Duration;

use clap::Parser;
use tokio::sync::watch;

/// Runs a proxyfleet worker: connects to the coordinator, checks the proxies of the chunks it is
/// leased, and streams verdicts back. On SIGTERM it drains: takes no new work, finishes or hands
/// back what it holds within the grace period, and exits 0.
#[derive(Debug, Clone, Parser)]
#[command(name = "proxyfleet-worker", version)]
pub struct Cli {
    /// The coordinator's gRPC URL.
    #[arg(
        long,
        env = "PROXYFLEET_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator: String,

    /// Stable name of this worker; a worker reconnecting under the same name replaces its old
    /// session. Default: HOSTNAME-PID.
    #[arg(long, env = "PROXYFLEET_WORKER_NAME")]
    pub name: Option<String>,

    /// Checks run at once.
    #[arg(long, env = "PROXYFLEET_MAX_CHECKS", default_value_t = 256)]
    pub max_checks: usize,

    /// Chunks held at once, at most. Default: one per check slot (max-checks), 2 to 1024, so that
    /// chunks whose last candidates are slow never leave check slots idle. The coordinator leases
    /// a worker another chunk only while it has a free check slot for every candidate it holds.
    #[arg(long, env = "PROXYFLEET_MAX_LEASES")]
    pub max_leases: Option<u32>,

    /// PEM file of CA certificates to trust for https judges, besides the public roots.
    #[arg(long, env = "PROXYFLEET_JUDGE_CA")]
    pub judge_ca: Option<std::path::PathBuf>,

    /// This worker's public address(es), if the judges cannot tell (comma-separated); checks that
    /// show one of them through a proxy grade it transparent. Judges reached directly add theirs.
    #[arg(long, env = "PROXYFLEET_PUBLIC_IP", value_delimiter = ',')]
    pub public_ip: Vec<std::net::IpAddr>,

    /// The worker token, if the coordinator requires one.
    #[arg(long, env = "PROXYFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File holding the worker token.
    #[arg(long, env = "PROXYFLEET_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<std::path::PathBuf>,

    /// PEM CA certificate to trust for a coordinator served over TLS (https:// URL).
    #[arg(long, env = "PROXYFLEET_CA")]
    pub ca: Option<std::path::PathBuf>,

    /// PEM client certificate, for a coordinator that requires one (mTLS; with --client-key).
    #[arg(long, env = "PROXYFLEET_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<std::path::PathBuf>,

    /// PEM private key of --client-cert.
    #[arg(long, env = "PROXYFLEET_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<std::path::PathBuf>,

    /// Address of the Prometheus metrics endpoint (GET /metrics); none by default.
    #[arg(long, env = "PROXYFLEET_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Log format: text, or json (one object a line, with every field).
    #[arg(long, env = "PROXYFLEET_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// On SIGTERM, time to finish held chunks before handing the rest back.
    #[arg(long, env = "PROXYFLEET_DRAIN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_grace: Duration,

    /// For benchmarks only: answer every check at once, without touching the network, with a
    /// verdict that says it was not checked. What is left to measure is leasing, streaming,
    /// recording and progress.
    #[arg(long, hide_short_help = true)]
    pub instant_checks: bool,
}

/// What the worker runs with.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub coordinator: String,
    /// Identity sent in Hello.
    pub worker_id: String,
    pub name: String,
    pub max_checks: usize,
    /// Leases held at once.
    pub capacity: u32,
    pub drain_grace: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Extra CA certificates for https judges.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Addresses known to be this worker's, besides those the judges report.
    pub public_ips: Vec<std::net::IpAddr>,
    /// Sent with every message to the coordinator.
    pub token: proxyfleet_common::auth::BearerToken,
    /// TLS to the coordinator.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// Where to serve metrics, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Answer every check at once without checking (benchmarks only).
    pub instant_checks: bool,
}

/// What is wrong with a worker's configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--coordinator {0:?} must be an http:// or https:// URL, e.g. http://127.0.0.1:50051")]
    Coordinator(String),
    #[error("--max-checks must be between 1 and 100000")]
    MaxChecks,
    #[error("--max-leases must be between 1 and 1024")]
    MaxLeases,
    #[error("--judge-ca {path}: {error}; give a PEM file of CA certificates")]
    JudgeCa { path: String, error: String },
    #[error("{0}")]
    Credentials(String),
}

/// Reads the CA certificates of a PEM file.
pub fn read_ca(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    let fail = |error: String| ConfigError::JudgeCa {
        path: path.display().to_string(),
        error,
    };
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no certificate in it".into()));
    }
    Ok(certs)
}

impl TryFrom<Cli> for WorkerConfig {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, ConfigError> {
        if !(cli.coordinator.starts_with("http://") || cli.coordinator.starts_with("https://")) {
            return Err(ConfigError::Coordinator(cli.coordinator));
        }
        if cli.max_checks == 0 || cli.max_checks > 100_000 {
            return Err(ConfigError::MaxChecks);
        }
        let capacity = cli
            .max_leases
            .unwrap_or_else(|| default_capacity(cli.max_checks));
        if capacity == 0 || capacity > 1024 {
            return Err(ConfigError::MaxLeases);
        }
        let name = cli.name.unwrap_or_else(default_name);
        let extra_roots = match &cli.judge_ca {
            Some(path) => read_ca(path)?,
            None => Vec::new(),
        };
        let token =
            proxyfleet_common::auth::token_from(cli.token.as_deref(), cli.token_file.as_deref())
                .map_err(|e| ConfigError::Credentials(format!("--token-file: {e}")))?;
        let token = proxyfleet_common::auth::BearerToken::new(token.as_deref())
            .map_err(|e| ConfigError::Credentials(format!("--token: {e}")))?;
        let tls = proxyfleet_common::tls::client_config(
            cli.ca.as_deref(),
            cli.client_cert.as_deref().zip(cli.client_key.as_deref()),
        )
        .map_err(ConfigError::Credentials)?;
        Ok(WorkerConfig {
            coordinator: cli.coordinator,
            worker_id: name.clone(),
            name,
            max_checks: cli.max_checks,
            capacity,
            drain_grace: cli.drain_grace,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            extra_roots,
            public_ips: cli.public_ip,
            token,
            tls,
            metrics_listen: cli.metrics_listen,
            instant_checks: cli.instant_checks,
        })
    }
}

/// Chunks a worker with `max_checks` check slots holds at most, unless told otherwise: one a
/// slot, since a chunk may hold a single slow candidate at its end, and the coordinator bounds
/// what a worker holds by its slots anyway.
pub fn default_capacity(max_checks: usize) -> u32 {
    max_checks.clamp(2, 1024) as u32
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot set up TLS for https judges: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot listen on {addr} for metrics (--metrics-listen): {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Runs the worker until `shutdown` completes and the drain is over.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let (drain_tx, drain_rx) = watch::channel(false);
    let signal = tokio::spawn(async move {
        shutdown.await;
        let _ = drain_tx.send(true);
        // Keep the sender so the session sees the final value.
        std::future::pending::<()>().await;
    });
    let result = session::run(config, drain_rx).await;
    signal.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("proxyfleet-worker").chain(args.iter().copied()))
    }

    #[test]
    fn config_derives_capacity_and_refuses_bad_urls() {
        let c = WorkerConfig::try_from(cli(&["--max-checks", "1024", "--name", "w1"])).unwrap();
        assert_eq!((c.capacity, c.worker_id.as_str()), (1024, "w1"));
        let c = WorkerConfig::try_from(cli(&["--max-checks", "16"])).unwrap();
        assert_eq!(c.capacity, 16, "a lease a check slot");
        let c = WorkerConfig::try_from(cli(&["--max-checks", "1"])).unwrap();
        assert_eq!(c.capacity, 2);
        let e = WorkerConfig::try_from(cli(&["--coordinator", "127.0.0.1:1"])).unwrap_err();
        assert!(e.to_string().contains("http://"));
        assert!(WorkerConfig::try_from(cli(&["--max-checks", "0"])).is_err());
    }
}
