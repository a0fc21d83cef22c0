//! The verdict ledger: for every lease the worker was given and has not settled yet, its job and
//! chunk, where it stands with the coordinator, and the verdicts checked for it that the
//! coordinator has not said it handled. Plain data: the session tells it what happened and sends
//! the batches it hands out.
//!
//! Each verdict of a lease has a position, in the order it was checked. The coordinator handles
//! every position of a lease once (it records the verdict, or refuses and counts it as stale) and
//! says so (`VerdictsHandled`) once what it recorded is durable; the ledger then drops it. A
//! verdict sent on a stream that broke before that word came may or may not have been handled:
//! it goes out again on the next stream, at the same position, and the coordinator skips it if it
//! has handled it. So a worker coming back after a lost stream sends only what the coordinator
//! may lack, a verdict is counted once, and none is dropped before the coordinator has it.

use std::collections::BTreeMap;

use proxyfleet_proto::v1 as pb;

/// A lease's verdicts go out once this many wait, without waiting for the next flush.
pub(crate) const BATCH_MAX: usize = 256;

pub(crate) type LeaseId = u64;

/// Where a lease stands with the coordinator, as far as the worker knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Held by the worker's current session: its verdicts are recorded.
    Live,
    /// Complete: the coordinator recorded a verdict for every candidate of it.
    Done,
    /// No longer the worker's (revoked, handed back, or lost with its session). Checks in flight
    /// finish, and their verdicts still go out: the coordinator refuses and counts them.
    Ended,
}

/// One lease not settled yet.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    job_id: String,
    chunk_id: u32,
    standing: Standing,
    /// Its checks are still running: more verdicts may come.
    checking: bool,
    /// Verdicts the coordinator has not said it handled, in the order they were checked; the
    /// first is at position `handled`.
    outgoing: Vec<pb::Verdict>,
    /// Position of the first of `outgoing`: every verdict before it is handled.
    handled: u32,
    /// Position of the first verdict not sent on the current stream.
    unsent: u32,
}

impl Entry {
    /// Position after the last verdict checked.
    fn end(&self) -> u32 {
        self.handled + self.outgoing.len() as u32
    }

    /// Verdicts checked and not sent on the current stream.
    fn waiting(&self) -> usize {
        (self.end() - self.unsent) as usize
    }

    /// Nothing more will come of it: it is not live, its checks ended, and the coordinator
    /// handled every verdict of it.
    fn settled(&self) -> bool {
        self.standing != Standing::Live && !self.checking && self.outgoing.is_empty()
    }
}

/// Verdicts of one lease to send, with the job the coordinator counts them against and the
/// position of the first.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Batch {
    pub lease_id: LeaseId,
    pub job_id: String,
    pub first: u32,
    pub verdicts: Vec<pb::Verdict>,
}

/// The leases of a worker not settled yet; an entry goes once its lease is settled, so the ledger
/// holds no more than the leases in hand, those whose last checks are finishing, and verdicts in
/// flight.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Ordered by lease id, so batches go out in the order leases were granted.
    leases: BTreeMap<LeaseId, Entry>,
}

impl Ledger {
    /// A lease was granted to the worker's session; its checks start.
    pub fn assigned(&mut self, lease_id: LeaseId, job_id: String, chunk_id: u32) {
        self.leases.insert(
            lease_id,
            Entry {
                job_id,
                chunk_id,
                standing: Standing::Live,
                checking: true,
                outgoing: Vec::new(),
                handled: 0,
                unsent: 0,
            },
        );
    }

    /// Verdicts from a lease's checks; `ended` when its checks are over. Returns whether the
    /// lease's verdicts should go out now (a full batch, or its last), rather than at the next
    /// flush. Verdicts of a completed lease are dropped: the coordinator has one for every
    /// candidate of it already.
    pub fn checked(&mut self, lease_id: LeaseId, verdicts: Vec<pb::Verdict>, ended: bool) -> bool {
        let Some(entry) = self.leases.get_mut(&lease_id) else {
            return false;
        };
        if ended {
            entry.checking = false;
        }
        if entry.standing != Standing::Done {
            entry.outgoing.extend(verdicts);
        }
        let waiting = entry.waiting();
        let due = waiting > 0 && (ended || waiting >= BATCH_MAX);
        self.forget_if_settled(lease_id);
        due
    }

