//! Coordinator configuration: the clap command line, and the validated config the library runs on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use proxyfleet_common::auth::{TokenFileError, token_from};

use crate::candidate::TargetPolicy;

/// Runs the proxyfleet coordinator: takes refresh jobs, leases their chunks to workers,
/// streams progress to clients and serves a judge endpoint for the checks.
#[derive(Debug, Clone, Parser)]
#[command(name = "proxyfleet-coordinator", version)]
pub struct Cli {
    /// Address of the gRPC port (clients and workers).
    #[arg(long, env = "PROXYFLEET_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Directory for the coordinator's state and finished jobs' results (created if missing).
    #[arg(long, env = "PROXYFLEET_DATA_DIR", default_value = "proxyfleet-data")]
    pub data_dir: PathBuf,

    /// A worker silent this long loses its leases, which go to other workers (e.g. 30s, 2m).
    #[arg(long, env = "PROXYFLEET_LEASE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,

    /// Accept candidates in loopback, private, link-local and multicast ranges (labs and tests).
    #[arg(long, env = "PROXYFLEET_ALLOW_PRIVATE_TARGETS")]
    pub allow_private_targets: bool,

    /// Address of the built-in judge's HTTP port; port 0 picks a free one.
    /// Default: the gRPC address with the next port.
    #[arg(long, env = "PROXYFLEET_JUDGE_LISTEN")]
    pub judge_listen: Option<SocketAddr>,

    /// Address of the HTTP API (GET /pools, /pool/NAME, /pool/NAME/random), behind the client
    /// token when tokens are set; `off` for none. Default: the --listen address with the port
    /// after the judge's.
    #[arg(long, env = "PROXYFLEET_HTTP_LISTEN", value_name = "ADDR|off")]
    pub http_listen: Option<String>,

