//! What the CLI prints: a live progress bar on a terminal, plain lines otherwise, and tables.

use std::io::Write;
use std::time::{Duration, Instant};

use proxyfleet_coordinator::Protocol;
use proxyfleet_coordinator::wire as convert;
use proxyfleet_coordinator::{JobState, Reason};
use proxyfleet_proto::v1 as pb;

// Names come from the coordinator's own types, through the one conversion from the wire; only
// the wire's "none given" values are named here.

pub fn state_name(state: i32) -> &'static str {
    convert::job_state_from_proto(state).map_or("UNKNOWN", JobState::name)
}

pub fn is_terminal(state: i32) -> bool {
    convert::job_state_from_proto(state).is_some_and(JobState::is_terminal)
}

pub fn protocol_name(p: i32) -> &'static str {
    convert::protocol_from_proto(p).map_or("unknown", Protocol::scheme)
}

pub fn anonymity_name(a: i32) -> &'static str {
    convert::anonymity_from_proto(a).name()
}

pub fn reason_name(r: i32) -> &'static str {
    if r == pb::Reason::Unchecked as i32 {
        return "unchecked";
    }
    convert::reason_from_proto(r)
        .unwrap_or(Reason::Network)
        .name()
}

/// One line of progress: counts, rate, ETA.
pub fn progress_line(job: &pb::Job) -> String {
    let p = job.progress.clone().unwrap_or_default();
    if job.state == pb::JobState::Scraping as i32 {
        let done = job
            .sources
            .iter()
            .filter(|s| s.state == "fetched" || s.state == "failed")
            .count();
        let found: u64 = job.sources.iter().map(|s| s.candidates).sum();
        return format!(
            "{} SCRAPING: {done}/{} sources read, {found} candidates found",
            job.job_id,
            job.sources.len()
        );
    }
    let mut line = format!(
        "{} {}: {}/{} checked, {} usable, chunks {} done {} leased {} queued {} failed, {} workers",
        job.job_id,
        state_name(job.state),
        p.proxies_checked,
        p.proxies_total,
        p.proxies_usable,
        p.chunks_done,
        p.chunks_leased,
        p.chunks_queued,
        p.chunks_failed,
        p.workers
    );
    if p.checks_per_second > 0.0 {
        line.push_str(&format!(", {:.0}/s", p.checks_per_second));
    }
    if p.eta_ms > 0 {
        line.push_str(&format!(
            ", eta {}",
            humantime::format_duration(Duration::from_secs(p.eta_ms.div_ceil(1000)))
        ));
    }
    if p.reassignments > 0 {
        line.push_str(&format!(", {} reassigned", p.reassignments));
    }
    if p.stale_verdicts_refused > 0 {
        line.push_str(&format!(
            ", {} stale verdicts refused",
            p.stale_verdicts_refused
        ));
    }
    line
}

/// A 30-column bar of checked over total.
pub fn bar(checked: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let filled = (checked.min(total) * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH);
    format!(
        "[{}{}]",
        "#".repeat(filled as usize),
        ".".repeat((WIDTH - filled) as usize)
    )
}

/// The final line of a job, saying each count once: how many usable of how many, checked (and
/// left unchecked), wanted, how long; for a job that FAILED or was CANCELLED, why.
pub fn summary(job: &pb::Job) -> String {
    let p = job.progress.clone().unwrap_or_default();
    let unchecked = match (p.proxies_unchecked, p.proxies_poison) {
        (0, _) => String::new(),
        (n, 0) => format!(", {n} left unchecked"),
        (n, poison) => format!(", {n} left unchecked, {poison} of them poison"),
    };
    let wanted = job.settings.as_ref().map_or(0, |s| s.min_usable);
    // A SUCCEEDED or INSUFFICIENT job's reason is these counts again; others' say what happened.
    let why = match pb::JobState::try_from(job.state) {
        Ok(pb::JobState::Succeeded | pb::JobState::Insufficient) => String::new(),
        _ if job.reason.is_empty() => String::new(),
        _ => format!(": {}", job.reason),
    };
    format!(
        "job {} {}: {} usable of {} ({} checked{unchecked}; {wanted} wanted) in {}{why}",
        job.job_id,
        state_name(job.state),
        p.proxies_usable,
        p.proxies_total,
        p.proxies_checked,
        humantime::format_duration(Duration::from_millis(p.elapsed_ms / 100 * 100)),
    )
}

