//! The embedded store: jobs, candidates, chunks and every recorded verdict in SQLite (WAL) under
//! the data dir, so that `kill -9` of the coordinator loses nothing it acknowledged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::candidate::{self, Protocol, TargetPolicy};
use crate::scheduler::{
    Anonymity, CheckTarget, CheckTargets, ChunkCounts, ChunkId, ChunkInfo, ChunkRecord, ChunkState,
    JobKind, JobRecord, JobSettings, JobState, Member, PoolChange, PoolMeta, Reason, Record,
    ReportCounts, ResultRow, RowFilter, SourceSpec, SourceState, SourceStatus, StoredJob,
    StoredRows, TargetVerdict, UsableFilter, Verdict, WorkerTally,
};

/// File name of the database inside the data dir.
pub(crate) const DB_FILE: &str = "proxyfleet.db";

/// What can go wrong with the store; every message names the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error(
        "the database {path} is unreadable or corrupt ({error}); the coordinator will not start over it: move it away to start empty, or restore a backup"
    )]
    Corrupt { path: String, error: String },
    #[error(
        "the database {path} does not hold job {job_id} whole: {problem}; the coordinator will not start over it, as later verdicts would land on the wrong candidates: restore a backup of the data dir, or move {path} away to start empty"
    )]
    Inconsistent {
        path: String,
        job_id: String,
        problem: String,
    },
    #[error(
        "the coordinator cannot write its store in {dir}: database or disk is full; free space there and start the coordinator again"
    )]
    Full { dir: String },
    #[error(
        "the coordinator cannot write its store {path}: {error}; check the disk of the data dir and start the coordinator again"
    )]
    Write { path: String, error: String },
    #[error("cannot open the database {path}: {error}; pass a writable --data-dir")]
    Open { path: String, error: String },
}