    /// Judge URLs given to jobs that name none, spread across checks (repeat the flag or separate
    /// with commas). Default: the built-in judge, as `http://ADDR/judge` (with this host's name
    /// when it listens on all interfaces).
    #[arg(
        long = "judge-url",
        env = "PROXYFLEET_JUDGE_URL",
        value_delimiter = ','
    )]
    pub judge_urls: Vec<String>,

    /// A chunk whose worker vanished this many times is cut in halves and checked again, until
    /// a proxy that kills every worker that checks it alone is marked poison.
    #[arg(long, env = "PROXYFLEET_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,

    /// Never lease a slow lease's unchecked proxies again to an idle worker at a job's tail
    /// (speculative leases are on by default: the first verdict of each proxy wins).
    #[arg(long, env = "PROXYFLEET_NO_SPECULATION")]
    pub no_speculation: bool,

    /// Check each pool's live proxies again this often (e.g. 5m), as leased work that goes
    /// before new candidates; 0 turns it off. A refresh may set its pool's own interval
    /// (`refresh --revalidate-every`).
    #[arg(
        long,
        env = "PROXYFLEET_REVALIDATE_EVERY",
        default_value = "10m",
        value_parser = humantime::parse_duration
    )]
    pub revalidate_every: Duration,

    /// A pool's proxy leaves its live set after this many failed checks in a row; a later
    /// refresh that finds it usable brings it back.
    #[arg(long, env = "PROXYFLEET_MAX_FAILURES", default_value_t = 3)]
    pub max_failures: u32,

    /// GeoIP databases naming the exit country of every usable proxy (MaxMind DB .mmdb, or the
    /// legacy GeoIP country .dat of Debian's geoip-database), comma-separated; `off` for none.
    /// Default: Debian's /usr/share/GeoIP/GeoIP.dat and GeoIPv6.dat where installed. Nothing is
    /// ever downloaded.
    #[arg(
        long,
        env = "PROXYFLEET_GEOIP",
        value_delimiter = ',',
        value_name = "FILE|off"
    )]
    pub geoip: Vec<PathBuf>,

    /// PEM certificate chain for serving the built-in judge over HTTPS (with --judge-tls-key).
    #[arg(long, env = "PROXYFLEET_JUDGE_TLS_CERT", requires = "judge_tls_key")]
    pub judge_tls_cert: Option<PathBuf>,

    /// PEM private key of --judge-tls-cert.
    #[arg(long, env = "PROXYFLEET_JUDGE_TLS_KEY", requires = "judge_tls_cert")]
    pub judge_tls_key: Option<PathBuf>,

    /// Most candidates one job may hold.
    #[arg(long, env = "PROXYFLEET_MAX_CANDIDATES", default_value_t = 2_000_000)]
    pub max_candidates: usize,

    /// Bearer token workers must present (or --worker-token-file). With tokens unset the
    /// coordinator only listens on loopback, unless --allow-insecure-listen.
    #[arg(long, env = "PROXYFLEET_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,

    /// File holding the worker token.
    #[arg(
        long,
        env = "PROXYFLEET_WORKER_TOKEN_FILE",
        conflicts_with = "worker_token"
    )]
    pub worker_token_file: Option<PathBuf>,

    /// Bearer token clients must present (or --client-token-file).
    #[arg(long, env = "PROXYFLEET_CLIENT_TOKEN", hide_env_values = true)]
    pub client_token: Option<String>,

    /// File holding the client token.
    #[arg(
        long,
        env = "PROXYFLEET_CLIENT_TOKEN_FILE",
        conflicts_with = "client_token"
    )]
    pub client_token_file: Option<PathBuf>,

    /// Listen on a non-loopback address without tokens (anyone who reaches the port can submit
    /// jobs and pose as a worker).
    #[arg(long, env = "PROXYFLEET_ALLOW_INSECURE_LISTEN")]
    pub allow_insecure_listen: bool,

    /// PEM certificate (chain) for serving the gRPC port over TLS (with --tls-key).
    #[arg(long, env = "PROXYFLEET_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "PROXYFLEET_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate: workers must present a client certificate it signed (mTLS).
    #[arg(long, env = "PROXYFLEET_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Largest request a client may send (a submitted list), in bytes.
    #[arg(long, env = "PROXYFLEET_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Most jobs not ended yet (queued, scraping or checking) at once; more are refused.
    #[arg(long, env = "PROXYFLEET_MAX_ACTIVE_JOBS", default_value_t = 100)]
    pub max_active_jobs: usize,

    /// Most progress and results streams open at once; more are refused.
    #[arg(long, env = "PROXYFLEET_MAX_WATCHERS", default_value_t = 1000)]
    pub max_watchers: usize,

    /// Most connections the gRPC port holds at once (clients and workers); more are closed as
    /// they arrive.
    #[arg(long, env = "PROXYFLEET_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Most connections the built-in judge holds at once; more are closed as they arrive. Every
    /// check in flight on every worker dials the judge: keep it above the fleet's total
    /// --max-checks.
    #[arg(long, env = "PROXYFLEET_JUDGE_MAX_CONNECTIONS", default_value_t = 8192)]
    pub judge_max_connections: usize,

    /// A connection that has not sent its first request this long after it was accepted (its
    /// TLS handshake included) is closed: an HTTP/2 request on the gRPC port, a request head on
    /// the judge. Raise it if checks are given longer timeouts through very slow proxies.
    #[arg(long, env = "PROXYFLEET_FIRST_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub first_request_timeout: Duration,

    /// Address of the Prometheus metrics endpoint (GET /metrics); none by default.
    #[arg(long, env = "PROXYFLEET_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format: text, or json (one object a line, with every field).
    #[arg(long, env = "PROXYFLEET_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Forget ended jobs (results, outputs in the store) this long after they ended, e.g. 7d.
    /// Default: keep them.
    #[arg(long, env = "PROXYFLEET_RETAIN", value_parser = humantime::parse_duration)]
    pub retain: Option<Duration>,

    /// Largest body read from one source; a larger source fails with a clear error.
    #[arg(long, env = "PROXYFLEET_MAX_SOURCE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_source_bytes: u64,

    /// Where finished refreshes write live_proxies.json, live_proxies.txt and one txt per
    /// protocol (pools other than "default" in a subdirectory). Default: DATA_DIR/output.
    #[arg(long, env = "PROXYFLEET_OUTPUT_DIR")]
    pub output_dir: Option<PathBuf>,

    /// Sources file (TOML): the sources of scheduled refreshes and of `proxyfleet refresh`
    /// without a file. Local paths in it are read by the coordinator.
    #[arg(long, env = "PROXYFLEET_SOURCES")]
    pub sources: Option<PathBuf>,

    /// Refresh the default pool from --sources this often (e.g. 30m). A tick that finds a refresh
    /// of the pool still running is skipped.
    #[arg(long, env = "PROXYFLEET_REFRESH_EVERY", value_parser = humantime::parse_duration, requires = "sources")]
    pub refresh_every: Option<Duration>,

    /// Usable proxies a scheduled refresh needs to succeed.
    #[arg(long, env = "PROXYFLEET_REFRESH_MIN_USABLE", default_value_t = 1)]
    pub refresh_min_usable: u64,

    /// Time one check of a scheduled refresh may take.
    #[arg(long, env = "PROXYFLEET_REFRESH_CHECK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub refresh_check_timeout: Duration,
}

