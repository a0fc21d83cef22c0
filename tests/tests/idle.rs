//! Idle connections cannot starve the coordinator: connections that send nothing are closed at
//! the first-request deadline on the gRPC port and on the judge, the accept loop pauses instead of
//! spinning at the descriptor limit, and a new client is answered while the flood lasts.

use std::net::SocketAddr;
use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Descriptors the coordinator may hold in the flood test.
const OPEN_FILES: u64 = 1024;

/// Idle connections opened against it: more than it can hold.
const FLOOD: usize = 1200;

/// Longest a connection may stay open in these tests: a flooder's connection waits in the
/// listen queue until the first ones are closed, then gets its own deadline.
const CLOSED_WITHIN: Duration = Duration::from_secs(60);

/// Opens `count` connections to `addr`, all at once, each bounded.
async fn open(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut connecting = JoinSet::new();
    for _ in 0..count {
        connecting.spawn(tokio::time::timeout(
            Duration::from_secs(20),
            TcpStream::connect(addr),
        ));
    }
    let mut open = Vec::with_capacity(count);
    while let Some(done) = connecting.join_next().await {
        let stream = done
            .expect("a connect task")
            .unwrap_or_else(|_| panic!("connecting to {addr} took over 20s"))
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        open.push(stream);
    }
    open
}

/// Watches each stream until the other end closes it (EOF or reset), reading and dropping what
/// it sends first (an HTTP/2 server's SETTINGS); each watch is bounded by [`CLOSED_WITHIN`].
/// Sends nothing.
fn watch_closed(streams: Vec<TcpStream>) -> JoinSet<bool> {
    let mut watching = JoinSet::new();
    for mut stream in streams {
        watching.spawn(async move {
            let mut buf = [0u8; 512];
            tokio::time::timeout(CLOSED_WITHIN, async {
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await
            .is_ok()
        });
    }
    watching
}

/// How many of the watched streams the other end closed in time.
async fn count_closed(mut watching: JoinSet<bool>) -> usize {
    let mut closed = 0;
    while let Some(done) = watching.join_next().await {
        closed += usize::from(done.expect("a watch task"));
    }
    closed
}

/// CPU time (user + system) a process has used so far, from /proc/PID/stat.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc stat");
    // The command name may hold spaces; the fields after it are plain.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a stat line")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line; fields[0] is field 3.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf(3) only reads a system setting.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// Descriptors a process holds open.
fn open_descriptors(pid: i32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count() as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_the_descriptor_limit_are_closed_without_spinning_or_locking_out_clients()
 {
    // This test holds 1,200 sockets itself.
    proxyfleet_common::net::raise_open_files_limit().expect("raising the open files limit");
    let coordinator =
        CoordinatorProc::start_with_open_files(&["--first-request-timeout", "8s"], OPEN_FILES)
            .await;
    let pid = coordinator.proc.pid();

    let flood = open(coordinator.grpc, FLOOD).await;
    let watching = watch_closed(flood);
    harness::wait_for(
        "the coordinator to hold as many descriptors as it may",
        Duration::from_secs(6),
        || async { (open_descriptors(pid) >= OPEN_FILES - 4).then_some(()) },
    )
    .await;

    // At the limit, with connections waiting to be accepted, it does not spin.
    let before = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_time(pid) - before;
    assert!(
        used < Duration::from_millis(500),
        "the coordinator used {used:?} of CPU in 3s at its descriptor limit; log:\n{}",
        coordinator.proc.log_text()
    );

    // A new client is answered while the flood lasts: the idle ones are closed at their
    // deadline, and it is accepted then.
    let answer = tokio::time::timeout(Duration::from_secs(15), async {
        let mut client = coordinator.client().await;
        client.list_jobs(pb::ListJobsRequest {}).await
    })
    .await;
    match answer {
        Ok(Ok(_)) => {}
        Ok(Err(status)) => panic!("ListJobs failed during the flood: {status}"),
        Err(_) => panic!(
            "ListJobs got no answer within 15s during the flood; log:\n{}",
            coordinator.proc.log_text()
        ),
    }

    // Every idle connection is closed by the coordinator, those queued behind the first included.
    let closed = count_closed(watching).await;
    assert_eq!(
        closed, FLOOD,
        "idle connections left open after {CLOSED_WITHIN:?}"
    );

    // And it keeps serving.
    let mut client = coordinator.client().await;
    client
        .list_jobs(pb::ListJobsRequest {})
        .await
        .expect("ListJobs after the flood");
}

/// The judge's address, from its URL (`http://127.0.0.1:PORT/judge`).
fn judge_addr(coordinator: &CoordinatorProc) -> SocketAddr {
    coordinator
        .judge_url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .expect("an http judge URL")
        .parse()
        .expect("a judge address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_to_the_judge_are_closed_and_requests_still_answered() {
    let coordinator = CoordinatorProc::start(&["--first-request-timeout", "2s"]).await;
    let judge = judge_addr(&coordinator);

    let idle = open(judge, 200).await;
    // A request head that starts and never ends is no request either.
    let mut slow = open(judge, 20).await;
    for stream in &mut slow {
        stream
            .write_all(b"GET /judge?token=slow HTTP/1.1\r\nHost: judge\r\n")
            .await
            .unwrap();
    }
    let idle = watch_closed(idle);
    let slow = watch_closed(slow);

    // Meanwhile a check's request is answered.
    let mut check = TcpStream::connect(judge).await.unwrap();
    check
        .write_all(b"GET /judge?token=t0k3n HTTP/1.1\r\nHost: judge\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(15), check.read_to_string(&mut response))
        .await
        .expect("the judge answers within 15s during the flood")
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("t0k3n"), "{response}");

    assert_eq!(
        count_closed(idle).await,
        200,
        "idle judge connections left open"
    );
    assert_eq!(count_closed(slow).await, 20, "half-sent requests left open");
}
