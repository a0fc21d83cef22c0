//! The output files of a refresh: `live_proxies.json` (full verdicts of the usable proxies,
//! fastest first), `live_proxies.txt` and one txt per protocol (`scheme://host:port` a line),
//! each written atomically so a reader never sees half a file; and a finished job's
//! `summary.json`.

use std::path::Path;

use crate::candidate::Protocol;
use crate::scheduler::{JobReport, ResultRow};

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

/// A finished job's `summary.json`: its report as `proxyfleet job --json` prints it.
pub(crate) fn summary(report: &JobReport) -> serde_json::Value {
    crate::convert::report_json(&crate::convert::report_to_proto(report))
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
