//! What clients see of the scheduler: job snapshots, worker lists, result pages and metrics.
//! Reads only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::*;

/// Where an ended job's rows are read once they left memory: the store, given these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoredRows {
    pub(crate) chunk_size: u32,
    pub(crate) total: u64,
}

/// Which rows of a job's results a page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowFilter {
    All,
    /// Candidates with a usable verdict.
    Usable,
    /// Candidates without a verdict (left when the job ended).
    Unchecked,
}

impl RowFilter {
    pub(crate) fn usable_only(usable_only: bool) -> Self {
        if usable_only {
            RowFilter::Usable
        } else {
            RowFilter::All
        }
    }

    pub(crate) fn keeps(self, verdict: Option<&Verdict>) -> bool {
        match self {
            RowFilter::All => true,
            RowFilter::Usable => verdict.is_some_and(|v| v.usable),
            RowFilter::Unchecked => verdict.is_none(),
        }
    }
}

/// Counts of a job as clients see them.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct JobProgress {
    pub(crate) chunks_total: u64,
    pub(crate) chunks_queued: u64,
    pub(crate) chunks_leased: u64,
    pub(crate) chunks_done: u64,
    pub(crate) chunks_failed: u64,
    pub(crate) proxies_total: u64,
    pub(crate) proxies_checked: u64,
    pub(crate) proxies_usable: u64,
    pub(crate) workers: u64,
    pub(crate) checks_per_second: f64,
    pub(crate) eta: Option<Duration>,
    pub(crate) reassignments: u64,
    pub(crate) stale_verdicts_refused: u64,
    pub(crate) handed_back: u64,
    pub(crate) elapsed: Duration,
    /// Candidates the job ended without a verdict for; 0 while it runs.
    pub(crate) proxies_unchecked: u64,
    /// How many proxies its pool's live_proxies files hold now that were seen usable since the
    /// refresh started: 0 from the scheduler; the state sets it from what the publisher last
    /// renamed into place.
    pub(crate) pool_files_usable: u64,
    /// The pool's live_proxies.txt as the publisher wrote it, with `pool_files_usable`.
    pub(crate) pool_files: String,
    /// Of those left unchecked, the poison ones.
    pub(crate) proxies_poison: u64,
    /// Verdicts refused because another lease of the chunk recorded the candidate first.
    pub(crate) duplicate_verdicts_refused: u64,
    /// Backup leases granted at the job's tail.
    pub(crate) speculative_leases: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChunkInfo {
    pub(crate) id: ChunkId,
    pub(crate) state: ChunkState,
    pub(crate) size: u32,
    pub(crate) checked: u32,
    pub(crate) attempts: u32,
    pub(crate) leases: u32,
    pub(crate) holder: String,
}

/// A job as clients see it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JobSnapshot {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) state: JobState,
    pub(crate) reason: String,
    pub(crate) settings: JobSettings,
    pub(crate) progress: JobProgress,
    pub(crate) created_wall_ms: u64,
    pub(crate) ended_wall_ms: u64,
    pub(crate) chunks: Vec<ChunkInfo>,
    pub(crate) sources: Vec<SourceStatus>,
    pub(crate) dropped: BTreeMap<String, u64>,
}

/// A job's chunks by state, and how often they were leased.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ChunkCounts {
    /// As [`JobProgress::chunks_total`]: a split chunk's pieces in its place.
    pub(crate) total: u64,
    pub(crate) queued: u64,
    pub(crate) leased: u64,
    pub(crate) done: u64,
    pub(crate) failed: u64,
    /// Chunks cut in halves because their attempts ran out.
    pub(crate) split: u64,
    /// Leases granted on them, backups included.
    pub(crate) leases: u64,
    /// Attempts charged to them: holders that vanished with them.
    pub(crate) attempts: u64,
}

/// What became of a job, for `proxyfleet job`, its `summary.json` and the HTTP API.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JobReport {
    /// The job as `GetJob` shows it, without its chunks.
    pub(crate) job: JobSnapshot,
    /// When it left QUEUED (wall ms; 0 when not known).
    pub(crate) started_wall_ms: u64,
    /// Every candidate once, by outcome: "usable", a reason's name, or "unchecked".
    pub(crate) by_reason: BTreeMap<String, u64>,
    pub(crate) chunks: ChunkCounts,
    /// Its chunk and worker counts start at the coordinator's last start (it was running then),
    /// not at the job's.
    pub(crate) counts_since_restart: bool,
    /// Workers that gave it verdicts, most verdicts first, with their ids.
    pub(crate) workers: Vec<(String, WorkerTally)>,
}

