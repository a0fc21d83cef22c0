//! Bad input gets a clear message and the right exit code, never a hang or a panic, and the
//! coordinator keeps serving.

use std::time::Duration;

use proxyfleet_tests::harness::{self, CoordinatorProc};
use proxyfleet_tests::sim::refused_addr;

fn assert_clean(out: &harness::CliOutput) {
    assert!(!out.stderr.contains("panicked"), "{out:?}");
}

/// One submission: list contents, extra options, expected exit code, what stderr must say.
struct Case {
    list: &'static [u8],
    options: &'static [&'static str],
    code: i32,
    says: &'static [&'static str],
}

const MIXED: &[u8] =
    b"127.0.0.1:9\n# comment\nnot a proxy\nsocks5://127.0.0.1:99999\n127.0.0.2:9\n";

const CASES: &[Case] = &[
    Case {
        list: b"\n  \n",
        options: &[],
        code: 2,
        says: &["the candidate list is empty"],
    },
    // A malformed line is named by number and skipped; the rest is a job.
    Case {
        list: MIXED,
        options: &[],
        code: 0,
        says: &["line 3: \"not a proxy\"", "line 4", "out of range 1-65535"],
    },
    // Strict mode refuses the whole list, naming the line.
    Case {
        list: MIXED,
        options: &["--strict"],
        code: 2,
        says: &["strict", "line 3"],
    },
    Case {
        list: b"hello\nworld:port\n",
        options: &[],
        code: 2,
        says: &["no usable candidate", "line 1", "line 2"],
    },
    Case {
        list: b"127.0.0.1:9\n\xff\xfe\x00\n",
        options: &[],
        code: 2,
        says: &["line 2", "not valid UTF-8"],
    },
    Case {
        list: MIXED,
        options: &["--chunk-size", "0"],
        code: 2,
        says: &["--chunk-size"],
    },
    Case {
        list: MIXED,
        options: &["--protocols", "ftp"],
        code: 2,
        says: &["unknown protocol \"ftp\""],
    },
    Case {
        list: MIXED,
        options: &["--timeout", "soon"],
        code: 2,
        says: &["--timeout"],
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lists_and_unknown_jobs_get_clear_errors() {
    let coordinator = CoordinatorProc::start(&[]).await;
    let mut client = coordinator.client().await;
    let mut good_jobs = Vec::new();
    for (n, case) in CASES.iter().enumerate() {
        let list = coordinator.dir.write(&format!("case{n}.txt"), case.list);
        let mut args = vec!["submit", "--file", list.to_str().unwrap()];
        args.extend_from_slice(case.options);
        let out = coordinator.cli(&args).await;
        assert_eq!(out.code, case.code, "case {n}: {out:?}");
        for text in case.says {
            assert!(
                out.stderr.contains(text),
                "case {n}: no {text:?} in {out:?}"
            );
        }
        assert_clean(&out);
        if case.code == 0 {
            let job_id = out.stdout.trim().to_string();
            assert_eq!(
                harness::job(&mut client, &job_id)
                    .await
                    .progress
                    .unwrap()
                    .proxies_total,
                2
            );
            good_jobs.push(job_id);
        }
    }

    let out = coordinator
        .cli(&["submit", "--file", "/nonexistent/list.txt"])
        .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("/nonexistent/list.txt"), "{out:?}");

    for command in ["watch", "results", "cancel"] {
        let out = coordinator.cli(&[command, "job-doesnotexist"]).await;
        assert_eq!(out.code, 2, "{command}: {out:?}");
        assert!(
            out.stderr.contains("no job with id \"job-doesnotexist\""),
            "{command}: {out:?}"
        );
        assert_clean(&out);
    }

    // Still serving, and the good job is listed.
    let out = coordinator.cli(&["jobs"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    for job_id in &good_jobs {
        assert!(out.stdout.contains(job_id.as_str()), "{out:?}");
    }
    assert_eq!(coordinator.cli(&["workers"]).await.code, 0);
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
