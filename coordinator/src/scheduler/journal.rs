//! What the store keeps of jobs, the records that carry each change to it, and bringing jobs
//! back from it after a restart.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// Jobs changed since their watchers and the store last looked.
#[derive(Debug, Default)]
pub(super) struct Changed {
    /// Jobs whose snapshot watchers have not seen yet; taken by `take_dirty`.
    pub(super) watch: BTreeSet<String>,
    /// Jobs whose row the store has not had yet; taken by `take_journal`.
    pub(super) save: BTreeSet<String>,
}

impl Changed {
    pub(super) fn insert(&mut self, job_id: String) {
        self.save.insert(job_id.clone());
        self.watch.insert(job_id);
    }
}

/// What the store keeps of a job besides its candidates, verdicts and chunks.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JobRecord {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) settings: JobSettings,
    pub(crate) state: JobState,
    pub(crate) reason: String,
    pub(crate) created_wall_ms: u64,
    pub(crate) ended_wall_ms: u64,
    pub(crate) reassignments: u64,
    pub(crate) stale_refused: u64,
    pub(crate) handed_back: u64,
    pub(crate) sources: Vec<SourceStatus>,
    /// Sources not fetched yet (a job still queued or scraping).
    pub(crate) source_specs: Vec<SourceSpec>,
    pub(crate) dropped: BTreeMap<String, u64>,
    /// How many candidates the job holds; the store checks its candidate rows against it.
    pub(crate) candidate_count: u64,
    /// What its report shows that its rows do not tell; `None` from a store that did not keep it.
    pub(crate) report: Option<ReportCounts>,
}

/// What a job's report shows that its candidates, verdicts and chunk rows do not tell (a chunk's
/// pieces live in memory only), kept with its record so that a job that ended reports the same
/// after a restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ReportCounts {
    /// When it first left QUEUED (wall ms; 0 while queued).
    pub(crate) started_wall_ms: u64,
    pub(crate) chunks: ChunkCounts,
    /// Verdicts by the worker that gave them.
    pub(crate) workers: BTreeMap<String, WorkerTally>,
    /// The counts start at a coordinator restart the job ran through.
    pub(crate) since_restart: bool,
    /// Verdicts refused because another lease of the chunk recorded the candidate first.
    pub(crate) duplicates: u64,
}

/// What the store keeps of a chunk: its range follows from the job's chunk size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChunkRecord {
    pub(crate) chunk_id: ChunkId,
    pub(crate) attempts: u32,
    pub(crate) leases: u32,
    pub(crate) failed: bool,
}

/// A change the store must persist, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    Job(Box<JobRecord>),
    /// The job's whole candidate list (at submit, and again once its sources are scraped).
    Candidates {
        job_id: String,
        candidates: Arc<Vec<Candidate>>,
    },
    Verdicts {
        job_id: String,
        /// Position of the first of them in the order the job recorded its verdicts; followers
        /// read in that order.
        first_position: u64,
        verdicts: Vec<Verdict>,
    },
    Chunk {
        job_id: String,
        chunk: ChunkRecord,
    },
    /// A pool member as it is now, or a pool's meta.
    Pool(PoolChange),
}

/// A job as the store had it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredJob {
    pub(crate) record: JobRecord,
    pub(crate) candidates: Vec<Candidate>,
    pub(crate) verdicts: Vec<Verdict>,
    pub(crate) chunks: Vec<ChunkRecord>,
}

pub(super) fn job_record(job: &Job) -> JobRecord {
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
        candidate_count: job
            .stored
            .map_or(job.candidates.len() as u64, |s| s.proxies_total),
        report: Some(ReportCounts {
            started_wall_ms: job.started_wall_ms,
            chunks: job.chunk_counts(),
            workers: job.by_worker.clone(),
            since_restart: job.counts_since_restart,
            duplicates: job.duplicates,
        }),
    }
}

impl Scheduler {
    /// Changes to persist since the last call, in order; each changed job's row comes last.
    pub(crate) fn take_journal(&mut self) -> Vec<Record> {
        let mut records = std::mem::take(&mut self.journal);
        for id in std::mem::take(&mut self.changed.save) {
            if let Some(job) = self.jobs.get(&id) {
                records.push(Record::Job(Box::new(job_record(job))));
            }
        }
        records
    }