pub(crate) struct Store {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    settings TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    ended_ms INTEGER NOT NULL,
    reassignments INTEGER NOT NULL,
    stale_refused INTEGER NOT NULL,
    handed_back INTEGER NOT NULL,
    sources TEXT NOT NULL,
    source_specs TEXT NOT NULL,
    dropped TEXT NOT NULL,
    candidates INTEGER
);
CREATE TABLE IF NOT EXISTS candidates (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, url TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS verdicts (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, usable INTEGER NOT NULL, reason TEXT NOT NULL,
    latency_ms INTEGER NOT NULL, connect_ms INTEGER NOT NULL, exit_ip TEXT NOT NULL,
    anonymity TEXT NOT NULL, detail TEXT NOT NULL, position INTEGER,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    job_id TEXT NOT NULL, chunk_id INTEGER NOT NULL, attempts INTEGER NOT NULL,
    leases INTEGER NOT NULL, failed INTEGER NOT NULL,
    PRIMARY KEY (job_id, chunk_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pools (
    name TEXT PRIMARY KEY, settings TEXT, revalidate_every_ms INTEGER NOT NULL,
    last_round_ms INTEGER NOT NULL, round_job TEXT, version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pool_members (
    pool TEXT NOT NULL, proxy TEXT NOT NULL, live INTEGER NOT NULL, history TEXT NOT NULL,
    PRIMARY KEY (pool, proxy)
) WITHOUT ROWID;
";

/// A pool as the store had it: its meta and every member it keeps.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredPool {
    pub(crate) meta: PoolMeta,
    pub(crate) members: Vec<Member>,
}

impl Store {
    /// Opens (or creates) the database in `data_dir`; refuses a file it cannot read as one.
    pub(crate) fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join(DB_FILE);
        let cannot_open = |error: String| StoreError::Open {
            path: path.display().to_string(),
            error,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| cannot_open(e.to_string()))?;
        let conn = Connection::open(&path).map_err(|e| cannot_open(e.to_string()))?;
        let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
            path: path.display().to_string(),
            error: e.to_string(),
        };
        conn.busy_timeout(Duration::from_secs(5)).map_err(corrupt)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(corrupt)?;
        if check != "ok" {
            return Err(StoreError::Corrupt {
                path: path.display().to_string(),
                error: check,
            });
        }
        // WAL with full sync: a commit survives the process being killed, and the machine too.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(corrupt)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(corrupt)?;
        conn.execute_batch(SCHEMA).map_err(corrupt)?;
        // A store from before jobs recorded their candidate count: NULL there, not checked.
        add_column(&conn, "jobs", "candidates").map_err(corrupt)?;
        // A store from before verdicts kept the order they were recorded in: NULL there, read
        // first, by candidate index.
        add_column(&conn, "verdicts", "position").map_err(corrupt)?;
        // A store from before check targets: NULL there, as for a verdict of a job without any.
        add_typed_column(&conn, "verdicts", "targets", "TEXT").map_err(corrupt)?;
        // A store from before jobs kept their report's counts: NULL there, and a job restored
        // from it reports counts since the restart.
        add_typed_column(&conn, "jobs", "report", "TEXT").map_err(corrupt)?;
        Ok(Store { conn, path })
    }

    fn write_error(&self, e: rusqlite::Error) -> StoreError {
        write_error(&self.path, e)
    }

    /// Every job, oldest first, and the lease-id high-water mark.
    #[cfg(test)]
    pub(crate) fn load(&self) -> Result<(Vec<StoredJob>, u64), StoreError> {
        let (ids, lease_floor) = self.job_ids()?;
        let jobs = ids
            .iter()
            .map(|id| self.load_job(id))
            .collect::<Result<_, _>>()?;
        Ok((jobs, lease_floor))
    }

    /// The id of every job, oldest first, and the lease-id high-water mark: a coordinator
    /// starting brings its jobs back one at a time with [`Store::load_job`].
    pub(crate) fn job_ids(&self) -> Result<(Vec<String>, u64), StoreError> {
        let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
            path: self.path.display().to_string(),
            error: e.to_string(),
        };
        let lease_floor: u64 = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'next_lease'", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map_err(corrupt)?
            .unwrap_or(0) as u64;
        let ids = self
            .conn
            .prepare("SELECT id FROM jobs ORDER BY rowid")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(corrupt)?;
        Ok((ids, lease_floor))
    }

    /// One job whole: its row, candidates, verdicts (in the order they were recorded) and chunks.
    pub(crate) fn load_job(&self, id: &str) -> Result<StoredJob, StoreError> {
        let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
            path: self.path.display().to_string(),
            error: e.to_string(),
        };
        let row = self
            .conn
            .query_row(
                "SELECT name, settings, state, reason, created_ms, ended_ms, reassignments,
                        stale_refused, handed_back, sources, source_specs, dropped, candidates,
                        report
                 FROM jobs WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, i64>(7)?,
                        r.get::<_, i64>(8)?,
                        r.get::<_, String>(9)?,
                        r.get::<_, String>(10)?,
                        r.get::<_, String>(11)?,
                        r.get::<_, Option<i64>>(12)?,
                        r.get::<_, Option<String>>(13)?,
                    ))
                },
            )
            .map_err(corrupt)?;
        let (
            name,
            settings,
            state,
            reason,
            created,
            ended,
            reassign,
            stale,
            handed,
            sources,
            specs,
            dropped,
            count,
            report,
        ) = row;
        let bad = |what: &str| StoreError::Corrupt {
            path: self.path.display().to_string(),
            error: format!("job {id}: unreadable {what}"),
        };
        let mut record = JobRecord {
            settings: settings_from_json(&settings).ok_or_else(|| bad("settings"))?,
            state: JobState::from_name(&state).ok_or_else(|| bad("state"))?,
            name,
            reason,
            created_wall_ms: created as u64,
            ended_wall_ms: ended as u64,
            reassignments: reassign as u64,
            stale_refused: stale as u64,
            handed_back: handed as u64,
            sources: sources_from_json(&sources).ok_or_else(|| bad("sources"))?,
            source_specs: specs_from_json(&specs).ok_or_else(|| bad("source specs"))?,
            dropped: serde_json::from_str(&dropped).map_err(|_| bad("dropped counts"))?,
            candidate_count: 0,
            report: match report {
                Some(text) => Some(report_from_json(&text).ok_or_else(|| bad("report counts"))?),
                None => None,
            },
            id: id.to_string(),
        };
        let (indexes, candidates) = self.candidates(id)?;
        let verdicts = self.verdicts(id)?;
        let chunks = self.chunks(id)?;
        let rows = JobRows {
            recorded: count,
            candidates: indexes,
            verdicts: verdicts.iter().map(|v| i64::from(v.index)).collect(),
            chunks: chunks.iter().map(|c| i64::from(c.chunk_id)).collect(),
            chunk_size: record.settings.chunk_size,
        };
        if let Some(problem) = rows_problem(&rows) {
            return Err(StoreError::Inconsistent {
                path: self.path.display().to_string(),
                job_id: id.to_string(),
                problem,
            });
        }
        record.candidate_count = candidates.len() as u64;
        Ok(StoredJob {
            record,
            candidates,
            verdicts,
            chunks,
        })
    }

    /// A job's candidates in order, with the index each is stored under.
    fn candidates(
        &self,
        job_id: &str,
    ) -> Result<(Vec<i64>, Vec<crate::candidate::Candidate>), StoreError> {
        let corrupt = |e: String| StoreError::Corrupt {
            path: self.path.display().to_string(),
            error: format!("job {job_id}: {e}"),
        };
        let mut statement = self
            .conn
            .prepare("SELECT idx, url FROM candidates WHERE job_id = ?1 ORDER BY idx")
            .map_err(|e| corrupt(e.to_string()))?;
        let rows = statement
            .query_map([job_id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(|e| corrupt(e.to_string()))?;
        let mut indexes = Vec::new();
        let mut out = Vec::new();
        for row in rows {
            let (index, url) = row.map_err(|e| corrupt(e.to_string()))?;
            let candidate = stored_candidate(&url).map_err(corrupt)?;
            indexes.push(index);
            out.push(candidate);
        }
        Ok((indexes, out))
    }

    fn verdicts(&self, job_id: &str) -> Result<Vec<Verdict>, StoreError> {
        let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
            path: self.path.display().to_string(),
            error: format!("job {job_id}: {e}"),
        };
        let mut statement = self
            .conn
            .prepare(
                "SELECT idx, usable, reason, latency_ms, connect_ms, exit_ip, anonymity, detail,
                        targets
                 FROM verdicts WHERE job_id = ?1 ORDER BY position, idx",
            )
            .map_err(corrupt)?;
        let rows = statement
            .query_map([job_id], |r| {
                let index = r.get::<_, i64>(0)? as u32;
                stored_verdict(r, index, 1)?.ok_or(rusqlite::Error::InvalidColumnType(
                    1,
                    "usable".into(),
                    rusqlite::types::Type::Null,
                ))
            })
            .map_err(corrupt)?;
        rows.collect::<Result<_, _>>().map_err(corrupt)
    }

    fn chunks(&self, job_id: &str) -> Result<Vec<ChunkRecord>, StoreError> {
        let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
            path: self.path.display().to_string(),
            error: format!("job {job_id}: {e}"),
        };
        let mut statement = self
            .conn
            .prepare("SELECT chunk_id, attempts, leases, failed FROM chunks WHERE job_id = ?1")
            .map_err(corrupt)?;
        let rows = statement
            .query_map([job_id], |r| {
                Ok(ChunkRecord {
                    chunk_id: r.get::<_, i64>(0)? as u32,
                    attempts: r.get::<_, i64>(1)? as u32,
                    leases: r.get::<_, i64>(2)? as u32,
                    failed: r.get::<_, i64>(3)? != 0,
                })
            })
            .map_err(corrupt)?;
        rows.collect::<Result<_, _>>().map_err(corrupt)
    }

    /// Writes `records` in one transaction, with the lease-id high-water mark.
    pub(crate) fn write(&mut self, records: &[Record], next_lease: u64) -> Result<(), StoreError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| write_error(&path, e))?;
        write_records(&tx, records, next_lease).map_err(|e| write_error(&path, e))?;
        tx.commit().map_err(|e| write_error(&path, e))
    }

    /// Every pool with its members.
    pub(crate) fn pools(&self) -> Result<Vec<StoredPool>, StoreError> {
        let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
            path: self.path.display().to_string(),
            error: e.to_string(),
        };
        let metas: Vec<PoolMeta> = self
            .conn
            .prepare(
                "SELECT name, settings, revalidate_every_ms, last_round_ms, round_job, version
                 FROM pools ORDER BY name",
            )
            .and_then(|mut s| {
                s.query_map([], |r| {
                    let settings: Option<String> = r.get(1)?;
                    Ok(PoolMeta {
                        name: r.get(0)?,
                        settings: settings.as_deref().and_then(settings_from_json),
                        revalidate_every: Duration::from_millis(r.get::<_, i64>(2)? as u64),
                        last_round_ms: r.get::<_, i64>(3)? as u64,
                        round_job: r.get(4)?,
                        version: r.get::<_, i64>(5)? as u64,
                    })
                })?
                .collect()
            })
            .map_err(corrupt)?;
        let mut pools = Vec::with_capacity(metas.len());
        for meta in metas {
            let rows: Vec<(String, String)> = self
                .conn
                .prepare("SELECT proxy, history FROM pool_members WHERE pool = ?1")
                .and_then(|mut s| {
                    s.query_map([&meta.name], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect()
                })
                .map_err(corrupt)?;
            let mut members = Vec::with_capacity(rows.len());
            for (proxy, history) in rows {
                let member = stored_candidate(&proxy)
                    .ok()
                    .and_then(|candidate| member_from_json(candidate, &history))
                    .ok_or_else(|| StoreError::Corrupt {
                        path: self.path.display().to_string(),
                        error: format!("pool {:?} holds an unreadable member {proxy:?}", meta.name),
                    })?;
                members.push(member);
            }
            pools.push(StoredPool { meta, members });
        }
        Ok(pools)
    }

    /// Deletes every job that ended before `before_ms`; returns their ids.
    pub(crate) fn prune(&mut self, before_ms: u64) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = {
            let mut statement = self
                .conn
                .prepare("SELECT id FROM jobs WHERE ended_ms > 0 AND ended_ms < ?1")
                .map_err(|e| self.write_error(e))?;
            let rows = statement
                .query_map([before_ms as i64], |r| r.get(0))
                .map_err(|e| self.write_error(e))?;
            rows.collect::<Result<_, _>>()
                .map_err(|e| self.write_error(e))?
        };
        self.delete_jobs(&ids)?;
        Ok(ids)
    }

    /// Deletes the jobs of `ids` that have ended (a running one is kept); returns their ids.
    pub(crate) fn forget_jobs(&mut self, ids: Vec<String>) -> Result<Vec<String>, StoreError> {
        let mut ended = Vec::with_capacity(ids.len());
        for id in ids {
            let ended_ms: Option<i64> = self
                .conn
                .query_row("SELECT ended_ms FROM jobs WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(|e| self.write_error(e))?;
            if ended_ms.is_some_and(|ms| ms > 0) {
                ended.push(id);
            }
        }
        self.delete_jobs(&ended)?;
        Ok(ended)
    }

    fn delete_jobs(&mut self, ids: &[String]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| write_error(&path, e))?;
        for id in ids {
            for table in ["jobs", "candidates", "verdicts", "chunks"] {
                let column = if table == "jobs" { "id" } else { "job_id" };
                tx.execute(&format!("DELETE FROM {table} WHERE {column} = ?1"), [id])
                    .map_err(|e| write_error(&path, e))?;
            }
        }
        tx.commit().map_err(|e| write_error(&path, e))
    }
}

