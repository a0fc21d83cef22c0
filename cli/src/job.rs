//! `proxyfleet job JOB`: what became of a job — its timing, sources, dropped entries, verdicts
//! by reason, chunks and the workers that checked it — as text or JSON.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use proxyfleet_coordinator::JobState;
use proxyfleet_coordinator::wire as convert;
use proxyfleet_proto::v1 as pb;

use crate::args::JobReportArgs;
use crate::client::{Client, Failure, from_status};

/// Prints the report of `args.job` on stdout.
pub(crate) async fn run(
    client: &mut Client,
    url: &str,
    args: &JobReportArgs,
) -> Result<i32, Failure> {
    let report = client
        .get_job_report(pb::GetJobReportRequest {
            job_id: args.job.trim().to_string(),
        })
        .await
        .map_err(|s| from_status(s, url))?
        .into_inner();
    let out = if args.json {
        serde_json::to_string_pretty(&convert::report_json(&report)).expect("json values serialize")
    } else {
        report_text(&report)
    };
    println!("{out}");
    Ok(0)
}

fn state_name(state: i32) -> &'static str {
    convert::job_state_from_proto(state).map_or("UNKNOWN", JobState::name)
}

/// A wall-clock time in ms as RFC 3339, or "-" when not known.
fn when(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// How long the job took from submission to its end, or has taken so far: its elapsed time.
fn duration_ms(job: &pb::Job) -> u64 {
    job.progress.as_ref().map_or(0, |p| p.elapsed_ms)
}

/// The verdict counts in the order a reader looks for them: usable first, unchecked last, the
/// others largest first.
fn reasons_in_order(report: &pb::JobReport) -> Vec<(&str, u64)> {
    let mut reasons: Vec<(&str, u64)> = report
        .by_reason
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    let rank = |name: &str| match name {
        "usable" => 0,
        "unchecked" => 2,
        _ => 1,
    };
    reasons.sort_by(|a, b| {
        rank(a.0)
            .cmp(&rank(b.0))
            .then(b.1.cmp(&a.1))
            .then(a.0.cmp(b.0))
    });
    reasons
}

/// The report as text: one section per part, columns aligned.
pub(crate) fn report_text(report: &pb::JobReport) -> String {
    let job = report.job.clone().unwrap_or_default();
    let p = job.progress.clone().unwrap_or_default();
    let c = report.chunks.unwrap_or_default();
    let mut out = String::new();
    let name = if job.name.is_empty() {
        String::new()
    } else {
        format!(" ({})", job.name)
    };
    let _ = writeln!(out, "job {} {}{name}", job.job_id, state_name(job.state));
    if !job.reason.is_empty() {
        let _ = writeln!(out, "  reason     {}", job.reason);
    }
    if let Some(settings) = &job.settings {
        let _ = writeln!(out, "  pool       {}", settings.pool);
    }
    let _ = writeln!(out, "  submitted  {}", when(job.created_at_ms));
    let _ = writeln!(out, "  started    {}", when(report.started_at_ms));
    let _ = writeln!(out, "  ended      {}", when(job.ended_at_ms));
    let ms = duration_ms(&job);
    // Tenths of a second are enough past a second; a shorter job shows its milliseconds.
    let took = humantime::format_duration(Duration::from_millis(if ms < 1_000 {
        ms
    } else {
        ms / 100 * 100
    }));
    let so_far = if progress_ended(&job) { "" } else { " so far" };
    let _ = writeln!(out, "  duration   {took}{so_far}");

    let _ = writeln!(out, "\nsources");
    if job.sources.is_empty() {
        let _ = writeln!(out, "  none: the candidates were given inline");
    } else {
        let _ = writeln!(
            out,
            "  {:<9} {:>10}  {:>10}  {:>8}  URL",
            "STATE", "BYTES", "CANDIDATES", "REJECTED"
        );
        for s in &job.sources {
            let _ = writeln!(
                out,
                "  {:<9} {:>10}  {:>10}  {:>8}  {}",
                s.state, s.bytes, s.candidates, s.rejected, s.url
            );
            if !s.error.is_empty() {
                let _ = writeln!(out, "  {:<9} error: {}", "", s.error);
            }
        }
    }

    let _ = writeln!(out, "\ndropped");
    if job.dropped.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        let width = job.dropped.keys().map(String::len).max().unwrap_or(0);
        for (why, n) in &job.dropped {
            let _ = writeln!(out, "  {why:<width$}  {n}");
        }
    }

    let _ = writeln!(out, "\nverdicts ({} candidates)", p.proxies_total);
    let reasons = reasons_in_order(report);
    if reasons.is_empty() {
        let _ = writeln!(out, "  none yet");
    } else {
        let width = reasons.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (reason, n) in reasons {
            let _ = writeln!(out, "  {reason:<width$}  {n}");
        }
    }

    // A job running when the coordinator restarted counts its leases and workers from then on.
    let since_restart = if report.counts_since_restart {
        " (since the coordinator started)"
    } else {
        ""
    };
    let _ = writeln!(out, "\nchunks{since_restart}");
    let _ = writeln!(
        out,
        "  {} total: {} done, {} failed, {} queued, {} leased; {} split in halves",
        c.total, c.done, c.failed, c.queued, c.leased, c.split
    );
    let _ = writeln!(
        out,
        "  {} leases, {} attempts charged, {} reassignments, {} handed back",
        c.leases, c.attempts, p.reassignments, p.handed_back
    );
    let _ = writeln!(
        out,
        "  {} stale verdicts refused, {} duplicate verdicts refused",
        p.stale_verdicts_refused, p.duplicate_verdicts_refused
    );

    let _ = writeln!(out, "\nworkers{since_restart}");
    if report.workers.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        let width = report
            .workers
            .iter()
            .map(|w| w.worker_id.len())
            .max()
            .unwrap_or(0)
            .max("WORKER".len());
        let _ = writeln!(
            out,
            "  {:<width$}  {:>8}  {:>6}  NAME",
            "WORKER", "VERDICTS", "USABLE"
        );
        for w in &report.workers {
            let _ = writeln!(
                out,
                "  {:<width$}  {:>8}  {:>6}  {}",
                w.worker_id, w.verdicts, w.usable, w.name
            );
        }
    }
    out.trim_end().to_string()
}

