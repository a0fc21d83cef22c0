//! The worker's session with the coordinator: hello, leases pushed to it, checks, verdict
//! batches, heartbeats, drain on shutdown, and reconnection with backoff and jitter.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt, stream::FuturesUnordered};
use proxyfleet_common::guard::Guard;
use proxyfleet_proto::v1 as pb;
use proxyfleet_proto::v1::workers_client::WorkersClient;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::WorkerConfig;
use crate::check::{Checker, Limits, Target};
use crate::judges::Judges;
use crate::metrics::WorkerMetrics;

/// Verdicts are sent in batches of at most this many...
const BATCH_MAX: usize = 256;
/// ...or at least this often...
const BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// ...or, when check slots are free and nothing waits for them, this soon: the coordinator leases
/// more only as it sees verdicts, so a worker that could check more says so quickly.
const HUNGRY_INTERVAL: Duration = Duration::from_millis(1);
/// Connecting, saying hello and being welcomed must take no longer than this.
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for the coordinator's acks after the last verdicts of a drain.
const DRAIN_ACK_WAIT: Duration = Duration::from_secs(5);

/// One lease being worked on.
struct LeaseWork {
    job_id: String,
    chunk_id: u32,
    /// Set when the lease was revoked: no new check starts; checks in flight finish and their
    /// verdicts are still sent (the coordinator decides whether they count).
    revoked: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

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

/// What a worker holds across sessions: its leases' checks and the verdicts not sent yet.
struct Held {
    leases: HashMap<u64, LeaseWork>,
    /// Verdicts produced and not sent yet.
    pending: HashMap<u64, Vec<pb::Verdict>>,
    /// Verdicts sent for leases not done yet.
    sent: HashMap<u64, Vec<pb::Verdict>>,
    /// The job of every lease, named in its verdict batches.
    lease_jobs: HashMap<u64, String>,
    verdict_tx: mpsc::UnboundedSender<Checked>,
    verdict_rx: mpsc::UnboundedReceiver<Checked>,
}

/// What a lease's task reports: verdicts, and whether its last check ended (then the lease's
/// verdicts go out at once instead of at the next flush).
struct Checked {
    lease_id: u64,
    verdicts: Vec<pb::Verdict>,
    ended: bool,
}

impl Held {
    fn new() -> Held {
        let (verdict_tx, verdict_rx) = mpsc::unbounded_channel();
        Held {
            leases: HashMap::new(),
            pending: HashMap::new(),
            sent: HashMap::new(),
            lease_jobs: HashMap::new(),
            verdict_tx,
            verdict_rx,
        }
    }
}

/// How a session ended.
enum SessionEnd {
    /// Drained on request: the worker may exit.
    Drained,
    /// The stream broke or could not be opened: reconnect.
    Lost(String),
}

/// Runs sessions with the coordinator until `drain` turns true and the last session drained.
pub async fn run(config: WorkerConfig, mut drain: watch::Receiver<bool>) -> anyhow::Result<()> {
    let checker = Checker::new(&config.extra_roots, &config.public_ips)?;
    let checks = Arc::new(Semaphore::new(config.max_checks));
    let metrics = Arc::new(WorkerMetrics::default());
    let _metrics_server = match config.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!("cannot listen on {addr} for metrics (--metrics-listen): {e}")
            })?;
            info!(metrics = %listener.local_addr()?, "metrics served at /metrics");
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
            abort_all(&mut held.leases);
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
                abort_all(&mut held.leases);
                return Ok(());
            }
            SessionEnd::Lost(why) => {
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

async fn session(
    config: &WorkerConfig,
    checks: &Checking,
    drain: &mut watch::Receiver<bool>,
    held: &mut Held,
) -> SessionEnd {
    let opened = tokio::select! {
        opened = tokio::time::timeout(SETUP_TIMEOUT, open(config)) => opened
            .unwrap_or_else(|_| Err(format!("no welcome from {} within {SETUP_TIMEOUT:?}", config.coordinator))),
        _ = drain.wait_for(|draining| *draining) => return SessionEnd::Drained,
    };
    let (out_tx, mut inbound, welcome) = match opened {
        Ok(opened) => opened,
        Err(why) => return SessionEnd::Lost(why),
    };
    let heartbeat_every = Duration::from_millis(welcome.heartbeat_interval_ms.max(50));
    info!(worker_id = %config.worker_id, session_id = welcome.session_id, heartbeat = ?heartbeat_every, "session open");

    let Held {
        leases,
        pending,
        sent,
        lease_jobs,
        verdict_tx,
        verdict_rx,
    } = held;
    let (judge_tx, mut judge_rx) = mpsc::unbounded_channel::<pb::JudgeStatus>();
    let judges = Judges::new(checks.checker.clone(), &welcome.judge_urls, judge_tx);
    checks.metrics.sessions.fetch_add(1, Ordering::Relaxed);
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

    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flush = tokio::time::interval(BATCH_INTERVAL);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining_since: Option<Instant> = None;
    let mut draining = *drain.borrow();
    let mut last_sent = tokio::time::Instant::now();

    let send = |message: pb::worker_message::Kind| {
        let out_tx = out_tx.clone();
        async move {
            out_tx
                .send(pb::WorkerMessage {
                    kind: Some(message),
                })
                .await
                .is_ok()
        }
    };
    // Verdicts count as sent only once their lease is done: until then they are kept, and sent
    // again on the next session if this one is lost (the coordinator refuses and counts them).
    macro_rules! send_verdicts {
        ($batches:expr) => {
            let batches: Vec<(u64, Vec<pb::Verdict>)> = $batches;
            for (lease_id, verdicts) in &batches {
                sent.entry(*lease_id)
                    .or_default()
                    .extend(verdicts.iter().cloned());
            }
            for (lease_id, verdicts) in batches {
                send_or_lose!(verdicts_message(&lease_jobs, lease_id, verdicts));
            }
        };
    }
    macro_rules! send_or_lose {
        ($kind:expr) => {
            if !send($kind).await {
                requeue_unacknowledged(leases, sent, pending);
                return SessionEnd::Lost("outbound stream closed".into());
            }
        };
    }

    loop {
        checks
            .metrics
            .leases
            .store(leases.len() as u64, Ordering::Relaxed);
        if draining && draining_since.is_none() {
            draining_since = Some(Instant::now());
            info!(worker_id = %config.worker_id, leases = leases.len(), grace = ?config.drain_grace, "draining");
            send_or_lose!(pb::worker_message::Kind::Draining(pb::Draining {}));
        }
        if let Some(since) = draining_since {
            if leases.is_empty() && pending.is_empty() {
                info!(worker_id = %config.worker_id, "drained: every lease finished or handed back");
                return SessionEnd::Drained;
            }
            if since.elapsed() >= config.drain_grace {
                // Out of time: stop the checks, send what is done, hand back the rest.
                for (_, work) in leases.iter() {
                    work.task.abort();
                }
                while let Ok(checked) = verdict_rx.try_recv() {
                    pending
                        .entry(checked.lease_id)
                        .or_default()
                        .extend(checked.verdicts);
                }
                send_verdicts!(pending.drain().collect());
                let held: Vec<(u64, LeaseWork)> = leases.drain().collect();
                for (lease_id, work) in held {
                    info!(lease_id, job_id = %work.job_id, chunk_id = work.chunk_id, "lease handed back");
                    send_or_lose!(pb::worker_message::Kind::HandBack(pb::HandBack {
                        lease_id
                    }));
                }
                // Wait for the coordinator to see everything before closing our side.
                drop(out_tx);
                let _ = tokio::time::timeout(DRAIN_ACK_WAIT, async {
                    while let Ok(Some(_)) = inbound.message().await {}
                })
                .await;
                info!(worker_id = %config.worker_id, "drained after the grace period");
                return SessionEnd::Drained;
            }
        }
        let hungry = !pending.is_empty() && checks.permits.available_permits() > 0;
        let grace_left = draining_since
            .map(|s| config.drain_grace.saturating_sub(s.elapsed()))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            message = inbound.message() => {
                let kind = match message {
                    Ok(Some(m)) => m.kind,
                    Ok(None) => { requeue_unacknowledged(leases, sent, pending); return SessionEnd::Lost("the coordinator ended the session".into()) }
                    Err(status) => { requeue_unacknowledged(leases, sent, pending); return SessionEnd::Lost(format!("stream broken: {}", status.message())) }
                };
                match kind {
                    Some(pb::coordinator_message::Kind::Assign(assign)) => {
                        let lease_id = assign.lease_id;
                        lease_jobs.insert(lease_id, assign.job_id.clone());
                        debug!(lease_id, job_id = %assign.job_id, chunk_id = assign.chunk_id, attempt = assign.attempt, proxies = assign.candidates.len(), "lease received");
                        let revoked = Arc::new(AtomicBool::new(false));
                        let work = LeaseWork {
                            job_id: assign.job_id.clone(),
                            chunk_id: assign.chunk_id,
                            revoked: revoked.clone(),
                            task: tokio::spawn(run_lease(assign, checks.clone(), judges.clone(), revoked, verdict_tx.clone())),
                        };
                        leases.insert(lease_id, work);
                    }
                    Some(pb::coordinator_message::Kind::LeaseDone(done)) => {
                        sent.remove(&done.lease_id);
                        if let Some(work) = leases.remove(&done.lease_id) {
                            debug!(lease_id = done.lease_id, job_id = %work.job_id, chunk_id = work.chunk_id, "lease done");
                        }
                    }
                    Some(pb::coordinator_message::Kind::Revoke(revoke)) => {
                        sent.remove(&revoke.lease_id);
                        if let Some(work) = leases.remove(&revoke.lease_id) {
                            info!(lease_id = revoke.lease_id, job_id = %work.job_id, chunk_id = work.chunk_id, reason = %revoke.reason, "lease revoked");
                            work.revoked.store(true, Ordering::SeqCst);
                        }
                    }
                    Some(pb::coordinator_message::Kind::VerdictsHandled(_))
                    | Some(pb::coordinator_message::Kind::Welcome(_))
                    | None => {}
                }
            }
            Some(Checked { lease_id, verdicts, ended }) = verdict_rx.recv() => {
                let batch = pending.entry(lease_id).or_default();
                batch.extend(verdicts);
                if batch.len() >= BATCH_MAX || ended {
                    let verdicts = pending.remove(&lease_id).unwrap_or_default();
                    if !verdicts.is_empty() {
                        send_verdicts!(vec![(lease_id, verdicts)]);
                        last_sent = tokio::time::Instant::now();
                    }
                }
            }
            Some(status) = judge_rx.recv() => {
                send_or_lose!(pb::worker_message::Kind::JudgeStatus(status));
            }
            _ = flush.tick() => {
                send_verdicts!(pending.drain().collect());
                last_sent = tokio::time::Instant::now();
            }
            _ = tokio::time::sleep_until(last_sent + HUNGRY_INTERVAL), if hungry => {
                send_verdicts!(pending.drain().collect());
                last_sent = tokio::time::Instant::now();
            }
            _ = heartbeat.tick() => {
                let lease_ids = leases.keys().copied().collect();
                let in_flight = (config.max_checks - checks.permits.available_permits()) as u32;
                send_or_lose!(pb::worker_message::Kind::Heartbeat(pb::Heartbeat { lease_ids, checks_in_flight: in_flight }));
            }
            _ = drain.changed(), if !draining => {
                draining = *drain.borrow();
            }
            _ = tokio::time::sleep(grace_left), if draining_since.is_some() => {}
        }
    }
}

