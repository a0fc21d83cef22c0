//! What the coordinator acknowledges it keeps: a job id printed by `proxyfleet submit` survives a
//! `kill -9` right after, a store that cannot be written refuses the job without giving it an id,
//! and a store whose rows do not add up stops the coordinator at startup, naming the job.

use std::collections::BTreeSet;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, TempDir, Tmpfs, WAIT_LIMIT};

/// `n` distinct candidates where connections are refused at once: 127.254.0.0/16 (which nothing
/// binds) on ports 1 to 4.
fn refused_lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let host = i % 62_500;
            let port = 1 + i / 62_500;
            format!("http://127.254.{}.{}:{port}", host / 250, host % 250 + 1)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_id_printed_by_submit_survives_a_kill_right_after() {
    let lines = refused_lines(200_000);
    let listen = harness::quiet_port().to_string();
    let dir = TempDir::new("durable-submit");
    let data = dir.path().join("data");
    let coordinator = CoordinatorProc::start_over(&listen, &data, &[]).await;
    let job_id = coordinator
        .submit(
            &lines,
            &[
                "--timeout",
                "2s",
                "--chunk-size",
                "1000",
                "--min-usable",
                "0",
            ],
        )
        .await;
    coordinator.crash().await;

    let coordinator = CoordinatorProc::start_over(&listen, &data, &[]).await;
    let mut client = coordinator.client().await;
    let restored = client
        .get_job(pb::GetJobRequest {
            job_id: job_id.clone(),
            include_chunks: false,
        })
        .await
        .unwrap_or_else(|s| panic!("job {job_id} was acknowledged, then lost to kill -9: {s}"))
        .into_inner();
    assert_eq!(
        restored.progress.unwrap().proxies_total,
        lines.len() as u64,
        "every candidate of the acknowledged job is kept"
    );

    let _worker = coordinator.worker("w", &["--max-checks", "1024"]);
    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let results = harness::results(&mut client, &job_id).await;
    assert_eq!(results.len(), lines.len(), "each candidate once");
    assert!(results.iter().all(|r| r.checked), "every candidate checked");
    let proxies: BTreeSet<&str> = results.iter().map(|r| r.proxy.as_str()).collect();
    let expected: BTreeSet<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(proxies, expected, "exactly the candidates submitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_the_job_and_gives_it_no_id() {
    let dir = TempDir::new("full-disk");
    let list = dir.write("list.txt", refused_lines(200_000).join("\n"));
    let disk = Tmpfs::mount(&dir.path().join("data"), "1m");
    let mut coordinator = CoordinatorProc::start_over("127.0.0.1:0", disk.path(), &[]).await;

    let out = coordinator
        .cli(&[
            "submit",
            "--file",
            list.to_str().expect("utf-8 temp path"),
            "--chunk-size",
            "1000",
        ])
        .await;
    assert_eq!(out.code, 1, "refused as a coordinator failure: {out:?}");
    assert!(
        out.stdout.trim().is_empty() && !out.stderr.contains("job-"),
        "no job id for a job that is not kept: {out:?}"
    );
    assert!(
        out.stderr.contains("database or disk is full")
            && out.stderr.contains("free space")
            && out.stderr.contains("submit again"),
        "the refusal says what happened and what to do: {out:?}"
    );

    // It stops rather than go on with memory ahead of its store, and says why.
    let status = coordinator
        .proc
        .wait(WAIT_LIMIT)
        .await
        .expect("a coordinator that cannot write its store stops");
    assert!(!status.success(), "{status}");
    let log = coordinator.proc.log_text();
    assert!(
        log.contains("the store failed") && log.contains("database or disk is full"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_missing_a_candidate_row_is_refused_at_startup() {
    let dir = TempDir::new("tampered");
    let data = dir.path().join("data");
    let mut coordinator = CoordinatorProc::start_over("127.0.0.1:0", &data, &[]).await;
    let job_id = coordinator
        .submit(&refused_lines(50), &["--chunk-size", "10"])
        .await;
    let status = coordinator.stop().await;
    assert!(status.success(), "{status}");

    let db_path = data.join("proxyfleet.db");
    {
        let db = rusqlite::Connection::open(&db_path).unwrap();
        let deleted = db
            .execute(
                "DELETE FROM candidates WHERE job_id = ?1 AND idx = 7",
                [&job_id],
            )
            .unwrap();
        assert_eq!(deleted, 1, "the job's candidate 7 was stored");
    }

    let stderr = harness::coordinator_refuses(&[
        "--listen",
        "127.0.0.1:0",
        "--judge-listen",
        "127.0.0.1:0",
        "--allow-private-targets",
        "--data-dir",
        data.to_str().expect("utf-8 temp path"),
    ])
    .await;
    assert!(
        stderr.contains(&job_id) && stderr.contains("proxyfleet.db"),
        "names the job and the file: {stderr}"
    );
    assert!(
        stderr.contains("restore a backup") && stderr.contains("move"),
        "says what to do: {stderr}"
    );
}