/// PEM files of the gRPC port's TLS.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    /// Workers must present a certificate signed by this CA.
    pub(crate) client_ca: Option<PathBuf>,
}

/// Which GeoIP databases the coordinator reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GeoIpFiles {
    /// Debian's geoip-database files, where installed.
    Installed,
    /// None.
    Off,
    Files(Vec<PathBuf>),
}

/// Scheduled refreshes of the default pool.
#[derive(Debug, Clone)]
pub(crate) struct RefreshSchedule {
    pub(crate) every: Duration,
    pub(crate) min_usable: u64,
    pub(crate) check_timeout: Duration,
}

/// What the coordinator runs with; only ever built through `validate`.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub data_dir: PathBuf,
    pub lease_ttl: Duration,
    /// Workers send a heartbeat this often; a third of the lease TTL.
    pub heartbeat_interval: Duration,
    pub allow_private_targets: bool,
    /// Judge URLs for jobs that name none.
    pub judge_urls: Vec<String>,
    pub max_attempts: u32,
    /// At a job's tail, lease a slow lease's unchecked candidates again to an idle worker.
    pub speculation: bool,
    /// Default interval of pools' revalidation rounds; zero: none.
    pub revalidate_every: Duration,
    /// Failed checks in a row that take a proxy out of its pool's live set.
    pub pool_max_failures: u32,
    /// GeoIP databases to read; none: Debian's where installed.
    pub geoip: GeoIpFiles,
    pub max_candidates: usize,
    /// How often leases and deadlines are checked and progress published.
    pub tick: Duration,
    /// Where finished refreshes write their output files.
    pub output_dir: PathBuf,
    /// Largest body read from one source.
    pub max_source_bytes: u64,
    /// Ended jobs are forgotten this long after they ended.
    pub retain: Option<Duration>,
    /// Token workers must present; none: no check.
    pub worker_token: Option<String>,
    /// Token clients must present; none: no check.
    pub client_token: Option<String>,
    /// TLS for the gRPC port.
    pub(crate) tls: Option<TlsFiles>,
    pub max_message_bytes: usize,
    pub max_active_jobs: usize,
    pub max_watchers: usize,
    /// Connections the gRPC port holds at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Connections the built-in judge holds at once; more are closed as they arrive.
    pub judge_max_connections: usize,
    /// A connection that has sent no request (HTTP/2 HEADERS on the gRPC port, a request head
    /// on the judge) this long after it was accepted, TLS handshake included, is closed.
    pub first_request_timeout: Duration,
    /// The operator's sources file.
    pub sources_file: Option<PathBuf>,
    pub(crate) refresh: Option<RefreshSchedule>,
}

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--lease-ttl must be at least 300ms, got {0:?}")]
    LeaseTtl(Duration),
    #[error("--max-attempts must be at least 1")]
    MaxAttempts,
    #[error("--max-failures must be at least 1")]
    MaxFailures,
    #[error("--revalidate-every must be 0s (never) or at least 1s, got {0:?}")]
    RevalidateEvery(Duration),
    #[error("--judge-url {0:?} is not an http:// or https:// URL")]
    JudgeUrl(String),
    #[error("--refresh-every must be at least 1s")]
    RefreshEvery,
    #[error("{flag}: {error}")]
    TokenFile {
        flag: &'static str,
        error: TokenFileError,
    },
    #[error(
        "refusing to listen on {0} without --worker-token and --client-token: anyone who reaches it could submit jobs or pose as a worker. Set both tokens, listen on 127.0.0.1, or pass --allow-insecure-listen"
    )]
    InsecureListen(SocketAddr),
    #[error("{0} must be at least 1")]
    MaxConnections(&'static str),
    #[error("--first-request-timeout must be between 1s and 1h, got {0:?}")]
    FirstRequestTimeout(Duration),
}