/// The session is lost: no new check starts for its leases, but the checks in flight finish;
/// their verdicts, and those sent but not known to be recorded, go out on the next session,
/// where the coordinator refuses and counts them (a new session holds none of the old leases).
fn requeue_unacknowledged(
    leases: &mut HashMap<u64, LeaseWork>,
    sent: &mut HashMap<u64, Vec<pb::Verdict>>,
    pending: &mut HashMap<u64, Vec<pb::Verdict>>,
) {
    for work in leases.values() {
        work.revoked.store(true, Ordering::SeqCst);
    }
    for (lease_id, mut verdicts) in sent.drain() {
        verdicts.extend(pending.remove(&lease_id).unwrap_or_default());
        pending.insert(lease_id, verdicts);
    }
}

/// Stops every check (the worker is exiting).
fn abort_all(leases: &mut HashMap<u64, LeaseWork>) {
    for (_, work) in leases.drain() {
        work.task.abort();
    }
}

/// Checks every candidate of a lease, at most `checks` at once across the worker, and sends each
/// verdict as it is ready. Aborting the task aborts its checks.
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
    let reachable = Arc::new(judges.reachable(&settings.judge_urls, guard).await);
    if reachable.is_empty() {
        // Reported to the coordinator by the probe; it ends the job rather than record every
        // proxy as dead. Nothing to check here until then.
        warn!(lease_id, job_id = %assign.job_id, "no judge of this lease is reachable; not checking it");
        return;
    }
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
        async move {
            // Checks are spread across the judges by candidate.
            let judge = &reachable[candidate.index as usize % reachable.len()];
            let verdict = match Target::from_proto(&candidate) {
                Some(_) if checks.instant => pb::Verdict {
                    index: candidate.index,
                    usable: false,
                    reason: pb::Reason::Network as i32,
                    detail: "not checked: the worker runs with --instant-checks".into(),
                    ..Default::default()
                },
                Some(target) => {
                    let checked = checks.checker.check(&target, judge, &limits).await;
                    let c = checked.classified;
                    pb::Verdict {
                        index: candidate.index,
                        usable: c.usable,
                        reason: c.reason as i32,
                        latency_ms: millis(checked.total),
                        exit_ip: c.exit_ip,
                        detail: c.detail,
                        anonymity: c.anonymity as i32,
                        connect_ms: millis(checked.connect),
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
        let ended = !more && running.is_empty();
        if !batch.is_empty() || ended {
            let _ = verdicts.send(Checked {
                lease_id,
                verdicts: std::mem::take(&mut batch),
                ended,
            });
        }
        if ended {
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

fn verdicts_message(
    lease_jobs: &HashMap<u64, String>,
    lease_id: u64,
    verdicts: Vec<pb::Verdict>,
) -> pb::worker_message::Kind {
    pb::worker_message::Kind::Verdicts(pb::Verdicts {
        lease_id,
        verdicts,
        job_id: lease_jobs.get(&lease_id).cloned().unwrap_or_default(),
        first: None,
    })
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
    use super::*;

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
}
