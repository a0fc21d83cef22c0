//! The `proxyfleet` command line: every command's flags, each with its `PROXYFLEET_*`
//! environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// proxyfleet: keep a pool of working proxies fresh with a fleet of workers.
///
/// Standard output carries only a command's data (proxies, job ids, JSON, tables); progress,
/// notes and summaries go to standard error. Exit codes: 0 success (job SUCCEEDED), 1
/// coordinator unreachable or other error, 2 bad input or unknown job, 3 job INSUFFICIENT, 4 job
/// FAILED, 5 job CANCELLED, 6 `refresh --wait` timed out, 7 `cancel` of a job that had already
/// ended, 130 `run` or `demo` interrupted. `watch`, `submit --wait`, `refresh --wait` and `results --follow` reconnect when the
/// coordinator restarts, until the job's deadline (or --wait-timeout) passes.
#[derive(Debug, Parser)]
#[command(name = "proxyfleet", version)]
pub struct Cli {
    /// Print only data and errors: no progress, notes or summaries on standard error.
    #[arg(long, short, global = true, env = "PROXYFLEET_QUIET")]
    pub quiet: bool,

    /// Coordinator options written before the command, as earlier versions took them.
    #[command(flatten)]
    pub before: EarlyClientArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// How a command reaches its coordinator. Only the commands that talk to one take these.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Coordinator")]
pub struct ClientArgs {
    /// The coordinator's gRPC URL.
    #[arg(
        long,
        env = "PROXYFLEET_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator: String,

    /// The client token, if the coordinator requires one.
    #[arg(long, env = "PROXYFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File holding the client token.
    #[arg(long, env = "PROXYFLEET_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,

    /// PEM CA certificate to trust for a coordinator served over TLS (https:// URL).
    #[arg(long, env = "PROXYFLEET_CA")]
    pub ca: Option<PathBuf>,

