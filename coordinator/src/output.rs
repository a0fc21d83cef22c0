//! The output files of a refresh: `live_proxies.json` (full verdicts of the usable proxies,
//! fastest first), `live_proxies.txt` and one txt per protocol (`scheme://host:port` a line),
//! each written atomically so a reader never sees half a file; and when a pool's files are
//! written, while its job runs and when it ends.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::candidate::Protocol;
use crate::scheduler::ResultRow;

/// The file of a pool's usable proxies, one `scheme://[user:pass@]host:port` a line.
pub(crate) const LIVE_TXT: &str = "live_proxies.txt";

/// File name and contents of every output file.
pub(crate) fn render(job_id: &str, ended_ms: u64, results: &[ResultRow]) -> Vec<(String, String)> {
    let mut usable: Vec<&ResultRow> = results
        .iter()
        .filter(|r| r.verdict.as_ref().is_some_and(|v| v.usable))
        .collect();
    usable.sort_by_key(|r| r.verdict.as_ref().map(|v| v.latency_ms).unwrap_or(u32::MAX));
    let entries: Vec<serde_json::Value> = usable
        .iter()
        .map(|r| {
            let v = r.verdict.as_ref().expect("filtered to usable");
            serde_json::json!({
                "proxy": r.candidate.full_url(),
                "protocol": r.candidate.protocol.scheme(),
                "host": r.candidate.host,
                "port": r.candidate.port,
                "latency_ms": v.latency_ms,
                "connect_ms": v.connect_ms,
                "exit_ip": &*v.exit_ip,
                "anonymity": v.anonymity.name(),
                "job_id": job_id,
                "checked_at_ms": ended_ms,
            })
        })
        .collect();
    let mut files = vec![
        (
            "live_proxies.json".to_string(),
            serde_json::to_string_pretty(&entries).expect("json values serialize") + "\n",
        ),
        (LIVE_TXT.to_string(), lines(usable.iter().copied())),
    ];
    for protocol in Protocol::ALL {
        files.push((
            format!("{}.txt", protocol.scheme()),
            lines(
                usable
                    .iter()
                    .copied()
                    .filter(|r| r.candidate.protocol == protocol),
            ),
        ));
    }
    files
}

fn lines<'a>(rows: impl Iterator<Item = &'a ResultRow>) -> String {
    rows.map(|r| format!("{}\n", r.candidate.full_url()))
        .collect()
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory, then a rename.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("output");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

/// Writes every output file into `dir` (created if missing). A file that already holds its
/// contents is left as it is: writing it again would tell readers watching its time that it
/// changed.
pub(crate) fn write_all(dir: &Path, files: &[(String, String)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, contents) in files {
        let path = dir.join(name);
        if std::fs::read(&path).is_ok_and(|old| old == contents.as_bytes()) {
            continue;
        }
        write_atomically(&path, contents.as_bytes())?;
    }
    Ok(())
}

/// How long a running job's fresh proxies may wait before its pool's files get them.
pub(crate) const REWRITE_EVERY: Duration = Duration::from_secs(2);

/// Whether a running job's pool files are to be written now from its `usable` proxies that the
/// store holds: never before they reach the job's `min_usable` (at least one: the files keep the
/// last job's proxies until then), at once when they first do (`last_write` is `None`), then
/// when they `changed` since the last write, every [`REWRITE_EVERY`] at most; or less often when
/// the last write `took` long (a pool of a million proxies), so that writing them takes a tenth
/// of the publisher's time at most.
pub(crate) fn rewrite_due(
    usable: u64,
    min_usable: u64,
    last_write: Option<Instant>,
    took: Duration,
    now: Instant,
    changed: bool,
) -> bool {
    if usable < min_usable.max(1) {
        return false;
    }
    match last_write {
        None => true,
        Some(at) => {
            let every = REWRITE_EVERY.max(took.saturating_mul(10));
            changed && now.saturating_duration_since(at) >= every
        }
    }
}

/// Whose usable proxies a pool's files get when a job's end is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PoolAtEnd {
    /// Leave them as they are.
    Keep,
    /// The ended job's: it is the pool's newest completed job.
    Ended,
    /// The pool's newest completed job's (named): the ended job's fresh proxies went in while it
    /// ran, and it did not complete (failed or cancelled).
    Completed(String),
}

