//! The scheduler: worker sessions, leases and jobs, pure, clock passed in, no IO.
//!
//! Every input (a worker's hello, verdicts, heartbeat, hand-back, drain, a broken stream, a clock
//! tick, a client's submit or cancel) is a method taking `now`; every output to a worker is an
//! [`Outbound`] message the caller delivers, and sources to fetch are a [`Scrape`] the caller
//! takes with [`Scheduler::take_scrapes`]. The caller serializes access (one lock).
//!
//! The rooms: [`leases`] holds sessions and the leases they hold and knows no job; [`jobs`]
//! holds jobs, their chunks and verdicts and knows no lease; [`view`] is what clients read;
//! [`journal`] is what the store keeps and how a restart brings it back. This module joins them:
//! it decides which chunk goes to which session and what a lost lease costs.

mod jobs;
mod journal;
mod leases;
mod pools;
#[cfg(test)]
mod tests;
mod verdict;
mod view;

pub use jobs::JobState;
pub(crate) use jobs::{
    ChunkState, JobKind, JobSettings, NewJob, SourceSpec, SourceState, SourceStatus, WorkerTally,
};
pub(crate) use journal::{ChunkRecord, JobRecord, Record, ReportCounts, StoredJob};
pub(crate) use pools::{Member, PoolChange, PoolMeta, REPORTED};
pub use verdict::{Anonymity, Reason};
pub(crate) use verdict::{CheckTarget, CheckTargets, TargetVerdict, UsableFilter, Verdict};
pub(crate) use view::{
    ChunkCounts, ChunkInfo, Followed, JobProgress, JobReport, JobSnapshot, Metrics, ResultRow,
    RowFilter, StoredRows, WorkerSnapshot,
};

use jobs::{Exhausted, Job, LeaseLoss, Suspects, make_chunks};
use journal::Changed;
use leases::{Fleet, LeaseKind};
use pools::{Feed, Observation, Pools};

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::candidate::Candidate;

pub(crate) type LeaseId = u64;
pub(crate) type SessionId = u64;
pub(crate) type ChunkId = u32;

/// How long a lease may bring no verdict before, at its job's tail, its unchecked candidates are
/// leased again to an idle session: longer than one check may take, with room to spare.
fn speculate_after(settings: &JobSettings) -> Duration {
    (settings.timeout + settings.timeout / 2).max(Duration::from_secs(1))
}

/// A pool member leaves the live set after this many failed checks in a row, unless configured.
pub(crate) const DEFAULT_MAX_FAILURES: u32 = 3;
/// A member out of its pool's live set this long after it was last seen usable is forgotten.
const FORGET_DEAD_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often members to forget are looked for.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// How often a pool's live members are checked again, unless configured.
pub(crate) const DEFAULT_REVALIDATE_EVERY: Duration = Duration::from_secs(600);

/// A new job id: `prefix`, a dash, and ten random letters and digits (none that read alike).
pub(crate) fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let suffix: String = (0..10)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}-{suffix}")
}

/// What a verdict tells a pool of its candidate; none when it was not checked at all.
fn observation(
    job_id: &str,
    verdict: &Verdict,
    wall_ms: u64,
    geo: &crate::geo::Geo,
) -> Option<Observation> {
    // Not checked (poison, forbidden), or working but outside a job's own filter: neither says
    // anything about the proxy for its pool.
    if matches!(
        verdict.reason,
        Reason::Poison | Reason::Forbidden | Reason::Filtered
    ) {
        return None;
    }
    let country = verdict
        .exit_ip
        .parse()
        .ok()
        .and_then(|ip| geo.country(ip))
        .unwrap_or_default();
    Some(Observation {
        country,
        wall_ms,
        usable: verdict.usable,
        reason: verdict.reason,
        latency_ms: verdict.latency_ms,
        anonymity: verdict.anonymity,
        exit_ip: verdict.exit_ip.to_string(),
        detail: verdict.detail.to_string(),
        job_id: job_id.to_string(),
    })
}

/// Settings of the lease protocol, fixed for the coordinator's life.
#[derive(Debug, Clone)]
pub(crate) struct LeaseConfig {
    /// A session silent this long loses its leases.
    pub(crate) lease_ttl: Duration,
    /// Judges of jobs that name none: the coordinator's, as configured now (they may move
    /// between restarts, so jobs do not keep them).
    pub(crate) default_judges: Vec<String>,
    /// At a job's tail, lease a slow lease's unchecked candidates again to an idle session.
    pub(crate) speculation: bool,
}

/// A chunk as leased to a worker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Assignment {
    pub(crate) lease_id: LeaseId,
    pub(crate) job_id: String,
    pub(crate) chunk_id: ChunkId,
    pub(crate) attempt: u32,
    /// Unchecked candidates of the chunk, with their job indices.
    pub(crate) candidates: Vec<(u32, Candidate)>,
    pub(crate) judge_urls: Vec<String>,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) targets: CheckTargets,
}

/// A lease as the messages about it name it, for the worker and for log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRef {
    pub(crate) lease_id: LeaseId,
    /// Empty when the scheduler cannot tell: a lease it never granted, named by nothing else.
    pub(crate) job_id: String,
    /// Known while the lease is live.
    pub(crate) chunk_id: Option<ChunkId>,
}

/// How a worker's message names a lease: the job and chunk its Assign gave, as far as the
/// message carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Named<'a> {
    /// Empty when the message names no job.
    pub(crate) job_id: &'a str,
    pub(crate) chunk_id: Option<ChunkId>,
}

impl Named<'_> {
    /// A message that names the lease by its id alone.
    pub(crate) const NOTHING: Named<'static> = Named {
        job_id: "",
        chunk_id: None,
    };
}

