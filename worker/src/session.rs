//! The worker's session with the coordinator: hello, leases pushed to it, checks, verdict
//! batches, heartbeats, drain on shutdown, and reconnection with backoff and jitter.

use std::collections::HashMap;
use std::ops::ControlFlow::{self, Break, Continue};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{FutureExt, Stream, StreamExt, stream::FuturesUnordered};
use proxyfleet_common::guard::Guard;
use proxyfleet_proto::v1 as pb;
use proxyfleet_proto::v1::worker_message::Kind;
use proxyfleet_proto::v1::workers_client::WorkersClient;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::WorkerConfig;
use crate::check::{Checker, Limits, Proxy};
use crate::judges::Judges;
use crate::ledger::{Batch, Ledger};
use crate::metrics::WorkerMetrics;
use crate::targets::{self, LeaseTarget};

/// Verdicts are sent at least this often (or at once when a lease's checks end or a batch is
/// full, see `ledger::BATCH_MAX`)...
const BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// ...or, when check slots are free and nothing waits for them, this soon: the coordinator leases
/// more only as it sees verdicts, so a worker that could check more says so quickly.
const HUNGRY_INTERVAL: Duration = Duration::from_millis(1);
/// Connecting, saying hello and being welcomed must take no longer than this.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for the coordinator's acks after the last verdicts of a drain.
const DRAIN_ACK_WAIT: Duration = Duration::from_secs(5);

/// What checks need, shared by every lease of the worker: the checker, the permits that bound
/// checks in flight, and the metrics they feed.
#[derive(Clone)]
struct Checking {
    checker: Checker,
    permits: Arc<Semaphore>,
    metrics: Arc<WorkerMetrics>,
    /// Answer every check at once without checking (benchmarks only).
    instant: bool,
}

/// The checks of one lease, running.
struct LeaseTask {
    /// Set when the lease is no longer the worker's: no new check starts; checks in flight finish
    /// and their verdicts are still sent (the coordinator refuses and counts them).
    revoked: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// What a worker holds across sessions: the ledger of its leases and their verdicts, and the
/// tasks checking them.
struct Held {
    /// Every lease not settled yet; changed by the session as the coordinator and checks report.
    ledger: Ledger,
    /// The checks of each lease, from its assignment until they report their end.
    tasks: HashMap<u64, LeaseTask>,
    /// Where lease tasks report; kept here so that checks outlive a lost session.
    verdict_tx: mpsc::UnboundedSender<Checked>,
    verdict_rx: mpsc::UnboundedReceiver<Checked>,
}

/// What a lease's task reports: verdicts, or that its checks ended (then the lease's verdicts go
/// out at once instead of at the next flush).
#[derive(Debug)]
struct Checked {
    lease_id: u64,
    verdicts: Vec<pb::Verdict>,
    ended: bool,
}

impl Held {
    fn new() -> Held {
        let (verdict_tx, verdict_rx) = mpsc::unbounded_channel();
        Held {
            ledger: Ledger::default(),
            tasks: HashMap::new(),
            verdict_tx,
            verdict_rx,
        }
    }

    /// No new check starts for the lease; those in flight finish.
    fn stop(&self, lease_id: u64) {
        if let Some(work) = self.tasks.get(&lease_id) {
            work.revoked.store(true, Ordering::SeqCst);
        }
    }

    /// The session is lost, and every lease with it: no new check starts for them, but the checks
    /// in flight finish; their verdicts go out on the next session, where the coordinator refuses
    /// and counts them. So do verdicts sent that the coordinator did not confirm (see `ledger`).
    fn session_lost(&mut self) {
        for lease_id in self.ledger.session_lost() {
            self.stop(lease_id);
        }
    }

    /// Stops every check (the worker is exiting, or out of drain time).
    fn abort_all(&mut self) {
        for (_, work) in self.tasks.drain() {
            work.task.abort();
        }
    }
}

/// How a session ended.
#[derive(Debug, PartialEq)]
enum SessionEnd {
    /// Drained on request: the worker may exit.
    Drained,
    /// The stream broke or could not be opened: reconnect.
    Lost(String),
}

/// Runs sessions with the coordinator until `drain` turns true and the last session drained.
pub async fn run(
    config: WorkerConfig,
    mut drain: watch::Receiver<bool>,
) -> Result<(), crate::RunError> {
    let checker = Checker::new(&config.extra_roots, &config.public_ips)?;
    let checks = Arc::new(Semaphore::new(config.max_checks));
    let metrics = Arc::new(WorkerMetrics::default());
    let _metrics_server = match config.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| crate::RunError::Metrics { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| crate::RunError::Metrics { addr, source })?;
            info!(metrics = %local, "metrics served at /metrics");
            let (metrics, checks, max) = (metrics.clone(), checks.clone(), config.max_checks);
            let page = move || metrics.render(max - checks.available_permits(), max);
            Some(AbortOnDrop(tokio::spawn(async move {
                if let Err(e) =
                    proxyfleet_common::metrics::serve(listener, page, std::future::pending()).await
                {
                    warn!(error = %e, "the metrics endpoint stopped");
                }
            })))
        }
        None => None,
    };
    let checks = Checking {
        checker,
        permits: checks,
        metrics,
        instant: config.instant_checks,
    };
    // Leases and unsent verdicts outlive a lost session; the checks stop when the worker does.
    let mut held = Held::new();
    let mut failures: u32 = 0;
    loop {
        if *drain.borrow() {
            info!(worker_id = %config.worker_id, "drained before a session was open; exiting");
            held.abort_all();
            return Ok(());
        }
        let started = Instant::now();
        // However the coordinator behaves, a drain ends within its grace and a little more.
        let mut watchdog = drain.clone();
        let overrun = config.drain_grace + DRAIN_ACK_WAIT + Duration::from_secs(2);
        let end = tokio::select! {
            end = session(&config, &checks, &mut drain, &mut held) => end,
            _ = async {
                let _ = watchdog.wait_for(|draining| *draining).await;
                tokio::time::sleep(overrun).await;
            } => {
                warn!(worker_id = %config.worker_id, "drain overran its grace period; exiting");
                SessionEnd::Drained
            }
        };
        match end {
            SessionEnd::Drained => {
                held.abort_all();
                return Ok(());
            }
            SessionEnd::Lost(why) => {
                held.session_lost();
                if started.elapsed() > Duration::from_secs(10) {
                    failures = 0;
                }
                failures = failures.saturating_add(1);
                let delay = backoff(failures, config.reconnect_min, config.reconnect_max);
                warn!(worker_id = %config.worker_id, error = %why, retry_in = ?delay, "session with the coordinator lost; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = drain.changed() => {}
                }
            }
        }
    }
}

