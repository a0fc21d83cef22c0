//! A client's job submission checked in one place: every refusal and every default it meets.
//!
//! [`validate`] is pure: the request, the operator's sources (already read when the request asks
//! for them) and the coordinator's policy in; the job's settings and parsed candidates, or why
//! not, out. The one check that needs the network, resolving the judges and check targets a
//! client named, is [`check_urls`], run on what `validate` passed.

use std::collections::BTreeMap;
use std::time::Duration;

use proxyfleet_common::url::HttpUrl;
use proxyfleet_proto::v1 as pb;

use crate::candidate::{self, Candidate, Protocol, Rejected, TargetPolicy};
use crate::convert;
use crate::fetch::{self, Location, PublicUrlError};
use crate::scheduler::{
    Anonymity, CheckTarget, CheckTargets, JobKind, JobSettings, SourceSpec, UsableFilter,
};

/// Time one check may take when the request names none.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Candidates per chunk when the request names none.
pub(crate) const DEFAULT_CHUNK_SIZE: u32 = 100;
/// Time a job may take when the request names none.
pub(crate) const DEFAULT_DEADLINE: Duration = Duration::from_secs(3600);
/// Share of failed chunks that fails a job when the request names none.
pub(crate) const DEFAULT_MAX_FAILED_CHUNK_RATIO: f64 = 0.5;
/// Why `name` cannot name a pool, if it cannot: a pool's files go to a directory of that name.
pub fn pool_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 64 {
        return Some("must be 1 to 64 characters".into());
    }
    if name.starts_with('.') {
        return Some("must not start with '.'".into());
    }
    // Named pools' files go in a directory of that name beside the default pool's files.
    if name.ends_with(".txt") || name.ends_with(".json") {
        return Some("must not end in .txt or .json, like the pool files beside it".into());
    }
    name.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .map(|c| format!("{c:?} is not allowed: use letters, digits, '-', '_' and '.'"))
}

/// The pool of a job that names none.
pub(crate) const DEFAULT_POOL: &str = "default";
/// Most check targets one job may name: each is one more request through every proxy.
pub(crate) const MAX_TARGETS: usize = 8;
/// Most statuses one target may list.
const MAX_TARGET_STATUSES: usize = 16;
/// Longest text or pattern a target's body is checked for.
const MAX_TARGET_TEXT: usize = 1024;
/// Longest name of a target.
const MAX_TARGET_NAME: usize = 128;
/// Largest compiled body pattern, as the workers compile it too.
const MAX_PATTERN_SIZE: usize = 1 << 20;

/// What the coordinator allows a submission: its configuration, and how busy it was when the
/// request arrived.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SubmitPolicy {
    /// Which candidates a list may name (--allow-private-targets).
    pub(crate) targets: TargetPolicy,
    /// Most candidates one job may hold (--max-candidates).
    pub(crate) max_candidates: usize,
    /// Attempts per chunk of a job that names none (--max-attempts).
    pub(crate) max_attempts: u32,
    /// Most jobs not ended at once (--max-active-jobs).
    pub(crate) max_active_jobs: usize,
    /// Jobs not ended when the request arrived.
    pub(crate) active_jobs: usize,
}

/// A submission that passed every check: a job but for its id.
#[derive(Debug)]
pub(crate) struct ValidSubmission {
    pub(crate) name: String,
    pub(crate) settings: JobSettings,
    /// The inline candidates, parsed, each once, in the order given.
    pub(crate) candidates: Vec<Candidate>,
    /// Check the inline candidates in the order given rather than shuffled.
    pub(crate) keep_order: bool,
    /// Sources to fetch: the client's, then the operator's when asked for.
    pub(crate) sources: Vec<SourceSpec>,
    /// Inline lines left out, with why (the first [`candidate::MAX_REJECTED_KEPT`]).
    pub(crate) rejected: Vec<Rejected>,
    /// Inline candidates dropped as repeats of an earlier one.
    pub(crate) duplicates: u64,
    /// Inline entries dropped, by why.
    pub(crate) dropped: BTreeMap<String, u64>,
}

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubmitError {
    #[error(
        "the candidate list is empty: give one proxy per line as host:port or scheme://[user:pass@]host:port"
    )]
    Empty,
    #[error("no usable candidate in the list; {}", describe(.0))]
    AllRejected(Vec<Rejected>),
    #[error("{} malformed line(s) and strict mode is on; {}", .0.len(), describe(.0))]
    Strict(Vec<Rejected>),
    #[error(
        "{count} candidates is more than the {max} a job may hold; split the list into several jobs"
    )]
    TooMany { count: usize, max: usize },
    #[error(
        "{active} jobs have not ended yet, the most the coordinator holds (--max-active-jobs {max}); wait for some to end or cancel them"
    )]
    Busy { active: usize, max: usize },
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The request asks for the operator's sources and the coordinator has no sources file.
    #[error(
        "the coordinator has no --sources file of its own: name the sources with the job (proxyfleet refresh --sources FILE)"
    )]
    NoSourcesFile,
    /// The operator's sources file cannot be read or parsed; the message names it.
    #[error("invalid sources: {0}")]
    SourcesFile(String),
    /// A judge the client named may not be contacted.
    #[error("invalid judge_urls: {0}")]
    Judge(PublicUrlError),
}

