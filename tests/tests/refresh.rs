//! The refresh pipeline end to end: sources fetched by the coordinator (plain, HTML, JSON, a flaky
//! one retried, a dead one and an endless one reported), output files written atomically while a
//! reader polls them, `proxyfleet refresh --wait` and its exit codes, and scheduled refreshes that
//! never overlap.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, WAIT_LIMIT};
use proxyfleet_tests::lists::{Answer, ListServer};
use proxyfleet_tests::sim::{Farm, SimProxy};

fn host_port(line: &str) -> String {
    line.rsplit('@')
        .next()
        .unwrap()
        .rsplit("://")
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_of_every_shape_are_fetched_merged_and_reported() {
    let farm = Farm::spawn([127, 0, 0, 1].into(), 6, 0, 6).await.unwrap();
    let working = farm.working_lines(); // http, socks5 (auth), http, socks5, http, socks5
    let refused: Vec<String> = farm.refused.iter().map(|a| a.to_string()).collect();
    // Plain text with junk; the first working proxy appears here and again in the HTML table.
    let plain = format!(
        "# my list\n{}\n{}\n10.0.0.0/24\nnot a proxy\n{}   US elite\n",
        working[0],
        refused[0],
        host_port(&working[2])
    );
    let (ip0, port0) = host_port(&working[0])
        .rsplit_once(':')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .unwrap();
    let (ip4, port4) = host_port(&working[4])
        .rsplit_once(':')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .unwrap();
    let html = format!(
        "<html><body><table><tr><th>IP</th><th>Port</th></tr>\
         <tr><td>{ip0}</td><td>{port0}</td><td>US</td></tr>\
         <tr><td>{ip4}</td><td>{port4}</td><td>DE</td></tr>\
         <tr><td>{}</td><td>{}</td></tr></table></body></html>",
        farm.refused[1].ip(),
        farm.refused[1].port()
    );
    let socks: Vec<serde_json::Value> = [1, 3, 5]
        .iter()
        .map(|&i| {
            let (ip, port) = host_port(&working[i]).rsplit_once(':').map(|(a, b)| (a.to_string(), b.to_string())).unwrap();
            serde_json::json!({"ip": ip, "port": port.parse::<u16>().unwrap(), "protocol": "socks5", "username": "fleet", "password": "secret"})
        })
        .collect();
    let json = serde_json::json!({"data": {"proxies": socks}, "count": 3}).to_string();
    let lists = ListServer::spawn(
        [127, 0, 0, 1].into(),
        vec![
            ("/plain.txt", vec![Answer::Body(200, plain)]),
            ("/table.html", vec![Answer::Body(200, html)]),
            ("/api.json", vec![Answer::Body(200, json)]),
            (
                "/flaky.txt",
                vec![
                    Answer::Body(503, "busy".into()),
                    Answer::Body(200, format!("http://{}\n", refused[2])),
                ],
            ),
            ("/endless", vec![Answer::Endless]),
        ],
    )
    .await
    .unwrap();
    let coordinator = CoordinatorProc::start(&["--max-source-bytes", "1000000"]).await;
    let _worker = coordinator.worker("w", &["--max-checks", "32"]);
    // A sources file on the client's machine, naming a local file too.
    let local = coordinator
        .dir
        .write("local.txt", format!("{}\n", refused[3]));
    let sources = coordinator.dir.write(
        "sources.toml",
        format!(
            "[http]\nurls = [\"{}\", \"{}\"]\n\n[[source]]\nurl = \"{}\"\nprotocols = [\"http\"]\n",
            lists.url("/flaky.txt"),
            local.display(),
            lists.url("/missing.txt"),
        ),
    );
    let job_id = coordinator
        .submit(
            &[],
            &[
                "--source",
                &lists.url("/plain.txt"),
                "--source",
                &lists.url("/table.html"),
                "--source",
                &lists.url("/api.json"),
                "--source",
                &lists.url("/endless"),
                "--sources",
                sources.to_str().unwrap(),
                "--timeout",
                "2s",
                "--chunk-size",
                "4",
                "--min-usable",
                "6",
            ],
        )
        .await;
    let mut client = coordinator.client().await;
    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:#?}");
    let by_url = |path: &str| {
        job.sources
            .iter()
            .find(|s| s.url.ends_with(path))
            .unwrap_or_else(|| panic!("no {path} in {:#?}", job.sources))
    };
    assert_eq!(
        (
            by_url("/plain.txt").state.as_str(),
            by_url("/plain.txt").candidates
        ),
        ("fetched", 3)
    );
    assert_eq!(
        by_url("/plain.txt").rejected,
        2,
        "the CIDR range and the junk line"
    );
    assert_eq!(
        (
            by_url("/table.html").state.as_str(),
            by_url("/table.html").candidates
        ),
        ("fetched", 3)
    );
    assert_eq!(
        (
            by_url("/api.json").state.as_str(),
            by_url("/api.json").candidates
        ),
        ("fetched", 3)
    );
    assert_eq!(by_url("/flaky.txt").state, "fetched", "retried after 503");
    assert_eq!(lists.hits("/flaky.txt"), 2);
    assert_eq!(by_url("local.txt").state, "fetched");
    assert_eq!(by_url("/missing.txt").state, "failed");
    assert!(
        by_url("/missing.txt").error.contains("404"),
        "{:?}",
        by_url("/missing.txt")
    );
    assert_eq!(by_url("/endless").state, "failed");
    assert!(
        by_url("/endless").error.contains("larger than"),
        "{:?}",
        by_url("/endless")
    );
    assert_eq!(job.dropped.get("duplicate"), Some(&1), "{:?}", job.dropped);

    let results = harness::results(&mut client, &job_id).await;
    let usable: BTreeSet<String> = results
        .iter()
        .filter(|r| r.usable)
        .map(|r| r.proxy.clone())
        .collect();
    let expected: BTreeSet<String> = working.iter().cloned().collect();
    assert_eq!(usable, expected);
    let all: BTreeSet<&str> = results.iter().map(|r| r.proxy.as_str()).collect();
    assert_eq!(all.len(), results.len(), "each candidate once");
    assert_eq!(results.len(), 6 + 4, "6 working and 4 refused addresses");
}

/// The lines of a text file, as a set; empty when it is missing.
fn lines_of(path: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `proxyfleet refresh --sources FILE --min-usable N --wait` and `extra` options.
async fn refresh(
    coordinator: &CoordinatorProc,
    sources: &str,
    min_usable: u64,
    extra: &[&str],
) -> harness::CliOutput {
    let min_usable = min_usable.to_string();
    let mut args = vec![
        "refresh",
        "--sources",
        sources,
        "--min-usable",
        &min_usable,
        "--wait",
    ];
    args.extend_from_slice(extra);
    coordinator.cli(&args).await
}

/// Reads the output files over and over while `running`; counts reads, panics on a partial one.
fn poll_outputs(
    dir: std::path::PathBuf,
    running: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while running.load(Ordering::SeqCst) {
            if let Ok(text) = std::fs::read_to_string(dir.join("live_proxies.json")) {
                let parsed: Result<serde_json::Value, _> = serde_json::from_str(&text);
                assert!(
                    parsed.is_ok(),
                    "a reader saw a partial live_proxies.json: {text:?}"
                );
                reads.fetch_add(1, Ordering::SeqCst);
            }
            if let Ok(text) = std::fs::read_to_string(dir.join("live_proxies.txt")) {
                assert!(
                    text.is_empty() || text.ends_with('\n'),
                    "a reader saw a partial live_proxies.txt: {text:?}"
                );
                for line in text.lines() {
                    assert!(
                        line.contains("://")
                            && line.rsplit(':').next().unwrap().parse::<u16>().is_ok(),
                        "bad line {line:?}"
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_writes_outputs_atomically_and_exits_with_the_documented_codes() {
    let farm = Farm::spawn([127, 0, 0, 1].into(), 8, 4, 40).await.unwrap();
    let lists = ListServer::spawn(
        [127, 0, 0, 1].into(),
        vec![(
            "/list.txt",
            vec![Answer::Body(200, farm.candidate_lines().join("\n"))],
        )],
    )
    .await
    .unwrap();
    let coordinator = CoordinatorProc::start(&[]).await;
    let sources = coordinator.dir.write(
        "sources.toml",
        format!("[http]\nurls = [\"{}\"]\n", lists.url("/list.txt")),
    );
    let sources = sources.to_str().unwrap().to_string();
    let _worker = coordinator.worker("w", &["--max-checks", "64"]);
    let output = coordinator.dir.path().join("data").join("output");

    // Several refreshes in a row while a reader polls the outputs.
    let running = Arc::new(AtomicBool::new(true));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = poll_outputs(output.clone(), running.clone(), reads.clone());
    for _ in 0..3 {
        let out = refresh(&coordinator, &sources, 100, &["--timeout", "1s"]).await;
        assert_eq!(out.code, 3, "8 usable of 100 wanted: INSUFFICIENT: {out:?}");
    }
    running.store(false, Ordering::SeqCst);
    reader.join().expect("the reader never saw a partial file");
    assert!(
        reads.load(Ordering::SeqCst) > 0,
        "the reader read the files"
    );
    let txt = std::fs::read_to_string(output.join("live_proxies.txt")).unwrap();
    let got: BTreeSet<&str> = txt.lines().collect();
    let working = farm.working_lines();
    assert_eq!(got, working.iter().map(String::as_str).collect());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("live_proxies.json")).unwrap())
            .unwrap();
    let latencies: Vec<u64> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["latency_avg_ms"].as_u64().unwrap())
        .collect();
    assert!(
        latencies.windows(2).all(|w| w[0] <= w[1]),
        "fastest first, by recent average: {latencies:?}"
    );
    assert_eq!(
        std::fs::read_to_string(output.join("socks5.txt"))
            .unwrap()
            .lines()
            .count(),
        4
    );
    assert_eq!(
        std::fs::read_to_string(output.join("http.txt"))
            .unwrap()
            .lines()
            .count(),
        4
    );

    // Enough usable: exit 0 as soon as they are fresh, while black holes still hold the job.
    let out = refresh(&coordinator, &sources, 8, &["--timeout", "20s"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("usable proxies are fresh"), "{out:?}");
    let job_id = out.stdout.lines().next().unwrap().trim().to_string();
    let mut client = coordinator.client().await;
    let still = harness::job(&mut client, &job_id).await;
    assert_eq!(
        still.state,
        pb::JobState::Checking as i32,
        "the preflight did not wait for the black holes"
    );

    // A second refresh of the pool follows the running one instead of starting another.
    let out = refresh(&coordinator, &sources, 8, &[]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("already running"), "{out:?}");
    assert_eq!(out.stdout.lines().next().unwrap().trim(), job_id);
    let jobs = client
        .list_jobs(pb::ListJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(jobs.iter().filter(|j| !matches!(pb::JobState::try_from(j.state), Ok(s) if s >= pb::JobState::Succeeded)).count(), 1);

    // Past its timeout: exit 6 at once, the refresh goes on.
    let started = std::time::Instant::now();
    let out = refresh(&coordinator, &sources, 100, &["--wait-timeout", "1s"]).await;
    assert_eq!(out.code, 6, "{out:?}");
    assert!(out.stderr.contains("goes on"), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "bounded by --wait-timeout"
    );
    client
        .cancel_job(pb::CancelJobRequest {
            job_id: job_id.clone(),
        })
        .await
        .unwrap();

    // Every source dead: the refresh FAILS, exit 4.
    let dead = coordinator.dir.write(
        "dead.toml",
        format!("[http]\nurls = [\"{}\"]\n", lists.url("/gone.txt")),
    );
    let out = coordinator
        .cli(&["refresh", "--sources", dead.to_str().unwrap(), "--wait"])
        .await;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("every source failed"), "{out:?}");
    // The failed refresh took nothing out of the pool's live set.
    assert_eq!(
        lines_of(&output.join("live_proxies.txt")),
        txt.lines().map(str::to_string).collect()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_refreshes_never_overlap() {
    // Black holes make each refresh last its 2s check timeout; ticks come every second.
    let hole = SimProxy::spawn(
        [127, 0, 0, 1].into(),
        proxyfleet_tests::sim::Behavior::BlackHole,
    )
    .await
    .unwrap();
    let working = SimProxy::spawn([127, 0, 0, 1].into(), proxyfleet_tests::sim::Behavior::Http)
        .await
        .unwrap();
    let dir = harness::TempDir::new("scheduled");
    let list = dir.write(
        "list.txt",
        format!("{}\n{}\n", hole.candidate_line(), working.candidate_line()),
    );
    let sources = dir.write(
        "sources.toml",
        format!("[http]\nurls = [\"{}\"]\n", list.display()),
    );
    let coordinator = CoordinatorProc::start(&[
        "--sources",
        sources.to_str().unwrap(),
        "--refresh-every",
        "1s",
        "--refresh-check-timeout",
        "2s",
    ])
    .await;
    let _worker = coordinator.worker("w", &["--max-checks", "8"]);
    let mut client = coordinator.client().await;
    let mut most_running = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < deadline {
        let jobs = client
            .list_jobs(pb::ListJobsRequest {})
            .await
            .unwrap()
            .into_inner()
            .jobs;
        let running = jobs.iter().filter(|j| !matches!(pb::JobState::try_from(j.state), Ok(s) if s >= pb::JobState::Succeeded)).count();
        most_running = most_running.max(running);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let jobs = client
        .list_jobs(pb::ListJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(most_running, 1, "never two refreshes of the pool at once");
    assert!(jobs.len() >= 2, "refreshes keep coming: {}", jobs.len());
    assert!(
        jobs.len() <= 5,
        "ticks during a refresh were skipped, not queued: {}",
        jobs.len()
    );
    let done: Vec<_> = jobs
        .iter()
        .filter(|j| j.state == pb::JobState::Succeeded as i32)
        .collect();
    assert!(!done.is_empty());
    assert!(
        done.iter()
            .all(|j| j.progress.as_ref().unwrap().proxies_usable == 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_results_arrive_before_the_job_ends_each_candidate_once() {
    // Working proxies answer at once; black holes hold the job for their 5s timeout.
    let farm = Farm::spawn([127, 0, 0, 1].into(), 4, 4, 4).await.unwrap();
    let coordinator = CoordinatorProc::start(&[]).await;
    let _worker = coordinator.worker("w", &["--max-checks", "32"]);
    let lines = farm.candidate_lines();
    let job_id = coordinator
        .submit(&lines, &["--timeout", "5s", "--chunk-size", "3"])
        .await;
    let mut client = coordinator.client().await;
    let mut stream = client
        .get_results(pb::GetResultsRequest {
            job_id: job_id.clone(),
            usable_only: false,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let mut usable_while_running = 0;
    while let Some(page) = tokio::time::timeout(WAIT_LIMIT, stream.message())
        .await
        .expect("pages keep coming")
        .unwrap()
    {
        let state = harness::job(&mut client, &job_id).await.state;
        if state == pb::JobState::Checking as i32 {
            usable_while_running += page.results.iter().filter(|r| r.usable).count();
        }
        seen.extend(page.results.into_iter().map(|r| r.proxy));
    }
    assert_eq!(
        usable_while_running, 4,
        "every working proxy was streamed before the job ended"
    );
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(
        (seen.len(), unique.len()),
        (lines.len(), lines.len()),
        "each candidate exactly once"
    );
    let job = harness::job(&mut client, &job_id).await;
    assert_eq!(
        job.state,
        pb::JobState::Succeeded as i32,
        "the stream ended with the job"
    );
}
