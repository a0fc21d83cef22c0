//! The lease table and job state machine: pure, clock passed in, no IO.
//!
//! Every input (a worker's hello, verdicts, heartbeat, hand-back, drain, a broken stream, a clock
//! tick, a client's submit or cancel) is a method taking `now`; every output to a worker is an
//! [`Outbound`] message the caller delivers, and sources to fetch are a [`Scrape`] the caller
//! takes with [`Scheduler::take_scrapes`]. The caller serializes access (one lock).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::candidate::Candidate;

pub type LeaseId = u64;
pub type SessionId = u64;
pub type ChunkId = u32;

/// Judges whose status one session may report; jobs name a few each.
const MAX_JUDGES_PER_SESSION: usize = 1024;

/// Settings of the lease protocol, fixed for the coordinator's life.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// A session silent this long loses its leases.
    pub lease_ttl: Duration,
    /// Judges of jobs that name none: the coordinator's, as configured now (they may move
    /// between restarts, so jobs do not keep them).
    pub default_judges: Vec<String>,
}

/// Settings of one job, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSettings {
    /// Judges the checks request, spread across checks; empty for the coordinator's own.
    pub judge_urls: Vec<String>,
    /// Protocols a bare `host:port` of the job's sources stands for.
    pub protocols: Vec<crate::candidate::Protocol>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub filter: UsableFilter,
    pub chunk_size: u32,
    pub min_usable: u64,
    pub deadline: Duration,
    pub max_attempts: u32,
    pub pool: String,
    pub max_failed_chunk_ratio: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Scraping,
    Checking,
    Succeeded,
    Insufficient,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Scraping,
        JobState::Checking,
        JobState::Succeeded,
        JobState::Insufficient,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Insufficient | JobState::Failed | JobState::Cancelled
        )
    }

    /// The name the store, the job files, logs and the CLI show.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "QUEUED",
            JobState::Scraping => "SCRAPING",
            JobState::Checking => "CHECKING",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Insufficient => "INSUFFICIENT",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
        }
    }

    pub fn from_name(name: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    Queued,
    Leased(LeaseId),
    Done,
    Failed,
}

/// What a judge learned about the client through a proxy; ordered from worst to best.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Anonymity {
    Unknown,
    Transparent,
    Anonymous,
    Elite,
}

impl Anonymity {
    pub const ALL: [Anonymity; 4] = [
        Anonymity::Unknown,
        Anonymity::Transparent,
        Anonymity::Anonymous,
        Anonymity::Elite,
    ];

    /// The name output files, the store and the CLI show.
    pub fn name(self) -> &'static str {
        match self {
            Anonymity::Unknown => "unknown",
            Anonymity::Transparent => "transparent",
            Anonymity::Anonymous => "anonymous",
            Anonymity::Elite => "elite",
        }
    }

    pub fn from_name(name: &str) -> Option<Anonymity> {
        Anonymity::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// A job's conditions on a working proxy, beyond working.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsableFilter {
    pub max_latency: Option<Duration>,
    pub min_anonymity: Option<Anonymity>,
    /// The proxy must have carried a tunnel: an HTTPS or SOCKS proxy, or any proxy checked against
    /// an https judge.
    pub require_https: bool,
}

impl UsableFilter {
    /// Why a working proxy does not count as usable, if it does not.
    pub fn refuse(
        &self,
        verdict: &Verdict,
        candidate: &Candidate,
        judge_is_https: bool,
    ) -> Option<String> {
        if let Some(max) = self.max_latency
            && u128::from(verdict.latency_ms) > max.as_millis()
        {
            return Some(format!(
                "latency {}ms over the job's maximum of {}ms",
                verdict.latency_ms,
                max.as_millis()
            ));
        }
        if let Some(min) = self.min_anonymity
            && verdict.anonymity < min
        {
            return Some(format!(
                "anonymity {:?} below the job's minimum of {min:?}",
                verdict.anonymity
            ));
        }
        let tunnels = judge_is_https || candidate.protocol != crate::candidate::Protocol::Http;
        if self.require_https && !tunnels {
            return Some(
                "not shown to carry HTTPS: an HTTP proxy checked against a plain http judge".into(),
            );
        }
        None
    }
}

/// Why a proxy is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    None,
    Refused,
    Timeout,
    Handshake,
    BadStatus,
    TokenMissing,
    Tls,
    Network,
    /// Works, but outside the job's filter.
    Filtered,
    /// Not checked: its address is private and the coordinator does not allow that.
    Forbidden,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::None,
        Reason::Refused,
        Reason::Timeout,
        Reason::Handshake,
        Reason::BadStatus,
        Reason::TokenMissing,
        Reason::Tls,
        Reason::Network,
        Reason::Filtered,
        Reason::Forbidden,
    ];

    /// The name the store and the CLI show.
    pub fn name(self) -> &'static str {
        match self {
            Reason::None => "none",
            Reason::Refused => "refused",
            Reason::Timeout => "timeout",
            Reason::Handshake => "handshake",
            Reason::BadStatus => "bad_status",
            Reason::TokenMissing => "token_missing",
            Reason::Tls => "tls",
            Reason::Network => "network",
            Reason::Filtered => "filtered",
            Reason::Forbidden => "forbidden",
        }
    }

    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// A worker's verdict on one candidate of its lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Candidate index in the job.
    pub index: u32,
    pub usable: bool,
    pub reason: Reason,
    pub latency_ms: u32,
    pub exit_ip: Arc<str>,
    pub detail: Arc<str>,
    pub anonymity: Anonymity,
    pub connect_ms: u32,
}

/// A chunk as leased to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub lease_id: LeaseId,
    pub job_id: String,
    pub chunk_id: ChunkId,
    pub attempt: u32,
    /// Unchecked candidates of the chunk, with their job indices.
    pub candidates: Vec<(u32, Candidate)>,
    pub judge_urls: Vec<String>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

/// A message for one worker session.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    Assign(SessionId, Assignment),
    LeaseDone(SessionId, LeaseId),
    Revoke(SessionId, LeaseId, &'static str),
    /// End this session's stream: it was replaced by a newer session of the same worker.
    Close(SessionId),
}

/// A job entered SCRAPING: fetch its sources, then hand their candidates to
/// [`Scheduler::scraped`].
#[derive(Debug, Clone, PartialEq)]
pub struct Scrape {
    pub job_id: String,
    pub sources: Vec<SourceSpec>,
}

/// Why a lease ended without its chunk being finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseLoss {
    /// The holder vanished (stream broke, went silent, replaced): costs an attempt.
    Vanished,
    /// A draining holder gave it back: costs nothing.
    HandedBack,
    /// The job ended: the chunk will not be checked further.
    JobEnded,
}

/// What a client may get wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    #[error("no job with id {0:?}; `proxyfleet jobs` lists the known jobs")]
    NotFound(String),
}

#[derive(Debug)]
struct Chunk {
    id: ChunkId,
    range: Range<u32>,
    /// Candidates of the chunk still without a verdict.
    unchecked: u32,
    state: ChunkState,
    /// Times a holder vanished with it.
    attempts: u32,
    /// Times it was leased.
    leases: u32,
}

#[derive(Debug)]
struct Job {
    id: String,
    name: String,
    settings: JobSettings,
    state: JobState,
    reason: String,
    candidates: Arc<Vec<Candidate>>,
    /// Verdict per candidate index; `None` until recorded, never overwritten.
    verdicts: Vec<Option<Verdict>>,
    chunks: Vec<Chunk>,
    created: Instant,
    created_wall_ms: u64,
    ended_wall_ms: u64,
    ended: Option<Instant>,
    checked: u64,
    usable: u64,
    reassignments: u64,
    stale_refused: u64,
    handed_back: u64,
    /// (time, checked) samples for the check rate, oldest first.
    rate_samples: VecDeque<(Instant, u64)>,
    /// Sources still to fetch (taken when scraping starts) and how each went.
    source_specs: Vec<SourceSpec>,
    sources: Vec<SourceStatus>,
    /// Entries dropped from the job's lists, by why.
    dropped: BTreeMap<String, u64>,
    /// Candidate indices in the order their verdicts were recorded, for followers.
    recorded: Vec<u32>,
}

#[derive(Debug)]
struct Lease {
    job_id: String,
    chunk: ChunkId,
    session: SessionId,
    /// Candidates of the lease without a verdict yet.
    unchecked: u32,
}

#[derive(Debug)]
struct Session {
    worker_id: String,
    name: String,
    version: String,
    peer: String,
    capacity: u32,
    max_checks: u32,
    leases: BTreeSet<LeaseId>,
    /// Candidates of its leases without a verdict yet: a worker is leased more only while this is
    /// below its `max_checks`, so no candidate waits in one worker while another has free slots.
    unchecked: u64,
    connected: Instant,
    last_seen: Instant,
    /// Said `Draining`: gets no new lease.
    draining: bool,
    /// Silent past the lease TTL: lost its leases, gets none until it speaks again.
    silent: bool,
    verdicts_accepted: u64,
    /// Judges this worker asked directly, by URL.
    judges: BTreeMap<String, JudgeStatus>,
}

impl Session {
    /// Whether the session may be leased another chunk: it is not draining or silent, holds fewer
    /// leases than its capacity, and holds fewer candidates than its check slots, or than twice
    /// its slots when `ahead` (or fewer than two leases, so a worker smaller than a chunk still
    /// has the next one at hand).
    fn wants_work(&self, ahead: bool) -> bool {
        // A worker that does not say how many checks it runs is bound by its capacity alone.
        let slots = match self.max_checks {
            0 => u64::MAX / 2,
            n => u64::from(n),
        };
        let limit = if ahead { slots * 2 } else { slots };
        !self.draining
            && !self.silent
            && (self.leases.len() as u32) < self.capacity
            && (self.unchecked < limit || self.leases.len() < 2)
    }

    /// How full the session is, in thousandths of its check slots: the emptiest is leased first.
    fn load(&self) -> u64 {
        self.unchecked * 1000 / u64::from(self.max_checks.max(1))
    }
}

/// Counts of a job as clients see them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobProgress {
    pub chunks_total: u64,
    pub chunks_queued: u64,
    pub chunks_leased: u64,
    pub chunks_done: u64,
    pub chunks_failed: u64,
    pub proxies_total: u64,
    pub proxies_checked: u64,
    pub proxies_usable: u64,
    pub workers: u64,
    pub checks_per_second: f64,
    pub eta: Option<Duration>,
    pub reassignments: u64,
    pub stale_verdicts_refused: u64,
    pub handed_back: u64,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChunkInfo {
    pub id: ChunkId,
    pub state: ChunkState,
    pub size: u32,
    pub checked: u32,
    pub attempts: u32,
    pub leases: u32,
    pub holder: String,
}

/// A job as clients see it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSnapshot {
    pub id: String,
    pub name: String,
    pub state: JobState,
    pub reason: String,
    pub settings: JobSettings,
    pub progress: JobProgress,
    pub created_wall_ms: u64,
    pub ended_wall_ms: u64,
    pub chunks: Vec<ChunkInfo>,
    pub sources: Vec<SourceStatus>,
    pub dropped: BTreeMap<String, u64>,
}

/// A worker session as clients see it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSnapshot {
    pub session_id: SessionId,
    pub worker_id: String,
    pub name: String,
    pub version: String,
    pub peer: String,
    pub status: &'static str,
    pub leases: Vec<LeaseId>,
    pub capacity: u32,
    pub max_checks: u32,
    pub connected_for: Duration,
    pub last_seen_ago: Duration,
    pub verdicts_accepted: u64,
    pub judges: Vec<JudgeStatus>,
}

/// One candidate of a job with its verdict, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    pub candidate: Candidate,
    pub chunk_id: ChunkId,
    pub verdict: Option<Verdict>,
}

/// A page of followed results.
#[derive(Debug, Clone, PartialEq)]
pub struct Followed {
    pub rows: Vec<ResultRow>,
    pub cursor: usize,
    /// The job has ended: these were the last rows.
    pub done: bool,
}

/// What a worker said hello with.
#[derive(Debug, Clone)]
pub struct Hello {
    pub worker_id: String,
    pub name: String,
    pub version: String,
    pub peer: String,
    pub capacity: u32,
    pub max_checks: u32,
}

/// A job to queue: validated settings and parsed candidates.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub name: String,
    pub settings: JobSettings,
    /// Inline candidates, parsed and deduplicated.
    pub candidates: Vec<Candidate>,
    /// Sources to fetch in the SCRAPING state; their candidates join the inline ones.
    pub sources: Vec<SourceSpec>,
    /// Entries dropped while parsing the inline candidates, by why.
    pub dropped: BTreeMap<String, u64>,
}

/// A source of candidates: a URL or local path, and the protocols its bare `host:port` stand for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    pub url: String,
    pub protocols: Vec<crate::candidate::Protocol>,
    /// The source's text when the client sent it (the url only names it).
    pub content: Option<String>,
    /// From the operator's own sources file: local paths may be read.
    pub trusted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    Pending,
    Fetching,
    Fetched,
    Failed,
}

