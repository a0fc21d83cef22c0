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
    let mut lines = out.stdout.lines();
    let job_id = lines.next().unwrap().trim().to_string();
    assert!(job_id.starts_with("job-"), "{out:?}");
    let summary = lines.next().unwrap();
    assert!(
        summary.contains("SUCCEEDED: 6 usable of 50 (50 checked)"),
        "{out:?}"
    );
    let proxies: Vec<&str> = lines.collect();
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
    // The finished job's usable list is on disk too.
    let usable =
        std::fs::read_to_string(data.join("jobs").join(&job_id).join("usable.txt")).unwrap();
    assert_eq!(usable.lines().count(), 6);
}
