//! Jobs and their chunks: the job state machine and the verdicts a job records. Knows no lease
//! and no worker.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::journal::ChunkRecord;
use super::verdict::{CheckTargets, Reason, UsableFilter, Verdict};
use super::view::ChunkCounts;
use super::{ChunkId, LeaseId};
use crate::candidate::Candidate;

/// Settings of one job, validated.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JobSettings {
    /// Judges the checks request, spread across checks; empty for the coordinator's own.
    pub(crate) judge_urls: Vec<String>,
    /// Protocols a bare `host:port` of the job's sources stands for.
    pub(crate) protocols: Vec<crate::candidate::Protocol>,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) filter: UsableFilter,
    pub(crate) chunk_size: u32,
    pub(crate) min_usable: u64,
    pub(crate) deadline: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) pool: String,
    pub(crate) max_failed_chunk_ratio: f64,
    /// A refresh, or a pool's revalidation round.
    pub(crate) kind: JobKind,
    /// How often the pool's live members are checked again, as the refresh asked (None: the
    /// pool's own interval, or the coordinator's default).
    pub(crate) revalidate_every: Option<Duration>,
    /// The user's sites every proxy is checked against too (or alone).
    pub(crate) targets: CheckTargets,
}

/// What a job is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum JobKind {
    /// Checks candidates; its usable proxies join its pool.
    #[default]
    Refresh,
    /// Checks a pool's live members again; made by the coordinator, leased before refreshes.
    Revalidation,
}