/// Exponential backoff with full jitter: a random delay in [min, min * 2^n], capped at `max`.
pub fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let ceiling = min
        .saturating_mul(1u32 << failures.min(16))
        .min(max)
        .max(min);
    let span = (ceiling - min).as_millis() as u64;
    min + Duration::from_millis(if span == 0 { 0 } else { fastrand::u64(..=span) })
}

type Opened = (
    mpsc::Sender<pb::WorkerMessage>,
    tonic::Streaming<pb::CoordinatorMessage>,
    pb::Welcome,
);
/// Connects, says hello and waits for the welcome.
async fn open(config: &WorkerConfig) -> Result<Opened, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(config.coordinator.clone())
        .map_err(|e| format!("invalid coordinator URL {}: {e}", config.coordinator))?
        .connect_timeout(Duration::from_secs(5))
        // Keepalive pings notice a coordinator that vanished without closing the connection.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let endpoint = match &config.tls {
        Some(tls) => endpoint
            .tls_config(tls.clone())
            .map_err(|e| format!("TLS settings: {e}"))?,
        None => endpoint,
    };
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", config.coordinator))?;
    let mut client = WorkersClient::with_interceptor(channel, config.token.clone());
    let (out_tx, out_rx) = mpsc::channel::<pb::WorkerMessage>(1024);
    let hello = pb::WorkerMessage {
        kind: Some(pb::worker_message::Kind::Hello(pb::Hello {
            worker_id: config.worker_id.clone(),
            name: config.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            capacity: config.capacity,
            max_checks: config.max_checks as u32,
        })),
    };
    out_tx
        .send(hello)
        .await
        .map_err(|_| "outbound stream closed".to_string())?;
    let mut inbound = client
        .session(ReceiverStream::new(out_rx))
        .await
        .map_err(|status| format!("the coordinator refused the session: {}", status.message()))?
        .into_inner();
    match inbound.message().await {
        Ok(Some(pb::CoordinatorMessage {
            kind: Some(pb::coordinator_message::Kind::Welcome(welcome)),
        })) => Ok((out_tx, inbound, welcome)),
        Ok(_) => Err("the coordinator did not welcome the session".into()),
        Err(status) => Err(format!("session failed: {}", status.message())),
    }
}

/// Opens a session and serves it until it is lost or drained.
async fn session(
    config: &WorkerConfig,
    checking: &Checking,
    drain: &mut watch::Receiver<bool>,
    held: &mut Held,
) -> SessionEnd {
    let opened = tokio::select! {
        opened = tokio::time::timeout(SETUP_TIMEOUT, open(config)) => opened
            .unwrap_or_else(|_| Err(format!("no welcome from {} within {SETUP_TIMEOUT:?}", config.coordinator))),
        _ = drain.wait_for(|draining| *draining) => return SessionEnd::Drained,
    };
    let (outbound, inbound, welcome) = match opened {
        Ok(opened) => opened,
        Err(why) => return SessionEnd::Lost(why),
    };
    let heartbeat_every = Duration::from_millis(welcome.heartbeat_interval_ms.max(50));
    info!(worker_id = %config.worker_id, session_id = welcome.session_id, heartbeat = ?heartbeat_every, "session open");
    checking.metrics.sessions.fetch_add(1, Ordering::Relaxed);
    let (judge_tx, judge_rx) = mpsc::unbounded_channel::<pb::JudgeStatus>();
    let judges = Judges::new(checking.checker.clone(), &welcome.judge_urls, judge_tx);
    // The coordinator's judges are probed at once, so a dead one is reported before any check.
    let startup_probe = {
        let judges = judges.clone();
        let urls = welcome.judge_urls.clone();
        tokio::spawn(async move {
            // These are the coordinator's own judges, which `Judges` dials wherever they are.
            judges.reachable(&urls, Guard::new(false)).await;
        })
    };
    let _stop_probe = AbortOnDrop(startup_probe);
    let checks = ProxyChecks {
        checking: checking.clone(),
        judges,
        max_checks: config.max_checks,
    };
    let link = Link {
        outbound,
        judge_rx,
        heartbeat_every,
    };
    Session::new(config, held, checks, checking.metrics.clone(), link)
        .serve(inbound, drain)
        .await
}

/// Runs the checks of a lease: the proxy checker, or a stand-in in tests.
trait LeaseChecks {
    /// Starts checking the lease's candidates. Verdicts go to `report` as they are ready, then a
    /// last report says the checks ended. No new check starts once `revoked` is set.
    fn start(
        &self,
        assign: pb::Assign,
        revoked: Arc<AtomicBool>,
        report: mpsc::UnboundedSender<Checked>,
    ) -> JoinHandle<()>;
    /// Checks running now.
    fn in_flight(&self) -> u32;
    /// Whether a check slot is free.
    fn slot_free(&self) -> bool;
}

/// Checks proxies through the judges of one session.
struct ProxyChecks {
    checking: Checking,
    judges: Judges,
    max_checks: usize,
}

impl LeaseChecks for ProxyChecks {
    fn start(
        &self,
        assign: pb::Assign,
        revoked: Arc<AtomicBool>,
        report: mpsc::UnboundedSender<Checked>,
    ) -> JoinHandle<()> {
        let (checking, judges) = (self.checking.clone(), self.judges.clone());
        // Its handle is kept in `Held::tasks` until it reports its end.
        tokio::spawn(async move {
            let lease_id = assign.lease_id;
            run_lease(assign, checking, judges, revoked, report.clone()).await;
            // However the checks ended, the ledger learns that no more verdicts come.
            let _ = report.send(Checked {
                lease_id,
                verdicts: Vec::new(),
                ended: true,
            });
        })
    }