/// A worker session as clients see it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkerSnapshot {
    pub(crate) session_id: SessionId,
    pub(crate) worker_id: String,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) peer: String,
    pub(crate) status: &'static str,
    pub(crate) leases: Vec<LeaseId>,
    pub(crate) capacity: u32,
    pub(crate) max_checks: u32,
    pub(crate) connected_for: Duration,
    pub(crate) last_seen_ago: Duration,
    pub(crate) verdicts_accepted: u64,
    pub(crate) judges: Vec<JudgeStatus>,
}

/// One candidate of a job with its verdict, if any.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResultRow {
    pub(crate) candidate: Candidate,
    pub(crate) chunk_id: ChunkId,
    pub(crate) verdict: Option<Verdict>,
}

/// A page of followed results.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Followed {
    pub(crate) rows: Vec<ResultRow>,
    pub(crate) cursor: usize,
    /// The job has ended and these were its last recorded verdicts.
    pub(crate) done: bool,
}

/// What the metrics endpoint shows of the scheduler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Metrics {
    pub(crate) counters: Counters,
    pub(crate) jobs_by_state: BTreeMap<&'static str, u64>,
    pub(crate) chunks_by_state: BTreeMap<&'static str, u64>,
    pub(crate) workers_by_status: BTreeMap<&'static str, u64>,
    pub(crate) leases_live: u64,
    /// By pool: when its newest refresh that SUCCEEDED ended (wall ms).
    pub(crate) pools_refreshed_ms: BTreeMap<String, u64>,
}

impl Scheduler {
    pub(crate) fn job_ids(&self) -> Vec<String> {
        self.job_order.iter().rev().cloned().collect()
    }

    /// The ids of the `limit` newest jobs, newest first; only those are cloned.
    pub(crate) fn recent_job_ids(&self, limit: usize) -> Vec<String> {
        self.job_order.iter().rev().take(limit).cloned().collect()
    }

