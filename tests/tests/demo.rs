//! The README's one command for the main job works offline: `proxyfleet demo` runs a whole
//! refresh against simulated proxies on loopback with an in-process coordinator and workers.

use proxyfleet_tests::harness::{self, TempDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_finds_every_working_simulated_proxy() {
    let dir = TempDir::new("demo");
    let data = dir.path().join("data");
    let out = harness::cli(&[
        "demo",
        "--working",
        "6",
        "--black-holes",
        "3",
        "--refused",
        "41",
        "--timeout",
        "1s",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    // The job id and the summary on stderr; stdout holds the proxies alone.
    let job_id = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("job "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job id: {out:?}"))
        .to_string();
    assert!(job_id.starts_with("job-"), "{out:?}");
    assert!(
        out.stderr
            .contains("SUCCEEDED: 6 usable of 50 (50 checked; 6 wanted)"),
        "{out:?}"
    );
    let proxies: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(proxies.len(), 6, "{out:?}");
    assert_eq!(
        proxies
            .iter()
            .filter(|p| p.starts_with("socks5://fleet:secret@127.0.0.1:"))
            .count(),
        3
    );
    assert_eq!(
        proxies
            .iter()
            .filter(|p| p.starts_with("http://127.0.0.1:"))
            .count(),
        3
    );
    // The finished job's outputs are on disk too, for the job and for its pool, in the data
    // directory named, which is kept.
    assert!(out.stderr.contains("data kept in"), "{out:?}");
    for dir in [
        data.join("jobs").join(&job_id),
        data.join("output").join("demo"),
    ] {
        let live = std::fs::read_to_string(dir.join("live_proxies.txt")).unwrap();
        assert_eq!(live.lines().count(), 6, "{}", dir.display());
        let socks5 = std::fs::read_to_string(dir.join("socks5.txt")).unwrap();
        assert_eq!(socks5.lines().count(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_checks_a_list_file_in_process() {
    let farm = proxyfleet_tests::sim::Farm::spawn([127, 0, 0, 1].into(), 4, 1, 15)
        .await
        .unwrap();
    let dir = TempDir::new("run");
    let list = dir.write("list.txt", farm.candidate_lines().join("\n"));
    let output = dir.path().join("usable.txt");
    let data = dir.path().join("data");
    let out = harness::cli(&[
        "run",
        "--file",
        list.to_str().unwrap(),
        "--allow-private-targets",
        "--timeout",
        "1s",
        "--min-usable",
        "5",
        "--data-dir",
        data.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ])
    .await;
    assert_eq!(
        out.code, 3,
        "4 usable of the 5 wanted is INSUFFICIENT: {out:?}"
    );
    assert!(
        out.stderr.contains("INSUFFICIENT: 4 usable of 20"),
        "{out:?}"
    );
    let written: Vec<String> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let mut expected = farm.working_lines();
    let mut got = written.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_draws_a_progress_bar_on_a_terminal() {
    // `script` runs the CLI under a pseudo-terminal, as a user's shell would.
    let dir = TempDir::new("tty");
    let data = dir.path().join("data");
    let command = format!(
        "{} demo --working 2 --black-holes 2 --refused 6 --timeout 1s --data-dir {}",
        harness::bin("proxyfleet").display(),
        data.display()
    );
    let output = tokio::time::timeout(
        harness::WAIT_LIMIT,
        tokio::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("script ends")
    .expect("running script (util-linux)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("\r\x1b[2K["),
        "the bar is redrawn in place: {text:?}"
    );
    assert!(
        text.contains(&format!("[{}]", "#".repeat(30))),
        "the bar ends full: {text:?}"
    );
    assert!(text.contains("SUCCEEDED: 2 usable of 10"), "{text:?}");
}
