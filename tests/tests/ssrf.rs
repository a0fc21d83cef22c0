//! Every spelling of an inside address is refused, wherever a URL or an address enters: as a
//! source URL, a redirect target, a judge URL and a candidate. A loopback server counts the
//! connections it gets, and the test holds only if it gets none.
//!
//! It runs in a network namespace of its own with a hosts file of its own (names that resolve
//! inside, to both, or are re-pointed after submit). The public-looking side is 192.0.2.1
//! (TEST-NET-1) in a second namespace, joined to the first by a veth pair whose near end,
//! 192.0.2.2, is an address of the coordinator's own machine and so inside too. Neither
//! namespace has any other interface: no packet can leave the machine.

use std::path::Path;
use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_proto::v1::coordinator_client::CoordinatorClient;
use proxyfleet_tests::harness::{self, CoordinatorProc, TempDir};
use proxyfleet_tests::lists::{Answer, ListServer};
use tonic::transport::Channel;

/// The address that stands for "public": the far end of the veth pair, in its own namespace.
const PUBLIC: &str = "192.0.2.1";
/// The near end of the veth pair: public-looking, but an address of the coordinator's machine.
const OWN: &str = "192.0.2.2";
/// The namespace that holds [`PUBLIC`].
const PUBLIC_NETNS: &str = "pf-public";
/// Tells the inner test where its hosts file is (and that it runs inside the namespace).
const HOSTS_VAR: &str = "PROXYFLEET_SSRF_HOSTS";

fn hosts_file(repointed: bool) -> String {
    let repoint = if repointed { "127.0.0.1" } else { PUBLIC };
    format!(
        "127.0.0.1 localhost\n::1 localhost\n127.0.0.1 inside.test\n{PUBLIC} mixed.test\n127.0.0.1 mixed.test\n::1 inside6.test\n{repoint} repoint.test\n{PUBLIC} public.test\n{OWN} own.test\n"
    )
}

#[tokio::test]
async fn every_spelling_of_an_inside_address_is_refused_in_a_namespace_of_its_own() {
    let dir = TempDir::new("ssrf");
    let hosts = dir.write("hosts", hosts_file(false));
    let exe = std::env::current_exe().expect("test executable");
    // The test's namespace gets loopback, one end of a veth pair (OWN) and /etc/hosts of its own;
    // the other end (PUBLIC) lives in a second namespace. The inner test runs in the first.
    let script = [
        "set -e".to_string(),
        "ip link set lo up".into(),
        // Namespace names live on a tmpfs of this mount namespace: nothing is left behind, and
        // runs side by side do not meet.
        "mkdir -p /run/netns".into(),
        "mount -t tmpfs -o size=1m proxyfleet-netns /run/netns".into(),
        format!("ip netns add {PUBLIC_NETNS}"),
        format!("ip link add pf-near type veth peer name pf-far netns {PUBLIC_NETNS}"),
        format!("ip addr add {OWN}/24 dev pf-near"),
        "ip link set pf-near up".into(),
        format!("ip netns exec {PUBLIC_NETNS} ip link set lo up"),
        format!("ip netns exec {PUBLIC_NETNS} ip addr add {PUBLIC}/24 dev pf-far"),
        format!("ip netns exec {PUBLIC_NETNS} ip link set pf-far up"),
        format!("mount --bind \"${HOSTS_VAR}\" /etc/hosts"),
        "exec \"$0\" --exact inner_every_form_is_refused --ignored --nocapture --test-threads 1"
            .into(),
    ]
    .join("; ");
    let mut command = tokio::process::Command::new("unshare");
    command
        .args(["--net", "--mount", "--propagation", "private", "--"])
        .args(["sh", "-c", &script])
        .arg(&exe)
        .env(HOSTS_VAR, &hosts)
        .kill_on_drop(true);
    let run = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("the namespace run ended within 300s")
        .expect("unshare runs (the tests run as root, with util-linux and iproute2)");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "the run in the namespace failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    println!("{stdout}");
    assert!(
        stdout.contains("1 passed"),
        "the inner test did not run:\n{stdout}\n{stderr}"
    );
}

/// Host spellings of the loopback address (and names for it), each with the inside server's port.
fn inside_hosts() -> Vec<&'static str> {
    vec![
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "0x7f.0.0.1",
        "0177.0.0.1",
        "017700000001",
        "127.000.000.001",
        "127.1",
        "127.0.1",
        "0",
        "0.0.0.0",
        "[::1]",
        "[::]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "[0:0:0:0:0:ffff:127.0.0.1]",
        "localhost",
        "inside.test",
        "inside6.test",
        "mixed.test",
        "repoint.test",
        OWN,
        "own.test",
    ]
}

/// A listener on `PUBLIC`, port 0, bound from a thread that joins the public namespace (the
/// socket stays there; the test's other threads stay where they are).
fn bind_public() -> std::net::TcpListener {
    std::thread::spawn(|| {
        use std::os::fd::AsRawFd;
        let netns = std::fs::File::open(format!("/run/netns/{PUBLIC_NETNS}"))
            .expect("the public namespace made by the outer test");
        // SAFETY: setns on an open namespace file changes only this thread's network namespace.
        let joined = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(joined, 0, "setns: {}", std::io::Error::last_os_error());
        std::net::TcpListener::bind((PUBLIC, 0)).expect("a listener on the public address")
    })
    .join()
    .expect("the binding thread")
}