/// Descriptors kept beyond the ports' connections: the store, sources being fetched, logs.
const DESCRIPTORS_BESIDES_CONNECTIONS: u64 = 256;

impl CoordinatorConfig {
    pub fn new(data_dir: PathBuf, judge_urls: Vec<String>) -> Self {
        CoordinatorConfig {
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            allow_private_targets: false,
            judge_urls,
            max_attempts: 3,
            speculation: true,
            revalidate_every: crate::scheduler::DEFAULT_REVALIDATE_EVERY,
            pool_max_failures: crate::scheduler::DEFAULT_MAX_FAILURES,
            geoip: GeoIpFiles::Installed,
            max_candidates: 2_000_000,
            tick: Duration::from_millis(200),
            output_dir: data_dir.join("output"),
            max_source_bytes: 64 * 1024 * 1024,
            retain: None,
            worker_token: None,
            client_token: None,
            tls: None,
            max_message_bytes: 64 * 1024 * 1024,
            max_active_jobs: 100,
            max_watchers: 1000,
            max_connections: 4096,
            judge_max_connections: 8192,
            first_request_timeout: Duration::from_secs(10),
            sources_file: None,
            refresh: None,
            data_dir,
        }
    }

    pub fn validate(mut self) -> Result<Self, ConfigError> {
        if self.lease_ttl < Duration::from_millis(300) {
            return Err(ConfigError::LeaseTtl(self.lease_ttl));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::MaxAttempts);
        }
        if self.pool_max_failures == 0 {
            return Err(ConfigError::MaxFailures);
        }
        if !self.revalidate_every.is_zero() && self.revalidate_every < Duration::from_secs(1) {
            return Err(ConfigError::RevalidateEvery(self.revalidate_every));
        }
        if self.judge_urls.is_empty() {
            return Err(ConfigError::JudgeUrl(String::new()));
        }
        if let Some(bad) = self
            .judge_urls
            .iter()
            .find(|u| proxyfleet_common::url::HttpUrl::parse(u).is_err())
        {
            return Err(ConfigError::JudgeUrl(bad.clone()));
        }
        if self
            .refresh
            .as_ref()
            .is_some_and(|r| r.every < Duration::from_secs(1))
        {
            return Err(ConfigError::RefreshEvery);
        }
        if self.max_connections == 0 {
            return Err(ConfigError::MaxConnections("--max-connections"));
        }
        if self.judge_max_connections == 0 {
            return Err(ConfigError::MaxConnections("--judge-max-connections"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600))
            .contains(&self.first_request_timeout)
        {
            return Err(ConfigError::FirstRequestTimeout(self.first_request_timeout));
        }
        self.heartbeat_interval = self.lease_ttl / 3;
        self.tick =
            (self.lease_ttl / 10).clamp(Duration::from_millis(50), Duration::from_millis(200));
        Ok(self)
    }