/// Reads ended jobs' rows while the writer writes (WAL readers do not block it): the rows of a
/// job kept only in the store, page by page.
pub(crate) struct Reader {
    conn: Connection,
    path: PathBuf,
}

/// The columns a results row is read from: the candidate, then its verdict if any.
const RESULT_COLUMNS: &str = "c.idx, c.url, v.usable, v.reason, v.latency_ms, v.connect_ms,
    v.exit_ip, v.anonymity, v.detail, v.targets";

impl Reader {
    /// A read-only connection to the database in `data_dir` (opened by [`Store::open`] first).
    pub(crate) fn open(data_dir: &Path) -> Result<Reader, StoreError> {
        let path = data_dir.join(DB_FILE);
        let conn = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|conn| {
            conn.busy_timeout(Duration::from_secs(5))?;
            Ok(conn)
        })
        .map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            error: e.to_string(),
        })?;
        Ok(Reader { conn, path })
    }

    fn corrupt(&self, job_id: &str, error: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.path.display().to_string(),
            error: format!("job {job_id}: {error}"),
        }
    }

    /// Result rows of `job_id` from candidate index `start`, as [`Scheduler::results_page`] pages
    /// them: at most `limit` rows, at most `limit` * 64 candidates looked at, and where the next
    /// page starts. `extra` narrows the rows further in SQL over `c` (candidates) and `v` (their
    /// verdicts).
    ///
    /// [`Scheduler::results_page`]: crate::scheduler::Scheduler::results_page
    fn page_where(
        &self,
        job_id: &str,
        stored: StoredRows,
        start: usize,
        limit: usize,
        extra: &str,
        extra_param: i64,
    ) -> Result<(Vec<ResultRow>, Option<usize>), StoreError> {
        let total = stored.total as usize;
        let end = start.saturating_add(limit.saturating_mul(64)).min(total);
        let sql = format!(
            "SELECT {RESULT_COLUMNS} FROM candidates c
             LEFT JOIN verdicts v ON v.job_id = c.job_id AND v.idx = c.idx
             WHERE c.job_id = ?1 AND c.idx >= ?2 AND c.idx < ?3 AND ({extra})
             ORDER BY c.idx LIMIT ?4"
        );
        let mut statement = self
            .conn
            .prepare_cached(&sql)
            .map_err(|e| self.corrupt(job_id, e))?;
        let mut rows = statement
            .query(params![
                job_id,
                start as i64,
                end as i64,
                limit.min(i64::MAX as usize) as i64,
                extra_param
            ])
            .map_err(|e| self.corrupt(job_id, e))?;
        let mut out = Vec::new();
        let mut next = end;
        while let Some(row) = rows.next().map_err(|e| self.corrupt(job_id, e))? {
            let index = row.get::<_, i64>(0).map_err(|e| self.corrupt(job_id, e))? as u32;
            let url: String = row.get(1).map_err(|e| self.corrupt(job_id, e))?;
            let verdict = stored_verdict(row, index, 2).map_err(|e| self.corrupt(job_id, e))?;
            out.push(ResultRow {
                candidate: stored_candidate(&url).map_err(|e| self.corrupt(job_id, e))?,
                chunk_id: index / stored.chunk_size.max(1),
                verdict,
            });
            if out.len() == limit {
                next = index as usize + 1;
                break;
            }
        }
        Ok((out, (next < total).then_some(next)))
    }

    /// A page of a stored job's results; see [`Scheduler::results_page`].
    ///
    /// [`Scheduler::results_page`]: crate::scheduler::Scheduler::results_page
    pub(crate) fn results_page(
        &self,
        job_id: &str,
        stored: StoredRows,
        start: usize,
        limit: usize,
        filter: RowFilter,
    ) -> Result<(Vec<ResultRow>, Option<usize>), StoreError> {
        let extra = match filter {
            RowFilter::All => "?5 = ?5",
            RowFilter::Usable => "v.usable = 1 AND ?5 = ?5",
            RowFilter::Unchecked => "v.idx IS NULL AND ?5 = ?5",
        };
        self.page_where(job_id, stored, start, limit, extra, 0)
    }

    /// What a follower that read the first `position` recorded verdicts has yet to see of a
    /// stored job, by candidate index from `start`: the verdicts recorded after them and, unless
    /// `usable_only`, the candidates never checked.
    pub(crate) fn rest_page(
        &self,
        job_id: &str,
        stored: StoredRows,
        position: usize,
        start: usize,
        limit: usize,
        usable_only: bool,
    ) -> Result<(Vec<ResultRow>, Option<usize>), StoreError> {
        // Verdicts of a store from before positions were kept count as recorded first.
        let extra = if usable_only {
            "v.usable = 1 AND ifnull(v.position, 0) >= ?5"
        } else {
            "v.idx IS NULL OR ifnull(v.position, 0) >= ?5"
        };
        self.page_where(job_id, stored, start, limit, extra, position as i64)
    }

    /// The chunks of a stored job as clients see them: none is leased any more.
    pub(crate) fn chunks(
        &self,
        job_id: &str,
        stored: StoredRows,
    ) -> Result<Vec<ChunkInfo>, StoreError> {
        let size = stored.chunk_size.max(1);
        let chunk_count = stored.total.div_ceil(u64::from(size)) as usize;
        let mut chunks: Vec<ChunkInfo> = (0..chunk_count)
            .map(|i| ChunkInfo {
                id: i as ChunkId,
                state: ChunkState::Queued,
                size: (stored.total - i as u64 * u64::from(size)).min(u64::from(size)) as u32,
                checked: 0,
                attempts: 0,
                leases: 0,
                holder: String::new(),
            })
            .collect();
        let corrupt = |e: rusqlite::Error| self.corrupt(job_id, e);
        let mut checked = self
            .conn
            .prepare_cached(
                "SELECT idx / ?2, count(*) FROM verdicts WHERE job_id = ?1 GROUP BY idx / ?2",
            )
            .map_err(corrupt)?;
        let counts = checked
            .query_map(params![job_id, i64::from(size)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(corrupt)?;
        for count in counts {
            let (chunk, n) = count.map_err(corrupt)?;
            if let Some(c) = chunks.get_mut(chunk as usize) {
                c.checked = n as u32;
            }
        }
        let mut records = self
            .conn
            .prepare_cached(
                "SELECT chunk_id, attempts, leases, failed FROM chunks WHERE job_id = ?1",
            )
            .map_err(corrupt)?;
        let rows = records
            .query_map([job_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)? != 0,
                ))
            })
            .map_err(corrupt)?;
        for row in rows {
            let (chunk, attempts, leases, failed) = row.map_err(corrupt)?;
            if let Some(c) = chunks.get_mut(chunk as usize) {
                c.attempts = attempts as u32;
                c.leases = leases as u32;
                if failed {
                    c.state = ChunkState::Failed;
                }
            }
        }
        for c in &mut chunks {
            if c.state != ChunkState::Failed && c.checked == c.size {
                c.state = ChunkState::Done;
            }
        }
        Ok(chunks)
    }
}