    /// Brings back a job from the store after a restart. Recorded verdicts stay; chunks not
    /// finished are queued again (leases are not persisted); a job that was scraping scrapes again.
    pub(crate) fn restore(
        &mut self,
        stored: StoredJob,
        now: Instant,
        wall_now: u64,
    ) -> Vec<Outbound> {
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
        let (mut checked, mut usable, mut poisoned, mut recorded) = (0, 0, 0, Vec::new());
        let mut by_reason: BTreeMap<&'static str, u64> = BTreeMap::new();
        for v in verdicts {
            let Some(slot) = slots.get_mut(v.index as usize) else {
                continue;
            };
            if slot.is_some() {
                continue;
            }
            checked += 1;
            usable += u64::from(v.usable);
            poisoned += u64::from(v.reason == Reason::Poison);
            recorded.push(v.index);
            *by_reason.entry(jobs::outcome(&v)).or_default() += 1;
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
        let suspects = jobs::Suspects {
            retries: chunks
                .iter()
                .filter(|c| c.attempts > 0 && c.state == ChunkState::Queued)
                .count() as u64,
            // Pieces live in memory only: a restart leases their chunk whole again.
            pieces: 0,
        };
        let age = Duration::from_millis(wall_now.saturating_sub(record.created_wall_ms));
        let created = now.checked_sub(age).unwrap_or(now);
        let terminal = record.state.is_terminal();
        // An ended job reports what the store kept of it; one that was running starts its chunk
        // and worker counts again, and says so.
        let kept = record.report.is_some();
        let report = record.report.unwrap_or(ReportCounts {
            since_restart: true,
            ..ReportCounts::default()
        });
        let (ended_counts, by_worker, since_restart) = if terminal {
            (
                kept.then_some(report.chunks),
                report.workers,
                report.since_restart,
            )
        } else {
            (None, BTreeMap::new(), !kept || report.started_wall_ms != 0)
        };
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
            base_chunks: chunks.len() as u32,
            chunks,
            created,
            created_wall_ms: record.created_wall_ms,
            ended_wall_ms: record.ended_wall_ms,
            // Its duration stays what it was, whenever it is restored.
            ended: terminal.then(|| {
                let took = record.ended_wall_ms.saturating_sub(record.created_wall_ms);
                created
                    .checked_add(Duration::from_millis(took))
                    .map_or(now, |ended| ended.min(now))
            }),
            checked,
            usable,
            reassignments: record.reassignments,
            stale_refused: record.stale_refused,
            handed_back: record.handed_back,
            poisoned,
            duplicates: report.duplicates,
            // Not kept by the store: counted again from the restart on.
            speculated: 0,
            suspects,
            rate_samples: VecDeque::new(),
            source_specs: if terminal {
                Vec::new()
            } else {
                record.source_specs
            },
            sources: record.sources,
            dropped: record.dropped,
            recorded,
            stored: None,
            started_wall_ms: report.started_wall_ms,
            ended_counts,
            counts_since_restart: since_restart,
            by_reason,
            by_worker,
        };
        let round = job.settings.kind == JobKind::Revalidation;
        self.job_order.push(id.clone());
        self.jobs.insert(id.clone(), job);
        // Shown to watchers, but not saved again: the store holds it as it is. What restoring
        // changes (an unfinished job started again, or ended because nothing is left to check)
        // is saved like any other change.
        self.changed.watch.insert(id.clone());
        let mut out = Vec::new();
        // A revalidation round that was running is over: what it checked counts, and its pool's
        // next round checks the rest, one round at a time.
        if round && !terminal {
            self.end_job(
                &id,
                JobState::Cancelled,
                "the coordinator restarted during this round; the next round checks again".into(),
                now,
                wall_now,
                &mut out,
            );
        }
        self.start_queued_jobs(now, wall_now, &mut out);
        out.extend(self.assign(now));
        out
    }

    /// Jobs whose sources are to be fetched since the last call, in the order they started.
    pub(crate) fn take_scrapes(&mut self) -> Vec<Scrape> {
        std::mem::take(&mut self.scrapes)
    }

    /// Ids of jobs whose snapshot changed since the last call.
    pub(crate) fn take_dirty(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.changed.watch)
    }

    /// Marks a job's snapshot as changed again, for a later `take_dirty`.
    pub(crate) fn mark_dirty(&mut self, job_id: &str) {
        self.changed.watch.insert(job_id.to_string());
    }
}
