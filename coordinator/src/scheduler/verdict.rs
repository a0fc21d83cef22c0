//! What a worker found about one candidate, and a job's conditions on a usable proxy: its filter
//! and the user's check targets.

use std::sync::Arc;
use std::time::Duration;

use crate::candidate::Candidate;

/// What a judge learned about the client through a proxy; ordered from worst to best.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Anonymity {
    Unknown,
    Transparent,
    Anonymous,
    Elite,
}

impl Anonymity {
    pub(crate) const ALL: [Anonymity; 4] = [
        Anonymity::Unknown,
        Anonymity::Transparent,
        Anonymity::Anonymous,
        Anonymity::Elite,
    ];

    /// The name output files, the store and the CLI show.
    pub fn name(self) -> &'static str {
        match self {
            Anonymity::Unknown => "unknown",
            Anonymity::Transparent => "transparent",
            Anonymity::Anonymous => "anonymous",
            Anonymity::Elite => "elite",
        }
    }

    pub fn from_name(name: &str) -> Option<Anonymity> {
        Anonymity::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// A job's conditions on a working proxy, beyond working.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct UsableFilter {
    pub(crate) max_latency: Option<Duration>,
    pub(crate) min_anonymity: Option<Anonymity>,
    /// The proxy must have carried a tunnel: an HTTPS or SOCKS proxy, or any proxy checked against
    /// an https judge.
    pub(crate) require_https: bool,
}

impl UsableFilter {
    /// Why a working proxy does not count as usable, if it does not.
    pub(crate) fn refuse(
        &self,
        verdict: &Verdict,
        candidate: &Candidate,
        judge_is_https: bool,
    ) -> Option<String> {
        if let Some(max) = self.max_latency
            && u128::from(verdict.latency_ms) > max.as_millis()
        {
            return Some(format!(
                "latency {}ms over the job's maximum of {}ms",
                verdict.latency_ms,
                max.as_millis()
            ));
        }
        if let Some(min) = self.min_anonymity
            && verdict.anonymity < min
        {
            return Some(format!(
                "anonymity {:?} below the job's minimum of {min:?}",
                verdict.anonymity
            ));
        }
        let tunnels = judge_is_https || candidate.protocol != crate::candidate::Protocol::Http;
        if self.require_https && !tunnels {
            return Some(
                "not shown to carry HTTPS: an HTTP proxy checked against a plain http judge".into(),
            );
        }
        None
    }
}

/// Why a proxy is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    None,
    Refused,
    Timeout,
    Handshake,
    BadStatus,
    TokenMissing,
    Tls,
    Network,
    /// Works, but outside the job's filter.
    Filtered,
    /// Not checked: its address is private and the coordinator does not allow that.
    Forbidden,
    /// Not checked: every worker that checked it alone vanished, as many times as a chunk may be
    /// attempted.
    Poison,
    /// A check target's body lacked the expected text.
    BodyMismatch,
    /// A check target answered slower than its maximum latency.
    Slow,
}

impl Reason {
    pub(crate) const ALL: [Reason; 13] = [
        Reason::None,
        Reason::Refused,
        Reason::Timeout,
        Reason::Handshake,
        Reason::BadStatus,
        Reason::TokenMissing,
        Reason::Tls,
        Reason::Network,
        Reason::Filtered,
        Reason::Forbidden,
        Reason::Poison,
        Reason::BodyMismatch,
        Reason::Slow,
    ];

    /// The name the store and the CLI show.
    pub fn name(self) -> &'static str {
        match self {
            Reason::None => "none",
            Reason::Refused => "refused",
            Reason::Timeout => "timeout",
            Reason::Handshake => "handshake",
            Reason::BadStatus => "bad_status",
            Reason::TokenMissing => "token_missing",
            Reason::Tls => "tls",
            Reason::Network => "network",
            Reason::Filtered => "filtered",
            Reason::Forbidden => "forbidden",
            Reason::Poison => "poison",
            Reason::BodyMismatch => "body_mismatch",
            Reason::Slow => "slow",
        }
    }

    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// A site of the user's that a proxy must reach with the expected answer, validated at submit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CheckTarget {
    /// An http(s) URL as the strict URL parser took it.
    pub(crate) url: String,
    /// Statuses that pass; empty: 200.
    pub(crate) statuses: Vec<u16>,
    /// Text the body must contain; empty: no condition.
    pub(crate) body_contains: String,
    /// Regular expression the body must match; empty: no condition.
    pub(crate) body_regex: String,
    pub(crate) max_latency: Option<Duration>,
    /// How verdicts name it; empty: its URL.
    pub(crate) name: String,
}

impl CheckTarget {
    /// The name verdicts give it.
    pub(crate) fn label(&self) -> &str {
        if self.name.is_empty() {
            &self.url
        } else {
            &self.name
        }
    }
}

/// A job's check targets; shared by its settings and every lease of it.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct CheckTargets {
    pub(crate) list: Arc<[CheckTarget]>,
    /// Check against the targets alone, asking no judge: no fake detection, exit address or
    /// anonymity. Set only with at least one target.
    pub(crate) only: bool,
}

/// How one proxy fared against one check target.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TargetVerdict {
    /// The target's name (or URL), as the worker named it.
    pub(crate) target: Arc<str>,
    pub(crate) passed: bool,
    pub(crate) reason: Reason,
    /// The status the target answered; 0 for none.
    pub(crate) status: u16,
    pub(crate) latency_ms: u32,
    pub(crate) detail: Arc<str>,
}

/// A worker's verdict on one candidate of its lease.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verdict {
    /// Candidate index in the job.
    pub(crate) index: u32,
    pub(crate) usable: bool,
    pub(crate) reason: Reason,
    pub(crate) latency_ms: u32,
    pub(crate) exit_ip: Arc<str>,
    pub(crate) detail: Arc<str>,
    pub(crate) anonymity: Anonymity,
    pub(crate) connect_ms: u32,
    /// One per check target of the job, in its order; empty when the judge check failed first.
    pub(crate) targets: Vec<TargetVerdict>,
}
