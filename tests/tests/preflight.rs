//! The preflight's yes means yes: `proxyfleet refresh --wait --min-usable N` exits 0 while the
//! refresh is still checking, and a reader opening the pool's live_proxies files the instant it
//! does finds at least N usable proxies there; a refresh that never has enough takes nothing out
//! of the pool's live set while it runs, and its wait says so.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, WAIT_LIMIT};
use proxyfleet_tests::sim::Farm;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_that_says_yes_leaves_enough_proxies_in_the_pools_files() {
    // Working proxies answer at once; black holes hold the refresh for their 10s check timeout.
    let farm = Farm::spawn([127, 0, 0, 1].into(), 6, 30, 10).await.unwrap();
    let coordinator = CoordinatorProc::start(&[]).await;
    let _worker = coordinator.worker("w", &["--max-checks", "128"]);
    let list = coordinator
        .dir
        .write("list.txt", farm.candidate_lines().join("\n"));
    let sources = coordinator.dir.write(
        "sources.toml",
        format!("[http]\nurls = [\"{}\"]\n", list.display()),
    );
    let sources = sources.to_str().unwrap();
    let output = coordinator.dir.path().join("data").join("output");
    let working: BTreeSet<String> = farm.working_lines().into_iter().collect();

    let out = coordinator
        .cli(&[
            "refresh",
            "--sources",
            sources,
            "--min-usable",
            "3",
            "--timeout",
            "10s",
            "--wait",
        ])
        .await;
    // The instant it says yes, a reader opens the files.
    let txt = std::fs::read_to_string(output.join("live_proxies.txt"));
    let json = std::fs::read_to_string(output.join("live_proxies.json"));
    assert_eq!(out.code, 0, "{out:?}");
    let job_id = out.stdout.lines().next().unwrap().trim().to_string();
    let mut client = coordinator.client().await;
    let job = harness::job(&mut client, &job_id).await;
    assert_eq!(
        job.state,
        pb::JobState::Checking as i32,
        "the preflight said yes before the black holes timed out: {job:?}"
    );
    let txt = txt.unwrap_or_else(|e| {
        panic!(
            "refresh --wait said {:?}, but a reader found no live_proxies.txt in {}: {e}",
            out.stdout,
            output.display()
        )
    });
    let lines: BTreeSet<String> = txt.lines().map(str::to_string).collect();
    assert!(
        lines.len() >= 3,
        "refresh --wait said {:?}, but live_proxies.txt holds {lines:?}",
        out.stdout
    );
    assert!(lines.is_subset(&working), "only usable proxies: {lines:?}");
    let json: serde_json::Value = serde_json::from_str(&json.unwrap()).unwrap();
    assert!(json.as_array().unwrap().len() >= 3, "{json}");
    // It says where, and how many the files held.
    let txt_path = std::fs::canonicalize(output.join("live_proxies.txt")).unwrap();
    let said = out
        .stderr
        .lines()
        .find(|l| l.contains("usable proxies are fresh"))
        .unwrap_or_default();
    assert!(
        said.ends_with(&format!(
            "usable proxies are fresh in {} (job {job_id}, CHECKING)",
            txt_path.display()
        )),
        "{out:?}"
    );
    let said_usable: usize = said.split_whitespace().next().unwrap().parse().unwrap();
    assert!(said_usable >= 3 && said_usable <= lines.len(), "{said:?}");

    // At its end the files hold every usable proxy of the refresh.
    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    harness::wait_for("the refresh's end in its files", WAIT_LIMIT, || {
        let mut client = client.clone();
        let job_id = job_id.clone();
        async move {
            let job = harness::job(&mut client, &job_id).await;
            (job.progress.unwrap().pool_files_usable == 6).then_some(())
        }
    })
    .await;
    let last = std::fs::read_to_string(output.join("live_proxies.txt")).unwrap();
    assert_eq!(
        last.lines().map(str::to_string).collect::<BTreeSet<_>>(),
        working
    );

    // A refresh that never has enough: the pool's live set, as its files show it, keeps every
    // proxy the last refresh found (this one finds them again) and never shrinks while it runs.
    let running = Arc::new(AtomicBool::new(true));
    let reader = {
        let running = running.clone();
        let path = output.join("live_proxies.json");
        std::thread::spawn(move || {
            let mut reads = Vec::new();
            while running.load(Ordering::SeqCst) {
                let text = std::fs::read_to_string(&path).unwrap();
                let json: serde_json::Value = serde_json::from_str(&text).unwrap();
                let proxies: BTreeSet<String> = json
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|entry| entry["proxy"].as_str().unwrap().to_string())
                    .collect();
                reads.push(proxies);
                std::thread::sleep(Duration::from_millis(5));
            }
            reads
        })
    };
    let out = coordinator
        .cli(&[
            "refresh",
            "--sources",
            sources,
            "--min-usable",
            "50",
            "--timeout",
            "3s",
            "--wait",
        ])
        .await;
    running.store(false, Ordering::SeqCst);
    assert_eq!(out.code, 3, "6 usable of 50 wanted: {out:?}");
    let job_id = out.stdout.lines().next().unwrap().trim().to_string();
    let job = harness::job(&mut client, &job_id).await;
    assert_eq!(job.state, pb::JobState::Insufficient as i32, "{job:?}");
    let reads = reader.join().expect("the reader read whole files");
    assert!(!reads.is_empty());
    assert!(
        reads.iter().all(|read| *read == working),
        "every read held the live set, the six working proxies: {reads:?}"
    );
    assert_eq!(job.progress.unwrap().pool_files_usable, 6);
}