impl JobKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            JobKind::Refresh => "refresh",
            JobKind::Revalidation => "revalidation",
        }
    }
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
    pub(crate) const ALL: [JobState; 7] = [
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
pub(crate) enum ChunkState {
    Queued,
    /// Leased, by this lease (a backup lease, if any, is [`Chunk::backup`]).
    Leased(LeaseId),
    Done,
    /// Its one candidate is poison; or, restored from an older store, its attempts ran out.
    Failed,
    /// Its attempts ran out and it was cut into pieces, which are checked in its place.
    Split,
}

#[derive(Debug)]
pub(super) struct Chunk {
    /// Its index in the job; its candidates are `range`.
    pub(super) id: ChunkId,
    /// Indices of the job's candidates it covers; fixed once the job's candidates are in.
    pub(super) range: Range<u32>,
    /// Candidates of the chunk still without a verdict.
    pub(super) unchecked: u32,
    /// Queued, leased (by which lease), done or failed; changed by the job's methods only.
    pub(super) state: ChunkState,
    /// Times a holder vanished with it.
    pub(super) attempts: u32,
    /// Times it was leased.
    pub(super) leases: u32,
    /// Cut from a chunk whose attempts ran out (see [`Job::bisect`]). Pieces live in memory
    /// only: after a restart their first chunk is leased whole again.
    pub(super) piece: bool,
    /// A piece of one candidate: when its attempts run out, that candidate is poison.
    pub(super) single: bool,
    /// A second lease on it, granted at the job's tail while its first holder is slow
    /// (speculative execution): each candidate's first verdict wins.
    pub(super) backup: Option<LeaseId>,
    /// Times a holder vanished with it while holding other pieces too (not charged, see
    /// [`LeaseLoss::Unattributed`]); every `max_attempts` of them count as one attempt.
    pub(super) unattributed: u32,
}

impl Chunk {
    /// Attempts charged to it: a piece of several candidates starts with all but one of its
    /// attempts spent (see [`Job::bisect`]), which no holder was charged.
    pub(super) fn charged(&self, max_attempts: u32) -> u32 {
        if self.piece && !self.single {
            self.attempts.saturating_sub(max_attempts.saturating_sub(1))
        } else {
            self.attempts
        }
    }
}

#[derive(Debug)]
pub(super) struct Job {
    /// Given at submit; names the job everywhere (store, files, logs).
    pub(super) id: String,
    /// The client's label, shown in listings.
    pub(super) name: String,
    /// Validated at submit; never changed.
    pub(super) settings: JobSettings,
    /// Where the job is in QUEUED → SCRAPING → CHECKING → an end; changed by the scheduler's
    /// transitions and [`Job::end`].
    pub(super) state: JobState,
    /// Why it ended (empty until then).
    pub(super) reason: String,
    /// Its candidates, each once; set at submit and extended once when its sources are scraped;
    /// shared with the store writer. Emptied by [`Job::keep_in_store`].
    pub(super) candidates: Arc<Vec<Candidate>>,
    /// Verdict per candidate index; `None` until recorded, never overwritten.
    pub(super) verdicts: Vec<Option<Verdict>>,
    /// Its chunks, cut from `candidates`, then pieces cut from chunks whose attempts ran out;
    /// changed by leasing, verdicts and lost leases.
    pub(super) chunks: Vec<Chunk>,
    /// How many chunks it was cut into at first: the store keeps these, not the pieces.
    pub(super) base_chunks: u32,
    /// When it was submitted (or, restored, when it would have been by this clock).
    pub(super) created: Instant,
    /// Submission time, wall clock, for clients and the store.
    pub(super) created_wall_ms: u64,
    /// End time, wall clock; 0 until it ends.
    pub(super) ended_wall_ms: u64,
    /// When it ended, by this process's clock.
    pub(super) ended: Option<Instant>,
    /// Candidates with a verdict; raised by [`Job::record`].
    pub(super) checked: u64,
    /// Of those, the usable ones.
    pub(super) usable: u64,
    /// Leases of its chunks lost to a holder that vanished.
    pub(super) reassignments: u64,
    /// Verdicts for it refused because their lease was no longer held.
    pub(super) stale_refused: u64,
    /// Leases given back by draining workers.
    pub(super) handed_back: u64,
    /// Candidates marked poison (each also has a verdict row, with [`Reason::Poison`]).
    pub(super) poisoned: u64,
    /// Verdicts refused because another lease of the chunk recorded the candidate first.
    pub(super) duplicates: u64,
    /// Backup leases granted for its chunks at its tail.
    pub(super) speculated: u64,
    /// Its suspect chunks not done or cut yet: leases of these are spread evenly over the
    /// workers.
    pub(super) suspects: Suspects,
    /// (time, checked) samples for the check rate, oldest first.
    pub(super) rate_samples: VecDeque<(Instant, u64)>,
    /// Sources still to fetch (taken when scraping starts) and how each went.
    pub(super) source_specs: Vec<SourceSpec>,
    /// How fetching each of its sources went; updated while it scrapes.
    pub(super) sources: Vec<SourceStatus>,
    /// Entries dropped from the job's lists, by why.
    pub(super) dropped: BTreeMap<String, u64>,
    /// Candidate indices in the order their verdicts were recorded, for followers.
    pub(super) recorded: Vec<u32>,
    /// Set once the job has ended and everything of it is durable: its candidates, verdicts and
    /// chunks were dropped from memory and are read from the store from then on.
    pub(super) stored: Option<StoredCounts>,
    /// When it first left QUEUED (wall ms; 0 until then, and for a job restored from a store
    /// that did not keep it): set by the scheduler when it starts scraping or checking, kept by
    /// the store.
    pub(super) started_wall_ms: u64,
    /// Its chunk counts as the store kept them when it ended, for a job restored ended: its
    /// pieces and their leases are not in memory. Read by [`Job::chunk_counts`].
    pub(super) ended_counts: Option<ChunkCounts>,
    /// Its chunk and worker counts start at the coordinator's start, not at the job's: set for
    /// a job restored unfinished (or from a store that did not keep them); kept by the store.
    pub(super) counts_since_restart: bool,
    /// Its verdicts by outcome ([`outcome`]), raised by [`Job::record`] and by a restore; kept
    /// when its rows leave memory.
    pub(super) by_reason: BTreeMap<&'static str, u64>,
    /// Verdicts it recorded by the worker that gave them (a label: the job knows no session),
    /// raised by the scheduler; kept by the store, restored for a job that had ended.
    pub(super) by_worker: BTreeMap<String, WorkerTally>,
}

/// The verdicts one worker gave a job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WorkerTally {
    /// The worker's display name, as it last said hello.
    pub(crate) name: String,
    pub(crate) verdicts: u64,
    pub(crate) usable: u64,
}

