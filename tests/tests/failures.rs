//! Jobs that cannot finish normally still end: a chunk whose every worker dies is cut in halves
//! after max attempts rather than failed, and a job with no worker fails at its deadline.

use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, WAIT_LIMIT};
use proxyfleet_tests::sim::Farm;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_whose_holders_all_die_is_cut_in_halves_after_max_attempts() {
    let farm = Farm::spawn([127, 0, 0, 1].into(), 1, 50, 49).await.unwrap();
    // Chunk 0: the working proxy and the refused ones (quick). Chunk 1: black holes (slow).
    let mut lines = farm.working_lines();
    lines.extend(farm.refused.iter().map(|a| format!("http://{a}")));
    lines.extend(farm.black_holes.iter().map(|p| p.candidate_line()));
    let coordinator = CoordinatorProc::start(&["--lease-ttl", "30s", "--max-attempts", "3"]).await;
    let job_id = coordinator
        .submit(
            &lines,
            &["--timeout", "60s", "--chunk-size", "50", "--keep-order"],
        )
        .await;
    let mut client = coordinator.client().await;

    // Every worker that takes chunk 1 dies with it.
    for attempt in 1..=3u32 {
        let name = format!("victim{attempt}");
        let mut victim = coordinator.worker(&name, &["--max-checks", "100"]);
        let holder = name.clone();
        harness::wait_for(&format!("{name} to take chunk 1"), WAIT_LIMIT, || {
            let mut client = client.clone();
            let job_id = job_id.clone();
            let holder = holder.clone();
            async move {
                let job = harness::job(&mut client, &job_id).await;
                // Chunk 0 is quick: let it finish so only chunk 1 is lost with the victim.
                let quick_done = job.chunks[0].state == pb::ChunkState::Done as i32;
                (job.chunks[1].holder == holder && quick_done).then_some(())
            }
        })
        .await;
        victim.signal(libc::SIGKILL);
        victim
            .wait(Duration::from_secs(30))
            .await
            .expect("the victim died");
        let job = harness::wait_for("the chunk to be taken back", WAIT_LIMIT, || {
            let mut client = client.clone();
            let job_id = job_id.clone();
            async move {
                let job = harness::job(&mut client, &job_id).await;
                (job.chunks[1].attempts == attempt).then_some(job)
            }
        })
        .await;
        let expected = if attempt < 3 {
            pb::ChunkState::Queued
        } else {
            pb::ChunkState::Split
        };
        assert_eq!(
            job.chunks[1].state, expected as i32,
            "after attempt {attempt}: {:?}",
            job.chunks[1]
        );
    }

    // Its unchecked proxies are queued again in two pieces of 25, each with one attempt left.
    let job = harness::job(&mut client, &job_id).await;
    let pieces: Vec<(i32, u32, u32)> = job.chunks[2..]
        .iter()
        .map(|c| (c.state, c.size, c.attempts))
        .collect();
    assert_eq!(
        pieces,
        [(pb::ChunkState::Queued as i32, 25, 2); 2],
        "{:?}",
        job.chunks
    );
    let p = job.progress.clone().unwrap();
    assert_eq!(job.state, pb::JobState::Checking as i32, "{job:?}");
    assert_eq!((p.chunks_done, p.chunks_failed, p.chunks_queued), (1, 0, 2));
    assert_eq!((p.proxies_checked, p.proxies_total), (50, 100));

    // A cancel ends it, with the pieces' proxies unchecked.
    let out = coordinator.cli(&["cancel", &job_id]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Cancelled as i32, "{job:?}");
    let results = harness::results(&mut client, &job_id).await;
    assert_eq!(results.len(), 100);
    let unchecked: Vec<_> = results.iter().filter(|r| !r.checked).collect();
    assert_eq!(unchecked.len(), 50);
    assert!(
        unchecked
            .iter()
            .all(|r| r.reason == pb::Reason::Unchecked as i32)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_workers_fails_at_its_deadline_with_the_reason() {
    let coordinator = CoordinatorProc::start(&[]).await;
    let list = coordinator
        .dir
        .write("candidates.txt", "127.0.0.1:9\n127.0.0.1:10\n");
    let out = coordinator
        .cli(&[
            "submit",
            "--file",
            list.to_str().unwrap(),
            "--deadline",
            "2s",
            "--wait",
        ])
        .await;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("FAILED"), "{out:?}");
    assert!(
        out.stderr
            .contains("deadline of 2s passed with 0 of 2 proxies checked"),
        "{out:?}"
    );
    assert!(out.stderr.contains("no worker is connected"), "{out:?}");
    let job_id = out.stdout.lines().next().unwrap().trim().to_string();
    let mut client = coordinator.client().await;
    let job = harness::job(&mut client, &job_id).await;
    assert_eq!(job.state, pb::JobState::Failed as i32);
    let results = harness::results(&mut client, &job_id).await;
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| !r.checked));
}
