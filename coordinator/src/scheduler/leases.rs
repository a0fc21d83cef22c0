//! Worker sessions and the leases they hold: grant, renew, expire, hand back. Knows no job: a
//! lease names the chunk it covers by ids only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::{ChunkId, JudgeStatus, LeaseId, SessionId};

#[derive(Debug)]
pub(super) struct Lease {
    pub(super) job_id: String,
    pub(super) chunk: ChunkId,
    pub(super) session: SessionId,
    /// Candidates of the lease without a verdict yet.
    pub(super) unchecked: u32,
}

#[derive(Debug)]
pub(super) struct Session {
    pub(super) worker_id: String,
    pub(super) name: String,
    pub(super) version: String,
    pub(super) peer: String,
    pub(super) capacity: u32,
    pub(super) max_checks: u32,
    pub(super) leases: BTreeSet<LeaseId>,
    /// Candidates of its leases without a verdict yet: a worker is leased more only while this is
    /// below its `max_checks`, so no candidate waits in one worker while another has free slots.
    pub(super) unchecked: u64,
    pub(super) connected: Instant,
    pub(super) last_seen: Instant,
    /// Said `Draining`: gets no new lease.
    pub(super) draining: bool,
    /// Silent past the lease TTL: lost its leases, gets none until it speaks again.
    pub(super) silent: bool,
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