/// What became of a candidate with this verdict, as results show it: "usable", or the reason it
/// is not (a candidate without a verdict is "unchecked").
pub(crate) fn outcome(verdict: &Verdict) -> &'static str {
    if verdict.usable {
        "usable"
    } else {
        verdict.reason.name()
    }
}

/// What an ended job still shows once its rows live only in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StoredCounts {
    /// Candidates the job held.
    pub(super) proxies_total: u64,
    /// Its chunks when it ended (none leased: those count as queued).
    pub(super) chunks: ChunkCounts,
}

/// How many of a job's chunks are suspected of killing their holders, and not done or cut yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Suspects {
    /// Chunks (not pieces) charged an attempt.
    pub(super) retries: u64,
    /// Pieces.
    pub(super) pieces: u64,
}

impl Suspects {
    /// `chunk` was done or cut: it is no longer open.
    fn settled(&mut self, chunk: &Chunk) {
        if chunk.piece {
            self.pieces -= 1;
        } else if chunk.attempts > 0 {
            self.retries -= 1;
        }
    }
}

/// A job to queue: validated settings and parsed candidates.
#[derive(Debug, Clone)]
pub(crate) struct NewJob {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) settings: JobSettings,
    /// Inline candidates, parsed and deduplicated.
    pub(crate) candidates: Vec<Candidate>,
    /// Sources to fetch in the SCRAPING state; their candidates join the inline ones.
    pub(crate) sources: Vec<SourceSpec>,
    /// Entries dropped while parsing the inline candidates, by why.
    pub(crate) dropped: BTreeMap<String, u64>,
}

/// A source of candidates: a URL or local path, and the protocols its bare `host:port` stand for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceSpec {
    pub(crate) url: String,
    pub(crate) protocols: Vec<crate::candidate::Protocol>,
    /// The source's text when the client sent it (the url only names it).
    pub(crate) content: Option<String>,
    /// From the operator's own sources file: local paths may be read.
    pub(crate) trusted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceState {
    Pending,
    Fetching,
    Fetched,
    Failed,
}

impl SourceState {
    pub(crate) fn name(self) -> &'static str {
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
pub(crate) struct SourceStatus {
    pub(crate) url: String,
    pub(crate) state: SourceState,
    pub(crate) candidates: u64,
    pub(crate) rejected: u64,
    pub(crate) bytes: u64,
    pub(crate) error: String,
}

/// Verdict texts kept for sharing, at most: a million verdicts mostly repeat a few details.
const MAX_SHARED_TEXTS: usize = 4096;

/// The shared copy of `text`, remembered while fewer than [`MAX_SHARED_TEXTS`] are.
pub(super) fn intern(texts: &mut std::collections::HashSet<Arc<str>>, text: Arc<str>) -> Arc<str> {
    if let Some(shared) = texts.get(&text) {
        return shared.clone();
    }
    if texts.len() < MAX_SHARED_TEXTS {
        texts.insert(text.clone());
    }
    text
}

/// Cuts `total` candidates into chunks of `chunk_size`.
pub(super) fn make_chunks(total: u32, chunk_size: u32) -> Vec<Chunk> {
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
                piece: false,
                single: false,
                backup: None,
                unattributed: 0,
            }
        })
        .collect()
}

/// Why a lease ended without its chunk being finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LeaseLoss {
    /// The holder vanished (stream broke, went silent, replaced): costs an attempt.
    Vanished,
    /// A draining holder gave it back: costs nothing.
    HandedBack,
    /// The job ended: the chunk will not be checked further.
    JobEnded,
    /// The coordinator is stopping: the chunk is checked again after it restarts, at no cost.
    CoordinatorStopped,
    /// The holder of this piece vanished while holding other pieces too: which of them killed
    /// it is unknown, so none is charged, and each is queued again; a piece lost so
    /// `max_attempts` times is charged an attempt (a fleet too small to hold each piece alone
    /// still narrows a poison proxy down, and no job waits on it forever).
    Unattributed,
}

/// What losing a chunk's lease did to the chunk.
#[derive(Debug)]
pub(super) struct Lost {
    /// Queue it again, at the front.
    pub(super) requeue: bool,
    /// An attempt was charged to one of the job's first chunks: what the store keeps of it now.
    pub(super) record: Option<ChunkRecord>,
    /// Its attempts ran out.
    pub(super) exhausted: Option<Exhausted>,
}

