//! One binary, three programs: `proxyfleet` started under the names `proxyfleet-coordinator` and
//! `proxyfleet-worker` (links, as the image ships them) is a coordinator and a worker that run a
//! job to its end, and each answers `--help` as that program.

use std::path::Path;
use std::process::Stdio;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, TempDir, WAIT_LIMIT};
use proxyfleet_tests::sim::Farm;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// `proxyfleet` linked as `name` in `dir`.
fn link(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::os::unix::fs::symlink(harness::bin("proxyfleet"), &path).expect("linking the binary");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_binary_is_the_coordinator_and_the_worker_under_their_names() {
    let dir = TempDir::new("one-binary");
    let coordinator_bin = link(dir.path(), "proxyfleet-coordinator");
    let worker_bin = link(dir.path(), "proxyfleet-worker");

    for (program, flag) in [
        (&coordinator_bin, "--lease-ttl"),
        (&worker_bin, "--max-checks"),
    ] {
        let help = Command::new(program).arg("--help").output().await.unwrap();
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(help.status.success() && text.contains(flag), "{text}");
        assert!(!text.contains("Commands:"), "not the CLI's help: {text}");
    }

    let log = std::fs::File::create(dir.path().join("coordinator.log")).unwrap();
    let mut coordinator = Command::new(&coordinator_bin)
        .args(["--listen", "127.0.0.1:0", "--judge-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--allow-private-targets", "--http-listen", "off"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(coordinator.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT_LIMIT, lines.next_line())
        .await
        .expect("the coordinator says where it listens")
        .unwrap()
        .unwrap_or_default();
    let grpc = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("grpc="))
        .unwrap_or_else(|| panic!("no grpc= in {line:?}"));
    let url = format!("http://{grpc}");
    let log = std::fs::File::create(dir.path().join("worker.log")).unwrap();
    let _worker = Command::new(&worker_bin)
        .args([
            "--coordinator",
            &url,
            "--name",
            "linked",
            "--max-checks",
            "8",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let farm = Farm::spawn([127, 0, 0, 1].into(), 3, 0, 2).await.unwrap();
    let list = dir.write("list.txt", farm.candidate_lines().join("\n"));
    let out = harness::cli(&[
        "--coordinator",
        &url,
        "submit",
        "--file",
        list.to_str().unwrap(),
        "--timeout",
        "2s",
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let job_id = out.stdout.trim().to_string();
    let mut client = harness::client(&url).await;
    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    assert_eq!(job.progress.unwrap().proxies_usable, 3);
    let workers = harness::workers(&mut client).await;
    assert!(
        workers.iter().any(|w| w.worker_id.starts_with("linked")),
        "{workers:?}"
    );
}
