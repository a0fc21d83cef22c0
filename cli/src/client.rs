//! Client commands against a coordinator: submit, refresh, watch, results, jobs, workers,
//! pools, cancel, health. Data goes to standard output, notes to standard error (see [`Say`]).

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use proxyfleet_common::auth::BearerToken;
use proxyfleet_coordinator::Protocol;
use proxyfleet_coordinator::wire as convert;
use proxyfleet_proto::v1 as pb;
use proxyfleet_proto::v1::coordinator_client::CoordinatorClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use std::path::{Path, PathBuf};

use crate::args::{
    CheckArgs, Format, Grade, JobArgs, PoolArgs, PoolFormat, PoolOrder, RefreshArgs, SourceArgs,
    SubmitArgs, TargetArg,
};
use crate::progress::{self, Say};
use crate::retry::Reconnect;

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

pub const EXIT_UNREACHABLE: i32 = 1;
pub const EXIT_BAD_INPUT: i32 = 2;
pub const EXIT_INSUFFICIENT: i32 = 3;
/// `cancel` of a job that had already ended: nothing was cancelled.
pub const EXIT_ALREADY_ENDED: i32 = 7;

/// Exit code of a job's final state.
pub fn exit_code(state: i32) -> i32 {
    match pb::JobState::try_from(state) {
        Ok(pb::JobState::Succeeded) => 0,
        Ok(pb::JobState::Insufficient) => EXIT_INSUFFICIENT,
        Ok(pb::JobState::Failed) => 4,
        Ok(pb::JobState::Cancelled) => 5,
        _ => 1,
    }
}

/// The failure a call's error status stands for, with what to do next.
pub(crate) fn from_status(status: tonic::Status, coordinator: &str) -> Failure {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::OutOfRange => Failure::new(
            EXIT_BAD_INPUT,
            format!("error: {}", in_flags(status.message())),
        ),
        Code::Unauthenticated | Code::PermissionDenied => Failure::new(
            EXIT_BAD_INPUT,
            format!("error: the coordinator refused us: {}", status.message()),
        ),
        // The coordinator's own answer (a transport failure carries its cause as the source): it
        // is up but cannot serve this now, e.g. its store cannot be written; it says what to do.
        Code::Unavailable if std::error::Error::source(&status).is_none() => Failure::new(
            EXIT_UNREACHABLE,
            format!(
                "error: the coordinator at {coordinator}: {}",
                status.message()
            ),
        ),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
            Failure::new(
                EXIT_UNREACHABLE,
                format!(
                    "error: lost the coordinator at {coordinator}: {}; check that it is running, or set --coordinator / PROXYFLEET_COORDINATOR",
                    status.message()
                ),
            )
        }
        _ => Failure::new(1, format!("error: {}", status.message())),
    }
}

/// The flag of this command line that sets a field of the coordinator's API, for refusals that
/// name the field: the user wrote the flag.
fn flag_of(field: &str) -> Option<&'static str> {
    Some(match field {
        "judge_urls" => "--judge",
        "timeout" => "--timeout",
        "connect_timeout" => "--connect-timeout",
        "chunk_size" => "--chunk-size",
        "deadline" => "--deadline",
        "max_attempts" => "--max-attempts",
        "pool" => "--pool",
        "default_protocols" => "--protocols",
        "min_anonymity" => "--min-anonymity",
        "revalidate_every_ms" => "--revalidate-every",
        "targets" => "--target",
        "targets_only" => "--targets-only",
        "sources" => "--source/--sources",
        _ => return None,
    })
}

/// A coordinator's refusal as this command line's user reads it: `invalid judge_urls: ...`
/// becomes `--judge: ...`.
fn in_flags(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("invalid ")
        && let Some((field, why)) = rest.split_once(": ")
        && let Some(flag) = flag_of(field)
    {
        return format!("{flag}: {why}");
    }
    message.to_string()
}

/// An error with its causes, as one line; a cause whose text its wrapper already shows (some
/// wrap an error and print it too, some wrap one of the same words) is not repeated.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !said.is_empty() && !text.ends_with(&said) {
            text = format!("{text}: {said}");
        }
        source = cause.source();
    }
    text
}

/// A coordinator client that sends the token, if any, with every call.
pub type Client = CoordinatorClient<InterceptedService<Channel, BearerToken>>;

/// Where the coordinator is and how to prove who we are.
#[derive(Clone, Default)]
pub struct Remote {
    pub url: String,
    pub token: BearerToken,
    pub tls: Option<ClientTlsConfig>,
}

impl Remote {
    pub fn plain(url: &str) -> Remote {
        Remote {
            url: url.to_string(),
            ..Remote::default()
        }
    }
}

/// Connects to the coordinator; a coordinator that is down gives exit code 1 within seconds.
pub async fn connect(remote: &Remote) -> Result<Client, Failure> {
    let channel = open_channel(remote).await?;
    Ok(
        CoordinatorClient::with_interceptor(channel, remote.token.clone())
            .max_decoding_message_size(256 * 1024 * 1024)
            .max_encoding_message_size(256 * 1024 * 1024),
    )
}

/// The coordinator's endpoint, TLS set up when configured.
pub fn endpoint(remote: &Remote) -> Result<Endpoint, Failure> {
    let url = &remote.url;
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| {
            Failure::new(
                EXIT_BAD_INPUT,
                format!("error: --coordinator {url:?} is not a valid URL: {e}"),
            )
        })?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    if let Some(tls) = &remote.tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| Failure::new(EXIT_BAD_INPUT, format!("error: TLS settings: {e}")))?;
    }
    Ok(endpoint)
}