/// What became of a chunk whose attempts ran out.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Exhausted {
    /// Cut into these pieces, to be queued in its place.
    Cut(Vec<ChunkId>),
    /// A piece of one candidate, this one: it is poison (see [`Job::poison`]).
    Poison(u32),
}

/// What recording a batch of verdicts for one chunk did.
#[derive(Debug)]
pub(super) struct Recorded {
    /// The verdicts kept, in the order recorded (for the store).
    pub(super) verdicts: Vec<Verdict>,
    /// Position of the first of them in the order the job records verdicts.
    pub(super) first_position: u64,
    /// How many of them are usable.
    pub(super) usable: u64,
    /// Every candidate of the chunk has its verdict now.
    pub(super) chunk_done: bool,
    /// Verdicts for candidates another lease of the chunk recorded first: refused.
    pub(super) duplicates: u64,
}

impl Job {
    /// A job queued now, from a submission.
    pub(super) fn new(new: NewJob, now: Instant, wall_ms: u64) -> Job {
        let chunks = make_chunks(new.candidates.len() as u32, new.settings.chunk_size);
        let base_chunks = chunks.len() as u32;
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
        Job {
            id: new.id.clone(),
            name: new.name,
            settings: new.settings,
            state: JobState::Queued,
            reason: String::new(),
            verdicts: vec![None; new.candidates.len()],
            candidates: new.candidates.into(),
            chunks,
            base_chunks,
            created: now,
            created_wall_ms: wall_ms,
            ended_wall_ms: 0,
            ended: None,
            checked: 0,
            usable: 0,
            reassignments: 0,
            stale_refused: 0,
            handed_back: 0,
            poisoned: 0,
            duplicates: 0,
            speculated: 0,
            suspects: Suspects::default(),
            rate_samples: VecDeque::new(),
            source_specs: new.sources,
            sources,
            dropped: new.dropped,
            recorded: Vec::new(),
            stored: None,
            started_wall_ms: 0,
            ended_counts: None,
            counts_since_restart: false,
            by_reason: BTreeMap::new(),
            by_worker: BTreeMap::new(),
        }
    }

    /// The candidates of a chunk still without a verdict, with their indices.
    pub(super) fn unchecked_of(&self, chunk_id: ChunkId) -> Vec<(u32, Candidate)> {
        self.chunks[chunk_id as usize]
            .range
            .clone()
            .filter(|&i| self.verdicts[i as usize].is_none())
            .map(|i| (i, self.candidates[i as usize].clone()))
            .collect()
    }

    /// The live leases of a chunk: its lease and its backup lease, if any.
    pub(super) fn leases_on(&self, chunk_id: ChunkId) -> Vec<LeaseId> {
        let chunk = &self.chunks[chunk_id as usize];
        let primary = match chunk.state {
            ChunkState::Leased(lease) => Some(lease),
            _ => None,
        };
        primary.into_iter().chain(chunk.backup).collect()
    }

    /// The chunk is leased as `lease_id`, as its backup lease when `backup`; returns how many
    /// times it has been leased.
    pub(super) fn lease_chunk(
        &mut self,
        chunk_id: ChunkId,
        lease_id: LeaseId,
        backup: bool,
    ) -> u32 {
        let chunk = &mut self.chunks[chunk_id as usize];
        if backup {
            chunk.backup = Some(lease_id);
            self.speculated += 1;
        } else {
            chunk.state = ChunkState::Leased(lease_id);
        }
        chunk.leases += 1;
        chunk.leases
    }