    /// PEM client certificate, for a coordinator that asks for one (with --client-key).
    #[arg(long, env = "PROXYFLEET_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of --client-cert.
    #[arg(long, env = "PROXYFLEET_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

/// The coordinator options in their old place, before the command (`proxyfleet --coordinator
/// URL health`), kept so that scripts and healthchecks written so go on working. Hidden from
/// help; written there they win over the command's own, and a command that talks to no
/// coordinator refuses them.
#[derive(Debug, Clone, Default, Args)]
pub struct EarlyClientArgs {
    #[arg(long = "coordinator", id = "early_coordinator", hide = true)]
    pub coordinator: Option<String>,
    #[arg(long = "token", id = "early_token", hide = true)]
    pub token: Option<String>,
    #[arg(long = "token-file", id = "early_token_file", hide = true)]
    pub token_file: Option<PathBuf>,
    #[arg(long = "ca", id = "early_ca", hide = true)]
    pub ca: Option<PathBuf>,
    #[arg(long = "client-cert", id = "early_client_cert", hide = true)]
    pub client_cert: Option<PathBuf>,
    #[arg(long = "client-key", id = "early_client_key", hide = true)]
    pub client_key: Option<PathBuf>,
}

impl EarlyClientArgs {
    /// The first option given in this place, as written, for a refusal.
    pub fn first_given(&self) -> Option<&'static str> {
        [
            (self.coordinator.is_some(), "--coordinator"),
            (self.token.is_some(), "--token"),
            (self.token_file.is_some(), "--token-file"),
            (self.ca.is_some(), "--ca"),
            (self.client_cert.is_some(), "--client-cert"),
            (self.client_key.is_some(), "--client-key"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }

    /// `args` with the options given in this place instead of theirs.
    pub fn over(&self, args: &ClientArgs) -> ClientArgs {
        let mut merged = args.clone();
        if let Some(url) = &self.coordinator {
            merged.coordinator = url.clone();
        }
        if self.token.is_some() || self.token_file.is_some() {
            merged.token = self.token.clone();
            merged.token_file = self.token_file.clone();
        }
        if self.ca.is_some() {
            merged.ca = self.ca.clone();
        }
        if self.client_cert.is_some() || self.client_key.is_some() {
            merged.client_cert = self.client_cert.clone();
            merged.client_key = self.client_key.clone();
        }
        merged
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a refresh job. Prints the job id alone on standard output (`JOB=$(proxyfleet
    /// submit ...)`); with --wait, follows the job (progress and summary on standard error) and
    /// exits with its exit code.
    Submit(SubmitArgs),
    /// Follow a job's progress until it ends, across coordinator restarts; exits with the job's
    /// exit code. Progress and the summary go to standard error; standard output stays empty
    /// unless --json.
    Watch(WatchArgs),
    /// What became of a job: its timing, sources (with their errors), dropped entries,
    /// verdicts by reason, chunks, attempts and the workers that checked it. Prints the report
    /// on standard output, as text or with --json one JSON object.
    Job(JobReportArgs),
    /// Print a job's results: every candidate once, with its verdict.
    Results(ResultsArgs),
    /// List the coordinator's jobs, newest first.
    Jobs(ListArgs),
    /// List the workers connected to the coordinator: CAPACITY is a worker's check slots (its
    /// --max-checks), LEASES the leases it holds of the most it may hold.
    Workers(ListArgs),
    /// Cancel a job. Exit code 0 once it is cancelled, 7 when it had already ended (it is left
    /// as it was), 2 for an unknown job.
    Cancel(CancelArgs),
    /// Check a list on this machine: an in-process coordinator and workers, no setup needed.
    /// Prints the usable proxies on standard output, fastest first; everything else goes to
    /// standard error.
    Run(RunArgs),
    /// Run a whole refresh offline against simulated proxies on loopback, as `run` does.
    Demo(DemoArgs),
    /// Exit 0 if the coordinator answers its health check as serving (for container
    /// healthchecks), 1 otherwise; prints "serving" or "not serving".
    Health(HealthArgs),
    /// Run a farm of simulated proxies and serve their list over HTTP, for demos and tests of a
    /// deployment (the proxies are real servers; nothing leaves the hosts they run on).
    Farm(FarmArgs),
    /// The preflight before a service needs proxies: refresh the pool from its sources and, with
    /// --wait, exit 0 as soon as the pool's live_proxies files hold enough proxies seen usable
    /// since it was submitted (possibly before it ends). Prints the refresh's job id on standard
    /// output. Exit codes: 0 enough usable in the files, 3 the refresh ended with fewer, 4 it
    /// failed, 5 cancelled, 6 --wait-timeout passed first, 1 coordinator unreachable (or a
    /// refresh that succeeded whose files it could not write), 2 bad input.
    Refresh(RefreshArgs),
    /// Print a pool's live proxies (by default the best first), filtered: the same set as the
    /// pool's live_proxies files, GetPool and the HTTP API.
    Pool(PoolArgs),
    /// List the pools the coordinator keeps, with their live and total counts.
    Pools(ListArgs),
    /// A rotating proxy: one address (HTTP forward and CONNECT, SOCKS5 on the same port) that
    /// sends each client connection through one live proxy of a pool, following the pool as it
    /// changes. Options go in the username: USER-session-ID (sticky upstream), -country-CC,
    /// -protocol-P[+P], -anonymity-GRADE, -maxlatency-MS. Runs until SIGINT or SIGTERM.
    Gateway(GatewayArgs),
}

impl Command {
    /// How the command reaches its coordinator; None for one that starts its own or none.
    pub fn client(&self) -> Option<&ClientArgs> {
        match self {
            Command::Submit(a) => Some(&a.client),
            Command::Watch(a) => Some(&a.client),
            Command::Job(a) => Some(&a.client),
            Command::Results(a) => Some(&a.client),
            Command::Jobs(a) | Command::Workers(a) | Command::Pools(a) => Some(&a.client),
            Command::Cancel(a) => Some(&a.client),
            Command::Health(a) => Some(&a.client),
            Command::Refresh(a) => Some(&a.client),
            Command::Pool(a) => Some(&a.client),
            Command::Gateway(a) => Some(&a.client),
            Command::Run(_) | Command::Demo(_) | Command::Farm(_) => None,
        }
    }

    /// The command's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Submit(_) => "submit",
            Command::Watch(_) => "watch",
            Command::Job(_) => "job",
            Command::Results(_) => "results",
            Command::Jobs(_) => "jobs",
            Command::Workers(_) => "workers",
            Command::Cancel(_) => "cancel",
            Command::Run(_) => "run",
            Command::Demo(_) => "demo",
            Command::Health(_) => "health",
            Command::Farm(_) => "farm",
            Command::Refresh(_) => "refresh",
            Command::Pool(_) => "pool",
            Command::Pools(_) => "pools",
            Command::Gateway(_) => "gateway",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// The job id, as printed by `submit`.
    pub job: String,
    /// Print the job as it ended, as one JSON object on standard output.
    #[arg(long, env = "PROXYFLEET_JSON")]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ResultsArgs {
    /// The job id.
    pub job: String,
    /// Stream verdicts as they are recorded until the job ends, across coordinator restarts,
    /// each candidate once.
    #[arg(long, env = "PROXYFLEET_FOLLOW")]
    pub follow: bool,
    /// Output format: one candidate a line, or a JSON array of objects.
    #[arg(long, env = "PROXYFLEET_FORMAT", value_enum, default_value_t = Format::Txt)]
    pub format: Format,
    /// The same as --format json: a JSON array with one object per candidate.
    #[arg(long, env = "PROXYFLEET_JSON")]
    pub json: bool,
    /// Only the usable proxies.
    #[arg(long, env = "PROXYFLEET_USABLE_ONLY")]
    pub usable_only: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A command that lists what the coordinator holds (jobs, workers, pools).
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Print a JSON array (one object per row of the table) instead of the table.
    #[arg(long, env = "PROXYFLEET_JSON")]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CancelArgs {
    /// The job id.
    pub job: String,
    /// Print the job after the cancel as one JSON object, with "cancelled": whether this call
    /// cancelled it.
    #[arg(long, env = "PROXYFLEET_JSON")]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// Print {"serving": true|false} instead of the word.
    #[arg(long, env = "PROXYFLEET_JSON")]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// How the gateway rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Rotation {
    /// Each connection to the next upstream in turn.
    RoundRobin,
    Random,
    /// The upstream with the lowest recent latency.
    LeastLatency,
    /// The upstream with the fewest connections open through it.
    LeastInFlight,
}

#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Address clients connect to (HTTP and SOCKS5). Off loopback it requires --users.
    #[arg(
        long,
        env = "PROXYFLEET_GATEWAY_LISTEN",
        default_value = "127.0.0.1:8899"
    )]
    pub listen: std::net::SocketAddr,
    /// The pool whose live proxies are the upstreams.
    #[arg(long, env = "PROXYFLEET_POOL", default_value = "default")]
    pub pool: String,
    #[arg(long, env = "PROXYFLEET_GATEWAY_POLICY", value_enum, default_value_t = Rotation::RoundRobin)]
    pub policy: Rotation,
    /// Users file: USER:PASSWORD a line. Without it, clients are not asked for credentials (on a
    /// loopback --listen only).
    #[arg(long, env = "PROXYFLEET_GATEWAY_USERS")]
    pub users: Option<PathBuf>,
    /// What a client that asks nothing gets, e.g. country=DE,protocol=socks5+http,anonymity=elite,maxlatency=800.
    #[arg(long, env = "PROXYFLEET_GATEWAY_DEFAULTS")]
    pub defaults: Option<String>,
    /// Other upstreams tried after one fails to connect or handshake, before the client sees an
    /// error.
    #[arg(long, env = "PROXYFLEET_GATEWAY_RETRIES", default_value_t = 3)]
    pub retries: u32,
    /// How long an upstream that failed is skipped.
    #[arg(long, env = "PROXYFLEET_GATEWAY_COOLDOWN", default_value = "30s", value_parser = humantime::parse_duration)]
    pub cooldown: Duration,
    /// Most of the pool, in percent, cooling down at once (at least one upstream may always).
    /// A failure past it is still retried on another upstream, but the failed one stays in
    /// turn and is not reported to the coordinator: so many failing together points at this
    /// gateway's own network or load, and reporting them would empty a working pool.
    #[arg(long, env = "PROXYFLEET_GATEWAY_MAX_COOLING_PERCENT", default_value_t = proxyfleet_gateway::choose::DEFAULT_MAX_COOLING_PERCENT, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_cooling_percent: u8,
    /// How long a session key keeps its upstream after its last use.
    #[arg(long, env = "PROXYFLEET_GATEWAY_STICKY_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub sticky_ttl: Duration,
    /// Connect and handshake time one upstream gets.
    #[arg(long, env = "PROXYFLEET_GATEWAY_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// A tunnel that carries nothing either way this long is closed.
    #[arg(long, env = "PROXYFLEET_GATEWAY_IDLE_TIMEOUT", default_value = "2m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Client connections open at once; more wait in the listen queue.
    #[arg(
        long,
        env = "PROXYFLEET_GATEWAY_MAX_CONNECTIONS",
        default_value_t = 4096
    )]
    pub max_connections: usize,
    /// Client connections open at once from one address; more are closed.
    #[arg(long, env = "PROXYFLEET_GATEWAY_MAX_PER_CLIENT", default_value_t = 512)]
    pub max_per_client: u32,
    /// Upstreams on loopback, private or link-local addresses may be used (labs, tests; the
    /// pool's coordinator must allow such proxies too).
    #[arg(long, env = "PROXYFLEET_GATEWAY_ALLOW_PRIVATE_UPSTREAMS")]
    pub allow_private_upstreams: bool,
    /// Serve the gateway's metrics (Prometheus text) on this address.
    #[arg(long, env = "PROXYFLEET_GATEWAY_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Threads serving clients, each with a listener of its own on --listen (SO_REUSEPORT, the
    /// kernel spreads connections) and a single-threaded runtime. One thread serves about 10,000
    /// requests a second on a 2-core machine; more is for more cores.
    #[arg(long, env = "PROXYFLEET_GATEWAY_THREADS", default_value_t = 1)]
    pub threads: usize,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// How `pool` orders what it prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PoolOrder {
    /// Best score first.
    Score,
    /// Lowest recent latency first.
    Latency,
    /// Most recently checked first.
    Recent,
    /// Shuffled.
    Random,
}

