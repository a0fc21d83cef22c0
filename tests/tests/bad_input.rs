//! Bad input gets a clear message and the right exit code, never a hang or a panic, and the
//! coordinator keeps serving.

use std::time::Duration;

use proxyfleet_tests::harness::{self, CoordinatorProc};
use proxyfleet_tests::sim::refused_addr;

fn assert_clean(out: &harness::CliOutput) {
    assert!(!out.stderr.contains("panicked"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lists_and_unknown_jobs_get_clear_errors() {
    let coordinator = CoordinatorProc::start(&[]).await;

    let empty = coordinator.dir.write("empty.txt", "\n  \n");
    let out = coordinator
        .cli(&["submit", "--file", empty.to_str().unwrap()])
        .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("the candidate list is empty"),
        "{out:?}"
    );
    assert_clean(&out);

    // A malformed line is named by number and skipped; the rest is a job.
    let mixed = coordinator.dir.write(
        "mixed.txt",
        "127.0.0.1:9\n# comment\nnot a proxy\nsocks5://127.0.0.1:99999\n127.0.0.2:9\n",
    );
    let out = coordinator
        .cli(&["submit", "--file", mixed.to_str().unwrap()])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("line 3: \"not a proxy\""), "{out:?}");
    assert!(
        out.stderr.contains("line 4") && out.stderr.contains("out of range 1-65535"),
        "{out:?}"
    );
    let job_id = out.stdout.trim().to_string();
    let mut client = coordinator.client().await;
    assert_eq!(
        harness::job(&mut client, &job_id)
            .await
            .progress
            .unwrap()
            .proxies_total,
        2
    );

    // Strict mode refuses the whole list, naming the line.
    let out = coordinator
        .cli(&["submit", "--strict", "--file", mixed.to_str().unwrap()])
        .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("line 3"), "{out:?}");

    // Nothing usable at all.
    let junk = coordinator.dir.write("junk.txt", "hello\nworld:port\n");
    let out = coordinator
        .cli(&["submit", "--file", junk.to_str().unwrap()])
        .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("line 1") && out.stderr.contains("line 2"),
        "{out:?}"
    );

    // Invalid UTF-8 names its line.
    let binary = coordinator
        .dir
        .write("binary.txt", b"127.0.0.1:9\n\xff\xfe\x00\n".as_slice());
    let out = coordinator
        .cli(&["submit", "--file", binary.to_str().unwrap()])
        .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("line 2") && out.stderr.contains("UTF-8"),
        "{out:?}"
    );

    // A missing file.
    let out = coordinator
        .cli(&["submit", "--file", "/nonexistent/list.txt"])
        .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("/nonexistent/list.txt"), "{out:?}");

    // Unknown job ids.
    for command in ["watch", "results", "cancel"] {
        let out = coordinator.cli(&[command, "job-doesnotexist"]).await;
        assert_eq!(out.code, 2, "{command}: {out:?}");
        assert!(
            out.stderr.contains("no job with id \"job-doesnotexist\""),
            "{command}: {out:?}"
        );
        assert_clean(&out);
    }

    // Bad option values.
    let out = coordinator
        .cli(&[
            "submit",
            "--file",
            mixed.to_str().unwrap(),
            "--chunk-size",
            "0",
        ])
        .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--chunk-size"), "{out:?}");
    let out = coordinator
        .cli(&[
            "submit",
            "--file",
            mixed.to_str().unwrap(),
            "--protocols",
            "ftp",
        ])
        .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("unknown protocol \"ftp\""), "{out:?}");

    // Still serving, and the good job is listed.
    let out = coordinator.cli(&["jobs"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&job_id), "{out:?}");
    let out = coordinator.cli(&["workers"]).await;
    assert_eq!(out.code, 0, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_targets_are_refused_by_default() {
    let coordinator = CoordinatorProc::start_public(&[]).await;
    let list = coordinator
        .dir
        .write("private.txt", "127.0.0.1:8080\n10.0.0.1:3128\n");
    let out = coordinator
        .cli(&["submit", "--file", list.to_str().unwrap()])
        .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--allow-private-targets"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_is_down_is_exit_code_1() {
    let down = format!("http://{}", refused_addr([127, 0, 0, 1].into()).unwrap());
    let dir = harness::TempDir::new("down");
    let list = dir.write("list.txt", "127.0.0.1:9\n");
    for args in [
        vec!["--coordinator", down.as_str(), "jobs"],
        vec!["--coordinator", down.as_str(), "watch", "job-x"],
        vec![
            "--coordinator",
            down.as_str(),
            "submit",
            "--file",
            list.to_str().unwrap(),
            "--wait",
        ],
    ] {
        let started = std::time::Instant::now();
        let out = harness::cli(&args).await;
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("cannot reach the coordinator"),
            "{out:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_clean(&out);
    }

    let out = harness::cli(&["--coordinator", "not a url", "jobs"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("not a valid URL"), "{out:?}");
}