/// The first few rejected lines, for an error message.
fn describe(rejected: &[Rejected]) -> String {
    let mut text: Vec<String> = rejected
        .iter()
        .take(5)
        .map(|r| format!("line {}: {:?}: {}", r.line, r.text, r.reason))
        .collect();
    if rejected.len() > 5 {
        text.push(format!("and {} more", rejected.len() - 5));
    }
    text.join("; ")
}

fn invalid(field: &'static str, message: impl Into<String>) -> SubmitError {
    SubmitError::Invalid {
        field,
        message: message.into(),
    }
}

/// Checks a submission and fills in what it leaves out. `own_sources` are the operator's sources
/// (from its --sources file, trusted to name local files), read by the caller when the request
/// sets `use_coordinator_sources`; empty otherwise. Refusals come cheapest first: a busy
/// coordinator refuses before it parses a list.
pub(crate) fn validate(
    request: pb::SubmitJobRequest,
    own_sources: Vec<SourceSpec>,
    policy: &SubmitPolicy,
) -> Result<ValidSubmission, SubmitError> {
    // Every field named: a field added to the request is a compile error here until it is checked.
    let pb::SubmitJobRequest {
        candidates,
        candidates_text,
        default_protocols,
        judge_urls,
        timeout_ms,
        chunk_size,
        min_usable,
        deadline_ms,
        max_attempts,
        pool,
        name,
        strict,
        max_failed_chunk_ratio,
        connect_timeout_ms,
        max_latency_ms,
        min_anonymity,
        require_https,
        sources,
        use_coordinator_sources: _,
        keep_order,
        targets,
        targets_only,
        revalidate_every_ms,
    } = request;
    let targets = check_targets(targets, targets_only)?;
    let default_protocols = protocols("default_protocols", &default_protocols)?;
    let mut all_sources = Vec::with_capacity(sources.len() + own_sources.len());
    for source in sources {
        all_sources.push(SourceSpec {
            protocols: protocols("sources", &source.protocols)?,
            url: source.url,
            content: (!source.content.is_empty()).then_some(source.content),
            trusted: false,
        });
    }
    all_sources.extend(own_sources);
    let filter = UsableFilter {
        max_latency: positive_ms(max_latency_ms),
        min_anonymity: min_anonymity_of(min_anonymity)?,
        require_https,
    };

    let no_lines =
        candidates.iter().all(|l| l.trim().is_empty()) && candidates_text.trim().is_empty();
    if no_lines && all_sources.is_empty() {
        return Err(SubmitError::Empty);
    }

    // No judge named: the coordinator's, whatever they are when the checks run.
    let judge_urls: Vec<String> = judge_urls
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(Err(bad)) = judge_urls
        .iter()
        .map(|u| HttpUrl::parse(u))
        .find(Result::is_err)
    {
        return Err(invalid("judge_urls", bad.to_string()));
    }
    if targets.only && !judge_urls.is_empty() {
        return Err(invalid(
            "targets_only",
            "a job checked against its targets only asks no judge: name no judge, or check against the judge too",
        ));
    }
    if targets.only && filter.min_anonymity.is_some() {
        return Err(invalid(
            "min_anonymity",
            "anonymity is graded by a judge, which a job of targets only does not ask",
        ));
    }
    let timeout = positive_ms(timeout_ms).unwrap_or(DEFAULT_TIMEOUT);
    if timeout < Duration::from_millis(10) || timeout > Duration::from_secs(300) {
        return Err(invalid("timeout", "must be between 10ms and 5m"));
    }
    let connect_timeout = positive_ms(connect_timeout_ms)
        .unwrap_or(timeout)
        .min(timeout);
    if connect_timeout < Duration::from_millis(10) {
        return Err(invalid("connect_timeout", "must be at least 10ms"));
    }
    let chunk_size = given_or(chunk_size, DEFAULT_CHUNK_SIZE);
    if chunk_size > 100_000 {
        return Err(invalid("chunk_size", "must be between 1 and 100000"));
    }
    let deadline = positive_ms(deadline_ms).unwrap_or(DEFAULT_DEADLINE);
    if deadline < Duration::from_millis(100) {
        return Err(invalid("deadline", "must be at least 100ms"));
    }
    let max_attempts = given_or(max_attempts, policy.max_attempts);
    if max_attempts == 0 {
        return Err(invalid("max_attempts", "must be at least 1"));
    }
    let max_failed_chunk_ratio = given_or(max_failed_chunk_ratio, DEFAULT_MAX_FAILED_CHUNK_RATIO);
    if max_failed_chunk_ratio > 1.0 {
        return Err(invalid("max_failed_chunk_ratio", "must be between 0 and 1"));
    }
    if !pool.is_empty()
        && let Some(problem) = pool_name_problem(&pool)
    {
        return Err(invalid("pool", format!("{pool:?} {problem}")));
    }
    let settings = JobSettings {
        judge_urls,
        protocols: if default_protocols.is_empty() {
            vec![Protocol::Http]
        } else {
            default_protocols
        },
        timeout,
        connect_timeout,
        filter,
        chunk_size,
        min_usable: min_usable.unwrap_or(1),
        deadline,
        max_attempts,
        pool: if pool.is_empty() {
            DEFAULT_POOL.to_string()
        } else {
            pool
        },
        max_failed_chunk_ratio,
        kind: JobKind::Refresh,
        revalidate_every: match revalidate_every_ms {
            0 => None,
            u64::MAX => Some(Duration::ZERO),
            ms if ms < 1_000 => {
                return Err(invalid(
                    "revalidate_every_ms",
                    format!("{ms}ms is too often: at least 1s (or never)"),
                ));
            }
            ms => Some(Duration::from_millis(ms)),
        },
        targets,
    };

    if policy.active_jobs >= policy.max_active_jobs {
        return Err(SubmitError::Busy {
            active: policy.active_jobs,
            max: policy.max_active_jobs,
        });
    }

    // The entries first, by position from 1; the text's lines numbered on from them.
    let lines = candidates
        .iter()
        .map(String::as_str)
        .chain(candidates_text.lines())
        .zip(1u64..)
        .map(|(line, number)| (number, line));
    let parsed = candidate::parse_list(lines, &settings.protocols, policy.targets);
    if parsed.candidates.is_empty() && all_sources.is_empty() {
        if parsed.rejected.is_empty() {
            return Err(SubmitError::Empty);
        }
        return Err(SubmitError::AllRejected(parsed.rejected));
    }
    if strict && !parsed.rejected.is_empty() {
        return Err(SubmitError::Strict(parsed.rejected));
    }
    if parsed.candidates.len() > policy.max_candidates {
        return Err(SubmitError::TooMany {
            count: parsed.candidates.len(),
            max: policy.max_candidates,
        });
    }
    for source in all_sources.iter().filter(|s| s.content.is_none()) {
        check_location(source)?;
    }
    let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
    for (why, n) in parsed.dropped {
        *dropped.entry(why.to_string()).or_default() += n;
    }
    Ok(ValidSubmission {
        name,
        settings,
        candidates: parsed.candidates,
        keep_order,
        sources: all_sources,
        rejected: parsed.rejected,
        duplicates: parsed.duplicates,
        dropped,
    })
}