/// A candidate as the store keeps it: its full URL, validated at submit.
fn stored_candidate(url: &str) -> Result<crate::candidate::Candidate, String> {
    // Only read back here, whatever the target policy is now.
    let mut parsed = candidate::parse_line(
        url,
        &[Protocol::Http],
        TargetPolicy {
            allow_private: true,
        },
    )
    .map_err(|e| format!("candidate {url:?}: {e}"))?;
    if parsed.len() != 1 {
        return Err(format!("candidate {url:?} is not one proxy"));
    }
    Ok(parsed.remove(0))
}

/// The verdict in a row's columns from `first` on (usable, reason, latency, connect time, exit
/// address, anonymity, detail, target verdicts); `None` where they are NULL (a candidate not
/// checked).
fn stored_verdict(
    r: &rusqlite::Row<'_>,
    index: u32,
    first: usize,
) -> rusqlite::Result<Option<Verdict>> {
    let Some(usable) = r.get::<_, Option<i64>>(first)? else {
        return Ok(None);
    };
    Ok(Some(Verdict {
        index,
        usable: usable != 0,
        reason: reason_from_name(&r.get::<_, String>(first + 1)?),
        latency_ms: r.get::<_, i64>(first + 2)? as u32,
        connect_ms: r.get::<_, i64>(first + 3)? as u32,
        exit_ip: r.get::<_, String>(first + 4)?.into(),
        anonymity: anonymity_from_name(&r.get::<_, String>(first + 5)?),
        detail: r.get::<_, String>(first + 6)?.into(),
        targets: r
            .get::<_, Option<String>>(first + 7)?
            .map(|text| target_verdicts_from_json(&text))
            .unwrap_or_default(),
    }))
}

/// Adds the INTEGER `column` to `table` of a store written before the column existed.
fn add_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<()> {
    add_typed_column(conn, table, column, "INTEGER")
}

/// Adds `column` of type `kind` to `table` of a store written before the column existed.
fn add_typed_column(
    conn: &Connection,
    table: &str,
    column: &str,
    kind: &str,
) -> rusqlite::Result<()> {
    let present = conn
        .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
        .exists([table, column])?;
    if !present {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
    }
    Ok(())
}

/// A failed write, told apart when it is the disk being full: the one cause an operator fixes
/// by freeing space.
fn write_error(path: &Path, e: rusqlite::Error) -> StoreError {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        return StoreError::Full {
            dir: path
                .parent()
                .unwrap_or(Path::new("."))
                .display()
                .to_string(),
        };
    }
    StoreError::Write {
        path: path.display().to_string(),
        error: e.to_string(),
    }
}

/// A job's rows as the store holds them, reduced to the numbers that must agree.
#[derive(Debug, Default)]
struct JobRows {
    /// The candidate count the job's row records; None in a store written before it was kept.
    recorded: Option<i64>,
    /// Index of every candidate row, ascending.
    candidates: Vec<i64>,
    /// Candidate index of every verdict row.
    verdicts: Vec<i64>,
    /// Id of every chunk row.
    chunks: Vec<i64>,
    chunk_size: u32,
}

/// Why a job's rows do not add up, if they do not: its candidates are numbered from 0 without a
/// gap, as many as the job records, and every verdict and chunk names one that exists. A row lost
/// or edited by hand would otherwise shift every later verdict onto the wrong candidate.
fn rows_problem(rows: &JobRows) -> Option<String> {
    if let Some((expected, found)) = (0i64..)
        .zip(&rows.candidates)
        .find(|(expected, found)| *expected != **found)
    {
        return Some(if *found > expected {
            format!("its candidate {expected} is missing (the next one stored is {found})")
        } else {
            format!("a candidate is stored under index {found}, out of order")
        });
    }
    let stored = rows.candidates.len() as u64;
    if let Some(recorded) = rows.recorded
        && recorded != stored as i64
    {
        return Some(format!(
            "it records {recorded} candidates and {stored} are stored"
        ));
    }
    let within = |i: i64, end: u64| u64::try_from(i).is_ok_and(|i| i < end);
    if let Some(index) = rows.verdicts.iter().find(|&&i| !within(i, stored)) {
        return Some(format!(
            "a verdict is stored for candidate {index}, and it has {stored} candidates"
        ));
    }
    let chunks = stored.div_ceil(u64::from(rows.chunk_size.max(1)));
    if let Some(id) = rows.chunks.iter().find(|&&c| !within(c, chunks)) {
        return Some(format!(
            "chunk {id} is stored, and its {stored} candidates make {chunks} chunks"
        ));
    }
    None
}

fn write_records(
    tx: &rusqlite::Transaction<'_>,
    records: &[Record],
    next_lease: u64,
) -> rusqlite::Result<()> {
    for record in records {
        match record {
            Record::Job(job) => {
                tx.execute(
                    "INSERT INTO jobs (id, name, settings, state, reason, created_ms, ended_ms,
                        reassignments, stale_refused, handed_back, sources, source_specs, dropped,
                        candidates, report)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                     ON CONFLICT(id) DO UPDATE SET name = ?2, settings = ?3, state = ?4,
                        reason = ?5, created_ms = ?6, ended_ms = ?7, reassignments = ?8,
                        stale_refused = ?9, handed_back = ?10, sources = ?11, source_specs = ?12,
                        dropped = ?13, candidates = ?14, report = ?15",
                    params![
                        job.id,
                        job.name,
                        settings_to_json(&job.settings),
                        job.state.name(),
                        job.reason,
                        job.created_wall_ms as i64,
                        job.ended_wall_ms as i64,
                        job.reassignments as i64,
                        job.stale_refused as i64,
                        job.handed_back as i64,
                        sources_to_json(&job.sources),
                        specs_to_json(&job.source_specs),
                        serde_json::to_string(&job.dropped).unwrap_or_else(|_| "{}".into()),
                        job.candidate_count as i64,
                        job.report.as_ref().map(report_to_json),
                    ],
                )?;
            }
            Record::Candidates { job_id, candidates } => {
                tx.execute("DELETE FROM candidates WHERE job_id = ?1", [job_id])?;
                tx.execute("DELETE FROM verdicts WHERE job_id = ?1", [job_id])?;
                tx.execute("DELETE FROM chunks WHERE job_id = ?1", [job_id])?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO candidates (job_id, idx, url) VALUES (?1, ?2, ?3)",
                )?;
                for (i, c) in candidates.iter().enumerate() {
                    insert.execute(params![job_id, i as i64, c.full_url()])?;
                }
            }
            Record::Verdicts {
                job_id,
                first_position,
                verdicts,
            } => {
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO verdicts
                        (job_id, idx, usable, reason, latency_ms, connect_ms, exit_ip, anonymity,
                         detail, position, targets)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?;
                for (position, v) in (*first_position..).zip(verdicts) {
                    insert.execute(params![
                        job_id,
                        v.index as i64,
                        v.usable as i64,
                        v.reason.name(),
                        v.latency_ms as i64,
                        v.connect_ms as i64,
                        v.exit_ip,
                        v.anonymity.name(),
                        v.detail,
                        position as i64,
                        target_verdicts_to_json(&v.targets),
                    ])?;
                }
            }
            Record::Pool(PoolChange::Member {
                pool,
                version,
                member,
            }) => {
                tx.prepare_cached(
                    "INSERT INTO pool_members (pool, proxy, live, history) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(pool, proxy) DO UPDATE SET live = ?3, history = ?4",
                )?
                .execute(params![
                    pool,
                    member.candidate.full_url(),
                    member.live as i64,
                    member_to_json(member),
                ])?;
                tx.prepare_cached("UPDATE pools SET version = max(version, ?2) WHERE name = ?1")?
                    .execute(params![pool, *version as i64])?;
            }
            Record::Pool(PoolChange::Forget {
                pool,
                version,
                proxy,
            }) => {
                tx.execute(
                    "DELETE FROM pool_members WHERE pool = ?1 AND proxy = ?2",
                    params![pool, proxy],
                )?;
                tx.prepare_cached("UPDATE pools SET version = max(version, ?2) WHERE name = ?1")?
                    .execute(params![pool, *version as i64])?;
            }
            Record::Pool(PoolChange::Meta(meta)) => {
                tx.execute(
                    "INSERT INTO pools (name, settings, revalidate_every_ms, last_round_ms,
                        round_job, version)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(name) DO UPDATE SET settings = ?2, revalidate_every_ms = ?3,
                        last_round_ms = ?4, round_job = ?5, version = max(version, ?6)",
                    params![
                        meta.name,
                        meta.settings.as_ref().map(settings_to_json),
                        meta.revalidate_every.as_millis() as i64,
                        meta.last_round_ms as i64,
                        meta.round_job,
                        meta.version as i64,
                    ],
                )?;
            }
            Record::Chunk { job_id, chunk } => {
                tx.execute(
                    "INSERT OR REPLACE INTO chunks (job_id, chunk_id, attempts, leases, failed)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        job_id,
                        chunk.chunk_id as i64,
                        chunk.attempts as i64,
                        chunk.leases as i64,
                        chunk.failed as i64
                    ],
                )?;
            }
        }
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('next_lease', ?1)
         ON CONFLICT(key) DO UPDATE SET value = max(value, ?1)",
        [next_lease as i64],
    )?;
    Ok(())
}