    /// The verdicts of one lease to send now, if any wait. They are kept until the coordinator
    /// says it handled them.
    pub fn take(&mut self, lease_id: LeaseId) -> Option<Batch> {
        let entry = self.leases.get_mut(&lease_id)?;
        if entry.waiting() == 0 {
            return None;
        }
        let first = entry.unsent;
        entry.unsent = entry.end();
        Some(Batch {
            lease_id,
            job_id: entry.job_id.clone(),
            first,
            verdicts: entry.outgoing[(first - entry.handled) as usize..].to_vec(),
        })
    }

    /// Every verdict waiting, a batch per lease.
    pub fn take_all(&mut self) -> Vec<Batch> {
        let waiting: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, e)| e.waiting() > 0)
            .map(|(id, _)| *id)
            .collect();
        waiting.into_iter().filter_map(|id| self.take(id)).collect()
    }

    /// A batch taken was not sent after all (the stream closed first): it waits again, with
    /// everything of its lease after it.
    pub fn not_sent(&mut self, lease_id: LeaseId, first: u32) {
        if let Some(entry) = self.leases.get_mut(&lease_id) {
            entry.unsent = entry.unsent.min(first).max(entry.handled);
        }
    }

    /// The coordinator handled the lease's verdicts before position `through`: they are dropped.
    pub fn handled(&mut self, lease_id: LeaseId, through: u32) {
        let Some(entry) = self.leases.get_mut(&lease_id) else {
            return;
        };
        // No further than what was sent: the rest it cannot have seen.
        let through = through.min(entry.unsent);
        if through > entry.handled {
            entry.outgoing.drain(..(through - entry.handled) as usize);
            entry.handled = through;
        }
        self.forget_if_settled(lease_id);
    }

    /// The coordinator recorded every verdict of the lease: nothing of it is sent any more.
    pub fn done(&mut self, lease_id: LeaseId) {
        if let Some(entry) = self.leases.get_mut(&lease_id) {
            entry.standing = Standing::Done;
            entry.handled = entry.end();
            entry.unsent = entry.handled;
            entry.outgoing.clear();
        }
        self.forget_if_settled(lease_id);
    }

    /// The lease is no longer the worker's (revoked, or handed back). Returns whether it was live
    /// until now. Its verdicts still go out, to be refused and counted.
    pub fn ended(&mut self, lease_id: LeaseId) -> bool {
        let Some(entry) = self.leases.get_mut(&lease_id) else {
            return false;
        };
        let was_live = entry.standing == Standing::Live;
        if was_live {
            entry.standing = Standing::Ended;
        }
        self.forget_if_settled(lease_id);
        was_live
    }

    /// The session's stream is lost, and with it every lease it held; returns those leases, whose
    /// checks should stop. Every verdict the coordinator has not said it handled goes out again on
    /// the next stream, at its position.
    pub fn session_lost(&mut self) -> Vec<LeaseId> {
        let lost = self.live();
        for entry in self.leases.values_mut() {
            entry.unsent = entry.handled;
            if entry.standing == Standing::Live {
                entry.standing = Standing::Ended;
            }
        }
        self.leases.retain(|_, e| !e.settled());
        lost
    }

    /// The leases the worker holds, in the order they were granted.
    pub fn live(&self) -> Vec<LeaseId> {
        self.leases
            .iter()
            .filter(|(_, e)| e.standing == Standing::Live)
            .map(|(id, _)| *id)
            .collect()
    }

    /// How many leases the worker holds.
    pub fn live_count(&self) -> usize {
        self.leases
            .values()
            .filter(|e| e.standing == Standing::Live)
            .count()
    }

    /// Whether any verdict waits to be sent on the current stream.
    pub fn has_waiting(&self) -> bool {
        self.leases.values().any(|e| e.waiting() > 0)
    }

    /// The job and chunk of a lease not settled yet.
    pub fn lease(&self, lease_id: LeaseId) -> Option<(&str, u32)> {
        self.leases
            .get(&lease_id)
            .map(|e| (e.job_id.as_str(), e.chunk_id))
    }

    /// Where a lease not settled yet stands.
    #[cfg(test)]
    pub fn standing(&self, lease_id: LeaseId) -> Option<Standing> {
        self.leases.get(&lease_id).map(|e| e.standing)
    }

    /// Leases not settled yet: the ledger's whole size.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    fn forget_if_settled(&mut self, lease_id: LeaseId) {
        if self.leases.get(&lease_id).is_some_and(Entry::settled) {
            self.leases.remove(&lease_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(indices: std::ops::Range<u32>) -> Vec<pb::Verdict> {
        indices
            .map(|index| pb::Verdict {
                index,
                reason: pb::Reason::Refused as i32,
                ..Default::default()
            })
            .collect()
    }

    /// A batch as (lease, job, first position, verdict indices).
    fn seen(batch: &Batch) -> (LeaseId, &str, u32, Vec<u32>) {
        let indices = batch.verdicts.iter().map(|v| v.index).collect();
        (batch.lease_id, batch.job_id.as_str(), batch.first, indices)
    }

    /// A ledger holding lease 7 of job "j", chunk 3.
    fn one_lease() -> Ledger {
        let mut ledger = Ledger::default();
        ledger.assigned(7, "j".into(), 3);
        ledger
    }

    #[test]
    fn a_lease_is_live_from_its_assignment_until_done() {
        let mut ledger = one_lease();
        assert_eq!(ledger.live(), [7]);
        assert_eq!(ledger.live_count(), 1);
        assert_eq!(ledger.lease(7), Some(("j", 3)));
        assert_eq!(ledger.standing(7), Some(Standing::Live));
        assert!(!ledger.checked(7, verdicts(0..3), false));
        assert!(
            ledger.checked(7, verdicts(3..5), true),
            "its last verdicts go at once"
        );
        let batch = ledger.take(7).unwrap();
        assert_eq!(seen(&batch), (7, "j", 0, vec![0, 1, 2, 3, 4]));
        assert_eq!(
            ledger.live(),
            [7],
            "live until the coordinator says it is done"
        );
        ledger.handled(7, 5);
        assert_eq!(ledger.live(), [7]);
        ledger.done(7);
        assert_eq!((ledger.len(), ledger.live_count()), (0, 0));
        assert_eq!(ledger.lease(7), None);
    }

    #[test]
    fn verdicts_go_out_once_per_stream_with_their_positions() {
        let mut ledger = one_lease();
        ledger.checked(7, verdicts(0..2), false);
        ledger.checked(7, verdicts(2..4), false);
        assert!(ledger.has_waiting());
        assert_eq!(
            seen(&ledger.take(7).unwrap()),
            (7, "j", 0, vec![0, 1, 2, 3])
        );
        assert!(!ledger.has_waiting());
        assert_eq!(ledger.take(7), None, "nothing goes twice on one stream");
        assert!(ledger.take_all().is_empty());
        ledger.checked(7, verdicts(4..5), false);
        assert_eq!(seen(&ledger.take_all()[0]), (7, "j", 4, vec![4]));
    }

    #[test]
    fn a_full_batch_is_due_before_the_flush() {
        let mut ledger = one_lease();
        let below = BATCH_MAX as u32 - 1;
        assert!(!ledger.checked(7, verdicts(0..below), false));
        assert!(ledger.checked(7, verdicts(below..below + 1), false));
        assert_eq!(ledger.take(7).unwrap().verdicts.len(), BATCH_MAX);
        assert!(
            !ledger.checked(7, Vec::new(), true),
            "an end with nothing waiting is not due"
        );
    }

    #[test]
    fn take_all_hands_out_a_batch_per_lease_in_grant_order() {
        let mut ledger = Ledger::default();
        for (lease_id, job) in [(9, "b"), (4, "a"), (6, "a")] {
            ledger.assigned(lease_id, job.into(), 0);
        }
        ledger.checked(9, verdicts(0..1), false);
        ledger.checked(4, verdicts(1..3), false);
        let batches: Vec<_> = ledger
            .take_all()
            .iter()
            .map(|b| (b.lease_id, b.verdicts.len()))
            .collect();
        assert_eq!(batches, [(4, 2), (9, 1)], "lease 6 holds nothing");
        assert_eq!(ledger.live(), [4, 6, 9]);
    }

    #[test]
    fn handled_verdicts_are_dropped_and_never_sent_again() {
        let mut ledger = one_lease();
        ledger.checked(7, verdicts(0..4), false);
        ledger.take(7);
        ledger.handled(7, 3);
        ledger.session_lost();
        assert_eq!(
            seen(&ledger.take(7).unwrap()),
            (7, "j", 3, vec![3]),
            "only what the coordinator did not confirm"
        );
        ledger.handled(7, 4);
        ledger.session_lost();
        assert_eq!(ledger.take(7), None);
        assert_eq!(ledger.len(), 1, "its checks are still running");
    }

    #[test]
    fn unconfirmed_verdicts_go_out_again_after_a_lost_stream_at_their_positions() {
        let mut ledger = one_lease();
        ledger.checked(7, verdicts(0..2), false);
        ledger.take(7); // positions 0 and 1, on a stream that then breaks
        ledger.checked(7, verdicts(2..3), false); // checked, not sent yet
        assert_eq!(ledger.session_lost(), [7]);
        assert_eq!(ledger.live_count(), 0);
        assert_eq!(seen(&ledger.take(7).unwrap()), (7, "j", 0, vec![0, 1, 2]));
        // That stream breaks too, the coordinator having confirmed one.
        ledger.handled(7, 1);
        ledger.session_lost();
        assert_eq!(seen(&ledger.take(7).unwrap()), (7, "j", 1, vec![1, 2]));
        assert!(
            ledger.session_lost().is_empty(),
            "nothing live is left to lose"
        );
    }

    #[test]
    fn reconnecting_again_and_again_with_everything_confirmed_sends_nothing() {
        let mut ledger = one_lease();
        ledger.checked(7, verdicts(0..5), false);
        ledger.take(7);
        ledger.handled(7, 5);
        for _ in 0..5 {
            ledger.session_lost();
            assert!(ledger.take_all().is_empty());
            assert!(!ledger.has_waiting());
        }
        assert_eq!(ledger.len(), 1, "its checks are still running");
        // Its last check ends late: only that verdict goes, after the others.
        ledger.checked(7, verdicts(5..6), true);
        assert_eq!(seen(&ledger.take(7).unwrap()), (7, "j", 5, vec![5]));
        ledger.handled(7, 6);
        assert_eq!(ledger.len(), 0, "settled: forgotten");
    }

    #[test]
    fn a_revoked_lease_sends_its_late_verdicts_with_its_job_then_goes() {
        let mut ledger = one_lease();
        ledger.checked(7, verdicts(0..2), false);
        assert!(ledger.ended(7), "it was live");
        assert!(!ledger.ended(7), "ending twice changes nothing");
        assert!(ledger.live().is_empty());
        assert_eq!(ledger.standing(7), Some(Standing::Ended));
        // Checks in flight finish after the revoke: their verdicts still carry the job.
        assert!(ledger.checked(7, verdicts(2..3), true));
        assert_eq!(seen(&ledger.take(7).unwrap()), (7, "j", 0, vec![0, 1, 2]));
        assert_eq!(ledger.len(), 1, "until the coordinator has them");
        ledger.handled(7, 3);
        assert_eq!(ledger.len(), 0, "settled: forgotten");
        assert!(
            !ledger.checked(7, verdicts(3..4), false),
            "nothing comes back"
        );
        assert_eq!(ledger.len(), 0);
    }

    #[test]
    fn a_revoked_lease_is_kept_while_its_checks_run() {
        let mut ledger = one_lease();
        ledger.ended(7);
        assert_eq!(ledger.len(), 1, "its checks in flight may still report");
        assert!(!ledger.checked(7, Vec::new(), true));
        assert_eq!(ledger.len(), 0);
    }

    #[test]
    fn a_done_lease_drops_what_it_still_holds_and_what_comes_later() {
        let mut ledger = one_lease();
        ledger.checked(7, verdicts(0..2), false);
        ledger.done(7);
        assert!(!ledger.has_waiting(), "the coordinator has them all");
        assert_eq!(ledger.standing(7), Some(Standing::Done));
        assert!(ledger.live().is_empty());
        assert!(!ledger.checked(7, verdicts(2..3), false));
        assert!(!ledger.has_waiting());
        assert!(!ledger.ended(7), "a done lease was not live");
        ledger.session_lost();
        assert!(ledger.take_all().is_empty());
        assert!(!ledger.checked(7, Vec::new(), true));
        assert_eq!(ledger.len(), 0);
    }

    #[test]
    fn a_done_lease_whose_checks_ended_goes_at_once() {
        let mut ledger = one_lease();
        ledger.checked(7, verdicts(0..2), true);
        ledger.take(7);
        ledger.done(7);
        assert_eq!(ledger.len(), 0);
        ledger.done(7);
        assert_eq!(ledger.len(), 0, "a second done is harmless");
    }

    #[test]
    fn a_batch_not_sent_waits_again_with_what_followed_it() {
        let mut ledger = one_lease();
        ledger.checked(7, verdicts(0..2), false);
        ledger.take(7);
        ledger.checked(7, verdicts(2..4), false);
        let batch = ledger.take(7).unwrap();
        assert_eq!(batch.first, 2);
        ledger.not_sent(7, batch.first);
        assert_eq!(seen(&ledger.take(7).unwrap()), (7, "j", 2, vec![2, 3]));
        // Never back past what the coordinator handled.
        ledger.handled(7, 3);
        ledger.not_sent(7, 0);
        assert_eq!(seen(&ledger.take(7).unwrap()), (7, "j", 3, vec![3]));
    }

    #[test]
    fn the_coordinator_cannot_confirm_what_was_not_sent() {
        let mut ledger = one_lease();
        ledger.checked(7, verdicts(0..2), false);
        ledger.take(7);
        ledger.checked(7, verdicts(2..4), false);
        ledger.handled(7, 100);
        assert_eq!(seen(&ledger.take(7).unwrap()), (7, "j", 2, vec![2, 3]));
        ledger.handled(7, 1);
        ledger.session_lost();
        assert_eq!(
            seen(&ledger.take(7).unwrap()),
            (7, "j", 2, vec![2, 3]),
            "a confirmation never goes back"
        );
    }

    #[test]
    fn unknown_leases_change_nothing() {
        let mut ledger = one_lease();
        assert!(!ledger.checked(99, verdicts(0..1), true));
        assert_eq!(ledger.take(99), None);
        assert!(!ledger.ended(99));
        ledger.done(99);
        ledger.handled(99, 5);
        ledger.not_sent(99, 0);
        assert_eq!(ledger.lease(99), None);
        assert_eq!(ledger.standing(99), None);
        assert_eq!((ledger.len(), ledger.live()), (1, vec![7]));
    }

    #[test]
    fn many_leases_leave_nothing_behind() {
        // Each settled lease is forgotten: the ledger does not grow with the leases seen.
        let mut ledger = Ledger::default();
        for lease_id in 0..10_000u64 {
            ledger.assigned(lease_id, format!("job-{}", lease_id % 7), lease_id as u32);
            ledger.checked(lease_id, verdicts(0..3), true);
            let batch = ledger.take(lease_id).unwrap();
            match lease_id % 3 {
                0 => ledger.done(lease_id),
                1 => {
                    ledger.ended(lease_id);
                    ledger.handled(lease_id, batch.first + batch.verdicts.len() as u32);
                }
                _ => {
                    ledger.session_lost();
                    let again = ledger.take(lease_id).unwrap();
                    assert_eq!(again, batch, "the same batch, at the same positions");
                    ledger.handled(lease_id, 3);
                }
            }
        }
        assert_eq!(ledger.len(), 0);
    }
}
