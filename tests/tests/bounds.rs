//! What a source or a worker sends cannot grow the coordinator without bound: sources are read as
//! they stream, and a worker's texts are cut before they are stored.

use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_proto::v1::workers_client::WorkersClient;
use proxyfleet_tests::harness::{self, CoordinatorProc};
use proxyfleet_tests::lists::{Answer, ListServer};
use tokio_stream::wrappers::ReceiverStream;

/// Peak resident memory of a process, in bytes (VmHWM).
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in /proc status");
    kb * 1024
}

/// Endless sources of every shape: one line, lines of one proxy, a JSON array, an HTML table.
fn endless_shapes() -> Vec<Answer> {
    let of = |start: &str, repeat: &str| Answer::EndlessOf {
        start: start.into(),
        repeat: repeat.into(),
    };
    vec![
        of("", "x"),
        Answer::Endless,
        of("[", "\"203.0.113.9:8080\", "),
        of(
            "<html><table>",
            "<tr><td>203.0.113.9</td><td>8080</td></tr>\n",
        ),
        of("", "x"),
        Answer::Endless,
        of(
            "{\"data\": [",
            "{\"ip\": \"203.0.113.9\", \"port\": 8080}, ",
        ),
        of("", "203.0.113.9:8080 "),
    ]
}

/// Eight sources that never end, fetched at once up to their size limit: held whole, eight
/// sources at the default 64 MiB limit took the coordinator near a gigabyte. Read as they stream,
/// it stays under 64 MiB (about 22-35 MiB here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_endless_sources_at_once_keep_the_coordinator_small() {
    const BOUND: u64 = 64 * 1024 * 1024;
    let paths: Vec<String> = (0..8).map(|i| format!("/endless/{i}")).collect();
    let lists = ListServer::spawn(
        [127, 0, 0, 1].into(),
        paths
            .iter()
            .zip(endless_shapes())
            .map(|(p, answer)| (p.as_str(), vec![answer]))
            .collect(),
    )
    .await
    .unwrap();
    // 16 MB a source: held whole, eight of them took a quarter of a gigabyte.
    let coordinator = CoordinatorProc::start(&["--max-source-bytes", "16000000"]).await;
    let mut client = coordinator.client().await;
    let job_id = client
        .submit_job(pb::SubmitJobRequest {
            sources: paths
                .iter()
                .map(|p| pb::SourceSpec {
                    url: lists.url(p),
                    ..pb::SourceSpec::default()
                })
                .collect(),
            deadline_ms: 600_000,
            ..pb::SubmitJobRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let job = harness::wait_terminal(&mut client, &job_id, Duration::from_secs(240)).await;
    assert_eq!(job.sources.len(), 8);
    // Each ends at its size limit or, on a busy machine, at the fetch timeout (then it is tried
    // again, and memory must hold through every attempt).
    for source in &job.sources {
        assert_eq!(source.state, "failed", "{source:?}");
        assert!(
            ["limit", "not read", "no complete answer"]
                .iter()
                .any(|why| source.error.contains(why)),
            "{source:?}"
        );
    }
    let peak = peak_rss(coordinator.proc.pid());
    println!("coordinator peak: {} MiB", peak >> 20);
    assert!(
        peak < BOUND,
        "the coordinator peaked at {} MiB reading 8 endless sources (bound {} MiB)",
        peak >> 20,
        BOUND >> 20
    );
}

/// A worker that answers a lease with a megabyte of detail per verdict: the coordinator stores and
/// serves at most a short text. A worker id of kilobytes is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_verdict_detail_is_cut_before_it_is_stored() {
    let coordinator = CoordinatorProc::start(&[]).await;
    let mut client = coordinator.client().await;
    let job_id = coordinator
        .submit(
            &["203.0.113.1:8080".into(), "203.0.113.2:8080".into()],
            &["--chunk-size", "10"],
        )
        .await;
    let (to_coordinator, outgoing) = tokio::sync::mpsc::channel(8);
    to_coordinator
        .send(pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Hello(pb::Hello {
                worker_id: "verbose".into(),
                name: "verbose".into(),
                version: "test".into(),
                capacity: 1,
                max_checks: 10,
            })),
        })
        .await
        .unwrap();
    let mut incoming = WorkersClient::connect(coordinator.url.clone())
        .await
        .unwrap()
        .session(ReceiverStream::new(outgoing))
        .await
        .unwrap()
        .into_inner();
    let assign = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match incoming.message().await.unwrap() {
                Some(pb::CoordinatorMessage {
                    kind: Some(pb::coordinator_message::Kind::Assign(a)),
                }) => return a,
                Some(_) => continue,
                None => panic!("the session ended before a lease"),
            }
        }
    })
    .await
    .expect("a lease within 30s");
    let verdicts = assign
        .candidates
        .iter()
        .map(|c| pb::Verdict {
            index: c.index,
            reason: pb::Reason::Refused as i32,
            detail: "x".repeat(1 << 20),
            exit_ip: "9".repeat(4096),
            ..pb::Verdict::default()
        })
        .collect();
    to_coordinator
        .send(pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Verdicts(pb::Verdicts {
                lease_id: assign.lease_id,
                job_id: assign.job_id.clone(),
                verdicts,
                first: None,
                chunk_id: None,
            })),
        })
        .await
        .unwrap();
    harness::wait_terminal(&mut client, &job_id, Duration::from_secs(60)).await;
    // A worker id is an identity, not a text to cut: an oversized one is refused.
    let (hello, greeting) = tokio::sync::mpsc::channel(1);
    hello
        .send(pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Hello(pb::Hello {
                worker_id: "w".repeat(4096),
                capacity: 1,
                ..pb::Hello::default()
            })),
        })
        .await
        .unwrap();
    let refused = match WorkersClient::connect(coordinator.url.clone())
        .await
        .unwrap()
        .session(ReceiverStream::new(greeting))
        .await
    {
        Err(status) => status,
        Ok(session) => session.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("longer than"), "{refused:?}");
    let results = harness::results(&mut client, &job_id).await;
    assert_eq!(results.len(), 2);
    for row in results {
        assert!(
            !row.detail.is_empty() && row.detail.len() <= 512,
            "a detail of {} bytes was stored",
            row.detail.len()
        );
    }
}
