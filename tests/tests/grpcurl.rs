//! The real grpcurl binary, with no proto file: lists the services through reflection, checks
//! health, and streams WatchJob until the job's terminal state, when the stream ends by itself.

use proxyfleet_tests::harness::{CoordinatorProc, grpcurl, run};
use proxyfleet_tests::sim::Farm;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_services_and_streams_watch_job_to_the_end() {
    let coordinator = CoordinatorProc::start(&[]).await;
    let host = coordinator.grpc.to_string();

    let (code, out, err) = run(grpcurl().args(["-plaintext", &host, "list"])).await;
    assert_eq!(code, 0, "{err}");
    for service in [
        "proxyfleet.v1.Coordinator",
        "proxyfleet.v1.Workers",
        "grpc.health.v1.Health",
    ] {
        assert!(
            out.lines().any(|l| l.trim() == service),
            "{service} missing from:\n{out}"
        );
    }
    let (code, out, err) =
        run(grpcurl().args(["-plaintext", &host, "describe", "proxyfleet.v1.Coordinator"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rpc WatchJob"), "{out}");
    let (code, out, err) =
        run(grpcurl().args(["-plaintext", &host, "grpc.health.v1.Health/Check"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SERVING"), "{out}");

    // A job that takes a few seconds: black holes cost their full timeout.
    let farm = Farm::spawn([127, 0, 0, 1].into(), 4, 20, 76).await.unwrap();
    let job_id = coordinator
        .submit(
            &farm.candidate_lines(),
            &["--timeout", "2s", "--chunk-size", "10", "--min-usable", "4"],
        )
        .await;
    let watch = tokio::spawn({
        let host = host.clone();
        let job_id = job_id.clone();
        async move {
            let body = format!(r#"{{"job_id":"{job_id}"}}"#);
            run(grpcurl().args([
                "-plaintext",
                "-d",
                &body,
                &host,
                "proxyfleet.v1.Coordinator/WatchJob",
            ]))
            .await
        }
    });
    let _worker = coordinator.worker("w1", &["--max-checks", "8"]);
    let (code, out, err) = watch.await.unwrap();
    assert_eq!(code, 0, "{err}");
    let snapshots = out.matches("\"jobId\"").count();
    assert!(
        snapshots >= 2,
        "a first snapshot and the terminal one, at least:\n{out}"
    );
    assert!(out.contains("JOB_STATE_CHECKING"), "{out}");
    let last = out.rsplit("\"jobId\"").next().unwrap();
    assert!(
        last.contains("JOB_STATE_SUCCEEDED"),
        "the stream ends on the terminal snapshot:\n{out}"
    );
    assert!(last.contains("\"proxiesUsable\": \"4\""), "{last}");

    // An unknown job is a clear NotFound, not a hang.
    let (code, _, err) = run(grpcurl().args([
        "-plaintext",
        "-d",
        r#"{"job_id":"job-nope"}"#,
        &host,
        "proxyfleet.v1.Coordinator/WatchJob",
    ]))
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("NotFound") && err.contains("job-nope"),
        "{err}"
    );
}
