//! The deployment on a real Docker engine: the image is one stripped binary, under the size bound.
//! `docker-compose` with one coordinator and three workers runs a job while one worker's process
//! is killed (its container is restarted by its restart policy) and another is cut off from the
//! network past its lease TTL, then reconnected; the coordinator's process is killed mid-job and
//! comes back by itself; grpcurl streams WatchJob from the host, and the metrics endpoints, the
//! workers' published on the host too, count what happened. The demo prints its proxies and exits
//! with its job's code. Runs when a Docker engine is there.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, WAIT_LIMIT};
use tokio::process::Command;

const WORKING: usize = 20;

/// The image holds one stripped binary and the libraries it links: well under this.
const IMAGE_BOUND_BYTES: u64 = 60_000_000;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn docker_engine() -> bool {
    std::process::Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A compose project of this test, taken down (volumes included) on drop.
struct Project {
    name: String,
    env: Vec<(String, String)>,
}

impl Project {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker-compose");
        command
            .current_dir(workspace())
            .args(["-p", &self.name, "--profile", "demo"])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> String {
        let out = tokio::time::timeout(WAIT_LIMIT, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("docker-compose {args:?} did not end"))
            .expect("running docker-compose");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "docker-compose {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    async fn containers(&self, service: &str) -> Vec<String> {
        self.run(&["ps", "-q", service])
            .await
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let mut down = std::process::Command::new("docker-compose");
        down.current_dir(workspace())
            .args([
                "-p",
                &self.name,
                "--profile",
                "demo",
                "down",
                "-v",
                "--remove-orphans",
                "-t",
                "2",
            ])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = down.status();
    }
}

async fn docker_output(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        WAIT_LIMIT,
        Command::new("docker")
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("docker ends")
    .expect("running docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn docker(args: &[&str]) {
    docker_output(args).await;
}

/// SIGKILLs a container's main process from the host, as a crash would: unlike `docker kill`, this
/// leaves the container to its restart policy.
async fn crash(container: &str) {
    let pid = docker_output(&["inspect", "-f", "{{.State.Pid}}", container]).await;
    let pid: i32 = pid.trim().parse().expect("a process id");
    assert!(pid > 0, "container {container} runs no process");
    // The engine's pid is this host's only when the test shares the engine's pid namespace.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("proxyfleet"),
        "pid {pid} of container {container} is not a proxyfleet process here: {cmdline:?}"
    );
    // SAFETY: kill(2) with a pid read from the engine; no memory is involved.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGKILL) },
        0,
        "killing {pid}"
    );
}

/// Waits until the engine has restarted `container` after a crash.
async fn restarted(container: &str) {
    harness::wait_for("the container's restart", WAIT_LIMIT, || async move {
        let state = docker_output(&[
            "inspect",
            "-f",
            "{{.RestartCount}} {{.State.Running}}",
            container,
        ])
        .await;
        let (count, running) = state.trim().split_once(' ')?;
        (count.parse::<u32>().ok()? >= 1 && running == "true").then_some(())
    })
    .await;
}

/// The container a worker session runs in: its worker id starts with the container's host name.
fn container_of<'a>(worker_id: &str, containers: &'a [String]) -> &'a str {
    containers
        .iter()
        .find(|id| worker_id.starts_with(&id[..12]))
        .unwrap_or_else(|| panic!("no container for worker {worker_id} among {containers:?}"))
}

/// A client of the coordinator once it answers a call from the host. A connection alone says
/// nothing: the engine's proxy on the published port accepts it while the container's process is
/// still starting, then resets it.
async fn reachable(
    url: &str,
) -> proxyfleet_proto::v1::coordinator_client::CoordinatorClient<tonic::transport::Channel> {
    harness::wait_for(
        "the coordinator to answer from the host",
        WAIT_LIMIT,
        || {
            let url = url.to_string();
            async move {
                let mut client =
                    proxyfleet_proto::v1::coordinator_client::CoordinatorClient::connect(url)
                        .await
                        .ok()?;
                client.list_jobs(pb::ListJobsRequest {}).await.ok()?;
                Some(client)
            }
        },
    )
    .await
}