    pub(crate) fn snapshot(
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
            proxies_total: job.candidates.len() as u64,
            // A poison candidate has a row, but was never checked.
            proxies_checked: job.checked - job.poisoned,
            proxies_usable: job.usable,
            reassignments: job.reassignments,
            stale_verdicts_refused: job.stale_refused,
            handed_back: job.handed_back,
            proxies_poison: job.poisoned,
            duplicate_verdicts_refused: job.duplicates,
            speculative_leases: job.speculated,
            // An ended job took what its submission and end times, as shown, say: the same
            // before and after a restart.
            elapsed: match job.ended {
                Some(_) if job.ended_wall_ms >= job.created_wall_ms && job.ended_wall_ms > 0 => {
                    Duration::from_millis(job.ended_wall_ms - job.created_wall_ms)
                }
                ended => ended.unwrap_or(now).saturating_duration_since(job.created),
            },
            ..JobProgress::default()
        };
        let holders: BTreeSet<SessionId> = job
            .chunks
            .iter()
            .filter_map(|chunk| match chunk.state {
                ChunkState::Leased(lease) => self.fleet.lease(lease).map(|l| l.session),
                _ => None,
            })
            .collect();
        progress.workers = holders.len() as u64;
        let counts = job.chunk_counts();
        progress.chunks_total = counts.total;
        progress.chunks_queued = counts.queued;
        progress.chunks_leased = counts.leased;
        progress.chunks_done = counts.done;
        progress.chunks_failed = counts.failed;
        if let Some(stored) = job.stored {
            progress.proxies_total = stored.proxies_total;
        }
        if job.state.is_terminal() {
            progress.proxies_unchecked = progress
                .proxies_total
                .saturating_sub(progress.proxies_checked);
        } else {
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
                            .fleet
                            .lease(lease)
                            .and_then(|l| self.fleet.session(l.session))
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

    /// What became of a job: its snapshot, its verdicts by outcome, its chunks and the workers
    /// that checked it. Counted as it goes: no verdict is read again.
    pub(crate) fn report(&self, job_id: &str, now: Instant) -> Result<JobReport, JobError> {
        let snapshot = self.snapshot(job_id, false, now)?;
        let job = &self.jobs[job_id];
        let mut by_reason: BTreeMap<String, u64> = job
            .by_reason
            .iter()
            .map(|(outcome, n)| (outcome.to_string(), *n))
            .collect();
        // Poison candidates have a verdict row (their reason says so); the rest have none.
        let unchecked = snapshot
            .progress
            .proxies_total
            .saturating_sub(job.by_reason.values().sum());
        if unchecked > 0 {
            by_reason.insert("unchecked".into(), unchecked);
        }
        let chunks = job.chunk_counts();
        let mut workers: Vec<(String, WorkerTally)> = job
            .by_worker
            .iter()
            .map(|(id, tally)| (id.clone(), tally.clone()))
            .collect();
        workers.sort_by(|a, b| b.1.verdicts.cmp(&a.1.verdicts).then(a.0.cmp(&b.0)));
        Ok(JobReport {
            job: snapshot,
            started_wall_ms: job.started_wall_ms,
            counts_since_restart: job.counts_since_restart,
            by_reason,
            chunks,
            workers,
        })
    }

    pub(crate) fn workers(&self, now: Instant) -> Vec<WorkerSnapshot> {
        self.fleet
            .sessions()
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

    /// Every candidate of the job once, in candidate order (a job whose rows are in memory).
    #[cfg(test)]
    pub(crate) fn results(
        &self,
        job_id: &str,
        filter: RowFilter,
    ) -> Result<Vec<ResultRow>, JobError> {
        Ok(self.results_page(job_id, 0, usize::MAX, filter)?.0)
    }

    /// A page of a job's results: candidates from index `start` on, at most `limit` rows (and at
    /// most `limit` * 64 candidates looked at); returns the rows and where the next page starts,
    /// or `None` after the last candidate. A job kept in the store has no rows here: see
    /// [`Scheduler::stored_rows`].
    pub(crate) fn results_page(
        &self,
        job_id: &str,
        start: usize,
        limit: usize,
        filter: RowFilter,
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
            if filter.keeps(verdict.as_ref()) {
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

    /// At most `limit` results from position `cursor` on in the order the job recorded them, and
    /// the new cursor; `done` says the job has ended and every recorded verdict was read. A
    /// follower then reads the candidates never checked with [`RowFilter::Unchecked`] pages, and
    /// so sees every candidate exactly once. A job kept in the store has no rows here.
    pub(crate) fn results_since(
        &self,
        job_id: &str,
        cursor: usize,
        limit: usize,
        usable_only: bool,
    ) -> Result<Followed, JobError> {
        let job = self
            .jobs
            .get(job_id)
            .ok_or_else(|| JobError::NotFound(job_id.to_string()))?;
        let chunk_size = job.settings.chunk_size.max(1);
        let cursor = cursor.min(job.recorded.len());
        let end = cursor.saturating_add(limit).min(job.recorded.len());
        let rows: Vec<ResultRow> = job.recorded[cursor..end]
            .iter()
            .filter(|&&i| {
                !usable_only || job.verdicts[i as usize].as_ref().is_some_and(|v| v.usable)
            })
            .map(|&i| ResultRow {
                candidate: job.candidates[i as usize].clone(),
                chunk_id: i / chunk_size,
                verdict: job.verdicts[i as usize].clone(),
            })
            .collect();
        Ok(Followed {
            rows,
            cursor: end,
            done: job.state.is_terminal() && end == job.recorded.len(),
        })
    }

    /// Where a job's rows are when they are no longer in memory; `None` while they are.
    pub(crate) fn stored_rows(&self, job_id: &str) -> Result<Option<StoredRows>, JobError> {
        let job = self
            .jobs
            .get(job_id)
            .ok_or_else(|| JobError::NotFound(job_id.to_string()))?;
        Ok(job.stored.map(|counts| StoredRows {
            chunk_size: job.settings.chunk_size.max(1),
            total: counts.proxies_total,
        }))
    }

    /// Counts for the metrics endpoint.
    pub(crate) fn metrics(&self) -> Metrics {
        let mut m = Metrics {
            counters: self.counters.clone(),
            leases_live: self.fleet.live_leases() as u64,
            ..Metrics::default()
        };
        for state in JobState::ALL {
            m.jobs_by_state.insert(state.name(), 0);
        }
        for name in ["queued", "leased", "done", "failed", "split"] {
            m.chunks_by_state.insert(name, 0);
        }
        for job in self.jobs.values() {
            *m.jobs_by_state.entry(job.state.name()).or_default() += 1;
            if job.settings.kind == JobKind::Refresh && job.state == JobState::Succeeded {
                let newest = m
                    .pools_refreshed_ms
                    .entry(job.settings.pool.clone())
                    .or_default();
                *newest = (*newest).max(job.ended_wall_ms);
            }
            if let Some(stored) = job.stored {
                for (name, n) in [
                    ("queued", stored.chunks.queued),
                    ("done", stored.chunks.done),
                    ("failed", stored.chunks.failed),
                ] {
                    *m.chunks_by_state.entry(name).or_default() += n;
                }
            }
            for chunk in &job.chunks {
                let name = match chunk.state {
                    ChunkState::Queued => "queued",
                    ChunkState::Leased(_) => "leased",
                    ChunkState::Done => "done",
                    ChunkState::Failed => "failed",
                    ChunkState::Split => "split",
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
    #[cfg(test)]
    pub(crate) fn stale_refused_total(&self) -> u64 {
        self.counters.stale_verdicts_refused
    }
}
