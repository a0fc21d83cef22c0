//! Bad and hostile input: binary data, 10 MB lines, invalid UTF-8, impossible ports, private
//! addresses and names, oversized jobs and messages, too many jobs and watchers. Each gets a
//! clear error, and the coordinator keeps serving.

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc};

/// Submits `contents` as a list file with `options`; returns the CLI's output.
async fn submit(
    coordinator: &CoordinatorProc,
    name: &str,
    contents: &[u8],
    options: &[&str],
) -> harness::CliOutput {
    let list = coordinator.dir.write(name, contents);
    let mut args = vec!["submit", "--file", list.to_str().unwrap()];
    args.extend_from_slice(options);
    coordinator.cli(&args).await
}

fn assert_refused(out: &harness::CliOutput, says: &[&str]) {
    assert_eq!(out.code, 2, "{out:?}");
    for text in says {
        assert!(out.stderr.contains(text), "no {text:?} in {out:?}");
    }
    assert!(!out.stderr.contains("panicked"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_lists_get_clear_errors_and_the_coordinator_keeps_serving() {
    let coordinator = CoordinatorProc::start_public(&[
        "--max-candidates",
        "1000",
        "--max-message-bytes",
        "20000000",
    ])
    .await;

    let mut binary: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    binary[100] = 0xff;
    assert_refused(
        &submit(&coordinator, "binary.bin", &binary, &[]).await,
        &["not valid UTF-8"],
    );

    let control = "\u{0}\u{1}\u{7f}\n\u{1b}[31m\n".repeat(100);
    assert_refused(
        &submit(&coordinator, "control.txt", control.as_bytes(), &[]).await,
        &["no usable candidate"],
    );

    let long_line = format!("{}:80\n", "a".repeat(10 * 1024 * 1024));
    assert_refused(
        &submit(&coordinator, "long.txt", long_line.as_bytes(), &[]).await,
        &["line 1", "bytes long"],
    );

    let ports = b"203.0.113.1:0\n203.0.113.2:65536\n203.0.113.3:-1\n";
    assert_refused(
        &submit(&coordinator, "ports.txt", ports, &[]).await,
        &["line 1", "line 2", "line 3", "out of range"],
    );

    let private = b"127.0.0.1:8080\n10.0.0.1:3128\n[::1]:80\nlocalhost:80\n169.254.169.254:80\n";
    assert_refused(
        &submit(&coordinator, "private.txt", private, &[]).await,
        &["--allow-private-targets", "line 5"],
    );

    let huge: String = (0..1001)
        .map(|i| format!("203.0.{}.{}:8080\n", i / 250, i % 250 + 1))
        .collect();
    assert_refused(
        &submit(&coordinator, "huge.txt", huge.as_bytes(), &[]).await,
        &["1001 candidates", "1000 a job may hold"],
    );

    // Judges and sources may not point inside either, by address or by name.
    let one = b"203.0.113.9:8080\n";
    let judge = submit(
        &coordinator,
        "one.txt",
        one,
        &["--judge", "http://127.0.0.1:9/judge"],
    )
    .await;
    assert_refused(&judge, &["--judge: ", "--allow-private-targets"]);
    let judge = submit(
        &coordinator,
        "one.txt",
        one,
        &["--judge", "http://localhost:9/judge"],
    )
    .await;
    assert_refused(&judge, &["points to a loopback"]);
    let source = submit(
        &coordinator,
        "one.txt",
        one,
        &[
            "--source",
            "http://localhost:1/list.txt",
            "--min-usable",
            "0",
        ],
    )
    .await;
    assert_eq!(
        source.code, 0,
        "a bad source costs a warning, not the job: {source:?}"
    );
    let job_id = source.stdout.trim().to_string();
    let mut client = coordinator.client().await;
    let job = harness::wait_for("the source to fail", harness::WAIT_LIMIT, || {
        let mut client = client.clone();
        let job_id = job_id.clone();
        async move {
            let job = harness::job(&mut client, &job_id).await;
            (job.sources.first().is_some_and(|s| s.state == "failed")).then_some(job)
        }
    })
    .await;
    assert!(
        job.sources[0].error.contains("does not allow"),
        "{:?}",
        job.sources
    );
    client
        .cancel_job(pb::CancelJobRequest { job_id })
        .await
        .unwrap();

    // Still serving.
    let out = coordinator.cli(&["jobs"]).await;
    assert_eq!(out.code, 0, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_messages_jobs_and_watchers() {
    let coordinator = CoordinatorProc::start(&[
        "--max-message-bytes",
        "100000",
        "--max-active-jobs",
        "2",
        "--max-watchers",
        "1",
    ])
    .await;
    let big: String = (0..20_000)
        .map(|i| format!("127.0.{}.{}:80\n", i / 250 % 250, i % 250 + 1))
        .collect();
    let out = submit(&coordinator, "big.txt", big.as_bytes(), &[]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("message length too large") || out.stderr.contains("larger than"),
        "{out:?}"
    );

    let mut ids = Vec::new();
    for n in 0..2 {
        let out = submit(
            &coordinator,
            "small.txt",
            format!("127.0.0.{}:80\n", n + 1).as_bytes(),
            &[],
        )
        .await;
        assert_eq!(out.code, 0, "{out:?}");
        ids.push(out.stdout.trim().to_string());
    }
    let out = submit(&coordinator, "third.txt", b"127.0.0.9:80\n", &[]).await;
    assert_refused(&out, &["--max-active-jobs"]);

    let mut client = coordinator.client().await;
    let mut first = client
        .watch_job(pb::WatchJobRequest {
            job_id: ids[0].clone(),
        })
        .await
        .expect("the first watcher is served")
        .into_inner();
    first.message().await.unwrap().expect("a snapshot at once");
    let second = client
        .watch_job(pb::WatchJobRequest {
            job_id: ids[1].clone(),
        })
        .await;
    assert_eq!(second.unwrap_err().code(), tonic::Code::ResourceExhausted);
    drop(first);
    // The slot comes back once the first watcher is gone.
    harness::wait_for("a watcher slot to free up", harness::WAIT_LIMIT, || {
        let mut client = client.clone();
        let id = ids[1].clone();
        async move {
            client
                .watch_job(pb::WatchJobRequest { job_id: id })
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    for id in ids {
        client
            .cancel_job(pb::CancelJobRequest { job_id: id })
            .await
            .unwrap();
    }
}