/// A stored reason; a name this version does not know reads as a network failure.
fn reason_from_name(name: &str) -> Reason {
    Reason::from_name(name).unwrap_or(Reason::Network)
}

/// A stored grade; a name this version does not know reads as unknown.
fn anonymity_from_name(name: &str) -> Anonymity {
    Anonymity::from_name(name).unwrap_or(Anonymity::Unknown)
}

fn protocols_to_json(protocols: &[Protocol]) -> serde_json::Value {
    protocols
        .iter()
        .map(|p| p.scheme())
        .collect::<Vec<_>>()
        .into()
}

fn protocols_from_json(v: &serde_json::Value) -> Option<Vec<Protocol>> {
    v.as_array()?
        .iter()
        .map(|p| p.as_str()?.parse().ok())
        .collect()
}

fn settings_to_json(s: &JobSettings) -> String {
    serde_json::json!({
        "judge_urls": s.judge_urls,
        "protocols": protocols_to_json(&s.protocols),
        "timeout_ms": s.timeout.as_millis() as u64,
        "connect_timeout_ms": s.connect_timeout.as_millis() as u64,
        "max_latency_ms": s.filter.max_latency.map(|d| d.as_millis() as u64),
        "min_anonymity": s.filter.min_anonymity.map(Anonymity::name),
        "require_https": s.filter.require_https,
        "chunk_size": s.chunk_size,
        "min_usable": s.min_usable,
        "deadline_ms": s.deadline.as_millis() as u64,
        "max_attempts": s.max_attempts,
        "pool": s.pool,
        "max_failed_chunk_ratio": s.max_failed_chunk_ratio,
        "kind": s.kind.name(),
        "revalidate_every_ms": s.revalidate_every.map(|d| d.as_millis() as u64),
        "targets": s.targets.list.iter().map(target_to_json).collect::<Vec<_>>(),
        "targets_only": s.targets.only,
    })
    .to_string()
}

fn target_to_json(t: &CheckTarget) -> serde_json::Value {
    serde_json::json!({
        "url": t.url,
        "statuses": t.statuses,
        "body_contains": t.body_contains,
        "body_regex": t.body_regex,
        "max_latency_ms": t.max_latency.map(|d| d.as_millis() as u64),
        "name": t.name,
    })
}

fn target_from_json(v: &serde_json::Value) -> Option<CheckTarget> {
    let text = |key: &str| v.get(key).and_then(|x| x.as_str()).map(String::from);
    Some(CheckTarget {
        url: text("url")?,
        statuses: v
            .get("statuses")?
            .as_array()?
            .iter()
            .map(|s| s.as_u64().and_then(|s| u16::try_from(s).ok()))
            .collect::<Option<_>>()?,
        body_contains: text("body_contains")?,
        body_regex: text("body_regex")?,
        max_latency: v
            .get("max_latency_ms")
            .and_then(|x| x.as_u64())
            .map(Duration::from_millis),
        name: text("name")?,
    })
}

/// A verdict's target verdicts as one compact JSON array (NULL for none): `[target, passed,
/// reason, status, latency_ms, detail]` each.
fn target_verdicts_to_json(targets: &[TargetVerdict]) -> Option<String> {
    if targets.is_empty() {
        return None;
    }
    let rows: Vec<serde_json::Value> = targets
        .iter()
        .map(|t| {
            serde_json::json!([
                &*t.target,
                t.passed,
                t.reason.name(),
                t.status,
                t.latency_ms,
                &*t.detail
            ])
        })
        .collect();
    Some(serde_json::Value::from(rows).to_string())
}

/// Target verdicts as [`target_verdicts_to_json`] wrote them; an entry that does not read is
/// left out.
fn target_verdicts_from_json(text: &str) -> Vec<TargetVerdict> {
    let Ok(serde_json::Value::Array(rows)) = serde_json::from_str(text) else {
        return Vec::new();
    };
    rows.iter()
        .filter_map(|row| {
            let [target, passed, reason, status, latency, detail] = row.as_array()?.as_slice()
            else {
                return None;
            };
            Some(TargetVerdict {
                target: target.as_str()?.into(),
                passed: passed.as_bool()?,
                reason: reason_from_name(reason.as_str()?),
                status: u16::try_from(status.as_u64()?).ok()?,
                latency_ms: u32::try_from(latency.as_u64()?).ok()?,
                detail: detail.as_str()?.into(),
            })
        })
        .collect()
}

fn settings_from_json(text: &str) -> Option<JobSettings> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let ms = |key: &str| {
        v.get(key)
            .and_then(|x| x.as_u64())
            .map(Duration::from_millis)
    };
    Some(JobSettings {
        judge_urls: v
            .get("judge_urls")?
            .as_array()?
            .iter()
            .map(|u| u.as_str().map(String::from))
            .collect::<Option<_>>()?,
        protocols: protocols_from_json(v.get("protocols")?)?,
        timeout: ms("timeout_ms")?,
        connect_timeout: ms("connect_timeout_ms")?,
        filter: UsableFilter {
            max_latency: ms("max_latency_ms"),
            min_anonymity: v
                .get("min_anonymity")
                .and_then(|a| a.as_str())
                .map(anonymity_from_name),
            require_https: v.get("require_https")?.as_bool()?,
        },
        chunk_size: v.get("chunk_size")?.as_u64()? as u32,
        min_usable: v.get("min_usable")?.as_u64()?,
        deadline: ms("deadline_ms")?,
        max_attempts: v.get("max_attempts")?.as_u64()? as u32,
        pool: v.get("pool")?.as_str()?.to_string(),
        max_failed_chunk_ratio: v.get("max_failed_chunk_ratio")?.as_f64()?,
        // Stores from before pools hold refreshes only.
        kind: match v.get("kind").and_then(|k| k.as_str()) {
            Some("revalidation") => JobKind::Revalidation,
            _ => JobKind::Refresh,
        },
        revalidate_every: ms("revalidate_every_ms"),
        // Absent from a store written before check targets.
        targets: CheckTargets {
            list: match v.get("targets") {
                Some(list) => list
                    .as_array()?
                    .iter()
                    .map(target_from_json)
                    .collect::<Option<_>>()?,
                None => Default::default(),
            },
            only: v
                .get("targets_only")
                .and_then(|o| o.as_bool())
                .unwrap_or(false),
        },
    })
}

