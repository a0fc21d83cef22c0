//! What a restart and pruning leave in the data dir: after a stop or a kill -9 a pool's output
//! files hold its live set, every proxy its refreshes found, and no file is written again; a job
//! that ends while the coordinator restores it has its end stored; a job pruned by `--retain`
//! leaves no directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, TempDir, WAIT_LIMIT};
use proxyfleet_tests::sim::Farm;

/// Where and when each file under `dir` was last written: inode (a file replaced atomically
/// gets a new one), modification time and size.
fn files_under(dir: &Path) -> BTreeMap<PathBuf, (u64, i64, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let meta = std::fs::metadata(&path).expect("metadata of a listed file");
            if meta.is_dir() {
                pending.push(path);
            } else {
                files.insert(
                    path,
                    (meta.ino(), meta.mtime(), meta.mtime_nsec(), meta.size()),
                );
            }
        }
    }
    files
}

/// The proxies of a `live_proxies.json`, each with the job that checked it last.
fn json_members(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
    entries
        .iter()
        .map(|e| {
            (
                e["proxy"].as_str().unwrap_or_default().to_string(),
                e["job_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The lines of a text file, as a set; empty when it is missing.
fn lines_of(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Stops the coordinator with SIGTERM and waits until it has exited cleanly.
async fn stop(mut coordinator: CoordinatorProc) {
    let status = coordinator.stop().await;
    assert!(status.success(), "{status}");
}

/// Submits a job in its own pool that fails at its deadline (`candidate` never answers), and
/// waits until its files are written: every job restored before it was published by then.
async fn settle(coordinator: &CoordinatorProc, data: &Path, candidate: &str) {
    let job_id = coordinator
        .submit(
            &[candidate.to_string()],
            &["--pool", "marker", "--deadline", "1s", "--timeout", "30s"],
        )
        .await;
    let summary = data.join("jobs").join(&job_id).join("summary.json");
    harness::wait_for("the marker job's files", WAIT_LIMIT, || {
        let written = summary.exists();
        async move { written.then_some(()) }
    })
    .await;
    // Writes of one publish run one after another; a little time for the rest of its batch.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_a_pool_holds_its_live_set_and_no_file_is_written_again() {
    const JOBS: usize = 6;
    let farm = Farm::spawn([127, 0, 0, 1].into(), JOBS, 1, 0)
        .await
        .unwrap();
    let working = farm.working_lines();
    let black_hole = farm.black_holes[0].candidate_line();
    let listen = harness::quiet_port().to_string();
    let dir = TempDir::new("outputs");
    let data = dir.path().join("data");
    let output = data.join("output");
    let mut coordinator = CoordinatorProc::start_over(&listen, &data, &[]).await;
    let _worker = harness::worker(&coordinator.url, "w", &[], dir.path());

    // Jobs one after another in the default pool, each finding a different proxy: each joins
    // the pool's live set, and its files.
    let mut jobs = BTreeMap::new();
    for line in working.iter().take(JOBS) {
        let job_id = coordinator
            .submit(std::slice::from_ref(line), &["--timeout", "2s"])
            .await;
        let mut client = coordinator.client().await;
        let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
        assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
        // Its own files are written last, after the pool's.
        let own = data.join("jobs").join(&job_id);
        harness::wait_for("the job's files", WAIT_LIMIT, || {
            let written = own.join("summary.json").exists();
            async move { written.then_some(()) }
        })
        .await;
        assert_eq!(
            lines_of(&own.join("live_proxies.txt")),
            BTreeSet::from([line.clone()])
        );
        assert!(
            lines_of(&output.join("live_proxies.txt")).contains(line),
            "the pool's files hold the job's proxy once its own are written"
        );
        jobs.insert(line.clone(), job_id);
    }
    let pool_holds_live_set = |when: &str| {
        assert_eq!(
            json_members(&output.join("live_proxies.json")),
            jobs,
            "{when}: live_proxies.json holds every proxy found, each with its job"
        );
        assert_eq!(
            lines_of(&output.join("live_proxies.txt")),
            jobs.keys().cloned().collect::<BTreeSet<_>>(),
            "{when}: live_proxies.txt holds the live set"
        );
        assert_eq!(
            lines_of(&output.join("http.txt")),
            jobs.keys()
                .filter(|p| p.starts_with("http://"))
                .cloned()
                .collect::<BTreeSet<_>>(),
            "{when}: http.txt holds its http proxies"
        );
    };
    pool_holds_live_set("before any restart");

    for (round, how) in ["SIGTERM", "kill -9", "SIGTERM, pool files removed"]
        .into_iter()
        .enumerate()
    {
        if round == 2 {
            // Files missing at a restart are written again, from the pool's members.
            for name in ["live_proxies.json", "live_proxies.txt", "http.txt"] {
                std::fs::remove_file(output.join(name)).unwrap();
            }
        }
        let before = files_under(&data.join("jobs"))
            .into_iter()
            .chain(files_under(&output))
            .collect::<BTreeMap<_, _>>();
        if how == "kill -9" {
            coordinator.crash().await;
        } else {
            stop(coordinator).await;
        }
        coordinator = CoordinatorProc::start_over(&listen, &data, &[]).await;
        settle(&coordinator, &data, &black_hole).await;
        pool_holds_live_set(how);
        let after = files_under(&data.join("jobs"))
            .into_iter()
            .chain(files_under(&output))
            .collect::<BTreeMap<_, _>>();
        for (path, was) in &before {
            assert_eq!(
                after.get(path),
                Some(was),
                "after a restart ({how}), {} was written again",
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_ends_while_restored_has_its_end_stored() {
    let farm = Farm::spawn([127, 0, 0, 1].into(), 2, 0, 0).await.unwrap();
    let dir = TempDir::new("restored-end");
    let data = dir.path().join("data");
    let coordinator = CoordinatorProc::start_over("127.0.0.1:0", &data, &[]).await;
    let worker = coordinator.worker("w", &[]);
    let job_id = coordinator
        .submit(
            &farm.working_lines(),
            &["--timeout", "2s", "--chunk-size", "1", "--min-usable", "2"],
        )
        .await;
    let mut client = coordinator.client().await;
    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let job_dir = data.join("jobs").join(&job_id);
    harness::wait_for("the job's files", WAIT_LIMIT, || {
        let written = job_dir.join("summary.json").exists();
        async move { written.then_some(()) }
    })
    .await;
    drop(worker);
    stop(coordinator).await;

    // A store holding every verdict of the job but not its end: restoring ends it.
    let db_path = data.join("proxyfleet.db");
    let stored = |id: &str| -> (String, i64) {
        let db = rusqlite::Connection::open(&db_path).unwrap();
        db.query_row(
            "SELECT state, ended_ms FROM jobs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    {
        let db = rusqlite::Connection::open(&db_path).unwrap();
        let changed = db
            .execute(
                "UPDATE jobs SET state = 'CHECKING', ended_ms = 0, reason = '' WHERE id = ?1",
                [&job_id],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    std::fs::remove_dir_all(&job_dir).unwrap();
    assert_eq!(stored(&job_id), ("CHECKING".to_string(), 0));

    let coordinator = CoordinatorProc::start_over("127.0.0.1:0", &data, &[]).await;
    let mut client = coordinator.client().await;
    let job = harness::job(&mut client, &job_id).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    // Its files are written as for any end.
    harness::wait_for("the job's files", WAIT_LIMIT, || {
        let written = job_dir.join("summary.json").exists();
        async move { written.then_some(()) }
    })
    .await;
    // The end was shown, so it is durable: even a kill -9 keeps it.
    coordinator.crash().await;
    let (state, ended_ms) = stored(&job_id);
    assert_eq!(state, "SUCCEEDED", "the end made while restoring is stored");
    assert!(ended_ms > 0, "with its end time");

    // And it stays ended, with the same end, across another restart.
    let coordinator = CoordinatorProc::start_over("127.0.0.1:0", &data, &[]).await;
    let mut client = coordinator.client().await;
    let again = harness::job(&mut client, &job_id).await;
    assert_eq!(again.state, pb::JobState::Succeeded as i32);
    coordinator.crash().await;
    assert_eq!(stored(&job_id), (state, ended_ms));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_pruned_by_retain_leaves_no_directory() {
    let farm = Farm::spawn([127, 0, 0, 1].into(), 1, 0, 0).await.unwrap();
    let dir = TempDir::new("retain");
    let data = dir.path().join("data");
    // Not a job's: pruning leaves it alone.
    let other = data.join("jobs").join("notes");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("keep.txt"), "mine\n").unwrap();
    let coordinator = CoordinatorProc::start_over("127.0.0.1:0", &data, &["--retain", "2s"]).await;
    let _worker = coordinator.worker("w", &[]);
    let job_id = coordinator
        .submit(&farm.working_lines(), &["--timeout", "2s"])
        .await;
    let mut client = coordinator.client().await;
    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let job_dir = data.join("jobs").join(&job_id);
    let pool_file = data.join("output").join("live_proxies.txt");
    harness::wait_for("the job's files", WAIT_LIMIT, || {
        let written = job_dir.join("summary.json").exists() && pool_file.exists();
        async move { written.then_some(()) }
    })
    .await;

    // Pruned within a few seconds of its end (every 2 s, jobs ended over 2 s before).
    harness::wait_for("the job to be pruned", Duration::from_secs(30), || {
        let mut client = client.clone();
        let id = job_id.clone();
        async move {
            let found = client
                .get_job(pb::GetJobRequest {
                    job_id: id,
                    include_chunks: false,
                })
                .await;
            matches!(found, Err(s) if s.code() == tonic::Code::NotFound).then_some(())
        }
    })
    .await;
    // Removed right after its rows are.
    harness::wait_for(
        "the pruned job's directory to go",
        Duration::from_secs(10),
        || {
            let gone = !job_dir.exists();
            async move { gone.then_some(()) }
        },
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(other.join("keep.txt")).unwrap(),
        "mine\n"
    );
    assert!(pool_file.exists(), "the pool's files stay");
}