impl SourceState {
    pub fn name(self) -> &'static str {
        match self {
            SourceState::Pending => "pending",
            SourceState::Fetching => "fetching",
            SourceState::Fetched => "fetched",
            SourceState::Failed => "failed",
        }
    }
}

/// How fetching one source went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStatus {
    pub url: String,
    pub state: SourceState,
    pub candidates: u64,
    pub rejected: u64,
    pub bytes: u64,
    pub error: String,
}

/// What a worker found when it asked a judge directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JudgeStatus {
    pub url: String,
    pub ok: bool,
    pub own_ip: String,
    pub error: String,
}

/// Jobs changed since their watchers and the store last looked.
#[derive(Debug, Default)]
struct Changed {
    watch: BTreeSet<String>,
    save: BTreeSet<String>,
}

impl Changed {
    fn insert(&mut self, job_id: String) {
        self.save.insert(job_id.clone());
        self.watch.insert(job_id);
    }
}

/// What the store keeps of a job besides its candidates, verdicts and chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub name: String,
    pub settings: JobSettings,
    pub state: JobState,
    pub reason: String,
    pub created_wall_ms: u64,
    pub ended_wall_ms: u64,
    pub reassignments: u64,
    pub stale_refused: u64,
    pub handed_back: u64,
    pub sources: Vec<SourceStatus>,
    /// Sources not fetched yet (a job still queued or scraping).
    pub source_specs: Vec<SourceSpec>,
    pub dropped: BTreeMap<String, u64>,
    /// How many candidates the job holds; the store checks its candidate rows against it.
    pub candidate_count: u64,
}

/// What the store keeps of a chunk: its range follows from the job's chunk size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRecord {
    pub chunk_id: ChunkId,
    pub attempts: u32,
    pub leases: u32,
    pub failed: bool,
}

/// A change the store must persist, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Job(Box<JobRecord>),
    /// The job's whole candidate list (at submit, and again once its sources are scraped).
    Candidates {
        job_id: String,
        candidates: Arc<Vec<Candidate>>,
    },
    Verdicts {
        job_id: String,
        verdicts: Vec<Verdict>,
    },
    Chunk {
        job_id: String,
        chunk: ChunkRecord,
    },
}

/// A job as the store had it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredJob {
    pub record: JobRecord,
    pub candidates: Vec<Candidate>,
    pub verdicts: Vec<Verdict>,
    pub chunks: Vec<ChunkRecord>,
}

/// The whole scheduling state of a coordinator.
#[derive(Debug)]
pub struct Scheduler {
    config: LeaseConfig,
    /// Every job, by id; the order of ids in `job_order` is submission order.
    jobs: HashMap<String, Job>,
    job_order: Vec<String>,
    /// Chunks waiting for a worker, oldest first; entries whose chunk is no longer queued are skipped.
    queue: VecDeque<(String, ChunkId)>,
    /// Live leases.
    leases: HashMap<LeaseId, Lease>,
    /// Ended leases and their job, so late verdicts are refused and counted against the right job.
    retired: HashMap<LeaseId, String>,
    sessions: BTreeMap<SessionId, Session>,
    next_lease: LeaseId,
    next_session: SessionId,
    /// Jobs whose snapshot changed, for watchers and for the store.
    changed: Changed,
    /// Verdict texts seen (details, exit addresses), shared by every verdict that repeats one.
    texts: std::collections::HashSet<Arc<str>>,
    /// Changes for the store, in order, since `take_journal`.
    journal: Vec<Record>,
    /// Jobs whose sources are to be fetched, since `take_scrapes`.
    scrapes: Vec<Scrape>,
    /// Totals since start, for metrics.
    counters: Counters,
}

/// Event totals since the coordinator started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub leases_granted: u64,
    pub leases_completed: u64,
    /// Taken back from a worker that went silent past the lease TTL.
    pub leases_expired: u64,
    /// Taken back from a worker that vanished (stream broken, silent or replaced) and queued again.
    pub leases_requeued: u64,
    pub leases_handed_back: u64,
    pub verdicts_usable: u64,
    pub verdicts_unusable: u64,
    pub stale_verdicts_refused: u64,
    pub chunks_failed: u64,
}

/// What the metrics endpoint shows of the scheduler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    pub counters: Counters,
    pub jobs_by_state: BTreeMap<&'static str, u64>,
    pub chunks_by_state: BTreeMap<&'static str, u64>,
    pub workers_by_status: BTreeMap<&'static str, u64>,
    pub leases_live: u64,
}

impl Scheduler {
    /// `first_lease_id` lets lease ids stay unique across coordinator restarts.
    pub fn new(config: LeaseConfig, first_lease_id: LeaseId) -> Self {
        Scheduler {
            config,
            jobs: HashMap::new(),
            job_order: Vec::new(),
            queue: VecDeque::new(),
            leases: HashMap::new(),
            retired: HashMap::new(),
            sessions: BTreeMap::new(),
            next_lease: first_lease_id.max(1),
            next_session: 1,
            changed: Changed::default(),
            texts: Default::default(),
            journal: Vec::new(),
            scrapes: Vec::new(),
            counters: Counters::default(),
        }
    }

    pub fn lease_ttl(&self) -> Duration {
        self.config.lease_ttl
    }

    /// Queues a job; it starts checking at once unless another job of its pool is running.
    pub fn submit(&mut self, new: NewJob, now: Instant, wall_ms: u64) -> Vec<Outbound> {
        let chunks = make_chunks(new.candidates.len() as u32, new.settings.chunk_size);
        let sources = new
            .sources
            .iter()
            .map(|spec| SourceStatus {
                url: spec.url.clone(),
                state: SourceState::Pending,
                candidates: 0,
                rejected: 0,
                bytes: 0,
                error: String::new(),
            })
            .collect();
        let job = Job {
            id: new.id.clone(),
            name: new.name,
            settings: new.settings,
            state: JobState::Queued,
            reason: String::new(),
            verdicts: vec![None; new.candidates.len()],
            candidates: new.candidates.into(),
            chunks,
            created: now,
            created_wall_ms: wall_ms,
            ended_wall_ms: 0,
            ended: None,
            checked: 0,
            usable: 0,
            reassignments: 0,
            stale_refused: 0,
            handed_back: 0,
            rate_samples: VecDeque::new(),
            source_specs: new.sources,
            sources,
            dropped: new.dropped,
            recorded: Vec::new(),
        };
        self.journal.push(Record::Candidates {
            job_id: new.id.clone(),
            candidates: Arc::clone(&job.candidates),
        });
        self.job_order.push(new.id.clone());
        self.jobs.insert(new.id.clone(), job);
        self.changed.insert(new.id);
        let mut out = Vec::new();
        self.start_queued_jobs(now, wall_ms, &mut out);
        out.extend(self.assign(now));
        out
    }

    /// Starts the oldest queued job of every pool that has none running.
    fn start_queued_jobs(&mut self, now: Instant, wall_ms: u64, out: &mut Vec<Outbound>) {
        let mut busy: BTreeSet<String> = self
            .jobs
            .values()
            .filter(|j| matches!(j.state, JobState::Scraping | JobState::Checking))
            .map(|j| j.settings.pool.clone())
            .collect();
        for id in self.job_order.clone() {
            let job = &self.jobs[&id];
            if job.state != JobState::Queued || busy.contains(&job.settings.pool) {
                continue;
            }
            busy.insert(job.settings.pool.clone());
            let job = self.jobs.get_mut(&id).expect("job listed in job_order");
            self.changed.insert(id.clone());
            if job.source_specs.is_empty() {
                // A job of inline candidates has nothing to scrape: it passes SCRAPING at once.
                self.start_checking(&id, now, wall_ms, out);
            } else {
                job.state = JobState::Scraping;
                // The specs stay until the candidates are in, so a restart can scrape again.
                self.scrapes.push(Scrape {
                    job_id: id.clone(),
                    sources: job.source_specs.clone(),
                });
            }
        }
    }

    fn start_checking(
        &mut self,
        job_id: &str,
        now: Instant,
        wall_ms: u64,
        out: &mut Vec<Outbound>,
    ) {
        let job = self.jobs.get_mut(job_id).expect("starting a known job");
        job.state = JobState::Checking;
        for chunk in &job.chunks {
            self.queue.push_back((job_id.to_string(), chunk.id));
        }
        self.changed.insert(job_id.to_string());
        self.finish_if_complete(job_id, now, wall_ms, out);
    }

    /// A source of a scraping job started, progressed or ended.
    pub fn source_progress(&mut self, job_id: &str, status: SourceStatus) {
        if let Some(job) = self.jobs.get_mut(job_id)
            && let Some(slot) = job.sources.iter_mut().find(|s| s.url == status.url)
        {
            *slot = status;
            self.changed.insert(job_id.to_string());
        }
    }

    /// The job's sources are fetched: their candidates join the job (each proxy once) and checking
    /// starts. A job left with no candidate fails, saying why.
    pub fn scraped(
        &mut self,
        job_id: &str,
        candidates: Vec<Candidate>,
        dropped: BTreeMap<String, u64>,
        now: Instant,
        wall_ms: u64,
    ) -> Vec<Outbound> {
        let mut out = Vec::new();
        let Some(job) = self.jobs.get_mut(job_id) else {
            return out;
        };
        if job.state != JobState::Scraping {
            return out; // cancelled or overdue while scraping
        }
        job.source_specs.clear();
        let mut seen = crate::candidate::Seen::of(&job.candidates);
        for (why, n) in dropped {
            *job.dropped.entry(why).or_default() += n;
        }
        let mut duplicates = 0;
        for candidate in candidates {
            if seen.first_time(&job.candidates, &candidate) {
                Arc::make_mut(&mut job.candidates).push(candidate);
            } else {
                duplicates += 1;
            }
        }
        if duplicates > 0 {
            *job.dropped.entry("duplicate".into()).or_default() += duplicates;
        }
        job.verdicts = vec![None; job.candidates.len()];
        job.chunks = make_chunks(job.candidates.len() as u32, job.settings.chunk_size);
        self.journal.push(Record::Candidates {
            job_id: job_id.to_string(),
            candidates: Arc::clone(&job.candidates),
        });
        if job.candidates.is_empty() {
            let failed: Vec<String> = job
                .sources
                .iter()
                .filter(|s| s.state == SourceState::Failed)
                .map(|s| format!("{}: {}", s.url, s.error))
                .collect();
            let reason = if failed.len() == job.sources.len() {
                format!("every source failed: {}", failed.join("; "))
            } else {
                "the sources held no usable candidate".to_string()
            };
            self.end_job(job_id, JobState::Failed, reason, now, wall_ms, &mut out);
        } else {
            self.start_checking(job_id, now, wall_ms, &mut out);
        }
        out.extend(self.assign(now));
        out
    }

    /// A worker reports what a judge answered it directly. A job whose every judge is down for
    /// that worker fails at once, saying so, rather than recording every proxy as dead.
    pub fn judge_status(
        &mut self,
        session: SessionId,
        status: JudgeStatus,
        now: Instant,
        wall_ms: u64,
    ) -> Vec<Outbound> {
        let mut out = Vec::new();
        if !self.touch(session, now) {
            return out;
        }
        let s = self.sessions.get_mut(&session).expect("touched above");
        // A worker reports the judges it was given; past so many, it reports nonsense.
        if s.judges.len() >= MAX_JUDGES_PER_SESSION && !s.judges.contains_key(&status.url) {
            return out;
        }
        let worker_id = s.worker_id.clone();
        s.judges.insert(status.url.clone(), status);
        let down: BTreeMap<String, String> = s
            .judges
            .values()
            .filter(|j| !j.ok)
            .map(|j| (j.url.clone(), j.error.clone()))
            .collect();
        let doomed: Vec<(String, String)> = self
            .jobs
            .values()
            .filter(|j| !j.state.is_terminal())
            .filter(|j| {
                let judges = self.judges_of(j);
                !judges.is_empty() && judges.iter().all(|u| down.contains_key(u))
            })
            .map(|j| {
                let why: Vec<String> = self
                    .judges_of(j)
                    .iter()
                    .map(|u| format!("{u}: {}", down[u]))
                    .collect();
                (j.id.clone(), why.join("; "))
            })
            .collect();
        for (job_id, why) in doomed {
            let reason = format!(
                "the judge is unreachable from worker {worker_id} ({why}); give a judge URL the workers can reach (submit --judge, or the coordinator's --judge-url)"
            );
            self.end_job(&job_id, JobState::Failed, reason, now, wall_ms, &mut out);
        }
        out.extend(self.assign(now));
        out
    }