    /// The chunk's lease `lease_id` ended unfinished, for `loss`; `None` if the chunk was no
    /// longer leased as that.
    ///
    /// A holder that vanished charges the chunk an attempt. While another lease of the chunk
    /// lives, that one goes on with it; otherwise it is queued again, or, once its attempts ran
    /// out, cut in halves ([`Job::bisect`]), and a piece of one candidate is poison.
    pub(super) fn lose_chunk(
        &mut self,
        chunk_id: ChunkId,
        lease_id: LeaseId,
        loss: LeaseLoss,
    ) -> Option<Lost> {
        let max_attempts = self.settings.max_attempts;
        let journaled = chunk_id < self.base_chunks;
        let chunk = &mut self.chunks[chunk_id as usize];
        let other = if chunk.backup == Some(lease_id) {
            chunk.backup = None;
            match chunk.state {
                ChunkState::Leased(primary) => Some(primary),
                _ => None,
            }
        } else if chunk.state == ChunkState::Leased(lease_id) {
            let backup = chunk.backup.take();
            chunk.state = backup.map_or(ChunkState::Queued, ChunkState::Leased);
            backup
        } else {
            return None;
        };
        let loss = match loss {
            LeaseLoss::Unattributed if chunk.unattributed + 1 >= max_attempts => {
                chunk.unattributed = 0;
                LeaseLoss::Vanished
            }
            LeaseLoss::Unattributed => {
                chunk.unattributed += 1;
                loss
            }
            charged => charged,
        };
        let mut lost = Lost {
            requeue: false,
            record: None,
            exhausted: None,
        };
        match loss {
            // Left unchecked: the job will not check it further, or not in this process.
            LeaseLoss::JobEnded | LeaseLoss::CoordinatorStopped => {}
            LeaseLoss::HandedBack => {
                self.handed_back += 1;
                lost.requeue = other.is_none();
            }
            LeaseLoss::Unattributed => {
                self.reassignments += 1;
                lost.requeue = other.is_none();
            }
            LeaseLoss::Vanished => {
                chunk.attempts += 1;
                self.reassignments += 1;
                if chunk.attempts == 1 && !chunk.piece {
                    self.suspects.retries += 1;
                }
                if journaled {
                    lost.record = Some(ChunkRecord {
                        chunk_id: chunk.id,
                        attempts: chunk.attempts,
                        leases: chunk.leases,
                        failed: false,
                    });
                }
                if other.is_some() {
                    // Its other holder goes on with it.
                } else if chunk.attempts < max_attempts {
                    lost.requeue = true;
                } else if chunk.single {
                    let index = chunk
                        .range
                        .clone()
                        .find(|&i| self.verdicts[i as usize].is_none())
                        .expect("a chunk with a live lease has an unchecked candidate");
                    lost.exhausted = Some(Exhausted::Poison(index));
                } else {
                    lost.exhausted = Some(Exhausted::Cut(self.bisect(chunk_id)));
                }
            }
        }
        Some(lost)
    }

    /// Cuts a chunk whose attempts ran out into two pieces holding half of its unchecked
    /// candidates each (one piece if it has one left), as MapReduce's skipping mode narrows down
    /// a bad record. A piece of several candidates has one attempt left, so the next holder that
    /// vanishes with it halves it again; a piece of one has every attempt, so only a candidate
    /// that keeps killing the workers that check it alone ends poison. Returns the pieces' ids.
    pub(super) fn bisect(&mut self, chunk_id: ChunkId) -> Vec<ChunkId> {
        let max_attempts = self.settings.max_attempts;
        let unchecked: Vec<u32> = self.chunks[chunk_id as usize]
            .range
            .clone()
            .filter(|&i| self.verdicts[i as usize].is_none())
            .collect();
        let chunk = &mut self.chunks[chunk_id as usize];
        chunk.state = ChunkState::Split;
        self.suspects.settled(chunk);
        let (first, second) = unchecked.split_at(unchecked.len() / 2);
        let mut pieces = Vec::new();
        for half in [first, second] {
            let (Some(&start), Some(&last)) = (half.first(), half.last()) else {
                continue;
            };
            let id = self.chunks.len() as ChunkId;
            let single = half.len() == 1;
            self.chunks.push(Chunk {
                id,
                range: start..last + 1,
                unchecked: half.len() as u32,
                state: ChunkState::Queued,
                attempts: if single { 0 } else { max_attempts - 1 },
                leases: 0,
                piece: true,
                single,
                backup: None,
                unattributed: 0,
            });
            pieces.push(id);
        }
        self.suspects.pieces += pieces.len() as u64;
        pieces
    }