/// How `pool` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PoolFormat {
    /// One scheme://[user:pass@]host:port a line.
    Txt,
    /// Every member with its history, as JSON lines.
    Json,
    /// A table for people.
    Table,
}

#[derive(Debug, Clone, Args)]
pub struct PoolArgs {
    /// The pool.
    #[arg(default_value = "default", env = "PROXYFLEET_POOL")]
    pub pool: String,
    /// Only these protocols, comma-separated (http, https, socks4, socks4a, socks5, socks5h).
    #[arg(long, env = "PROXYFLEET_POOL_PROTOCOL", value_delimiter = ',')]
    pub protocol: Vec<String>,
    /// Only proxies graded at least this.
    #[arg(long, env = "PROXYFLEET_POOL_ANONYMITY", value_enum)]
    pub anonymity: Option<Grade>,
    /// Only proxies whose recent average latency is at most this (e.g. 800ms).
    #[arg(long, env = "PROXYFLEET_POOL_MAX_LATENCY", value_parser = humantime::parse_duration)]
    pub max_latency: Option<Duration>,
    /// Only proxies with at least this score (0 to 100).
    #[arg(long, env = "PROXYFLEET_POOL_MIN_SCORE")]
    pub min_score: Option<f64>,
    /// Only proxies whose exit is in this country (ISO 3166 alpha-2; needs a GeoIP database on
    /// the coordinator).
    #[arg(long, env = "PROXYFLEET_POOL_COUNTRY")]
    pub country: Option<String>,
    /// Members out of the live set too (with their history).
    #[arg(long, env = "PROXYFLEET_POOL_INCLUDE_DEAD")]
    pub include_dead: bool,
    /// At most this many.
    #[arg(long, env = "PROXYFLEET_POOL_LIMIT", default_value_t = 0)]
    pub limit: u32,
    #[arg(long, env = "PROXYFLEET_POOL_ORDER", value_enum, default_value_t = PoolOrder::Score)]
    pub order: PoolOrder,
    #[arg(long, env = "PROXYFLEET_POOL_FORMAT", value_enum, default_value_t = PoolFormat::Txt)]
    pub format: PoolFormat,
    /// The same as --format json: one JSON object a line, each member with its history.
    #[arg(long, env = "PROXYFLEET_JSON")]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RefreshArgs {
    /// Sources file (TOML). Without it, the coordinator's own --sources.
    #[arg(long = "sources", env = "PROXYFLEET_SOURCES")]
    pub sources_file: Option<PathBuf>,
    /// Wait until the pool's live_proxies files hold --min-usable proxies seen usable since the
    /// refresh was submitted (by it, or by the pool's revalidation), the refresh ends, or
    /// --wait-timeout passes.
    #[arg(long, env = "PROXYFLEET_WAIT")]
    pub wait: bool,
    /// Longest time to wait with --wait (the refresh goes on after it).
    #[arg(long, env = "PROXYFLEET_WAIT_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub wait_timeout: Duration,
    /// A label shown in `proxyfleet jobs`.
    #[arg(long, env = "PROXYFLEET_JOB_NAME", default_value = "refresh")]
    pub name: String,
    /// Print a JSON object on standard output instead of the job id: {"job_id",
    /// "already_running"} or, with --wait, the job as the wait ended, with "exit_code".
    #[arg(long, env = "PROXYFLEET_JSON")]
    pub json: bool,
    #[command(flatten)]
    pub check: CheckArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Txt,
    Json,
}