    fn in_flight(&self) -> u32 {
        (self.max_checks - self.checking.permits.available_permits()) as u32
    }

    fn slot_free(&self) -> bool {
        self.checking.permits.available_permits() > 0
    }
}

/// The open stream to the coordinator, as a session uses it.
struct Link {
    outbound: mpsc::Sender<pb::WorkerMessage>,
    /// What this session's judge probes found, for the coordinator.
    judge_rx: mpsc::UnboundedReceiver<pb::JudgeStatus>,
    /// From the coordinator's welcome.
    heartbeat_every: Duration,
}

/// One open session: the stream to the coordinator, its timers and its drain, over what the
/// worker holds across sessions.
struct Session<'a, C> {
    config: &'a WorkerConfig,
    /// Leases, their verdicts and checks: the session changes them as the coordinator and the
    /// checks report, and leaves them to the next session when it ends.
    held: &'a mut Held,
    /// Starts the checks of the leases assigned.
    checks: C,
    metrics: Arc<WorkerMetrics>,
    /// Messages to the coordinator.
    outbound: mpsc::Sender<pb::WorkerMessage>,
    /// What this session's judge probes found, for the coordinator.
    judge_rx: mpsc::UnboundedReceiver<pb::JudgeStatus>,
    /// When to tell the coordinator which leases the worker holds.
    heartbeat: Interval,
    /// When to send the verdicts waiting.
    flush: Interval,
    /// Told to drain (SIGTERM).
    draining: bool,
    /// When the coordinator was told: the grace period runs from then.
    draining_since: Option<Instant>,
    /// When verdicts last went out; a worker with free check slots sends again soon after.
    last_sent: Instant,
}

impl<'a, C: LeaseChecks> Session<'a, C> {
    fn new(
        config: &'a WorkerConfig,
        held: &'a mut Held,
        checks: C,
        metrics: Arc<WorkerMetrics>,
        link: Link,
    ) -> Self {
        let mut heartbeat = tokio::time::interval(link.heartbeat_every);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(BATCH_INTERVAL);
        flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Session {
            config,
            held,
            checks,
            metrics,
            outbound: link.outbound,
            judge_rx: link.judge_rx,
            heartbeat,
            flush,
            draining: false,
            draining_since: None,
            last_sent: Instant::now(),
        }
    }

    /// Serves the session until its stream ends or breaks, or the drain is over.
    async fn serve<S>(mut self, mut inbound: S, drain: &mut watch::Receiver<bool>) -> SessionEnd
    where
        S: Stream<Item = Result<pb::CoordinatorMessage, tonic::Status>> + Unpin,
    {
        self.draining = *drain.borrow();
        loop {
            self.metrics
                .leases
                .store(self.held.ledger.live_count() as u64, Ordering::Relaxed);
            if self.draining
                && self.draining_since.is_none()
                && let Break(end) = self.start_drain().await
            {
                return end;
            }
            if let Some(since) = self.draining_since {
                if self.held.ledger.live_count() == 0 && !self.held.ledger.has_waiting() {
                    info!(worker_id = %self.config.worker_id, "drained: every lease finished or handed back");
                    return SessionEnd::Drained;
                }
                if since.elapsed() >= self.config.drain_grace {
                    return self.hand_back_rest(inbound).await;
                }
            }
            if let Break(end) = self.next_event(&mut inbound, drain).await {
                return end;
            }
        }
    }