/// Whose proxies a pool's files get when `job_id` ends. `newest_completed` is the pool's newest
/// SUCCEEDED or INSUFFICIENT job, and `holder` the job whose proxies the files hold now and
/// whether it is still running. A running job's fresh proxies are never replaced by an older
/// job's end (after a restart, every ended job's end is shown again).
pub(crate) fn pool_at_end(
    job_id: &str,
    newest_completed: Option<&str>,
    holder: Option<(&str, bool)>,
) -> PoolAtEnd {
    match holder {
        Some((holder, true)) if holder != job_id => PoolAtEnd::Keep,
        _ if newest_completed == Some(job_id) => PoolAtEnd::Ended,
        Some((holder, _)) if holder == job_id => match newest_completed {
            Some(newest) => PoolAtEnd::Completed(newest.to_string()),
            // No job of the pool completed: its fresh proxies are the best the pool has.
            None => PoolAtEnd::Keep,
        },
        _ => PoolAtEnd::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candidate::Candidate;
    use crate::scheduler::{Anonymity, Reason, Verdict};

    fn row(protocol: Protocol, port: u16, latency: Option<u32>) -> ResultRow {
        ResultRow {
            candidate: Candidate {
                protocol,
                host: "192.0.2.1".into(),
                port,
                auth: None,
            },
            chunk_id: 0,
            verdict: latency.map(|latency_ms| Verdict {
                index: 0,
                usable: latency_ms < 1000,
                reason: if latency_ms < 1000 {
                    Reason::None
                } else {
                    Reason::Timeout
                },
                latency_ms,
                exit_ip: "192.0.2.9".into(),
                detail: "".into(),
                anonymity: Anonymity::Elite,
                connect_ms: 1,
                targets: Vec::new(),
            }),
        }
    }

    #[test]
    fn outputs_list_usable_proxies_fastest_first_per_protocol() {
        let rows = vec![
            row(Protocol::Http, 1, Some(300)),
            row(Protocol::Socks5, 2, Some(100)),
            row(Protocol::Http, 3, Some(5000)),
            row(Protocol::Http, 4, None),
        ];
        let files: std::collections::BTreeMap<String, String> =
            render("job-x", 1, &rows).into_iter().collect();
        assert_eq!(
            files["live_proxies.txt"],
            "socks5://192.0.2.1:2\nhttp://192.0.2.1:1\n"
        );
        assert_eq!(files["http.txt"], "http://192.0.2.1:1\n");
        assert_eq!(files["socks5.txt"], "socks5://192.0.2.1:2\n");
        assert_eq!(files["socks4.txt"], "");
        let json: serde_json::Value = serde_json::from_str(&files["live_proxies.json"]).unwrap();
        assert_eq!(json[0]["proxy"], "socks5://192.0.2.1:2");
        assert_eq!(json[0]["anonymity"], "elite");
        assert_eq!(json.as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_running_job_writes_its_pool_at_min_usable_then_at_most_every_interval() {
        let t0 = Instant::now();
        let later = |d: Duration| t0 + d;
        let quick = Duration::from_millis(5);
        // Below min_usable: never, whatever changed.
        assert!(!rewrite_due(4, 5, None, quick, t0, true));
        assert!(
            !rewrite_due(0, 0, None, quick, t0, true),
            "an empty list never replaces the files"
        );
        // Reaching it: at once.
        assert!(rewrite_due(5, 5, None, quick, t0, true));
        assert!(rewrite_due(1, 0, None, quick, t0, false));
        // Then only what changed, and not sooner than the interval.
        let soon = later(Duration::from_millis(100));
        assert!(!rewrite_due(6, 5, Some(t0), quick, soon, true));
        assert!(!rewrite_due(
            6,
            5,
            Some(t0),
            quick,
            later(REWRITE_EVERY),
            false
        ));
        assert!(rewrite_due(
            6,
            5,
            Some(t0),
            quick,
            later(REWRITE_EVERY),
            true
        ));
        assert!(rewrite_due(
            9,
            5,
            Some(t0),
            quick,
            later(REWRITE_EVERY * 10),
            true
        ));
        // A write that took a second waits ten before the next.
        let slow = Duration::from_secs(1);
        assert!(!rewrite_due(
            9,
            5,
            Some(t0),
            slow,
            later(REWRITE_EVERY),
            true
        ));
        assert!(!rewrite_due(9, 5, Some(t0), slow, later(slow * 9), true));
        assert!(rewrite_due(9, 5, Some(t0), slow, later(slow * 10), true));
        // A clock that went backwards waits rather than writes.
        assert!(!rewrite_due(
            9,
            5,
            Some(later(REWRITE_EVERY)),
            quick,
            t0,
            true
        ));
    }

    #[test]
    fn an_ended_job_leaves_the_pool_files_to_the_newest_completed_job() {
        use PoolAtEnd::*;
        // The newest completed job writes its proxies, whoever held the files.
        assert_eq!(pool_at_end("b", Some("b"), None), Ended);
        assert_eq!(pool_at_end("b", Some("b"), Some(("b", false))), Ended);
        assert_eq!(pool_at_end("b", Some("b"), Some(("a", false))), Ended);
        // An older job's end shown again (a restart) leaves the files alone.
        assert_eq!(pool_at_end("a", Some("b"), Some(("b", false))), Keep);
        assert_eq!(pool_at_end("a", Some("b"), None), Keep);
        // A running job's fresh proxies are not replaced by an ended job's.
        assert_eq!(pool_at_end("a", Some("a"), Some(("c", true))), Keep);
        // A job that wrote fresh proxies and then failed or was cancelled gives the files back
        // to the newest completed job, or keeps them if none completed.
        assert_eq!(
            pool_at_end("c", Some("b"), Some(("c", false))),
            Completed("b".into())
        );
        assert_eq!(pool_at_end("c", None, Some(("c", false))), Keep);
        // A failed job that never wrote them changes nothing.
        assert_eq!(pool_at_end("c", Some("b"), Some(("b", false))), Keep);
    }

    #[test]
    fn atomic_writes_replace_whole_files() {
        let dir = std::env::temp_dir().join(format!("proxyfleet-output-{}", std::process::id()));
        write_all(&dir, &[("a.txt".into(), "one\n".into())]).unwrap();
        write_all(&dir, &[("a.txt".into(), "two\n".into())]).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "two\n");
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
        // The same contents again: the file is not replaced.
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let before = inode(&dir.join("a.txt"));
        write_all(&dir, &[("a.txt".into(), "two\n".into())]).unwrap();
        assert_eq!(inode(&dir.join("a.txt")), before);
        let _ = std::fs::remove_dir_all(dir);
    }
}
