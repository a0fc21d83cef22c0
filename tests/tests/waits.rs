//! Waits outlive the coordinator: `proxyfleet watch`, `submit --wait`, `refresh --wait` and
//! `results --follow` running while the coordinator is killed with SIGKILL and started again
//! over its data dir reconnect by themselves, and each ends as the job truly ended: its final
//! state's exit code, every candidate of a followed job printed exactly once.

use std::collections::BTreeSet;
use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CliOutput, CoordinatorProc, TempDir, WAIT_LIMIT};
use proxyfleet_tests::sim::Farm;

/// The exit code the CLI gives a job's final state (see the README's table).
fn exit_code(state: i32) -> i32 {
    match pb::JobState::try_from(state) {
        Ok(pb::JobState::Succeeded) => 0,
        Ok(pb::JobState::Insufficient) => 3,
        Ok(pb::JobState::Failed) => 4,
        Ok(pb::JobState::Cancelled) => 5,
        other => panic!("not a final state: {other:?}"),
    }
}

/// Asserts that a wait went through the outage, said so once, and ended with `code`.
fn ended_with(what: &str, out: &CliOutput, code: i32) {
    assert_eq!(out.code, code, "{what}: {out:?}");
    assert_eq!(
        out.stderr.matches("reconnecting").count(),
        1,
        "{what} says once that it reconnects, not once per attempt: {out:?}"
    );
}

/// The proxy URLs a `results --follow` printed, one a line, each once.
fn followed(what: &str, out: &CliOutput) -> BTreeSet<String> {
    let proxies: Vec<String> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect();
    let unique: BTreeSet<String> = proxies.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        proxies.len(),
        "{what} printed a candidate twice: {out:?}"
    );
    unique
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_follow_their_jobs_across_a_coordinator_crash_and_restart() {
    // Working proxies and refused addresses answer at once; black holes hold each job for its
    // check timeout, before the crash and again after (their chunks are checked again).
    let farm = Farm::spawn([127, 0, 0, 1].into(), 6, 12, 20).await.unwrap();
    let lines = farm.candidate_lines();
    let listen = harness::quiet_port().to_string();
    let dir = TempDir::new("waits");
    let data = dir.path().join("data");
    let coordinator = CoordinatorProc::start_over(&listen, &data, &[]).await;
    let url = coordinator.url.clone();
    let _worker = harness::worker(&url, "w", &["--max-checks", "128"], dir.path());
    let list = dir.write("list.txt", lines.join("\n"));
    let list = list.to_str().unwrap();
    let sources = dir.write("sources.toml", format!("[http]\nurls = [\"{list}\"]\n"));
    let cli = |name: &str, args: &[&str]| harness::spawn_cli(&url, name, args, dir.path());

    // A job that succeeds (every working proxy wanted), waited for as it is submitted...
    let mut submit = cli(
        "submit",
        &[
            "submit",
            "--file",
            list,
            "--pool",
            "s",
            "--timeout",
            "8s",
            "--min-usable",
            "6",
            "--wait",
        ],
    );
    let succeeding = submit.next_line().await.expect("submit prints the job id");
    // ...and a preflight that never has enough (more usable proxies wanted than there are).
    let mut refresh = cli(
        "refresh",
        &[
            "refresh",
            "--sources",
            sources.to_str().unwrap(),
            "--min-usable",
            "50",
            "--timeout",
            "8s",
            "--wait",
        ],
    );
    let insufficient = refresh
        .next_line()
        .await
        .expect("refresh prints the job id");
    let watch_s = cli("watch-s", &["watch", &succeeding]);
    let watch_r = cli("watch-r", &["watch", &insufficient]);
    let follow_s = cli("follow-s", &["results", &succeeding, "--follow"]);
    let follow_r = cli(
        "follow-r",
        &["results", &insufficient, "--follow", "--usable-only"],
    );
    // Every wait is under way: the quick checks are in, the black holes still hold both jobs.
    let mut client = coordinator.client().await;
    for job_id in [&succeeding, &insufficient] {
        harness::wait_for("the quick checks", WAIT_LIMIT, || {
            let mut client = client.clone();
            async move {
                let p = harness::job(&mut client, job_id).await.progress.unwrap();
                (p.proxies_checked >= 26).then_some(())
            }
        })
        .await;
        let job = harness::job(&mut client, job_id).await;
        assert_eq!(job.state, pb::JobState::Checking as i32, "{job:?}");
    }
    // Each wait has seen its job (a watch prints a progress line on stderr) and each follower
    // its quick results.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (name, wait) in [("watch", &watch_s), ("watch", &watch_r)] {
        assert!(!wait.stderr().is_empty(), "{name} is following its job");
    }

    coordinator.crash().await;
    // Down for a while: the waits meet refused connections, not only a broken stream.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let coordinator = CoordinatorProc::start_over(&listen, &data, &[]).await;

    let limit = WAIT_LIMIT;
    let outs = (
        submit.finish(limit).await,
        refresh.finish(limit).await,
        watch_s.finish(limit).await,
        watch_r.finish(limit).await,
        follow_s.finish(limit).await,
        follow_r.finish(limit).await,
    );
    let (submit, refresh, watch_s, watch_r, follow_s, follow_r) = outs;

    // As the restarted coordinator reports the jobs at the end.
    let mut client = coordinator.client().await;
    let s = harness::wait_terminal(&mut client, &succeeding, WAIT_LIMIT).await;
    let r = harness::wait_terminal(&mut client, &insufficient, WAIT_LIMIT).await;
    assert_eq!(s.state, pb::JobState::Succeeded as i32, "{s:?}");
    assert_eq!(r.state, pb::JobState::Insufficient as i32, "{r:?}");
    ended_with("submit --wait", &submit, exit_code(s.state));
    ended_with("watch (succeeded)", &watch_s, exit_code(s.state));
    ended_with("refresh --wait", &refresh, exit_code(r.state));
    ended_with("watch (insufficient)", &watch_r, exit_code(r.state));
    for (what, out) in [("submit --wait", &submit), ("watch", &watch_s)] {
        assert!(out.stderr.contains("SUCCEEDED"), "{what}: {out:?}");
    }
    for (what, out) in [("refresh --wait", &refresh), ("watch", &watch_r)] {
        assert!(out.stderr.contains("INSUFFICIENT"), "{what}: {out:?}");
    }

    // Every candidate exactly once, across the reconnect.
    ended_with("results --follow", &follow_s, 0);
    let all: BTreeSet<String> = lines.iter().cloned().collect();
    assert_eq!(followed("results --follow", &follow_s), all);
    ended_with("results --follow --usable-only", &follow_r, 0);
    let usable: BTreeSet<String> = harness::results(&mut client, &insufficient)
        .await
        .into_iter()
        .filter(|r| r.usable)
        .map(|r| r.proxy)
        .collect();
    assert_eq!(usable.len(), 6);
    assert_eq!(
        followed("results --follow --usable-only", &follow_r),
        usable
    );
}