/// Minimum anonymity grade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Grade {
    Transparent,
    Anonymous,
    Elite,
}

/// Where a job's candidates come from.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// File of candidates, one per line (host:port or scheme://[user:pass@]host:port), or an HTML
    /// or JSON list; - for stdin. Read from stdin when neither this nor a source is given.
    #[arg(long, short, env = "PROXYFLEET_FILE")]
    pub file: Option<PathBuf>,
    /// A source URL the coordinator fetches candidates from (http or https); repeatable.
    #[arg(long = "source", env = "PROXYFLEET_SOURCE", value_delimiter = ',')]
    pub sources: Vec<String>,
    /// A sources file (TOML, sources per protocol); its local paths are read by this command.
    #[arg(long = "sources", env = "PROXYFLEET_SOURCES")]
    pub sources_file: Option<PathBuf>,
}

/// How proxies are checked and what counts as usable.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Time one check of a proxy may take (judge and targets together).
    #[arg(long, env = "PROXYFLEET_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Judge URL the checks request; repeat (or separate with commas) to spread checks over
    /// several judges. Default: the coordinator's judges.
    #[arg(long, env = "PROXYFLEET_JUDGE", value_delimiter = ',')]
    pub judge: Vec<String>,
    /// Time to open the TCP connection to a proxy. Default: the check timeout.
    #[arg(long, env = "PROXYFLEET_CONNECT_TIMEOUT", value_parser = humantime::parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Candidates per chunk (the unit leased to a worker).
    #[arg(long, env = "PROXYFLEET_CHUNK_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub chunk_size: u32,
    /// The job succeeds with at least this many usable proxies.
    #[arg(long, env = "PROXYFLEET_MIN_USABLE", default_value_t = 1)]
    pub min_usable: u64,
    /// The job fails if it has not ended this long after submission.
    #[arg(long, env = "PROXYFLEET_DEADLINE", default_value = "1h", value_parser = humantime::parse_duration)]
    pub deadline: Duration,
    /// Protocols a bare host:port stands for (one candidate each), comma-separated.
    #[arg(
        long,
        env = "PROXYFLEET_PROTOCOLS",
        value_delimiter = ',',
        default_value = "http"
    )]
    pub protocols: Vec<String>,
    /// A chunk whose worker vanished this many times is marked failed (default: the coordinator's).
    #[arg(long, env = "PROXYFLEET_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// The pool the usable proxies join. A pool's jobs run one at a time; `refresh` follows a
    /// refresh of it already running rather than starting another.
    #[arg(long, env = "PROXYFLEET_POOL", default_value = "default")]
    pub pool: String,
    /// Working proxies slower than this count as not usable (filtered).
    #[arg(long, env = "PROXYFLEET_MAX_LATENCY", value_parser = humantime::parse_duration)]
    pub max_latency: Option<Duration>,
    /// Working proxies graded below this count as not usable (filtered).
    #[arg(long, env = "PROXYFLEET_MIN_ANONYMITY", value_enum)]
    pub min_anonymity: Option<Grade>,
    /// Only proxies shown to carry HTTPS (a tunnel) count as usable.
    #[arg(long, env = "PROXYFLEET_REQUIRE_HTTPS")]
    pub require_https: bool,
    /// Check the pool's live proxies again this often from now on (0s: never). Default: the
    /// pool's interval, or the coordinator's --revalidate-every for a new pool.
    #[arg(long, env = "PROXYFLEET_POOL_REVALIDATE_EVERY", value_parser = humantime::parse_duration)]
    pub revalidate_every: Option<Duration>,
    /// A site of yours every proxy must also reach (repeatable, at most 8): its URL, then
    /// optional `;key=value` conditions: `status=200,301` (default 200), `contains=TEXT`,
    /// `regex=PATTERN`, `max-latency=2s`, `name=NAME` (how verdicts name it; default the URL).
    /// Example: --target 'https://shop.example/item;status=200;contains=Add to cart;max-latency=3s;name=shop'.
    /// A proxy is usable when it passes the judge and every target; the check's --timeout covers
    /// them all.
    #[arg(
        long = "target",
        env = "PROXYFLEET_TARGET",
        value_delimiter = '\n',
        value_name = "URL[;KEY=VALUE...]"
    )]
    pub targets: Vec<TargetArg>,
    /// Check against the --target sites only, asking no judge: no fake detection, exit address
    /// or anonymity grade, which need a judge's echo.
    #[arg(long, env = "PROXYFLEET_TARGETS_ONLY", requires = "targets")]
    pub targets_only: bool,
}