fn progress_ended(job: &pb::Job) -> bool {
    convert::job_state_from_proto(job.state).is_some_and(JobState::is_terminal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> pb::JobReport {
        pb::JobReport {
            job: Some(pb::Job {
                job_id: "job-abc".into(),
                state: pb::JobState::Succeeded as i32,
                reason: "3 usable of 9 proxies (at least 1 wanted)".into(),
                created_at_ms: 1_700_000_000_000,
                ended_at_ms: 1_700_000_012_300,
                progress: Some(pb::JobProgress {
                    proxies_total: 9,
                    proxies_checked: 8,
                    proxies_usable: 3,
                    elapsed_ms: 12_300,
                    reassignments: 1,
                    ..Default::default()
                }),
                sources: vec![
                    pb::SourceStatus {
                        url: "http://lists.example/good.txt".into(),
                        state: "fetched".into(),
                        candidates: 10,
                        rejected: 1,
                        bytes: 200,
                        error: String::new(),
                    },
                    pb::SourceStatus {
                        url: "http://lists.example/gone.txt".into(),
                        state: "failed".into(),
                        error: "HTTP 404 Not Found".into(),
                        ..Default::default()
                    },
                ],
                dropped: [("duplicate".to_string(), 1)].into_iter().collect(),
                ..Default::default()
            }),
            started_at_ms: 1_700_000_000_100,
            by_reason: [
                ("usable", 3),
                ("refused", 2),
                ("timeout", 3),
                ("unchecked", 1),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            chunks: Some(pb::ChunkCounts {
                total: 3,
                done: 2,
                queued: 1,
                leases: 4,
                attempts: 1,
                ..Default::default()
            }),
            workers: vec![pb::WorkerVerdicts {
                worker_id: "w-1".into(),
                name: "box-1".into(),
                verdicts: 8,
                usable: 3,
            }],
            counts_since_restart: false,
        }
    }

    #[test]
    fn the_text_shows_a_failed_sources_error_and_each_reason() {
        let text = report_text(&report());
        assert!(text.starts_with("job job-abc SUCCEEDED"), "{text}");
        assert!(text.contains("error: HTTP 404 Not Found"), "{text}");
        assert!(text.contains("duration   12s 300ms\n"), "{text}");
        assert!(text.contains("submitted  2023-11-14T22:13:20Z"), "{text}");
        let verdicts: Vec<&str> = text
            .split("\nverdicts (9 candidates)\n")
            .nth(1)
            .unwrap()
            .lines()
            .take_while(|l| !l.is_empty())
            .map(str::trim)
            .collect();
        // Usable first, unchecked last, the rest largest first.
        assert_eq!(
            verdicts,
            [
                "usable     3",
                "timeout    3",
                "refused    2",
                "unchecked  1"
            ]
        );
        assert!(
            text.contains("4 leases, 1 attempts charged, 1 reassignments"),
            "{text}"
        );
        assert!(text.contains("w-1"), "{text}");
    }

    #[test]
    fn the_json_holds_the_counts_by_name() {
        let json = convert::report_json(&report());
        let again: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&json).unwrap()).unwrap();
        assert_eq!(again["by_reason"]["timeout"], 3);
        assert_eq!(again["sources"][1]["error"], "HTTP 404 Not Found");
        assert_eq!(again["dropped"]["duplicate"], 1);
        assert_eq!(again["chunks"]["attempts"], 1);
        assert_eq!(again["workers"][0]["verdicts"], 8);
        assert_eq!(again["duration_ms"], 12_300);
        assert_eq!(again["state"], "SUCCEEDED");
    }

    #[test]
    fn counts_since_a_restart_are_labelled_so_in_text_and_json() {
        let whole = report_text(&report());
        assert!(!whole.contains("since the coordinator started"), "{whole}");
        let since = pb::JobReport {
            counts_since_restart: true,
            ..report()
        };
        let text = report_text(&since);
        assert!(
            text.contains("\nchunks (since the coordinator started)\n"),
            "{text}"
        );
        // Labelled over a table of workers too, not only over an empty one.
        assert!(
            text.contains("\nworkers (since the coordinator started)\n"),
            "{text}"
        );
        assert!(text.contains("w-1"), "{text}");
        assert_eq!(convert::report_json(&since)["counts_since_restart"], true);
        assert_eq!(
            convert::report_json(&report())["counts_since_restart"],
            false
        );
    }

    #[test]
    fn a_time_not_known_shows_as_a_dash() {
        assert_eq!(when(0), "-");
    }
}