    /// Which targets jobs may name, as every part of the coordinator applies it: candidates,
    /// sources, judges, and the checks it asks of workers.
    pub(crate) fn target_policy(&self) -> TargetPolicy {
        TargetPolicy {
            allow_private: self.allow_private_targets,
        }
    }

    /// Descriptors the ports may need when both are full, with room for everything else: an
    /// open-files limit below it is reached before the caps, and accepts then pause until
    /// connections close.
    pub fn open_files_wanted(&self) -> u64 {
        (self.max_connections as u64)
            .saturating_add(self.judge_max_connections as u64)
            .saturating_add(DESCRIPTORS_BESIDES_CONNECTIONS)
    }

    /// Builds the config from the command line, given the judge's bound address.
    pub fn from_cli(cli: &Cli, judge_addr: SocketAddr) -> Result<Self, ConfigError> {
        let judge_urls = if cli.judge_urls.is_empty() {
            let url = default_judge_url(judge_addr);
            if cli.judge_tls_cert.is_some() {
                vec![url.replacen("http://", "https://", 1)]
            } else {
                vec![url]
            }
        } else {
            cli.judge_urls.clone()
        };
        let mut config = CoordinatorConfig::new(cli.data_dir.clone(), judge_urls);
        config.lease_ttl = cli.lease_ttl;
        config.allow_private_targets = cli.allow_private_targets;
        config.max_attempts = cli.max_attempts;
        config.speculation = !cli.no_speculation;
        config.revalidate_every = cli.revalidate_every;
        config.pool_max_failures = cli.max_failures;
        config.geoip = match cli.geoip.as_slice() {
            [] => GeoIpFiles::Installed,
            [off] if off.as_os_str() == "off" => GeoIpFiles::Off,
            files => GeoIpFiles::Files(files.to_vec()),
        };
        config.max_candidates = cli.max_candidates;
        if let Some(dir) = &cli.output_dir {
            config.output_dir = dir.clone();
        }
        config.sources_file = cli.sources.clone();
        config.max_source_bytes = cli.max_source_bytes;
        config.retain = cli.retain;
        config.max_message_bytes = cli.max_message_bytes;
        config.max_active_jobs = cli.max_active_jobs;
        config.max_watchers = cli.max_watchers;
        config.max_connections = cli.max_connections;
        config.judge_max_connections = cli.judge_max_connections;
        config.first_request_timeout = cli.first_request_timeout;
        config.worker_token = read_token(
            &cli.worker_token,
            &cli.worker_token_file,
            "--worker-token-file",
        )?;
        config.client_token = read_token(
            &cli.client_token,
            &cli.client_token_file,
            "--client-token-file",
        )?;
        config.tls = cli
            .tls_cert
            .clone()
            .zip(cli.tls_key.clone())
            .map(|(cert, key)| TlsFiles {
                cert,
                key,
                client_ca: cli.tls_client_ca.clone(),
            });
        check_exposure(
            cli,
            config.worker_token.is_some() && config.client_token.is_some(),
        )?;
        config.refresh = cli.refresh_every.map(|every| RefreshSchedule {
            every,
            min_usable: cli.refresh_min_usable,
            check_timeout: cli.refresh_check_timeout,
        });
        config.validate()
    }
}

/// Without both tokens the port must stay on loopback, unless the operator says otherwise.
pub fn check_exposure(cli: &Cli, tokens_set: bool) -> Result<(), ConfigError> {
    if tokens_set || cli.allow_insecure_listen {
        return Ok(());
    }
    if !cli.listen.ip().is_loopback() {
        return Err(ConfigError::InsecureListen(cli.listen));
    }
    // The HTTP API serves the pools, credentials and all: it is held to the same rule.
    if let Some(addr) = cli
        .http_listen
        .as_deref()
        .and_then(|a| a.trim().parse::<SocketAddr>().ok())
        .filter(|a| !a.ip().is_loopback())
    {
        return Err(ConfigError::InsecureListen(addr));
    }
    Ok(())
}