/// URLs that reach the inside server on `port`: every host spelling, plus the tricks where the
/// public address sits in the user info, behind a backslash or in the fragment.
fn inside_urls(port: u16, path: &str) -> Vec<String> {
    let mut urls: Vec<String> = inside_hosts()
        .into_iter()
        .map(|host| format!("http://{host}:{port}{path}"))
        .collect();
    urls.extend([
        format!("http://127.0.0.1:{port}\\@{PUBLIC}{path}"),
        format!("http://127.0.0.1:{port}\\\\@{PUBLIC}{path}"),
        format!("http://{PUBLIC}@127.0.0.1:{port}{path}"),
        format!("http://{PUBLIC}:80@127.0.0.1:{port}{path}"),
        format!("http://127.0.0.1:{port}#@{PUBLIC}{path}"),
        format!("http://127.0.0.1:{port}?@{PUBLIC}{path}"),
        format!("http://user:pass@127.0.0.1:{port}{path}"),
        format!("HTTP://LOCALHOST:{port}{path}"),
        format!("http://%31%32%37.0.0.1:{port}{path}"),
        format!("http:\\\\127.0.0.1:{port}{path}"),
    ]);
    urls
}

fn request() -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        deadline_ms: 600_000,
        timeout_ms: 2_000,
        min_usable: Some(1),
        ..pb::SubmitJobRequest::default()
    }
}

/// Submits a job of sources and waits until every source is fetched or failed (no worker runs
/// yet, so the job is then cancelled); a refused submission is as good as a source that reaches
/// nothing. Returns what happened, for the failure message.
async fn source_outcome(
    client: &mut CoordinatorClient<Channel>,
    what: &str,
    request: pb::SubmitJobRequest,
) -> String {
    let id = match client.submit_job(request).await {
        Err(status) => return format!("{what}: refused at submit: {}", status.message()),
        Ok(response) => response.into_inner().job_id,
    };
    let job = harness::wait_for(
        &format!("the sources of {id} to be read"),
        Duration::from_secs(60),
        || {
            let mut client = client.clone();
            let id = id.clone();
            async move {
                let job = harness::job(&mut client, &id).await;
                let read = job
                    .sources
                    .iter()
                    .all(|s| s.state == "fetched" || s.state == "failed");
                (read || job.state >= pb::JobState::Succeeded as i32).then_some(job)
            }
        },
    )
    .await;
    let _ = client
        .cancel_job(pb::CancelJobRequest { job_id: id.clone() })
        .await;
    let sources: Vec<String> = job
        .sources
        .iter()
        .map(|s| format!("{} {}", s.state, s.error))
        .collect();
    format!("{what}: job {id} {sources:?}")
}