/// A channel to the coordinator, over TLS when configured.
async fn open_channel(remote: &Remote) -> Result<Channel, Failure> {
    let url = &remote.url;
    let endpoint = endpoint(remote)?;
    let channel = endpoint.connect().await.map_err(|e| {
        let detail = error_chain(&e);
        Failure::new(
            EXIT_UNREACHABLE,
            format!(
                "error: cannot reach the coordinator at {url} ({detail}); start proxyfleet-coordinator, or point --coordinator / PROXYFLEET_COORDINATOR at it"
            ),
        )
    })?;
    Ok(channel)
}

/// A job's candidates as the client gathered them.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Inline list text (may be empty when sources are given).
    pub text: String,
    /// Where the inline text came from, for messages.
    pub label: String,
    pub sources: Vec<pb::SourceSpec>,
}

/// Largest local file read for a job.
const MAX_LOCAL_BYTES: u64 = 256 * 1024 * 1024;

fn read_text(path: &Path) -> Result<String, Failure> {
    let bytes = if path.as_os_str() == "-" {
        if std::io::stdin().is_terminal() {
            return Err(Failure::new(
                EXIT_BAD_INPUT,
                "error: no candidates: pass --file FILE, --source URL or --sources FILE, or pipe the list on stdin",
            ));
        }
        let mut bytes = Vec::new();
        std::io::stdin()
            .take(MAX_LOCAL_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Failure::new(EXIT_BAD_INPUT, format!("error: cannot read stdin: {e}")))?;
        bytes
    } else {
        let file = std::fs::File::open(path).map_err(|e| {
            Failure::new(
                EXIT_BAD_INPUT,
                format!("error: cannot read {}: {e}", path.display()),
            )
        })?;
        let mut bytes = Vec::new();
        file.take(MAX_LOCAL_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| {
                Failure::new(
                    EXIT_BAD_INPUT,
                    format!("error: cannot read {}: {e}", path.display()),
                )
            })?;
        bytes
    };
    if bytes.len() as u64 > MAX_LOCAL_BYTES {
        return Err(Failure::new(
            EXIT_BAD_INPUT,
            format!(
                "error: {} is larger than {MAX_LOCAL_BYTES} bytes; split it",
                path.display()
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let line = bytes_line(e.as_bytes(), e.utf8_error().valid_up_to());
        Failure::new(
            EXIT_BAD_INPUT,
            format!(
                "error: {} line {line}: not valid UTF-8 text",
                path.display()
            ),
        )
    })
}

/// Reads a sources file; local paths in it are read here (the coordinator may be elsewhere).
pub fn read_sources_file(path: &Path) -> Result<Vec<pb::SourceSpec>, Failure> {
    let text = read_text(path)?;
    let sources = proxyfleet_coordinator::parse_sources_file(&text)
        .map_err(|e| Failure::new(EXIT_BAD_INPUT, format!("error: {}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut specs = Vec::new();
    for source in sources {
        let protocols = source
            .protocols
            .iter()
            .map(|p| convert::protocol_to_proto(*p) as i32)
            .collect();
        let local = match proxyfleet_coordinator::locate(&source.url) {
            Ok(proxyfleet_coordinator::Location::File(file)) => Some(base.join(file)),
            _ => None,
        };
        let content = match &local {
            Some(file) => read_text(file)?,
            None => String::new(),
        };
        specs.push(pb::SourceSpec {
            url: source.url,
            protocols,
            content,
        });
    }
    Ok(specs)
}

/// Gathers a job's candidates: the list file (or stdin), source URLs and a sources file.
pub fn read_inputs(args: &SourceArgs) -> Result<Inputs, Failure> {
    let mut inputs = Inputs::default();
    for url in &args.sources {
        inputs.sources.push(pb::SourceSpec {
            url: url.clone(),
            protocols: Vec::new(),
            content: String::new(),
        });
    }
    if let Some(path) = &args.sources_file {
        inputs.sources.extend(read_sources_file(path)?);
    }
    let file = match &args.file {
        Some(file) => Some(file.clone()),
        None if inputs.sources.is_empty() => Some(PathBuf::from("-")),
        None => None,
    };
    if let Some(file) = file {
        inputs.label = if file.as_os_str() == "-" {
            "stdin".into()
        } else {
            file.display().to_string()
        };
        inputs.text = read_text(&file)?;
    }
    Ok(inputs)
}

fn bytes_line(bytes: &[u8], offset: usize) -> usize {
    bytes[..offset].iter().filter(|b| **b == b'\n').count() + 1
}

/// A protocol as named on the command line by `flag`.
fn protocol_value(flag: &str, name: &str) -> Result<i32, Failure> {
    let protocol: Protocol = name
        .trim()
        .parse()
        .map_err(|e| Failure::new(EXIT_BAD_INPUT, format!("error: {flag}: {e}")))?;
    Ok(convert::protocol_to_proto(protocol) as i32)
}

fn protocols(flag: &str, names: &[String]) -> Result<Vec<i32>, Failure> {
    names.iter().map(|p| protocol_value(flag, p)).collect()
}

/// The part of a SubmitJob request the check options set; `submit`, `run` and `refresh` share it.
fn check_request(check: &CheckArgs) -> Result<pb::SubmitJobRequest, Failure> {
    Ok(pb::SubmitJobRequest {
        default_protocols: protocols("--protocols", &check.protocols)?,
        judge_urls: check.judge.clone(),
        timeout_ms: check.timeout.as_millis() as u64,
        chunk_size: check.chunk_size,
        min_usable: Some(check.min_usable),
        deadline_ms: check.deadline.as_millis() as u64,
        max_attempts: check.max_attempts.unwrap_or(0),
        pool: check.pool.clone(),
        connect_timeout_ms: check
            .connect_timeout
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        max_latency_ms: check.max_latency.map(|d| d.as_millis() as u64).unwrap_or(0),
        min_anonymity: match check.min_anonymity {
            None => pb::Anonymity::Unknown,
            Some(Grade::Transparent) => pb::Anonymity::Transparent,
            Some(Grade::Anonymous) => pb::Anonymity::Anonymous,
            Some(Grade::Elite) => pb::Anonymity::Elite,
        } as i32,
        require_https: check.require_https,
        targets: check.targets.iter().map(TargetArg::to_proto).collect(),
        targets_only: check.targets_only,
        revalidate_every_ms: revalidate_ms(check.revalidate_every),
        ..Default::default()
    })
}

/// Builds a SubmitJob request from the job options and the gathered candidates.
pub fn submit_request(job: &JobArgs, inputs: Inputs) -> Result<pb::SubmitJobRequest, Failure> {
    Ok(pb::SubmitJobRequest {
        candidates_text: inputs.text,
        name: job.name.clone(),
        strict: job.strict,
        keep_order: job.keep_order,
        sources: inputs.sources,
        ..check_request(&job.check)?
    })
}

/// Submits a job and returns its id; warns on stderr of the lines it skipped. Prints nothing on
/// stdout: what the caller prints of the id is its own data.
pub async fn submit(
    client: &mut Client,
    url: &str,
    request: pb::SubmitJobRequest,
    source: &str,
    say: Say,
) -> Result<String, Failure> {
    let response = client
        .submit_job(request)
        .await
        .map_err(|s| from_status(s, url))?
        .into_inner();
    for r in &response.rejected {
        say.warn(format!(
            "warning: {source} line {}: {:?}: {}",
            r.line, r.text, r.reason
        ));
    }
    if response.duplicates > 0 {
        say.note(format!(
            "note: {} duplicate candidate(s) dropped",
            response.duplicates
        ));
    }
    Ok(response.job_id)
}

/// `submit`: the job id on stdout (or `{"job_id": ...}`); with `wait`, follows the job and
/// prints it as it ended with `json`.
pub async fn submit_command(
    client: &mut Client,
    url: &str,
    request: pb::SubmitJobRequest,
    label: &str,
    args: &SubmitArgs,
    say: Say,
) -> Result<i32, Failure> {
    let job_id = submit(client, url, request, label, say).await?;
    if !args.wait {
        if args.json {
            println!("{}", serde_json::json!({ "job_id": job_id }));
        } else {
            println!("{job_id}");
        }
        return Ok(0);
    }
    if args.print_usable {
        say.note(format!("job {job_id}"));
    } else if !args.json {
        println!("{job_id}");
    }
    let ended = follow(client, url, &job_id, submit_outcome, say, &mut None).await?;
    let code = ended.report(say, args.json);
    if args.print_usable {
        results(client, url, &job_id, Format::Txt, true, false).await?;
    }
    Ok(code)
}

pub const EXIT_TIMED_OUT: i32 = 6;

/// The preflight: refreshes a pool (or follows its running refresh) and, with `--wait`, exits 0
/// as soon as the pool's files hold enough usable proxies of it.
pub async fn refresh(
    client: &mut Client,
    url: &str,
    args: &RefreshArgs,
    inputs: Option<Inputs>,
    say: Say,
) -> Result<i32, Failure> {
    let pool = &args.check.pool;
    let jobs = list_jobs(client, url).await?;
    let running = jobs.iter().find(|j| {
        !progress::is_terminal(j.state) && j.settings.as_ref().is_some_and(|s| &s.pool == pool)
    });
    let (job_id, already_running) = match running {
        Some(job) => {
            say.note(format!(
                "note: a refresh of pool {pool:?} is already running ({}); following it",
                job.job_id
            ));
            (job.job_id.clone(), true)
        }
        None => {
            let request = pb::SubmitJobRequest {
                name: args.name.clone(),
                use_coordinator_sources: inputs.is_none(),
                sources: inputs.map(|i| i.sources).unwrap_or_default(),
                ..check_request(&args.check)?
            };
            (submit(client, url, request, "sources", say).await?, false)
        }
    };
    if !args.wait {
        if args.json {
            println!(
                "{}",
                serde_json::json!({ "job_id": job_id, "already_running": already_running })
            );
        } else {
            println!("{job_id}");
        }
        return Ok(0);
    }
    if !args.json {
        println!("{job_id}");
    }
    let min_usable = args.check.min_usable;
    let mut last = None;
    let wait = follow(
        client,
        url,
        &job_id,
        |job| refresh_outcome(job, min_usable),
        say,
        &mut last,
    );
    match tokio::time::timeout(args.wait_timeout, wait).await {
        Ok(ended) => Ok(ended?.report(say, args.json)),
        Err(_) => {
            if args.json
                && let Some(job) = &last
            {
                println!("{}", ended_json(job, EXIT_TIMED_OUT));
            }
            Err(Failure::new(
                EXIT_TIMED_OUT,
                format!(
                    "error: fewer than {min_usable} usable proxies after {} (--wait-timeout); the refresh goes on (proxyfleet watch {job_id})",
                    humantime::format_duration(args.wait_timeout)
                ),
            ))
        }
    }
}

/// A job as a wait ended with it, for `--json`: the job and the exit code.
fn ended_json(job: &pb::Job, code: i32) -> serde_json::Value {
    let mut value = progress::job_json(job);
    value["exit_code"] = code.into();
    value
}

/// How a wait ended: its exit code, the line that says so, and the job as last seen.
pub struct Ended {
    pub code: i32,
    pub line: String,
    pub job: pb::Job,
}

impl Ended {
    /// Says how the wait ended: the line on stderr, and with `json` the job on stdout; returns
    /// the exit code.
    pub fn report(self, say: Say, json: bool) -> i32 {
        say.note(&self.line);
        if json {
            println!("{}", ended_json(&self.job, self.code));
        }
        self.code
    }
}

/// How a wait ends: its exit code and the line it prints, or a failure.
type Outcome = Result<(i32, String), Failure>;

/// How `refresh --wait` ends on a snapshot of its job: 0 once the pool's files hold
/// `min_usable` of its usable proxies (while it runs too), naming them; else at its end, with
/// its exit code, 3 if it SUCCEEDED with fewer than `min_usable` (another client asked for
/// fewer), or 1 if it had them but they are not in the files.
fn refresh_outcome(job: &pb::Job, min_usable: u64) -> Option<Outcome> {
    if min_usable == 0 {
        return job_outcome(job);
    }
    let p = job.progress.clone().unwrap_or_default();
    if p.pool_files_usable >= min_usable {
        let state = progress::state_name(job.state);
        return Some(Ok((
            0,
            format!(
                "{} usable proxies are fresh in {} (job {}, {state})",
                p.pool_files_usable, p.pool_files, job.job_id
            ),
        )));
    }
    if !progress::is_terminal(job.state) {
        return None;
    }
    Some(match exit_code(job.state) {
        0 if p.proxies_usable >= min_usable => Err(not_in_files(job)),
        0 => Ok((
            EXIT_INSUFFICIENT,
            format!(
                "{}, fewer than the {min_usable} this wait wants (--min-usable)",
                progress::summary(job)
            ),
        )),
        code => Ok((code, progress::summary(job))),
    })
}

/// How `submit --wait` ends on a snapshot of its job: at its end, with its exit code and
/// summary; but a job that SUCCEEDED exits 0 only once its pool's files hold its min_usable
/// usable proxies.
fn submit_outcome(job: &pb::Job) -> Option<Outcome> {
    let outcome = job_outcome(job)?;
    let p = job.progress.clone().unwrap_or_default();
    let min_usable = job.settings.as_ref().map_or(0, |s| s.min_usable);
    Some(match outcome {
        Ok((0, _)) if p.pool_files_usable < min_usable => Err(not_in_files(job)),
        outcome => outcome,
    })
}

/// How `watch` ends on a snapshot of its job: at its end, with its exit code and summary.
fn job_outcome(job: &pb::Job) -> Option<Outcome> {
    progress::is_terminal(job.state).then(|| Ok((exit_code(job.state), progress::summary(job))))
}

/// A job that SUCCEEDED whose usable proxies its pool's files do not hold.
fn not_in_files(job: &pb::Job) -> Failure {
    let p = job.progress.clone().unwrap_or_default();
    Failure::new(
        EXIT_UNREACHABLE,
        format!(
            "{}\nerror: the pool's live_proxies files hold {} of its usable proxies: the coordinator could not write them (see its log; check its --output-dir)",
            progress::summary(job),
            p.pool_files_usable
        ),
    )
}

/// `watch`: follows a job until it ends, the summary on stderr and with `json` the job on
/// stdout; exits with its exit code.
pub async fn watch(
    client: &mut Client,
    url: &str,
    job_id: &str,
    say: Say,
    json: bool,
) -> Result<i32, Failure> {
    let ended = follow(client, url, job_id, job_outcome, say, &mut None).await?;
    Ok(ended.report(say, json))
}

/// Shows a job's progress until `outcome` says how the wait ends; reconnects across coordinator
/// restarts (see [`Reconnect`]) and goes on following the same job. `last` holds the job as last
/// seen, for a caller that gives up waiting.
pub(crate) async fn follow(
    client: &mut Client,
    url: &str,
    job_id: &str,
    outcome: impl Fn(&pb::Job) -> Option<Outcome>,
    say: Say,
    last: &mut Option<pb::Job>,
) -> Result<Ended, Failure> {
    let mut view = progress::View::new(std::io::stderr().is_terminal(), say);
    let mut reconnect = Reconnect::new(url, job_id);
    loop {
        let request = pb::WatchJobRequest {
            job_id: job_id.to_string(),
        };
        let lost = match client.watch_job(request).await {
            Err(status) => status,
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let job = match stream.message().await {
                        Ok(Some(job)) => job,
                        Ok(None) => {
                            break tonic::Status::unavailable(
                                "the watch stream ended before the job did",
                            );
                        }
                        Err(status) => break status,
                    };
                    reconnect.seen(&job);
                    view.show(&job);
                    if let Some(outcome) = outcome(&job) {
                        view.finish();
                        let (code, line) = outcome?;
                        return Ok(Ended { code, line, job });
                    }
                    *last = Some(job);
                }
            }
        };
        view.finish();
        reconnect.after(lost).await?;
    }
}

/// Prints a job's results; with `follow`, as they are recorded until the job ends, across
/// coordinator restarts, each candidate once.
pub async fn results(
    client: &mut Client,
    url: &str,
    job_id: &str,
    format: Format,
    usable_only: bool,
    follow: bool,
) -> Result<(), Failure> {
    let stdout = std::io::stdout();
    let mut printer = Printer::new(stdout.lock(), format, usable_only, follow);
    if !follow {
        let mut stream = client
            .get_results(pb::GetResultsRequest {
                job_id: job_id.to_string(),
                usable_only,
                follow: false,
            })
            .await
            .map_err(|s| from_status(s, url))?
            .into_inner();
        while let Some(page) = stream.message().await.map_err(|s| from_status(s, url))? {
            if !printer.page(page.results) {
                return Ok(()); // stdout closed (e.g. piped into head): nothing more to do
            }
        }
        printer.finish();
        return Ok(());
    }
    let mut reconnect = Reconnect::new(url, job_id);
    loop {
        let lost =
            match follow_results(client, job_id, usable_only, &mut printer, &mut reconnect).await {
                Ok(Followed::Done) => {
                    printer.finish();
                    return Ok(());
                }
                Ok(Followed::Closed) => return Ok(()),
                Err(status) => status,
            };
        reconnect.after(lost).await?;
    }
}

/// How one connection of `results --follow` ended.
enum Followed {
    /// Every row of the job was printed.
    Done,
    /// Stdout closed: nothing more to do.
    Closed,
}

/// One connection of `results --follow`: the job (for its deadline), then its rows, printing
/// those not printed before; a stream that ends before every row came counts as lost.
async fn follow_results(
    client: &mut Client,
    job_id: &str,
    usable_only: bool,
    printer: &mut Printer<impl Write>,
    reconnect: &mut Reconnect,
) -> Result<Followed, tonic::Status> {
    let job = get_job(client, job_id).await?;
    reconnect.seen(&job);
    let mut stream = client
        .get_results(pb::GetResultsRequest {
            job_id: job_id.to_string(),
            usable_only,
            follow: true,
        })
        .await?
        .into_inner();
    while let Some(page) = stream.message().await? {
        reconnect.answered();
        if !printer.page(page.results) {
            return Ok(Followed::Closed);
        }
    }
    // A coordinator that stops cleanly ends the stream as if it were complete: the job says
    // whether it is.
    let job = get_job(client, job_id).await?;
    let p = job.progress.clone().unwrap_or_default();
    let rows = if usable_only {
        p.proxies_usable
    } else {
        p.proxies_total
    };
    if progress::is_terminal(job.state) && printer.printed() >= rows {
        Ok(Followed::Done)
    } else {
        Err(tonic::Status::unavailable(
            "the results stream ended before the job did",
        ))
    }
}

async fn get_job(client: &mut Client, job_id: &str) -> Result<pb::Job, tonic::Status> {
    Ok(client
        .get_job(pb::GetJobRequest {
            job_id: job_id.to_string(),
            include_chunks: false,
        })
        .await?
        .into_inner())
}

/// Writes result rows as `results` prints them; when following, each candidate once, even when
/// a reconnect sends it again.
struct Printer<W: Write> {
    out: std::io::BufWriter<W>,
    format: Format,
    usable_only: bool,
    /// Nothing printed yet (a JSON array's first element has no comma before it).
    first: bool,
    /// When following: a 128-bit fingerprint of each candidate printed (its proxy URL, unique in
    /// its job), so a million rows cost megabytes, not the URLs themselves.
    seen: Option<std::collections::HashSet<u128>>,
    /// Rows printed.
    printed: u64,
}

impl<W: Write> Printer<W> {
    fn new(out: W, format: Format, usable_only: bool, follow: bool) -> Self {
        let mut out = std::io::BufWriter::new(out);
        if format == Format::Json {
            let _ = writeln!(out, "[");
        }
        Printer {
            out,
            format,
            usable_only,
            first: true,
            seen: follow.then(std::collections::HashSet::new),
            printed: 0,
        }
    }

    /// Prints a page's rows not printed before; false once stdout is closed.
    fn page(&mut self, rows: Vec<pb::ProxyResult>) -> bool {
        for r in rows {
            if let Some(seen) = &mut self.seen
                && !seen.insert(fingerprint(&r.proxy))
            {
                continue;
            }
            let line = match self.format {
                Format::Json => {
                    let value = result_json(&r);
                    let sep = if self.first { "" } else { ",\n" };
                    format!("{sep}  {value}")
                }
                Format::Txt if self.usable_only => format!("{}\n", r.proxy),
                Format::Txt => format!("{}\n", progress::result_line(&r)),
            };
            self.first = false;
            self.printed += 1;
            if self.out.write_all(line.as_bytes()).is_err() {
                return false;
            }
        }
        // A follower reads rows as they come.
        self.seen.is_none() || self.out.flush().is_ok()
    }

    fn printed(&self) -> u64 {
        self.printed
    }

    fn finish(mut self) {
        if self.format == Format::Json {
            let _ = writeln!(self.out, "{}]", if self.first { "" } else { "\n" });
        }
        let _ = self.out.flush();
    }
}

/// A 128-bit fingerprint of `text`: two SipHash digests of it under different prefixes. Two
/// candidates of a job share one with a chance of about n²/2¹²⁹.
fn fingerprint(text: &str) -> u128 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let half = |prefix: u8| {
        let mut hasher = DefaultHasher::new();
        prefix.hash(&mut hasher);
        text.hash(&mut hasher);
        hasher.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

pub(crate) fn result_json(r: &pb::ProxyResult) -> serde_json::Value {
    serde_json::json!({
        "proxy": r.proxy,
        "protocol": progress::protocol_name(r.protocol),
        "host": r.host,
        "port": r.port,
        "checked": r.checked,
        "usable": r.usable,
        "reason": progress::reason_name(r.reason),
        "latency_ms": r.latency_ms,
        "connect_ms": r.connect_ms,
        "exit_ip": r.exit_ip,
        "anonymity": progress::anonymity_name(r.anonymity),
        "detail": r.detail,
        "targets": r.targets.iter().map(|t| serde_json::json!({
            "target": t.target,
            "passed": t.passed,
            "reason": progress::reason_name(t.reason),
            "status": t.status,
            "latency_ms": t.latency_ms,
            "detail": t.detail,
        })).collect::<Vec<_>>(),
    })
}

/// Asks the coordinator's grpc.health.v1 service whether it serves.
pub async fn health(remote: &Remote, json: bool) -> Result<i32, Failure> {
    let channel = open_channel(remote).await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        health.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .map_err(|_| Failure::new(EXIT_UNREACHABLE, "error: no health answer within 5s"))?
    .map_err(|s| from_status(s, &remote.url))?
    .into_inner();
    let serving =
        answer.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    if json {
        println!("{}", serde_json::json!({ "serving": serving }));
    } else {
        println!("{}", if serving { "serving" } else { "not serving" });
    }
    Ok(if serving { 0 } else { 1 })
}

async fn list_jobs(client: &mut Client, url: &str) -> Result<Vec<pb::Job>, Failure> {
    Ok(client
        .list_jobs(pb::ListJobsRequest {})
        .await
        .map_err(|s| from_status(s, url))?
        .into_inner()
        .jobs)
}

/// Prints a JSON array of `rows`, one object each.
fn print_json_array<T>(rows: &[T], one: impl Fn(&T) -> serde_json::Value) {
    let values: Vec<serde_json::Value> = rows.iter().map(one).collect();
    println!("{}", serde_json::Value::Array(values));
}

pub async fn jobs(client: &mut Client, url: &str, json: bool) -> Result<(), Failure> {
    let jobs = list_jobs(client, url).await?;
    if json {
        print_json_array(&jobs, progress::job_json);
    } else {
        println!("{}", progress::jobs_table(&jobs));
    }
    Ok(())
}

/// The wire's revalidation interval: 0 when none is given, and "never" (a zero interval) as the
/// largest value, as the protocol says.
fn revalidate_ms(every: Option<Duration>) -> u64 {
    match every {
        None => 0,
        Some(d) if d.is_zero() => u64::MAX,
        Some(d) => (d.as_millis() as u64).max(1),
    }
}

/// Prints a pool's members that pass the filters.
pub async fn pool(client: &mut Client, url: &str, args: &PoolArgs) -> Result<(), Failure> {
    let filter = pb::PoolFilter {
        protocols: protocols("--protocol", &args.protocol)?,
        min_anonymity: match args.anonymity {
            None => pb::Anonymity::Unknown,
            Some(Grade::Transparent) => pb::Anonymity::Transparent,
            Some(Grade::Anonymous) => pb::Anonymity::Anonymous,
            Some(Grade::Elite) => pb::Anonymity::Elite,
        } as i32,
        max_latency_ms: args.max_latency.map_or(0, |d| {
            u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
        }),
        min_score: args.min_score.unwrap_or(0.0),
        country: args.country.clone().unwrap_or_default(),
        include_dead: args.include_dead,
    };
    let pool = client
        .get_pool(pb::GetPoolRequest {
            pool: args.pool.clone(),
            filter: Some(filter),
            limit: args.limit,
            order: match args.order {
                PoolOrder::Score => pb::PoolOrder::Score,
                PoolOrder::Latency => pb::PoolOrder::Latency,
                PoolOrder::Recent => pb::PoolOrder::Recent,
                PoolOrder::Random => pb::PoolOrder::Random,
            } as i32,
        })
        .await
        .map_err(|s| from_status(s, url))?
        .into_inner();
    let format = if args.json {
        PoolFormat::Json
    } else {
        args.format
    };
    match format {
        PoolFormat::Txt => {
            for m in &pool.members {
                println!("{}", m.proxy);
            }
        }
        PoolFormat::Json => {
            for m in &pool.members {
                println!("{}", progress::member_json(m));
            }
        }
        PoolFormat::Table => println!("{}", progress::pool_table(&pool)),
    }
    Ok(())
}

/// Lists the pools.
pub async fn pools(client: &mut Client, url: &str, json: bool) -> Result<(), Failure> {
    let pools = client
        .list_pools(pb::ListPoolsRequest {})
        .await
        .map_err(|s| from_status(s, url))?
        .into_inner()
        .pools;
    if json {
        print_json_array(&pools, progress::pool_json);
    } else {
        println!("{}", progress::pools_table(&pools));
    }
    Ok(())
}

pub async fn workers(client: &mut Client, url: &str, json: bool) -> Result<(), Failure> {
    let workers = client
        .list_workers(pb::ListWorkersRequest {})
        .await
        .map_err(|s| from_status(s, url))?
        .into_inner()
        .workers;
    if json {
        print_json_array(&workers, progress::worker_json);
    } else {
        println!("{}", progress::workers_table(&workers));
    }
    Ok(())
}

/// Cancels a job that has not ended: exit code 0 once it is cancelled, [`EXIT_ALREADY_ENDED`]
/// when it had already ended (left as it was), saying which on stderr; with `json`, the job on
/// stdout with whether this call cancelled it.
pub async fn cancel(
    client: &mut Client,
    url: &str,
    job_id: &str,
    say: Say,
    json: bool,
) -> Result<i32, Failure> {
    let before = get_job(client, job_id)
        .await
        .map_err(|s| from_status(s, url))?;
    let job = if progress::is_terminal(before.state) {
        before.clone()
    } else {
        client
            .cancel_job(pb::CancelJobRequest {
                job_id: job_id.to_string(),
            })
            .await
            .map_err(|s| from_status(s, url))?
            .into_inner()
    };
    let (code, line) = cancel_outcome(&before, &job);
    if json {
        let mut value = progress::job_json(&job);
        value["cancelled"] = (code == 0).into();
        println!("{value}");
    }
    if code == 0 {
        say.note(line);
    } else {
        say.warn(line);
    }
    Ok(code)
}

/// What a cancel did, from the job before it and after: its exit code and the line saying so.
fn cancel_outcome(before: &pb::Job, after: &pb::Job) -> (i32, String) {
    let cancelled_now =
        !progress::is_terminal(before.state) && after.state == pb::JobState::Cancelled as i32;
    if cancelled_now {
        (
            0,
            format!(
                "cancelled job {} (it was {}); {}",
                after.job_id,
                progress::state_name(before.state),
                progress::summary(after)
            ),
        )
    } else {
        (
            EXIT_ALREADY_ENDED,
            format!(
                "nothing cancelled: job {} had already ended ({}); {}",
                after.job_id,
                progress::state_name(after.state),
                progress::summary(after)
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_job_state() {
        assert_eq!(exit_code(pb::JobState::Succeeded as i32), 0);
        assert_eq!(exit_code(pb::JobState::Insufficient as i32), 3);
        assert_eq!(exit_code(pb::JobState::Failed as i32), 4);
        assert_eq!(exit_code(pb::JobState::Cancelled as i32), 5);
        assert_eq!(exit_code(pb::JobState::Checking as i32), 1);
    }

    #[test]
    fn status_codes_map_to_exit_codes() {
        assert_eq!(
            from_status(tonic::Status::not_found("x"), "u").code,
            EXIT_BAD_INPUT
        );
        assert_eq!(
            from_status(tonic::Status::invalid_argument("x"), "u").code,
            EXIT_BAD_INPUT
        );
        assert_eq!(
            from_status(tonic::Status::unavailable("x"), "u").code,
            EXIT_UNREACHABLE
        );
    }

    #[test]
    fn a_refusal_by_the_coordinator_is_told_apart_from_losing_it() {
        let refused = from_status(
            tonic::Status::unavailable("cannot write its store: database or disk is full"),
            "http://c",
        );
        assert_eq!(refused.code, EXIT_UNREACHABLE);
        assert_eq!(
            refused.message,
            "error: the coordinator at http://c: cannot write its store: database or disk is full"
        );
        let mut lost = tonic::Status::unavailable("connection reset");
        lost.set_source(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        let lost = from_status(lost, "http://c");
        assert_eq!(lost.code, EXIT_UNREACHABLE);
        assert!(
            lost.message.contains("lost the coordinator"),
            "{}",
            lost.message
        );
    }

    fn job(state: pb::JobState, usable: u64, in_files: u64, min_usable: u64) -> pb::Job {
        pb::Job {
            job_id: "job-x".into(),
            state: state as i32,
            settings: Some(pb::JobSettings {
                min_usable,
                ..Default::default()
            }),
            progress: Some(pb::JobProgress {
                proxies_total: 100,
                proxies_checked: 50,
                proxies_usable: usable,
                pool_files_usable: in_files,
                pool_files: if in_files > 0 {
                    "/data/output/live_proxies.txt".into()
                } else {
                    String::new()
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn code(outcome: Option<Outcome>) -> Option<i32> {
        outcome.map(|o| match o {
            Ok((code, _)) => code,
            Err(failure) => failure.code,
        })
    }

    #[test]
    fn a_refresh_wait_says_yes_only_when_the_pools_files_hold_enough() {
        use pb::JobState::*;
        // Usable proxies the files do not hold yet are not enough, whatever the job counts.
        assert_eq!(code(refresh_outcome(&job(Checking, 40, 0, 10), 10)), None);
        assert_eq!(code(refresh_outcome(&job(Checking, 40, 9, 10), 10)), None);
        // Files that hold enough are, while the job runs too, and the line names them.
        let Some(Ok((0, line))) = refresh_outcome(&job(Checking, 40, 12, 10), 10) else {
            panic!("enough in the files");
        };
        assert_eq!(
            line,
            "12 usable proxies are fresh in /data/output/live_proxies.txt (job job-x, CHECKING)"
        );
        assert_eq!(
            code(refresh_outcome(&job(Succeeded, 40, 40, 10), 10)),
            Some(0)
        );
        // Ended with fewer in the files than wanted: the job's own code...
        assert_eq!(
            code(refresh_outcome(&job(Insufficient, 4, 4, 10), 10)),
            Some(3)
        );
        assert_eq!(code(refresh_outcome(&job(Failed, 40, 0, 10), 10)), Some(4));
        assert_eq!(
            code(refresh_outcome(&job(Cancelled, 40, 12, 50), 50)),
            Some(5)
        );
        // ...3 when the job wanted fewer than this wait, 1 when the files lack what it had.
        assert_eq!(
            code(refresh_outcome(&job(Succeeded, 12, 12, 5), 50)),
            Some(3)
        );
        let Some(Err(failure)) = refresh_outcome(&job(Succeeded, 40, 0, 10), 10) else {
            panic!("a success the files do not show is a failure");
        };
        assert_eq!(failure.code, EXIT_UNREACHABLE);
        assert!(
            failure.message.contains("could not write them"),
            "{}",
            failure.message
        );
        // --min-usable 0 waits for the end.
        assert_eq!(code(refresh_outcome(&job(Checking, 0, 0, 0), 0)), None);
        assert_eq!(code(refresh_outcome(&job(Succeeded, 0, 0, 0), 0)), Some(0));
    }

    #[test]
    fn a_submit_wait_follows_the_job_to_its_end() {
        use pb::JobState::*;
        // Enough in the files while it runs: it goes on (results read after it are whole).
        assert_eq!(code(submit_outcome(&job(Checking, 40, 40, 10))), None);
        assert_eq!(code(submit_outcome(&job(Succeeded, 40, 40, 10))), Some(0));
        assert_eq!(code(submit_outcome(&job(Succeeded, 0, 0, 0))), Some(0));
        assert_eq!(code(submit_outcome(&job(Succeeded, 40, 0, 10))), Some(1));
        assert_eq!(code(submit_outcome(&job(Insufficient, 4, 4, 10))), Some(3));
        assert_eq!(code(submit_outcome(&job(Failed, 0, 0, 10))), Some(4));
        // `watch` only follows the job's state.
        assert_eq!(code(job_outcome(&job(Succeeded, 40, 0, 10))), Some(0));
        assert_eq!(code(job_outcome(&job(Checking, 40, 40, 10))), None);
    }

    #[test]
    fn a_follower_prints_each_candidate_once_across_reconnects() {
        let row = |proxy: &str| pb::ProxyResult {
            proxy: proxy.into(),
            checked: true,
            usable: true,
            ..Default::default()
        };
        let mut out = Vec::new();
        let mut printer = Printer::new(&mut out, Format::Txt, true, true);
        assert!(printer.page(vec![row("http://a:1"), row("http://b:1")]));
        // The stream is followed again from its start after a reconnect.
        assert!(printer.page(vec![
            row("http://a:1"),
            row("http://b:1"),
            row("http://c:1")
        ]));
        assert_eq!(printer.printed(), 3);
        printer.finish();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "http://a:1\nhttp://b:1\nhttp://c:1\n"
        );
        // Without --follow, rows are printed as they come.
        let mut out = Vec::new();
        let mut printer = Printer::new(&mut out, Format::Json, true, false);
        assert!(printer.page(vec![row("http://a:1"), row("http://a:1")]));
        printer.finish();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 2);
        assert_ne!(fingerprint("http://a:1"), fingerprint("http://a:2"));
    }

    #[test]
    fn refusals_name_the_flag_not_the_field() {
        let refused = from_status(
            tonic::Status::invalid_argument(
                "invalid judge_urls: ftp://judge.test/ is not an http or https URL",
            ),
            "http://c",
        );
        assert_eq!(
            refused.message,
            "error: --judge: ftp://judge.test/ is not an http or https URL"
        );
        assert_eq!(
            in_flags("invalid revalidate_every_ms: 5ms is too often"),
            "--revalidate-every: 5ms is too often"
        );
        // A field this command line does not set, or a message of another shape, is left.
        assert_eq!(
            in_flags("invalid max_failed_chunk_ratio: must be between 0 and 1"),
            "invalid max_failed_chunk_ratio: must be between 0 and 1"
        );
        assert_eq!(in_flags("no job job-x"), "no job job-x");
    }

    #[test]
    fn an_error_chain_says_each_cause_once() {
        #[derive(Debug)]
        struct Wrap(&'static str, Option<Box<Wrap>>);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|w| w as _)
            }
        }
        // As hyper-util wraps a connect error in another of the same words.
        let e = Wrap(
            "transport error",
            Some(Box::new(Wrap(
                "tcp connect error",
                Some(Box::new(Wrap(
                    "tcp connect error",
                    Some(Box::new(Wrap("Connection refused (os error 111)", None))),
                ))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "transport error: tcp connect error: Connection refused (os error 111)"
        );
    }

    #[test]
    fn a_cancel_says_whether_it_cancelled_anything() {
        use pb::JobState::*;
        let running = job(Checking, 1, 0, 10);
        let (code, line) = cancel_outcome(&running, &job(Cancelled, 1, 0, 10));
        assert_eq!(code, 0);
        assert!(
            line.starts_with("cancelled job job-x (it was CHECKING)"),
            "{line}"
        );
        let done = job(Succeeded, 40, 40, 10);
        let (code, line) = cancel_outcome(&done, &done);
        assert_eq!(code, EXIT_ALREADY_ENDED);
        assert!(
            line.starts_with("nothing cancelled: job job-x had already ended (SUCCEEDED)"),
            "{line}"
        );
        // Cancelled before: this cancel did nothing either.
        let cancelled = job(Cancelled, 1, 0, 10);
        assert_eq!(cancel_outcome(&cancelled, &cancelled).0, EXIT_ALREADY_ENDED);
        // Ended on its own between the look and the cancel.
        assert_eq!(cancel_outcome(&running, &done).0, EXIT_ALREADY_ENDED);
    }

    #[test]
    fn invalid_utf8_names_its_line() {
        assert_eq!(bytes_line(b"a\nb\nc", 4), 3);
    }
}