/// A member's history, as the store keeps it beside its proxy.
fn member_to_json(m: &Member) -> String {
    serde_json::json!({
        "live": m.live,
        "first_seen_ms": m.first_seen_ms,
        "last_seen_ms": m.last_seen_ms,
        "last_checked_ms": m.last_checked_ms,
        "successes": m.successes,
        "failures": m.failures,
        "checks": m.checks,
        "checks_usable": m.checks_usable,
        "latency_ms": m.latency_ms,
        "latency_avg_ms": m.latency_avg_ms,
        "anonymity": m.anonymity.name(),
        "exit_ip": m.exit_ip,
        "country": m.country,
        "last_reason": m.last_reason.name(),
        "last_detail": m.last_detail,
        "last_job_id": m.last_job_id,
    })
    .to_string()
}

fn member_from_json(candidate: crate::candidate::Candidate, text: &str) -> Option<Member> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let n = |key: &str| v.get(key).and_then(|x| x.as_u64());
    let s = |key: &str| {
        v.get(key)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    Some(Member {
        candidate,
        live: v.get("live")?.as_bool()?,
        first_seen_ms: n("first_seen_ms")?,
        last_seen_ms: n("last_seen_ms")?,
        last_checked_ms: n("last_checked_ms")?,
        successes: n("successes")? as u32,
        failures: n("failures")? as u32,
        checks: n("checks")?,
        checks_usable: n("checks_usable")?,
        latency_ms: n("latency_ms")? as u32,
        latency_avg_ms: n("latency_avg_ms")? as u32,
        anonymity: anonymity_from_name(&s("anonymity")),
        exit_ip: s("exit_ip"),
        country: s("country"),
        last_reason: reason_from_name(&s("last_reason")),
        last_detail: s("last_detail"),
        last_job_id: s("last_job_id"),
    })
}

fn report_to_json(report: &ReportCounts) -> String {
    let c = &report.chunks;
    serde_json::json!({
        "started_ms": report.started_wall_ms,
        "since_restart": report.since_restart,
        "duplicates": report.duplicates,
        "chunks": {
            "total": c.total, "queued": c.queued, "leased": c.leased, "done": c.done,
            "failed": c.failed, "split": c.split, "leases": c.leases, "attempts": c.attempts,
        },
        "workers": report.workers.iter().map(|(id, w)| serde_json::json!({
            "worker_id": id, "name": w.name, "verdicts": w.verdicts, "usable": w.usable,
        })).collect::<Vec<_>>(),
    })
    .to_string()
}

fn report_from_json(text: &str) -> Option<ReportCounts> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let c = v.get("chunks")?;
    let n = |name: &str| c.get(name)?.as_u64();
    Some(ReportCounts {
        started_wall_ms: v.get("started_ms")?.as_u64()?,
        since_restart: v.get("since_restart")?.as_bool()?,
        duplicates: v.get("duplicates")?.as_u64()?,
        chunks: ChunkCounts {
            total: n("total")?,
            queued: n("queued")?,
            leased: n("leased")?,
            done: n("done")?,
            failed: n("failed")?,
            split: n("split")?,
            leases: n("leases")?,
            attempts: n("attempts")?,
        },
        workers: v
            .get("workers")?
            .as_array()?
            .iter()
            .map(|w| {
                let tally = WorkerTally {
                    name: w.get("name")?.as_str()?.to_string(),
                    verdicts: w.get("verdicts")?.as_u64()?,
                    usable: w.get("usable")?.as_u64()?,
                };
                Some((w.get("worker_id")?.as_str()?.to_string(), tally))
            })
            .collect::<Option<_>>()?,
    })
}

fn sources_to_json(sources: &[SourceStatus]) -> String {
    let list: Vec<serde_json::Value> = sources
        .iter()
        .map(|s| {
            serde_json::json!({
                "url": s.url, "state": s.state.name(), "candidates": s.candidates,
                "rejected": s.rejected, "bytes": s.bytes, "error": s.error,
            })
        })
        .collect();
    serde_json::Value::from(list).to_string()
}

fn sources_from_json(text: &str) -> Option<Vec<SourceStatus>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.as_array()?
        .iter()
        .map(|s| {
            let state = match s.get("state")?.as_str()? {
                "fetched" => SourceState::Fetched,
                "failed" => SourceState::Failed,
                // A fetch in flight at a crash starts over.
                _ => SourceState::Pending,
            };
            Some(SourceStatus {
                url: s.get("url")?.as_str()?.to_string(),
                state,
                candidates: s.get("candidates")?.as_u64()?,
                rejected: s.get("rejected")?.as_u64()?,
                bytes: s.get("bytes")?.as_u64()?,
                error: s.get("error")?.as_str()?.to_string(),
            })
        })
        .collect()
}

fn specs_to_json(specs: &[SourceSpec]) -> String {
    let list: Vec<serde_json::Value> = specs
        .iter()
        .map(|s| {
            serde_json::json!({
                "url": s.url, "protocols": protocols_to_json(&s.protocols),
                "content": s.content, "trusted": s.trusted,
            })
        })
        .collect();
    serde_json::Value::from(list).to_string()
}