/// A message for one worker session.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outbound {
    Assign(SessionId, Assignment),
    LeaseDone(SessionId, LeaseRef),
    Revoke(SessionId, LeaseRef, &'static str),
    /// The worker's verdicts of a lease before this position are handled (recorded, or refused
    /// and counted): it need not send them again. Like `LeaseDone`, sent once what it reports is
    /// durable.
    VerdictsHandled(SessionId, LeaseId, u32),
    /// End this session's stream: it was replaced by a newer session of the same worker.
    Close(SessionId),
}

/// A job entered SCRAPING: fetch its sources, then hand their candidates to
/// [`Scheduler::scraped`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scrape {
    pub(crate) job_id: String,
    pub(crate) sources: Vec<SourceSpec>,
}

/// What a client may get wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum JobError {
    #[error("no job with id {0:?}; `proxyfleet jobs` lists the known jobs")]
    NotFound(String),
    /// An ended job's rows live in the store, and reading them failed.
    #[error("{0}; the coordinator's data dir cannot be read, check its disk")]
    Unreadable(String),
}

/// What a worker said hello with.
#[derive(Debug, Clone)]
pub(crate) struct Hello {
    pub(crate) worker_id: String,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) peer: String,
    pub(crate) capacity: u32,
    pub(crate) max_checks: u32,
}

/// What a worker found when it asked a judge directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JudgeStatus {
    pub(crate) url: String,
    pub(crate) ok: bool,
    pub(crate) own_ip: String,
    pub(crate) error: String,
}

/// The whole scheduling state of a coordinator.
#[derive(Debug)]
pub(crate) struct Scheduler {
    /// The lease protocol's settings, fixed for the coordinator's life.
    config: LeaseConfig,
    /// Every job, by id; the order of ids in `job_order` is submission order.
    jobs: HashMap<String, Job>,
    /// Job ids in submission order: pools start their oldest queued job first.
    job_order: Vec<String>,
    /// Chunks waiting for a worker, oldest first; entries whose chunk is no longer queued are skipped.
    queue: VecDeque<(String, ChunkId)>,
    /// Worker sessions and the leases they hold.
    fleet: Fleet,
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
    /// Set by [`Scheduler::stop`]: no lease is granted any more.
    stopped: bool,
    /// Every pool's members and when they are checked again; fed by the verdicts of its jobs.
    pools: Pools,
    /// When members to forget were last looked for (wall ms).
    forgot_ms: u64,
    /// Names the countries of usable proxies' exit addresses, where a database is present.
    geo: Arc<crate::geo::Geo>,
    /// Running revalidation rounds, by job: whether a member passed yet, and the failures held
    /// until one does (dropped if none does).
    round_doubts: HashMap<String, RoundDoubt>,
}

/// A running round's failures, held until one of its members passes.
#[derive(Debug, Default)]
struct RoundDoubt {
    passed: bool,
    held: Vec<(Candidate, Observation)>,
}

/// Event totals since the coordinator started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) leases_granted: u64,
    pub(crate) leases_completed: u64,
    /// Taken back from a worker that went silent past the lease TTL.
    pub(crate) leases_expired: u64,
    /// Taken back from a worker that vanished (stream broken, silent or replaced) and queued again.
    pub(crate) leases_requeued: u64,
    pub(crate) leases_handed_back: u64,
    pub(crate) verdicts_usable: u64,
    pub(crate) verdicts_unusable: u64,
    pub(crate) stale_verdicts_refused: u64,
    /// Verdicts refused because another lease of the chunk recorded the candidate first.
    pub(crate) duplicate_verdicts_refused: u64,
    /// Backup leases granted at a job's tail.
    pub(crate) speculative_leases: u64,
    /// Chunks whose attempts ran out, cut in halves.
    pub(crate) chunks_cut: u64,
    /// Pieces of one candidate whose attempts ran out: their candidate is poison.
    pub(crate) chunks_failed: u64,
}

impl Scheduler {
    /// `first_lease_id` lets lease ids stay unique across coordinator restarts.
    pub(crate) fn new(config: LeaseConfig, first_lease_id: LeaseId) -> Self {
        Scheduler {
            config,
            jobs: HashMap::new(),
            job_order: Vec::new(),
            queue: VecDeque::new(),
            fleet: Fleet::new(first_lease_id),
            changed: Changed::default(),
            texts: Default::default(),
            journal: Vec::new(),
            scrapes: Vec::new(),
            counters: Counters::default(),
            stopped: false,
            pools: Pools::new(DEFAULT_MAX_FAILURES, DEFAULT_REVALIDATE_EVERY),
            forgot_ms: 0,
            geo: Arc::default(),
            round_doubts: HashMap::new(),
        }
    }

    /// Sets how pools keep their members: a member leaves the live set after `max_failures`
    /// failed checks in a row, and the live members of a pool whose refreshes name no interval
    /// are checked again every `revalidate_every` (zero: never). Call before restoring pools.
    /// `geo` names exit countries (it may hold no database).
    pub(crate) fn configure_pools(
        &mut self,
        max_failures: u32,
        revalidate_every: Duration,
        geo: Arc<crate::geo::Geo>,
    ) {
        self.pools = Pools::new(max_failures, revalidate_every);
        self.geo = geo;
    }

    /// Brings back a pool as the store had it.
    pub(crate) fn restore_pool(&mut self, meta: PoolMeta, members: Vec<Member>) {
        self.pools.restore(meta, members);
    }

