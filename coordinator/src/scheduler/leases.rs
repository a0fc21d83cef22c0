//! Worker sessions and the leases they hold: grant, renew, expire, hand back. Knows no job: a
//! lease names the chunk it covers by ids only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::{ChunkId, Hello, JudgeStatus, LeaseId, SessionId};

/// Judges whose status one session may report; jobs name a few each.
const MAX_JUDGES_PER_SESSION: usize = 1024;

/// The worker sessions and the leases they hold. Changed only through its methods, by the
/// scheduler.
#[derive(Debug)]
pub(super) struct Fleet {
    /// Open sessions, by id.
    sessions: BTreeMap<SessionId, Session>,
    /// Live leases, by id.
    leases: HashMap<LeaseId, Lease>,
    /// Ended leases, so late verdicts count against the right job, each once; dropped once the
    /// job leaves memory.
    retired: HashMap<LeaseId, Retired>,
    /// The id the next lease gets; ids stay unique across restarts (see [`Fleet::new`]).
    next_lease: LeaseId,
    /// The id the next session gets.
    next_session: SessionId,
}

impl Fleet {
    /// `first_lease_id` lets lease ids stay unique across coordinator restarts.
    pub(super) fn new(first_lease_id: LeaseId) -> Fleet {
        Fleet {
            sessions: BTreeMap::new(),
            leases: HashMap::new(),
            retired: HashMap::new(),
            next_lease: first_lease_id.max(1),
            next_session: 1,
        }
    }

    pub(super) fn next_lease_id(&self) -> LeaseId {
        self.next_lease
    }