#[tokio::test]
#[ignore = "runs inside the namespace of every_spelling_of_an_inside_address_is_refused_in_a_namespace_of_its_own"]
async fn inner_every_form_is_refused() {
    let hosts = std::env::var(HOSTS_VAR).expect("run by the namespace test, which sets the hosts");
    // The inside server, on every address of this namespace (loopback, v4 and v6, and OWN):
    // anything it accepts is an escape.
    let inside = ListServer::spawn(
        "::".parse().unwrap(),
        vec![
            (
                "/list",
                vec![Answer::Body(200, "203.0.113.5:8080\n".into())],
            ),
            ("/judge", vec![Answer::Body(200, "{}".into())]),
        ],
    )
    .await
    .unwrap();
    let port = inside.addr.port();
    // The public side: a list, a redirect to it, and redirects to every inside URL.
    let targets = inside_urls(port, "/list");
    let redirect_paths: Vec<String> = (0..targets.len()).map(|i| format!("/r/{i}")).collect();
    let public_listener = bind_public();
    let public_port = public_listener.local_addr().unwrap().port();
    let mut routes: Vec<(&str, Vec<Answer>)> = vec![
        (
            "/list",
            vec![Answer::Body(200, format!("{PUBLIC}:9\n203.0.113.6:8080\n"))],
        ),
        (
            "/to-public",
            vec![Answer::Redirect(format!(
                "http://public.test:{public_port}/followed"
            ))],
        ),
        (
            "/followed",
            vec![Answer::Body(200, "203.0.113.7:8080\n".into())],
        ),
    ];
    for (path, target) in redirect_paths.iter().zip(&targets) {
        routes.push((path.as_str(), vec![Answer::Redirect(target.clone())]));
    }
    let public = ListServer::spawn_listening(public_listener, routes).unwrap();
    // A public proxy candidate, counted apart from the lists.
    let public_proxy = ListServer::spawn_listening(bind_public(), Vec::new()).unwrap();

    // Every form is its own job, all queued at once on one pool.
    let coordinator = CoordinatorProc::start_public(&["--max-active-jobs", "1000"]).await;
    let mut client = coordinator.client().await;
    let mut seen = Vec::new();

    // The control: a public source is fetched, so refusals below are the guard's doing.
    let mut control = request();
    control.sources = vec![pb::SourceSpec {
        url: format!("http://public.test:{}/list", public.addr.port()),
        ..pb::SourceSpec::default()
    }];
    seen.push(source_outcome(&mut client, "public source", control).await);
    assert_eq!(public.hits("/list"), 1, "{seen:?}");
    let mut control = request();
    control.sources = vec![pb::SourceSpec {
        url: public.url("/to-public"),
        ..pb::SourceSpec::default()
    }];
    seen.push(source_outcome(&mut client, "redirect to a public source", control).await);
    assert_eq!(public.hits("/followed"), 1, "{seen:?}");

    // As a source URL, and as the target of a public source's redirect.
    for url in &targets {
        let mut r = request();
        r.sources = vec![pb::SourceSpec {
            url: url.clone(),
            ..pb::SourceSpec::default()
        }];
        seen.push(source_outcome(&mut client, &format!("source {url}"), r).await);
    }
    for (path, target) in redirect_paths.iter().zip(&targets) {
        let mut r = request();
        r.sources = vec![pb::SourceSpec {
            url: public.url(path),
            ..pb::SourceSpec::default()
        }];
        seen.push(source_outcome(&mut client, &format!("redirect to {target}"), r).await);
    }
    for path in &redirect_paths {
        assert!(public.hits(path) >= 1, "{path} was not asked: {seen:?}");
    }
    assert_eq!(
        inside.connections(),
        0,
        "a source reached inside: {seen:#?}"
    );

    // As a judge URL: refused at submit, or refused where the worker dials it. The re-pointed
    // name passes at submit and points inside before any worker asks.
    let candidate = format!("{PUBLIC}:{}", public.addr.port());
    let mut judge_jobs = Vec::new();
    for url in inside_urls(port, "/judge") {
        let mut r = request();
        r.candidates = vec![candidate.clone()];
        r.judge_urls = vec![url.clone()];
        match client.submit_job(r).await {
            Err(status) => seen.push(format!(
                "judge {url}: refused at submit: {}",
                status.message()
            )),
            Ok(response) => judge_jobs.push((url, response.into_inner().job_id)),
        }
    }
    assert!(
        judge_jobs
            .iter()
            .any(|(url, _)| url.contains("repoint.test")),
        "the re-pointed judge should pass at submit: {seen:#?}"
    );
    // As a candidate, every spelling, bare and with a scheme.
    let mut candidate_jobs = Vec::new();
    for host in inside_hosts() {
        for line in [
            format!("{host}:{port}"),
            format!("http://{host}:{port}"),
            format!("socks5://{host}:{port}"),
        ] {
            let mut r = request();
            r.candidates = vec![line.clone()];
            match client.submit_job(r).await {
                Err(status) => {
                    seen.push(format!("candidate {line}: refused: {}", status.message()))
                }
                Ok(response) => candidate_jobs.push((line, response.into_inner().job_id)),
            }
        }
    }
    // The control for candidates: a public one is dialled.
    let mut r = request();
    r.candidates = vec![public_proxy.addr.to_string()];
    let control_id = client.submit_job(r).await.unwrap().into_inner().job_id;

    std::fs::write(&hosts, hosts_file(true)).unwrap();
    let resolved = tokio::net::lookup_host(("repoint.test", 80)).await.unwrap();
    assert!(resolved.into_iter().all(|a| a.ip().is_loopback()));
    let _worker = coordinator.worker("w1", &[]);

    for (what, id) in judge_jobs
        .iter()
        .map(|(url, id)| (format!("judge {url}"), id))
        .chain(
            candidate_jobs
                .iter()
                .map(|(line, id)| (format!("candidate {line}"), id)),
        )
    {
        let job = harness::wait_terminal(&mut client, id, Duration::from_secs(60)).await;
        seen.push(format!("{what}: ended {} ({})", job.state, job.reason));
    }
    harness::wait_terminal(&mut client, &control_id, Duration::from_secs(60)).await;
    assert!(
        public_proxy.connections() > 0,
        "the worker never dialled the public candidate: {seen:#?}"
    );

    // What a client can learn of a refused judge: that it was refused, not what answered there.
    let workers = harness::workers(&mut client).await;
    let repointed: Vec<&pb::JudgeStatus> = workers
        .iter()
        .flat_map(|w| &w.judges)
        .filter(|judge| judge.url.contains("repoint.test"))
        .collect();
    assert!(
        !repointed.is_empty(),
        "no report of the re-pointed judge: {workers:?}"
    );
    for judge in repointed {
        assert!(!judge.ok, "{judge:?}");
        assert!(
            judge.error.contains("does not allow"),
            "the refused judge's error says more than that it was refused: {judge:?}"
        );
    }
    println!("{}", seen.join("\n"));
    assert_eq!(
        inside.connections(),
        0,
        "something reached the inside server: {seen:#?}"
    );
    assert!(Path::new(&hosts).exists());
}