    /// Waits for the next thing to happen and handles it.
    async fn next_event<S>(
        &mut self,
        inbound: &mut S,
        drain: &mut watch::Receiver<bool>,
    ) -> ControlFlow<SessionEnd>
    where
        S: Stream<Item = Result<pb::CoordinatorMessage, tonic::Status>> + Unpin,
    {
        let hungry = self.held.ledger.has_waiting() && self.checks.slot_free();
        let grace_left = self
            .draining_since
            .map(|since| self.config.drain_grace.saturating_sub(since.elapsed()))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            message = inbound.next() => self.on_message(message),
            Some(checked) = self.held.verdict_rx.recv() => self.on_checked(checked).await,
            Some(status) = self.judge_rx.recv() => self.send(Kind::JudgeStatus(status)).await,
            _ = self.flush.tick() => self.send_held().await,
            _ = tokio::time::sleep_until(self.last_sent + HUNGRY_INTERVAL), if hungry => {
                self.send_held().await
            }
            _ = self.heartbeat.tick() => self.send_heartbeat().await,
            _ = drain.changed(), if !self.draining => {
                self.draining = *drain.borrow();
                Continue(())
            }
            _ = tokio::time::sleep(grace_left), if self.draining_since.is_some() => Continue(()),
        }
    }

    fn on_message(
        &mut self,
        message: Option<Result<pb::CoordinatorMessage, tonic::Status>>,
    ) -> ControlFlow<SessionEnd> {
        use pb::coordinator_message::Kind as From;
        let kind = match message {
            Some(Ok(message)) => message.kind,
            None => return Break(SessionEnd::Lost("the coordinator ended the session".into())),
            Some(Err(status)) => {
                return Break(SessionEnd::Lost(format!(
                    "stream broken: {}",
                    status.message()
                )));
            }
        };
        match kind {
            Some(From::Assign(assign)) => self.on_assign(assign),
            Some(From::LeaseDone(done)) => {
                debug!(lease_id = done.lease_id, job_id = %done.job_id, chunk_id = done.chunk_id, "lease done");
                self.held.ledger.done(done.lease_id);
            }
            Some(From::Revoke(revoke)) => {
                if self.held.ledger.ended(revoke.lease_id) {
                    info!(
                        lease_id = revoke.lease_id, job_id = %revoke.job_id, chunk_id = revoke.chunk_id,
                        reason = %revoke.reason, "lease revoked"
                    );
                }
                self.held.stop(revoke.lease_id);
            }
            Some(From::VerdictsHandled(handled)) => {
                self.held.ledger.handled(handled.lease_id, handled.through);
            }
            Some(From::Welcome(_)) | None => {}
        }
        Continue(())
    }

    fn on_assign(&mut self, assign: pb::Assign) {
        let lease_id = assign.lease_id;
        debug!(
            lease_id, job_id = %assign.job_id, chunk_id = assign.chunk_id, attempt = assign.attempt,
            proxies = assign.candidates.len(), "lease received"
        );
        self.held
            .ledger
            .assigned(lease_id, assign.job_id.clone(), assign.chunk_id);
        let revoked = Arc::new(AtomicBool::new(false));
        let task = self
            .checks
            .start(assign, revoked.clone(), self.held.verdict_tx.clone());
        self.held
            .tasks
            .insert(lease_id, LeaseTask { revoked, task });
    }

    async fn on_checked(&mut self, checked: Checked) -> ControlFlow<SessionEnd> {
        let Checked {
            lease_id,
            verdicts,
            ended,
        } = checked;
        if ended {
            self.held.tasks.remove(&lease_id);
        }
        if self.held.ledger.checked(lease_id, verdicts, ended)
            && let Some(batch) = self.held.ledger.take(lease_id)
        {
            self.send_batches(vec![batch]).await?;
            self.last_sent = Instant::now();
        }
        Continue(())
    }

    /// Sends every verdict waiting.
    async fn send_held(&mut self) -> ControlFlow<SessionEnd> {
        let batches = self.held.ledger.take_all();
        self.send_batches(batches).await?;
        self.last_sent = Instant::now();
        Continue(())
    }

    /// Sends batches of verdicts; any the stream did not take wait again in the ledger.
    async fn send_batches(&mut self, batches: Vec<Batch>) -> ControlFlow<SessionEnd> {
        let mut batches = batches.into_iter();
        while let Some(batch) = batches.next() {
            let (lease_id, first) = (batch.lease_id, batch.first);
            let chunk_id = self.held.ledger.lease(lease_id).map(|(_, chunk)| chunk);
            let message = pb::WorkerMessage {
                kind: Some(Kind::Verdicts(pb::Verdicts {
                    lease_id,
                    verdicts: batch.verdicts,
                    job_id: batch.job_id,
                    first: Some(first),
                    chunk_id,
                })),
            };
            if self.outbound.send(message).await.is_err() {
                self.held.ledger.not_sent(lease_id, first);
                for rest in batches {
                    self.held.ledger.not_sent(rest.lease_id, rest.first);
                }
                return Break(SessionEnd::Lost("outbound stream closed".into()));
            }
        }
        Continue(())
    }

    async fn send_heartbeat(&mut self) -> ControlFlow<SessionEnd> {
        let lease_ids = self.held.ledger.live();
        // Named as they were assigned: a coordinator that restarted since knows them by nothing else.
        let held = lease_ids
            .iter()
            .filter_map(|&lease_id| {
                let (job_id, chunk_id) = self.held.ledger.lease(lease_id)?;
                Some(pb::HeldLease {
                    lease_id,
                    job_id: job_id.to_string(),
                    chunk_id,
                })
            })
            .collect();
        let heartbeat = pb::Heartbeat {
            lease_ids,
            checks_in_flight: self.checks.in_flight(),
            held,
        };
        self.send(Kind::Heartbeat(heartbeat)).await
    }

    async fn send(&self, kind: Kind) -> ControlFlow<SessionEnd> {
        let message = pb::WorkerMessage { kind: Some(kind) };
        match self.outbound.send(message).await {
            Ok(()) => Continue(()),
            Err(_) => Break(SessionEnd::Lost("outbound stream closed".into())),
        }
    }

    /// Tells the coordinator the worker drains: it leases nothing more to it.
    async fn start_drain(&mut self) -> ControlFlow<SessionEnd> {
        self.draining_since = Some(Instant::now());
        info!(
            worker_id = %self.config.worker_id, leases = self.held.ledger.live_count(),
            grace = ?self.config.drain_grace, "draining"
        );
        self.send(Kind::Draining(pb::Draining {})).await
    }

    /// Out of drain time: stops the checks, sends what is done, hands back the rest, and waits a
    /// little for the coordinator to see it all before closing.
    async fn hand_back_rest<S>(mut self, mut inbound: S) -> SessionEnd
    where
        S: Stream<Item = Result<pb::CoordinatorMessage, tonic::Status>> + Unpin,
    {
        self.held.abort_all();
        while let Ok(Checked {
            lease_id,
            verdicts,
            ended,
        }) = self.held.verdict_rx.try_recv()
        {
            self.held.ledger.checked(lease_id, verdicts, ended);
        }
        if let Break(end) = self.send_held().await {
            return end;
        }
        for lease_id in self.held.ledger.live() {
            if let Some((job_id, chunk_id)) = self.held.ledger.lease(lease_id) {
                info!(lease_id, job_id = %job_id, chunk_id, "lease handed back");
            }
            self.held.ledger.ended(lease_id);
            if let Break(end) = self.send(Kind::HandBack(pb::HandBack { lease_id })).await {
                return end;
            }
        }
        // Closing our side tells the coordinator nothing more comes; it ends its side once it
        // has handled everything before.
        drop(self.outbound);
        let _ = tokio::time::timeout(DRAIN_ACK_WAIT, async {
            while let Some(Ok(_)) = inbound.next().await {}
        })
        .await;
        info!(worker_id = %self.config.worker_id, "drained after the grace period");
        SessionEnd::Drained
    }
}

