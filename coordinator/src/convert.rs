//! Conversions between the scheduler's domain types and the protobuf types, in one place.

use proxyfleet_proto::v1 as pb;

use crate::candidate::{Candidate, Protocol, TargetPolicy};
use crate::scheduler::{
    Anonymity, Assignment, CheckTarget, ChunkInfo, ChunkState, JobProgress, JobSettings,
    JobSnapshot, JobState, JudgeStatus, Reason, ResultRow, TargetVerdict, Verdict, WorkerSnapshot,
};
use crate::state::Submitted;

pub fn protocol_to_proto(p: Protocol) -> pb::Protocol {
    match p {
        Protocol::Http => pb::Protocol::Http,
        Protocol::Https => pb::Protocol::Https,
        Protocol::Socks4 => pb::Protocol::Socks4,
        Protocol::Socks4a => pb::Protocol::Socks4a,
        Protocol::Socks5 => pb::Protocol::Socks5,
        Protocol::Socks5h => pb::Protocol::Socks5h,
    }
}

pub fn protocol_from_proto(value: i32) -> Option<Protocol> {
    match pb::Protocol::try_from(value).ok()? {
        pb::Protocol::Unspecified => None,
        pb::Protocol::Http => Some(Protocol::Http),
        pb::Protocol::Https => Some(Protocol::Https),
        pb::Protocol::Socks4 => Some(Protocol::Socks4),
        pb::Protocol::Socks4a => Some(Protocol::Socks4a),
        pb::Protocol::Socks5 => Some(Protocol::Socks5),
        pb::Protocol::Socks5h => Some(Protocol::Socks5h),
    }
}

