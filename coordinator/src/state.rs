//! The coordinator's live state: the scheduler behind one lock, the worker sessions' outboxes and
//! the jobs' progress channels. The gRPC layer and the ticker call in here.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proxyfleet_proto::v1 as pb;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::candidate::{self, Rejected};
use crate::config::CoordinatorConfig;
use crate::convert;
use crate::fetch::{FetchPolicy, Fetcher};
use crate::output;
use crate::pools::{self, ServedPools};
use crate::scheduler::{
    Followed, Hello, JobError, JobKind, JobReport, JobSnapshot, LeaseConfig, LeaseRef, Named,
    NewJob, Outbound, PoolChange, Record, ResultRow, RowFilter, Scheduler, Scrape, SessionId,
    SourceSpec, SourceState, SourceStatus,
};
use crate::store::{Reader, Store};
use crate::submit::{self, SubmitError, SubmitPolicy, ValidSubmission};

/// Messages for one worker session's response stream.
pub(crate) type Outbox = mpsc::UnboundedSender<Result<pb::CoordinatorMessage, tonic::Status>>;

/// Coordinator state shared by every task; cheap to clone.
#[derive(Clone)]
pub(crate) struct State {
    /// Everything, shared by every task and handler.
    inner: Arc<Inner>,
}

/// The shared state. Locks are never held across an await. Where two are held at once, the
/// scheduler's is taken first: `scheduler` → `progress` (snapshots reach watchers in the
/// scheduler's order), `scheduler` → `outboxes` (a session's messages keep the scheduler's
/// order), `scheduler` → `end_seqs`, `scheduler` → `store_tx` (writes reach the store in the
/// scheduler's order), `scheduler` → `pools` (snapshots say what the pool's files held when
/// they were made; nothing is taken while `pools` is held). `reader` is never taken with
/// `scheduler` held: reads of the store wait for no one but each other. Every other lock is
/// taken alone.
struct Inner {
    /// The validated configuration, fixed for the process's life.
    config: CoordinatorConfig,
    /// Lease table and jobs; every change goes through this one lock (never held across an await).
    scheduler: Mutex<Scheduler>,
    /// Reads the rows of ended jobs, which are kept in the store only; never taken while the
    /// scheduler lock is held.
    reader: Mutex<Reader>,
    /// Outbox per live worker session; inserted by `open_session`, removed when the session ends.
    outboxes: Mutex<HashMap<SessionId, Outlet>>,
    /// Latest snapshot per job, for watchers; created at submit, updated by `publish`.
    progress: Mutex<HashMap<String, watch::Sender<JobSnapshot>>>,
    /// Reads the sources of scraping jobs.
    fetcher: Fetcher,
    /// Work for the store writer; taken (closed) at shutdown.
    store_tx: Mutex<Option<std::sync::mpsc::Sender<StoreOp>>>,
    /// The store writer thread, joined at shutdown.
    store_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set by the writer if the store fails; the coordinator stops on it.
    store_failure: Arc<watch::Sender<Option<String>>>,
    /// When ended jobs were last pruned (`--retain`).
    last_prune: Mutex<Instant>,
    /// Writes handed to the store writer so far (taken under the scheduler lock), and how many of
    /// them are committed (set by the writer): a job's end is shown to watchers, and a submission
    /// or cancel answered, only once every record before it is durable.
    journal_seq: AtomicU64,
    /// The journal position the store writer committed last (set by the writer).
    durable_seq: Arc<watch::Sender<u64>>,
    /// The write that carried each ended job's last record, until its end is published.
    end_seqs: Mutex<HashMap<String, u64>>,
    /// Work for the publisher (see [`State::publisher`]): what the store writer committed, and
    /// ended jobs to write out and show. Sent by the writer and by `publish`.
    events: mpsc::UnboundedSender<Event>,
    /// The publisher's end of `events`, until [`State::publisher`] takes it.
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    /// Every pool as the store holds it, for clients and followers, and what its files hold:
    /// changed by the publisher only, with what the store committed.
    pools: Mutex<ServedPools>,
}

/// Work for the publisher, the one task that writes output files and delivers what waited for
/// the store.
enum Event {
    /// A write is durable: the lease completions that waited for it, whether a job ended in it
    /// (its end may be shown now), and the pool changes it holds, in order.
    Committed {
        acks: Vec<Outbound>,
        job_ended: bool,
        pools: Vec<PoolChange>,
    },
    /// Jobs pruned from the store (`--retain`): forget them and remove their directories.
    Pruned(Vec<String>),
    /// A job ended and its end is durable: write its files, then show its end.
    Ended(Box<JobSnapshot>),
    /// Shutdown: everything sent before is done; stop.
    Stop,
}

/// A live worker session's response stream, and the worker it serves (named in log lines).
struct Outlet {
    worker_id: String,
    outbox: Outbox,
}

/// The worker a live session serves, for log lines; empty once the session is gone.
fn worker_of(outboxes: &HashMap<SessionId, Outlet>, session: SessionId) -> &str {
    outboxes.get(&session).map_or("", |o| o.worker_id.as_str())
}

/// Work for the store writer thread.
enum StoreOp {
    Write {
        records: Vec<crate::scheduler::Record>,
        /// LeaseDone and VerdictsHandled messages, sent once the records are committed.
        acks: Vec<Outbound>,
        next_lease: u64,
        /// Position in the journal (see `Inner::journal_seq`).
        seq: u64,
    },
    Prune {
        before_ms: u64,
    },
    /// Delete these ended jobs (old revalidation rounds).
    Forget {
        job_ids: Vec<String>,
    },
}

/// The store writer thread's part: it owns the store, and reports what it committed to the
/// publisher; it never calls back into the state.
struct StoreWriter {
    /// The database, written by this thread only.
    store: Store,
    /// Set if the store fails; the coordinator stops on it.
    failure: Arc<watch::Sender<Option<String>>>,
    /// The journal position committed last (see `Inner::journal_seq`).
    durable_seq: Arc<watch::Sender<u64>>,
    /// Where what was committed goes: the publisher.
    events: mpsc::UnboundedSender<Event>,
}

impl StoreWriter {
    /// Commits batches of changes (every batch waiting is one transaction), then reports them.
    /// A failing store stops the coordinator.
    fn run(mut self, rx: std::sync::mpsc::Receiver<StoreOp>) {
        while let Ok(first) = rx.recv() {
            let mut records = Vec::new();
            let mut acks = Vec::new();
            let mut next_lease = 0;
            let mut prunes = Vec::new();
            let mut committed_seq = None;
            let mut job_ended = false;
            let mut pools = Vec::new();
            for op in std::iter::once(first).chain(rx.try_iter()) {
                match op {
                    StoreOp::Write {
                        records: r,
                        acks: a,
                        next_lease: n,
                        seq,
                    } => {
                        // A job ended in these records: publish it once they are committed.
                        job_ended |= r.iter().any(
                            |record| matches!(record, Record::Job(job) if job.state.is_terminal()),
                        );
                        pools.extend(r.iter().filter_map(|record| match record {
                            Record::Pool(change) => Some(change.clone()),
                            _ => None,
                        }));
                        records.extend(r);
                        acks.extend(a);
                        next_lease = next_lease.max(n);
                        committed_seq = Some(seq);
                    }
                    StoreOp::Prune { before_ms } => prunes.push(Err(before_ms)),
                    StoreOp::Forget { job_ids } => prunes.push(Ok(job_ids)),
                }
            }
            if let Err(e) = self.store.write(&records, next_lease) {
                self.fail(e);
                return;
            }
            if let Some(seq) = committed_seq {
                self.durable_seq.send_replace(seq);
            }
            // Fails only once the publisher has stopped, at shutdown, when acks no longer matter.
            let _ = self.events.send(Event::Committed {
                acks,
                job_ended,
                pools,
            });
            for prune in prunes {
                let pruned = match prune {
                    Err(before_ms) => self.store.prune(before_ms),
                    Ok(job_ids) => self.store.forget_jobs(job_ids),
                };
                match pruned {
                    Ok(ids) => {
                        let _ = self.events.send(Event::Pruned(ids));
                    }
                    Err(e) => {
                        self.fail(e);
                        return;
                    }
                }
            }
        }
    }

    fn fail(&self, e: crate::store::StoreError) {
        error!(error = %e, "the store failed; stopping");
        self.failure.send_replace(Some(e.to_string()));
    }
}

/// A queued job and what was left out of its list.
#[derive(Debug)]
pub(crate) struct Submitted {
    pub(crate) snapshot: JobSnapshot,
    pub(crate) rejected: Vec<Rejected>,
    pub(crate) duplicates: u64,
    /// The write that carries the job; its id may be given out once this is committed.
    pub(crate) commit: Commit,
}

