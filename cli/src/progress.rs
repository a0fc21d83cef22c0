//! What the CLI prints: a live progress bar on a terminal, plain lines otherwise, and tables.

use std::io::Write;
use std::time::{Duration, Instant};

use proxyfleet_proto::v1 as pb;

pub fn state_name(state: i32) -> &'static str {
    match pb::JobState::try_from(state).unwrap_or(pb::JobState::Unspecified) {
        pb::JobState::Unspecified => "UNKNOWN",
        pb::JobState::Queued => "QUEUED",
        pb::JobState::Scraping => "SCRAPING",
        pb::JobState::Checking => "CHECKING",
        pb::JobState::Succeeded => "SUCCEEDED",
        pb::JobState::Insufficient => "INSUFFICIENT",
        pb::JobState::Failed => "FAILED",
        pb::JobState::Cancelled => "CANCELLED",
    }
}

pub fn is_terminal(state: i32) -> bool {
    matches!(
        pb::JobState::try_from(state),
        Ok(pb::JobState::Succeeded
            | pb::JobState::Insufficient
            | pb::JobState::Failed
            | pb::JobState::Cancelled)
    )
}

pub fn protocol_name(p: i32) -> &'static str {
    match pb::Protocol::try_from(p).unwrap_or(pb::Protocol::Unspecified) {
        pb::Protocol::Unspecified => "unknown",
        pb::Protocol::Http => "http",
        pb::Protocol::Https => "https",
        pb::Protocol::Socks4 => "socks4",
        pb::Protocol::Socks4a => "socks4a",
        pb::Protocol::Socks5 => "socks5",
        pb::Protocol::Socks5h => "socks5h",
    }
}

pub fn anonymity_name(a: i32) -> &'static str {
    match pb::Anonymity::try_from(a).unwrap_or(pb::Anonymity::Unknown) {
        pb::Anonymity::Unknown => "unknown",
        pb::Anonymity::Transparent => "transparent",
        pb::Anonymity::Anonymous => "anonymous",
        pb::Anonymity::Elite => "elite",
    }
}

pub fn reason_name(r: i32) -> &'static str {
    match pb::Reason::try_from(r).unwrap_or(pb::Reason::Network) {
        pb::Reason::None => "none",
        pb::Reason::Refused => "refused",
        pb::Reason::Timeout => "timeout",
        pb::Reason::Handshake => "handshake",
        pb::Reason::BadStatus => "bad_status",
        pb::Reason::TokenMissing => "token_missing",
        pb::Reason::Tls => "tls",
        pb::Reason::Network => "network",
        pb::Reason::Unchecked => "unchecked",
        pb::Reason::Filtered => "filtered",
        pb::Reason::Forbidden => "forbidden",
    }
}

/// One line of progress: counts, rate, ETA.
pub fn progress_line(job: &pb::Job) -> String {
    let p = job.progress.unwrap_or_default();
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

/// The final line of a job.
pub fn summary(job: &pb::Job) -> String {
    let p = job.progress.unwrap_or_default();
    format!(
        "job {} {}: {} usable of {} ({} checked) in {}; {}",
        job.job_id,
        state_name(job.state),
        p.proxies_usable,
        p.proxies_total,
        p.proxies_checked,
        humantime::format_duration(Duration::from_millis(p.elapsed_ms / 100 * 100)),
        if job.reason.is_empty() {
            "no reason given"
        } else {
            &job.reason
        }
    )
}

pub fn result_line(r: &pb::ProxyResult) -> String {
    if r.usable {
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
    }
}

pub fn jobs_table(jobs: &[pb::Job]) -> String {
    let mut out = format!(
        "{:<16} {:<12} {:>9} {:>9} {:>9}  {}",
        "JOB", "STATE", "CHECKED", "USABLE", "TOTAL", "NAME / REASON"
    );
    for j in jobs {
        let p = j.progress.unwrap_or_default();
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

pub fn workers_table(workers: &[pb::WorkerInfo]) -> String {
    let mut out = format!(
        "{:<24} {:<9} {:>6} {:>8} {:>10} {:>10}  {}",
        "WORKER", "STATUS", "LEASES", "CAPACITY", "VERDICTS", "LAST SEEN", "PEER"
    );
    for w in workers {
        out.push_str(&format!(
            "\n{:<24} {:<9} {:>6} {:>8} {:>10} {:>9.1}s  {}",
            w.worker_id,
            w.status,
            w.lease_ids.len(),
            w.capacity,
            w.verdicts_accepted,
            w.last_seen_ms_ago as f64 / 1000.0,
            w.peer
        ));
    }
    out
}

/// Shows snapshots as they come: a redrawn bar on a terminal, or a plain line at most every
/// second (and on every state change) otherwise.
pub struct View {
    terminal: bool,
    last_plain: Option<(Instant, i32)>,
    drew: bool,
}

impl View {
    pub fn new(terminal: bool) -> Self {
        View {
            terminal,
            last_plain: None,
            drew: false,
        }
    }

    pub fn show(&mut self, job: &pb::Job) {
        let mut err = std::io::stderr();
        if self.terminal {
            let p = job.progress.unwrap_or_default();
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
            reason: "3 usable".into(),
            progress: Some(pb::JobProgress {
                proxies_total: 10,
                proxies_checked: 10,
                proxies_usable: 3,
                stale_verdicts_refused: 2,
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
        assert!(
            summary(&job).starts_with("job job-x SUCCEEDED: 3 usable of 10"),
            "{}",
            summary(&job)
        );
    }
}