/// The request's check targets, each checked: a URL as strict as a judge's, statuses of HTTP,
/// a pattern that compiles, bounded texts. Refusals name the target by its place (from 1).
fn check_targets(targets: Vec<pb::CheckTarget>, only: bool) -> Result<CheckTargets, SubmitError> {
    if targets.len() > MAX_TARGETS {
        return Err(invalid(
            "targets",
            format!(
                "{} targets is more than the {MAX_TARGETS} a job may name",
                targets.len()
            ),
        ));
    }
    if only && targets.is_empty() {
        return Err(invalid(
            "targets_only",
            "a job of targets only needs at least one check target",
        ));
    }
    let mut list = Vec::with_capacity(targets.len());
    for (place, target) in (1..).zip(targets) {
        let pb::CheckTarget {
            url,
            statuses,
            body_contains,
            body_regex,
            max_latency_ms,
            name,
        } = target;
        let url = url.trim().to_string();
        let name = name.trim().to_string();
        let label = if name.is_empty() { &url } else { &name };
        let at = |why: String| invalid("targets", format!("target {place} ({label:?}) {why}"));
        HttpUrl::parse(&url).map_err(|e| at(format!("has an invalid URL: {e}")))?;
        if name.chars().count() > MAX_TARGET_NAME || name.chars().any(char::is_control) {
            return Err(at(format!(
                "has a name longer than {MAX_TARGET_NAME} characters or with control characters"
            )));
        }
        if statuses.len() > MAX_TARGET_STATUSES {
            return Err(at(format!(
                "lists more than {MAX_TARGET_STATUSES} statuses"
            )));
        }
        let statuses = statuses
            .iter()
            .map(|&s| {
                u16::try_from(s)
                    .ok()
                    .filter(|s| (100..=599).contains(s))
                    .ok_or_else(|| {
                        at(format!(
                            "expects status {s}, which is not between 100 and 599"
                        ))
                    })
            })
            .collect::<Result<Vec<u16>, _>>()?;
        if body_contains.len() > MAX_TARGET_TEXT || body_regex.len() > MAX_TARGET_TEXT {
            return Err(at(format!(
                "expects a body text or pattern longer than {MAX_TARGET_TEXT} bytes"
            )));
        }
        if !body_regex.is_empty() {
            regex::RegexBuilder::new(&body_regex)
                .size_limit(MAX_PATTERN_SIZE)
                .build()
                .map_err(|e| at(format!("has a body pattern that does not compile: {e}")))?;
        }
        let max_latency = positive_ms(max_latency_ms);
        if max_latency.is_some_and(|d| d > Duration::from_secs(300)) {
            return Err(at("has a maximum latency over 5m".into()));
        }
        list.push(CheckTarget {
            url,
            statuses,
            body_contains,
            body_regex,
            max_latency,
            name,
        });
    }
    Ok(CheckTargets {
        list: list.into(),
        only,
    })
}