    /// The verdict that marks candidate `index` of piece `chunk_id` poison: it was never
    /// checked, because every worker that checked it alone vanished.
    pub(super) fn poison_verdict(&self, chunk_id: ChunkId, index: u32) -> Verdict {
        let attempts = self.chunks[chunk_id as usize].attempts;
        Verdict {
            index,
            usable: false,
            reason: Reason::Poison,
            latency_ms: 0,
            exit_ip: "".into(),
            detail: format!(
                "not checked: every worker that checked it alone vanished ({attempts} times)"
            )
            .into(),
            anonymity: super::Anonymity::Unknown,
            connect_ms: 0,
            targets: Vec::new(),
        }
    }

    /// Marks candidate `index` of piece `chunk_id` poison: its verdict says it was never checked,
    /// and the piece is failed.
    pub(super) fn poison(
        &mut self,
        chunk_id: ChunkId,
        index: u32,
        texts: &mut std::collections::HashSet<Arc<str>>,
    ) -> Recorded {
        let verdict = self.poison_verdict(chunk_id, index);
        let mut recorded = self.record(chunk_id, vec![verdict], false, texts);
        self.chunks[chunk_id as usize].state = ChunkState::Failed;
        recorded.chunk_done = false;
        recorded
    }

    /// Candidates the job has no checked verdict for: none yet, or poison.
    pub(super) fn unchecked(&self) -> u64 {
        (self.candidates.len() as u64).saturating_sub(self.checked) + self.poisoned
    }

    /// How a checking job whose every chunk is done, failed or cut into pieces ends, and why;
    /// `None` while it is not checking or has chunks left.
    pub(super) fn completion(&self) -> Option<(JobState, String)> {
        if self.state != JobState::Checking
            || self.chunks.iter().any(|c| {
                !matches!(
                    c.state,
                    ChunkState::Done | ChunkState::Failed | ChunkState::Split
                )
            })
        {
            return None;
        }
        // Poison candidates, and those of chunks that failed whole (restored from a store of an
        // older version, whose chunks failed when their attempts ran out).
        let lost = self.poisoned
            + self
                .chunks
                .iter()
                .filter(|c| c.state == ChunkState::Failed && !c.single)
                .map(|c| u64::from(c.unchecked))
                .sum::<u64>();
        let total = self.candidates.len() as u64;
        let settings = &self.settings;
        let unchecked = self.unchecked();
        let note = match (self.poisoned, unchecked) {
            (0, 0) => String::new(),
            (0, n) => format!("; {n} proxies left unchecked"),
            (p, n) => format!(
                "; {n} proxies left unchecked, {p} of them poison (every worker that checked it alone vanished)"
            ),
        };
        Some(
            if total > 0 && lost as f64 / total as f64 > settings.max_failed_chunk_ratio {
                (
                    JobState::Failed,
                    format!(
                        "{lost} of {total} proxies could not be checked: each killed every worker that checked it{note}"
                    ),
                )
            } else if self.usable >= settings.min_usable {
                (
                    JobState::Succeeded,
                    format!(
                        "{} usable of {} proxies (at least {} wanted){note}",
                        self.usable,
                        self.candidates.len(),
                        settings.min_usable
                    ),
                )
            } else {
                (
                    JobState::Insufficient,
                    format!(
                        "only {} usable of {} proxies, {} wanted{note}",
                        self.usable,
                        self.candidates.len(),
                        settings.min_usable
                    ),
                )
            },
        )
    }

    /// Ends the job in `state`; false if it had ended already (its first end stays).
    pub(super) fn end(
        &mut self,
        state: JobState,
        reason: String,
        now: Instant,
        wall_ms: u64,
    ) -> bool {
        if self.state.is_terminal() {
            return false;
        }
        self.state = state;
        self.reason = reason;
        self.ended = Some(now);
        self.ended_wall_ms = wall_ms;
        true
    }

