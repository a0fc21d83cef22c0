//! `proxyfleet job`: a job scraped from a good source and a source answering 404 shows the failed
//! source's error, dropped entries, and verdict counts by reason that match its results, as text
//! and as JSON, and its `summary.json` holds the same counts; a source inside the coordinator's
//! networks is reported refused, with why; an ended job's report is the same after the
//! coordinator is killed and started again.

use std::collections::BTreeMap;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, TempDir, WAIT_LIMIT};
use proxyfleet_tests::lists::{Answer, ListServer};
use proxyfleet_tests::sim::{Behavior, Farm, SimProxy};

/// What became of each candidate, counted as `results --format json` shows it: "usable", or
/// the reason of the others ("unchecked" for a candidate without a verdict).
fn counts_from_results(results: &[serde_json::Value]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for r in results {
        let outcome = if r["usable"] == true {
            "usable".to_string()
        } else {
            r["reason"].as_str().expect("a reason").to_string()
        };
        *counts.entry(outcome).or_default() += 1;
    }
    counts
}

fn counts_of(value: &serde_json::Value) -> BTreeMap<String, u64> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("an object of counts: {value}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().expect("a count")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_report_shows_a_failed_source_and_counts_that_match_its_results() {
    let farm = Farm::spawn([127, 0, 0, 1].into(), 3, 0, 4).await.unwrap();
    let fake = SimProxy::spawn([127, 0, 0, 1].into(), Behavior::Fake200)
        .await
        .unwrap();
    let mut lines = farm.working_lines();
    lines.extend(farm.refused.iter().map(|a| format!("http://{a}")));
    lines.push(fake.candidate_line());
    // A repeat and a line that is no proxy: both dropped, and said so.
    lines.push(lines[0].clone());
    lines.push("not a proxy".into());
    let lists = ListServer::spawn(
        [127, 0, 0, 1].into(),
        vec![("/good.txt", vec![Answer::Body(200, lines.join("\n"))])],
    )
    .await
    .unwrap();
    let coordinator = CoordinatorProc::start(&[]).await;
    let _worker = coordinator.worker("w-report", &["--max-checks", "16"]);
    let job_id = coordinator
        .submit(
            &[],
            &[
                "--source",
                &lists.url("/good.txt"),
                "--source",
                &lists.url("/missing.txt"),
                "--timeout",
                "3s",
                "--chunk-size",
                "3",
            ],
        )
        .await;
    let mut client = coordinator.client().await;
    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:#?}");

    // The counts a user computes from the results themselves, over gRPC and through the CLI.
    let from_grpc: BTreeMap<String, u64> = {
        let rows = harness::results(&mut client, &job_id).await;
        let mut counts = BTreeMap::new();
        for r in &rows {
            let outcome = if r.usable {
                "usable"
            } else if r.reason == pb::Reason::Unchecked as i32 {
                "unchecked"
            } else {
                pb::Reason::try_from(r.reason)
                    .unwrap()
                    .as_str_name()
                    .trim_start_matches("REASON_")
            }
            .to_ascii_lowercase();
            *counts.entry(outcome).or_default() += 1;
        }
        counts
    };
    let results = coordinator
        .cli(&["results", &job_id, "--format", "json"])
        .await;
    assert_eq!(results.code, 0, "{results:?}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&results.stdout).unwrap();
    let expected = counts_from_results(&rows);
    assert_eq!(expected, from_grpc);
    assert_eq!(
        expected,
        BTreeMap::from([
            ("usable".to_string(), 3),
            ("refused".to_string(), 4),
            ("token_missing".to_string(), 1),
        ]),
        "{rows:#?}"
    );

    // Text: the failed source's error, every reason with its count, the worker.
    let text = coordinator.cli(&["job", &job_id]).await;
    assert_eq!(text.code, 0, "{text:?}");
    assert!(text.stderr.is_empty(), "{text:?}");
    let out = &text.stdout;
    assert!(out.starts_with(&format!("job {job_id} SUCCEEDED")), "{out}");
    assert!(out.contains(&lists.url("/missing.txt")), "{out}");
    let error_line = out
        .lines()
        .find(|l| l.trim_start().starts_with("error:"))
        .unwrap_or_else(|| panic!("no source error in:\n{out}"));
    assert!(error_line.contains("404"), "{out}");
    let verdicts: BTreeMap<String, u64> = out
        .split("\nverdicts (")
        .nth(1)
        .unwrap_or_else(|| panic!("no verdicts section in:\n{out}"))
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let (name, n) = l.trim().split_once(char::is_whitespace).unwrap();
            (name.to_string(), n.trim().parse().unwrap())
        })
        .collect();
    assert_eq!(verdicts, expected, "{out}");
    assert!(out.contains("w-report"), "{out}");

    // JSON: parses, and holds the same counts, the sources, the dropped entries, the worker.
    let json = coordinator.cli(&["job", &job_id, "--json"]).await;
    assert_eq!(json.code, 0, "{json:?}");
    let report: serde_json::Value = serde_json::from_str(&json.stdout)
        .unwrap_or_else(|e| panic!("job --json is not JSON ({e}): {}", json.stdout));
    assert_eq!(counts_of(&report["by_reason"]), expected, "{report:#}");
    assert_eq!(report["state"], "SUCCEEDED");
    let sources = report["sources"].as_array().unwrap();
    let missing = sources
        .iter()
        .find(|s| s["url"].as_str().unwrap().ends_with("/missing.txt"))
        .unwrap();
    assert_eq!(missing["state"], "failed");
    assert!(
        missing["error"].as_str().unwrap().contains("404"),
        "{missing}"
    );
    let good = sources
        .iter()
        .find(|s| s["url"].as_str().unwrap().ends_with("/good.txt"))
        .unwrap();
    assert_eq!(good["state"], "fetched");
    assert!(good["bytes"].as_u64().unwrap() > 0, "{good}");
    assert_eq!(good["rejected"], 1, "{good}");
    assert_eq!(report["dropped"]["duplicate"], 1, "{report:#}");
    assert_eq!(report["chunks"]["total"], 3, "8 candidates in chunks of 3");
    assert_eq!(report["chunks"]["done"], 3);
    assert!(report["started_at_ms"].as_u64().unwrap() >= job.created_at_ms);
    let workers = report["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{report:#}");
    assert_eq!(workers[0]["verdicts"], 8);
    assert_eq!(workers[0]["usable"], 3);

    // summary.json, written at the job's end, holds the same counts.
    let summary_path = coordinator
        .dir
        .path()
        .join("data/jobs")
        .join(&job_id)
        .join("summary.json");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    assert_eq!(counts_of(&summary["by_reason"]), expected, "{summary:#}");
    assert_eq!(summary["sources"], report["sources"]);
    assert_eq!(summary["dropped"], report["dropped"]);
    assert_eq!(summary["chunks"], report["chunks"]);
    assert_eq!(summary["workers"], report["workers"]);

    // An unknown job is an error on stderr, with the bad-input exit code.
    let unknown = coordinator.cli(&["job", "job-nosuchjob"]).await;
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.stdout.is_empty(), "{unknown:?}");
    assert!(unknown.stderr.contains("no job"), "{unknown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_private_source_is_reported_with_its_error() {
    let lists = ListServer::spawn(
        [127, 0, 0, 1].into(),
        vec![(
            "/inside.txt",
            vec![Answer::Body(200, "127.0.0.1:9\n".into())],
        )],
    )
    .await
    .unwrap();
    // As in production: sources inside the coordinator's networks are refused.
    let coordinator = CoordinatorProc::start_public(&[]).await;
    let job_id = coordinator
        .submit(&[], &["--source", &lists.url("/inside.txt")])
        .await;
    let mut client = coordinator.client().await;
    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Failed as i32, "{job:#?}");
    assert_eq!(lists.hits("/inside.txt"), 0, "never fetched");

    let json = coordinator.cli(&["job", &job_id, "--json"]).await;
    assert_eq!(json.code, 0, "{json:?}");
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let source = &report["sources"][0];
    assert_eq!(source["state"], "failed", "{report:#}");
    let error = source["error"].as_str().unwrap();
    assert!(error.contains("does not allow"), "{error}");
    assert_eq!(report["proxies_total"], 0);
    assert_eq!(report["by_reason"], serde_json::json!({}));
    let text = coordinator.cli(&["job", &job_id]).await;
    assert_eq!(text.code, 0, "{text:?}");
    assert!(
        text.stdout.contains(&format!("error: {error}")),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("every source failed"),
        "{}",
        text.stdout
    );
}