fn specs_from_json(text: &str) -> Option<Vec<SourceSpec>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.as_array()?
        .iter()
        .map(|s| {
            Some(SourceSpec {
                url: s.get("url")?.as_str()?.to_string(),
                protocols: protocols_from_json(s.get("protocols")?)?,
                content: s.get("content").and_then(|c| c.as_str()).map(String::from),
                trusted: s.get("trusted")?.as_bool()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::candidate::Candidate;

    fn dir(label: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "proxyfleet-store-{label}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn settings() -> JobSettings {
        JobSettings {
            judge_urls: vec!["http://127.0.0.1:1/judge".into()],
            protocols: vec![Protocol::Http, Protocol::Socks5],
            timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
            filter: UsableFilter {
                max_latency: Some(Duration::from_millis(900)),
                min_anonymity: Some(Anonymity::Anonymous),
                require_https: true,
            },
            chunk_size: 2,
            min_usable: 1,
            deadline: Duration::from_secs(60),
            max_attempts: 3,
            pool: "default".into(),
            max_failed_chunk_ratio: 0.5,
            kind: JobKind::Revalidation,
            revalidate_every: Some(Duration::from_secs(90)),
            targets: CheckTargets {
                list: vec![CheckTarget {
                    url: "http://127.0.0.1:2/shop".into(),
                    statuses: vec![200, 301],
                    body_contains: "Add to cart".into(),
                    body_regex: r"\d+ in stock".into(),
                    max_latency: Some(Duration::from_millis(1500)),
                    name: "shop".into(),
                }]
                .into(),
                only: true,
            },
        }
    }

    fn record(id: &str, state: JobState) -> JobRecord {
        JobRecord {
            id: id.into(),
            name: "n".into(),
            settings: settings(),
            state,
            reason: String::new(),
            created_wall_ms: 1,
            ended_wall_ms: if state.is_terminal() { 10 } else { 0 },
            reassignments: 2,
            stale_refused: 3,
            handed_back: 4,
            sources: vec![SourceStatus {
                url: "http://lists.test/a".into(),
                state: SourceState::Fetched,
                candidates: 2,
                rejected: 1,
                bytes: 30,
                error: String::new(),
            }],
            source_specs: vec![SourceSpec {
                url: "lists/a.txt".into(),
                protocols: vec![Protocol::Socks4],
                content: Some("1.2.3.4:80".into()),
                trusted: true,
            }],
            dropped: BTreeMap::from([("duplicate".into(), 1)]),
            candidate_count: 0,
            report: Some(ReportCounts {
                started_wall_ms: 2,
                chunks: ChunkCounts {
                    total: 3,
                    done: 2,
                    queued: 1,
                    split: 1,
                    leases: 5,
                    attempts: 2,
                    ..ChunkCounts::default()
                },
                workers: BTreeMap::from([(
                    "w-1".into(),
                    WorkerTally {
                        name: "box".into(),
                        verdicts: 7,
                        usable: 3,
                    },
                )]),
                since_restart: false,
                duplicates: 1,
            }),
        }
    }

    /// A job's record holding `candidates()`.
    fn record_with_candidates(id: &str, state: JobState) -> JobRecord {
        JobRecord {
            candidate_count: candidates().len() as u64,
            ..record(id, state)
        }
    }

    fn candidates() -> Vec<Candidate> {
        vec![
            Candidate {
                protocol: Protocol::Http,
                host: "192.0.2.1".into(),
                port: 80,
                auth: None,
            },
            Candidate {
                protocol: Protocol::Socks5,
                host: "2001:db8::1".into(),
                port: 1080,
                auth: Some(Box::new(("u".into(), "p".into()))),
            },
        ]
    }

    #[test]
    fn what_is_written_is_read_back() {
        let d = dir("roundtrip");
        let verdict = Verdict {
            index: 1,
            usable: true,
            reason: Reason::None,
            latency_ms: 12,
            exit_ip: "192.0.2.9".into(),
            detail: "".into(),
            anonymity: Anonymity::Elite,
            connect_ms: 3,
            targets: vec![TargetVerdict {
                target: "shop".into(),
                passed: false,
                reason: Reason::BodyMismatch,
                status: 200,
                latency_ms: 9,
                detail: "target \"shop\": body lacks \"Add to cart\"".into(),
            }],
        };
        {
            let mut store = Store::open(&d).unwrap();
            store
                .write(
                    &[
                        Record::Candidates {
                            job_id: "j".into(),
                            candidates: candidates().into(),
                        },
                        Record::Job(Box::new(record_with_candidates("j", JobState::Checking))),
                        Record::Verdicts {
                            job_id: "j".into(),
                            first_position: 0,
                            verdicts: vec![verdict.clone()],
                        },
                        Record::Chunk {
                            job_id: "j".into(),
                            chunk: ChunkRecord {
                                chunk_id: 0,
                                attempts: 2,
                                leases: 3,
                                failed: false,
                            },
                        },
                    ],
                    777,
                )
                .unwrap();
            // A verdict is never overwritten.
            let mut other = verdict.clone();
            other.usable = false;
            store
                .write(
                    &[Record::Verdicts {
                        job_id: "j".into(),
                        first_position: 1,
                        verdicts: vec![other],
                    }],
                    5,
                )
                .unwrap();
        }
        let store = Store::open(&d).unwrap();
        let (jobs, floor) = store.load().unwrap();
        assert_eq!(floor, 777, "the high-water mark never goes down");
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            jobs[0].record,
            record_with_candidates("j", JobState::Checking)
        );
        assert_eq!(jobs[0].candidates, candidates());
        assert_eq!(jobs[0].verdicts, vec![verdict]);
        assert_eq!(
            jobs[0].chunks,
            vec![ChunkRecord {
                chunk_id: 0,
                attempts: 2,
                leases: 3,
                failed: false
            }]
        );
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn ended_jobs_are_pruned_by_age() {
        let d = dir("prune");
        let mut store = Store::open(&d).unwrap();
        store
            .write(
                &[
                    Record::Job(Box::new(record_with_candidates("old", JobState::Succeeded))),
                    Record::Candidates {
                        job_id: "old".into(),
                        candidates: candidates().into(),
                    },
                    Record::Job(Box::new(record("running", JobState::Checking))),
                ],
                1,
            )
            .unwrap();
        assert_eq!(store.prune(11).unwrap(), vec!["old".to_string()]);
        let (jobs, _) = store.load().unwrap();
        assert_eq!(
            jobs.iter()
                .map(|j| j.record.id.as_str())
                .collect::<Vec<_>>(),
            ["running"]
        );
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_corrupt_file_is_refused_with_its_name() {
        let d = dir("corrupt");
        std::fs::write(d.join(DB_FILE), vec![0x5a; 8192]).unwrap();
        let err = Store::open(&d).err().expect("refused").to_string();
        assert!(err.contains(DB_FILE) && err.contains("corrupt"), "{err}");
        let _ = std::fs::remove_dir_all(d);
    }

    fn rows(candidates: Vec<i64>) -> JobRows {
        JobRows {
            recorded: Some(candidates.len() as i64),
            candidates,
            chunk_size: 2,
            ..JobRows::default()
        }
    }

    #[test]
    fn rows_that_add_up_pass() {
        assert_eq!(rows_problem(&rows(vec![])), None, "a job still scraping");
        let mut whole = rows(vec![0, 1, 2, 3, 4]);
        whole.verdicts = vec![0, 4];
        whole.chunks = vec![0, 2];
        assert_eq!(rows_problem(&whole), None);
        let legacy = JobRows {
            recorded: None,
            ..rows(vec![0, 1])
        };
        assert_eq!(rows_problem(&legacy), None, "a store from before the count");
    }

    #[test]
    fn a_gap_in_the_candidates_is_named() {
        let problem = rows_problem(&rows(vec![0, 1, 3, 4])).unwrap();
        assert!(problem.contains("candidate 2 is missing"), "{problem}");
        let problem = rows_problem(&rows(vec![1, 2])).unwrap();
        assert!(problem.contains("candidate 0 is missing"), "{problem}");
        let problem = rows_problem(&rows(vec![-1, 0])).unwrap();
        assert!(problem.contains("index -1"), "{problem}");
    }

    #[test]
    fn a_count_that_differs_from_the_rows_is_named() {
        // The last rows gone: the numbering alone cannot tell.
        let short = JobRows {
            recorded: Some(5),
            ..rows(vec![0, 1, 2])
        };
        let problem = rows_problem(&short).unwrap();
        assert!(problem.contains("records 5 candidates and 3"), "{problem}");
        let long = JobRows {
            recorded: Some(2),
            ..rows(vec![0, 1, 2])
        };
        assert!(rows_problem(&long).is_some());
    }

    #[test]
    fn verdicts_and_chunks_out_of_range_are_named() {
        let mut verdict = rows(vec![0, 1, 2]);
        verdict.verdicts = vec![1, 3];
        let problem = rows_problem(&verdict).unwrap();
        assert!(
            problem.contains("verdict is stored for candidate 3"),
            "{problem}"
        );
        let mut chunk = rows(vec![0, 1, 2]);
        chunk.chunks = vec![0, 1, 2];
        let problem = rows_problem(&chunk).unwrap();
        assert!(problem.contains("chunk 2"), "{problem}");
        let mut negative = rows(vec![0]);
        negative.verdicts = vec![-1];
        assert!(rows_problem(&negative).is_some());
    }

    #[test]
    fn a_store_missing_a_candidate_row_is_refused_naming_the_job() {
        let d = dir("tampered");
        let write = |store: &mut Store, id: &str| {
            store
                .write(
                    &[
                        Record::Candidates {
                            job_id: id.into(),
                            candidates: candidates().into(),
                        },
                        Record::Job(Box::new(record_with_candidates(id, JobState::Checking))),
                    ],
                    1,
                )
                .unwrap();
        };
        {
            let mut store = Store::open(&d).unwrap();
            write(&mut store, "whole");
            write(&mut store, "edited");
            store
                .conn
                .execute(
                    "DELETE FROM candidates WHERE job_id = 'edited' AND idx = 1",
                    [],
                )
                .unwrap();
        }
        let err = Store::open(&d).unwrap().load().expect_err("refused");
        assert!(
            matches!(&err, StoreError::Inconsistent { job_id, .. } if job_id == "edited"),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("job edited")
                && text.contains(DB_FILE)
                && text.contains("restore a backup"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_store_from_before_the_candidate_count_opens_and_is_written() {
        let d = dir("legacy");
        {
            let conn = Connection::open(d.join(DB_FILE)).unwrap();
            conn.execute_batch(&SCHEMA.replace(",\n    candidates INTEGER\n", "\n"))
                .unwrap();
            let columns: i64 = conn
                .query_row(
                    "SELECT count(*) FROM pragma_table_info('jobs') WHERE name = 'candidates'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(columns, 0, "the old schema");
        }
        let mut store = Store::open(&d).unwrap();
        store
            .write(
                &[
                    Record::Candidates {
                        job_id: "j".into(),
                        candidates: candidates().into(),
                    },
                    Record::Job(Box::new(record_with_candidates("j", JobState::Checking))),
                ],
                1,
            )
            .unwrap();
        let (jobs, _) = store.load().unwrap();
        assert_eq!(jobs[0].candidates, candidates());
        assert!(
            jobs[0].record.report.is_some(),
            "the report column was added"
        );
        // A job row without report counts (written before they were kept) reads as such.
        let old_row = JobRecord {
            report: None,
            ..record_with_candidates("j", JobState::Succeeded)
        };
        store.write(&[Record::Job(Box::new(old_row))], 1).unwrap();
        let (jobs, _) = store.load().unwrap();
        assert_eq!(jobs[0].record.report, None);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_full_disk_is_told_apart() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let err = write_error(Path::new("/data/proxyfleet.db"), full).to_string();
        assert!(
            err.contains("in /data: database or disk is full") && err.contains("free space"),
            "{err}"
        );
        let io = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            None,
        );
        let err = write_error(Path::new("/data/proxyfleet.db"), io).to_string();
        assert!(
            err.contains("/data/proxyfleet.db") && err.contains("disk"),
            "{err}"
        );
    }

    /// A job of `n` candidates (chunks of 2), with verdicts recorded in the order `recorded`;
    /// even indexes are usable.
    fn stored_job(d: &Path, n: u32, recorded: &[u32]) -> StoredRows {
        let list: Vec<Candidate> = (0..n)
            .map(|i| Candidate {
                protocol: Protocol::Http,
                host: format!("192.0.2.{}", i + 1),
                port: 8080,
                auth: None,
            })
            .collect();
        let mut job = record("j", JobState::Succeeded);
        job.candidate_count = u64::from(n);
        let verdicts = recorded
            .iter()
            .map(|&index| Verdict {
                index,
                usable: index % 2 == 0,
                reason: if index % 2 == 0 {
                    Reason::None
                } else {
                    Reason::Refused
                },
                latency_ms: 10 + index,
                exit_ip: "198.51.100.1".into(),
                detail: String::new().into(),
                anonymity: Anonymity::Elite,
                connect_ms: 1,
                targets: Vec::new(),
            })
            .collect::<Vec<_>>();
        let mut store = Store::open(d).unwrap();
        let (first, second) = verdicts.split_at(verdicts.len() / 2);
        store
            .write(
                &[
                    Record::Candidates {
                        job_id: "j".into(),
                        candidates: list.into(),
                    },
                    Record::Job(Box::new(job)),
                    Record::Verdicts {
                        job_id: "j".into(),
                        first_position: 0,
                        verdicts: first.to_vec(),
                    },
                    Record::Verdicts {
                        job_id: "j".into(),
                        first_position: first.len() as u64,
                        verdicts: second.to_vec(),
                    },
                    Record::Chunk {
                        job_id: "j".into(),
                        chunk: ChunkRecord {
                            chunk_id: 1,
                            attempts: 3,
                            leases: 3,
                            failed: true,
                        },
                    },
                ],
                1,
            )
            .unwrap();
        StoredRows {
            chunk_size: 2,
            total: u64::from(n),
        }
    }

    fn indexes(rows: &[ResultRow]) -> Vec<u32> {
        rows.iter()
            .map(|r| {
                r.candidate
                    .host
                    .rsplit('.')
                    .next()
                    .unwrap()
                    .parse::<u32>()
                    .unwrap()
                    - 1
            })
            .collect()
    }

    #[test]
    fn a_stored_job_reads_back_page_by_page_as_it_was_in_memory() {
        let d = dir("reader");
        // Candidates 2 and 3 (chunk 1) were never checked; 7 was recorded first.
        let stored = stored_job(&d, 8, &[7, 0, 1, 4, 5, 6]);
        let reader = Reader::open(&d).unwrap();
        let (all, next) = reader
            .results_page("j", stored, 0, 100, RowFilter::All)
            .unwrap();
        assert_eq!((indexes(&all), next), ((0..8).collect(), None));
        assert_eq!(all[7].verdict.as_ref().unwrap().latency_ms, 17);
        assert_eq!(all[2].verdict, None);
        assert_eq!(all[5].chunk_id, 2);
        let (page, next) = reader
            .results_page("j", stored, 1, 3, RowFilter::All)
            .unwrap();
        assert_eq!((indexes(&page), next), (vec![1, 2, 3], Some(4)));
        let (usable, _) = reader
            .results_page("j", stored, 0, 100, RowFilter::Usable)
            .unwrap();
        assert_eq!(indexes(&usable), [0, 4, 6]);
        let (usable, next) = reader
            .results_page("j", stored, 0, 2, RowFilter::Usable)
            .unwrap();
        assert_eq!((indexes(&usable), next), (vec![0, 4], Some(5)));
        let (unchecked, _) = reader
            .results_page("j", stored, 0, 100, RowFilter::Unchecked)
            .unwrap();
        assert_eq!(indexes(&unchecked), [2, 3]);
        // A follower that read the first 3 recorded (7, 0, 1) still needs 4, 5, 6 and the rest.
        let (rest, _) = reader.rest_page("j", stored, 3, 0, 100, false).unwrap();
        assert_eq!(indexes(&rest), [2, 3, 4, 5, 6]);
        let (rest, _) = reader.rest_page("j", stored, 3, 0, 100, true).unwrap();
        assert_eq!(indexes(&rest), [4, 6]);
        let (rest, _) = reader.rest_page("j", stored, 0, 0, 100, false).unwrap();
        assert_eq!(indexes(&rest), (0..8).collect::<Vec<_>>());
        let chunks = reader.chunks("j", stored).unwrap();
        let shape: Vec<(ChunkState, u32, u32, u32)> = chunks
            .iter()
            .map(|c| (c.state, c.size, c.checked, c.attempts))
            .collect();
        assert_eq!(
            shape,
            [
                (ChunkState::Done, 2, 2, 0),
                (ChunkState::Failed, 2, 0, 3),
                (ChunkState::Done, 2, 2, 0),
                (ChunkState::Done, 2, 2, 0),
            ]
        );
        // Restored in the order they were recorded.
        let job = Store::open(&d).unwrap().load_job("j").unwrap();
        let order: Vec<u32> = job.verdicts.iter().map(|v| v.index).collect();
        assert_eq!(order, [7, 0, 1, 4, 5, 6]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