    /// Starts a revalidation round of every pool that is due one: a job of the pool's live
    /// members, checked with the settings of its newest refresh, leased before any refresh.
    fn start_rounds(&mut self, now: Instant, wall_ms: u64, out: &mut Vec<Outbound>) {
        if self.stopped {
            return;
        }
        if wall_ms
            >= self
                .forgot_ms
                .saturating_add(FORGET_EVERY.as_millis() as u64)
        {
            self.forgot_ms = wall_ms;
            let before = wall_ms.saturating_sub(FORGET_DEAD_AFTER.as_millis() as u64);
            let gone = self.pools.forget_dead(before);
            self.journal.extend(gone.into_iter().map(Record::Pool));
        }
        for (pool, settings, candidates) in self.pools.due(wall_ms) {
            let id = new_id("round");
            let every = self
                .pools
                .revalidate_every(&pool)
                .unwrap_or(DEFAULT_REVALIDATE_EVERY);
            let settings = JobSettings {
                kind: JobKind::Revalidation,
                min_usable: 0,
                // A round that cannot finish in its interval (or a minute) gives way to the
                // next; what it checked counts.
                deadline: every.max(Duration::from_secs(60)),
                max_failed_chunk_ratio: 1.0,
                revalidate_every: None,
                ..settings
            };
            let job = Job::new(
                NewJob {
                    id: id.clone(),
                    name: format!("revalidate {pool}"),
                    settings,
                    candidates,
                    sources: Vec::new(),
                    dropped: BTreeMap::new(),
                },
                now,
                wall_ms,
            );
            self.journal.push(Record::Candidates {
                job_id: id.clone(),
                candidates: Arc::clone(&job.candidates),
            });
            self.job_order.push(id.clone());
            self.jobs.insert(id.clone(), job);
            self.changed.insert(id.clone());
            let change = self.pools.round_started(&pool, &id, wall_ms);
            self.journal.push(Record::Pool(change));
            self.start_checking(&id, now, wall_ms, out);
        }
    }

    /// Queues a job; it starts checking at once unless another job of its pool is running.
    pub(crate) fn submit(&mut self, new: NewJob, now: Instant, wall_ms: u64) -> Vec<Outbound> {
        let job = Job::new(new, now, wall_ms);
        let id = job.id.clone();
        self.journal.push(Record::Candidates {
            job_id: id.clone(),
            candidates: Arc::clone(&job.candidates),
        });
        self.job_order.push(id.clone());
        self.jobs.insert(id.clone(), job);
        self.changed.insert(id);
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
            .filter(|j| j.settings.kind == JobKind::Refresh)
            .map(|j| j.settings.pool.clone())
            .collect();
        for id in self.job_order.clone() {
            let job = &self.jobs[&id];
            if job.state != JobState::Queued || busy.contains(&job.settings.pool) {
                continue;
            }
            busy.insert(job.settings.pool.clone());
            let job = self.jobs.get_mut(&id).expect("job listed in job_order");
            // A job restored unfinished keeps its first start.
            if job.started_wall_ms == 0 {
                job.started_wall_ms = wall_ms;
            }
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
        if job.started_wall_ms == 0 {
            job.started_wall_ms = wall_ms;
        }
        match job.settings.kind {
            JobKind::Refresh => {
                for chunk in &job.chunks {
                    self.queue.push_back((job_id.to_string(), chunk.id));
                }
                let change = self.pools.refresh_started(
                    &job.settings.pool,
                    &job.settings,
                    job.settings.revalidate_every,
                    wall_ms,
                );
                self.journal.extend(change.map(Record::Pool));
            }
            // A pool's live members are checked before new candidates: a big refresh never
            // starves its pool's rounds.
            JobKind::Revalidation => {
                for chunk in job.chunks.iter().rev() {
                    self.queue.push_front((job_id.to_string(), chunk.id));
                }
            }
        }
        self.changed.insert(job_id.to_string());
        self.finish_if_complete(job_id, now, wall_ms, out);
    }

    /// A source of a scraping job started, progressed or ended.
    pub(crate) fn source_progress(&mut self, job_id: &str, status: SourceStatus) {
        if let Some(job) = self.jobs.get_mut(job_id)
            && let Some(slot) = job.sources.iter_mut().find(|s| s.url == status.url)
        {
            *slot = status;
            self.changed.insert(job_id.to_string());
        }
    }

    /// The job's sources are fetched: their candidates join the job (each proxy once) and checking
    /// starts. A job left with no candidate fails, saying why.
    pub(crate) fn scraped(
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
        job.base_chunks = job.chunks.len() as u32;
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
    pub(crate) fn judge_status(
        &mut self,
        session: SessionId,
        status: JudgeStatus,
        now: Instant,
        wall_ms: u64,
    ) -> Vec<Outbound> {
        let mut out = Vec::new();
        if !self.fleet.touch(session, now) {
            return out;
        }
        let Some((worker_id, down)) = self.fleet.judge_report(session, status) else {
            return out;
        };
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
                "no judge of the job works from worker {worker_id} ({why}); give a judge URL the workers can reach that answers 200 (submit --judge, or the coordinator's --judge-url)"
            );
            self.end_job(&job_id, JobState::Failed, reason, now, wall_ms, &mut out);
        }
        out.extend(self.assign(now));
        out
    }

    /// A worker opened a session. A previous session with the same worker id is replaced.
    pub(crate) fn hello(&mut self, hello: Hello, now: Instant) -> (SessionId, Vec<Outbound>) {
        let mut out = Vec::new();
        for old in self.fleet.sessions_of(&hello.worker_id) {
            self.end_session(old, now, &mut out);
            out.push(Outbound::Close(old));
        }
        let id = self.fleet.open(hello, now);
        out.extend(self.assign(now));
        (id, out)
    }

    /// Verdicts for a lease. Accepted only from the live lease's holder; otherwise refused and counted.
    #[cfg(test)]
    pub(crate) fn verdicts(
        &mut self,
        session: SessionId,
        lease_id: LeaseId,
        verdicts: Vec<Verdict>,
        now: Instant,
        wall_ms: u64,
    ) -> Vec<Outbound> {
        self.verdicts_of_job(
            session,
            lease_id,
            Named::NOTHING,
            None,
            verdicts,
            now,
            wall_ms,
        )
    }