    /// A worker opened a session. A previous session with the same worker id is replaced.
    pub fn hello(&mut self, hello: Hello, now: Instant) -> (SessionId, Vec<Outbound>) {
        let mut out = Vec::new();
        let replaced: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.worker_id == hello.worker_id)
            .map(|(id, _)| *id)
            .collect();
        for old in replaced {
            self.end_session(old, now, &mut out);
            out.push(Outbound::Close(old));
        }
        let id = self.next_session;
        self.next_session += 1;
        self.sessions.insert(
            id,
            Session {
                worker_id: hello.worker_id,
                name: hello.name,
                version: hello.version,
                peer: hello.peer,
                capacity: hello.capacity.max(1),
                max_checks: hello.max_checks,
                leases: BTreeSet::new(),
                unchecked: 0,
                connected: now,
                last_seen: now,
                draining: false,
                silent: false,
                verdicts_accepted: 0,
                judges: BTreeMap::new(),
            },
        );
        out.extend(self.assign(now));
        (id, out)
    }

    /// Any message renews the sender's leases; a silent session that speaks again may get work.
    fn touch(&mut self, session: SessionId, now: Instant) -> bool {
        match self.sessions.get_mut(&session) {
            Some(s) => {
                s.last_seen = now;
                s.silent = false;
                true
            }
            None => false,
        }
    }

    /// Verdicts for a lease. Accepted only from the live lease's holder; otherwise refused and counted.
    pub fn verdicts(
        &mut self,
        session: SessionId,
        lease_id: LeaseId,
        verdicts: Vec<Verdict>,
        now: Instant,
        wall_ms: u64,
    ) -> Vec<Outbound> {
        self.verdicts_of_job(session, lease_id, "", verdicts, now, wall_ms)
    }

    /// Verdicts naming the job they are for, so that refused ones for a lease this scheduler never
    /// knew (granted before a restart) still count against their job.
    pub fn verdicts_of_job(
        &mut self,
        session: SessionId,
        lease_id: LeaseId,
        job_hint: &str,
        verdicts: Vec<Verdict>,
        now: Instant,
        wall_ms: u64,
    ) -> Vec<Outbound> {
        let mut out = Vec::new();
        // An ended session's verdicts are refused and counted like any other stale ones.
        let live_session = self.touch(session, now);
        let holder = self.leases.get(&lease_id).map(|l| l.session);
        if !live_session || holder != Some(session) {
            let job_id = self
                .leases
                .get(&lease_id)
                .map(|l| l.job_id.clone())
                .or_else(|| self.retired.get(&lease_id).cloned())
                .or_else(|| (!job_hint.is_empty()).then(|| job_hint.to_string()));
            let count = verdicts.len() as u64;
            self.counters.stale_verdicts_refused += count;
            if let Some(job) = job_id.and_then(|id| self.jobs.get_mut(&id)) {
                job.stale_refused += count;
                self.changed.insert(job.id.clone());
            }
            if live_session {
                out.push(Outbound::Revoke(session, lease_id, "stale lease"));
            }
            return out;
        }
        let lease = &self.leases[&lease_id];
        let job_id = lease.job_id.clone();
        let chunk_id = lease.chunk;
        let judge_is_https = self
            .judges_of(&self.jobs[&job_id])
            .iter()
            .all(|u| u.starts_with("https://"));
        let job = self.jobs.get_mut(&job_id).expect("a live lease has a job");
        let chunk = &mut job.chunks[chunk_id as usize];
        let mut accepted = 0;
        let mut recorded = Vec::new();
        for mut verdict in verdicts {
            if !chunk.range.contains(&verdict.index) {
                continue;
            }
            let slot = &mut job.verdicts[verdict.index as usize];
            if slot.is_some() {
                continue;
            }
            if verdict.usable
                && let Some(why) = job.settings.filter.refuse(
                    &verdict,
                    &job.candidates[verdict.index as usize],
                    judge_is_https,
                )
            {
                verdict.usable = false;
                verdict.reason = Reason::Filtered;
                verdict.detail = why.into();
            }
            verdict.detail = intern(&mut self.texts, verdict.detail);
            verdict.exit_ip = intern(&mut self.texts, verdict.exit_ip);
            job.checked += 1;
            if verdict.usable {
                job.usable += 1;
                self.counters.verdicts_usable += 1;
            } else {
                self.counters.verdicts_unusable += 1;
            }
            chunk.unchecked -= 1;
            accepted += 1;
            job.recorded.push(verdict.index);
            recorded.push(verdict.clone());
            *slot = Some(verdict);
        }
        if !recorded.is_empty() {
            self.journal.push(Record::Verdicts {
                job_id: job_id.clone(),
                verdicts: recorded,
            });
        }
        let chunk_finished = chunk.unchecked == 0;
        if chunk_finished {
            chunk.state = ChunkState::Done;
        }
        self.changed.insert(job_id.clone());
        if let Some(lease) = self.leases.get_mut(&lease_id) {
            lease.unchecked = lease.unchecked.saturating_sub(accepted as u32);
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.verdicts_accepted += accepted;
            s.unchecked = s.unchecked.saturating_sub(accepted);
        }
        if chunk_finished {
            self.counters.leases_completed += 1;
            self.retire_lease(lease_id);
            out.push(Outbound::LeaseDone(session, lease_id));
            self.finish_if_complete(&job_id, now, wall_ms, &mut out);
        }
        // Every verdict frees a check slot: the worker may have room for the next chunk.
        if accepted > 0 {
            out.extend(self.assign(now));
        }
        out
    }

    /// A heartbeat names the leases the worker believes it holds; any it does not hold is revoked.
    pub fn heartbeat(
        &mut self,
        session: SessionId,
        claimed: &[LeaseId],
        now: Instant,
    ) -> Vec<Outbound> {
        let mut out = Vec::new();
        if !self.touch(session, now) {
            return out;
        }
        for &lease_id in claimed {
            if self.leases.get(&lease_id).map(|l| l.session) != Some(session) {
                out.push(Outbound::Revoke(session, lease_id, "stale lease"));
            }
        }
        out.extend(self.assign(now));
        out
    }

    /// The worker is shutting down: no new leases for it.
    pub fn draining(&mut self, session: SessionId, now: Instant) {
        if self.touch(session, now)
            && let Some(s) = self.sessions.get_mut(&session)
        {
            s.draining = true;
        }
    }

    /// A draining worker gives a lease back unfinished; the chunk is queued again at no attempt.
    pub fn hand_back(
        &mut self,
        session: SessionId,
        lease_id: LeaseId,
        now: Instant,
    ) -> Vec<Outbound> {
        let mut out = Vec::new();
        if !self.touch(session, now) {
            return out;
        }
        // Only a draining worker may give work back for free; others must finish or vanish.
        let draining = self.sessions.get(&session).is_some_and(|s| s.draining);
        if draining && self.leases.get(&lease_id).map(|l| l.session) == Some(session) {
            self.lose_lease(lease_id, LeaseLoss::HandedBack, now, &mut out);
        }
        out.extend(self.assign(now));
        out
    }

    /// The session's stream ended (broke or closed): its leases go back to the queue at once.
    pub fn disconnect(&mut self, session: SessionId, now: Instant) -> Vec<Outbound> {
        let mut out = Vec::new();
        self.end_session(session, now, &mut out);
        out.extend(self.assign(now));
        out
    }

    fn end_session(&mut self, session: SessionId, now: Instant, out: &mut Vec<Outbound>) {
        if let Some(s) = self.sessions.remove(&session) {
            // A draining worker's leases come back at no cost, however its session ends.
            let loss = if s.draining {
                LeaseLoss::HandedBack
            } else {
                LeaseLoss::Vanished
            };
            for lease_id in s.leases {
                self.lose_lease(lease_id, loss, now, out);
            }
        }
    }

    /// Expires silent sessions' leases and overdue jobs; call often (a few times a second).
    pub fn tick(&mut self, now: Instant, wall_ms: u64) -> Vec<Outbound> {
        let mut out = Vec::new();
        let ttl = self.config.lease_ttl;
        let silent: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| !s.silent && now.saturating_duration_since(s.last_seen) >= ttl)
            .map(|(id, _)| *id)
            .collect();
        for id in silent {
            let session = self.sessions.get_mut(&id).expect("listed above");
            session.silent = true;
            let leases = std::mem::take(&mut session.leases);
            self.counters.leases_expired += leases.len() as u64;
            for lease_id in leases {
                out.push(Outbound::Revoke(
                    id,
                    lease_id,
                    "lease expired: no message within the lease ttl",
                ));
                self.lose_lease(lease_id, LeaseLoss::Vanished, now, &mut out);
            }
        }
        let overdue: Vec<String> = self
            .jobs
            .values()
            .filter(|j| {
                !j.state.is_terminal()
                    && now.saturating_duration_since(j.created) >= j.settings.deadline
            })
            .map(|j| j.id.clone())
            .collect();
        for id in overdue {
            let job = &self.jobs[&id];
            let mut reason = format!(
                "deadline of {} passed with {} of {} proxies checked",
                humantime::format_duration(job.settings.deadline),
                job.checked,
                job.candidates.len()
            );
            if self.sessions.is_empty() {
                reason.push_str(
                    "; no worker is connected (start proxyfleet-worker --coordinator URL)",
                );
            } else if job.state == JobState::Queued {
                reason.push_str("; the job waited behind another job of its pool");
            }
            self.end_job(&id, JobState::Failed, reason, now, wall_ms, &mut out);
        }
        for job in self.jobs.values_mut() {
            if job.state == JobState::Checking {
                job.rate_samples.push_back((now, job.checked));
                while job.rate_samples.len() > 2
                    && now.saturating_duration_since(job.rate_samples[0].0)
                        > Duration::from_secs(10)
                {
                    job.rate_samples.pop_front();
                }
            }
        }
        out.extend(self.assign(now));
        out
    }

    /// Cancels a job that has not ended; returns its snapshot either way.
    pub fn cancel(
        &mut self,
        job_id: &str,
        now: Instant,
        wall_ms: u64,
    ) -> Result<(JobSnapshot, Vec<Outbound>), JobError> {
        let state = self
            .jobs
            .get(job_id)
            .map(|j| j.state)
            .ok_or_else(|| JobError::NotFound(job_id.to_string()))?;
        let mut out = Vec::new();
        if !state.is_terminal() {
            self.end_job(
                job_id,
                JobState::Cancelled,
                "cancelled by a client".into(),
                now,
                wall_ms,
                &mut out,
            );
            out.extend(self.assign(now));
        }
        Ok((self.snapshot(job_id, false, now)?, out))
    }

    /// Pushes queued chunks to sessions with free capacity, least loaded first.
    pub fn assign(&mut self, now: Instant) -> Vec<Outbound> {
        let mut out = Vec::new();
        loop {
            // While more work is queued than every worker's slots can take, each may hold twice its
            // slots, so no slot idles while verdicts travel; near the end of the queue none holds
            // more than its slots, so no candidate waits in a busy worker while another has free
            // slots.
            let queued = self.queued_candidates();
            let slots: u64 = self
                .sessions
                .values()
                .map(|s| u64::from(s.max_checks))
                .sum();
            let deep = queued >= slots;
            let target = self
                .sessions
                .iter()
                .filter(|(_, s)| s.wants_work(deep))
                .min_by_key(|(id, s)| (s.load(), **id))
                .map(|(id, _)| *id);
            let Some(session) = target else { break };
            let Some((job_id, chunk_id)) = self.next_queued_chunk() else {
                break;
            };
            out.push(self.grant(session, &job_id, chunk_id, now));
        }
        out
    }

    /// About how many candidates wait in the queue: its length times the chunk size of its head.
    fn queued_candidates(&self) -> u64 {
        let chunk_size = self
            .queue
            .front()
            .and_then(|(job_id, _)| self.jobs.get(job_id))
            .map_or(0, |job| job.settings.chunk_size);
        self.queue.len() as u64 * u64::from(chunk_size)
    }

    fn next_queued_chunk(&mut self) -> Option<(String, ChunkId)> {
        while let Some((job_id, chunk_id)) = self.queue.pop_front() {
            let live = self.jobs.get(&job_id).is_some_and(|j| {
                j.state == JobState::Checking
                    && j.chunks[chunk_id as usize].state == ChunkState::Queued
            });
            if live {
                return Some((job_id, chunk_id));
            }
        }
        None
    }

    fn grant(
        &mut self,
        session: SessionId,
        job_id: &str,
        chunk_id: ChunkId,
        _now: Instant,
    ) -> Outbound {
        let lease_id = self.next_lease;
        self.next_lease += 1;
        self.counters.leases_granted += 1;
        let judges = self.judges_of(&self.jobs[job_id]).to_vec();
        let job = self.jobs.get_mut(job_id).expect("queued chunk has a job");
        let chunk = &mut job.chunks[chunk_id as usize];
        chunk.state = ChunkState::Leased(lease_id);
        chunk.leases += 1;
        let candidates: Vec<_> = chunk
            .range
            .clone()
            .filter(|&i| job.verdicts[i as usize].is_none())
            .map(|i| (i, job.candidates[i as usize].clone()))
            .collect();
        let unchecked = candidates.len() as u32;
        let assignment = Assignment {
            lease_id,
            job_id: job_id.to_string(),
            chunk_id,
            attempt: chunk.leases,
            candidates,
            judge_urls: judges,
            timeout: job.settings.timeout,
            connect_timeout: job.settings.connect_timeout,
        };
        self.changed.insert(job_id.to_string());
        self.leases.insert(
            lease_id,
            Lease {
                job_id: job_id.to_string(),
                chunk: chunk_id,
                session,
                unchecked,
            },
        );
        let holder = self
            .sessions
            .get_mut(&session)
            .expect("assign picks a live session");
        holder.leases.insert(lease_id);
        holder.unchecked += u64::from(unchecked);
        Outbound::Assign(session, assignment)
    }

    fn retire_lease(&mut self, lease_id: LeaseId) -> Option<Lease> {
        let lease = self.leases.remove(&lease_id)?;
        if let Some(s) = self.sessions.get_mut(&lease.session) {
            s.leases.remove(&lease_id);
            s.unchecked = s.unchecked.saturating_sub(u64::from(lease.unchecked));
        }
        self.retired.insert(lease_id, lease.job_id.clone());
        Some(lease)
    }

    fn lose_lease(
        &mut self,
        lease_id: LeaseId,
        loss: LeaseLoss,
        now: Instant,
        out: &mut Vec<Outbound>,
    ) {
        let Some(lease) = self.retire_lease(lease_id) else {
            return;
        };
        let job = self.jobs.get_mut(&lease.job_id).expect("a lease has a job");
        let chunk = &mut job.chunks[lease.chunk as usize];
        if chunk.state != ChunkState::Leased(lease_id) {
            return;
        }
        self.changed.insert(job.id.clone());
        match loss {
            // Left unchecked: the job will not check it further.
            LeaseLoss::JobEnded => chunk.state = ChunkState::Queued,
            LeaseLoss::HandedBack => {
                chunk.state = ChunkState::Queued;
                job.handed_back += 1;
                self.counters.leases_handed_back += 1;
                self.queue.push_front((job.id.clone(), chunk.id));
            }
            LeaseLoss::Vanished => {
                chunk.attempts += 1;
                job.reassignments += 1;
                self.counters.leases_requeued += 1;
                if chunk.attempts >= job.settings.max_attempts {
                    self.counters.chunks_failed += 1;
                }
                self.journal.push(Record::Chunk {
                    job_id: job.id.clone(),
                    chunk: ChunkRecord {
                        chunk_id: chunk.id,
                        attempts: chunk.attempts,
                        leases: chunk.leases,
                        failed: chunk.attempts >= job.settings.max_attempts,
                    },
                });
                if chunk.attempts >= job.settings.max_attempts {
                    chunk.state = ChunkState::Failed;
                    let job_id = job.id.clone();
                    // Wall time only matters for the end stamp; `now` orders everything else.
                    let wall_ms = job.created_wall_ms
                        + now.saturating_duration_since(job.created).as_millis() as u64;
                    self.finish_if_complete(&job_id, now, wall_ms, out);
                } else {
                    chunk.state = ChunkState::Queued;
                    self.queue.push_front((job.id.clone(), chunk.id));
                }
            }
        }
    }

    /// Ends a checking job whose every chunk is done or failed.
    fn finish_if_complete(
        &mut self,
        job_id: &str,
        now: Instant,
        wall_ms: u64,
        out: &mut Vec<Outbound>,
    ) {
        let job = &self.jobs[job_id];
        if job.state != JobState::Checking
            || job
                .chunks
                .iter()
                .any(|c| !matches!(c.state, ChunkState::Done | ChunkState::Failed))
        {
            return;
        }
        let failed = job
            .chunks
            .iter()
            .filter(|c| c.state == ChunkState::Failed)
            .count();
        let total = job.chunks.len();
        let failed_note = if failed > 0 {
            format!(
                "; {failed} of {total} chunks failed after {} attempts each (their proxies are unchecked)",
                job.settings.max_attempts
            )
        } else {
            String::new()
        };
        let (state, reason) = if total > 0
            && failed as f64 / total as f64 > job.settings.max_failed_chunk_ratio
        {
            (
                JobState::Failed,
                format!(
                    "{failed} of {total} chunks failed: every worker that took them vanished {} times",
                    job.settings.max_attempts
                ),
            )
        } else if job.usable >= job.settings.min_usable {
            (
                JobState::Succeeded,
                format!(
                    "{} usable of {} proxies (at least {} wanted){failed_note}",
                    job.usable,
                    job.candidates.len(),
                    job.settings.min_usable
                ),
            )
        } else {
            (
                JobState::Insufficient,
                format!(
                    "only {} usable of {} proxies, {} wanted{failed_note}",
                    job.usable,
                    job.candidates.len(),
                    job.settings.min_usable
                ),
            )
        };
        self.end_job(job_id, state, reason, now, wall_ms, out);
    }

    fn end_job(
        &mut self,
        job_id: &str,
        state: JobState,
        reason: String,
        now: Instant,
        wall_ms: u64,
        out: &mut Vec<Outbound>,
    ) {
        let live: Vec<(LeaseId, SessionId)> = self
            .leases
            .iter()
            .filter(|(_, l)| l.job_id == job_id)
            .map(|(id, l)| (*id, l.session))
            .collect();
        for (lease_id, session) in live {
            out.push(Outbound::Revoke(session, lease_id, "job ended"));
            self.lose_lease(lease_id, LeaseLoss::JobEnded, now, out);
        }
        let job = self.jobs.get_mut(job_id).expect("ending a known job");
        if job.state.is_terminal() {
            return;
        }
        job.state = state;
        job.reason = reason;
        job.ended = Some(now);
        job.ended_wall_ms = wall_ms;
        self.changed.insert(job_id.to_string());
        self.start_queued_jobs(now, wall_ms, out);
    }

    /// Changes to persist since the last call, in order; each changed job's row comes last.
    pub fn take_journal(&mut self) -> Vec<Record> {
        let mut records = std::mem::take(&mut self.journal);
        for id in std::mem::take(&mut self.changed.save) {
            if let Some(job) = self.jobs.get(&id) {
                records.push(Record::Job(Box::new(job_record(job))));
            }
        }
        records
    }

    /// The judges a job's checks use: its own, or the coordinator's.
    fn judges_of<'a>(&'a self, job: &'a Job) -> &'a [String] {
        if job.settings.judge_urls.is_empty() {
            &self.config.default_judges
        } else {
            &job.settings.judge_urls
        }
    }

    /// Jobs not ended yet.
    pub fn active_jobs(&self) -> usize {
        self.jobs
            .values()
            .filter(|j| !j.state.is_terminal())
            .count()
    }

    /// The job of `pool` not ended yet, if any.
    pub fn running_in(&self, pool: &str) -> Option<String> {
        self.jobs
            .values()
            .find(|j| j.settings.pool == pool && !j.state.is_terminal())
            .map(|j| j.id.clone())
    }

    /// Forgets an ended job (pruned from the store). A job still running is kept.
    pub fn forget(&mut self, job_id: &str) {
        if !self.jobs.get(job_id).is_some_and(|j| j.state.is_terminal()) {
            return;
        }
        self.jobs.remove(job_id);
        self.job_order.retain(|id| id != job_id);
        self.retired.retain(|_, id| id != job_id);
    }

    /// The job whose results a pool's output files hold: of the pool's jobs that completed
    /// (SUCCEEDED or INSUFFICIENT), the one that ended last, by wall-clock end time and, for
    /// equal end times, the one submitted last.
    pub(crate) fn newest_completed(&self, pool: &str) -> Option<&str> {
        self.job_order
            .iter()
            .enumerate()
            .filter_map(|(order, id)| Some((order, self.jobs.get(id)?)))
            .filter(|(_, job)| {
                job.settings.pool == pool
                    && matches!(job.state, JobState::Succeeded | JobState::Insufficient)
            })
            .max_by_key(|(order, job)| (job.ended_wall_ms, *order))
            .map(|(_, job)| job.id.as_str())
    }

    /// Lease ids this scheduler will hand out next; the store keeps the high-water mark.
    pub fn next_lease_id(&self) -> LeaseId {
        self.next_lease
    }

    /// Brings back a job from the store after a restart. Recorded verdicts stay; chunks not
    /// finished are queued again (leases are not persisted); a job that was scraping scrapes again.
    pub fn restore(&mut self, stored: StoredJob, now: Instant, wall_now: u64) -> Vec<Outbound> {
        let StoredJob {
            record,
            candidates,
            verdicts,
            chunks: chunk_records,
        } = stored;
        let id = record.id.clone();
        let mut chunks = make_chunks(candidates.len() as u32, record.settings.chunk_size);
        for r in chunk_records {
            if let Some(chunk) = chunks.get_mut(r.chunk_id as usize) {
                chunk.attempts = r.attempts;
                chunk.leases = r.leases;
                if r.failed {
                    chunk.state = ChunkState::Failed;
                }
            }
        }
        let mut slots: Vec<Option<Verdict>> = vec![None; candidates.len()];
        let (mut checked, mut usable, mut recorded) = (0, 0, Vec::new());
        for v in verdicts {
            let Some(slot) = slots.get_mut(v.index as usize) else {
                continue;
            };
            if slot.is_some() {
                continue;
            }
            checked += 1;
            usable += u64::from(v.usable);
            recorded.push(v.index);
            *slot = Some(v);
        }
        for chunk in &mut chunks {
            chunk.unchecked = chunk
                .range
                .clone()
                .filter(|&i| slots[i as usize].is_none())
                .count() as u32;
            if chunk.unchecked == 0 {
                chunk.state = ChunkState::Done;
            }
        }
        let age = Duration::from_millis(wall_now.saturating_sub(record.created_wall_ms));
        let created = now.checked_sub(age).unwrap_or(now);
        let terminal = record.state.is_terminal();
        let job = Job {
            id: id.clone(),
            name: record.name,
            settings: record.settings,
            // An unfinished job starts over from QUEUED: its pool decides when it runs again.
            state: if terminal {
                record.state
            } else {
                JobState::Queued
            },
            reason: record.reason,
            verdicts: slots,
            candidates: candidates.into(),
            chunks,
            created,
            created_wall_ms: record.created_wall_ms,
            ended_wall_ms: record.ended_wall_ms,
            ended: terminal.then_some(now),
            checked,
            usable,
            reassignments: record.reassignments,
            stale_refused: record.stale_refused,
            handed_back: record.handed_back,
            rate_samples: VecDeque::new(),
            source_specs: if terminal {
                Vec::new()
            } else {
                record.source_specs
            },
            sources: record.sources,
            dropped: record.dropped,
            recorded,
        };
        self.job_order.push(id.clone());
        self.jobs.insert(id.clone(), job);
        // Shown to watchers, but not saved again: the store holds it as it is. What restoring
        // changes (an unfinished job started again, or ended because nothing is left to check)
        // is saved like any other change.
        self.changed.watch.insert(id);
        let mut out = Vec::new();
        self.start_queued_jobs(now, wall_now, &mut out);
        out.extend(self.assign(now));
        out
    }

    /// Jobs whose sources are to be fetched since the last call, in the order they started.
    pub fn take_scrapes(&mut self) -> Vec<Scrape> {
        std::mem::take(&mut self.scrapes)
    }

    /// Ids of jobs whose snapshot changed since the last call.
    pub fn take_dirty(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.changed.watch)
    }

    /// Marks a job's snapshot as changed again, for a later `take_dirty`.
    pub fn mark_dirty(&mut self, job_id: &str) {
        self.changed.watch.insert(job_id.to_string());
    }

    pub fn job_ids(&self) -> Vec<String> {
        self.job_order.iter().rev().cloned().collect()
    }

    pub fn snapshot(
        &self,
        job_id: &str,
        include_chunks: bool,
        now: Instant,
    ) -> Result<JobSnapshot, JobError> {
        let job = self
            .jobs
            .get(job_id)
            .ok_or_else(|| JobError::NotFound(job_id.to_string()))?;
        let mut progress = JobProgress {
            chunks_total: job.chunks.len() as u64,
            proxies_total: job.candidates.len() as u64,
            proxies_checked: job.checked,
            proxies_usable: job.usable,
            reassignments: job.reassignments,
            stale_verdicts_refused: job.stale_refused,
            handed_back: job.handed_back,
            elapsed: job
                .ended
                .unwrap_or(now)
                .saturating_duration_since(job.created),
            ..JobProgress::default()
        };
        let mut holders = BTreeSet::new();
        for chunk in &job.chunks {
            match chunk.state {
                ChunkState::Queued => progress.chunks_queued += 1,
                ChunkState::Leased(lease) => {
                    progress.chunks_leased += 1;
                    if let Some(l) = self.leases.get(&lease) {
                        holders.insert(l.session);
                    }
                }
                ChunkState::Done => progress.chunks_done += 1,
                ChunkState::Failed => progress.chunks_failed += 1,
            }
        }
        progress.workers = holders.len() as u64;
        if !job.state.is_terminal() {
            if let (Some(first), Some(last)) = (job.rate_samples.front(), job.rate_samples.back()) {
                let secs = last.0.saturating_duration_since(first.0).as_secs_f64();
                if secs > 0.0 {
                    progress.checks_per_second = (last.1 - first.1) as f64 / secs;
                }
            }
            let left = job.candidates.len() as u64 - job.checked;
            if progress.checks_per_second > 0.0 {
                progress.eta = Some(Duration::from_secs_f64(
                    left as f64 / progress.checks_per_second,
                ));
            }
        }
        let chunks = if include_chunks {
            job.chunks
                .iter()
                .map(|c| ChunkInfo {
                    id: c.id,
                    state: c.state,
                    size: c.range.len() as u32,
                    checked: c.range.len() as u32 - c.unchecked,
                    attempts: c.attempts,
                    leases: c.leases,
                    holder: match c.state {
                        ChunkState::Leased(lease) => self
                            .leases
                            .get(&lease)
                            .and_then(|l| self.sessions.get(&l.session))
                            .map(|s| s.worker_id.clone())
                            .unwrap_or_default(),
                        _ => String::new(),
                    },
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(JobSnapshot {
            id: job.id.clone(),
            name: job.name.clone(),
            state: job.state,
            reason: job.reason.clone(),
            settings: JobSettings {
                judge_urls: self.judges_of(job).to_vec(),
                ..job.settings.clone()
            },
            progress,
            created_wall_ms: job.created_wall_ms,
            ended_wall_ms: job.ended_wall_ms,
            chunks,
            sources: job.sources.clone(),
            dropped: job.dropped.clone(),
        })
    }

    pub fn workers(&self, now: Instant) -> Vec<WorkerSnapshot> {
        self.sessions
            .iter()
            .map(|(id, s)| WorkerSnapshot {
                session_id: *id,
                worker_id: s.worker_id.clone(),
                name: s.name.clone(),
                version: s.version.clone(),
                peer: s.peer.clone(),
                status: if s.silent {
                    "silent"
                } else if s.draining {
                    "draining"
                } else {
                    "active"
                },
                leases: s.leases.iter().copied().collect(),
                capacity: s.capacity,
                max_checks: s.max_checks,
                connected_for: now.saturating_duration_since(s.connected),
                last_seen_ago: now.saturating_duration_since(s.last_seen),
                verdicts_accepted: s.verdicts_accepted,
                judges: s.judges.values().cloned().collect(),
            })
            .collect()
    }

    /// Every candidate of the job once, in candidate order.
    pub fn results(&self, job_id: &str, usable_only: bool) -> Result<Vec<ResultRow>, JobError> {
        Ok(self.results_page(job_id, 0, usize::MAX, usable_only)?.0)
    }

    /// A page of a job's results: candidates from index `start` on, at most `limit` rows (and at
    /// most `limit` * 64 candidates looked at); returns the rows and where the next page starts,
    /// or `None` after the last candidate.
    pub fn results_page(
        &self,
        job_id: &str,
        start: usize,
        limit: usize,
        usable_only: bool,
    ) -> Result<(Vec<ResultRow>, Option<usize>), JobError> {
        let job = self
            .jobs
            .get(job_id)
            .ok_or_else(|| JobError::NotFound(job_id.to_string()))?;
        let chunk_size = job.settings.chunk_size.max(1);
        let total = job.candidates.len();
        let end = start.saturating_add(limit.saturating_mul(64)).min(total);
        let mut rows = Vec::new();
        let mut next = start;
        while next < end && rows.len() < limit {
            let verdict = &job.verdicts[next];
            if !usable_only || verdict.as_ref().is_some_and(|v| v.usable) {
                rows.push(ResultRow {
                    candidate: job.candidates[next].clone(),
                    chunk_id: next as u32 / chunk_size,
                    verdict: verdict.clone(),
                });
            }
            next += 1;
        }
        Ok((rows, (next < total).then_some(next)))
    }

    /// Results recorded after position `cursor` of the job's record, and the new cursor. Once the
    /// job has ended, the last call (`cursor` at the end of the record) also yields the candidates
    /// never checked, so a follower sees every candidate exactly once; `done` says it was the last.
    pub fn results_since(
        &self,
        job_id: &str,
        cursor: usize,
        usable_only: bool,
    ) -> Result<Followed, JobError> {
        let job = self
            .jobs
            .get(job_id)
            .ok_or_else(|| JobError::NotFound(job_id.to_string()))?;
        let chunk_size = job.settings.chunk_size.max(1);
        let row = |i: u32| ResultRow {
            candidate: job.candidates[i as usize].clone(),
            chunk_id: i / chunk_size,
            verdict: job.verdicts[i as usize].clone(),
        };
        let cursor = cursor.min(job.recorded.len());
        let mut rows: Vec<ResultRow> = job.recorded[cursor..]
            .iter()
            .map(|&i| row(i))
            .filter(|r| !usable_only || r.verdict.as_ref().is_some_and(|v| v.usable))
            .collect();
        let done = job.state.is_terminal();
        if done && !usable_only {
            rows.extend(
                (0..job.candidates.len() as u32)
                    .filter(|&i| job.verdicts[i as usize].is_none())
                    .map(row),
            );
        }
        Ok(Followed {
            rows,
            cursor: job.recorded.len(),
            done,
        })
    }

    /// Counts for the metrics endpoint.
    pub fn metrics(&self) -> Metrics {
        let mut m = Metrics {
            counters: self.counters.clone(),
            leases_live: self.leases.len() as u64,
            ..Metrics::default()
        };
        for state in JobState::ALL {
            m.jobs_by_state.insert(state.name(), 0);
        }
        for name in ["queued", "leased", "done", "failed"] {
            m.chunks_by_state.insert(name, 0);
        }
        for job in self.jobs.values() {
            *m.jobs_by_state.entry(job.state.name()).or_default() += 1;
            for chunk in &job.chunks {
                let name = match chunk.state {
                    ChunkState::Queued => "queued",
                    ChunkState::Leased(_) => "leased",
                    ChunkState::Done => "done",
                    ChunkState::Failed => "failed",
                };
                *m.chunks_by_state.entry(name).or_default() += 1;
            }
        }
        for name in ["active", "draining", "silent"] {
            m.workers_by_status.insert(name, 0);
        }
        for w in self.workers(Instant::now()) {
            *m.workers_by_status.entry(w.status).or_default() += 1;
        }
        m
    }

    /// Refused stale verdicts over every job.
    pub fn stale_refused_total(&self) -> u64 {
        self.counters.stale_verdicts_refused
    }
}

fn job_record(job: &Job) -> JobRecord {
    JobRecord {
        id: job.id.clone(),
        name: job.name.clone(),
        settings: job.settings.clone(),
        state: job.state,
        reason: job.reason.clone(),
        created_wall_ms: job.created_wall_ms,
        ended_wall_ms: job.ended_wall_ms,
        reassignments: job.reassignments,
        stale_refused: job.stale_refused,
        handed_back: job.handed_back,
        sources: job.sources.clone(),
        source_specs: job.source_specs.clone(),
        dropped: job.dropped.clone(),
        candidate_count: job.candidates.len() as u64,
    }
}

/// Verdict texts kept for sharing, at most: a million verdicts mostly repeat a few details.
const MAX_SHARED_TEXTS: usize = 4096;

/// The shared copy of `text`, remembered while fewer than [`MAX_SHARED_TEXTS`] are.
fn intern(texts: &mut std::collections::HashSet<Arc<str>>, text: Arc<str>) -> Arc<str> {
    if let Some(shared) = texts.get(&text) {
        return shared.clone();
    }
    if texts.len() < MAX_SHARED_TEXTS {
        texts.insert(text.clone());
    }
    text
}

/// Cuts `total` candidates into chunks of `chunk_size`.
fn make_chunks(total: u32, chunk_size: u32) -> Vec<Chunk> {
    let chunk_size = chunk_size.max(1);
    (0..total)
        .step_by(chunk_size as usize)
        .enumerate()
        .map(|(i, start)| {
            let end = start.saturating_add(chunk_size).min(total);
            Chunk {
                id: i as ChunkId,
                range: start..end,
                unchecked: end - start,
                state: ChunkState::Queued,
                attempts: 0,
                leases: 0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candidate::Protocol;

    const TTL: Duration = Duration::from_secs(10);

    fn settings(chunk_size: u32, min_usable: u64) -> JobSettings {
        JobSettings {
            judge_urls: vec!["http://judge.test/judge".into()],
            protocols: vec![Protocol::Http],
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            filter: UsableFilter::default(),
            chunk_size,
            min_usable,
            deadline: Duration::from_secs(600),
            max_attempts: 3,
            pool: "default".into(),
            max_failed_chunk_ratio: 0.5,
        }
    }

    fn candidates(n: u32) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                protocol: Protocol::Http,
                host: format!("10.0.{}.{}", i / 250, i % 250 + 1),
                port: 8080,
                auth: None,
            })
            .collect()
    }

    fn new_job(id: &str, n: u32, chunk_size: u32, min_usable: u64) -> NewJob {
        NewJob {
            id: id.into(),
            name: String::new(),
            settings: settings(chunk_size, min_usable),
            candidates: candidates(n),
            sources: Vec::new(),
            dropped: BTreeMap::new(),
        }
    }

    fn hello(worker: &str, capacity: u32) -> Hello {
        Hello {
            worker_id: worker.into(),
            name: worker.into(),
            version: "test".into(),
            peer: "127.0.0.1:1".into(),
            capacity,
            max_checks: 10,
        }
    }

    fn assignments(out: &[Outbound]) -> Vec<(SessionId, Assignment)> {
        out.iter()
            .filter_map(|o| match o {
                Outbound::Assign(s, a) => Some((*s, a.clone())),
                _ => None,
            })
            .collect()
    }

    fn verdicts_for(a: &Assignment, usable: impl Fn(u32) -> bool) -> Vec<Verdict> {
        a.candidates
            .iter()
            .map(|(i, _)| Verdict {
                index: *i,
                usable: usable(*i),
                reason: if usable(*i) {
                    Reason::None
                } else {
                    Reason::Refused
                },
                latency_ms: 1,
                exit_ip: "".into(),
                detail: "".into(),
                anonymity: if usable(*i) {
                    Anonymity::Elite
                } else {
                    Anonymity::Unknown
                },
                connect_ms: 1,
            })
            .collect()
    }

    struct Clock {
        start: Instant,
        now: Instant,
    }

    impl Clock {
        fn new() -> Self {
            let start = Instant::now();
            Clock { start, now: start }
        }
        fn advance(&mut self, d: Duration) -> Instant {
            self.now += d;
            self.now
        }
        fn wall(&self) -> u64 {
            self.now.duration_since(self.start).as_millis() as u64
        }
    }

    fn scheduler() -> Scheduler {
        Scheduler::new(
            LeaseConfig {
                lease_ttl: TTL,
                default_judges: vec!["http://judge.test/judge".into()],
            },
            1,
        )
    }

    fn state(s: &Scheduler, job: &str, t: Instant) -> JobState {
        s.snapshot(job, false, t).unwrap().state
    }

    #[test]
    fn a_job_with_workers_runs_to_success() {
        let c = Clock::new();
        let mut s = scheduler();
        let out = s.submit(new_job("j", 10, 4, 2), c.now, c.wall());
        assert!(assignments(&out).is_empty(), "no worker yet");
        assert_eq!(state(&s, "j", c.now), JobState::Checking);
        let (w, out) = s.hello(hello("w1", 2), c.now);
        let first = assignments(&out);
        assert_eq!(first.len(), 2, "assigned up to capacity");
        assert!(first.iter().all(|(sess, a)| *sess == w && a.attempt == 1));
        let out = s.verdicts(
            w,
            first[0].1.lease_id,
            verdicts_for(&first[0].1, |i| i < 3),
            c.now,
            c.wall(),
        );
        assert!(out.contains(&Outbound::LeaseDone(w, first[0].1.lease_id)));
        let third = assignments(&out);
        assert_eq!(third.len(), 1, "the freed credit gets the last chunk");
        assert_eq!(third[0].1.candidates.len(), 2);
        for (_, a) in [first[1].clone(), third[0].clone()] {
            s.verdicts(w, a.lease_id, verdicts_for(&a, |_| false), c.now, c.wall());
        }
        let snap = s.snapshot("j", true, c.now).unwrap();
        assert_eq!(snap.state, JobState::Succeeded);
        assert_eq!(snap.progress.proxies_checked, 10);
        assert_eq!(snap.progress.proxies_usable, 3);
        assert_eq!(snap.progress.chunks_done, 3);
        let results = s.results("j", false).unwrap();
        assert_eq!(results.len(), 10);
        assert!(results.iter().all(|r| r.verdict.is_some()));
        assert_eq!(s.results("j", true).unwrap().len(), 3);
    }

    #[test]
    fn workers_are_leased_by_free_check_slots() {
        let c = Clock::new();
        let mut s = scheduler();
        // 20 chunks of 15; each worker has 20 slots and room for 100 leases.
        s.submit(new_job("j", 300, 15, 0), c.now, c.wall());
        let slots = |name| Hello {
            max_checks: 20,
            ..hello(name, 100)
        };
        let (w1, out) = s.hello(slots("w1"), c.now);
        // Queue deeper than every slot: twice the slots (40) may be held.
        assert_eq!(
            assignments(&out).len(),
            3,
            "45 candidates for 20 slots and 20 ahead"
        );
        let (w2, out) = s.hello(slots("w2"), c.now);
        assert_eq!(assignments(&out).len(), 3);
        // Verdicts free slots: a partial batch frees no whole chunk's room yet...
        let held = |s: &Scheduler, w| s.sessions[&w].unchecked;
        assert_eq!((held(&s, w1), held(&s, w2)), (45, 45));
        let lease = s.sessions[&w1].leases.iter().next().copied().unwrap();
        let chunk = s.leases[&lease].chunk;
        let range = s.jobs["j"].chunks[chunk as usize].range.clone();
        let refused = |index| Verdict {
            index,
            usable: false,
            reason: Reason::Refused,
            latency_ms: 1,
            exit_ip: "".into(),
            detail: "".into(),
            anonymity: Anonymity::Unknown,
            connect_ms: 1,
        };
        let partial: Vec<Verdict> = range.clone().take(4).map(refused).collect();
        let out = s.verdicts(w1, lease, partial, c.now, c.wall());
        assert_eq!(held(&s, w1), 41);
        assert!(assignments(&out).is_empty(), "41 held is past 40");
        // ...and a finished chunk lets the next one in.
        let rest: Vec<Verdict> = range.skip(4).map(refused).collect();
        let out = s.verdicts(w1, lease, rest, c.now, c.wall());
        assert_eq!(assignments(&out).len(), 1);
        assert_eq!(held(&s, w1), 45);
    }

    #[test]
    fn near_the_end_of_the_queue_no_worker_holds_more_than_its_slots() {
        let c = Clock::new();
        let mut s = scheduler();
        // 8 chunks of 10 for two workers of 20 slots each.
        s.submit(new_job("j", 80, 10, 0), c.now, c.wall());
        let slots = |name| Hello {
            max_checks: 20,
            ..hello(name, 100)
        };
        let (w1, out) = s.hello(slots("w1"), c.now);
        let w1_leases = assignments(&out);
        assert_eq!(
            w1_leases.len(),
            4,
            "80 queued for 20 slots: 20 ahead allowed"
        );
        let (w2, out) = s.hello(slots("w2"), c.now);
        let w2_leases = assignments(&out);
        assert_eq!(w2_leases.len(), 2, "30 queued of 40 slots: none ahead");
        // w1 finishes a chunk: it holds 30 for its 20 slots, so no more for it.
        let a = &w1_leases[0].1;
        let out = s.verdicts(w1, a.lease_id, verdicts_for(a, |_| false), c.now, c.wall());
        assert!(assignments(&out).is_empty());
        // w2 finishes one: it has 10 free slots and gets the next chunk, and only that.
        let a = &w2_leases[0].1;
        let out = s.verdicts(w2, a.lease_id, verdicts_for(a, |_| false), c.now, c.wall());
        let last = assignments(&out);
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].0, w2);
    }

    #[test]
    fn too_few_usable_is_insufficient() {
        let c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("j", 3, 10, 5), c.now, c.wall());
        let (w, out) = s.hello(hello("w", 1), c.now);
        let a = assignments(&out).remove(0).1;
        s.verdicts(w, a.lease_id, verdicts_for(&a, |i| i == 0), c.now, c.wall());
        let snap = s.snapshot("j", false, c.now).unwrap();
        assert_eq!(snap.state, JobState::Insufficient);
        assert!(snap.reason.contains("only 1 usable"), "{}", snap.reason);
    }

    #[test]
    fn an_empty_job_ends_at_once() {
        let c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("j", 0, 10, 0), c.now, c.wall());
        assert_eq!(state(&s, "j", c.now), JobState::Succeeded);
    }

    #[test]
    fn a_broken_stream_requeues_at_once_and_keeps_recorded_verdicts() {
        let c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("j", 4, 4, 1), c.now, c.wall());
        let (w1, out) = s.hello(hello("w1", 1), c.now);
        let a = assignments(&out).remove(0).1;
        let mut partial = verdicts_for(&a, |_| true);
        partial.truncate(2);
        s.verdicts(w1, a.lease_id, partial, c.now, c.wall());
        assert!(
            assignments(&s.disconnect(w1, c.now)).is_empty(),
            "nobody to take it"
        );
        let snap = s.snapshot("j", true, c.now).unwrap();
        assert_eq!(snap.progress.reassignments, 1);
        assert_eq!(snap.chunks[0].state, ChunkState::Queued);
        assert_eq!(snap.chunks[0].attempts, 1);
        let (w2, out) = s.hello(hello("w2", 1), c.now);
        let b = assignments(&out).remove(0).1;
        assert_eq!(b.attempt, 2);
        let idx: Vec<u32> = b.candidates.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, [2, 3], "only the unchecked proxies are checked again");
        s.verdicts(w2, b.lease_id, verdicts_for(&b, |_| false), c.now, c.wall());
        let snap = s.snapshot("j", false, c.now).unwrap();
        assert_eq!(snap.state, JobState::Succeeded);
        assert_eq!(
            (snap.progress.proxies_checked, snap.progress.proxies_usable),
            (4, 2)
        );
    }

    #[test]
    fn silence_past_the_ttl_expires_leases_and_late_verdicts_are_refused() {
        let mut c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("j", 4, 4, 1), c.now, c.wall());
        let (frozen, out) = s.hello(hello("frozen", 1), c.now);
        let a = assignments(&out).remove(0).1;
        let (other, _) = s.hello(hello("other", 1), c.now);
        // Just before the TTL nothing happens; the other worker keeps speaking.
        let t = c.advance(TTL - Duration::from_millis(1));
        s.heartbeat(other, &[], t);
        assert!(assignments(&s.tick(t, c.wall())).is_empty());
        let t = c.advance(Duration::from_millis(1));
        s.heartbeat(other, &[], t);
        let out = s.tick(t, c.wall());
        assert!(out.contains(&Outbound::Revoke(
            frozen,
            a.lease_id,
            "lease expired: no message within the lease ttl"
        )));
        let b = assignments(&out);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].0, other, "the silent session gets nothing");
        // The frozen worker wakes up and sends its verdicts: refused, counted, nothing recorded.
        let out = s.verdicts(frozen, a.lease_id, verdicts_for(&a, |_| true), t, c.wall());
        assert_eq!(out, [Outbound::Revoke(frozen, a.lease_id, "stale lease")]);
        let snap = s.snapshot("j", false, t).unwrap();
        assert_eq!(snap.progress.stale_verdicts_refused, 4);
        assert_eq!(snap.progress.proxies_checked, 0);
        s.verdicts(
            other,
            b[0].1.lease_id,
            verdicts_for(&b[0].1, |_| false),
            t,
            c.wall(),
        );
        let snap = s.snapshot("j", false, t).unwrap();
        assert_eq!(snap.state, JobState::Insufficient);
        assert_eq!(
            (snap.progress.proxies_checked, snap.progress.proxies_usable),
            (4, 0)
        );
        assert_eq!(s.stale_refused_total(), 4);
        // Having spoken again, the once-silent worker is active again.
        assert!(s.workers(t).iter().all(|w| w.status == "active"));
    }

    #[test]
    fn a_heartbeat_renews_and_revokes_leases_not_held() {
        let mut c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("j", 4, 4, 1), c.now, c.wall());
        let (w, out) = s.hello(hello("w", 1), c.now);
        let a = assignments(&out).remove(0).1;
        for _ in 0..5 {
            let t = c.advance(TTL / 2);
            let out = s.heartbeat(w, &[a.lease_id, 999], t);
            assert_eq!(out, [Outbound::Revoke(w, 999, "stale lease")]);
            assert!(
                s.tick(t, c.wall()).is_empty(),
                "heartbeats keep the lease alive"
            );
        }
    }

    #[test]
    fn a_second_hello_replaces_the_session_and_ends_its_leases() {
        let c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("j", 4, 4, 1), c.now, c.wall());
        let (old, out) = s.hello(hello("w", 1), c.now);
        let a = assignments(&out).remove(0).1;
        let (new, out) = s.hello(hello("w", 1), c.now);
        assert!(out.contains(&Outbound::Close(old)));
        let b = assignments(&out);
        assert_eq!(b[0].0, new);
        assert_eq!(b[0].1.attempt, 2);
        s.verdicts(old, a.lease_id, verdicts_for(&a, |_| true), c.now, c.wall());
        let snap = s.snapshot("j", false, c.now).unwrap();
        assert_eq!(
            snap.progress.proxies_checked, 0,
            "an ended session's verdicts count for nothing"
        );
        assert_eq!(s.workers(c.now).len(), 1);
    }

    #[test]
    fn a_poison_chunk_fails_after_max_attempts_and_the_job_goes_on() {
        let c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("j", 8, 4, 1), c.now, c.wall());
        let (good, out) = s.hello(hello("good", 1), c.now);
        let g = assignments(&out).remove(0).1;
        assert_eq!(g.chunk_id, 0);
        // Chunk 1 kills every worker that takes it.
        for attempt in 1..=3 {
            let (victim, out) = s.hello(hello(&format!("victim{attempt}"), 1), c.now);
            let v = assignments(&out).remove(0).1;
            assert_eq!((v.chunk_id, v.attempt), (1, attempt));
            s.disconnect(victim, c.now);
        }
        let snap = s.snapshot("j", true, c.now).unwrap();
        assert_eq!(snap.chunks[1].state, ChunkState::Failed);
        assert_eq!(snap.chunks[1].attempts, 3);
        assert_eq!(snap.state, JobState::Checking);
        s.verdicts(
            good,
            g.lease_id,
            verdicts_for(&g, |_| true),
            c.now,
            c.wall(),
        );
        let snap = s.snapshot("j", false, c.now).unwrap();
        assert_eq!(snap.state, JobState::Succeeded);
        assert!(
            snap.reason.contains("1 of 2 chunks failed"),
            "{}",
            snap.reason
        );
        let results = s.results("j", false).unwrap();
        assert_eq!(results.len(), 8);
        assert_eq!(results.iter().filter(|r| r.verdict.is_none()).count(), 4);
    }

    #[test]
    fn too_many_failed_chunks_fail_the_job() {
        let c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("j", 4, 4, 0), c.now, c.wall());
        for attempt in 1..=3 {
            let (victim, _) = s.hello(hello(&format!("v{attempt}"), 1), c.now);
            s.disconnect(victim, c.now);
        }
        let snap = s.snapshot("j", false, c.now).unwrap();
        assert_eq!(snap.state, JobState::Failed);
        assert!(
            snap.reason.contains("1 of 1 chunks failed"),
            "{}",
            snap.reason
        );
    }

    #[test]
    fn drain_and_hand_back_cost_no_attempt() {
        let c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("j", 8, 4, 1), c.now, c.wall());
        let (w, out) = s.hello(hello("w", 2), c.now);
        let a = assignments(&out);
        assert_eq!(a.len(), 2);
        s.draining(w, c.now);
        let mut partial = verdicts_for(&a[0].1, |_| false);
        partial.truncate(1);
        s.verdicts(w, a[0].1.lease_id, partial, c.now, c.wall());
        assert!(
            assignments(&s.hand_back(w, a[0].1.lease_id, c.now)).is_empty(),
            "a draining worker gets nothing"
        );
        s.verdicts(
            w,
            a[1].1.lease_id,
            verdicts_for(&a[1].1, |_| false),
            c.now,
            c.wall(),
        );
        s.disconnect(w, c.now);
        let snap = s.snapshot("j", true, c.now).unwrap();
        assert_eq!(snap.progress.handed_back, 1);
        assert_eq!(snap.progress.reassignments, 0);
        assert_eq!(snap.chunks[0].attempts, 0);
        let (w2, out) = s.hello(hello("w2", 2), c.now);
        let b = assignments(&out).remove(0).1;
        assert_eq!(
            b.candidates.len(),
            3,
            "the verdict recorded before the hand-back stays"
        );
        s.verdicts(w2, b.lease_id, verdicts_for(&b, |_| false), c.now, c.wall());
        assert_eq!(state(&s, "j", c.now), JobState::Insufficient);
    }

    #[test]
    fn a_job_without_workers_fails_at_its_deadline() {
        let mut c = Clock::new();
        let mut s = scheduler();
        let mut job = new_job("j", 4, 4, 1);
        job.settings.deadline = Duration::from_secs(30);
        s.submit(job, c.now, c.wall());
        let t = c.advance(Duration::from_secs(29));
        s.tick(t, c.wall());
        assert_eq!(state(&s, "j", t), JobState::Checking);
        let t = c.advance(Duration::from_secs(1));
        s.tick(t, c.wall());
        let snap = s.snapshot("j", false, t).unwrap();
        assert_eq!(snap.state, JobState::Failed);
        assert!(snap.reason.contains("deadline of 30s"), "{}", snap.reason);
        assert!(
            snap.reason.contains("no worker is connected"),
            "{}",
            snap.reason
        );
    }

    #[test]
    fn a_deadline_revokes_live_leases_and_refuses_their_verdicts() {
        let mut c = Clock::new();
        let mut s = scheduler();
        let mut job = new_job("j", 4, 4, 1);
        job.settings.deadline = Duration::from_secs(5);
        s.submit(job, c.now, c.wall());
        let (w, out) = s.hello(hello("w", 1), c.now);
        let a = assignments(&out).remove(0).1;
        let t = c.advance(Duration::from_secs(5));
        s.heartbeat(w, &[a.lease_id], t);
        let out = s.tick(t, c.wall());
        assert!(out.contains(&Outbound::Revoke(w, a.lease_id, "job ended")));
        s.verdicts(w, a.lease_id, verdicts_for(&a, |_| true), t, c.wall());
        let snap = s.snapshot("j", false, t).unwrap();
        assert_eq!(snap.state, JobState::Failed);
        assert_eq!(snap.progress.proxies_checked, 0);
        assert_eq!(snap.progress.stale_verdicts_refused, 4);
    }

    #[test]
    fn cancel_ends_a_job_and_is_idempotent() {
        let c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("j", 4, 4, 1), c.now, c.wall());
        let (w, out) = s.hello(hello("w", 1), c.now);
        let a = assignments(&out).remove(0).1;
        let (snap, out) = s.cancel("j", c.now, c.wall()).unwrap();
        assert_eq!(snap.state, JobState::Cancelled);
        assert!(out.contains(&Outbound::Revoke(w, a.lease_id, "job ended")));
        let (snap, out) = s.cancel("j", c.now, c.wall()).unwrap();
        assert_eq!(snap.state, JobState::Cancelled);
        assert!(out.is_empty());
        assert_eq!(
            s.cancel("nope", c.now, c.wall()).unwrap_err(),
            JobError::NotFound("nope".into())
        );
    }

    #[test]
    fn one_job_per_pool_at_a_time() {
        let c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("a", 4, 4, 0), c.now, c.wall());
        s.submit(new_job("b", 4, 4, 0), c.now, c.wall());
        let mut other = new_job("c", 4, 4, 0);
        other.settings.pool = "other".into();
        s.submit(other, c.now, c.wall());
        assert_eq!(state(&s, "a", c.now), JobState::Checking);
        assert_eq!(state(&s, "b", c.now), JobState::Queued);
        assert_eq!(state(&s, "c", c.now), JobState::Checking);
        s.cancel("a", c.now, c.wall()).unwrap();
        assert_eq!(state(&s, "b", c.now), JobState::Checking);
    }

    #[test]
    fn duplicate_and_foreign_verdicts_are_not_counted_twice() {
        let c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("j", 8, 4, 0), c.now, c.wall());
        let (w, out) = s.hello(hello("w", 1), c.now);
        let a = assignments(&out).remove(0).1;
        let mut v = verdicts_for(&a, |_| true);
        v.truncate(2);
        s.verdicts(w, a.lease_id, v.clone(), c.now, c.wall());
        s.verdicts(w, a.lease_id, v, c.now, c.wall());
        let foreign = Verdict {
            index: 7,
            usable: true,
            reason: Reason::None,
            latency_ms: 1,
            exit_ip: "".into(),
            detail: "".into(),
            anonymity: Anonymity::Elite,
            connect_ms: 1,
        };
        s.verdicts(w, a.lease_id, vec![foreign], c.now, c.wall());
        let snap = s.snapshot("j", false, c.now).unwrap();
        assert_eq!(
            (snap.progress.proxies_checked, snap.progress.proxies_usable),
            (2, 2)
        );
    }

    #[test]
    fn verdicts_from_an_ended_session_are_refused_and_counted() {
        let c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("j", 4, 4, 1), c.now, c.wall());
        let (w, out) = s.hello(hello("w", 1), c.now);
        let a = assignments(&out).remove(0).1;
        s.disconnect(w, c.now);
        let out = s.verdicts(w, a.lease_id, verdicts_for(&a, |_| true), c.now, c.wall());
        assert!(out.is_empty(), "nobody to tell");
        let p = s.snapshot("j", false, c.now).unwrap().progress;
        assert_eq!((p.proxies_checked, p.stale_verdicts_refused), (0, 4));
    }

    #[test]
    fn only_a_draining_worker_hands_back_for_free() {
        let c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("j", 4, 4, 1), c.now, c.wall());
        let (w, out) = s.hello(hello("w", 1), c.now);
        let a = assignments(&out).remove(0).1;
        let (other, _) = s.hello(hello("other", 1), c.now);
        s.hand_back(w, a.lease_id, c.now);
        s.draining(other, c.now);
        s.hand_back(other, a.lease_id, c.now);
        let snap = s.snapshot("j", true, c.now).unwrap();
        assert_eq!(
            snap.progress.handed_back, 0,
            "ignored: not draining, or not the holder"
        );
        assert!(matches!(snap.chunks[0].state, ChunkState::Leased(l) if l == a.lease_id));
    }

    #[test]
    fn a_draining_session_that_ends_costs_no_attempt() {
        let c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("j", 4, 4, 1), c.now, c.wall());
        let (w, _) = s.hello(hello("w", 1), c.now);
        s.draining(w, c.now);
        let (_, out) = s.hello(hello("w", 1), c.now);
        let b = assignments(&out).remove(0).1;
        let snap = s.snapshot("j", true, c.now).unwrap();
        assert_eq!((snap.chunks[0].attempts, snap.progress.handed_back), (0, 1));
        assert_eq!(b.attempt, 2);
    }

    #[test]
    fn a_silent_session_that_speaks_again_gets_work_again() {
        let mut c = Clock::new();
        let mut s = scheduler();
        let (w, _) = s.hello(hello("w", 1), c.now);
        let t = c.advance(TTL);
        s.tick(t, c.wall());
        assert_eq!(s.workers(t)[0].status, "silent");
        let out = s.submit(new_job("j", 4, 4, 1), t, c.wall());
        assert!(
            assignments(&out).is_empty(),
            "a silent session gets nothing"
        );
        let out = s.heartbeat(w, &[], t);
        assert_eq!(assignments(&out).len(), 1);
        assert_eq!(s.workers(t)[0].status, "active");
    }

    #[test]
    fn messages_from_unknown_sessions_change_nothing() {
        let c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("j", 4, 4, 1), c.now, c.wall());
        assert!(s.heartbeat(42, &[1], c.now).is_empty());
        assert!(s.hand_back(42, 1, c.now).is_empty());
        assert!(s.disconnect(42, c.now).is_empty());
        s.draining(42, c.now);
        let snap = s.snapshot("j", true, c.now).unwrap();
        assert_eq!(snap.chunks[0].state, ChunkState::Queued);
    }

    #[test]
    fn a_job_queued_behind_its_pool_fails_at_its_deadline_saying_so() {
        let mut c = Clock::new();
        let mut s = scheduler();
        s.hello(hello("w", 1), c.now);
        s.submit(new_job("a", 4, 4, 1), c.now, c.wall());
        let mut b = new_job("b", 4, 4, 1);
        b.settings.deadline = Duration::from_secs(5);
        s.submit(b, c.now, c.wall());
        let t = c.advance(Duration::from_secs(5));
        s.tick(t, c.wall());
        let snap = s.snapshot("b", false, t).unwrap();
        assert_eq!(snap.state, JobState::Failed);
        assert!(
            snap.reason.contains("waited behind another job"),
            "{}",
            snap.reason
        );
    }

    #[test]
    fn working_proxies_outside_the_filter_are_recorded_as_filtered() {
        let c = Clock::new();
        let mut s = scheduler();
        let mut job = new_job("j", 3, 3, 1);
        job.settings.filter = UsableFilter {
            max_latency: Some(Duration::from_millis(100)),
            min_anonymity: Some(Anonymity::Anonymous),
            require_https: false,
        };
        s.submit(job, c.now, c.wall());
        let (w, out) = s.hello(hello("w", 1), c.now);
        let a = assignments(&out).remove(0).1;
        let mut v = verdicts_for(&a, |_| true);
        v[0].latency_ms = 500;
        v[1].anonymity = Anonymity::Transparent;
        s.verdicts(w, a.lease_id, v, c.now, c.wall());
        let results = s.results("j", false).unwrap();
        let reasons: Vec<Reason> = results
            .iter()
            .map(|r| r.verdict.as_ref().unwrap().reason)
            .collect();
        assert_eq!(reasons, [Reason::Filtered, Reason::Filtered, Reason::None]);
        assert!(
            results[0]
                .verdict
                .as_ref()
                .unwrap()
                .detail
                .contains("latency 500ms")
        );
        assert!(
            results[1]
                .verdict
                .as_ref()
                .unwrap()
                .detail
                .contains("Transparent")
        );
        assert_eq!(
            s.snapshot("j", false, c.now)
                .unwrap()
                .progress
                .proxies_usable,
            1
        );
    }

    #[test]
    fn require_https_needs_a_tunnel() {
        let filter = UsableFilter {
            require_https: true,
            ..UsableFilter::default()
        };
        let verdict = verdicts_for(
            &Assignment {
                lease_id: 1,
                job_id: "j".into(),
                chunk_id: 0,
                attempt: 1,
                candidates: vec![(0, candidates(1).remove(0))],
                judge_urls: vec![],
                timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(1),
            },
            |_| true,
        )
        .remove(0);
        let mut candidate = candidates(1).remove(0);
        assert!(filter.refuse(&verdict, &candidate, false).is_some());
        assert!(filter.refuse(&verdict, &candidate, true).is_none());
        candidate.protocol = Protocol::Socks5;
        assert!(filter.refuse(&verdict, &candidate, false).is_none());
    }

    #[test]
    fn a_job_with_sources_scrapes_then_checks_its_merged_candidates() {
        let c = Clock::new();
        let mut s = scheduler();
        let mut job = new_job("j", 2, 2, 1);
        job.sources = vec![SourceSpec {
            url: "http://lists.test/a.txt".into(),
            protocols: vec![],
            content: None,
            trusted: false,
        }];
        let out = s.submit(job, c.now, c.wall());
        assert!(out.is_empty(), "nothing for a worker yet: {out:?}");
        assert!(
            matches!(&s.take_scrapes()[..], [Scrape { job_id, sources }] if job_id == "j" && sources.len() == 1)
        );
        assert!(s.take_scrapes().is_empty(), "each scrape is taken once");
        let snap = s.snapshot("j", false, c.now).unwrap();
        assert_eq!(
            (snap.state, snap.sources[0].state),
            (JobState::Scraping, SourceState::Pending)
        );
        s.source_progress(
            "j",
            SourceStatus {
                url: "http://lists.test/a.txt".into(),
                state: SourceState::Fetched,
                candidates: 3,
                rejected: 1,
                bytes: 40,
                error: String::new(),
            },
        );
        // One scraped candidate repeats an inline one.
        let mut scraped = candidates(3);
        scraped.remove(1);
        let out = s.scraped(
            "j",
            scraped,
            BTreeMap::from([("malformed".to_string(), 1)]),
            c.now,
            c.wall(),
        );
        assert!(out.is_empty(), "no worker yet");
        let snap = s.snapshot("j", false, c.now).unwrap();
        assert_eq!(snap.state, JobState::Checking);
        assert_eq!(snap.progress.proxies_total, 3);
        assert_eq!(
            snap.dropped,
            BTreeMap::from([("duplicate".to_string(), 1), ("malformed".to_string(), 1)])
        );
        assert_eq!(snap.sources[0].candidates, 3);
        assert_eq!(snap.progress.chunks_total, 2);
    }

    #[test]
    fn a_job_whose_sources_all_failed_fails_saying_so() {
        let c = Clock::new();
        let mut s = scheduler();
        let mut job = new_job("j", 0, 2, 1);
        job.sources = vec![SourceSpec {
            url: "http://lists.test/a".into(),
            protocols: vec![],
            content: None,
            trusted: false,
        }];
        s.submit(job, c.now, c.wall());
        s.source_progress(
            "j",
            SourceStatus {
                url: "http://lists.test/a".into(),
                state: SourceState::Failed,
                candidates: 0,
                rejected: 0,
                bytes: 0,
                error: "status 503".into(),
            },
        );
        s.scraped("j", Vec::new(), BTreeMap::new(), c.now, c.wall());
        let snap = s.snapshot("j", false, c.now).unwrap();
        assert_eq!(snap.state, JobState::Failed);
        assert!(
            snap.reason
                .contains("every source failed: http://lists.test/a: status 503"),
            "{}",
            snap.reason
        );
    }

    #[test]
    fn a_cancelled_scraping_job_ignores_late_candidates() {
        let c = Clock::new();
        let mut s = scheduler();
        let mut job = new_job("j", 0, 2, 1);
        job.sources = vec![SourceSpec {
            url: "http://lists.test/a".into(),
            protocols: vec![],
            content: None,
            trusted: false,
        }];
        s.submit(job, c.now, c.wall());
        s.cancel("j", c.now, c.wall()).unwrap();
        s.scraped("j", candidates(4), BTreeMap::new(), c.now, c.wall());
        let snap = s.snapshot("j", false, c.now).unwrap();
        assert_eq!(
            (snap.state, snap.progress.proxies_total),
            (JobState::Cancelled, 0)
        );
    }

    #[test]
    fn a_job_whose_judges_are_all_down_fails_at_once() {
        let c = Clock::new();
        let mut s = scheduler();
        let mut job = new_job("j", 4, 4, 1);
        job.settings.judge_urls = vec!["http://a.test/".into(), "http://b.test/".into()];
        s.submit(job, c.now, c.wall());
        let (w, _) = s.hello(hello("w", 1), c.now);
        let down = |url: &str| JudgeStatus {
            url: url.into(),
            ok: false,
            own_ip: String::new(),
            error: "refused".into(),
        };
        s.judge_status(w, down("http://a.test/"), c.now, c.wall());
        assert_eq!(state(&s, "j", c.now), JobState::Checking, "one judge left");
        s.judge_status(w, down("http://b.test/"), c.now, c.wall());
        let snap = s.snapshot("j", false, c.now).unwrap();
        assert_eq!(snap.state, JobState::Failed);
        assert!(
            snap.reason.contains("unreachable from worker w"),
            "{}",
            snap.reason
        );
        assert_eq!(s.workers(c.now)[0].judges.len(), 2);
    }

    #[test]
    fn followers_see_each_candidate_once_as_it_is_recorded() {
        let c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("j", 6, 3, 0), c.now, c.wall());
        let (w, out) = s.hello(hello("w", 1), c.now);
        let a = assignments(&out).remove(0).1;
        let first = s.results_since("j", 0, false).unwrap();
        assert_eq!((first.rows.len(), first.cursor, first.done), (0, 0, false));
        let mut v = verdicts_for(&a, |i| i == 1);
        v.truncate(2);
        s.verdicts(w, a.lease_id, v, c.now, c.wall());
        let second = s.results_since("j", first.cursor, false).unwrap();
        assert_eq!(second.rows.len(), 2);
        assert_eq!(
            s.results_since("j", first.cursor, true).unwrap().rows.len(),
            1
        );
        s.cancel("j", c.now, c.wall()).unwrap();
        let last = s.results_since("j", second.cursor, false).unwrap();
        assert!(last.done);
        assert_eq!(last.rows.len(), 4, "the unchecked rest, once");
        let mut all: Vec<String> = second
            .rows
            .iter()
            .chain(&last.rows)
            .map(|r| r.candidate.url())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6);
    }

    /// What a store replaying `records` would give back.
    fn replay(records: &[Record]) -> Vec<StoredJob> {
        let mut jobs: BTreeMap<String, StoredJob> = BTreeMap::new();
        let mut candidates: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
        let mut verdicts: BTreeMap<String, Vec<Verdict>> = BTreeMap::new();
        let mut chunks: BTreeMap<String, BTreeMap<ChunkId, ChunkRecord>> = BTreeMap::new();
        for r in records {
            match r {
                Record::Job(j) => {
                    let stored = StoredJob {
                        record: (**j).clone(),
                        candidates: vec![],
                        verdicts: vec![],
                        chunks: vec![],
                    };
                    jobs.insert(j.id.clone(), stored);
                }
                Record::Candidates {
                    job_id,
                    candidates: c,
                } => {
                    candidates.insert(job_id.clone(), c.to_vec());
                    verdicts.remove(job_id);
                }
                Record::Verdicts {
                    job_id,
                    verdicts: v,
                } => verdicts
                    .entry(job_id.clone())
                    .or_default()
                    .extend(v.clone()),
                Record::Chunk { job_id, chunk } => {
                    let of_job = chunks.entry(job_id.clone()).or_default();
                    of_job.insert(chunk.chunk_id, chunk.clone());
                }
            }
        }
        jobs.into_values()
            .map(|mut j| {
                let id = j.record.id.clone();
                j.candidates = candidates.remove(&id).unwrap_or_default();
                j.verdicts = verdicts.remove(&id).unwrap_or_default();
                j.chunks = chunks
                    .remove(&id)
                    .map(|c| c.into_values().collect())
                    .unwrap_or_default();
                j
            })
            .collect()
    }

    #[test]
    fn a_restored_job_keeps_its_verdicts_and_checks_only_the_rest() {
        let c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("j", 8, 4, 1), c.now, c.wall());
        let (w, out) = s.hello(hello("w", 2), c.now);
        let leases = assignments(&out);
        // Chunk 0 finished, chunk 1 half done, then the coordinator dies.
        let first = &leases[0].1;
        s.verdicts(
            w,
            first.lease_id,
            verdicts_for(first, |i| i == 2),
            c.now,
            c.wall(),
        );
        let mut half = verdicts_for(&leases[1].1, |_| false);
        half.truncate(2);
        s.verdicts(w, leases[1].1.lease_id, half, c.now, c.wall());
        let journal = s.take_journal();
        assert!(s.take_journal().is_empty(), "taken once");

        let mut restarted = Scheduler::new(
            LeaseConfig {
                lease_ttl: TTL,
                default_judges: vec!["http://judge.test/judge".into()],
            },
            s.next_lease_id(),
        );
        for job in replay(&journal) {
            restarted.restore(job, c.now, c.wall());
        }
        let snap = restarted.snapshot("j", true, c.now).unwrap();
        assert_eq!(snap.state, JobState::Checking);
        assert_eq!(
            (snap.progress.proxies_checked, snap.progress.proxies_usable),
            (6, 1)
        );
        assert_eq!(snap.chunks[0].state, ChunkState::Done);
        assert_eq!(snap.chunks[1].state, ChunkState::Queued);
        let (w2, out) = restarted.hello(hello("w", 2), c.now);
        let again = assignments(&out);
        assert_eq!(again.len(), 1);
        let indices: Vec<u32> = again[0].1.candidates.iter().map(|(i, _)| *i).collect();
        assert_eq!(indices, [6, 7], "only the unchecked proxies");
        assert!(
            again[0].1.lease_id >= s.next_lease_id(),
            "lease ids stay unique across restarts"
        );
        // A verdict for a lease from before the restart is refused.
        let old = &leases[1].1;
        let late = verdicts_for(old, |_| true);
        restarted.verdicts_of_job(w2, old.lease_id, "j", late, c.now, c.wall());
        let refused = restarted
            .snapshot("j", false, c.now)
            .unwrap()
            .progress
            .stale_verdicts_refused;
        assert_eq!(refused, 4);
        let new = &again[0].1;
        restarted.verdicts(
            w2,
            new.lease_id,
            verdicts_for(new, |_| false),
            c.now,
            c.wall(),
        );
        let snap = restarted.snapshot("j", false, c.now).unwrap();
        assert_eq!(snap.state, JobState::Succeeded);
        assert_eq!(
            (snap.progress.proxies_checked, snap.progress.proxies_usable),
            (8, 1)
        );
    }

    #[test]
    fn restored_failed_chunks_and_ended_jobs_stay_as_they_were() {
        let c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("done", 2, 2, 0), c.now, c.wall());
        let mut poison = new_job("poison", 4, 2, 0);
        poison.settings.pool = "p".into();
        s.submit(poison, c.now, c.wall());
        s.cancel("done", c.now, c.wall()).unwrap();
        for attempt in 1..=3 {
            let (v, _) = s.hello(hello(&format!("v{attempt}"), 1), c.now);
            s.disconnect(v, c.now);
        }
        let before = s.snapshot("poison", true, c.now).unwrap();
        let mut restarted = Scheduler::new(
            LeaseConfig {
                lease_ttl: TTL,
                default_judges: vec!["http://judge.test/judge".into()],
            },
            1,
        );
        for job in replay(&s.take_journal()) {
            restarted.restore(job, c.now, c.wall());
        }
        let done = restarted.snapshot("done", false, c.now).unwrap();
        assert_eq!(done.state, JobState::Cancelled);
        let after = restarted.snapshot("poison", true, c.now).unwrap();
        assert_eq!(after.chunks[0].state, before.chunks[0].state);
        assert_eq!(after.chunks[0].attempts, 3);
        assert_eq!(after.progress.reassignments, before.progress.reassignments);
    }

    #[test]
    fn chunks_spread_over_sessions_least_loaded_first() {
        let c = Clock::new();
        let mut s = scheduler();
        let (w1, _) = s.hello(hello("w1", 4), c.now);
        let (w2, _) = s.hello(hello("w2", 4), c.now);
        let out = s.submit(new_job("j", 40, 10, 0), c.now, c.wall());
        let a = assignments(&out);
        assert_eq!(a.iter().filter(|(s, _)| *s == w1).count(), 2);
        assert_eq!(a.iter().filter(|(s, _)| *s == w2).count(), 2);
        let leases: BTreeSet<_> = a.iter().map(|(_, a)| a.lease_id).collect();
        assert_eq!(leases.len(), 4, "lease ids are unique");
    }

    #[test]
    fn lease_ids_start_where_told() {
        let c = Clock::new();
        let mut s = Scheduler::new(
            LeaseConfig {
                lease_ttl: TTL,
                default_judges: vec!["http://judge.test/judge".into()],
            },
            1_000,
        );
        s.submit(new_job("j", 1, 1, 0), c.now, c.wall());
        let (_, out) = s.hello(hello("w", 1), c.now);
        assert_eq!(assignments(&out)[0].1.lease_id, 1_000);
    }

    #[test]
    fn progress_reports_a_rate_and_an_eta() {
        let mut c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("j", 20, 10, 0), c.now, c.wall());
        let (w, out) = s.hello(hello("w", 1), c.now);
        let a = assignments(&out).remove(0).1;
        s.tick(c.now, c.wall());
        let t = c.advance(Duration::from_secs(2));
        s.verdicts(w, a.lease_id, verdicts_for(&a, |_| false), t, c.wall());
        s.tick(t, c.wall());
        let p = s.snapshot("j", false, t).unwrap().progress;
        assert!(
            (p.checks_per_second - 5.0).abs() < 1e-9,
            "{}",
            p.checks_per_second
        );
        assert_eq!(p.eta, Some(Duration::from_secs(2)));
        assert_eq!(p.workers, 1);
    }

    #[test]
    fn a_job_that_ends_during_restore_journals_its_end_and_nothing_more() {
        let c = Clock::new();
        let mut s = scheduler();
        s.submit(new_job("checked", 4, 2, 1), c.now, c.wall());
        let mut ended = new_job("ended", 2, 2, 0);
        ended.settings.pool = "p".into();
        s.submit(ended, c.now, c.wall());
        s.cancel("ended", c.now, c.wall()).unwrap();
        let (w, out) = s.hello(hello("w", 2), c.now);
        for (_, a) in assignments(&out) {
            s.verdicts(w, a.lease_id, verdicts_for(&a, |i| i == 0), c.now, c.wall());
        }
        let checked = s.snapshot("checked", false, c.now).unwrap();
        assert_eq!(checked.state, JobState::Succeeded);
        let mut stored = replay(&s.take_journal());
        // Every verdict of the job stored, its end not.
        for job in &mut stored {
            if job.record.id == "checked" {
                job.record.state = JobState::Checking;
                job.record.ended_wall_ms = 0;
            }
        }
        let mut restarted = scheduler();
        for job in stored {
            restarted.restore(job, c.now, c.wall());
        }
        let snap = restarted.snapshot("checked", false, c.now).unwrap();
        assert_eq!(snap.state, JobState::Succeeded, "{}", snap.reason);
        let journal = restarted.take_journal();
        let rows: Vec<(&str, JobState)> = journal
            .iter()
            .filter_map(|r| match r {
                Record::Job(j) => Some((j.id.as_str(), j.state)),
                _ => None,
            })
            .collect();
        assert_eq!(
            rows,
            [("checked", JobState::Succeeded)],
            "the end made by restoring is saved; what was read back is not saved again"
        );
        assert_eq!(journal.len(), 1, "{journal:?}");
    }

    #[test]
    fn a_pools_files_come_from_its_job_that_completed_last() {
        let mut c = Clock::new();
        let mut s = scheduler();
        assert_eq!(s.newest_completed("default"), None);
        // A job of no candidate completes when submitted.
        s.submit(new_job("a", 0, 1, 0), c.now, c.wall());
        let t = c.advance(Duration::from_secs(1));
        s.submit(new_job("b", 0, 1, 1), t, c.wall());
        assert_eq!(
            s.snapshot("b", false, t).unwrap().state,
            JobState::Insufficient
        );
        assert_eq!(s.newest_completed("default"), Some("b"));
        // Ended at the same time: the one submitted last.
        s.submit(new_job("d", 0, 1, 0), t, c.wall());
        assert_eq!(s.newest_completed("default"), Some("d"));
        // A cancelled job, or one of another pool, feeds no file of the pool.
        let t = c.advance(Duration::from_secs(1));
        s.submit(new_job("e", 4, 2, 0), t, c.wall());
        s.cancel("e", t, c.wall()).unwrap();
        let mut other = new_job("f", 0, 1, 0);
        other.settings.pool = "p".into();
        s.submit(other, t, c.wall());
        assert_eq!(s.newest_completed("default"), Some("d"));
        assert_eq!(s.newest_completed("p"), Some("f"));
        // Restored, the end times decide, not the order the jobs come back in.
        let mut stored = replay(&s.take_journal());
        for job in &mut stored {
            if job.record.id == "a" {
                job.record.ended_wall_ms = 60_000;
            }
        }
        let mut restarted = scheduler();
        for job in stored {
            restarted.restore(job, t, c.wall());
        }
        assert_eq!(restarted.newest_completed("default"), Some("a"));
        restarted.forget("a");
        assert_eq!(restarted.newest_completed("default"), Some("d"));
    }
}
