//! Jobs and their chunks: the job state machine and the verdicts a job records. Knows no lease
//! and no worker.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::journal::ChunkRecord;
use super::verdict::{Reason, UsableFilter, Verdict};
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
    Leased(LeaseId),
    Done,
    Failed,
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
    /// Its chunks, cut from `candidates`; changed by leasing, verdicts and lost leases.
    pub(super) chunks: Vec<Chunk>,
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
}

/// What an ended job still shows once its rows live only in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StoredCounts {
    /// Candidates the job held.
    pub(super) proxies_total: u64,
    /// Chunks it was cut into.
    pub(super) chunks_total: u64,
    /// Chunks left unchecked when it ended.
    pub(super) chunks_queued: u64,
    /// Chunks with every verdict.
    pub(super) chunks_done: u64,
    /// Chunks whose attempts ran out.
    pub(super) chunks_failed: u64,
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
}

/// What losing a chunk's lease did to the chunk.
#[derive(Debug)]
pub(super) struct Lost {
    /// Queue it again, at the front.
    pub(super) requeue: bool,
    /// An attempt was charged: what the store keeps of the chunk now.
    pub(super) record: Option<ChunkRecord>,
    /// Its attempts ran out: it failed, and the job may be complete.
    pub(super) failed: bool,
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
}

impl Job {
    /// A job queued now, from a submission.
    pub(super) fn new(new: NewJob, now: Instant, wall_ms: u64) -> Job {
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
        Job {
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
            stored: None,
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

    /// The chunk is leased as `lease_id`; returns how many times it has been leased.
    pub(super) fn lease_chunk(&mut self, chunk_id: ChunkId, lease_id: LeaseId) -> u32 {
        let chunk = &mut self.chunks[chunk_id as usize];
        chunk.state = ChunkState::Leased(lease_id);
        chunk.leases += 1;
        chunk.leases
    }

    /// The chunk's lease `lease_id` ended unfinished, for `loss`; `None` if the chunk was no
    /// longer leased as that.
    pub(super) fn lose_chunk(
        &mut self,
        chunk_id: ChunkId,
        lease_id: LeaseId,
        loss: LeaseLoss,
    ) -> Option<Lost> {
        let max_attempts = self.settings.max_attempts;
        let chunk = &mut self.chunks[chunk_id as usize];
        if chunk.state != ChunkState::Leased(lease_id) {
            return None;
        }
        chunk.state = ChunkState::Queued;
        let mut lost = Lost {
            requeue: false,
            record: None,
            failed: false,
        };
        match loss {
            // Left unchecked: the job will not check it further, or not in this process.
            LeaseLoss::JobEnded | LeaseLoss::CoordinatorStopped => {}
            LeaseLoss::HandedBack => {
                self.handed_back += 1;
                lost.requeue = true;
            }
            LeaseLoss::Vanished => {
                chunk.attempts += 1;
                self.reassignments += 1;
                lost.failed = chunk.attempts >= max_attempts;
                lost.record = Some(ChunkRecord {
                    chunk_id: chunk.id,
                    attempts: chunk.attempts,
                    leases: chunk.leases,
                    failed: lost.failed,
                });
                if lost.failed {
                    chunk.state = ChunkState::Failed;
                } else {
                    lost.requeue = true;
                }
            }
        }
        Some(lost)
    }

    /// How a checking job whose every chunk is done or failed ends, and why; `None` while it is
    /// not checking or has chunks left.
    pub(super) fn completion(&self) -> Option<(JobState, String)> {
        if self.state != JobState::Checking
            || self
                .chunks
                .iter()
                .any(|c| !matches!(c.state, ChunkState::Done | ChunkState::Failed))
        {
            return None;
        }
        let failed = self
            .chunks
            .iter()
            .filter(|c| c.state == ChunkState::Failed)
            .count();
        let total = self.chunks.len();
        let settings = &self.settings;
        let failed_note = if failed > 0 {
            format!(
                "; {failed} of {total} chunks failed after {} attempts each (their proxies are unchecked)",
                settings.max_attempts
            )
        } else {
            String::new()
        };
        Some(
            if total > 0 && failed as f64 / total as f64 > settings.max_failed_chunk_ratio {
                (
                    JobState::Failed,
                    format!(
                        "{failed} of {total} chunks failed: every worker that took them vanished {} times",
                        settings.max_attempts
                    ),
                )
            } else if self.usable >= settings.min_usable {
                (
                    JobState::Succeeded,
                    format!(
                        "{} usable of {} proxies (at least {} wanted){failed_note}",
                        self.usable,
                        self.candidates.len(),
                        settings.min_usable
                    ),
                )
            } else {
                (
                    JobState::Insufficient,
                    format!(
                        "only {} usable of {} proxies, {} wanted{failed_note}",
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

    /// Drops an ended job's candidates, verdicts and chunks, keeping the counts its snapshot
    /// shows; they are read from the store from then on. False for a job not ended.
    pub(super) fn keep_in_store(&mut self) -> bool {
        if !self.state.is_terminal() {
            return false;
        }
        if self.stored.is_some() {
            return true;
        }
        let mut counts = StoredCounts {
            proxies_total: self.candidates.len() as u64,
            chunks_total: self.chunks.len() as u64,
            chunks_queued: 0,
            chunks_done: 0,
            chunks_failed: 0,
        };
        for chunk in &self.chunks {
            match chunk.state {
                // An ended job holds no lease: a chunk that was leased is queued for no one.
                ChunkState::Queued | ChunkState::Leased(_) => counts.chunks_queued += 1,
                ChunkState::Done => counts.chunks_done += 1,
                ChunkState::Failed => counts.chunks_failed += 1,
            }
        }
        self.stored = Some(counts);
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
        };
        for mut verdict in verdicts {
            if !chunk.range.contains(&verdict.index) {
                continue;
            }
            let slot = &mut self.verdicts[verdict.index as usize];
            if slot.is_some() {
                continue;
            }
            if verdict.usable
                && let Some(why) = self.settings.filter.refuse(
                    &verdict,
                    &self.candidates[verdict.index as usize],
                    judge_is_https,
                )
            {
                verdict.usable = false;
                verdict.reason = Reason::Filtered;
                verdict.detail = why.into();
            }
            verdict.detail = intern(texts, verdict.detail);
            verdict.exit_ip = intern(texts, verdict.exit_ip);
            self.checked += 1;
            if verdict.usable {
                self.usable += 1;
                recorded.usable += 1;
            }
            chunk.unchecked -= 1;
            self.recorded.push(verdict.index);
            recorded.verdicts.push(verdict.clone());
            *slot = Some(verdict);
        }
        if chunk.unchecked == 0 {
            chunk.state = ChunkState::Done;
            recorded.chunk_done = true;
        }
        recorded
    }
}