/// A `--target` as written: `URL[;status=..][;contains=..][;regex=..][;max-latency=..][;name=..]`.
/// A `;` followed by anything but one of these keys and `=` is part of the URL or the value
/// before it, so URLs and texts may hold `;` too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetArg {
    pub url: String,
    pub statuses: Vec<u32>,
    pub contains: String,
    pub regex: String,
    pub max_latency: Option<Duration>,
    pub name: String,
}

/// The keys a `--target` takes after its URL.
const TARGET_KEYS: [&str; 5] = ["status", "contains", "regex", "max-latency", "name"];

impl std::str::FromStr for TargetArg {
    type Err = String;

    fn from_str(spec: &str) -> Result<TargetArg, String> {
        // Cut at every `;key=` of a known key.
        let mut cuts = vec![0];
        for (at, _) in spec.match_indices(';') {
            let rest = &spec[at + 1..];
            if TARGET_KEYS
                .iter()
                .any(|key| rest.strip_prefix(key).is_some_and(|r| r.starts_with('=')))
            {
                cuts.push(at);
            }
        }
        cuts.push(spec.len());
        let url = spec[..cuts[1]].trim();
        if url.is_empty() {
            return Err("a target starts with its URL, e.g. https://shop.example/".into());
        }
        let mut target = TargetArg {
            url: url.to_string(),
            statuses: Vec::new(),
            contains: String::new(),
            regex: String::new(),
            max_latency: None,
            name: String::new(),
        };
        for pair in cuts[1..].windows(2) {
            let part = &spec[pair[0] + 1..pair[1]];
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            match key {
                "status" => {
                    target.statuses = value
                        .split(',')
                        .map(|s| {
                            s.trim().parse::<u32>().map_err(|_| {
                                format!("status={value}: expected status codes such as 200,301")
                            })
                        })
                        .collect::<Result<_, _>>()?;
                }
                "contains" => target.contains = value.to_string(),
                "regex" => target.regex = value.to_string(),
                "max-latency" => {
                    target.max_latency =
                        Some(humantime::parse_duration(value.trim()).map_err(|e| {
                            format!("max-latency={value}: {e} (write e.g. 1500ms or 2s)")
                        })?)
                }
                "name" => target.name = value.trim().to_string(),
                other => return Err(format!("unknown target option {other:?}")),
            }
        }
        Ok(target)
    }
}