/// Checks every candidate of a lease, at most `checks` at once across the worker, and sends each
/// verdict as it is ready; its caller reports the end. Aborting the task aborts its checks.
async fn run_lease(
    assign: pb::Assign,
    checks: Checking,
    judges: Judges,
    revoked: Arc<AtomicBool>,
    verdicts: mpsc::UnboundedSender<Checked>,
) {
    let lease_id = assign.lease_id;
    let settings = assign.settings.unwrap_or_default();
    let guard = Guard::new(settings.allow_private_targets);
    // Targets are compiled once per lease, not per check.
    let targets: Arc<Vec<LeaseTarget>> =
        Arc::new(settings.targets.iter().map(targets::compile).collect());
    // A job of targets only asks no judge; one with no target falls back on its judges.
    let targets_only = settings.targets_only && !targets.is_empty();
    let reachable = if targets_only {
        Arc::new(Vec::new())
    } else {
        let reachable = judges.reachable(&settings.judge_urls, guard).await;
        if reachable.is_empty() {
            // Reported to the coordinator (again, for a judge probed by an earlier lease); it ends
            // the job rather than record every proxy as dead. Nothing to check here until then.
            judges.report_again(&settings.judge_urls);
            warn!(lease_id, job_id = %assign.job_id, "no judge of this lease is reachable; not checking it");
            return;
        }
        Arc::new(reachable)
    };
    let timeout = Duration::from_millis(settings.timeout_ms.max(1));
    let limits = Limits {
        timeout,
        connect_timeout: Duration::from_millis(settings.connect_timeout_ms.max(1)).min(timeout),
        allow_private: settings.allow_private_targets,
    };
    // One candidate's check, holding its permit: what goes out is its verdict.
    let check = |candidate: pb::Candidate, permit: tokio::sync::OwnedSemaphorePermit| {
        let checks = checks.clone();
        let reachable = reachable.clone();
        let targets = targets.clone();
        async move {
            // Checks are spread across the judges by candidate.
            let judge = (!reachable.is_empty())
                .then(|| &reachable[candidate.index as usize % reachable.len()]);
            let verdict = match Proxy::from_proto(&candidate) {
                Some(_) if checks.instant => pb::Verdict {
                    index: candidate.index,
                    usable: false,
                    reason: pb::Reason::Network as i32,
                    detail: "not checked: the worker runs with --instant-checks".into(),
                    ..Default::default()
                },
                Some(proxy) => {
                    let checked = checks.checker.check(&proxy, judge, &targets, &limits).await;
                    let c = checked.classified;
                    pb::Verdict {
                        index: candidate.index,
                        usable: c.usable,
                        reason: c.reason as i32,
                        latency_ms: millis(checked.latency),
                        exit_ip: c.exit_ip,
                        detail: c.detail,
                        anonymity: c.anonymity as i32,
                        connect_ms: millis(checked.connect),
                        targets: checked.targets,
                    }
                }
                None => pb::Verdict {
                    index: candidate.index,
                    usable: false,
                    reason: pb::Reason::Network as i32,
                    detail: "the coordinator sent an invalid candidate".into(),
                    ..Default::default()
                },
            };
            drop(permit);
            checks.metrics.record(
                verdict.reason,
                Duration::from_millis(u64::from(verdict.latency_ms)),
            );
            verdict
        }
    };
    // The lease's checks run in this task, not one task each: no spawn per check, and verdicts
    // that end together go out as one batch.
    let mut candidates = assign.candidates.into_iter().peekable();
    let mut running = FuturesUnordered::new();
    let mut batch = Vec::new();
    loop {
        while let Some(Some(verdict)) = running.next().now_or_never() {
            batch.push(verdict);
        }
        let more = candidates.peek().is_some() && !revoked.load(Ordering::SeqCst);
        if !batch.is_empty() {
            let _ = verdicts.send(Checked {
                lease_id,
                verdicts: std::mem::take(&mut batch),
                ended: false,
            });
        }
        if !more && running.is_empty() {
            return;
        }
        // Start as many checks as there are free permits, then wait for one to end or free.
        let mut started = false;
        if more {
            while candidates.peek().is_some() {
                let Ok(permit) = checks.permits.clone().try_acquire_owned() else {
                    break;
                };
                let Some(candidate) = candidates.next() else {
                    break;
                };
                running.push(check(candidate, permit));
                started = true;
            }
        }
        if started {
            continue;
        }
        tokio::select! {
            Some(verdict) = running.next(), if !running.is_empty() => batch.push(verdict),
            permit = checks.permits.clone().acquire_owned(), if more => {
                let Ok(permit) = permit else { return };
                // Revoked while it waited: the slot goes back, the candidate is not checked.
                if revoked.load(Ordering::SeqCst) {
                    continue;
                }
                let Some(candidate) = candidates.next() else { return };
                running.push(check(candidate, permit));
            }
        }
    }
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

/// Aborts a task when dropped, e.g. when the session that started it ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use pb::coordinator_message::Kind as To;

    #[test]
    fn backoff_grows_with_jitter_and_stays_capped() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for failures in 0..40 {
            for _ in 0..50 {
                let d = backoff(failures, min, max);
                assert!(d >= min && d <= max, "{failures}: {d:?}");
                assert!(d <= min * (1u32 << failures.min(16)), "{failures}: {d:?}");
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| backoff(10, min, max)).collect();
        assert!(spread.len() > 1, "jittered");
    }

    const HEARTBEAT: Duration = Duration::from_secs(1);

    fn config() -> WorkerConfig {
        WorkerConfig {
            coordinator: "http://127.0.0.1:1".into(),
            worker_id: "w1".into(),
            name: "w1".into(),
            max_checks: 8,
            capacity: 2,
            drain_grace: Duration::from_secs(2),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            extra_roots: Vec::new(),
            public_ips: Vec::new(),
            token: proxyfleet_common::auth::BearerToken::new(None).unwrap(),
            tls: None,
            metrics_listen: None,
            instant_checks: false,
        }
    }

    /// The stop flag of each lease started, by lease id.
    type StopFlags = Arc<Mutex<HashMap<u64, Arc<AtomicBool>>>>;

    /// Stands in for the proxy checks: notes each lease started with its stop flag, and checks
    /// nothing; a test reports verdicts itself.
    #[derive(Clone, Default)]
    struct FakeChecks {
        started: StopFlags,
    }

    impl FakeChecks {
        fn stopped(&self, lease_id: u64) -> bool {
            self.started.lock().unwrap()[&lease_id].load(Ordering::SeqCst)
        }
    }

    impl LeaseChecks for FakeChecks {
        fn start(
            &self,
            assign: pb::Assign,
            revoked: Arc<AtomicBool>,
            _report: mpsc::UnboundedSender<Checked>,
        ) -> JoinHandle<()> {
            self.started
                .lock()
                .unwrap()
                .insert(assign.lease_id, revoked);
            tokio::spawn(std::future::pending())
        }

        fn in_flight(&self) -> u32 {
            0
        }

        fn slot_free(&self) -> bool {
            false
        }
    }

    type Inbound = ReceiverStream<Result<pb::CoordinatorMessage, tonic::Status>>;

    /// The coordinator's end of a session's stream.
    struct Peer {
        to_worker: Option<mpsc::Sender<Result<pb::CoordinatorMessage, tonic::Status>>>,
        from_worker: mpsc::Receiver<pb::WorkerMessage>,
    }

    impl Peer {
        async fn tell(&self, kind: To) {
            let message = pb::CoordinatorMessage { kind: Some(kind) };
            self.to_worker
                .as_ref()
                .expect("the stream is open")
                .send(Ok(message))
                .await
                .unwrap();
        }

        async fn assign(&self, lease_id: u64, job_id: &str, chunk_id: u32) {
            self.tell(To::Assign(pb::Assign {
                lease_id,
                job_id: job_id.into(),
                chunk_id,
                attempt: 1,
                ..Default::default()
            }))
            .await;
        }

        async fn revoke(&self, lease_id: u64) {
            self.tell(To::Revoke(pb::Revoke {
                lease_id,
                reason: "stale lease".into(),
                ..Default::default()
            }))
            .await;
        }

        /// Says the verdicts of a lease before `through` are handled.
        async fn handled(&self, lease_id: u64, through: u32) {
            self.tell(To::VerdictsHandled(pb::VerdictsHandled {
                lease_id,
                through,
            }))
            .await;
        }

        async fn done(&self, lease_id: u64) {
            self.tell(To::LeaseDone(pb::LeaseDone {
                lease_id,
                ..Default::default()
            }))
            .await;
        }

        /// Breaks the stream, as a network failure does.
        async fn break_off(&mut self) {
            let status = tonic::Status::unavailable("connection reset");
            self.to_worker
                .take()
                .unwrap()
                .send(Err(status))
                .await
                .unwrap();
        }

        /// The next message from the worker, whenever it comes (time runs on while it waits).
        async fn next(&mut self) -> Kind {
            self.from_worker
                .recv()
                .await
                .expect("the worker's side is open")
                .kind
                .expect("a message says something")
        }

        /// The next message from the worker that is not a heartbeat.
        async fn next_but_heartbeats(&mut self) -> Kind {
            loop {
                match self.next().await {
                    Kind::Heartbeat(_) => continue,
                    other => return other,
                }
            }
        }

        /// The next heartbeat's leases.
        async fn next_heartbeat(&mut self) -> Vec<u64> {
            loop {
                if let Kind::Heartbeat(h) = self.next().await {
                    return h.lease_ids;
                }
            }
        }

        /// Everything the worker sends during `period`.
        async fn during(&mut self, period: Duration) -> Vec<Kind> {
            let until = Instant::now() + period;
            let mut seen = Vec::new();
            while let Ok(Some(message)) =
                tokio::time::timeout_at(until, self.from_worker.recv()).await
            {
                seen.extend(message.kind);
            }
            seen
        }
    }

    /// A session over `held`, and the coordinator's end of its stream.
    fn open<'a>(
        config: &'a WorkerConfig,
        held: &'a mut Held,
        checks: &FakeChecks,
    ) -> (Session<'a, FakeChecks>, Inbound, Peer) {
        let (outbound, from_worker) = mpsc::channel(64);
        let (to_worker, inbound) = mpsc::channel(64);
        let (_judge_tx, judge_rx) = mpsc::unbounded_channel();
        let link = Link {
            outbound,
            judge_rx,
            heartbeat_every: HEARTBEAT,
        };
        let session = Session::new(
            config,
            held,
            checks.clone(),
            Arc::new(WorkerMetrics::default()),
            link,
        );
        let stream = Peer {
            to_worker: Some(to_worker),
            from_worker,
        };
        (session, ReceiverStream::new(inbound), stream)
    }

    /// Reports verdicts through a sender taken before the session borrowed what the worker holds.
    fn reporter(held: &Held) -> impl Fn(u64, std::ops::Range<u32>, bool) + use<> {
        let tx = held.verdict_tx.clone();
        move |lease_id, indices, ended| {
            let verdicts = indices
                .map(|index| pb::Verdict {
                    index,
                    reason: pb::Reason::Refused as i32,
                    ..Default::default()
                })
                .collect();
            tx.send(Checked {
                lease_id,
                verdicts,
                ended,
            })
            .unwrap();
        }
    }

    /// The lease, job, first position and verdict indices of a verdicts message.
    fn verdicts(kind: Kind) -> (u64, String, u32, Vec<u32>) {
        match kind {
            Kind::Verdicts(v) => (
                v.lease_id,
                v.job_id,
                v.first.expect("a position"),
                v.verdicts.iter().map(|v| v.index).collect(),
            ),
            other => panic!("not verdicts: {other:?}"),
        }
    }

    fn no_drain() -> (watch::Sender<bool>, watch::Receiver<bool>) {
        watch::channel(false)
    }

    #[tokio::test(start_paused = true)]
    async fn verdicts_go_out_in_batches_and_heartbeats_name_the_leases_held() {
        let config = config();
        let mut held = Held::new();
        let checks = FakeChecks::default();
        let report = reporter(&held);
        let (_drain_tx, mut drain) = no_drain();
        let (session, inbound, mut stream) = open(&config, &mut held, &checks);
        let script = async {
            assert_eq!(stream.next_heartbeat().await, Vec::<u64>::new());
            stream.assign(1, "job-a", 0).await;
            stream.assign(2, "job-b", 4).await;
            assert_eq!(stream.next_heartbeat().await, [1, 2]);

            // Verdicts wait for the next flush, at most BATCH_INTERVAL.
            let checked_at = Instant::now();
            report(1, 0..2, false);
            report(1, 2..3, false);
            let batch = verdicts(stream.next_but_heartbeats().await);
            assert_eq!(batch, (1, "job-a".into(), 0, vec![0, 1, 2]));
            assert!(checked_at.elapsed() <= BATCH_INTERVAL);

            stream.revoke(2).await;
            assert_eq!(stream.next_heartbeat().await, [1]);
            assert!(checks.stopped(2), "a revoked lease starts no new check");
            assert!(!checks.stopped(1));

            // A lease's last verdicts go at once.
            tokio::time::sleep(BATCH_INTERVAL / 2).await;
            let ended_at = Instant::now();
            report(1, 3..5, true);
            assert_eq!(
                verdicts(stream.next_but_heartbeats().await),
                (1, "job-a".into(), 3, vec![3, 4])
            );
            assert_eq!(ended_at.elapsed(), Duration::ZERO);
            stream.done(1).await;
            assert_eq!(stream.next_heartbeat().await, Vec::<u64>::new());
            drop(stream.to_worker.take());
        };
        let (end, ()) = tokio::join!(session.serve(inbound, &mut drain), script);
        assert_eq!(
            end,
            SessionEnd::Lost("the coordinator ended the session".into())
        );
        assert!(!held.ledger.has_waiting());
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_keep_their_interval() {
        let config = config();
        let mut held = Held::new();
        let checks = FakeChecks::default();
        let (_drain_tx, mut drain) = no_drain();
        let (session, inbound, mut stream) = open(&config, &mut held, &checks);
        let script = async {
            let start = Instant::now();
            let seen = stream.during(HEARTBEAT * 5 + HEARTBEAT / 2).await;
            assert!(
                seen.iter().all(|k| matches!(k, Kind::Heartbeat(_))),
                "{seen:?}"
            );
            assert_eq!(seen.len(), 6, "one at once, then one a second");
            assert!(start.elapsed() >= HEARTBEAT * 5);
            drop(stream.to_worker.take());
        };
        let (end, ()) = tokio::join!(session.serve(inbound, &mut drain), script);
        assert!(matches!(end, SessionEnd::Lost(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn late_verdicts_of_a_revoked_lease_go_out_with_its_job() {
        let config = config();
        let mut held = Held::new();
        let checks = FakeChecks::default();
        let report = reporter(&held);
        let (_drain_tx, mut drain) = no_drain();
        let (session, inbound, mut stream) = open(&config, &mut held, &checks);
        let script = async {
            stream.assign(3, "job-a", 1).await;
            assert_eq!(stream.next_heartbeat().await, Vec::<u64>::new());
            assert_eq!(stream.next_heartbeat().await, [3]);
            stream.revoke(3).await;
            assert_eq!(stream.next_heartbeat().await, Vec::<u64>::new());
            // The checks in flight end after the revoke: the coordinator refuses and counts them
            // against their job.
            report(3, 0..2, true);
            assert_eq!(
                verdicts(stream.next_but_heartbeats().await),
                (3, "job-a".into(), 0, vec![0, 1])
            );
            stream.handled(3, 2).await;
            drop(stream.to_worker.take());
        };
        let (end, ()) = tokio::join!(session.serve(inbound, &mut drain), script);
        assert!(matches!(end, SessionEnd::Lost(_)));
        assert!(held.ledger.live().is_empty());
        assert_eq!(held.ledger.lease(3), None, "settled and forgotten");
        assert!(held.tasks.is_empty(), "its task reported its end");
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_lost_session_only_verdicts_not_confirmed_go_out_again() {
        let config = config();
        let mut held = Held::new();
        let checks = FakeChecks::default();
        let report = reporter(&held);
        let (_drain_tx, mut drain) = no_drain();

        let (session, inbound, mut stream) = open(&config, &mut held, &checks);
        let script = async {
            stream.assign(5, "job-a", 2).await;
            assert_eq!(stream.next_heartbeat().await, Vec::<u64>::new());
            assert_eq!(stream.next_heartbeat().await, [5]);
            report(5, 0..3, false);
            assert_eq!(
                verdicts(stream.next_but_heartbeats().await),
                (5, "job-a".into(), 0, vec![0, 1, 2])
            );
            stream.handled(5, 3).await;
            report(5, 3..5, false);
            assert_eq!(
                verdicts(stream.next_but_heartbeats().await),
                (5, "job-a".into(), 3, vec![3, 4])
            );
            // The stream breaks before the coordinator confirms those two.
            stream.break_off().await;
        };
        let (end, ()) = tokio::join!(session.serve(inbound, &mut drain), script);
        assert_eq!(
            end,
            SessionEnd::Lost("stream broken: connection reset".into())
        );
        held.session_lost();
        assert!(checks.stopped(5), "the lease went with its session");

        // The next session sends the two not confirmed, at their positions, for their job; the
        // coordinator took the lease back with the old session and says so.
        let (session, inbound, mut stream) = open(&config, &mut held, &checks);
        let script = async {
            assert_eq!(
                verdicts(stream.next_but_heartbeats().await),
                (5, "job-a".into(), 3, vec![3, 4])
            );
            stream.handled(5, 5).await;
            stream.revoke(5).await;
            let seen = stream.during(HEARTBEAT * 3).await;
            assert!(
                seen.iter()
                    .all(|k| matches!(k, Kind::Heartbeat(h) if h.lease_ids.is_empty())),
                "{seen:?}"
            );
            stream.break_off().await;
        };
        let (end, ()) = tokio::join!(session.serve(inbound, &mut drain), script);
        assert!(matches!(end, SessionEnd::Lost(_)));
        held.session_lost();

        // Reconnecting again and again with everything confirmed sends nothing but heartbeats.
        for _ in 0..3 {
            let (session, inbound, mut stream) = open(&config, &mut held, &checks);
            let script = async {
                let seen = stream.during(HEARTBEAT * 2).await;
                assert!(
                    seen.iter().all(|k| matches!(k, Kind::Heartbeat(_))),
                    "{seen:?}"
                );
                stream.break_off().await;
            };
            let (end, ()) = tokio::join!(session.serve(inbound, &mut drain), script);
            assert!(matches!(end, SessionEnd::Lost(_)));
            held.session_lost();
        }
        // Its checks end at last: what they found is late, and goes out with its job.
        report(5, 5..6, true);
        let (session, inbound, mut stream) = open(&config, &mut held, &checks);
        let script = async {
            assert_eq!(
                verdicts(stream.next_but_heartbeats().await),
                (5, "job-a".into(), 5, vec![5])
            );
            stream.handled(5, 6).await;
            stream.break_off().await;
        };
        tokio::join!(session.serve(inbound, &mut drain), script);
        assert_eq!(held.ledger.lease(5), None, "settled and forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn verdicts_the_stream_did_not_take_wait_for_the_next_session() {
        let config = config();
        let mut held = Held::new();
        let checks = FakeChecks::default();
        let report = reporter(&held);
        let (_drain_tx, mut drain) = no_drain();
        let (session, inbound, mut stream) = open(&config, &mut held, &checks);
        let script = async {
            stream.assign(1, "job-a", 0).await;
            assert_eq!(stream.next_heartbeat().await, Vec::<u64>::new());
            assert_eq!(stream.next_heartbeat().await, [1]);
            // The worker's side of the stream is gone: nothing it sends gets out.
            let Peer {
                to_worker,
                from_worker,
            } = stream;
            drop(from_worker);
            report(1, 0..2, true);
            to_worker
        };
        let (end, _to_worker) = tokio::join!(session.serve(inbound, &mut drain), script);
        assert_eq!(end, SessionEnd::Lost("outbound stream closed".into()));
        held.session_lost();
        let batches = held.ledger.take_all();
        assert_eq!(batches.len(), 1);
        assert_eq!(
            (
                batches[0].job_id.as_str(),
                batches[0].first,
                batches[0].verdicts.len()
            ),
            ("job-a", 0, 2)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_ends_once_every_lease_is_done() {
        let config = config();
        let mut held = Held::new();
        let checks = FakeChecks::default();
        let report = reporter(&held);
        let (drain_tx, mut drain) = no_drain();
        let (session, inbound, mut stream) = open(&config, &mut held, &checks);
        let script = async {
            stream.assign(1, "job-a", 0).await;
            assert_eq!(stream.next_heartbeat().await, Vec::<u64>::new());
            assert_eq!(stream.next_heartbeat().await, [1]);
            drain_tx.send(true).unwrap();
            assert!(matches!(
                stream.next_but_heartbeats().await,
                Kind::Draining(_)
            ));
            report(1, 0..4, true);
            assert_eq!(
                verdicts(stream.next_but_heartbeats().await),
                (1, "job-a".into(), 0, vec![0, 1, 2, 3])
            );
            stream.done(1).await;
            stream
        };
        let start = Instant::now();
        let (end, _stream) = tokio::join!(session.serve(inbound, &mut drain), script);
        assert_eq!(end, SessionEnd::Drained);
        assert!(start.elapsed() < config.drain_grace, "no need to wait");
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_out_of_time_sends_what_is_done_and_hands_back_the_rest() {
        let config = config();
        let mut held = Held::new();
        let checks = FakeChecks::default();
        let report = reporter(&held);
        let (drain_tx, mut drain) = no_drain();
        let (session, inbound, mut stream) = open(&config, &mut held, &checks);
        let script = async {
            stream.assign(1, "job-a", 0).await;
            stream.assign(2, "job-b", 0).await;
            assert_eq!(stream.next_heartbeat().await, Vec::<u64>::new());
            assert_eq!(stream.next_heartbeat().await, [1, 2]);
            drain_tx.send(true).unwrap();
            let drain_at = Instant::now();
            assert!(matches!(
                stream.next_but_heartbeats().await,
                Kind::Draining(_)
            ));
            // Lease 2 finishes; lease 1's checks go on past the grace period.
            report(2, 0..1, true);
            assert_eq!(
                verdicts(stream.next_but_heartbeats().await),
                (2, "job-b".into(), 0, vec![0])
            );
            stream.done(2).await;
            report(1, 0..3, false);
            assert_eq!(
                verdicts(stream.next_but_heartbeats().await),
                (1, "job-a".into(), 0, vec![0, 1, 2])
            );
            report(1, 3..4, false);
            assert_eq!(
                verdicts(stream.next_but_heartbeats().await),
                (1, "job-a".into(), 3, vec![3])
            );
            match stream.next_but_heartbeats().await {
                Kind::HandBack(h) => assert_eq!(h.lease_id, 1),
                other => panic!("expected a hand-back: {other:?}"),
            }
            assert!(drain_at.elapsed() >= config.drain_grace);
            // The worker closed its side and waits for the coordinator to close its own.
            assert!(stream.from_worker.recv().await.is_none());
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(stream.to_worker.take());
            drain_at
        };
        let (end, drain_at) = tokio::join!(session.serve(inbound, &mut drain), script);
        assert_eq!(end, SessionEnd::Drained);
        assert!(
            drain_at.elapsed() < config.drain_grace + DRAIN_ACK_WAIT,
            "it stops waiting once the coordinator closes"
        );
        assert!(held.tasks.is_empty(), "the checks were stopped");
        assert!(held.ledger.live().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_waits_a_bounded_time_for_a_silent_coordinator() {
        let config = config();
        let mut held = Held::new();
        let checks = FakeChecks::default();
        let (drain_tx, mut drain) = no_drain();
        let (session, inbound, mut stream) = open(&config, &mut held, &checks);
        let script = async {
            stream.assign(1, "job-a", 0).await;
            assert_eq!(stream.next_heartbeat().await, Vec::<u64>::new());
            assert_eq!(stream.next_heartbeat().await, [1]);
            drain_tx.send(true).unwrap();
            assert!(matches!(
                stream.next_but_heartbeats().await,
                Kind::Draining(_)
            ));
            let seen = stream.during(config.drain_grace * 2).await;
            assert!(
                seen.iter()
                    .any(|k| matches!(k, Kind::HandBack(h) if h.lease_id == 1)),
                "{seen:?}"
            );
            // The coordinator never closes its side.
            (stream, drain_tx)
        };
        let start = Instant::now();
        let (end, _open) = tokio::join!(session.serve(inbound, &mut drain), script);
        assert_eq!(end, SessionEnd::Drained);
        let took = start.elapsed();
        // The drain started after the second heartbeat.
        let limit = HEARTBEAT + config.drain_grace + DRAIN_ACK_WAIT;
        assert!(
            took >= limit && took < limit + Duration::from_secs(1),
            "{took:?}"
        );
    }
}