/// A position in the store's journal: every change made up to some call. [`State::committed`]
/// waits until it is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Commit(u64);

/// Where a follower of a job's results is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FollowCursor {
    /// Has read this many verdicts, in the order they were recorded.
    Recorded(usize),
    /// The job has ended and the follower read the first `position` verdicts it recorded; what
    /// is left is read by candidate index, from `start`.
    Rest { position: usize, start: usize },
    /// Has seen every candidate.
    Done,
}

impl FollowCursor {
    /// Where a follower reading the rest after `position` recorded verdicts goes next: from
    /// candidate `next`, or nowhere after the last.
    fn rest(position: usize, next: Option<usize>) -> FollowCursor {
        match next {
            Some(start) => FollowCursor::Rest { position, start },
            None => FollowCursor::Done,
        }
    }
}

/// Rows read at once when a job's results are read whole.
const RESULTS_PAGE: usize = 1_000;

/// How many ended revalidation rounds of a pool are kept as jobs (`proxyfleet jobs` lists them).
const KEEP_ROUNDS: usize = 20;

/// How often, at most, a pool's files are written while its live set keeps changing: a pool of
/// a million proxies is not rewritten for every check.
const POOL_FILES_EVERY: Duration = Duration::from_secs(1);

/// The most an answer waits for the store to commit what it reports.
const COMMIT_WAIT: Duration = Duration::from_secs(60);

/// What a client may get wrong about a pool.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum PoolError {
    #[error("invalid pool name {name:?}: {problem}")]
    BadName { name: String, problem: String },
    #[error(
        "no pool named {name:?}; known pools: {}; a refresh with --pool NAME makes one",
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    )]
    NotFound { name: String, known: Vec<String> },
}

fn check_pool_name(name: &str) -> Result<(), PoolError> {
    match submit::pool_name_problem(name) {
        Some(problem) => Err(PoolError::BadName {
            name: name.to_string(),
            problem,
        }),
        None => Ok(()),
    }
}