impl TargetArg {
    pub fn to_proto(&self) -> proxyfleet_proto::v1::CheckTarget {
        proxyfleet_proto::v1::CheckTarget {
            url: self.url.clone(),
            statuses: self.statuses.clone(),
            body_contains: self.contains.clone(),
            body_regex: self.regex.clone(),
            max_latency_ms: self.max_latency.map_or(0, |d| d.as_millis().max(1) as u64),
            name: self.name.clone(),
        }
    }
}

/// Options of a job of a list: where its candidates come from, how they are read and checked.
#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// A label shown in `proxyfleet jobs`.
    #[arg(long, env = "PROXYFLEET_JOB_NAME", default_value = "")]
    pub name: String,
    /// Refuse the whole list if any line is malformed (default: skip such lines with a warning).
    #[arg(long, env = "PROXYFLEET_STRICT")]
    pub strict: bool,
    /// Check the list in the order given (default: in random order, so dead proxies listed in
    /// runs spread evenly over the chunks and the workers).
    #[arg(long, env = "PROXYFLEET_KEEP_ORDER")]
    pub keep_order: bool,
    #[command(flatten)]
    pub check: CheckArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Follow the job until it ends and exit with its exit code; 0 once it SUCCEEDED and its
    /// pool's live_proxies files hold its usable proxies.
    #[arg(long, env = "PROXYFLEET_WAIT")]
    pub wait: bool,
    /// Print a JSON object on standard output instead of the job id: {"job_id": ...} or, with
    /// --wait, the job as it ended.
    #[arg(long, env = "PROXYFLEET_JSON")]
    pub json: bool,
    /// With --wait: once the job has ended, print its usable proxies on standard output, one a
    /// line, instead of its id (which then goes to standard error).
    #[arg(
        long,
        env = "PROXYFLEET_PRINT_USABLE",
        requires = "wait",
        conflicts_with = "json"
    )]
    pub print_usable: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Where an embedded run keeps its data, and whether it stays.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Directory for the in-process coordinator's data (its store, finished jobs' results, the
    /// pool's files); kept. Default: a new directory under the system's temporary directory,
    /// removed at the end unless --keep-data.
    #[arg(long, env = "PROXYFLEET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep the data directory at the end (its path is printed on standard error).
    #[arg(long, env = "PROXYFLEET_KEEP_DATA")]
    pub keep_data: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Workers to run in-process.
    #[arg(long, env = "PROXYFLEET_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Checks each worker runs at once.
    #[arg(long, env = "PROXYFLEET_MAX_CHECKS", default_value_t = 512)]
    pub max_checks: usize,
    /// Accept candidates in loopback and private ranges.
    #[arg(long, env = "PROXYFLEET_ALLOW_PRIVATE_TARGETS")]
    pub allow_private_targets: bool,
    /// Address of the built-in judge. Proxies must be able to reach it: for proxies elsewhere
    /// listen on a public interface and give --judge-url, or pass --judge.
    #[arg(long, env = "PROXYFLEET_JUDGE_LISTEN", default_value = "127.0.0.1:0")]
    pub judge_listen: std::net::SocketAddr,
    /// URL under which proxies reach the built-in judge.
    #[arg(long, env = "PROXYFLEET_JUDGE_URL")]
    pub judge_url: Option<String>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Write the usable proxies here (one scheme://host:port a line) as well as to standard
    /// output.
    #[arg(long, env = "PROXYFLEET_OUTPUT")]
    pub output: Option<PathBuf>,
    /// Print the usable proxies as a JSON array on standard output (one object each, with its
    /// latency, exit address and anonymity) instead of one a line.
    #[arg(long, env = "PROXYFLEET_JSON")]
    pub json: bool,
    /// After the check, keep serving a rotating gateway (HTTP and SOCKS5) over the usable
    /// proxies on this address until interrupted; the pool keeps being revalidated meanwhile.
    /// Off loopback it is refused: use `proxyfleet gateway --users` for that.
    #[arg(long, env = "PROXYFLEET_GATEWAY_LISTEN")]
    pub gateway_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Args)]