    /// Opens a session for `hello`.
    pub(super) fn open(&mut self, hello: Hello, now: Instant) -> SessionId {
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
                retries: 0,
                pieces: 0,
                unchecked: 0,
                connected: now,
                last_seen: now,
                progressed: now,
                draining: false,
                silent: false,
                verdicts_accepted: 0,
                judges: BTreeMap::new(),
            },
        );
        id
    }

    /// Sessions of the worker named `worker_id`.
    pub(super) fn sessions_of(&self, worker_id: &str) -> Vec<SessionId> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.worker_id == worker_id)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Closes a session; its leases are still live, for the caller to lose.
    pub(super) fn close(&mut self, session: SessionId) -> Option<Session> {
        self.sessions.remove(&session)
    }

    /// Any message renews the sender's leases; a silent session that speaks again may get work.
    /// False for a session that is not open.
    pub(super) fn touch(&mut self, session: SessionId, now: Instant) -> bool {
        match self.sessions.get_mut(&session) {
            Some(s) => {
                s.last_seen = now;
                s.silent = false;
                true
            }
            None => false,
        }
    }

    pub(super) fn session(&self, session: SessionId) -> Option<&Session> {
        self.sessions.get(&session)
    }

    pub(super) fn sessions(&self) -> impl Iterator<Item = (&SessionId, &Session)> {
        self.sessions.iter()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The worker is shutting down: no new leases for it.
    pub(super) fn set_draining(&mut self, session: SessionId) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.draining = true;
        }
    }

    /// Records what a judge answered a session's worker directly; returns the worker's id and
    /// every judge down for it (URL and error), or `None` past the most a session may report.
    pub(super) fn judge_report(
        &mut self,
        session: SessionId,
        status: JudgeStatus,
    ) -> Option<(String, BTreeMap<String, String>)> {
        let s = self.sessions.get_mut(&session)?;
        // A worker reports the judges it was given; past so many, it reports nonsense.
        if s.judges.len() >= MAX_JUDGES_PER_SESSION && !s.judges.contains_key(&status.url) {
            return None;
        }
        s.judges.insert(status.url.clone(), status);
        let down = s
            .judges
            .values()
            .filter(|j| !j.ok)
            .map(|j| (j.url.clone(), j.error.clone()))
            .collect();
        Some((s.worker_id.clone(), down))
    }

    /// Marks sessions silent for `ttl` or longer as silent and takes their leases (still live,
    /// for the caller to lose).
    pub(super) fn silence(
        &mut self,
        now: Instant,
        ttl: Duration,
    ) -> Vec<(SessionId, BTreeSet<LeaseId>)> {
        self.sessions
            .iter_mut()
            .filter(|(_, s)| !s.silent && now.saturating_duration_since(s.last_seen) >= ttl)
            .map(|(id, s)| {
                s.silent = true;
                (*id, std::mem::take(&mut s.leases))
            })
            .collect()
    }

    /// Check slots over every session.
    pub(super) fn slots(&self) -> u64 {
        self.sessions
            .values()
            .map(|s| u64::from(s.max_checks))
            .sum()
    }

    /// The least loaded session that wants another lease (see [`Session::wants_work`]), of
    /// those not in `skip`.
    pub(super) fn pick(&self, ahead: bool, skip: &BTreeSet<SessionId>) -> Option<SessionId> {
        self.sessions
            .iter()
            .filter(|(id, s)| s.wants_work(ahead) && !skip.contains(id))
            .min_by_key(|(id, s)| (s.load(), **id))
            .map(|(id, _)| *id)
    }

    /// Sessions that may be leased work: not draining, not silent.
    pub(super) fn serving(&self) -> usize {
        self.sessions
            .values()
            .filter(|s| !s.draining && !s.silent)
            .count()
    }

    /// Grants `session` a lease on chunk `chunk` of job `job_id`, with `unchecked` candidates.
    pub(super) fn grant(
        &mut self,
        session: SessionId,
        job_id: &str,
        chunk: ChunkId,
        unchecked: u32,
        kind: LeaseKind,
        now: Instant,
    ) -> LeaseId {
        let lease_id = self.next_lease;
        self.next_lease += 1;
        self.leases.insert(
            lease_id,
            Lease {
                job_id: job_id.to_string(),
                chunk,
                session,
                unchecked,
                handled: 0,
                kind,
                progressed: now,
            },
        );
        let holder = self
            .sessions
            .get_mut(&session)
            .expect("a lease goes to an open session");
        holder.leases.insert(lease_id);
        holder.unchecked += u64::from(unchecked);
        match kind {
            LeaseKind::Retry => holder.retries += 1,
            LeaseKind::Piece => holder.pieces += 1,
            LeaseKind::Fresh | LeaseKind::Backup => {}
        }
        lease_id
    }

    /// Live leases, by id.
    pub(super) fn leases(&self) -> impl Iterator<Item = (&LeaseId, &Lease)> {
        self.leases.iter()
    }

    pub(super) fn lease(&self, lease_id: LeaseId) -> Option<&Lease> {
        self.leases.get(&lease_id)
    }

    /// The session holding a live lease.
    pub(super) fn holder(&self, lease_id: LeaseId) -> Option<SessionId> {
        self.leases.get(&lease_id).map(|l| l.session)
    }

    /// The job and chunk a lease, live or ended, was granted for.
    pub(super) fn granted_for(&self, lease_id: LeaseId) -> Option<(&str, ChunkId)> {
        self.leases
            .get(&lease_id)
            .map(|l| (l.job_id.as_str(), l.chunk))
            .or_else(|| {
                self.retired
                    .get(&lease_id)
                    .map(|r| (r.job_id.as_str(), r.chunk))
            })
    }

    /// Marks a lease's verdicts before position `through` handled; returns the mark it had, or
    /// `None` for a lease neither live nor retired (granted before a restart, or never).
    pub(super) fn handle(&mut self, lease_id: LeaseId, through: u32) -> Option<u32> {
        let mark = match self.leases.get_mut(&lease_id) {
            Some(lease) => &mut lease.handled,
            None => &mut self.retired.get_mut(&lease_id)?.handled,
        };
        let before = *mark;
        *mark = before.max(through);
        Some(before)
    }

    /// Live leases of a job, with their holders.
    pub(super) fn leases_of(&self, job_id: &str) -> Vec<(LeaseId, SessionId)> {
        self.leases
            .iter()
            .filter(|(_, l)| l.job_id == job_id)
            .map(|(id, l)| (*id, l.session))
            .collect()
    }

    pub(super) fn live_leases(&self) -> usize {
        self.leases.len()
    }

    /// `accepted` candidates of a lease got their verdicts from its holder `session`, and
    /// `duplicates` more were checked by it after another lease had recorded them.
    pub(super) fn checked(
        &mut self,
        lease_id: LeaseId,
        session: SessionId,
        accepted: u64,
        duplicates: u64,
        now: Instant,
    ) {
        let done = accepted + duplicates;
        if let Some(lease) = self.leases.get_mut(&lease_id) {
            lease.unchecked = lease.unchecked.saturating_sub(done as u32);
            if done > 0 {
                lease.progressed = now;
            }
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.verdicts_accepted += accepted;
            s.unchecked = s.unchecked.saturating_sub(done);
            if done > 0 {
                s.progressed = now;
            }
        }
    }

    /// Ends a live lease: its holder no longer has it, and late verdicts for it are refused.
    pub(super) fn retire(&mut self, lease_id: LeaseId) -> Option<Lease> {
        let lease = self.leases.remove(&lease_id)?;
        if let Some(s) = self.sessions.get_mut(&lease.session) {
            s.leases.remove(&lease_id);
            s.unchecked = s.unchecked.saturating_sub(u64::from(lease.unchecked));
            match lease.kind {
                LeaseKind::Retry => s.retries -= 1,
                LeaseKind::Piece => s.pieces -= 1,
                LeaseKind::Fresh | LeaseKind::Backup => {}
            }
        }
        let retired = Retired {
            job_id: lease.job_id.clone(),
            chunk: lease.chunk,
            handled: lease.handled,
        };
        self.retired.insert(lease_id, retired);
        Some(lease)
    }

    /// Forgets the ended leases of a job that left memory.
    pub(super) fn forget_job(&mut self, job_id: &str) {
        self.retired.retain(|_, r| r.job_id != job_id);
    }
}