/// Why what a request did is not known to be durable; nothing may be acknowledged then.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommitError {
    /// The store failed (the coordinator stops on it): the write was rolled back.
    #[error("{0}")]
    StoreFailed(String),
    #[error(
        "the store did not commit it within {}s (is the disk of the data dir stuck?)",
        .0.as_secs()
    )]
    TimedOut(Duration),
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn new_job_id() -> String {
    crate::scheduler::new_id("job")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock is a bug; the state is still the best there is.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Opens the store in the data dir, brings back every job it holds, and starts its writer.
    pub(crate) fn new(config: CoordinatorConfig) -> Result<Self, crate::Error> {
        let fetcher = Fetcher::new(FetchPolicy {
            allow_private: config.allow_private_targets,
            max_bytes: config.max_source_bytes,
            ..FetchPolicy::default()
        })?;
        let mut store = Store::open(&config.data_dir)?;
        let reader = Reader::open(&config.data_dir)?;
        let (ids, lease_floor) = store.job_ids()?;
        let mut scheduler = Scheduler::new(
            LeaseConfig {
                lease_ttl: config.lease_ttl,
                default_judges: config.judge_urls.clone(),
                speculation: config.speculation,
            },
            first_lease_id().max(lease_floor),
        );
        let geo = match &config.geoip {
            crate::config::GeoIpFiles::Off => crate::geo::Geo::default(),
            crate::config::GeoIpFiles::Installed => crate::geo::Geo::open(&[])?,
            crate::config::GeoIpFiles::Files(files) => crate::geo::Geo::open(files)?,
        };
        if geo.is_empty() {
            info!("no GeoIP database: pool members get no country (--geoip FILE names one)");
        } else {
            info!(files = ?geo.files(), "exit countries from GeoIP databases");
        }
        scheduler.configure_pools(
            config.pool_max_failures,
            config.revalidate_every,
            Arc::new(geo),
        );
        // Pools first: a refresh restored below feeds its pool as it checks.
        let stored_pools = store.pools()?;
        if !stored_pools.is_empty() {
            info!(
                pools = stored_pools.len(),
                members = stored_pools.iter().map(|p| p.members.len()).sum::<usize>(),
                "pools restored from the data dir"
            );
        }
        let mut served = ServedPools::new(
            stored_pools
                .iter()
                .map(|p| (p.meta.clone(), p.members.clone())),
        );
        for pool in stored_pools {
            scheduler.restore_pool(pool.meta, pool.members);
        }
        let now = Instant::now();
        let mut out = Vec::new();
        let mut scrapes = Vec::new();
        // One job at a time: an ended job's rows stay in the store, so memory holds only the
        // jobs still at work, however long the history.
        for id in &ids {
            let job = store.load_job(id)?;
            out.extend(scheduler.restore(job, now, wall_ms()));
            // Restoring saves only what it changed: an unfinished job started again, or one
            // ended because nothing was left to check. Written before anything is served, so
            // such an end is durable before anyone is shown it.
            let changed = scheduler.take_journal();
            if !changed.is_empty() {
                store.write(&changed, scheduler.next_lease_id())?;
                // Clients see what the store holds: a round that restoring ended, too.
                apply_pool_changes(
                    &mut served,
                    changed.into_iter().filter_map(|r| match r {
                        Record::Pool(change) => Some(change),
                        _ => None,
                    }),
                );
            }
            scrapes.extend(scheduler.take_scrapes());
            scheduler.keep_in_store(id);
        }
        // A job that a later one's restore ended is durable now too.
        for id in &ids {
            scheduler.keep_in_store(id);
        }
        let restored = ids.len();
        let mut progress = HashMap::new();
        for id in scheduler.job_ids() {
            if let Ok(snapshot) = scheduler.snapshot(&id, false, now) {
                progress.insert(id, watch::channel(snapshot).0);
            }
        }
        if restored > 0 {
            info!(jobs = restored, "jobs restored from the data dir");
        }
        let (store_tx, store_rx) = std::sync::mpsc::channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let store_failure = Arc::new(watch::channel(None).0);
        let durable_seq = Arc::new(watch::channel(0).0);
        let writer = {
            let writer = StoreWriter {
                store,
                failure: store_failure.clone(),
                durable_seq: durable_seq.clone(),
                events: events.clone(),
            };
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || writer.run(store_rx))?
        };
        let state = State {
            inner: Arc::new(Inner {
                config,
                scheduler: Mutex::new(scheduler),
                reader: Mutex::new(reader),
                outboxes: Mutex::new(HashMap::new()),
                progress: Mutex::new(progress),
                fetcher,
                store_tx: Mutex::new(Some(store_tx)),
                store_thread: Mutex::new(Some(writer)),
                store_failure,
                last_prune: Mutex::new(now),
                journal_seq: AtomicU64::new(0),
                durable_seq,
                end_seqs: Mutex::new(HashMap::new()),
                events,
                events_rx: Mutex::new(Some(events_rx)),
                pools: Mutex::new(served),
            }),
        };
        state.deliver(out);
        for scrape in scrapes {
            state.scrape(scrape);
        }
        Ok(state)
    }

    /// The publisher: the one task that delivers what waited for the store, writes output files
    /// and removes pruned jobs' directories, in the order it is told. `run` supervises it; it
    /// ends at [`State::stop_publisher`]. Only the first call gets the work; a second returns.
    pub(crate) async fn publisher(self) {
        let Some(mut events) = lock(&self.inner.events_rx).take() else {
            return;
        };
        // When pool files were last written: changes that come faster wait for the next tick.
        let mut last_files: Option<Instant> = None;
        let mut ticks = tokio::time::interval(POOL_FILES_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                _ = ticks.tick() => {
                    self.write_pool_files(&mut last_files, true);
                    continue;
                }
            };
            match event {
                None => return,
                Some(Event::Stop) => {
                    // What the events before the stop sent meanwhile (a job ended in the last
                    // write) is done too; nothing else comes.
                    while let Ok(event) = events.try_recv() {
                        self.handle(event, &mut last_files);
                    }
                    self.write_pool_files(&mut last_files, true);
                    return;
                }
                Some(event) => self.handle(event, &mut last_files),
            }
        }
    }

    /// Does one piece of the publisher's work.
    fn handle(&self, event: Event, last_files: &mut Option<Instant>) {
        match event {
            Event::Committed {
                acks,
                job_ended,
                pools,
            } => {
                self.deliver(acks);
                if !pools.is_empty() {
                    apply_pool_changes(&mut lock(&self.inner.pools), pools);
                }
                self.write_pool_files(last_files, false);
                if job_ended {
                    self.publish();
                }
            }
            Event::Pruned(ids) => self.forget(ids),
            Event::Ended(snapshot) => self.show_end(*snapshot),
            Event::Stop => {}
        }
    }

    /// Writes the files of every pool whose live set changed since they were written (unless
    /// they were written less than [`POOL_FILES_EVERY`] ago and `due` is not set), then shows the
    /// pools' refreshes what the files hold.
    fn write_pool_files(&self, last: &mut Option<Instant>, due: bool) {
        if !due && last.is_some_and(|at| at.elapsed() < POOL_FILES_EVERY) {
            return;
        }
        let stale = lock(&self.inner.pools).stale_files();
        if stale.is_empty() {
            return;
        }
        *last = Some(Instant::now());
        for (pool, live) in stale {
            let dir = pool_dir(&self.inner.config, &pool);
            // Files an earlier release wrote from its last refresh are not emptied before the
            // pool has a member: they are the best there is until then.
            if live.is_empty()
                && lock(&self.inner.pools)
                    .files_fresh_since(&pool, 0)
                    .is_none()
                && std::fs::metadata(dir.join(output::LIVE_TXT)).is_ok_and(|m| m.len() > 0)
            {
                lock(&self.inner.pools).files_kept(&pool);
                continue;
            }
            match output::write_all(&dir, &pools::render(&live)) {
                Ok(()) => {
                    let path = dir.join(output::LIVE_TXT);
                    let path = std::path::absolute(&path).unwrap_or(path);
                    debug!(pool = %pool, live = live.len(), "pool files hold the live set");
                    lock(&self.inner.pools).files_written(&pool, path.display().to_string(), &live);
                    // Its refresh's watchers learn what the files hold only now that they do.
                    let mut scheduler = lock(&self.inner.scheduler);
                    if let Some(job_id) = scheduler.running_in(&pool) {
                        scheduler.mark_dirty(&job_id);
                    }
                }
                Err(e) => {
                    warn!(pool = %pool, dir = %dir.display(), error = %e, "could not write the pool's live set to its files; trying again")
                }
            }
        }
        self.publish();
    }

    /// Sets what a snapshot says of its pool's files: how many live proxies they hold.
    fn with_pool_files(&self, mut snapshot: JobSnapshot) -> JobSnapshot {
        set_pool_files(&lock(&self.inner.pools), &mut snapshot);
        snapshot
    }

    /// Tells the publisher to stop once it has done everything sent to it before.
    pub(crate) fn stop_publisher(&self) {
        let _ = self.inner.events.send(Event::Stop);
    }

    /// Flushes and closes the store (shutdown): nothing acknowledged is lost.
    pub(crate) fn close_store(&self) {
        lock(&self.inner.store_tx).take();
        let writer = lock(&self.inner.store_thread).take();
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }

    /// What the metrics endpoint shows.
    pub(crate) fn metrics(&self) -> crate::scheduler::Metrics {
        lock(&self.inner.scheduler).metrics()
    }

    /// Waits until `commit` is durable, at most [`COMMIT_WAIT`]; fails if the store fails first.
    pub(crate) async fn committed(&self, commit: Commit) -> Result<(), CommitError> {
        self.committed_within(commit, COMMIT_WAIT).await
    }

    async fn committed_within(&self, commit: Commit, limit: Duration) -> Result<(), CommitError> {
        let mut durable = self.inner.durable_seq.subscribe();
        let mut failure = self.inner.store_failure.subscribe();
        let wait = async {
            // Durable first: a write committed before a later one failed stays committed.
            tokio::select! {
                biased;
                done = durable.wait_for(|&seq| seq >= commit.0) => match done {
                    Ok(_) => Ok(()),
                    Err(_) => Err(CommitError::StoreFailed("the store writer is gone".into())),
                },
                failed = failure.wait_for(Option::is_some) => Err(CommitError::StoreFailed(
                    failed
                        .ok()
                        .and_then(|f| f.clone())
                        .unwrap_or_else(|| "the store writer is gone".into()),
                )),
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .unwrap_or(Err(CommitError::TimedOut(limit)))
    }

    /// Completes with the store's error, if it ever fails.
    pub(crate) fn store_failed(
        &self,
    ) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut failure = self.inner.store_failure.subscribe();
        async move {
            let failed = match failure.wait_for(|f| f.is_some()).await {
                Ok(f) => f.clone(),
                Err(_) => None,
            };
            match failed {
                Some(error) => error,
                // The sender lives as long as the state: no failure will ever come.
                None => std::future::pending().await,
            }
        }
    }

    /// Drops pruned jobs from memory, and their files under `DATA_DIR/jobs/`.
    fn forget(&self, ids: Vec<String>) {
        {
            let mut scheduler = lock(&self.inner.scheduler);
            let mut progress = lock(&self.inner.progress);
            for id in &ids {
                scheduler.forget(id);
                progress.remove(id);
            }
        }
        for id in ids {
            match remove_job_dir(&self.inner.config, &id) {
                Ok(()) => info!(job_id = %id, "job pruned: older than --retain"),
                Err(e) => {
                    warn!(job_id = %id, error = %e, "job pruned, but its files could not be removed")
                }
            }
        }
    }

    pub(crate) fn config(&self) -> &CoordinatorConfig {
        &self.inner.config
    }

    /// Runs `f` on the scheduler, hands its changes to the store and delivers what it sends to
    /// workers; a lease's completion is acknowledged only once its verdicts are durable.
    fn with_scheduler<R>(&self, f: impl FnOnce(&mut Scheduler) -> (R, Vec<Outbound>)) -> R {
        self.with_scheduler_journaled(f).0
    }

    /// [`State::with_scheduler`], also returning the journal position that covers every change
    /// made so far, this call's included: an answer that reports them waits for it.
    fn with_scheduler_journaled<R>(
        &self,
        f: impl FnOnce(&mut Scheduler) -> (R, Vec<Outbound>),
    ) -> (R, Commit) {
        let mut scheduler = lock(&self.inner.scheduler);
        let (r, out) = f(&mut scheduler);
        let records = scheduler.take_journal();
        let scrapes = scheduler.take_scrapes();
        let (acks, out): (Vec<Outbound>, Vec<Outbound>) = out
            .into_iter()
            .partition(|o| matches!(o, Outbound::LeaseDone(..) | Outbound::VerdictsHandled(..)));
        if !records.is_empty() || !acks.is_empty() {
            // Closed only at shutdown, when acks no longer matter.
            if let Some(tx) = lock(&self.inner.store_tx).as_ref() {
                // Taken under the scheduler lock: the store receives writes in this order.
                let seq = self.inner.journal_seq.fetch_add(1, Ordering::AcqRel) + 1;
                for record in &records {
                    if let Record::Job(job) = record
                        && job.state.is_terminal()
                    {
                        lock(&self.inner.end_seqs).insert(job.id.clone(), seq);
                    }
                }
                let op = StoreOp::Write {
                    records,
                    acks,
                    next_lease: scheduler.next_lease_id(),
                    seq,
                };
                let _ = tx.send(op);
            }
        }
        // Read under the scheduler lock: nothing later than this call is counted in.
        let commit = Commit(self.inner.journal_seq.load(Ordering::Acquire));
        // Delivered under the scheduler lock so a session's messages keep the scheduler's order.
        self.deliver(out);
        for scrape in scrapes {
            self.scrape(scrape);
        }
        (r, commit)
    }

    fn deliver(&self, out: Vec<Outbound>) {
        if out.is_empty() {
            return;
        }
        let mut outboxes = lock(&self.inner.outboxes);
        for message in out {
            let (session, kind) = match message {
                Outbound::Assign(s, a) => {
                    info!(
                        job_id = %a.job_id, chunk_id = a.chunk_id, lease_id = a.lease_id, worker_id = worker_of(&outboxes, s),
                        session_id = s, attempt = a.attempt, proxies = a.candidates.len(), "lease granted"
                    );
                    let assign =
                        convert::assignment_to_proto(&a, self.inner.config.target_policy());
                    (s, pb::coordinator_message::Kind::Assign(assign))
                }
                Outbound::LeaseDone(s, lease) => {
                    info!(
                        job_id = %lease.job_id, chunk_id = lease.chunk_id, lease_id = lease.lease_id,
                        worker_id = worker_of(&outboxes, s), session_id = s, "lease done"
                    );
                    (
                        s,
                        pb::coordinator_message::Kind::LeaseDone(pb::LeaseDone {
                            lease_id: lease.lease_id,
                            job_id: lease.job_id,
                            chunk_id: lease.chunk_id.unwrap_or_default(),
                        }),
                    )
                }
                Outbound::Revoke(s, lease, reason) => {
                    info!(
                        job_id = %lease.job_id, chunk_id = lease.chunk_id, lease_id = lease.lease_id,
                        worker_id = worker_of(&outboxes, s), session_id = s, reason, "lease revoked"
                    );
                    (
                        s,
                        pb::coordinator_message::Kind::Revoke(pb::Revoke {
                            lease_id: lease.lease_id,
                            reason: reason.to_string(),
                            job_id: lease.job_id,
                            chunk_id: lease.chunk_id,
                        }),
                    )
                }
                Outbound::VerdictsHandled(s, lease_id, through) => (
                    s,
                    pb::coordinator_message::Kind::VerdictsHandled(pb::VerdictsHandled {
                        lease_id,
                        through,
                    }),
                ),
                Outbound::Close(s) => {
                    info!(
                        session_id = s,
                        worker_id = worker_of(&outboxes, s),
                        "session replaced by a newer one of the same worker"
                    );
                    outboxes.remove(&s);
                    continue;
                }
            };
            if let Some(outlet) = outboxes.get(&session) {
                // A send fails only when the session is going away; its leases are handled on disconnect.
                let _ = outlet
                    .outbox
                    .send(Ok(pb::CoordinatorMessage { kind: Some(kind) }));
            }
        }
    }

    /// What the coordinator allows a submission now: its configuration and its jobs not ended.
    fn submit_policy(&self) -> SubmitPolicy {
        let config = &self.inner.config;
        SubmitPolicy {
            targets: config.target_policy(),
            max_candidates: config.max_candidates,
            max_attempts: config.max_attempts,
            max_active_jobs: config.max_active_jobs,
            active_jobs: lock(&self.inner.scheduler).active_jobs(),
        }
    }

    /// Checks a submission against the coordinator's policy (see [`submit::validate`]), with the
    /// operator's sources file read first when the request asks for it. Reads a file and parses
    /// the whole list: not for the threads that serve the streams.
    pub(crate) fn validate(
        &self,
        request: pb::SubmitJobRequest,
    ) -> Result<ValidSubmission, SubmitError> {
        let own_sources = if request.use_coordinator_sources {
            self.coordinator_sources()?
        } else {
            Vec::new()
        };
        submit::validate(request, own_sources, &self.submit_policy())
    }

    /// Queues a checked submission as a new job; its id may be given out once the returned
    /// commit is durable.
    pub(crate) fn submit(&self, valid: ValidSubmission) -> Submitted {
        let id = new_job_id();
        let proxies = valid.candidates.len();
        let now = Instant::now();
        let mut candidates = valid.candidates;
        if !valid.keep_order {
            spread(&mut candidates);
        }
        let new = NewJob {
            id: id.clone(),
            name: valid.name,
            settings: valid.settings,
            candidates,
            sources: valid.sources,
            dropped: valid.dropped,
        };
        let (snapshot, commit) = self.with_scheduler_journaled(|s| {
            let out = s.submit(new, now, wall_ms());
            let snapshot = s.snapshot(&id, false, now).expect("just submitted");
            // The channel exists before the lock is released, so no later change can miss it.
            lock(&self.inner.progress).insert(id.clone(), watch::channel(snapshot.clone()).0);
            (snapshot, out)
        });
        info!(
            job_id = %id, proxies, sources = snapshot.sources.len(), rejected = valid.rejected.len(),
            duplicates = valid.duplicates, chunks = snapshot.progress.chunks_total, "job submitted"
        );
        Submitted {
            snapshot,
            rejected: valid.rejected,
            duplicates: valid.duplicates,
            commit,
        }
    }

    /// The sources of the operator's --sources file, trusted to name local files.
    pub(crate) fn coordinator_sources(&self) -> Result<Vec<SourceSpec>, SubmitError> {
        let Some(path) = &self.inner.config.sources_file else {
            return Err(SubmitError::NoSourcesFile);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            SubmitError::SourcesFile(format!("cannot read {}: {e}", path.display()))
        })?;
        let sources = crate::sources::parse_sources_file(&text)
            .map_err(|e| SubmitError::SourcesFile(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(sources
            .into_iter()
            .map(|source| {
                // Relative paths in the file are relative to the file.
                let url = match crate::fetch::locate(&source.url) {
                    Ok(crate::fetch::Location::File(file)) => base.join(file).display().to_string(),
                    _ => source.url,
                };
                SourceSpec {
                    url,
                    protocols: source.protocols,
                    content: None,
                    trusted: true,
                }
            })
            .collect())
    }

    /// A scheduled refresh of the default pool, unless one is still running.
    pub(crate) fn scheduled_refresh(&self) {
        let Some(schedule) = self.inner.config.refresh.clone() else {
            return;
        };
        let running = lock(&self.inner.scheduler).running_in("default");
        if let Some(job_id) = running {
            info!(job_id = %job_id, "scheduled refresh skipped: a refresh of the pool is still running");
            return;
        }
        // The request `proxyfleet refresh` sends without a sources file, with the schedule's settings.
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        let request = pb::SubmitJobRequest {
            use_coordinator_sources: true,
            timeout_ms: millis(schedule.check_timeout),
            min_usable: Some(schedule.min_usable),
            deadline_ms: millis(schedule.every.max(Duration::from_secs(60))),
            name: "scheduled refresh".into(),
            ..pb::SubmitJobRequest::default()
        };
        match self.validate(request) {
            Ok(valid) => {
                let job = self.submit(valid);
                info!(job_id = %job.snapshot.id, "scheduled refresh started");
            }
            Err(e @ (SubmitError::NoSourcesFile | SubmitError::SourcesFile(_))) => {
                warn!(error = %e, "scheduled refresh skipped: the sources file is unusable")
            }
            Err(e) => warn!(error = %e, "scheduled refresh could not start"),
        }
    }

    /// Fetches a scraping job's sources, then hands their candidates to the scheduler.
    fn scrape(&self, scrape: Scrape) {
        let Scrape {
            job_id,
            sources: specs,
        } = scrape;
        let state = self.clone();
        // Bounded by the fetch policy's timeouts and attempts; the scheduler ignores its result
        // if the job ended meanwhile.
        tokio::spawn(async move {
            let protocols =
                match lock(&state.inner.scheduler).snapshot(&job_id, false, Instant::now()) {
                    Ok(s) => s.settings.protocols.clone(),
                    Err(_) => return,
                };
            let policy = state.inner.config.target_policy();
            // Sources read at once hold together no more candidates than the job may check.
            let budget = candidate::CandidateBudget::new(state.inner.config.max_candidates);
            let mut fetches = tokio::task::JoinSet::new();
            for (position, spec) in specs.into_iter().enumerate() {
                let budget = budget.clone();
                let state = state.clone();
                let job_id = job_id.clone();
                let protocols = if spec.protocols.is_empty() {
                    protocols.clone()
                } else {
                    spec.protocols.clone()
                };
                fetches.spawn(async move {
                    let mut status = SourceStatus {
                        url: spec.url.clone(),
                        state: SourceState::Fetching,
                        candidates: 0,
                        rejected: 0,
                        bytes: 0,
                        error: String::new(),
                    };
                    lock(&state.inner.scheduler).source_progress(&job_id, status.clone());
                    // A source is read as it arrives: memory follows its candidates, not its size.
                    let mut reader =
                        candidate::SourceReader::new(&protocols, policy).within(budget.clone());
                    let fetched = match spec.content {
                        Some(text) => {
                            // In pieces, as a fetched source arrives: the same shapes and limits.
                            let mut stopped = None;
                            for piece in text.as_bytes().chunks(64 * 1024) {
                                reader.push(piece);
                                stopped = reader.stopped();
                                if stopped.is_some() {
                                    break;
                                }
                            }
                            match stopped {
                                Some(stop) => Err(crate::fetch::FetchError::Stopped(stop)),
                                None => Ok(text.len() as u64),
                            }
                        }
                        None => state.inner.fetcher.fetch(&spec.url, spec.trusted, &mut reader).await,
                    };
                    let max_candidates = state.inner.config.max_candidates;
                    let fetched = fetched
                        .and_then(|bytes| Ok((bytes, reader.finish()?)));
                    let parsed = match fetched {
                        Ok((bytes, parsed)) => {
                            status.state = SourceState::Fetched;
                            status.bytes = bytes;
                            status.candidates = parsed.candidates.len() as u64;
                            status.rejected = parsed.rejected.len() as u64;
                            if parsed.candidates.is_empty() {
                                warn!(job_id = %job_id, source = %spec.url, "source held no candidate");
                            }
                            Some(parsed)
                        }
                        Err(e) => {
                            warn!(job_id = %job_id, source = %spec.url, error = %e, "source fetch failed");
                            status.state = SourceState::Failed;
                            status.error = match e {
                                crate::fetch::FetchError::Stopped(candidate::Stop::OverBudget) => format!(
                                    "the job's sources hold more than {max_candidates} candidates (--max-candidates)"
                                ),
                                other => other.to_string(),
                            };
                            None
                        }
                    };
                    info!(job_id = %job_id, source = %spec.url, state = status.state.name(), candidates = status.candidates, "source done");
                    lock(&state.inner.scheduler).source_progress(&job_id, status);
                    (position, parsed)
                });
            }
            // Sources are fetched at once (bounded by the fetcher); their candidates join in order.
            let mut results = fetches.join_all().await;
            results.sort_by_key(|(position, _)| *position);
            let results = results.into_iter().map(|(_, parsed)| parsed);
            let mut candidates = Vec::new();
            let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
            for parsed in results.into_iter().flatten() {
                candidates.extend(parsed.candidates);
                for (why, n) in parsed.dropped {
                    *dropped.entry(why.to_string()).or_default() += n;
                }
            }
            spread(&mut candidates);
            state.with_scheduler(|s| {
                (
                    (),
                    s.scraped(&job_id, candidates, dropped, Instant::now(), wall_ms()),
                )
            });
            state.publish();
        });
    }

    pub(crate) fn job(&self, job_id: &str, include_chunks: bool) -> Result<JobSnapshot, JobError> {
        let (mut snapshot, stored) = {
            let scheduler = lock(&self.inner.scheduler);
            let snapshot = scheduler.snapshot(job_id, include_chunks, Instant::now())?;
            (snapshot, scheduler.stored_rows(job_id)?)
        };
        if let (true, Some(stored)) = (include_chunks, stored) {
            snapshot.chunks = lock(&self.inner.reader)
                .chunks(job_id, stored)
                .map_err(|e| JobError::Unreadable(e.to_string()))?;
        }
        Ok(self.with_pool_files(snapshot))
    }

    /// What became of a job: its sources, dropped entries, verdicts by reason, chunks and the
    /// workers that checked it (for `GetJobReport`, the HTTP API and `summary.json`).
    pub(crate) fn job_report(&self, job_id: &str) -> Result<JobReport, JobError> {
        let mut report = lock(&self.inner.scheduler).report(job_id, Instant::now())?;
        report.job = self.with_pool_files(report.job);
        Ok(report)
    }

    /// The ids of the `limit` newest jobs the scheduler holds, newest first; builds no snapshot.
    pub(crate) fn recent_job_ids(&self, limit: usize) -> Vec<String> {
        lock(&self.inner.scheduler).recent_job_ids(limit)
    }

    pub(crate) fn jobs(&self) -> Vec<JobSnapshot> {
        let scheduler = lock(&self.inner.scheduler);
        let pools = lock(&self.inner.pools);
        let now = Instant::now();
        scheduler
            .job_ids()
            .iter()
            .filter_map(|id| scheduler.snapshot(id, false, now).ok())
            .map(|mut snapshot| {
                set_pool_files(&pools, &mut snapshot);
                snapshot
            })
            .collect()
    }

    /// Cancels a job; the snapshot may be reported once the returned commit is durable.
    pub(crate) fn cancel(&self, job_id: &str) -> Result<(JobSnapshot, Commit), JobError> {
        let (snapshot, commit) =
            self.with_scheduler_journaled(|s| match s.cancel(job_id, Instant::now(), wall_ms()) {
                Ok((snap, out)) => (Ok(snap), out),
                Err(e) => (Err(e), Vec::new()),
            });
        let snapshot = self.with_pool_files(snapshot?);
        info!(job_id, "job cancel requested");
        self.publish();
        Ok((snapshot, commit))
    }

    /// `name`'s members that pass `filter`, in `order`, at most `limit` (0: all).
    pub(crate) fn pool(
        &self,
        name: &str,
        filter: &pools::PoolFilter,
        order: pools::PoolOrder,
        limit: usize,
    ) -> Result<pools::PoolView, PoolError> {
        check_pool_name(name)?;
        let served = lock(&self.inner.pools);
        served
            .view(name, filter, order, limit)
            .ok_or_else(|| PoolError::NotFound {
                name: name.to_string(),
                known: served.names(),
            })
    }

    /// A member leaves its pool's live set after this many failed checks in a row.
    pub(crate) fn pool_max_failures(&self) -> u32 {
        self.inner.config.pool_max_failures
    }

    /// Failures a client saw through members of `name`; how many named a member. Counted once
    /// the store holds them.
    pub(crate) async fn report_proxies(
        &self,
        name: &str,
        reports: Vec<(String, crate::scheduler::Reason, String)>,
    ) -> Result<usize, PoolError> {
        check_pool_name(name)?;
        let (counted, commit) =
            self.with_scheduler_journaled(|s| (s.reported(name, reports, wall_ms()), Vec::new()));
        // Not acknowledged before it is durable; a store that failed stops the coordinator.
        let _ = self.committed(commit).await;
        Ok(counted)
    }

    /// Every pool's head.
    pub(crate) fn pools(&self) -> Vec<pools::PoolSummary> {
        let served = lock(&self.inner.pools);
        served
            .names()
            .iter()
            .filter_map(|n| served.summary(n))
            .collect()
    }

    /// A snapshot of `name`'s members that pass `filter`, and every committed change after it.
    /// A pool that does not exist yet is followed from empty: a gateway may start first.
    pub(crate) fn follow_pool(
        &self,
        name: &str,
        filter: &pools::PoolFilter,
    ) -> Result<pools::Following, PoolError> {
        check_pool_name(name)?;
        Ok(lock(&self.inner.pools).follow(name, filter))
    }

    pub(crate) fn workers(&self) -> Vec<crate::scheduler::WorkerSnapshot> {
        lock(&self.inner.scheduler).workers(Instant::now())
    }

    /// Every row of a job that `filter` keeps, in candidate order, read page by page.
    pub(crate) fn results(
        &self,
        job_id: &str,
        filter: RowFilter,
    ) -> Result<Vec<ResultRow>, JobError> {
        let mut rows = Vec::new();
        let mut next = Some(0);
        while let Some(start) = next {
            let (page, after) = self.results_page(job_id, start, RESULTS_PAGE, filter)?;
            rows.extend(page);
            next = after;
        }
        Ok(rows)
    }

    /// A page of results; see [`Scheduler::results_page`]. An ended job's come from the store.
    pub(crate) fn results_page(
        &self,
        job_id: &str,
        start: usize,
        limit: usize,
        filter: RowFilter,
    ) -> Result<(Vec<ResultRow>, Option<usize>), JobError> {
        let stored = {
            let scheduler = lock(&self.inner.scheduler);
            match scheduler.stored_rows(job_id)? {
                None => return scheduler.results_page(job_id, start, limit, filter),
                Some(stored) => stored,
            }
        };
        // Kept in the store for good: read without the scheduler lock.
        lock(&self.inner.reader)
            .results_page(job_id, stored, start, limit, filter)
            .map_err(|e| JobError::Unreadable(e.to_string()))
    }

    /// The next rows a follower of a job has not seen, at most `limit`: verdicts as they are
    /// recorded, then, once the job has ended, the candidates never checked. Every candidate is
    /// followed exactly once, even when the job's rows leave memory for the store meanwhile.
    pub(crate) fn follow(
        &self,
        job_id: &str,
        at: FollowCursor,
        limit: usize,
        usable_only: bool,
    ) -> Result<(Vec<ResultRow>, FollowCursor), JobError> {
        match at {
            FollowCursor::Recorded(position) => {
                let followed = {
                    let scheduler = lock(&self.inner.scheduler);
                    match scheduler.stored_rows(job_id)? {
                        None => {
                            Some(scheduler.results_since(job_id, position, limit, usable_only)?)
                        }
                        Some(_) => None,
                    }
                };
                Ok(match followed {
                    Some(Followed { rows, cursor, done }) => (
                        rows,
                        if done {
                            FollowCursor::Rest {
                                position: cursor,
                                start: 0,
                            }
                        } else {
                            FollowCursor::Recorded(cursor)
                        },
                    ),
                    None => (Vec::new(), FollowCursor::Rest { position, start: 0 }),
                })
            }
            FollowCursor::Rest { position, start } => {
                let stored = {
                    let scheduler = lock(&self.inner.scheduler);
                    match scheduler.stored_rows(job_id)? {
                        Some(stored) => stored,
                        // Ended, still in memory: every recorded verdict was read.
                        None if usable_only => return Ok((Vec::new(), FollowCursor::Done)),
                        None => {
                            let (rows, next) = scheduler.results_page(
                                job_id,
                                start,
                                limit,
                                RowFilter::Unchecked,
                            )?;
                            return Ok((rows, FollowCursor::rest(position, next)));
                        }
                    }
                };
                let (rows, next) = lock(&self.inner.reader)
                    .rest_page(job_id, stored, position, start, limit, usable_only)
                    .map_err(|e| JobError::Unreadable(e.to_string()))?;
                Ok((rows, FollowCursor::rest(position, next)))
            }
            FollowCursor::Done => Ok((Vec::new(), FollowCursor::Done)),
        }
    }

    /// Progress of a job from now on; ends (sender dropped) never, so watchers stop at a terminal state.
    pub(crate) fn watch(&self, job_id: &str) -> Result<watch::Receiver<JobSnapshot>, JobError> {
        lock(&self.inner.progress)
            .get(job_id)
            .map(|tx| tx.subscribe())
            .ok_or_else(|| JobError::NotFound(job_id.to_string()))
    }

    /// Registers a new worker session; its first outbound message is the Welcome.
    pub(crate) fn open_session(&self, hello: Hello, outbox: Outbox) -> SessionId {
        let worker_id = hello.worker_id.clone();
        let welcome = |session_id| pb::CoordinatorMessage {
            kind: Some(pb::coordinator_message::Kind::Welcome(pb::Welcome {
                session_id,
                heartbeat_interval_ms: self.inner.config.heartbeat_interval.as_millis() as u64,
                lease_ttl_ms: self.inner.config.lease_ttl.as_millis() as u64,
                judge_urls: self.inner.config.judge_urls.clone(),
            })),
        };
        let id = self.with_scheduler(|s| {
            let (id, out) = s.hello(hello, Instant::now());
            // Welcome and the outbox go in before any Assign is delivered.
            let _ = outbox.send(Ok(welcome(id)));
            let outlet = Outlet {
                worker_id: worker_id.clone(),
                outbox,
            };
            lock(&self.inner.outboxes).insert(id, outlet);
            (id, out)
        });
        info!(session_id = id, worker_id = %worker_id, "worker session opened");
        id
    }

    /// Handles one message of a worker's session after its hello.
    pub(crate) fn on_message(&self, session: SessionId, kind: Option<pb::worker_message::Kind>) {
        use pb::worker_message::Kind;
        match kind {
            Some(Kind::Verdicts(v)) => self.on_verdicts(session, v),
            Some(Kind::Heartbeat(h)) => self.on_heartbeat(session, h),
            Some(Kind::Draining(_)) => self.on_draining(session),
            Some(Kind::JudgeStatus(j)) => self.on_judge_status(session, j),
            Some(Kind::HandBack(h)) => self.on_hand_back(session, h.lease_id),
            Some(Kind::Hello(_)) => {
                warn!(session_id = session, "second hello on one stream ignored")
            }
            None => warn!(session_id = session, "empty worker message ignored"),
        }
    }

    pub(crate) fn on_verdicts(&self, session: SessionId, batch: pb::Verdicts) {
        let lease_id = batch.lease_id;
        let job_id = batch.job_id;
        let chunk_id = batch.chunk_id;
        let first = batch.first;
        let verdicts = batch
            .verdicts
            .into_iter()
            .map(convert::verdict_from_proto)
            .collect();
        self.with_scheduler(|s| {
            (
                (),
                s.verdicts_of_job(
                    session,
                    lease_id,
                    Named {
                        job_id: &job_id,
                        chunk_id,
                    },
                    first,
                    verdicts,
                    Instant::now(),
                    wall_ms(),
                ),
            )
        });
    }

    pub(crate) fn on_heartbeat(&self, session: SessionId, heartbeat: pb::Heartbeat) {
        let held: Vec<LeaseRef> = heartbeat
            .held
            .into_iter()
            .map(|h| LeaseRef {
                lease_id: h.lease_id,
                job_id: h.job_id,
                chunk_id: Some(h.chunk_id),
            })
            .collect();
        self.with_scheduler(|s| {
            (
                (),
                s.heartbeat_naming(session, &heartbeat.lease_ids, &held, Instant::now()),
            )
        });
    }

    pub(crate) fn on_draining(&self, session: SessionId) {
        info!(session_id = session, "worker draining");
        self.with_scheduler(|s| {
            s.draining(session, Instant::now());
            ((), Vec::new())
        });
    }

    pub(crate) fn on_judge_status(&self, session: SessionId, status: pb::JudgeStatus) {
        if status.ok {
            info!(session_id = session, judge = %status.url, own_ip = %status.own_ip, "judge reachable from worker");
        } else {
            warn!(session_id = session, judge = %status.url, error = %status.error, "judge unreachable from worker");
        }
        let status = convert::judge_status_from_proto(status);
        self.with_scheduler(|s| {
            (
                (),
                s.judge_status(session, status, Instant::now(), wall_ms()),
            )
        });
    }

    pub(crate) fn on_hand_back(&self, session: SessionId, lease_id: u64) {
        info!(session_id = session, lease_id, "lease handed back");
        self.with_scheduler(|s| ((), s.hand_back(session, lease_id, Instant::now())));
    }

    /// The session's stream ended; its leases go back to the queue at once.
    pub(crate) fn close_session(&self, session: SessionId, why: &str) {
        self.with_scheduler(|s| {
            // The worker and leases as the scheduler held them, for the log lines.
            let (worker_id, leases) = s.session_leases(session).unwrap_or_default();
            info!(session_id = session, worker_id = %worker_id, why, "worker session closed");
            for lease in leases {
                info!(
                    job_id = %lease.job_id, chunk_id = lease.chunk_id, lease_id = lease.lease_id,
                    worker_id = %worker_id, session_id = session, "lease taken back: its worker's session ended"
                );
            }
            let out = s.disconnect(session, Instant::now());
            // Removed under the scheduler lock, after the session left the scheduler: no lease can
            // be granted to it in between and then lost undelivered.
            lock(&self.inner.outboxes).remove(&session);
            ((), out)
        });
    }

    /// Ends every session's response stream (shutdown).
    pub(crate) fn close_all_sessions(&self) {
        // Ended in the scheduler first, at no cost to their chunks: the streams closing below
        // must not read as workers vanishing.
        self.with_scheduler(|s| {
            s.stop(Instant::now());
            ((), Vec::new())
        });
        lock(&self.inner.outboxes).clear();
    }

    /// Expires silent leases and overdue jobs, prunes old jobs, then publishes progress.
    pub(crate) fn tick(&self) {
        if let Some(retain) = self.inner.config.retain {
            let mut last = lock(&self.inner.last_prune);
            if last.elapsed() >= Duration::from_secs(60).min(retain) {
                *last = Instant::now();
                let before_ms = wall_ms().saturating_sub(retain.as_millis() as u64);
                if let Some(tx) = lock(&self.inner.store_tx).as_ref() {
                    let _ = tx.send(StoreOp::Prune { before_ms });
                }
            }
        }
        self.with_scheduler(|s| ((), s.tick(Instant::now(), wall_ms())));
        self.publish();
    }

    /// Sends fresh snapshots of changed jobs to their watchers; writes ended jobs' results, then
    /// shows their end.
    fn publish(&self) {
        let ended: Vec<JobSnapshot> = {
            let mut scheduler = lock(&self.inner.scheduler);
            // Progress is locked under the scheduler lock so snapshots reach watchers in order.
            let progress = lock(&self.inner.progress);
            let now = Instant::now();
            let mut ended: Vec<JobSnapshot> = Vec::new();
            let durable_seq = *self.inner.durable_seq.borrow();
            let mut end_seqs = lock(&self.inner.end_seqs);
            let pools = lock(&self.inner.pools);
            for id in scheduler.take_dirty() {
                let Ok(mut snapshot) = scheduler.snapshot(&id, false, now) else {
                    continue;
                };
                if snapshot.state.is_terminal() {
                    // Shown once the write that ended it is committed (the writer publishes
                    // again right after committing it).
                    if end_seqs.get(&id).is_some_and(|&seq| seq > durable_seq) {
                        scheduler.mark_dirty(&id);
                        continue;
                    }
                    end_seqs.remove(&id);
                    // Shown once its files are written (by the publisher), so that a client
                    // that saw the end reads them. Every earlier snapshot was sent under the
                    // scheduler lock before the job ended: none can come after this one.
                    ended.push(snapshot);
                    continue;
                }
                let Some(tx) = progress.get(&id) else {
                    continue;
                };
                if tx.borrow().state.is_terminal() {
                    continue;
                }
                set_pool_files(&pools, &mut snapshot);
                tx.send_replace(snapshot);
            }
            ended
        };
        for snapshot in ended {
            // Fails only once the publisher has stopped, at shutdown.
            let _ = self.inner.events.send(Event::Ended(Box::new(snapshot)));
        }
    }

    /// Writes an ended job's files, then shows its end to its watchers, then lets its rows leave
    /// memory (the publisher's part of [`State::publish`]).
    fn show_end(&self, snapshot: JobSnapshot) {
        let snapshot_pool = snapshot.settings.pool.clone();
        if let Err(e) = self.write_outputs(&snapshot) {
            warn!(job_id = %snapshot.id, error = %e, "could not write the job's results to the data dir");
        }
        // What its pool's files hold now, with every verdict it brought.
        let snapshot = self.with_pool_files(snapshot);
        let id = snapshot.id.clone();
        {
            let progress = lock(&self.inner.progress);
            if let Some(tx) = progress.get(&id)
                && !tx.borrow().state.is_terminal()
            {
                info!(job_id = %id, state = snapshot.state.name(), reason = %snapshot.reason, "job ended");
                tx.send_replace(snapshot);
            }
        }
        // Its end and every verdict before it are durable and its files are written: from now on
        // its rows are read from the store.
        let old_rounds = {
            let mut scheduler = lock(&self.inner.scheduler);
            scheduler.keep_in_store(&id);
            scheduler.old_rounds(&snapshot_pool, KEEP_ROUNDS)
        };
        // A pool's rounds live in its members; the store keeps only its newest few as jobs, so
        // memory and restarts follow the pools, not their history.
        if !old_rounds.is_empty()
            && let Some(tx) = lock(&self.inner.store_tx).as_ref()
        {
            let _ = tx.send(StoreOp::Forget {
                job_ids: old_rounds,
            });
        }
    }

    /// Writes an ended refresh's files under `DATA_DIR/jobs/<id>/` unless they are there already
    /// (a restart rewrites none). A revalidation round writes none: its checks live in its
    /// pool's members, and its rows in the store. The pool's own files are its live set, written
    /// as it changes (see [`State::write_pool_files`]); they are brought up to date here first,
    /// so a client shown the end reads every proxy the job brought.
    fn write_outputs(&self, job: &JobSnapshot) -> std::io::Result<()> {
        let mut at = None;
        self.write_pool_files(&mut at, true);
        if job.settings.kind == JobKind::Revalidation {
            return Ok(());
        }
        let job_dir = self.inner.config.data_dir.join("jobs").join(&job.id);
        // `summary.json` is written last: there, the job's files are whole.
        if job_dir.join(SUMMARY).exists() {
            return Ok(());
        }
        // The output files list the usable proxies only.
        let results = match self.results(&job.id, RowFilter::Usable) {
            Ok(results) => results,
            Err(JobError::NotFound(_)) => return Ok(()), // pruned meanwhile
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        };
        let files = output::render(&job.id, job.ended_wall_ms, &results);
        // The counts as they stand at its end; the ended snapshot for the rest.
        let mut report = match self.job_report(&job.id) {
            Ok(report) => report,
            Err(JobError::NotFound(_)) => return Ok(()), // pruned meanwhile
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        };
        report.job = job.clone();
        write_job_files(&job_dir, &report, &files)
    }
}

/// Shows clients committed pool changes, in order.
fn apply_pool_changes(served: &mut ServedPools, changes: impl IntoIterator<Item = PoolChange>) {
    for change in changes {
        match change {
            PoolChange::Member {
                pool,
                version,
                member,
            } => served.apply_member(&pool, version, *member),
            PoolChange::Meta(meta) => served.apply_meta(*meta),
            PoolChange::Forget {
                pool,
                version,
                proxy,
            } => served.forget(&pool, version, &proxy),
        }
    }
}

/// Sets what a refresh's snapshot says of its pool's files: how many of the live proxies in them
/// were seen usable since the refresh started, by it or by a revalidation round (a round's own
/// snapshot says nothing: it is the pool's).
fn set_pool_files(pools: &ServedPools, snapshot: &mut JobSnapshot) {
    if snapshot.settings.kind == JobKind::Refresh
        && let Some((path, fresh)) =
            pools.files_fresh_since(&snapshot.settings.pool, snapshot.created_wall_ms)
    {
        snapshot.progress.pool_files_usable = fresh;
        snapshot.progress.pool_files = path;
    }
}

/// The file written last in a job's directory.
const SUMMARY: &str = "summary.json";

/// Where a pool's output files go: the output dir for "default", a subdirectory for the others.
fn pool_dir(config: &CoordinatorConfig, pool: &str) -> std::path::PathBuf {
    if pool == "default" {
        config.output_dir.clone()
    } else {
        config.output_dir.join(pool)
    }
}

/// Removes a pruned job's directory under `DATA_DIR/jobs/`; a job that has none is fine.
fn remove_job_dir(config: &CoordinatorConfig, job_id: &str) -> std::io::Result<()> {
    // An id from the store names one directory, never a path out of `jobs/`.
    let mut parts = Path::new(job_id).components();
    if !matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(_)), None)
    ) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{job_id:?} is not a job id"),
        ));
    }
    match std::fs::remove_dir_all(config.data_dir.join("jobs").join(job_id)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Puts a job's candidates in random order before they are cut into chunks. Lists come sorted
/// by source, subnet or age, so dead proxies come in runs: shuffled, every chunk costs about the
/// same, no worker is left with a backlog of timeouts while another idles, and consecutive
/// checks do not all go to one network.
fn spread(candidates: &mut [crate::candidate::Candidate]) {
    fastrand::shuffle(candidates);
}

/// Lease ids start from the clock so that they stay unique across restarts.
fn first_lease_id() -> u64 {
    wall_ms().saturating_mul(1_000)
}

/// Writes a finished job's files under `DATA_DIR/jobs/<id>/`: its outputs, then `summary.json`.
fn write_job_files(
    dir: &Path,
    report: &JobReport,
    outputs: &[(String, String)],
) -> std::io::Result<()> {
    output::write_all(dir, outputs)?;
    output::write_all(
        dir,
        &[(
            SUMMARY.into(),
            serde_json::to_string_pretty(&output::summary(report))? + "\n",
        )],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::JobState;
    use proptest::prelude::*;
    use prost::Message;

    /// A coordinator state over a fresh data dir, with one job and one worker session.
    fn state_with_a_session() -> (
        State,
        SessionId,
        mpsc::UnboundedReceiver<Result<pb::CoordinatorMessage, tonic::Status>>,
    ) {
        let state = fresh_state();
        let candidates = (1..=20).map(|i| format!("127.0.0.{i}:80")).collect();
        let valid = state.validate(pb::SubmitJobRequest {
            candidates,
            chunk_size: 5,
            ..pb::SubmitJobRequest::default()
        });
        state.submit(valid.unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        let hello = Hello {
            worker_id: "w".into(),
            name: "w".into(),
            version: "t".into(),
            peer: String::new(),
            capacity: 2,
            max_checks: 8,
        };
        let session = state.open_session(hello, tx);
        (state, session, rx)
    }

    /// A coordinator state over a fresh data dir, taking private candidates.
    fn fresh_state() -> State {
        let dir = std::env::temp_dir().join(format!(
            "proxyfleet-state-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let mut config = CoordinatorConfig::new(dir, vec!["http://127.0.0.1:9/judge".into()]);
        config.allow_private_targets = true;
        State::new(config.validate().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_submission_and_a_cancel_are_answered_once_the_store_has_them() {
        let state = fresh_state();
        let candidates = (0..5_000u64)
            .map(|i| format!("127.0.{}.{}:80", i / 250, i % 250 + 1))
            .collect();
        let valid = state.validate(pb::SubmitJobRequest {
            candidates,
            ..pb::SubmitJobRequest::default()
        });
        let submitted = state.submit(valid.unwrap());
        let id = submitted.snapshot.id.clone();
        state.committed(submitted.commit).await.unwrap();
        // Another reader of the data dir, as a restart after kill -9 would be, has the job whole.
        let stored = |id: &str| {
            let (jobs, _) = Store::open(&state.config().data_dir)
                .unwrap()
                .load()
                .unwrap();
            jobs.into_iter().find(|j| j.record.id == id)
        };
        let job = stored(&id).expect("the acknowledged job is stored");
        assert_eq!(job.candidates.len(), 5_000);

        let (snapshot, commit) = state.cancel(&id).unwrap();
        assert_eq!(snapshot.state, JobState::Cancelled);
        state.committed(commit).await.unwrap();
        assert_eq!(stored(&id).unwrap().record.state, JobState::Cancelled);
        // A second cancel reports the same end, which is already durable.
        let (_, again) = state.cancel(&id).unwrap();
        state.committed(again).await.unwrap();
        state.close_store();
        let _ = std::fs::remove_dir_all(&state.config().data_dir);
    }

    /// The next LeaseDone or VerdictsHandled of the session: what it sent before is durable.
    async fn next_ack(
        rx: &mut mpsc::UnboundedReceiver<Result<pb::CoordinatorMessage, tonic::Status>>,
    ) {
        use pb::coordinator_message::Kind;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .expect("an acknowledgement comes")
                .expect("the session is open")
                .unwrap();
            if matches!(
                message.kind,
                Some(Kind::VerdictsHandled(_) | Kind::LeaseDone(_))
            ) {
                return;
            }
        }
    }

    #[tokio::test]
    async fn a_running_jobs_usable_proxies_join_the_pools_files_and_watchers_are_told_after() {
        let state = fresh_state();
        let publisher = tokio::spawn(state.clone().publisher());
        let candidates = (1..=20).map(|i| format!("127.0.0.{i}:80")).collect();
        let valid = state.validate(pb::SubmitJobRequest {
            candidates,
            chunk_size: 5,
            min_usable: Some(2),
            ..pb::SubmitJobRequest::default()
        });
        let id = state.submit(valid.unwrap()).snapshot.id;
        let mut watcher = state.watch(&id).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let hello = Hello {
            worker_id: "w".into(),
            name: "w".into(),
            version: "t".into(),
            peer: String::new(),
            capacity: 1,
            max_checks: 8,
        };
        let session = state.open_session(hello, tx);
        let assign = loop {
            let message = rx.recv().await.unwrap().unwrap();
            if let Some(pb::coordinator_message::Kind::Assign(a)) = message.kind {
                break a;
            }
        };
        let usable = |position: u32| pb::Verdicts {
            lease_id: assign.lease_id,
            job_id: id.clone(),
            chunk_id: None,
            first: Some(position),
            verdicts: vec![pb::Verdict {
                index: assign.candidates[position as usize].index,
                usable: true,
                latency_ms: 10,
                ..Default::default()
            }],
        };
        let txt = state.config().output_dir.join(output::LIVE_TXT);

        // Each usable proxy joins the pool's live set, and its files, once the store holds it;
        // watchers are told only once the files hold it.
        state.on_message(session, Some(pb::worker_message::Kind::Verdicts(usable(0))));
        next_ack(&mut rx).await;
        let seen = tokio::time::timeout(
            Duration::from_secs(30),
            watcher.wait_for(|s| s.progress.pool_files_usable >= 1),
        )
        .await
        .expect("watchers learn the pool's files hold the first proxy")
        .unwrap()
        .clone();
        assert_eq!(std::fs::read_to_string(&txt).unwrap().lines().count(), 1);
        assert_eq!(seen.progress.pool_files_usable, 1);
        state.on_message(session, Some(pb::worker_message::Kind::Verdicts(usable(1))));
        let seen = tokio::time::timeout(
            Duration::from_secs(30),
            watcher.wait_for(|s| s.progress.pool_files_usable >= 2),
        )
        .await
        .expect("watchers learn the pool's files hold the fresh proxies")
        .unwrap()
        .clone();
        assert_eq!(seen.state, JobState::Checking);
        let lines = std::fs::read_to_string(&txt).unwrap();
        assert_eq!(lines.lines().count(), 2, "{lines:?}");
        assert_eq!(
            seen.progress.pool_files,
            std::path::absolute(&txt).unwrap().display().to_string()
        );

        // Cancelled: the proxies it found stay in the pool's live set.
        let (_, commit) = state.cancel(&id).unwrap();
        state.committed(commit).await.unwrap();
        state.tick();
        let ended = tokio::time::timeout(
            Duration::from_secs(30),
            watcher.wait_for(|s| s.state.is_terminal()),
        )
        .await
        .unwrap()
        .unwrap()
        .clone();
        assert_eq!(ended.state, JobState::Cancelled);
        assert_eq!(ended.progress.pool_files_usable, 2);
        assert_eq!(std::fs::read_to_string(&txt).unwrap(), lines);
        state.stop_publisher();
        publisher.await.unwrap();
        state.close_store();
        let _ = std::fs::remove_dir_all(&state.config().data_dir);
    }

    #[tokio::test]
    async fn a_failed_store_refuses_what_it_did_not_commit() {
        let state = fresh_state();
        state
            .inner
            .store_failure
            .send_replace(Some("database or disk is full".into()));
        let err = state.committed(Commit(u64::MAX)).await.unwrap_err();
        assert!(
            matches!(&err, CommitError::StoreFailed(e) if e == "database or disk is full"),
            "{err:?}"
        );
        // What was committed before the failure stays acknowledged.
        state.committed(Commit(0)).await.unwrap();
        state.close_store();
        let _ = std::fs::remove_dir_all(&state.config().data_dir);
    }

    #[tokio::test]
    async fn a_commit_that_does_not_come_is_not_waited_for_forever() {
        let state = fresh_state();
        let err = state
            .committed_within(Commit(u64::MAX), Duration::from_millis(20))
            .await
            .unwrap_err();
        assert!(matches!(err, CommitError::TimedOut(_)), "{err:?}");
        state.close_store();
        let _ = std::fs::remove_dir_all(&state.config().data_dir);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever bytes a worker sends: decoded and handled, or refused by the decoder; never a
        /// panic, and the job's counts stay consistent.
        #[test]
        fn any_bytes_from_a_worker_are_handled_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let (state, session, _rx) = state_with_a_session();
            if let Ok(message) = pb::WorkerMessage::decode(&bytes[..]) {
                state.on_message(session, message.kind);
            }
            let job = &state.jobs()[0];
            prop_assert!(job.progress.proxies_checked <= job.progress.proxies_total);
            prop_assert!(job.progress.proxies_usable <= job.progress.proxies_checked);
            state.close_store();
            let _ = std::fs::remove_dir_all(&state.config().data_dir);
        }

        /// Verdict batches with any lease, indices and fields: only the holder's, for candidates
        /// of its chunk, count, each once.
        #[test]
        fn any_verdicts_count_at_most_once(
            lease_pick in 0usize..4,
            first in any::<Option<u32>>(),
            verdicts in proptest::collection::vec((any::<u32>(), any::<bool>(), any::<i32>(), any::<i32>()), 0..40),
        ) {
            let (state, session, mut rx) = state_with_a_session();
            let mut leases = vec![0u64, u64::MAX];
            while let Ok(Ok(message)) = rx.try_recv() {
                if let Some(pb::coordinator_message::Kind::Assign(a)) = message.kind {
                    leases.push(a.lease_id);
                }
            }
            let lease_id = leases[lease_pick % leases.len()];
            let batch = pb::Verdicts {
                lease_id,
                job_id: String::new(),
                chunk_id: None,
                first,
                verdicts: verdicts
                    .iter()
                    .map(|&(index, usable, reason, anonymity)| pb::Verdict {
                        index: index % 30,
                        usable,
                        reason,
                        anonymity,
                        ..Default::default()
                    })
                    .collect(),
            };
            state.on_message(session, Some(pb::worker_message::Kind::Verdicts(batch.clone())));
            state.on_message(session, Some(pb::worker_message::Kind::Verdicts(batch)));
            let job = &state.jobs()[0];
            let distinct: std::collections::BTreeSet<u32> = verdicts.iter().map(|v| v.0 % 30).collect();
            prop_assert!(job.progress.proxies_checked <= distinct.len() as u64);
            prop_assert!(job.progress.proxies_checked <= 5, "one lease covers one chunk of 5");
            state.close_store();
            let _ = std::fs::remove_dir_all(&state.config().data_dir);
        }
    }

    #[test]
    fn recent_job_ids_are_the_newest_first() {
        let state = fresh_state();
        let ids: Vec<String> = (1..=3)
            .map(|i| {
                let valid = state.validate(pb::SubmitJobRequest {
                    candidates: vec![format!("127.0.0.{i}:80")],
                    ..pb::SubmitJobRequest::default()
                });
                state.submit(valid.unwrap()).snapshot.id
            })
            .collect();
        assert_eq!(
            state.recent_job_ids(2),
            vec![ids[2].clone(), ids[1].clone()]
        );
        assert_eq!(state.recent_job_ids(10).len(), 3);
        assert!(state.recent_job_ids(0).is_empty());
    }
}
