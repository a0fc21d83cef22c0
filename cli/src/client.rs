//! Client commands against a coordinator: submit, watch, results, jobs, workers, cancel.

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

use crate::args::{Format, Grade, JobArgs, RefreshArgs, SourceArgs};
use crate::progress;

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

/// Exit code of a job's final state.
pub fn exit_code(state: i32) -> i32 {
    match pb::JobState::try_from(state) {
        Ok(pb::JobState::Succeeded) => 0,
        Ok(pb::JobState::Insufficient) => 3,
        Ok(pb::JobState::Failed) => 4,
        Ok(pb::JobState::Cancelled) => 5,
        _ => 1,
    }
}

fn from_status(status: tonic::Status, coordinator: &str) -> Failure {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::OutOfRange => Failure::new(EXIT_BAD_INPUT, format!("error: {}", status.message())),
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

/// Connects to the coordinator; a coordinator that is down gives exit code 1 within seconds.
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

/// A channel to the coordinator, over TLS when configured.
async fn open_channel(remote: &Remote) -> Result<Channel, Failure> {
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
    let channel = endpoint.connect().await.map_err(|e| {
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            source = s.source();
        }
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

fn protocol_value(name: &str) -> Result<i32, Failure> {
    let protocol: Protocol = name
        .trim()
        .parse()
        .map_err(|e| Failure::new(EXIT_BAD_INPUT, format!("error: --protocols: {e}")))?;
    Ok(convert::protocol_to_proto(protocol) as i32)
}

fn protocols(names: &[String]) -> Result<Vec<i32>, Failure> {
    names.iter().map(|p| protocol_value(p)).collect()
}

/// Builds a SubmitJob request from the job options and the gathered candidates.
pub fn submit_request(job: &JobArgs, inputs: Inputs) -> Result<pb::SubmitJobRequest, Failure> {
    let check = &job.check;
    Ok(pb::SubmitJobRequest {
        candidates: Vec::new(),
        candidates_text: inputs.text,
        default_protocols: protocols(&check.protocols)?,
        judge_urls: check.judge.clone(),
        timeout_ms: job.timeout.as_millis() as u64,
        chunk_size: check.chunk_size,
        min_usable: Some(check.min_usable),
        deadline_ms: check.deadline.as_millis() as u64,
        max_attempts: check.max_attempts.unwrap_or(0),
        pool: check.pool.clone(),
        name: check.name.clone(),
        strict: check.strict,
        keep_order: check.keep_order,
        max_failed_chunk_ratio: 0.0,
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
        sources: inputs.sources,
        use_coordinator_sources: false,
    })
}

/// Submits a job; prints warnings for skipped lines to stderr and the job id to stdout.
pub async fn submit(
    client: &mut Client,
    url: &str,
    request: pb::SubmitJobRequest,
    source: &str,
) -> Result<String, Failure> {
    let response = client
        .submit_job(request)
        .await
        .map_err(|s| from_status(s, url))?
        .into_inner();
    let mut stderr = std::io::stderr();
    for r in &response.rejected {
        let _ = writeln!(
            stderr,
            "warning: {source} line {}: {:?}: {}",
            r.line, r.text, r.reason
        );
    }
    if response.duplicates > 0 {
        let _ = writeln!(
            stderr,
            "note: {} duplicate candidate(s) dropped",
            response.duplicates
        );
    }
    println!("{}", response.job_id);
    Ok(response.job_id)
}

pub const EXIT_TIMED_OUT: i32 = 6;

/// The preflight: refreshes a pool (or follows its running refresh) and, with `--wait`, exits 0
/// as soon as enough usable proxies are fresh.
pub async fn refresh(
    client: &mut Client,
    url: &str,
    args: &RefreshArgs,
    inputs: Option<Inputs>,
) -> Result<i32, Failure> {
    let jobs = list_jobs(client, url).await?;
    let running = jobs.iter().find(|j| {
        !progress::is_terminal(j.state) && j.settings.as_ref().is_some_and(|s| s.pool == args.pool)
    });
    let job_id = match running {
        Some(job) => {
            eprintln!(
                "note: a refresh of pool {:?} is already running ({}); following it",
                args.pool, job.job_id
            );
            println!("{}", job.job_id);
            job.job_id.clone()
        }
        None => {
            let request = pb::SubmitJobRequest {
                default_protocols: protocols(&args.protocols)?,
                judge_urls: args.judge.clone(),
                timeout_ms: args.check_timeout.as_millis() as u64,
                min_usable: Some(args.min_usable),
                pool: args.pool.clone(),
                name: "refresh".into(),
                use_coordinator_sources: inputs.is_none(),
                sources: inputs.map(|i| i.sources).unwrap_or_default(),
                ..Default::default()
            };
            submit(client, url, request, "sources").await?
        }
    };
    if !args.wait {
        return Ok(0);
    }
    match tokio::time::timeout(
        args.timeout,
        until_enough(client, url, &job_id, args.min_usable),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(Failure::new(
            EXIT_TIMED_OUT,
            format!(
                "error: fewer than {} usable proxies after {}; the refresh goes on (proxyfleet watch {job_id})",
                args.min_usable,
                humantime::format_duration(args.timeout)
            ),
        )),
    }
}

/// Watches a job until it has `min_usable` usable proxies (0) or ends (its exit code).
async fn until_enough(
    client: &mut Client,
    url: &str,
    job_id: &str,
    min_usable: u64,
) -> Result<i32, Failure> {
    follow(client, url, job_id, |job| {
        let usable = job.progress.as_ref().map(|p| p.proxies_usable).unwrap_or(0);
        (min_usable > 0 && usable >= min_usable).then(|| {
            let state = progress::state_name(job.state);
            (
                0,
                format!("{usable} usable proxies are fresh (job {job_id}, {state})"),
            )
        })
    })
    .await
}

/// Follows a job until its terminal snapshot; returns the job's exit code.
pub async fn watch(client: &mut Client, url: &str, job_id: &str) -> Result<i32, Failure> {
    follow(client, url, job_id, |_| None).await
}

/// Shows a job's progress until `enough` says to stop early (its exit code and final line) or
/// the job ends (the job's exit code and summary).
async fn follow(
    client: &mut Client,
    url: &str,
    job_id: &str,
    enough: impl Fn(&pb::Job) -> Option<(i32, String)>,
) -> Result<i32, Failure> {
    let mut stream = client
        .watch_job(pb::WatchJobRequest {
            job_id: job_id.to_string(),
        })
        .await
        .map_err(|s| from_status(s, url))?
        .into_inner();
    let mut view = progress::View::new(std::io::stderr().is_terminal());
    loop {
        let job = match stream.message().await {
            Ok(Some(job)) => job,
            Ok(None) => break,
            Err(status) => {
                view.finish();
                return Err(from_status(status, url));
            }
        };
        view.show(&job);
        let outcome = enough(&job).or_else(|| {
            progress::is_terminal(job.state)
                .then(|| (exit_code(job.state), progress::summary(&job)))
        });
        if let Some((code, line)) = outcome {
            view.finish();
            println!("{line}");
            return Ok(code);
        }
    }
    view.finish();
    Err(Failure::new(
        EXIT_UNREACHABLE,
        "error: the watch stream ended before the job did; watch it again",
    ))
}

pub async fn results(
    client: &mut Client,
    url: &str,
    job_id: &str,
    format: Format,
    usable_only: bool,
    follow: bool,
) -> Result<(), Failure> {
    let mut stream = client
        .get_results(pb::GetResultsRequest {
            job_id: job_id.to_string(),
            usable_only,
            follow,
        })
        .await
        .map_err(|s| from_status(s, url))?
        .into_inner();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut first = true;
    if format == Format::Json {
        let _ = writeln!(out, "[");
    }
    while let Some(page) = stream.message().await.map_err(|s| from_status(s, url))? {
        for r in page.results {
            let line = match format {
                Format::Json => {
                    let value = result_json(&r);
                    let sep = if first { "" } else { ",\n" };
                    format!("{sep}  {value}")
                }
                Format::Txt if usable_only => format!("{}\n", r.proxy),
                Format::Txt => format!("{}\n", progress::result_line(&r)),
            };
            first = false;
            if out.write_all(line.as_bytes()).is_err() {
                return Ok(()); // stdout closed (e.g. piped into head): nothing more to do
            }
        }
    }
    if format == Format::Json {
        let _ = writeln!(out, "{}]", if first { "" } else { "\n" });
    }
    let _ = out.flush();
    Ok(())
}

fn result_json(r: &pb::ProxyResult) -> serde_json::Value {
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
    })
}

/// Asks the coordinator's grpc.health.v1 service whether it serves.
pub async fn health(remote: &Remote) -> Result<i32, Failure> {
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
    println!("{}", if serving { "serving" } else { "not serving" });
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

pub async fn jobs(client: &mut Client, url: &str) -> Result<(), Failure> {
    let jobs = list_jobs(client, url).await?;
    println!("{}", progress::jobs_table(&jobs));
    Ok(())
}

pub async fn workers(client: &mut Client, url: &str) -> Result<(), Failure> {
    let workers = client
        .list_workers(pb::ListWorkersRequest {})
        .await
        .map_err(|s| from_status(s, url))?
        .into_inner()
        .workers;
    println!("{}", progress::workers_table(&workers));
    Ok(())
}

pub async fn cancel(client: &mut Client, url: &str, job_id: &str) -> Result<(), Failure> {
    let job = client
        .cancel_job(pb::CancelJobRequest {
            job_id: job_id.to_string(),
        })
        .await
        .map_err(|s| from_status(s, url))?
        .into_inner();
    println!("{}", progress::summary(&job));
    Ok(())
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

    #[test]
    fn invalid_utf8_names_its_line() {
        assert_eq!(bytes_line(b"a\nb\nc", 4), 3);
    }
}