/// Protocol values of the request; an unknown value (or none, 0) is refused.
fn protocols(field: &'static str, values: &[i32]) -> Result<Vec<Protocol>, SubmitError> {
    values
        .iter()
        .map(|&p| {
            convert::protocol_from_proto(p)
                .ok_or_else(|| invalid(field, format!("unknown protocol value {p}")))
        })
        .collect()
}

/// The request's minimum anonymity; unknown (0) is no minimum.
fn min_anonymity_of(value: i32) -> Result<Option<Anonymity>, SubmitError> {
    match pb::Anonymity::try_from(value) {
        Ok(pb::Anonymity::Unknown) => Ok(None),
        Ok(_) => Ok(Some(convert::anonymity_from_proto(value))),
        Err(_) => Err(invalid("min_anonymity", format!("unknown value {value}"))),
    }
}

/// A number of the request, or `default` where it is not above zero: proto3 sends 0 for "not
/// given", and a negative or NaN ratio means nothing else.
fn given_or<T: PartialOrd + Default>(value: T, default: T) -> T {
    if value > T::default() { value } else { default }
}

/// Milliseconds of the request, 0 meaning not given.
fn positive_ms(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// A source the coordinator is to fetch must name an http(s) URL, or a local file the operator
/// listed.
fn check_location(source: &SourceSpec) -> Result<(), SubmitError> {
    match fetch::locate(&source.url) {
        Ok(Location::Http(_)) => Ok(()),
        Ok(Location::File(_)) if source.trusted => Ok(()),
        Ok(Location::File(_)) => Err(invalid(
            "sources",
            format!(
                "{:?} is a path on the coordinator's machine; send the file's content, or list it in the coordinator's --sources file",
                source.url
            ),
        )),
        Err(e) => Err(invalid("sources", e.to_string())),
    }
}

// The edge: what cannot be decided from the request alone.

/// Resolves the judges and check targets a client named, once [`validate`] passed them: checks
/// contact them through every proxy, so none may point inside unless the policy allows it. Where
/// a judge is dialled later, the guard checks again.
pub(crate) async fn check_urls(
    settings: &JobSettings,
    targets: TargetPolicy,
) -> Result<(), SubmitError> {
    for url in &settings.judge_urls {
        fetch::check_public_url(url, targets.allow_private)
            .await
            .map_err(SubmitError::Judge)?;
    }
    for (place, target) in (1..).zip(settings.targets.list.iter()) {
        fetch::check_public_url(&target.url, targets.allow_private)
            .await
            .map_err(|e| {
                invalid(
                    "targets",
                    format!("target {place} ({:?}): {e}", target.label()),
                )
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SubmitPolicy {
        SubmitPolicy {
            targets: TargetPolicy {
                allow_private: false,
            },
            max_candidates: 10,
            max_attempts: 3,
            max_active_jobs: 2,
            active_jobs: 0,
        }
    }

    /// A request of `lines` and nothing else.
    fn request(lines: &[&str]) -> pb::SubmitJobRequest {
        pb::SubmitJobRequest {
            candidates: lines.iter().map(|l| l.to_string()).collect(),
            ..pb::SubmitJobRequest::default()
        }
    }

    fn valid(r: pb::SubmitJobRequest) -> ValidSubmission {
        validate(r, Vec::new(), &policy()).unwrap()
    }

    fn refused(r: pb::SubmitJobRequest) -> SubmitError {
        refused_by(r, &policy())
    }

    fn refused_by(r: pb::SubmitJobRequest, policy: &SubmitPolicy) -> SubmitError {
        validate(r, Vec::new(), policy).expect_err("refused")
    }

    /// An `Invalid` refusal's field and message.
    fn invalid_field(e: SubmitError) -> (&'static str, String) {
        match e {
            SubmitError::Invalid { field, message } => (field, message),
            other => panic!("not an invalid field: {other:?}"),
        }
    }

    fn source(url: &str) -> pb::SourceSpec {
        pb::SourceSpec {
            url: url.into(),
            ..pb::SourceSpec::default()
        }
    }

    fn own_source(url: &str) -> SourceSpec {
        SourceSpec {
            url: url.into(),
            protocols: vec![Protocol::Socks5],
            content: None,
            trusted: true,
        }
    }

    #[test]
    fn what_a_request_leaves_out_gets_the_defaults() {
        let v = valid(request(&["203.0.113.1:8080"]));
        assert_eq!(
            v.settings,
            JobSettings {
                judge_urls: vec![],
                protocols: vec![Protocol::Http],
                timeout: Duration::from_secs(10),
                connect_timeout: Duration::from_secs(10),
                filter: UsableFilter::default(),
                chunk_size: 100,
                min_usable: 1,
                deadline: Duration::from_secs(3600),
                max_attempts: 3,
                pool: "default".into(),
                max_failed_chunk_ratio: 0.5,
                kind: JobKind::Refresh,
                revalidate_every: None,
                targets: CheckTargets::default(),
            }
        );
        assert_eq!(v.candidates.len(), 1);
        assert!(!v.keep_order);
        assert!(v.sources.is_empty() && v.rejected.is_empty());
        assert_eq!((v.name.as_str(), v.duplicates), ("", 0));
    }

    #[test]
    fn what_a_request_names_is_kept() {
        let mut r = request(&["203.0.113.1:8080"]);
        r.default_protocols = vec![pb::Protocol::Socks5 as i32, pb::Protocol::Https as i32];
        r.judge_urls = vec![" ".into(), " https://judge.test/echo ".into(), "".into()];
        r.timeout_ms = 2_000;
        r.connect_timeout_ms = 500;
        r.chunk_size = 7;
        r.min_usable = Some(0);
        r.deadline_ms = 60_000;
        r.max_attempts = 9;
        r.pool = "eu".into();
        r.name = "nightly".into();
        r.max_failed_chunk_ratio = 1.0;
        r.max_latency_ms = 800;
        r.min_anonymity = pb::Anonymity::Anonymous as i32;
        r.require_https = true;
        r.keep_order = true;
        r.revalidate_every_ms = 30_000;
        let v = valid(r);
        assert_eq!(
            v.settings,
            JobSettings {
                judge_urls: vec!["https://judge.test/echo".into()],
                protocols: vec![Protocol::Socks5, Protocol::Https],
                timeout: Duration::from_secs(2),
                connect_timeout: Duration::from_millis(500),
                filter: UsableFilter {
                    max_latency: Some(Duration::from_millis(800)),
                    min_anonymity: Some(Anonymity::Anonymous),
                    require_https: true,
                },
                chunk_size: 7,
                min_usable: 0,
                deadline: Duration::from_secs(60),
                max_attempts: 9,
                pool: "eu".into(),
                max_failed_chunk_ratio: 1.0,
                kind: JobKind::Refresh,
                revalidate_every: Some(Duration::from_secs(30)),
                targets: CheckTargets::default(),
            }
        );
        assert_eq!(v.name, "nightly");
        assert!(v.keep_order);
        assert_eq!(v.candidates.len(), 2, "one candidate per default protocol");
    }

    #[test]
    fn a_connect_timeout_is_at_most_the_check_timeout() {
        let mut r = request(&["203.0.113.1:8080"]);
        r.timeout_ms = 1_000;
        r.connect_timeout_ms = 5_000;
        assert_eq!(valid(r).settings.connect_timeout, Duration::from_secs(1));
    }

    #[test]
    fn a_failed_chunk_ratio_not_above_zero_is_the_default() {
        for ratio in [0.0, -1.0, f64::NAN] {
            let mut r = request(&["203.0.113.1:8080"]);
            r.max_failed_chunk_ratio = ratio;
            assert_eq!(valid(r).settings.max_failed_chunk_ratio, 0.5, "{ratio}");
        }
    }

    #[test]
    fn lines_are_numbered_entries_first_then_the_text() {
        let mut r = request(&["203.0.113.1:8080", "bad one"]);
        r.candidates_text = "203.0.113.2:8080\nworse\n203.0.113.1:8080\n".into();
        let v = valid(r);
        assert_eq!(v.candidates.len(), 2);
        let lines: Vec<(u64, &str)> = v
            .rejected
            .iter()
            .map(|r| (r.line, r.text.as_str()))
            .collect();
        assert_eq!(lines, [(2, "bad one"), (4, "worse")]);
        assert_eq!(v.duplicates, 1);
        assert_eq!(v.dropped.get("duplicate"), Some(&1));
        assert_eq!(v.dropped.get("malformed"), Some(&2));
    }

    #[test]
    fn sources_are_the_clients_then_the_operators() {
        let mut r = request(&[]);
        r.sources = vec![
            pb::SourceSpec {
                url: "https://lists.test/a.txt".into(),
                protocols: vec![pb::Protocol::Socks4 as i32],
                content: String::new(),
            },
            pb::SourceSpec {
                url: "mine.txt".into(),
                protocols: vec![],
                content: "203.0.113.1:8080\n".into(),
            },
        ];
        let v = validate(r, vec![own_source("/etc/proxyfleet/list.txt")], &policy()).unwrap();
        assert_eq!(
            v.sources,
            [
                SourceSpec {
                    url: "https://lists.test/a.txt".into(),
                    protocols: vec![Protocol::Socks4],
                    content: None,
                    trusted: false,
                },
                SourceSpec {
                    url: "mine.txt".into(),
                    protocols: vec![],
                    content: Some("203.0.113.1:8080\n".into()),
                    trusted: false,
                },
                own_source("/etc/proxyfleet/list.txt"),
            ]
        );
        assert!(v.candidates.is_empty(), "a job of sources needs no list");
    }

    #[test]
    fn a_request_without_candidates_or_sources_is_refused() {
        for lines in [&[][..], &["", "  "][..], &["# a comment only"][..]] {
            assert!(
                matches!(refused(request(lines)), SubmitError::Empty),
                "{lines:?}"
            );
        }
        let mut r = request(&[]);
        r.candidates_text = "\n \n".into();
        assert!(matches!(refused(r), SubmitError::Empty));
    }

    #[test]
    fn unknown_enum_values_are_refused_by_field() {
        let mut r = request(&["203.0.113.1:8080"]);
        r.default_protocols = vec![pb::Protocol::Unspecified as i32];
        assert_eq!(
            invalid_field(refused(r)),
            ("default_protocols", "unknown protocol value 0".into())
        );
        let mut r = request(&["203.0.113.1:8080"]);
        r.sources = vec![pb::SourceSpec {
            protocols: vec![99],
            ..source("https://lists.test/a.txt")
        }];
        assert_eq!(
            invalid_field(refused(r)),
            ("sources", "unknown protocol value 99".into())
        );
        let mut r = request(&["203.0.113.1:8080"]);
        r.min_anonymity = 42;
        assert_eq!(
            invalid_field(refused(r)),
            ("min_anonymity", "unknown value 42".into())
        );
    }

    #[test]
    fn settings_out_of_range_are_refused_by_field() {
        type Spoil = fn(&mut pb::SubmitJobRequest);
        let cases: [(&str, Spoil); 9] = [
            ("judge_urls", |r| {
                r.judge_urls = vec!["ftp://judge.test/".into()]
            }),
            ("judge_urls", |r| {
                r.judge_urls = vec!["http://u@judge.test/".into()]
            }),
            ("timeout", |r| r.timeout_ms = 9),
            ("timeout", |r| r.timeout_ms = 300_001),
            ("connect_timeout", |r| r.connect_timeout_ms = 9),
            ("chunk_size", |r| r.chunk_size = 100_001),
            ("deadline", |r| r.deadline_ms = 99),
            ("max_failed_chunk_ratio", |r| {
                r.max_failed_chunk_ratio = 1.01
            }),
            ("max_failed_chunk_ratio", |r| {
                r.max_failed_chunk_ratio = f64::INFINITY
            }),
        ];
        for (field, spoil) in cases {
            let mut r = request(&["203.0.113.1:8080"]);
            spoil(&mut r);
            let (named, message) = invalid_field(refused(r));
            assert_eq!(named, field, "{message}");
        }
        // Limits just inside are taken.
        let mut r = request(&["203.0.113.1:8080"]);
        r.timeout_ms = 300_000;
        r.connect_timeout_ms = 10;
        r.chunk_size = 100_000;
        r.deadline_ms = 100;
        valid(r);
    }

    #[test]
    fn a_coordinator_without_attempts_refuses_a_job_naming_none() {
        let none = SubmitPolicy {
            max_attempts: 0,
            ..policy()
        };
        let (field, _) = invalid_field(refused_by(request(&["203.0.113.1:8080"]), &none));
        assert_eq!(field, "max_attempts");
        let mut r = request(&["203.0.113.1:8080"]);
        r.max_attempts = 1;
        assert_eq!(
            validate(r, Vec::new(), &none)
                .unwrap()
                .settings
                .max_attempts,
            1
        );
    }

    #[test]
    fn a_busy_coordinator_refuses_before_parsing() {
        let busy = SubmitPolicy {
            active_jobs: 2,
            ..policy()
        };
        let e = refused_by(request(&["not a proxy"]), &busy);
        assert!(
            matches!(e, SubmitError::Busy { active: 2, max: 2 }),
            "{e:?}"
        );
        assert!(e.to_string().contains("--max-active-jobs 2"), "{e}");
    }

    #[test]
    fn lists_with_nothing_usable_are_refused_with_their_lines() {
        let e = refused(request(&["nope", "203.0.113.1:0"]));
        let SubmitError::AllRejected(rejected) = &e else {
            panic!("{e:?}");
        };
        assert_eq!(rejected.len(), 2);
        let text = e.to_string();
        assert!(text.contains("line 1") && text.contains("line 2"), "{text}");
        // Private addresses are refused unless the policy allows them.
        let e = refused(request(&["127.0.0.1:8080"]));
        assert!(e.to_string().contains("--allow-private-targets"), "{e}");
        let open = SubmitPolicy {
            targets: TargetPolicy {
                allow_private: true,
            },
            ..policy()
        };
        assert_eq!(
            validate(request(&["127.0.0.1:8080"]), Vec::new(), &open)
                .unwrap()
                .candidates
                .len(),
            1
        );
        // With sources, a list of rejects is no reason to refuse the job.
        let mut r = request(&["nope"]);
        r.sources = vec![source("https://lists.test/a.txt")];
        assert_eq!(valid(r).rejected.len(), 1);
    }

    #[test]
    fn strict_mode_refuses_any_bad_line() {
        let mut r = request(&["203.0.113.1:8080", "nope"]);
        r.strict = true;
        let e = refused(r);
        assert!(
            matches!(&e, SubmitError::Strict(r) if r.len() == 1),
            "{e:?}"
        );
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn a_list_over_the_candidate_limit_is_refused() {
        let lines: Vec<String> = (1..=11).map(|i| format!("203.0.113.{i}:8080")).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let e = refused(request(&lines));
        assert!(
            matches!(e, SubmitError::TooMany { count: 11, max: 10 }),
            "{e:?}"
        );
        valid(request(&lines[..10]));
    }

    #[test]
    fn sources_must_be_urls_or_the_operators_files() {
        let with_source = |url: &str| {
            let mut r = request(&[]);
            r.sources = vec![source(url)];
            r
        };
        let (field, message) = invalid_field(refused(with_source("/etc/passwd")));
        assert_eq!(field, "sources");
        assert!(
            message.contains("a path on the coordinator's machine"),
            "{message}"
        );
        let (field, message) = invalid_field(refused(with_source("file:///etc/passwd")));
        assert_eq!(field, "sources");
        assert!(message.contains("--sources file"), "{message}");
        for bad in ["ftp://lists.test/a.txt", "http://2130706433/list"] {
            let (field, _) = invalid_field(refused(with_source(bad)));
            assert_eq!(field, "sources", "{bad}");
        }
        // Sent with its content, a file is not read by the coordinator: its name is a label.
        let mut r = with_source("/home/me/list.txt");
        r.sources[0].content = "203.0.113.1:8080\n".into();
        valid(r);
        // The operator's own files may be read.
        let v = validate(request(&[]), vec![own_source("lists/a.txt")], &policy()).unwrap();
        assert_eq!(v.sources.len(), 1);
    }

    fn shop(url: &str) -> pb::CheckTarget {
        pb::CheckTarget {
            url: url.into(),
            ..pb::CheckTarget::default()
        }
    }

    #[test]
    fn check_targets_are_kept_with_their_conditions() {
        let mut r = request(&["203.0.113.1:8080"]);
        r.targets = vec![
            pb::CheckTarget {
                url: " https://shop.test/item ".into(),
                statuses: vec![200, 301],
                body_contains: "Add to cart".into(),
                body_regex: r"\d+ in stock".into(),
                max_latency_ms: 2_000,
                name: " shop ".into(),
            },
            shop("http://blog.test/"),
        ];
        let v = valid(r);
        assert_eq!(
            v.settings.targets,
            CheckTargets {
                list: vec![
                    CheckTarget {
                        url: "https://shop.test/item".into(),
                        statuses: vec![200, 301],
                        body_contains: "Add to cart".into(),
                        body_regex: r"\d+ in stock".into(),
                        max_latency: Some(Duration::from_secs(2)),
                        name: "shop".into(),
                    },
                    CheckTarget {
                        url: "http://blog.test/".into(),
                        statuses: vec![],
                        body_contains: String::new(),
                        body_regex: String::new(),
                        max_latency: None,
                        name: String::new(),
                    },
                ]
                .into(),
                only: false,
            }
        );
        let mut r = request(&["203.0.113.1:8080"]);
        r.targets = vec![shop("http://shop.test/")];
        r.targets_only = true;
        assert!(valid(r).settings.targets.only);
    }

    #[test]
    fn bad_targets_are_refused_naming_the_target() {
        type Spoil = fn(&mut pb::CheckTarget);
        let cases: [(Spoil, &str); 8] = [
            (|t| t.url = "ftp://shop.test/".into(), "has an invalid URL"),
            (
                |t| t.url = "http://u@shop.test/".into(),
                "has an invalid URL",
            ),
            (|t| t.statuses = vec![200, 99], "status 99"),
            (|t| t.statuses = vec![600], "status 600"),
            (|t| t.body_regex = "(unclosed".into(), "does not compile"),
            (
                |t| t.body_contains = "x".repeat(1025),
                "longer than 1024 bytes",
            ),
            (|t| t.name = "n".repeat(129), "longer than 128"),
            (|t| t.max_latency_ms = 300_001, "over 5m"),
        ];
        for (spoil, why) in cases {
            let mut r = request(&["203.0.113.1:8080"]);
            let mut bad = shop("http://shop.test/");
            bad.name = "shop".into();
            spoil(&mut bad);
            r.targets = vec![shop("http://ok.test/"), bad];
            let (field, message) = invalid_field(refused(r));
            assert_eq!(field, "targets", "{message}");
            assert!(message.starts_with("target 2 ("), "{message}");
            assert!(message.contains(why), "{why}: {message}");
        }
        let mut r = request(&["203.0.113.1:8080"]);
        r.targets = (0..9)
            .map(|i| shop(&format!("http://s{i}.test/")))
            .collect();
        let (field, message) = invalid_field(refused(r));
        assert_eq!(field, "targets");
        assert!(message.contains("more than the 8"), "{message}");
    }

    #[test]
    fn targets_only_needs_a_target_and_no_judge() {
        let mut r = request(&["203.0.113.1:8080"]);
        r.targets_only = true;
        assert_eq!(invalid_field(refused(r)).0, "targets_only");
        let mut r = request(&["203.0.113.1:8080"]);
        r.targets = vec![shop("http://shop.test/")];
        r.targets_only = true;
        r.judge_urls = vec!["http://judge.test/".into()];
        assert_eq!(invalid_field(refused(r)).0, "targets_only");
        let mut r = request(&["203.0.113.1:8080"]);
        r.targets = vec![shop("http://shop.test/")];
        r.targets_only = true;
        r.min_anonymity = pb::Anonymity::Elite as i32;
        assert_eq!(invalid_field(refused(r)).0, "min_anonymity");
    }

    fn closed() -> TargetPolicy {
        TargetPolicy {
            allow_private: false,
        }
    }

    fn open() -> TargetPolicy {
        TargetPolicy {
            allow_private: true,
        }
    }

    #[tokio::test]
    async fn judges_pointing_inside_are_refused_unless_allowed() {
        let mut r = request(&["203.0.113.1:8080"]);
        r.judge_urls = vec!["http://127.0.0.1:9/judge".into()];
        let inside = valid(r).settings;
        let e = check_urls(&inside, closed()).await.unwrap_err();
        assert!(
            matches!(e, SubmitError::Judge(PublicUrlError::Inside(_))),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.starts_with("invalid judge_urls: http://127.0.0.1:9/judge points to a loopback")
                && text.contains("--allow-private-targets"),
            "{text}"
        );
        check_urls(&inside, open()).await.unwrap();
        // No judge named: nothing to resolve.
        check_urls(&valid(request(&["203.0.113.1:8080"])).settings, closed())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn targets_pointing_inside_are_refused_unless_allowed() {
        let mut r = request(&["203.0.113.1:8080"]);
        r.targets = vec![shop("http://127.0.0.1:9/shop")];
        let inside = valid(r).settings;
        let (field, message) = invalid_field(check_urls(&inside, closed()).await.unwrap_err());
        assert_eq!(field, "targets");
        assert!(
            message.starts_with("target 1 (\"http://127.0.0.1:9/shop\"): ")
                && message.contains("--allow-private-targets"),
            "{message}"
        );
        check_urls(&inside, open()).await.unwrap();
    }
}