/// Whether both tokens are given, as flags or files (read later, with errors reported then).
pub fn tokens_given(cli: &Cli) -> bool {
    (cli.worker_token.is_some() || cli.worker_token_file.is_some())
        && (cli.client_token.is_some() || cli.client_token_file.is_some())
}

/// A token from its flag or its file; `flag` names the file's flag in errors.
fn read_token(
    token: &Option<String>,
    file: &Option<PathBuf>,
    flag: &'static str,
) -> Result<Option<String>, ConfigError> {
    token_from(token.as_deref(), file.as_deref())
        .map_err(|error| ConfigError::TokenFile { flag, error })
}

/// `http://ADDR/judge`, naming this host when the judge listens on every interface.
pub fn default_judge_url(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let url = format!("http://{host}:{}/judge", addr.port());
        // A host name the URL parser refuses (all digits, say) is no name workers can use.
        if proxyfleet_common::url::HttpUrl::parse(&url).is_ok() {
            url
        } else {
            format!("http://localhost:{}/judge", addr.port())
        }
    } else {
        format!("http://{addr}/judge")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_derives_heartbeat_and_refuses_nonsense() {
        let mut c = CoordinatorConfig::new("d".into(), vec!["http://127.0.0.1:1/judge".into()]);
        c.lease_ttl = Duration::from_secs(3);
        let c = c.validate().unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
        let mut bad = c.clone();
        bad.lease_ttl = Duration::from_millis(10);
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("--lease-ttl")
        );
        let mut bad = c.clone();
        bad.judge_urls = vec!["judge".into()];
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("--judge-url")
        );
    }

    #[test]
    fn connection_limits_are_validated() {
        let c = CoordinatorConfig::new("d".into(), vec!["http://127.0.0.1:1/judge".into()]);
        assert_eq!(c.first_request_timeout, Duration::from_secs(10));
        assert_eq!(c.open_files_wanted(), 4096 + 8192 + 256);
        let mut bad = c.clone();
        bad.max_connections = 0;
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("--max-connections")
        );
        let mut bad = c.clone();
        bad.judge_max_connections = 0;
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("--judge-max-connections")
        );
        for timeout in [Duration::from_millis(999), Duration::from_secs(3601)] {
            let mut bad = c.clone();
            bad.first_request_timeout = timeout;
            assert!(
                bad.validate()
                    .unwrap_err()
                    .to_string()
                    .contains("--first-request-timeout")
            );
        }
        let cli = Cli::parse_from([
            "proxyfleet-coordinator",
            "--max-connections",
            "10",
            "--judge-max-connections",
            "20",
            "--first-request-timeout",
            "3s",
        ]);
        let c = CoordinatorConfig::from_cli(&cli, "127.0.0.1:1".parse().unwrap()).unwrap();
        assert_eq!(
            (
                c.max_connections,
                c.judge_max_connections,
                c.first_request_timeout
            ),
            (10, 20, Duration::from_secs(3))
        );
    }

    #[test]
    fn an_empty_token_file_is_refused_naming_flag_and_file() {
        let path = std::env::temp_dir().join(format!(
            "proxyfleet-config-empty-{}.token",
            std::process::id()
        ));
        std::fs::write(&path, "\n").unwrap();
        let cli = Cli::parse_from([
            "proxyfleet-coordinator",
            "--worker-token-file",
            path.to_str().unwrap(),
        ]);
        let e = CoordinatorConfig::from_cli(&cli, "127.0.0.1:1".parse().unwrap()).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        let text = e.to_string();
        assert!(
            text.starts_with("--worker-token-file: ")
                && text.contains(&format!("{} is empty", path.display())),
            "{text}"
        );
    }

    #[test]
    fn judge_url_names_the_bound_address() {
        assert_eq!(
            default_judge_url("127.0.0.1:8080".parse().unwrap()),
            "http://127.0.0.1:8080/judge"
        );
        assert!(default_judge_url("0.0.0.0:8080".parse().unwrap()).ends_with(":8080/judge"));
    }
}