/// A chunk leased to a session.
#[derive(Debug)]
pub(super) struct Lease {
    /// The job of the chunk it covers (an id only: this room knows no job).
    pub(super) job_id: String,
    /// The chunk it covers.
    pub(super) chunk: ChunkId,
    /// The session holding it.
    pub(super) session: SessionId,
    /// Candidates of the lease without a verdict yet.
    pub(super) unchecked: u32,
    /// Its worker's verdicts handled so far, by the positions the worker gave them (raised by
    /// [`Fleet::handle`]): a batch sent again after its stream broke is not handled twice.
    pub(super) handled: u32,
    /// What the chunk was when leased: how leases of suspect chunks are spread over sessions.
    pub(super) kind: LeaseKind,
    /// When it was granted or last brought a verdict: the slowest lease is the quietest.
    pub(super) progressed: Instant,
}

/// What a lease's chunk was when it was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LeaseKind {
    /// Never charged an attempt.
    Fresh,
    /// Charged an attempt: its last holder vanished with it.
    Retry,
    /// A piece of a chunk whose attempts ran out.
    Piece,
    /// A backup lease on a slow lease's chunk, at the job's tail.
    Backup,
}

/// What is kept of an ended lease.
#[derive(Debug)]
struct Retired {
    /// The job it was for.
    job_id: String,
    /// The chunk it covered.
    chunk: ChunkId,
    /// As [`Lease::handled`], kept on after the lease ended.
    handled: u32,
}

/// A worker's open stream, and what it holds.
#[derive(Debug)]
pub(super) struct Session {
    /// The worker's own id; a second session with the same id replaces this one.
    pub(super) worker_id: String,
    /// The worker's display name.
    pub(super) name: String,
    /// The worker's version, as it said hello.
    pub(super) version: String,
    /// The worker's address, as the coordinator saw it.
    pub(super) peer: String,
    /// Most leases it takes at once.
    pub(super) capacity: u32,
    /// Checks it runs at once (its check slots); 0 if it did not say.
    pub(super) max_checks: u32,
    /// Live leases it holds; changed by grant, retire and silence.
    pub(super) leases: BTreeSet<LeaseId>,
    /// Of those, leases of chunks charged an attempt ([`LeaseKind::Retry`]).
    pub(super) retries: u32,
    /// Of those, leases of pieces ([`LeaseKind::Piece`]).
    pub(super) pieces: u32,
    /// Candidates of its leases without a verdict yet: a worker is leased more only while this is
    /// below its `max_checks`, so no candidate waits in one worker while another has free slots.
    pub(super) unchecked: u64,
    /// When it said hello.
    pub(super) connected: Instant,
    /// When it last sent anything; renewed by every message.
    pub(super) last_seen: Instant,
    /// When it said hello or last brought a verdict: a worker quiet this long while it holds
    /// work is frozen, cut off or stuck, not merely busy.
    pub(super) progressed: Instant,
    /// Said `Draining`: gets no new lease.
    pub(super) draining: bool,
    /// Silent past the lease TTL: lost its leases, gets none until it speaks again.
    pub(super) silent: bool,
    /// Verdicts of its that were recorded.
    pub(super) verdicts_accepted: u64,
    /// Judges this worker asked directly, by URL.
    pub(super) judges: BTreeMap<String, JudgeStatus>,
}

impl Session {
    /// Whether the session may be leased another chunk: it is not draining or silent, holds fewer
    /// leases than its capacity, and holds fewer candidates than its check slots, or than twice
    /// its slots when `ahead` (or fewer than two leases, so a worker smaller than a chunk still
    /// has the next one at hand).
    pub(super) fn wants_work(&self, ahead: bool) -> bool {
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
    pub(super) fn load(&self) -> u64 {
        self.unchecked * 1000 / u64::from(self.max_checks.max(1))
    }
}