    /// Its chunks by state, and the leases and attempts spent on them: from memory, or as the
    /// store kept them for a job that ended. A chunk cut in halves counts as split, its pieces
    /// in its place; an ended job holds no lease, so a chunk still leased counts as queued.
    pub(super) fn chunk_counts(&self) -> ChunkCounts {
        if let Some(stored) = self.stored {
            return stored.chunks;
        }
        if let Some(counts) = self.ended_counts {
            return counts;
        }
        let ended = self.state.is_terminal();
        let mut counts = ChunkCounts::default();
        for chunk in &self.chunks {
            counts.leases += u64::from(chunk.leases);
            counts.attempts += u64::from(chunk.charged(self.settings.max_attempts));
            match chunk.state {
                ChunkState::Queued => counts.queued += 1,
                ChunkState::Leased(_) if ended => counts.queued += 1,
                ChunkState::Leased(_) => counts.leased += 1,
                ChunkState::Done => counts.done += 1,
                ChunkState::Failed => counts.failed += 1,
                ChunkState::Split => {
                    counts.split += 1;
                    continue;
                }
            }
            counts.total += 1;
        }
        counts
    }

    /// Drops an ended job's candidates, verdicts and chunks, keeping the counts its snapshot
    /// shows; they are read from the store from then on. False for a job not ended.
    pub(super) fn keep_in_store(&mut self) -> bool {
        if !self.state.is_terminal() {
            return false;
        }
        if self.stored.is_some() {
            return true;
        }
        self.stored = Some(StoredCounts {
            proxies_total: self.candidates.len() as u64,
            chunks: self.chunk_counts(),
        });
        self.candidates = Arc::new(Vec::new());
        self.verdicts = Vec::new();
        self.chunks = Vec::new();
        self.recorded = Vec::new();
        self.rate_samples = VecDeque::new();
        true
    }

    /// The wall-clock time at `now`, in ms, as the job's clock reads it.
    pub(super) fn wall_ms_at(&self, now: Instant) -> u64 {
        self.created_wall_ms + now.saturating_duration_since(self.created).as_millis() as u64
    }

    /// Records verdicts for candidates of chunk `chunk_id`: each candidate of the chunk once, the
    /// first verdict kept; others are ignored. A working proxy outside the job's filter is
    /// recorded as filtered. `texts` shares repeated verdict texts among verdicts.
    pub(super) fn record(
        &mut self,
        chunk_id: ChunkId,
        verdicts: Vec<Verdict>,
        judge_is_https: bool,
        texts: &mut std::collections::HashSet<Arc<str>>,
    ) -> Recorded {
        let chunk = &mut self.chunks[chunk_id as usize];
        let mut recorded = Recorded {
            verdicts: Vec::new(),
            first_position: self.recorded.len() as u64,
            usable: 0,
            chunk_done: false,
            duplicates: 0,
        };
        // With targets only, the requests a proxy carried are the targets'.
        let tunnelled = if self.settings.targets.only {
            self.settings
                .targets
                .list
                .iter()
                .all(|t| t.url.starts_with("https://"))
        } else {
            judge_is_https
        };
        for mut verdict in verdicts {
            if !chunk.range.contains(&verdict.index) {
                continue;
            }
            let slot = &mut self.verdicts[verdict.index as usize];
            if slot.is_some() {
                recorded.duplicates += 1;
                continue;
            }
            if verdict.usable
                && let Some(why) = self.settings.filter.refuse(
                    &verdict,
                    &self.candidates[verdict.index as usize],
                    tunnelled,
                )
            {
                verdict.usable = false;
                verdict.reason = Reason::Filtered;
                verdict.detail = why.into();
            }
            verdict.detail = intern(texts, verdict.detail);
            verdict.exit_ip = intern(texts, verdict.exit_ip);
            for target in &mut verdict.targets {
                target.target = intern(texts, target.target.clone());
                target.detail = intern(texts, target.detail.clone());
            }
            self.checked += 1;
            if verdict.usable {
                self.usable += 1;
                recorded.usable += 1;
            }
            if verdict.reason == Reason::Poison {
                self.poisoned += 1;
            }
            chunk.unchecked -= 1;
            *self.by_reason.entry(outcome(&verdict)).or_default() += 1;
            self.recorded.push(verdict.index);
            recorded.verdicts.push(verdict.clone());
            *slot = Some(verdict);
        }
        self.duplicates += recorded.duplicates;
        if chunk.unchecked == 0 {
            chunk.state = ChunkState::Done;
            chunk.backup = None;
            recorded.chunk_done = true;
            self.suspects.settled(chunk);
        }
        recorded
    }
}