    /// Verdicts naming the job (and chunk) they are for, so that refused ones for a lease this
    /// scheduler never knew (granted before a restart) still count against their job, and its
    /// revoke names the lease as it was granted; `first` is the position the worker gave the
    /// first of them among its verdicts for the lease, if it gives positions.
    ///
    /// A worker sends a batch again when the stream it went out on broke before the batch was
    /// acknowledged ([`Outbound::VerdictsHandled`]); the positions this scheduler has handled of
    /// the lease are skipped, so no verdict is recorded or counted twice. Of a lease it does not
    /// know (granted before a restart), a verdict for a candidate it holds a verdict for is not
    /// counted: it may be that very verdict, recorded before the restart.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn verdicts_of_job(
        &mut self,
        session: SessionId,
        lease_id: LeaseId,
        named: Named<'_>,
        first: Option<u32>,
        mut verdicts: Vec<Verdict>,
        now: Instant,
        wall_ms: u64,
    ) -> Vec<Outbound> {
        let mut out = Vec::new();
        // An ended session's verdicts are refused and counted like any other stale ones.
        let live_session = self.fleet.touch(session, now);
        let mut known = true;
        if let Some(first) = first {
            let mut through = first.saturating_add(verdicts.len() as u32);
            match self.fleet.handle(lease_id, through) {
                Some(handled) => {
                    let seen = (handled.saturating_sub(first) as usize).min(verdicts.len());
                    verdicts.drain(..seen);
                    through = through.max(handled);
                }
                None => known = false,
            }
            if live_session {
                out.push(Outbound::VerdictsHandled(session, lease_id, through));
            }
        }
        let Some((job_id, chunk_id)) = self
            .fleet
            .lease(lease_id)
            .filter(|l| live_session && l.session == session)
            .map(|l| (l.job_id.clone(), l.chunk))
        else {
            // A worker that names no chunk (an older one), for a lease this scheduler did not
            // grant: a guess for log lines only, the newest chunk holding its first verdict's
            // candidate. A lease it granted is named by the chunk it was granted for.
            let named = Named {
                chunk_id: named.chunk_id.or_else(|| {
                    if self.fleet.granted_for(lease_id).is_some() {
                        return None;
                    }
                    let index = verdicts.first()?.index;
                    self.chunk_holding(named.job_id, index)
                }),
                ..named
            };
            let lease = self.lease_ref(lease_id, named);
            if let Some(job) = self.jobs.get_mut(&lease.job_id) {
                if !known {
                    verdicts.retain(|v| {
                        !job.verdicts
                            .get(v.index as usize)
                            .is_some_and(Option::is_some)
                    });
                }
                job.stale_refused += verdicts.len() as u64;
                self.changed.insert(job.id.clone());
            }
            self.counters.stale_verdicts_refused += verdicts.len() as u64;
            if live_session {
                out.push(Outbound::Revoke(session, lease, "stale lease"));
            }
            return out;
        };
        let judge_is_https = self
            .judges_of(&self.jobs[&job_id])
            .iter()
            .all(|u| u.starts_with("https://"));
        let job = self.jobs.get_mut(&job_id).expect("a live lease has a job");
        let holders = job.leases_on(chunk_id);
        let recorded = job.record(chunk_id, verdicts, judge_is_https, &mut self.texts);
        let accepted = recorded.verdicts.len() as u64;
        if accepted > 0
            && let Some(holder) = self.fleet.session(session)
        {
            let tally = job.by_worker.entry(holder.worker_id.clone()).or_default();
            tally.name.clone_from(&holder.name);
            tally.verdicts += accepted;
            tally.usable += recorded.usable;
        }
        let feed = match job.settings.kind {
            JobKind::Refresh => Feed::Refresh,
            JobKind::Revalidation => Feed::Revalidation,
        };
        let mut pool_changes: Vec<PoolChange> = Vec::new();
        for v in &recorded.verdicts {
            let (Some(seen), Some(candidate)) = (
                observation(&job_id, v, wall_ms, &self.geo),
                job.candidates.get(v.index as usize),
            ) else {
                continue;
            };
            // A round's failures count once one of its members passed: a round in which every
            // member fails says the judge, a target or the workers' network is down, not that
            // every proxy died at once.
            if feed == Feed::Revalidation {
                let doubt = self.round_doubts.entry(job_id.clone()).or_default();
                if !seen.usable && !doubt.passed {
                    doubt.held.push((candidate.clone(), seen));
                    continue;
                }
                if seen.usable && !doubt.passed {
                    doubt.passed = true;
                    for (held, failed) in std::mem::take(&mut doubt.held) {
                        pool_changes.extend(self.pools.observe(
                            &job.settings.pool,
                            feed,
                            &held,
                            &failed,
                        ));
                    }
                }
            }
            pool_changes.extend(
                self.pools
                    .observe(&job.settings.pool, feed, candidate, &seen),
            );
        }
        self.counters.duplicate_verdicts_refused += recorded.duplicates;
        self.counters.verdicts_usable += recorded.usable;
        self.counters.verdicts_unusable += accepted - recorded.usable;
        if accepted > 0 {
            self.journal.push(Record::Verdicts {
                job_id: job_id.clone(),
                first_position: recorded.first_position,
                verdicts: recorded.verdicts,
            });
        }
        // In the same write as the verdicts: a pool never counts a check the store lost.
        self.journal
            .extend(pool_changes.into_iter().map(Record::Pool));
        self.changed.insert(job_id.clone());
        self.fleet
            .checked(lease_id, session, accepted, recorded.duplicates, now);
        if recorded.chunk_done {
            self.counters.leases_completed += 1;
            // The chunk's other lease, if any (a backup, or the lease a backup was for), has
            // nothing left to check.
            for other in holders.into_iter().filter(|&other| other != lease_id) {
                if let Some(holder) = self.fleet.holder(other) {
                    out.push(Outbound::Revoke(
                        holder,
                        self.lease_ref(other, Named::NOTHING),
                        "checked by another worker",
                    ));
                }
                self.fleet.retire(other);
            }
            self.fleet.retire(lease_id);
            let lease = LeaseRef {
                lease_id,
                job_id: job_id.clone(),
                chunk_id: Some(chunk_id),
            };
            out.push(Outbound::LeaseDone(session, lease));
            self.finish_if_complete(&job_id, now, wall_ms, &mut out);
        }
        // Every verdict frees a check slot: the worker may have room for the next chunk.
        if accepted + recorded.duplicates > 0 {
            out.extend(self.assign(now));
        }
        out
    }

    /// A heartbeat naming leases by id alone.
    #[cfg(test)]
    pub(crate) fn heartbeat(
        &mut self,
        session: SessionId,
        claimed: &[LeaseId],
        now: Instant,
    ) -> Vec<Outbound> {
        self.heartbeat_naming(session, claimed, &[], now)
    }

    /// A heartbeat names the leases the worker believes it holds; any it does not hold is revoked.
    /// `held` is how the worker names them (their job and chunk, as assigned): a revoke of a
    /// lease granted before a restart names it so.
    pub(crate) fn heartbeat_naming(
        &mut self,
        session: SessionId,
        claimed: &[LeaseId],
        held: &[LeaseRef],
        now: Instant,
    ) -> Vec<Outbound> {
        let mut out = Vec::new();
        if !self.fleet.touch(session, now) {
            return out;
        }
        // One lookup per claimed lease, however many entries `held` carries: a worker's message
        // must not cost the scheduler more than the leases it claims.
        let held: HashMap<LeaseId, &LeaseRef> = held
            .iter()
            .take(claimed.len())
            .map(|h| (h.lease_id, h))
            .collect();
        for &lease_id in claimed {
            if self.fleet.holder(lease_id) != Some(session) {
                let named = held.get(&lease_id).map_or(Named::NOTHING, |h| Named {
                    job_id: &h.job_id,
                    chunk_id: h.chunk_id,
                });
                let lease = self.lease_ref(lease_id, named);
                out.push(Outbound::Revoke(session, lease, "stale lease"));
            }
        }
        out.extend(self.assign(now));
        out
    }

    /// The worker is shutting down: no new leases for it.
    pub(crate) fn draining(&mut self, session: SessionId, now: Instant) {
        if self.fleet.touch(session, now) {
            self.fleet.set_draining(session);
        }
    }

    /// A draining worker gives a lease back unfinished; the chunk is queued again at no attempt.
    pub(crate) fn hand_back(
        &mut self,
        session: SessionId,
        lease_id: LeaseId,
        now: Instant,
    ) -> Vec<Outbound> {
        let mut out = Vec::new();
        if !self.fleet.touch(session, now) {
            return out;
        }
        // Only a draining worker may give work back for free; others must finish or vanish.
        let draining = self.fleet.session(session).is_some_and(|s| s.draining);
        if draining && self.fleet.holder(lease_id) == Some(session) {
            self.lose_lease(lease_id, LeaseLoss::HandedBack, now, &mut out);
        }
        out.extend(self.assign(now));
        out
    }

    /// The session's stream ended (broke or closed): its leases go back to the queue at once.
    pub(crate) fn disconnect(&mut self, session: SessionId, now: Instant) -> Vec<Outbound> {
        let mut out = Vec::new();
        self.end_session(session, now, &mut out);
        out.extend(self.assign(now));
        out
    }

    /// The coordinator is stopping: every session ends and its leases with it, at no cost to
    /// their chunks (a restart is routine, not a worker's failure), and no lease is granted any
    /// more. What is left of those chunks is checked again after the restart.
    pub(crate) fn stop(&mut self, now: Instant) {
        self.stopped = true;
        let sessions: Vec<SessionId> = self.fleet.sessions().map(|(id, _)| *id).collect();
        let mut out = Vec::new();
        for session in sessions {
            if let Some(s) = self.fleet.close(session) {
                for lease_id in s.leases {
                    self.lose_lease(lease_id, LeaseLoss::CoordinatorStopped, now, &mut out);
                }
            }
        }
    }

    /// What losing `lease_id` to a holder that vanished holding `pieces` pieces costs: an
    /// attempt, unless the lease is a piece and its holder held others, when the blame is
    /// unknown.
    fn vanished(&self, lease_id: LeaseId, pieces: u32) -> LeaseLoss {
        let piece = self
            .fleet
            .lease(lease_id)
            .is_some_and(|l| l.kind == LeaseKind::Piece);
        if piece && pieces > 1 {
            LeaseLoss::Unattributed
        } else {
            LeaseLoss::Vanished
        }
    }

    fn end_session(&mut self, session: SessionId, now: Instant, out: &mut Vec<Outbound>) {
        if let Some(s) = self.fleet.close(session) {
            for lease_id in s.leases {
                // A draining worker's leases come back at no cost, however its session ends.
                let loss = if s.draining {
                    LeaseLoss::HandedBack
                } else {
                    self.vanished(lease_id, s.pieces)
                };
                self.lose_lease(lease_id, loss, now, out);
            }
        }
    }

    /// Expires silent sessions' leases and overdue jobs; call often (a few times a second).
    pub(crate) fn tick(&mut self, now: Instant, wall_ms: u64) -> Vec<Outbound> {
        let mut out = Vec::new();
        let ttl = self.config.lease_ttl;
        for (id, leases) in self.fleet.silence(now, ttl) {
            self.counters.leases_expired += leases.len() as u64;
            let pieces = self.fleet.session(id).map_or(0, |s| s.pieces);
            for lease_id in leases {
                let loss = self.vanished(lease_id, pieces);
                out.push(Outbound::Revoke(
                    id,
                    self.lease_ref(lease_id, Named::NOTHING),
                    "lease expired: no message within the lease ttl",
                ));
                self.lose_lease(lease_id, loss, now, &mut out);
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
            if self.fleet.is_empty() {
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
        self.start_rounds(now, wall_ms, &mut out);
        out.extend(self.assign(now));
        self.speculate(now, &mut out);
        out
    }

    /// Cancels a job that has not ended; returns its snapshot either way.
    pub(crate) fn cancel(
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

    /// Pushes queued chunks to sessions with free check slots, least loaded first; once nothing
    /// is queued, leases the unchecked candidates of slow leases again to sessions with idle
    /// slots ([`Scheduler::speculate`]).
    pub(crate) fn assign(&mut self, now: Instant) -> Vec<Outbound> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        // Sessions none of the queued chunks may go to now (see [`Scheduler::next_queued_chunk`]).
        let mut passed = BTreeSet::new();
        // Granting moves no chunk in or out of suspicion: the shares hold for the whole call.
        let shares = self.suspect_shares();
        loop {
            // While more work is queued than every worker's slots can take, each may hold twice its
            // slots, so no slot idles while verdicts travel; near the end of the queue none holds
            // more than its slots, so no candidate waits in a busy worker while another has free
            // slots.
            let queued = self.queued_candidates();
            let deep = queued >= self.fleet.slots();
            let Some(session) = self.fleet.pick(deep, &passed) else {
                break;
            };
            let Some((job_id, chunk_id, kind)) = self.next_queued_chunk(session, shares) else {
                passed.insert(session);
                continue;
            };
            out.push(self.grant(session, &job_id, chunk_id, kind, now));
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

    /// How many leases of suspect chunks each serving session may hold: of chunks charged an
    /// attempt, and of pieces. Suspects are spread evenly: one worker that freezes or dies then
    /// costs each of them at most its share, not all of them an attempt at once.
    fn suspect_shares(&self) -> Suspects {
        let open = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Checking)
            .fold(Suspects::default(), |sum, j| Suspects {
                retries: sum.retries + j.suspects.retries,
                pieces: sum.pieces + j.suspects.pieces,
            });
        let sessions = self.fleet.serving().max(1) as u64;
        Suspects {
            retries: open.retries.div_ceil(sessions).max(1),
            pieces: open.pieces.div_ceil(sessions).max(1),
        }
    }

    /// The first queued chunk `session` may take, taken off the queue, with the kind of lease it
    /// makes; entries whose chunk is no longer queued are dropped on the way. `shares` are from
    /// [`Scheduler::suspect_shares`].
    fn next_queued_chunk(
        &mut self,
        session: SessionId,
        shares: Suspects,
    ) -> Option<(String, ChunkId, LeaseKind)> {
        let holder = self.fleet.session(session)?;
        let (retries, pieces) = (u64::from(holder.retries), u64::from(holder.pieces));
        let mut i = 0;
        while i < self.queue.len() {
            let (job_id, chunk_id) = &self.queue[i];
            let Some(chunk) = self.queued_chunk(job_id, *chunk_id) else {
                self.queue.remove(i);
                continue;
            };
            // A piece is suspected of killing its holder: pieces are spread evenly too, so that
            // a worker that dies holds one alone, as often as can be, and it alone is charged
            // (see [`LeaseLoss::Unattributed`]).
            let kind = if chunk.piece {
                (pieces < shares.pieces).then_some(LeaseKind::Piece)
            } else if chunk.attempts > 0 {
                (retries < shares.retries).then_some(LeaseKind::Retry)
            } else {
                Some(LeaseKind::Fresh)
            };
            if let Some(kind) = kind {
                let (job_id, chunk_id) = self.queue.remove(i).expect("index within the queue");
                return Some((job_id, chunk_id, kind));
            }
            i += 1;
        }
        None
    }

    /// A chunk of a checking job that waits for a lease.
    fn queued_chunk(&self, job_id: &str, chunk_id: ChunkId) -> Option<&jobs::Chunk> {
        let job = self.jobs.get(job_id)?;
        let chunk = job.chunks.get(chunk_id as usize)?;
        (job.state == JobState::Checking && chunk.state == ChunkState::Queued).then_some(chunk)
    }

    /// Speculative execution at a job's tail: nothing is queued, yet sessions have idle check
    /// slots while another session's lease has brought no verdict for longer than its holder
    /// could need (its worker is frozen, cut off or slow). Its unchecked candidates are leased
    /// again to the least loaded idle session, as MapReduce's backup tasks are; each candidate's
    /// first verdict wins and a later one is refused and counted. A chunk gets one backup at a
    /// time, and only a fresh one: a chunk charged an attempt, or a piece, is suspected of
    /// killing its holders, and goes to one holder at a time under the spreading rules. Called
    /// from [`Scheduler::tick`]: it looks at every lease.
    fn speculate(&mut self, now: Instant, out: &mut Vec<Outbound>) {
        if !self.config.speculation || !self.queue.is_empty() {
            return;
        }
        if self.fleet.pick(false, &BTreeSet::new()).is_none() {
            return; // no idle slot anywhere
        }
        // The quiet leases, quietest last.
        let mut quiet: Vec<(Duration, SessionId, String, ChunkId)> = self
            .fleet
            .leases()
            .filter(|(_, l)| l.kind == LeaseKind::Fresh && l.unchecked > 0)
            .filter_map(|(_, l)| {
                let job = self.jobs.get(&l.job_id)?;
                let chunk = job.chunks.get(l.chunk as usize)?;
                let holder = self.fleet.session(l.session)?;
                // A holder that brings verdicts but holds more candidates than check slots works
                // through them in rounds: a lease waiting its turn there is not slow. A holder
                // that brings none at all is frozen, cut off or stuck.
                let after = speculate_after(&job.settings);
                let rounds = holder
                    .unchecked
                    .div_ceil(u64::from(holder.max_checks.max(1)))
                    .clamp(1, 16) as u32;
                let silence = now.saturating_duration_since(l.progressed);
                let holder_silent = now.saturating_duration_since(holder.progressed) >= after;
                (job.state == JobState::Checking
                    && chunk.backup.is_none()
                    && chunk.attempts == 0
                    && silence >= after
                    && (holder_silent || silence >= after * rounds))
                    .then(|| (silence, l.session, l.job_id.clone(), l.chunk))
            })
            .collect();
        quiet.sort();
        let mut passed = BTreeSet::new();
        while let Some(session) = self.fleet.pick(false, &passed) {
            let Some(i) = quiet
                .iter()
                .rposition(|(_, holder, _, _)| *holder != session)
            else {
                passed.insert(session);
                continue;
            };
            let (_, _, job_id, chunk_id) = quiet.remove(i);
            out.push(self.grant(session, &job_id, chunk_id, LeaseKind::Backup, now));
        }
    }

    fn grant(
        &mut self,
        session: SessionId,
        job_id: &str,
        chunk_id: ChunkId,
        kind: LeaseKind,
        now: Instant,
    ) -> Outbound {
        self.counters.leases_granted += 1;
        let judges = self.judges_of(&self.jobs[job_id]).to_vec();
        let job = self.jobs.get_mut(job_id).expect("queued chunk has a job");
        let candidates = job.unchecked_of(chunk_id);
        let lease_id = self.fleet.grant(
            session,
            job_id,
            chunk_id,
            candidates.len() as u32,
            kind,
            now,
        );
        let backup = kind == LeaseKind::Backup;
        if backup {
            self.counters.speculative_leases += 1;
        }
        let attempt = job.lease_chunk(chunk_id, lease_id, backup);
        self.changed.insert(job_id.to_string());
        Outbound::Assign(
            session,
            Assignment {
                lease_id,
                job_id: job_id.to_string(),
                chunk_id,
                attempt,
                candidates,
                judge_urls: judges,
                timeout: job.settings.timeout,
                connect_timeout: job.settings.connect_timeout,
                targets: job.settings.targets.clone(),
            },
        )
    }

    /// How messages name `lease_id`: by the job and chunk it was granted for, live or ended, and
    /// by what the worker's own message named (`named`) if this scheduler never granted it (a
    /// lease granted before a restart).
    fn lease_ref(&self, lease_id: LeaseId, named: Named<'_>) -> LeaseRef {
        let (job_id, chunk_id) = match self.fleet.granted_for(lease_id) {
            Some((job_id, chunk)) => (job_id, Some(chunk)),
            None => (named.job_id, named.chunk_id),
        };
        LeaseRef {
            lease_id,
            job_id: job_id.to_string(),
            chunk_id,
        }
    }

    /// A guess at the chunk of `job_id` a verdict for candidate `index` came from, for log lines
    /// only: the newest piece holding it, or the chunk it was cut into at first (a job kept in
    /// the store). Not necessarily the chunk a lease was granted for: a lease of a chunk that was
    /// cut since is named by a piece of it. `None` for an index out of the job.
    fn chunk_holding(&self, job_id: &str, index: u32) -> Option<ChunkId> {
        let job = self.jobs.get(job_id)?;
        match job.stored {
            None => job
                .chunks
                .iter()
                .rev()
                .find(|c| c.range.contains(&index))
                .map(|c| c.id),
            Some(counts) => (u64::from(index) < counts.proxies_total)
                .then(|| index / job.settings.chunk_size.max(1)),
        }
    }

    /// The worker of an open session and the leases it holds, as log lines name them.
    pub(crate) fn session_leases(&self, session: SessionId) -> Option<(String, Vec<LeaseRef>)> {
        let s = self.fleet.session(session)?;
        let leases = s
            .leases
            .iter()
            .map(|&id| self.lease_ref(id, Named::NOTHING))
            .collect();
        Some((s.worker_id.clone(), leases))
    }

    fn lose_lease(
        &mut self,
        lease_id: LeaseId,
        loss: LeaseLoss,
        now: Instant,
        out: &mut Vec<Outbound>,
    ) {
        let Some(lease) = self.fleet.retire(lease_id) else {
            return;
        };
        let job = self.jobs.get_mut(&lease.job_id).expect("a lease has a job");
        let Some(lost) = job.lose_chunk(lease.chunk, lease_id, loss) else {
            return; // the chunk moved on meanwhile
        };
        self.changed.insert(lease.job_id.clone());
        match loss {
            LeaseLoss::JobEnded | LeaseLoss::CoordinatorStopped => {}
            LeaseLoss::HandedBack => self.counters.leases_handed_back += 1,
            LeaseLoss::Vanished | LeaseLoss::Unattributed => self.counters.leases_requeued += 1,
        }
        if let Some(record) = lost.record {
            self.journal.push(Record::Chunk {
                job_id: lease.job_id.clone(),
                chunk: record,
            });
        }
        if lost.requeue {
            self.queue.push_front((lease.job_id.clone(), lease.chunk));
        }
        match lost.exhausted {
            None => {}
            Some(Exhausted::Cut(pieces)) => {
                self.counters.chunks_cut += 1;
                tracing::info!(
                    job_id = %lease.job_id,
                    chunk_id = lease.chunk,
                    pieces = ?pieces,
                    "chunk attempts ran out: cut in halves to find what kills its workers"
                );
                for piece in pieces.into_iter().rev() {
                    self.queue.push_front((lease.job_id.clone(), piece));
                }
            }
            Some(Exhausted::Poison(index)) => {
                let recorded = job.poison(lease.chunk, index, &mut self.texts);
                self.counters.chunks_failed += 1;
                self.counters.verdicts_unusable += recorded.verdicts.len() as u64;
                tracing::warn!(
                    job_id = %lease.job_id,
                    chunk_id = lease.chunk,
                    proxy = %job.candidates[index as usize].full_url(),
                    "proxy is poison: every worker that checked it alone vanished"
                );
                self.journal.push(Record::Verdicts {
                    job_id: lease.job_id.clone(),
                    first_position: recorded.first_position,
                    verdicts: recorded.verdicts,
                });
                // Wall time only matters for the end stamp; `now` orders everything else.
                let wall_ms = job.wall_ms_at(now);
                self.finish_if_complete(&lease.job_id, now, wall_ms, out);
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
        if let Some((state, reason)) = self.jobs[job_id].completion() {
            self.end_job(job_id, state, reason, now, wall_ms, out);
        }
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
        for (lease_id, session) in self.fleet.leases_of(job_id) {
            out.push(Outbound::Revoke(
                session,
                self.lease_ref(lease_id, Named::NOTHING),
                "job ended",
            ));
            self.lose_lease(lease_id, LeaseLoss::JobEnded, now, out);
        }
        let job = self.jobs.get_mut(job_id).expect("ending a known job");
        if !job.end(state, reason, now, wall_ms) {
            return;
        }
        self.changed.insert(job_id.to_string());
        if let Some(change) = self.pools.job_ended(job_id) {
            self.journal.push(Record::Pool(change));
        }
        // A round in which no member passed changes no member.
        self.round_doubts.remove(job_id);
        self.start_queued_jobs(now, wall_ms, out);
    }

    /// The judges a job's checks use: its own, or the coordinator's; none with targets only.
    fn judges_of<'a>(&'a self, job: &'a Job) -> &'a [String] {
        if job.settings.targets.only {
            &[]
        } else if job.settings.judge_urls.is_empty() {
            &self.config.default_judges
        } else {
            &job.settings.judge_urls
        }
    }

    /// Failures a client saw through members of `pool`, each `(proxy, reason, detail)`: each
    /// counts as a failed check, journaled like a verdict's. Returns how many named a member.
    pub(crate) fn reported(
        &mut self,
        pool: &str,
        reports: Vec<(String, Reason, String)>,
        wall_ms: u64,
    ) -> usize {
        let mut counted = 0;
        for (proxy, reason, detail) in reports {
            let seen = Observation {
                wall_ms,
                usable: false,
                reason,
                latency_ms: 0,
                anonymity: Anonymity::Unknown,
                exit_ip: String::new(),
                country: String::new(),
                detail,
                job_id: String::new(),
            };
            if let Some(change) = self.pools.reported(pool, &proxy, &seen) {
                counted += 1;
                self.journal.push(Record::Pool(change));
            }
        }
        counted
    }

    /// The ended revalidation rounds of `pool` beyond its newest `keep`, oldest first.
    pub(crate) fn old_rounds(&self, pool: &str, keep: usize) -> Vec<String> {
        let mut ended: Vec<(u64, &str)> = self
            .jobs
            .values()
            .filter(|j| {
                j.settings.kind == JobKind::Revalidation
                    && j.settings.pool == pool
                    && j.state.is_terminal()
            })
            .map(|j| (j.ended_wall_ms, j.id.as_str()))
            .collect();
        ended.sort();
        let old = ended.len().saturating_sub(keep);
        ended[..old].iter().map(|(_, id)| id.to_string()).collect()
    }

    /// Refreshes not ended yet (revalidation rounds are the coordinator's own).
    pub(crate) fn active_jobs(&self) -> usize {
        self.jobs
            .values()
            .filter(|j| !j.state.is_terminal() && j.settings.kind == JobKind::Refresh)
            .count()
    }

    /// The refresh of `pool` not ended yet, if any.
    pub(crate) fn running_in(&self, pool: &str) -> Option<String> {
        self.jobs
            .values()
            .find(|j| {
                j.settings.pool == pool
                    && !j.state.is_terminal()
                    && j.settings.kind == JobKind::Refresh
            })
            .map(|j| j.id.clone())
    }

    /// Drops an ended job's candidates, verdicts and chunks from memory; from then on they are
    /// read from the store (see [`Scheduler::stored_rows`]). Called once the job's end and every
    /// verdict before it are durable, so memory follows the jobs at work, not history. Returns
    /// whether the job is (now) kept in the store only.
    pub(crate) fn keep_in_store(&mut self, job_id: &str) -> bool {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return false;
        };
        if !job.keep_in_store() {
            return false;
        }
        // Late verdicts of its leases are still refused and counted, without naming the job.
        self.fleet.forget_job(job_id);
        true
    }

    /// Forgets an ended job (pruned from the store). A job still running is kept.
    pub(crate) fn forget(&mut self, job_id: &str) {
        if !self.jobs.get(job_id).is_some_and(|j| j.state.is_terminal()) {
            return;
        }
        self.jobs.remove(job_id);
        self.job_order.retain(|id| id != job_id);
        self.fleet.forget_job(job_id);
    }

    /// Lease ids this scheduler will hand out next; the store keeps the high-water mark.
    pub(crate) fn next_lease_id(&self) -> LeaseId {
        self.fleet.next_lease_id()
    }
}