pub(crate) fn job_state_to_proto(s: JobState) -> pb::JobState {
    match s {
        JobState::Queued => pb::JobState::Queued,
        JobState::Scraping => pb::JobState::Scraping,
        JobState::Checking => pb::JobState::Checking,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Insufficient => pb::JobState::Insufficient,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

/// A job state of the wire; none for an unspecified or unknown value.
pub fn job_state_from_proto(value: i32) -> Option<JobState> {
    match pb::JobState::try_from(value).ok()? {
        pb::JobState::Unspecified => None,
        pb::JobState::Queued => Some(JobState::Queued),
        pb::JobState::Scraping => Some(JobState::Scraping),
        pb::JobState::Checking => Some(JobState::Checking),
        pb::JobState::Succeeded => Some(JobState::Succeeded),
        pb::JobState::Insufficient => Some(JobState::Insufficient),
        pb::JobState::Failed => Some(JobState::Failed),
        pb::JobState::Cancelled => Some(JobState::Cancelled),
    }
}

pub(crate) fn anonymity_to_proto(a: Anonymity) -> pb::Anonymity {
    match a {
        Anonymity::Unknown => pb::Anonymity::Unknown,
        Anonymity::Transparent => pb::Anonymity::Transparent,
        Anonymity::Anonymous => pb::Anonymity::Anonymous,
        Anonymity::Elite => pb::Anonymity::Elite,
    }
}

pub fn anonymity_from_proto(value: i32) -> Anonymity {
    match pb::Anonymity::try_from(value).unwrap_or(pb::Anonymity::Unknown) {
        pb::Anonymity::Unknown => Anonymity::Unknown,
        pb::Anonymity::Transparent => Anonymity::Transparent,
        pb::Anonymity::Anonymous => Anonymity::Anonymous,
        pb::Anonymity::Elite => Anonymity::Elite,
    }
}

fn reason_to_proto(r: Reason) -> pb::Reason {
    match r {
        Reason::None => pb::Reason::None,
        Reason::Refused => pb::Reason::Refused,
        Reason::Timeout => pb::Reason::Timeout,
        Reason::Handshake => pb::Reason::Handshake,
        Reason::BadStatus => pb::Reason::BadStatus,
        Reason::TokenMissing => pb::Reason::TokenMissing,
        Reason::Tls => pb::Reason::Tls,
        Reason::Network => pb::Reason::Network,
        Reason::Filtered => pb::Reason::Filtered,
        Reason::Forbidden => pb::Reason::Forbidden,
        Reason::Poison => pb::Reason::Poison,
        Reason::BodyMismatch => pb::Reason::BodyMismatch,
        Reason::Slow => pb::Reason::Slow,
    }
}

/// A reason of the wire; none for `REASON_UNCHECKED` (no verdict) or an unknown value.
pub fn reason_from_proto(value: i32) -> Option<Reason> {
    match pb::Reason::try_from(value).ok()? {
        pb::Reason::None => Some(Reason::None),
        pb::Reason::Refused => Some(Reason::Refused),
        pb::Reason::Timeout => Some(Reason::Timeout),
        pb::Reason::Handshake => Some(Reason::Handshake),
        pb::Reason::BadStatus => Some(Reason::BadStatus),
        pb::Reason::TokenMissing => Some(Reason::TokenMissing),
        pb::Reason::Tls => Some(Reason::Tls),
        pb::Reason::Network => Some(Reason::Network),
        pb::Reason::Unchecked => None,
        pb::Reason::Filtered => Some(Reason::Filtered),
        pb::Reason::Forbidden => Some(Reason::Forbidden),
        pb::Reason::Poison => Some(Reason::Poison),
        pb::Reason::BodyMismatch => Some(Reason::BodyMismatch),
        pb::Reason::Slow => Some(Reason::Slow),
    }
}

/// Longest verdict detail or judge error kept from a worker; the rest is cut. A worker's texts
/// are stored and served to every client, so their size is the coordinator's to bound.
pub(crate) const MAX_WORKER_TEXT: usize = 512;
/// Longest exit address or own address kept from a worker (an IPv6 address takes 45).
const MAX_ADDRESS_TEXT: usize = 64;
/// Longest judge URL kept from a worker's report.
const MAX_URL_TEXT: usize = 2048;

/// `text` cut to at most `max` bytes at a character boundary, marked with '…' where it was cut.
pub(crate) fn clip(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// A worker's reason: only the coordinator filters or marks poison, and a verdict is never
/// unchecked, so a worker saying any of these, or something unknown, is taken as a network
/// failure.
fn worker_reason(value: i32) -> Reason {
    match reason_from_proto(value) {
        Some(Reason::Filtered | Reason::Poison) | None => Reason::Network,
        Some(reason) => reason,
    }
}

/// Most target verdicts kept from one verdict of a worker: as many as a job may name targets.
const MAX_TARGET_VERDICTS: usize = crate::submit::MAX_TARGETS;

fn target_verdict_from_proto(t: pb::TargetVerdict) -> TargetVerdict {
    let reason = worker_reason(t.reason);
    let passed = t.passed && reason == Reason::None;
    TargetVerdict {
        target: clip(t.target, MAX_WORKER_TEXT).into(),
        passed,
        reason: if !passed && reason == Reason::None {
            Reason::Network
        } else {
            reason
        },
        status: u16::try_from(t.status).unwrap_or(0),
        latency_ms: t.latency_ms,
        detail: clip(t.detail, MAX_WORKER_TEXT).into(),
    }
}

fn target_verdict_to_proto(t: &TargetVerdict) -> pb::TargetVerdict {
    pb::TargetVerdict {
        target: t.target.to_string(),
        passed: t.passed,
        reason: reason_to_proto(t.reason) as i32,
        status: u32::from(t.status),
        latency_ms: t.latency_ms,
        detail: t.detail.to_string(),
    }
}

pub(crate) fn target_to_proto(t: &CheckTarget) -> pb::CheckTarget {
    pb::CheckTarget {
        url: t.url.clone(),
        statuses: t.statuses.iter().map(|&s| u32::from(s)).collect(),
        body_contains: t.body_contains.clone(),
        body_regex: t.body_regex.clone(),
        max_latency_ms: t.max_latency.map(|d| d.as_millis() as u64).unwrap_or(0),
        name: t.name.clone(),
    }
}

pub(crate) fn verdict_from_proto(v: pb::Verdict) -> Verdict {
    let reason = worker_reason(v.reason);
    // A verdict is usable only if it says so and names no failure.
    let usable = v.usable && reason == Reason::None;
    Verdict {
        index: v.index,
        usable,
        reason: if !usable && reason == Reason::None {
            Reason::Network
        } else {
            reason
        },
        latency_ms: v.latency_ms,
        exit_ip: clip(v.exit_ip, MAX_ADDRESS_TEXT).into(),
        detail: clip(v.detail, MAX_WORKER_TEXT).into(),
        anonymity: if usable {
            anonymity_from_proto(v.anonymity)
        } else {
            Anonymity::Unknown
        },
        connect_ms: v.connect_ms,
        targets: v
            .targets
            .into_iter()
            .take(MAX_TARGET_VERDICTS)
            .map(target_verdict_from_proto)
            .collect(),
    }
}

fn settings_to_proto(s: &JobSettings) -> pb::JobSettings {
    pb::JobSettings {
        judge_urls: s.judge_urls.clone(),
        timeout_ms: s.timeout.as_millis() as u64,
        chunk_size: s.chunk_size,
        min_usable: s.min_usable,
        deadline_ms: s.deadline.as_millis() as u64,
        max_attempts: s.max_attempts,
        pool: s.pool.clone(),
        max_failed_chunk_ratio: s.max_failed_chunk_ratio,
        connect_timeout_ms: s.connect_timeout.as_millis() as u64,
        max_latency_ms: s
            .filter
            .max_latency
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        min_anonymity: s
            .filter
            .min_anonymity
            .map(|a| anonymity_to_proto(a) as i32)
            .unwrap_or(0),
        require_https: s.filter.require_https,
        targets: s.targets.list.iter().map(target_to_proto).collect(),
        targets_only: s.targets.only,
    }
}

fn progress_to_proto(p: &JobProgress) -> pb::JobProgress {
    pb::JobProgress {
        chunks_total: p.chunks_total,
        chunks_queued: p.chunks_queued,
        chunks_leased: p.chunks_leased,
        chunks_done: p.chunks_done,
        chunks_failed: p.chunks_failed,
        proxies_total: p.proxies_total,
        proxies_checked: p.proxies_checked,
        proxies_unchecked: p.proxies_unchecked,
        proxies_poison: p.proxies_poison,
        duplicate_verdicts_refused: p.duplicate_verdicts_refused,
        speculative_leases: p.speculative_leases,
        proxies_usable: p.proxies_usable,
        workers: p.workers,
        checks_per_second: p.checks_per_second,
        eta_ms: p.eta.map(|d| d.as_millis() as u64).unwrap_or(0),
        reassignments: p.reassignments,
        stale_verdicts_refused: p.stale_verdicts_refused,
        handed_back: p.handed_back,
        elapsed_ms: p.elapsed.as_millis() as u64,
        pool_files_usable: p.pool_files_usable,
        pool_files: p.pool_files.clone(),
    }
}

fn chunk_to_proto(c: &ChunkInfo) -> pb::ChunkInfo {
    let state = match c.state {
        ChunkState::Queued => pb::ChunkState::Queued,
        ChunkState::Leased(_) => pb::ChunkState::Leased,
        ChunkState::Done => pb::ChunkState::Done,
        ChunkState::Failed => pb::ChunkState::Failed,
        ChunkState::Split => pb::ChunkState::Split,
    };
    pb::ChunkInfo {
        chunk_id: c.id,
        state: state as i32,
        size: c.size,
        checked: c.checked,
        attempts: c.attempts,
        leases: c.leases,
        holder: c.holder.clone(),
    }
}

pub(crate) fn job_to_proto(s: &JobSnapshot) -> pb::Job {
    pb::Job {
        job_id: s.id.clone(),
        name: s.name.clone(),
        state: job_state_to_proto(s.state) as i32,
        reason: s.reason.clone(),
        settings: Some(settings_to_proto(&s.settings)),
        progress: Some(progress_to_proto(&s.progress)),
        created_at_ms: s.created_wall_ms,
        ended_at_ms: s.ended_wall_ms,
        chunks: s.chunks.iter().map(chunk_to_proto).collect(),
        sources: s
            .sources
            .iter()
            .map(|src| pb::SourceStatus {
                url: src.url.clone(),
                state: src.state.name().to_string(),
                candidates: src.candidates,
                rejected: src.rejected,
                error: src.error.clone(),
                bytes: src.bytes,
            })
            .collect(),
        dropped: s.dropped.iter().map(|(k, v)| (k.clone(), *v)).collect(),
    }
}

pub(crate) fn report_to_proto(r: &crate::scheduler::JobReport) -> pb::JobReport {
    let c = &r.chunks;
    pb::JobReport {
        job: Some(job_to_proto(&r.job)),
        started_at_ms: r.started_wall_ms,
        by_reason: r.by_reason.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        chunks: Some(pb::ChunkCounts {
            total: c.total,
            queued: c.queued,
            leased: c.leased,
            done: c.done,
            failed: c.failed,
            split: c.split,
            leases: c.leases,
            attempts: c.attempts,
        }),
        workers: r
            .workers
            .iter()
            .map(|(worker_id, tally)| pb::WorkerVerdicts {
                worker_id: worker_id.clone(),
                name: tally.name.clone(),
                verdicts: tally.verdicts,
                usable: tally.usable,
            })
            .collect(),
        counts_since_restart: r.counts_since_restart,
    }
}

/// A job's report as JSON, one schema for every reader: `proxyfleet job --json` prints it and a
/// finished job's `summary.json` holds it. Keys are only ever added: scripts read them.
pub fn report_json(report: &pb::JobReport) -> serde_json::Value {
    let job = report.job.clone().unwrap_or_default();
    let p = job.progress.clone().unwrap_or_default();
    let c = report.chunks.unwrap_or_default();
    let by_reason: serde_json::Map<String, serde_json::Value> = report
        .by_reason
        .iter()
        .map(|(k, v)| (k.clone(), (*v).into()))
        .collect();
    let dropped: serde_json::Map<String, serde_json::Value> = job
        .dropped
        .iter()
        .map(|(k, v)| (k.clone(), (*v).into()))
        .collect();
    let state = job_state_from_proto(job.state).map_or("UNKNOWN", JobState::name);
    serde_json::json!({
        "job_id": job.job_id,
        "name": job.name,
        "pool": job.settings.as_ref().map(|s| s.pool.clone()).unwrap_or_default(),
        "state": state,
        "reason": job.reason,
        "created_at_ms": job.created_at_ms,
        "started_at_ms": report.started_at_ms,
        "ended_at_ms": job.ended_at_ms,
        // From submission to its end, or so far.
        "duration_ms": p.elapsed_ms,
        "proxies_total": p.proxies_total,
        "proxies_checked": p.proxies_checked,
        "proxies_usable": p.proxies_usable,
        "proxies_unchecked": p.proxies_unchecked,
        "proxies_poison": p.proxies_poison,
        "by_reason": by_reason,
        "sources": job.sources.iter().map(|s| serde_json::json!({
            "url": s.url,
            "state": s.state,
            "bytes": s.bytes,
            "candidates": s.candidates,
            "rejected": s.rejected,
            "error": s.error,
        })).collect::<Vec<_>>(),
        "dropped": dropped,
        "chunks": {
            "total": c.total,
            "queued": c.queued,
            "leased": c.leased,
            "done": c.done,
            "failed": c.failed,
            "split": c.split,
            "leases": c.leases,
            "attempts": c.attempts,
        },
        "chunks_failed": p.chunks_failed,
        "reassignments": p.reassignments,
        "handed_back": p.handed_back,
        "stale_verdicts_refused": p.stale_verdicts_refused,
        "duplicate_verdicts_refused": p.duplicate_verdicts_refused,
        "workers": report.workers.iter().map(|w| serde_json::json!({
            "worker_id": w.worker_id,
            "name": w.name,
            "verdicts": w.verdicts,
            "usable": w.usable,
        })).collect::<Vec<_>>(),
        // The chunk and worker counts start at the coordinator's last start, not the job's.
        "counts_since_restart": report.counts_since_restart,
    })
}

pub(crate) fn worker_to_proto(w: &WorkerSnapshot) -> pb::WorkerInfo {
    pb::WorkerInfo {
        worker_id: w.worker_id.clone(),
        name: w.name.clone(),
        version: w.version.clone(),
        session_id: w.session_id,
        status: w.status.to_string(),
        lease_ids: w.leases.clone(),
        capacity: w.capacity,
        max_checks: w.max_checks,
        connected_ms: w.connected_for.as_millis() as u64,
        last_seen_ms_ago: w.last_seen_ago.as_millis() as u64,
        verdicts_accepted: w.verdicts_accepted,
        peer: w.peer.clone(),
        judges: w.judges.iter().map(judge_status_to_proto).collect(),
    }
}

fn judge_status_to_proto(j: &JudgeStatus) -> pb::JudgeStatus {
    pb::JudgeStatus {
        url: j.url.clone(),
        ok: j.ok,
        own_ip: j.own_ip.clone(),
        error: j.error.clone(),
    }
}

pub(crate) fn judge_status_from_proto(j: pb::JudgeStatus) -> JudgeStatus {
    JudgeStatus {
        url: clip(j.url, MAX_URL_TEXT),
        ok: j.ok,
        own_ip: clip(j.own_ip, MAX_ADDRESS_TEXT),
        error: clip(j.error, MAX_WORKER_TEXT),
    }
}

fn candidate_to_proto(index: u32, c: &Candidate) -> pb::Candidate {
    let (username, password) = c.auth.as_deref().cloned().unwrap_or_default();
    pb::Candidate {
        index,
        protocol: protocol_to_proto(c.protocol) as i32,
        host: c.host.clone(),
        port: u32::from(c.port),
        username,
        password,
    }
}

/// A lease's assignment, with the coordinator's policy on the targets its checks may dial.
pub(crate) fn assignment_to_proto(a: &Assignment, targets: TargetPolicy) -> pb::Assign {
    pb::Assign {
        lease_id: a.lease_id,
        job_id: a.job_id.clone(),
        chunk_id: a.chunk_id,
        attempt: a.attempt,
        candidates: a
            .candidates
            .iter()
            .map(|(i, c)| candidate_to_proto(*i, c))
            .collect(),
        settings: Some(pb::CheckSettings {
            judge_urls: a.judge_urls.clone(),
            timeout_ms: a.timeout.as_millis() as u64,
            connect_timeout_ms: a.connect_timeout.as_millis() as u64,
            allow_private_targets: targets.allow_private,
            targets: a.targets.list.iter().map(target_to_proto).collect(),
            targets_only: a.targets.only,
        }),
    }
}

pub(crate) fn submitted_to_proto(s: Submitted) -> pb::SubmitJobResponse {
    pb::SubmitJobResponse {
        job_id: s.snapshot.id.clone(),
        job: Some(job_to_proto(&s.snapshot)),
        rejected: s
            .rejected
            .into_iter()
            .map(|r| pb::RejectedLine {
                line: r.line,
                text: r.text,
                reason: r.reason,
            })
            .collect(),
        duplicates: s.duplicates,
    }
}

pub(crate) fn result_to_proto(r: &ResultRow) -> pb::ProxyResult {
    let c = &r.candidate;
    let mut out = pb::ProxyResult {
        proxy: c.full_url(),
        protocol: protocol_to_proto(c.protocol) as i32,
        host: c.host.clone(),
        port: u32::from(c.port),
        chunk_id: r.chunk_id,
        reason: pb::Reason::Unchecked as i32,
        ..Default::default()
    };
    if let Some(v) = &r.verdict {
        // A poison proxy has a row saying so, but was never checked.
        out.checked = v.reason != Reason::Poison;
        out.usable = v.usable;
        out.reason = reason_to_proto(v.reason) as i32;
        out.latency_ms = v.latency_ms;
        out.exit_ip = v.exit_ip.to_string();
        out.detail = v.detail.to_string();
        out.anonymity = anonymity_to_proto(v.anonymity) as i32;
        out.connect_ms = v.connect_ms;
        out.targets = v.targets.iter().map(target_verdict_to_proto).collect();
    }
    out
}

pub(crate) fn member_to_proto(m: &crate::scheduler::Member) -> pb::PoolMember {
    pb::PoolMember {
        proxy: m.candidate.full_url(),
        protocol: protocol_to_proto(m.candidate.protocol) as i32,
        host: m.candidate.host.clone(),
        port: u32::from(m.candidate.port),
        live: m.live,
        first_seen_ms: m.first_seen_ms,
        last_seen_ms: m.last_seen_ms,
        last_checked_ms: m.last_checked_ms,
        successes: m.successes,
        failures: m.failures,
        checks: m.checks,
        checks_usable: m.checks_usable,
        uptime: m.uptime(),
        latency_ms: m.latency_ms,
        latency_avg_ms: m.latency_avg_ms,
        anonymity: anonymity_to_proto(m.anonymity) as i32,
        exit_ip: m.exit_ip.clone(),
        score: m.score(),
        country: m.country.clone(),
        last_reason: reason_to_proto(m.last_reason) as i32,
        last_detail: m.last_detail.clone(),
        last_job_id: m.last_job_id.clone(),
    }
}

pub(crate) fn pool_to_proto(view: &crate::pools::PoolView, max_failures: u32) -> pb::Pool {
    let s = &view.summary;
    pb::Pool {
        pool: s.meta.name.clone(),
        members: view.members.iter().map(member_to_proto).collect(),
        live: s.live,
        total: s.total,
        version: s.meta.version,
        revalidate_every_ms: s.meta.revalidate_every.as_millis() as u64,
        max_failures,
        last_revalidation_ms: s.meta.last_round_ms,
        files: s.files.clone(),
        revalidation_job_id: s.meta.round_job.clone().unwrap_or_default(),
    }
}

/// A reader's filter; a protocol of the wire this version does not know is refused.
pub(crate) fn pool_filter_from_proto(
    f: Option<pb::PoolFilter>,
) -> Result<crate::pools::PoolFilter, String> {
    let f = f.unwrap_or_default();
    let protocols = f
        .protocols
        .iter()
        .map(|&p| protocol_from_proto(p).ok_or_else(|| format!("unknown protocol {p}")))
        .collect::<Result<_, _>>()?;
    if !(f.min_score.is_finite() && (0.0..=100.0).contains(&f.min_score)) {
        return Err("min_score must be between 0 and 100".into());
    }
    Ok(crate::pools::PoolFilter {
        protocols,
        min_anonymity: match anonymity_from_proto(f.min_anonymity) {
            Anonymity::Unknown => None,
            a => Some(a),
        },
        max_latency_ms: (f.max_latency_ms > 0).then_some(f.max_latency_ms),
        min_score: (f.min_score > 0.0).then_some(f.min_score),
        country: (!f.country.trim().is_empty()).then(|| f.country.trim().to_ascii_uppercase()),
        include_dead: f.include_dead,
    })
}

pub(crate) fn pool_order_from_proto(value: i32) -> crate::pools::PoolOrder {
    use crate::pools::PoolOrder;
    match pb::PoolOrder::try_from(value).unwrap_or(pb::PoolOrder::Score) {
        pb::PoolOrder::Score => PoolOrder::Score,
        pb::PoolOrder::Latency => PoolOrder::Latency,
        pb::PoolOrder::Recent => PoolOrder::Recent,
        pb::PoolOrder::Random => PoolOrder::Random,
    }
}

pub(crate) fn pool_event(
    kind: pb::PoolEventKind,
    version: u64,
    member: Option<&crate::scheduler::Member>,
    pool: Option<pb::Pool>,
) -> pb::PoolEvent {
    pb::PoolEvent {
        kind: kind as i32,
        member: member.map(member_to_proto),
        version,
        pool,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_round_trips_through_its_name_and_the_wire() {
        for p in Protocol::ALL {
            assert_eq!(p.scheme().parse::<Protocol>(), Ok(p));
            assert_eq!(protocol_from_proto(protocol_to_proto(p) as i32), Some(p));
        }
        for s in JobState::ALL {
            assert_eq!(JobState::from_name(s.name()), Some(s));
            assert_eq!(job_state_from_proto(job_state_to_proto(s) as i32), Some(s));
        }
        for a in Anonymity::ALL {
            assert_eq!(Anonymity::from_name(a.name()), Some(a));
            assert_eq!(anonymity_from_proto(anonymity_to_proto(a) as i32), a);
        }
        for r in Reason::ALL {
            assert_eq!(Reason::from_name(r.name()), Some(r));
            assert_eq!(reason_from_proto(reason_to_proto(r) as i32), Some(r));
        }
        assert_eq!(reason_from_proto(pb::Reason::Unchecked as i32), None);
    }

    #[test]
    fn a_workers_filtered_unchecked_or_unknown_reason_is_a_network_failure() {
        for reason in [
            pb::Reason::Filtered as i32,
            pb::Reason::Unchecked as i32,
            99,
        ] {
            let verdict = verdict_from_proto(pb::Verdict {
                reason,
                ..pb::Verdict::default()
            });
            assert_eq!((verdict.usable, verdict.reason), (false, Reason::Network));
        }
    }

    #[test]
    fn an_assignment_carries_the_coordinators_target_policy() {
        let assignment = Assignment {
            lease_id: 7,
            job_id: "j".into(),
            chunk_id: 0,
            attempt: 1,
            candidates: vec![],
            judge_urls: vec![],
            timeout: std::time::Duration::from_secs(1),
            connect_timeout: std::time::Duration::from_secs(1),
            targets: Default::default(),
        };
        for allow_private in [false, true] {
            let assign = assignment_to_proto(&assignment, TargetPolicy { allow_private });
            assert_eq!(
                assign.settings.unwrap().allow_private_targets,
                allow_private
            );
        }
    }

    #[test]
    fn a_workers_target_verdict_passes_only_without_a_failure() {
        let verdict = verdict_from_proto(pb::Verdict {
            usable: false,
            reason: pb::Reason::BodyMismatch as i32,
            targets: vec![
                pb::TargetVerdict {
                    target: "shop".into(),
                    passed: true,
                    reason: pb::Reason::Slow as i32,
                    ..pb::TargetVerdict::default()
                },
                pb::TargetVerdict {
                    target: "blog".into(),
                    passed: false,
                    reason: pb::Reason::Filtered as i32,
                    ..pb::TargetVerdict::default()
                },
            ],
            ..pb::Verdict::default()
        });
        assert_eq!(verdict.reason, Reason::BodyMismatch);
        let seen: Vec<(&str, bool, Reason)> = verdict
            .targets
            .iter()
            .map(|t| (&*t.target, t.passed, t.reason))
            .collect();
        assert_eq!(
            seen,
            [
                ("shop", false, Reason::Slow),
                ("blog", false, Reason::Network)
            ]
        );
    }

    #[test]
    fn a_workers_oversized_texts_are_cut() {
        let verdict = verdict_from_proto(pb::Verdict {
            detail: "é".repeat(512 * 1024),
            exit_ip: "1".repeat(1 << 20),
            ..pb::Verdict::default()
        });
        assert!(
            verdict.detail.len() <= MAX_WORKER_TEXT,
            "{}",
            verdict.detail.len()
        );
        assert!(verdict.detail.ends_with('…'));
        assert!(verdict.exit_ip.len() <= MAX_ADDRESS_TEXT);
        let verdict = verdict_from_proto(pb::Verdict {
            targets: vec![
                pb::TargetVerdict {
                    target: "t".repeat(1 << 20),
                    detail: "d".repeat(1 << 20),
                    ..pb::TargetVerdict::default()
                };
                1000
            ],
            ..pb::Verdict::default()
        });
        assert_eq!(verdict.targets.len(), MAX_TARGET_VERDICTS);
        assert!(
            verdict
                .targets
                .iter()
                .all(|t| t.target.len() <= MAX_WORKER_TEXT && t.detail.len() <= MAX_WORKER_TEXT)
        );
        let status = judge_status_from_proto(pb::JudgeStatus {
            error: "x".repeat(1 << 20),
            ..pb::JudgeStatus::default()
        });
        assert!(status.error.len() <= MAX_WORKER_TEXT);
        assert_eq!(clip("short".into(), MAX_WORKER_TEXT), "short");
    }
}