/// A job as one JSON object, for `--json`: its state, why it ended, its counts and settings.
pub fn job_json(job: &pb::Job) -> serde_json::Value {
    let p = job.progress.clone().unwrap_or_default();
    let s = job.settings.clone().unwrap_or_default();
    serde_json::json!({
        "job_id": job.job_id,
        "name": job.name,
        "state": state_name(job.state),
        "reason": job.reason,
        "pool": s.pool,
        "min_usable": s.min_usable,
        "proxies_total": p.proxies_total,
        "proxies_checked": p.proxies_checked,
        "proxies_usable": p.proxies_usable,
        "proxies_unchecked": p.proxies_unchecked,
        "proxies_poison": p.proxies_poison,
        "pool_files": p.pool_files,
        "pool_files_usable": p.pool_files_usable,
        "elapsed_ms": p.elapsed_ms,
    })
}

/// A worker as one JSON object, for `workers --json`.
pub fn worker_json(w: &pb::WorkerInfo) -> serde_json::Value {
    serde_json::json!({
        "worker_id": w.worker_id,
        "name": w.name,
        "version": w.version,
        "status": w.status,
        "capacity": w.max_checks,
        "leases": w.lease_ids.len(),
        "max_leases": w.capacity,
        "verdicts_accepted": w.verdicts_accepted,
        "last_seen_ms_ago": w.last_seen_ms_ago,
        "peer": w.peer,
    })
}

/// A pool as one JSON object, for `pools --json`.
pub fn pool_json(p: &pb::Pool) -> serde_json::Value {
    serde_json::json!({
        "pool": p.pool,
        "live": p.live,
        "kept": p.total,
        "revalidate_every_ms": p.revalidate_every_ms,
        "files": p.files,
    })
}

pub fn result_line(r: &pb::ProxyResult) -> String {
    let mut line = if r.usable {
        format!(
            "{} usable {}ms exit={} {}",
            r.proxy,
            r.latency_ms,
            r.exit_ip,
            anonymity_name(r.anonymity)
        )
    } else if r.checked {
        format!("{} {} {}ms", r.proxy, reason_name(r.reason), r.latency_ms)
    } else {
        format!("{} unchecked", r.proxy)
    };
    if !r.targets.is_empty() {
        let targets: Vec<String> = r
            .targets
            .iter()
            .map(|t| {
                let verdict = if t.passed {
                    "ok"
                } else {
                    reason_name(t.reason)
                };
                format!("{}={verdict} {}ms", t.target, t.latency_ms)
            })
            .collect();
        line.push_str(&format!(" targets: {}", targets.join(", ")));
    }
    // A failed target says which and why; so does a verdict with a caveat (targets only).
    if !r.detail.is_empty() && (r.usable || !r.targets.is_empty()) {
        line.push_str(&format!(" ({})", r.detail));
    }
    line
}