async fn finished(url: &str, job_id: &str) -> pb::Job {
    let mut client = harness::client(url).await;
    let job = harness::wait_terminal(&mut client, job_id, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:#?}");
    let results = harness::results(&mut client, job_id).await;
    let unique: BTreeSet<&str> = results.iter().map(|r| r.proxy.as_str()).collect();
    assert_eq!(unique.len(), results.len(), "each candidate once");
    assert_eq!(
        results.len() as u64,
        job.progress.as_ref().unwrap().proxies_total
    );
    assert_eq!(results.iter().filter(|r| r.usable).count(), WORKING);
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_cluster_rides_out_lost_and_partitioned_workers_and_a_coordinator_restart() {
    if !docker_engine() {
        eprintln!("skipped: no Docker engine here");
        return;
    }
    let image = format!("proxyfleet:test-{}", std::process::id());
    let built = Command::new(workspace().join("scripts/docker-image"))
        .arg(&image)
        .env(
            "PROFILE",
            harness::bin("proxyfleet")
                .parent()
                .unwrap()
                .file_name()
                .unwrap(),
        )
        .output()
        .await
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let size: u64 = docker_output(&["image", "inspect", "-f", "{{.Size}}", &image])
        .await
        .trim()
        .parse()
        .expect("the image's size");
    println!(
        "image {image}: {:.1} MB (bound {:.0} MB)",
        size as f64 / 1e6,
        IMAGE_BOUND_BYTES as f64 / 1e6
    );
    assert!(size < IMAGE_BOUND_BYTES, "the image is {size} bytes");
    let (grpc, metrics) = (harness::quiet_port().port(), harness::quiet_port().port());
    let project = Project {
        name: format!("pftest{}", fastrand::u32(..)),
        env: [
            ("PROXYFLEET_IMAGE", image.clone()),
            ("PROXYFLEET_GRPC_PORT", grpc.to_string()),
            ("PROXYFLEET_METRICS_PORT", metrics.to_string()),
            ("PROXYFLEET_LEASE_TTL", "3s".into()),
            ("PROXYFLEET_MAX_CHECKS", "8".into()),
            ("PROXYFLEET_FARM_WORKING", WORKING.to_string()),
            ("PROXYFLEET_FARM_BLACK_HOLES", "150".into()),
            ("PROXYFLEET_FARM_REFUSED", "100".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    };
    project
        .run(&[
            "up",
            "-d",
            "--scale",
            "worker=3",
            "coordinator",
            "worker",
            "farm",
        ])
        .await;
    let url = format!("http://127.0.0.1:{grpc}");
    let client = reachable(&url).await;

    let submit = |job: &'static str| {
        let url = url.clone();
        async move {
            let out = harness::cli(&[
                "--coordinator",
                &url,
                "submit",
                "--source",
                "http://farm:8080/list.txt",
                "--timeout",
                "4s",
                "--chunk-size",
                "5",
                "--min-usable",
                "20",
                "--name",
                job,
            ])
            .await;
            assert_eq!(out.code, 0, "{out:?}");
            out.stdout.trim().to_string()
        }
    };
    let job_id = submit("chaos").await;
    let watch = tokio::spawn({
        let (host, job_id) = (format!("127.0.0.1:{grpc}"), job_id.clone());
        async move {
            let body = format!(r#"{{"job_id":"{job_id}"}}"#);
            let grpcurl = std::env::var_os("PATH")
                .and_then(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join("grpcurl"))
                        .find(|p| p.exists())
                })
                .expect("grpcurl on PATH (the test command installs it)");
            let out = Command::new(grpcurl)
                .args([
                    "-plaintext",
                    "-d",
                    &body,
                    &host,
                    "proxyfleet.v1.Coordinator/WatchJob",
                ])
                .kill_on_drop(true)
                .output();
            tokio::time::timeout(WAIT_LIMIT, out)
                .await
                .expect("grpcurl ends with the job")
                .unwrap()
        }
    });

    // One worker container is killed, another cut off from the network past its lease TTL.
    let containers = project.containers("worker").await;
    let network = format!("{}_default", project.name);
    let workers = harness::wait_for("two workers to be checking", WAIT_LIMIT, || {
        let mut client = client.clone();
        async move {
            let busy: Vec<String> = harness::workers(&mut client)
                .await
                .into_iter()
                .filter(|w| !w.lease_ids.is_empty() && w.verdicts_accepted > 0)
                .map(|w| w.worker_id)
                .collect();
            (busy.len() >= 2).then_some(busy)
        }
    })
    .await;
    let killed = container_of(&workers[0], &containers).to_string();
    crash(&killed).await;
    // The crashed worker's container comes back by itself. Only then is another cut off: the
    // address a disconnect frees could otherwise go to the container restarting, which would
    // answer the coordinator's packets for the cut-off worker with resets and end its session
    // instead of leaving it silent. The one cut off holds leases at that moment, so that its
    // verdicts come back after the leases moved on.
    restarted(&killed).await;
    let cut_worker = harness::wait_for("another worker holding leases", WAIT_LIMIT, || {
        let mut client = client.clone();
        let killed = killed.clone();
        async move {
            harness::workers(&mut client)
                .await
                .into_iter()
                .find(|w| !w.lease_ids.is_empty() && !w.worker_id.starts_with(&killed[..12]))
                .map(|w| w.worker_id)
        }
    })
    .await;
    let cut_off = container_of(&cut_worker, &containers).to_string();
    docker(&["network", "disconnect", &network, &cut_off]).await;
    harness::wait_for("the cut-off worker to go silent", WAIT_LIMIT, || {
        let mut client = client.clone();
        let id = cut_worker.clone();
        async move {
            harness::workers(&mut client)
                .await
                .iter()
                .any(|w| w.worker_id == id && w.status == "silent")
                .then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    docker(&["network", "connect", &network, &cut_off]).await;

    let watched = watch.await.unwrap();
    let stdout = String::from_utf8_lossy(&watched.stdout);
    assert!(
        watched.status.success(),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    assert!(
        stdout
            .rsplit("\"jobId\"")
            .next()
            .unwrap()
            .contains("JOB_STATE_SUCCEEDED"),
        "{stdout}"
    );
    let job = finished(&url, &job_id).await;
    let progress = job.progress.unwrap();
    assert!(progress.reassignments >= 2, "{progress:?}");
    // The cut-off worker came back with verdicts for leases that had moved on: refused, counted.
    assert!(progress.stale_verdicts_refused > 0, "{progress:?}");

    // The metrics endpoint parses and counts the job.
    let page = harness::scrape(format!("127.0.0.1:{metrics}").parse().unwrap()).await;
    let verdicts = harness::sample(&page, "proxyfleet_verdicts_total{usable=\"true\"}")
        + harness::sample(&page, "proxyfleet_verdicts_total{usable=\"false\"}");
    assert_eq!(verdicts, progress.proxies_total as f64);
    assert_eq!(
        harness::sample(&page, "proxyfleet_verdicts_total{usable=\"true\"}"),
        WORKING as f64
    );
    assert!(harness::sample(&page, "proxyfleet_leases_requeued_total") >= 2.0);
    assert_eq!(
        harness::sample(&page, "proxyfleet_jobs{state=\"succeeded\"}"),
        1.0
    );
    // Each surviving worker's endpoint, on its compose network address, parses and counts its
    // checks; together they checked at least what the coordinator recorded from them.
    let mut worker_checks = 0.0;
    for id in project
        .containers("worker")
        .await
        .iter()
        .filter(|id| **id != killed)
    {
        // Published on the host's loopback, on a port the engine picked.
        let published = docker_output(&["port", id, "9101/tcp"]).await;
        let addr = published
            .lines()
            .find(|l| l.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("worker metrics published on loopback: {published}"));
        let page = harness::scrape(addr.parse().unwrap()).await;
        let checks: f64 = page
            .lines()
            .filter(|l| l.starts_with("proxyfleet_worker_checks_total{"))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum();
        assert_eq!(
            checks,
            harness::sample(&page, "proxyfleet_worker_check_duration_seconds_count")
        );
        worker_checks += checks;
    }
    assert!(worker_checks > 0.0);

    // A coordinator restarted mid-job: the job finishes all the same.
    let job_id = submit("restart").await;
    harness::wait_for("the second job to be under way", WAIT_LIMIT, || {
        let mut client = client.clone();
        let job_id = job_id.clone();
        async move {
            (harness::job(&mut client, &job_id)
                .await
                .progress?
                .proxies_checked
                > 20)
                .then_some(())
        }
    })
    .await;
    let coordinator = project.containers("coordinator").await;
    crash(&coordinator[0]).await;
    restarted(&coordinator[0]).await;
    reachable(&url).await;
    finished(&url, &job_id).await;

    // The demo: its proxies on stdout, its job's exit code as its own.
    let out = tokio::time::timeout(
        WAIT_LIMIT,
        project.command(&["run", "--rm", "-T", "demo"]).output(),
    )
    .await
    .expect("the demo ends")
    .expect("running docker-compose");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let proxies: BTreeSet<&str> = printed.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(proxies.len(), WORKING, "{printed}");
    assert!(
        proxies.iter().all(|l| l.contains("farm:")),
        "only proxies on the demo's stdout: {printed}"
    );
    drop(project);
    let _ = Command::new("docker")
        .args(["rmi", "-f", &image])
        .output()
        .await;
}