/// `proxyfleet job JOB` (with `--json` when `json`), as printed.
async fn report_of(coordinator: &CoordinatorProc, job_id: &str, json: bool) -> String {
    let mut args = vec!["job", job_id];
    if json {
        args.push("--json");
    }
    let out = coordinator.cli(&args).await;
    assert_eq!(out.code, 0, "{out:?}");
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_jobs_report_is_the_same_after_a_coordinator_restart() {
    let farm = Farm::spawn([127, 0, 0, 1].into(), 3, 0, 3).await.unwrap();
    let mut lines = farm.working_lines();
    lines.extend(farm.refused.iter().map(|a| format!("http://{a}")));
    let listen = harness::quiet_port().to_string();
    let dir = TempDir::new("report-restart");
    let data = dir.path().join("data");
    let coordinator = CoordinatorProc::start_over(&listen, &data, &[]).await;
    let _worker = harness::worker(&coordinator.url, "w-report", &[], dir.path());
    let job_id = coordinator
        .submit(&lines, &["--timeout", "3s", "--chunk-size", "2"])
        .await;
    let mut client = coordinator.client().await;
    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:#?}");
    let before_text = report_of(&coordinator, &job_id, false).await;
    let before: serde_json::Value =
        serde_json::from_str(&report_of(&coordinator, &job_id, true).await).unwrap();
    assert_eq!(before["chunks"]["leases"], 3, "{before:#}");
    assert_eq!(before["counts_since_restart"], false, "{before:#}");
    assert!(before["started_at_ms"].as_u64().unwrap() > 0, "{before:#}");
    assert_eq!(before["workers"][0]["verdicts"], 6, "{before:#}");
    let summary_path = data.join("jobs").join(&job_id).join("summary.json");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    assert_eq!(
        summary, before,
        "summary.json and job --json are one schema"
    );

    coordinator.crash().await;
    let coordinator = CoordinatorProc::start_over(&listen, &data, &[]).await;
    let after: serde_json::Value =
        serde_json::from_str(&report_of(&coordinator, &job_id, true).await).unwrap();
    assert_eq!(after, before);
    assert_eq!(report_of(&coordinator, &job_id, false).await, before_text);
}