pub fn jobs_table(jobs: &[pb::Job]) -> String {
    let mut out = format!(
        "{:<16} {:<12} {:>9} {:>9} {:>9}  {}",
        "JOB", "STATE", "CHECKED", "USABLE", "TOTAL", "NAME / REASON"
    );
    for j in jobs {
        let p = j.progress.clone().unwrap_or_default();
        let label = [j.name.as_str(), j.reason.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(": ");
        out.push_str(&format!(
            "\n{:<16} {:<12} {:>9} {:>9} {:>9}  {}",
            j.job_id,
            state_name(j.state),
            p.proxies_checked,
            p.proxies_usable,
            p.proxies_total,
            label
        ));
    }
    out
}

/// A pool member as one JSON object, for `pool --format json`.
pub fn member_json(m: &pb::PoolMember) -> serde_json::Value {
    serde_json::json!({
        "proxy": m.proxy,
        "live": m.live,
        "score": m.score,
        "uptime": m.uptime,
        "latency_ms": m.latency_ms,
        "latency_avg_ms": m.latency_avg_ms,
        "anonymity": anonymity_name(m.anonymity),
        "exit_ip": m.exit_ip,
        "country": m.country,
        "successes": m.successes,
        "failures": m.failures,
        "checks": m.checks,
        "first_seen_ms": m.first_seen_ms,
        "last_seen_ms": m.last_seen_ms,
        "last_checked_ms": m.last_checked_ms,
        "last_detail": m.last_detail,
        "job_id": m.last_job_id,
    })
}

/// A pool's members as a table for people.
pub fn pool_table(pool: &pb::Pool) -> String {
    let mut out = format!(
        "pool {}: {} live of {} kept, checked again every {}, out after {} failures in a row\n{:<48} {:>5} {:>6} {:>8} {:<11} {:>5} {:>5}  {}",
        pool.pool,
        pool.live,
        pool.total,
        if pool.revalidate_every_ms == 0 {
            "never".to_string()
        } else {
            humantime::format_duration(Duration::from_millis(pool.revalidate_every_ms)).to_string()
        },
        pool.max_failures,
        "PROXY",
        "SCORE",
        "UPTIME",
        "LATENCY",
        "ANONYMITY",
        "OK",
        "FAIL",
        "EXIT"
    );
    for m in &pool.members {
        out.push_str(&format!(
            "\n{:<48} {:>5.1} {:>5.0}% {:>6}ms {:<11} {:>5} {:>5}  {}{}",
            m.proxy,
            m.score,
            m.uptime * 100.0,
            m.latency_avg_ms,
            anonymity_name(m.anonymity),
            m.successes,
            m.failures,
            m.exit_ip,
            if m.live {
                ""
            } else {
                "  (out of the live set)"
            }
        ));
    }
    out
}

/// The pools as a table for people.
pub fn pools_table(pools: &[pb::Pool]) -> String {
    let mut out = format!(
        "{:<24} {:>8} {:>8} {:>12}  {}",
        "POOL", "LIVE", "KEPT", "REVALIDATE", "FILES"
    );
    for p in pools {
        out.push_str(&format!(
            "\n{:<24} {:>8} {:>8} {:>12}  {}",
            p.pool,
            p.live,
            p.total,
            if p.revalidate_every_ms == 0 {
                "never".to_string()
            } else {
                humantime::format_duration(Duration::from_millis(p.revalidate_every_ms)).to_string()
            },
            p.files
        ));
    }
    out
}

/// The workers as a table for people: CAPACITY is the check slots (`--max-checks`), LEASES the
/// leases held of the most the worker may hold.
pub fn workers_table(workers: &[pb::WorkerInfo]) -> String {
    let mut out = format!(
        "{:<24} {:<9} {:>8} {:>11} {:>10} {:>10}  {}",
        "WORKER", "STATUS", "CAPACITY", "LEASES", "VERDICTS", "LAST SEEN", "PEER"
    );
    for w in workers {
        out.push_str(&format!(
            "\n{:<24} {:<9} {:>8} {:>11} {:>10} {:>9.1}s  {}",
            w.worker_id,
            w.status,
            w.max_checks,
            format!("{}/{}", w.lease_ids.len(), w.capacity),
            w.verdicts_accepted,
            w.last_seen_ms_ago as f64 / 1000.0,
            w.peer
        ));
    }
    out
}

/// Where the CLI's words go: data on standard output (not here), and on standard error the
/// notes (progress, ids, summaries, where data lives) unless --quiet, warnings and errors always.
#[derive(Debug, Clone, Copy, Default)]
pub struct Say {
    /// --quiet: no notes.
    pub quiet: bool,
}

impl Say {
    /// A note for people watching: dropped with --quiet.
    pub fn note(&self, line: impl std::fmt::Display) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }

    /// A warning: shown even with --quiet.
    pub fn warn(&self, line: impl std::fmt::Display) {
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

/// Shows snapshots as they come: a redrawn bar on a terminal, or a plain line at most every
/// second (and on every state change) otherwise.
pub struct View {
    /// --quiet: nothing is shown.
    silent: bool,
    terminal: bool,
    last_plain: Option<(Instant, i32)>,
    drew: bool,
}

impl View {
    pub fn new(terminal: bool, say: Say) -> Self {
        View {
            silent: say.quiet,
            terminal,
            last_plain: None,
            drew: false,
        }
    }

    pub fn show(&mut self, job: &pb::Job) {
        if self.silent {
            return;
        }
        let mut err = std::io::stderr();
        if self.terminal {
            let p = job.progress.clone().unwrap_or_default();
            let _ = write!(
                err,
                "\r\x1b[2K{} {}",
                bar(p.proxies_checked, p.proxies_total),
                progress_line(job)
            );
            let _ = err.flush();
            self.drew = true;
            return;
        }
        let due = match self.last_plain {
            None => true,
            Some((at, state)) => {
                state != job.state
                    || at.elapsed() >= Duration::from_secs(1)
                    || is_terminal(job.state)
            }
        };
        if due {
            let _ = writeln!(err, "{}", progress_line(job));
            self.last_plain = Some((Instant::now(), job.state));
        }
    }

    pub fn finish(&mut self) {
        if self.drew {
            let _ = writeln!(std::io::stderr());
            self.drew = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names printed are the wire's value names, without their prefix: what grpcurl shows
    /// and what the worker's metrics are labelled with.
    #[test]
    fn names_are_the_wire_names() {
        let wire = |name: &str, prefix: &str| name.trim_start_matches(prefix).to_string();
        for value in -1..16 {
            if let Ok(s) = pb::JobState::try_from(value)
                && s != pb::JobState::Unspecified
            {
                assert_eq!(state_name(value), wire(s.as_str_name(), "JOB_STATE_"));
            }
            if let Ok(p) = pb::Protocol::try_from(value)
                && p != pb::Protocol::Unspecified
            {
                let name = wire(p.as_str_name(), "PROTOCOL_").to_ascii_lowercase();
                assert_eq!(protocol_name(value), name);
            }
            if let Ok(a) = pb::Anonymity::try_from(value) {
                let name = wire(a.as_str_name(), "ANONYMITY_").to_ascii_lowercase();
                assert_eq!(anonymity_name(value), name);
            }
            if let Ok(r) = pb::Reason::try_from(value) {
                let name = wire(r.as_str_name(), "REASON_").to_ascii_lowercase();
                assert_eq!(reason_name(value), name);
            }
        }
        assert_eq!(state_name(0), "UNKNOWN");
        assert_eq!(protocol_name(0), "unknown");
        assert_eq!(protocol_name(99), "unknown");
        assert_eq!(reason_name(99), "network");
        assert!(is_terminal(pb::JobState::Cancelled as i32) && !is_terminal(0));
    }

    #[test]
    fn bar_fills_with_progress() {
        assert_eq!(bar(0, 10), format!("[{}]", ".".repeat(30)));
        assert_eq!(
            bar(5, 10),
            format!("[{}{}]", "#".repeat(15), ".".repeat(15))
        );
        assert_eq!(bar(10, 10), format!("[{}]", "#".repeat(30)));
        assert_eq!(bar(0, 0), format!("[{}]", "#".repeat(30)));
    }

    #[test]
    fn scraping_shows_the_sources() {
        let job = pb::Job {
            job_id: "job-s".into(),
            state: pb::JobState::Scraping as i32,
            sources: vec![
                pb::SourceStatus {
                    url: "a".into(),
                    state: "fetched".into(),
                    candidates: 7,
                    ..Default::default()
                },
                pb::SourceStatus {
                    url: "b".into(),
                    state: "fetching".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            progress_line(&job),
            "job-s SCRAPING: 1/2 sources read, 7 candidates found"
        );
    }

    #[test]
    fn lines_name_state_counts_and_reason() {
        let job = pb::Job {
            job_id: "job-x".into(),
            state: pb::JobState::Succeeded as i32,
            reason: "3 usable of 10 proxies (at least 2 wanted)".into(),
            settings: Some(pb::JobSettings {
                min_usable: 2,
                ..Default::default()
            }),
            progress: Some(pb::JobProgress {
                proxies_total: 10,
                proxies_checked: 10,
                proxies_usable: 3,
                stale_verdicts_refused: 2,
                elapsed_ms: 2_345,
                ..Default::default()
            }),
            ..Default::default()
        };
        let line = progress_line(&job);
        assert!(
            line.contains("SUCCEEDED")
                && line.contains("10/10 checked")
                && line.contains("2 stale"),
            "{line}"
        );
        // Each count once: the reason of a job that succeeded repeats them, so it is left out.
        assert_eq!(
            summary(&job),
            "job job-x SUCCEEDED: 3 usable of 10 (10 checked; 2 wanted) in 2s 300ms"
        );
        let mut partial = job.clone();
        if let Some(p) = partial.progress.as_mut() {
            p.proxies_checked = 7;
            p.proxies_unchecked = 3;
        }
        assert!(
            summary(&partial).starts_with(
                "job job-x SUCCEEDED: 3 usable of 10 (7 checked, 3 left unchecked; 2 wanted) in"
            ),
            "a job that succeeded with candidates left says so: {}",
            summary(&partial)
        );
        if let Some(p) = partial.progress.as_mut() {
            p.proxies_poison = 1;
        }
        assert!(
            summary(&partial).contains("(7 checked, 3 left unchecked, 1 of them poison; 2 wanted)"),
            "{}",
            summary(&partial)
        );
        // A job that failed or was cancelled says why.
        let failed = pb::Job {
            state: pb::JobState::Failed as i32,
            reason: "no worker is connected".into(),
            ..job
        };
        assert!(
            summary(&failed).ends_with("in 2s 300ms: no worker is connected"),
            "{}",
            summary(&failed)
        );
    }

    #[test]
    fn the_workers_capacity_is_their_check_slots() {
        let worker = pb::WorkerInfo {
            worker_id: "w1".into(),
            status: "active".into(),
            lease_ids: vec![1, 2, 3],
            capacity: 64,
            max_checks: 256,
            ..Default::default()
        };
        let table = workers_table(std::slice::from_ref(&worker));
        let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
        let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        let column = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!(column("CAPACITY"), "256");
        assert_eq!(column("LEASES"), "3/64");
        let json = worker_json(&worker);
        assert_eq!(
            (json["capacity"].as_u64(), json["max_leases"].as_u64()),
            (Some(256), Some(64))
        );
    }
}