pub struct FarmArgs {
    /// Address the proxies listen on.
    #[arg(long, env = "PROXYFLEET_FARM_IP", default_value = "127.0.0.1")]
    pub ip: std::net::IpAddr,
    /// Host name or address under which clients reach the proxies, used in the list.
    #[arg(long, env = "PROXYFLEET_FARM_ADVERTISE")]
    pub advertise: Option<String>,
    /// Address of the HTTP server that serves the list at /list.txt.
    #[arg(long, env = "PROXYFLEET_FARM_LIST", default_value = "127.0.0.1:8080")]
    pub list: std::net::SocketAddr,
    /// Working proxies (HTTP and SOCKS5 with auth).
    #[arg(long, env = "PROXYFLEET_FARM_WORKING", default_value_t = 20)]
    pub working: usize,
    /// Proxies that accept and never answer.
    #[arg(long, env = "PROXYFLEET_FARM_BLACK_HOLES", default_value_t = 20)]
    pub black_holes: usize,
    /// Addresses where nothing listens.
    #[arg(long, env = "PROXYFLEET_FARM_REFUSED", default_value_t = 160)]
    pub refused: usize,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Working simulated proxies (HTTP and SOCKS5 with auth).
    #[arg(long, env = "PROXYFLEET_DEMO_WORKING", default_value_t = 40)]
    pub working: usize,
    /// Simulated proxies that accept and never answer.
    #[arg(long, env = "PROXYFLEET_DEMO_BLACK_HOLES", default_value_t = 20)]
    pub black_holes: usize,
    /// Addresses where nothing listens.
    #[arg(long, env = "PROXYFLEET_DEMO_REFUSED", default_value_t = 440)]
    pub refused: usize,
    /// Workers to run in-process.
    #[arg(long, env = "PROXYFLEET_WORKERS", default_value_t = 3)]
    pub workers: usize,
    /// Time one check may take (black holes cost this much).
    #[arg(long, env = "PROXYFLEET_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Candidates per chunk.
    #[arg(long, env = "PROXYFLEET_CHUNK_SIZE", default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub chunk_size: u32,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print the usable proxies as a JSON array on standard output (one object each, with its
    /// latency, exit address and anonymity) instead of one a line.
    #[arg(long, env = "PROXYFLEET_JSON")]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_reads_its_url_and_conditions() {
        let t: TargetArg =
            "https://shop.test/item;status=200, 301;contains=Add to cart;regex=\\d+ left;max-latency=2s;name=shop"
                .parse()
                .unwrap();
        assert_eq!(
            t,
            TargetArg {
                url: "https://shop.test/item".into(),
                statuses: vec![200, 301],
                contains: "Add to cart".into(),
                regex: "\\d+ left".into(),
                max_latency: Some(Duration::from_secs(2)),
                name: "shop".into(),
            }
        );
        let proto = t.to_proto();
        assert_eq!(
            (proto.max_latency_ms, proto.body_contains.as_str()),
            (2000, "Add to cart")
        );
        let bare: TargetArg = "http://blog.test/".parse().unwrap();
        assert_eq!(bare.to_proto().statuses, Vec::<u32>::new());
    }

    #[test]
    fn semicolons_not_before_a_key_belong_to_the_text() {
        let t: TargetArg = "http://shop.test/a;b=c;contains=x;y;name=n"
            .parse()
            .unwrap();
        assert_eq!(
            (t.url.as_str(), t.contains.as_str(), t.name.as_str()),
            ("http://shop.test/a;b=c", "x;y", "n")
        );
    }

    #[test]
    fn bad_targets_say_what_to_write() {
        for (spec, why) in [
            (";name=x", "starts with its URL"),
            ("http://s.test/;status=ok", "status codes"),
            ("http://s.test/;max-latency=soon", "1500ms"),
        ] {
            let e = spec.parse::<TargetArg>().unwrap_err();
            assert!(e.contains(why), "{spec}: {e}");
        }
    }
}

/// The `job` command's own options.
#[derive(Debug, Clone, Args)]
pub struct JobReportArgs {
    /// The job id, as printed by `submit`.
    pub job: String,
    /// Print the report as one JSON object instead of text.
    #[arg(long, env = "PROXYFLEET_JSON")]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}
