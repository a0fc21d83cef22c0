//! Jobs and their chunks: the job state machine and the verdicts a job records. Knows no lease
//! and no worker.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::verdict::{Reason, UsableFilter, Verdict};
use super::{ChunkId, LeaseId};
use crate::candidate::Candidate;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    Queued,
    Leased(LeaseId),
    Done,
    Failed,
}

#[derive(Debug)]
pub(super) struct Chunk {
    pub(super) id: ChunkId,
    pub(super) range: Range<u32>,
    /// Candidates of the chunk still without a verdict.
    pub(super) unchecked: u32,
    pub(super) state: ChunkState,
    /// Times a holder vanished with it.
    pub(super) attempts: u32,
    /// Times it was leased.
    pub(super) leases: u32,
}

#[derive(Debug)]
pub(super) struct Job {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) settings: JobSettings,
    pub(super) state: JobState,
    pub(super) reason: String,
    pub(super) candidates: Arc<Vec<Candidate>>,
    /// Verdict per candidate index; `None` until recorded, never overwritten.
    pub(super) verdicts: Vec<Option<Verdict>>,
    pub(super) chunks: Vec<Chunk>,
    pub(super) created: Instant,
    pub(super) created_wall_ms: u64,
    pub(super) ended_wall_ms: u64,
    pub(super) ended: Option<Instant>,
    pub(super) checked: u64,
    pub(super) usable: u64,
    pub(super) reassignments: u64,
    pub(super) stale_refused: u64,
    pub(super) handed_back: u64,
    /// (time, checked) samples for the check rate, oldest first.
    pub(super) rate_samples: VecDeque<(Instant, u64)>,
    /// Sources still to fetch (taken when scraping starts) and how each went.
    pub(super) source_specs: Vec<SourceSpec>,
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
    pub(super) proxies_total: u64,
    pub(super) chunks_total: u64,
    pub(super) chunks_queued: u64,
    pub(super) chunks_done: u64,
    pub(super) chunks_failed: u64,
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
