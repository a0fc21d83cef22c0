//! The scheduler's unit tests: every transition, with a clock passed in.

use super::*;
use crate::candidate::Protocol;

const TTL: Duration = Duration::from_secs(10);

pub(super) fn settings(chunk_size: u32, min_usable: u64) -> JobSettings {
    JobSettings {
        judge_urls: vec!["http://judge.test/judge".into()],
        protocols: vec![Protocol::Http],
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        filter: UsableFilter::default(),
        chunk_size,
        min_usable,
        deadline: Duration::from_secs(600),
        max_attempts: 3,
        pool: "default".into(),
        max_failed_chunk_ratio: 0.5,
        kind: JobKind::Refresh,
        revalidate_every: None,
        targets: Default::default(),
    }
}

fn candidates(n: u32) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            protocol: Protocol::Http,
            host: format!("10.0.{}.{}", i / 250, i % 250 + 1),
            port: 8080,
            auth: None,
        })
        .collect()
}

fn new_job(id: &str, n: u32, chunk_size: u32, min_usable: u64) -> NewJob {
    NewJob {
        id: id.into(),
        name: String::new(),
        settings: settings(chunk_size, min_usable),
        candidates: candidates(n),
        sources: Vec::new(),
        dropped: BTreeMap::new(),
    }
}

fn hello(worker: &str, capacity: u32) -> Hello {
    Hello {
        worker_id: worker.into(),
        name: worker.into(),
        version: "test".into(),
        peer: "127.0.0.1:1".into(),
        capacity,
        max_checks: 10,
    }
}

/// A worker with `slots` check slots that may hold a lease per slot, as workers do by default.
fn with_slots(worker: &str, slots: u32) -> Hello {
    Hello {
        max_checks: slots,
        ..hello(worker, slots)
    }
}

fn assignments(out: &[Outbound]) -> Vec<(SessionId, Assignment)> {
    out.iter()
        .filter_map(|o| match o {
            Outbound::Assign(s, a) => Some((*s, a.clone())),
            _ => None,
        })
        .collect()
}

fn verdicts_for(a: &Assignment, usable: impl Fn(u32) -> bool) -> Vec<Verdict> {
    a.candidates
        .iter()
        .map(|(i, _)| Verdict {
            index: *i,
            usable: usable(*i),
            reason: if usable(*i) {
                Reason::None
            } else {
                Reason::Refused
            },
            latency_ms: 1,
            exit_ip: "".into(),
            detail: "".into(),
            anonymity: if usable(*i) {
                Anonymity::Elite
            } else {
                Anonymity::Unknown
            },
            connect_ms: 1,
            targets: Vec::new(),
        })
        .collect()
}

/// A worker's message naming job `id` and no chunk.
fn of_job(id: &str) -> Named<'_> {
    Named {
        job_id: id,
        chunk_id: None,
    }
}

/// How messages name a lease, live or ended: by the job and chunk it was granted for.
fn live(a: &Assignment) -> LeaseRef {
    LeaseRef {
        lease_id: a.lease_id,
        job_id: a.job_id.clone(),
        chunk_id: Some(a.chunk_id),
    }
}

/// The positions acknowledged in `out`, by lease.
fn handled(out: &[Outbound]) -> Vec<(SessionId, LeaseId, u32)> {
    out.iter()
        .filter_map(|o| match o {
            Outbound::VerdictsHandled(s, l, through) => Some((*s, *l, *through)),
            _ => None,
        })
        .collect()
}

struct Clock {
    start: Instant,
    now: Instant,
}

impl Clock {
    fn new() -> Self {
        let start = Instant::now();
        Clock { start, now: start }
    }
    fn advance(&mut self, d: Duration) -> Instant {
        self.now += d;
        self.now
    }
    fn wall(&self) -> u64 {
        self.now.duration_since(self.start).as_millis() as u64
    }
}

fn scheduler() -> Scheduler {
    Scheduler::new(
        LeaseConfig {
            lease_ttl: TTL,
            default_judges: vec!["http://judge.test/judge".into()],
            speculation: true,
        },
        1,
    )
}

fn state(s: &Scheduler, job: &str, t: Instant) -> JobState {
    s.snapshot(job, false, t).unwrap().state
}

#[test]
fn a_job_with_workers_runs_to_success() {
    let c = Clock::new();
    let mut s = scheduler();
    let out = s.submit(new_job("j", 10, 4, 2), c.now, c.wall());
    assert!(assignments(&out).is_empty(), "no worker yet");
    assert_eq!(state(&s, "j", c.now), JobState::Checking);
    let (w, out) = s.hello(hello("w1", 2), c.now);
    let first = assignments(&out);
    assert_eq!(first.len(), 2, "assigned up to capacity");
    assert!(first.iter().all(|(sess, a)| *sess == w && a.attempt == 1));
    let out = s.verdicts(
        w,
        first[0].1.lease_id,
        verdicts_for(&first[0].1, |i| i < 3),
        c.now,
        c.wall(),
    );
    assert!(out.contains(&Outbound::LeaseDone(w, live(&first[0].1))));
    let third = assignments(&out);
    assert_eq!(third.len(), 1, "the freed credit gets the last chunk");
    assert_eq!(third[0].1.candidates.len(), 2);
    for (_, a) in [first[1].clone(), third[0].clone()] {
        s.verdicts(w, a.lease_id, verdicts_for(&a, |_| false), c.now, c.wall());
    }
    let snap = s.snapshot("j", true, c.now).unwrap();
    assert_eq!(snap.state, JobState::Succeeded);
    assert_eq!(snap.progress.proxies_checked, 10);
    assert_eq!(snap.progress.proxies_usable, 3);
    assert_eq!(snap.progress.chunks_done, 3);
    let results = s.results("j", RowFilter::All).unwrap();
    assert_eq!(results.len(), 10);
    assert!(results.iter().all(|r| r.verdict.is_some()));
    assert_eq!(s.results("j", RowFilter::Usable).unwrap().len(), 3);
}

#[test]
fn workers_are_leased_by_free_check_slots() {
    let c = Clock::new();
    let mut s = scheduler();
    // 20 chunks of 15; each worker has 20 slots and room for 100 leases.
    s.submit(new_job("j", 300, 15, 0), c.now, c.wall());
    let slots = |name| Hello {
        max_checks: 20,
        ..hello(name, 100)
    };
    let (w1, out) = s.hello(slots("w1"), c.now);
    // Queue deeper than every slot: twice the slots (40) may be held.
    assert_eq!(
        assignments(&out).len(),
        3,
        "45 candidates for 20 slots and 20 ahead"
    );
    let (w2, out) = s.hello(slots("w2"), c.now);
    assert_eq!(assignments(&out).len(), 3);
    // Verdicts free slots: a partial batch frees no whole chunk's room yet...
    let held = |s: &Scheduler, w| s.fleet.session(w).unwrap().unchecked;
    assert_eq!((held(&s, w1), held(&s, w2)), (45, 45));
    let lease = s
        .fleet
        .session(w1)
        .unwrap()
        .leases
        .iter()
        .next()
        .copied()
        .unwrap();
    let chunk = s.fleet.lease(lease).unwrap().chunk;
    let range = s.jobs["j"].chunks[chunk as usize].range.clone();
    let refused = |index| Verdict {
        index,
        usable: false,
        reason: Reason::Refused,
        latency_ms: 1,
        exit_ip: "".into(),
        detail: "".into(),
        anonymity: Anonymity::Unknown,
        connect_ms: 1,
        targets: Vec::new(),
    };
    let partial: Vec<Verdict> = range.clone().take(4).map(refused).collect();
    let out = s.verdicts(w1, lease, partial, c.now, c.wall());
    assert_eq!(held(&s, w1), 41);
    assert!(assignments(&out).is_empty(), "41 held is past 40");
    // ...and a finished chunk lets the next one in.
    let rest: Vec<Verdict> = range.skip(4).map(refused).collect();
    let out = s.verdicts(w1, lease, rest, c.now, c.wall());
    assert_eq!(assignments(&out).len(), 1);
    assert_eq!(held(&s, w1), 45);
}

#[test]
fn near_the_end_of_the_queue_no_worker_holds_more_than_its_slots() {
    let c = Clock::new();
    let mut s = scheduler();
    // 8 chunks of 10 for two workers of 20 slots each.
    s.submit(new_job("j", 80, 10, 0), c.now, c.wall());
    let slots = |name| Hello {
        max_checks: 20,
        ..hello(name, 100)
    };
    let (w1, out) = s.hello(slots("w1"), c.now);
    let w1_leases = assignments(&out);
    assert_eq!(
        w1_leases.len(),
        4,
        "80 queued for 20 slots: 20 ahead allowed"
    );
    let (w2, out) = s.hello(slots("w2"), c.now);
    let w2_leases = assignments(&out);
    assert_eq!(w2_leases.len(), 2, "30 queued of 40 slots: none ahead");
    // w1 finishes a chunk: it holds 30 for its 20 slots, so no more for it.
    let a = &w1_leases[0].1;
    let out = s.verdicts(w1, a.lease_id, verdicts_for(a, |_| false), c.now, c.wall());
    assert!(assignments(&out).is_empty());
    // w2 finishes one: it has 10 free slots and gets the next chunk, and only that.
    let a = &w2_leases[0].1;
    let out = s.verdicts(w2, a.lease_id, verdicts_for(a, |_| false), c.now, c.wall());
    let last = assignments(&out);
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].0, w2);
}

#[test]
fn too_few_usable_is_insufficient() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 3, 10, 5), c.now, c.wall());
    let (w, out) = s.hello(hello("w", 1), c.now);
    let a = assignments(&out).remove(0).1;
    s.verdicts(w, a.lease_id, verdicts_for(&a, |i| i == 0), c.now, c.wall());
    let snap = s.snapshot("j", false, c.now).unwrap();
    assert_eq!(snap.state, JobState::Insufficient);
    assert!(snap.reason.contains("only 1 usable"), "{}", snap.reason);
}

#[test]
fn an_empty_job_ends_at_once() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 0, 10, 0), c.now, c.wall());
    assert_eq!(state(&s, "j", c.now), JobState::Succeeded);
}

#[test]
fn a_broken_stream_requeues_at_once_and_keeps_recorded_verdicts() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 4, 4, 1), c.now, c.wall());
    let (w1, out) = s.hello(hello("w1", 1), c.now);
    let a = assignments(&out).remove(0).1;
    let mut partial = verdicts_for(&a, |_| true);
    partial.truncate(2);
    s.verdicts(w1, a.lease_id, partial, c.now, c.wall());
    assert!(
        assignments(&s.disconnect(w1, c.now)).is_empty(),
        "nobody to take it"
    );
    let snap = s.snapshot("j", true, c.now).unwrap();
    assert_eq!(snap.progress.reassignments, 1);
    assert_eq!(snap.chunks[0].state, ChunkState::Queued);
    assert_eq!(snap.chunks[0].attempts, 1);
    let (w2, out) = s.hello(hello("w2", 1), c.now);
    let b = assignments(&out).remove(0).1;
    assert_eq!(b.attempt, 2);
    let idx: Vec<u32> = b.candidates.iter().map(|(i, _)| *i).collect();
    assert_eq!(idx, [2, 3], "only the unchecked proxies are checked again");
    s.verdicts(w2, b.lease_id, verdicts_for(&b, |_| false), c.now, c.wall());
    let snap = s.snapshot("j", false, c.now).unwrap();
    assert_eq!(snap.state, JobState::Succeeded);
    assert_eq!(
        (snap.progress.proxies_checked, snap.progress.proxies_usable),
        (4, 2)
    );
}

#[test]
fn silence_past_the_ttl_expires_leases_and_late_verdicts_are_refused() {
    let mut c = Clock::new();
    let mut s = scheduler();
    let mut job = new_job("j", 4, 4, 1);
    // Checks may take longer than the TTL: no backup lease comes before it.
    job.settings.timeout = TTL;
    s.submit(job, c.now, c.wall());
    let (frozen, out) = s.hello(hello("frozen", 1), c.now);
    let a = assignments(&out).remove(0).1;
    let (other, _) = s.hello(hello("other", 1), c.now);
    // Just before the TTL nothing happens; the other worker keeps speaking.
    let t = c.advance(TTL - Duration::from_millis(1));
    s.heartbeat(other, &[], t);
    assert!(assignments(&s.tick(t, c.wall())).is_empty());
    let t = c.advance(Duration::from_millis(1));
    s.heartbeat(other, &[], t);
    let out = s.tick(t, c.wall());
    assert!(out.contains(&Outbound::Revoke(
        frozen,
        live(&a),
        "lease expired: no message within the lease ttl"
    )));
    let b = assignments(&out);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].0, other, "the silent session gets nothing");
    // The frozen worker wakes up and sends its verdicts: refused, counted, nothing recorded.
    let out = s.verdicts(frozen, a.lease_id, verdicts_for(&a, |_| true), t, c.wall());
    assert_eq!(out, [Outbound::Revoke(frozen, live(&a), "stale lease")]);
    let snap = s.snapshot("j", false, t).unwrap();
    assert_eq!(snap.progress.stale_verdicts_refused, 4);
    assert_eq!(snap.progress.proxies_checked, 0);
    s.verdicts(
        other,
        b[0].1.lease_id,
        verdicts_for(&b[0].1, |_| false),
        t,
        c.wall(),
    );
    let snap = s.snapshot("j", false, t).unwrap();
    assert_eq!(snap.state, JobState::Insufficient);
    assert_eq!(
        (snap.progress.proxies_checked, snap.progress.proxies_usable),
        (4, 0)
    );
    assert_eq!(s.stale_refused_total(), 4);
    // Having spoken again, the once-silent worker is active again.
    assert!(s.workers(t).iter().all(|w| w.status == "active"));
}

#[test]
fn a_batch_is_acknowledged_and_handled_once_by_position() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 4, 4, 0), c.now, c.wall());
    let (w, out) = s.hello(hello("w", 1), c.now);
    let a = assignments(&out).remove(0).1;
    let all = verdicts_for(&a, |i| i == 0);
    let out = s.verdicts_of_job(
        w,
        a.lease_id,
        of_job("j"),
        Some(0),
        all[..2].to_vec(),
        c.now,
        c.wall(),
    );
    assert_eq!(handled(&out), [(w, a.lease_id, 2)]);
    // The same batch again, and one more verdict: only the new one is recorded.
    let out = s.verdicts_of_job(
        w,
        a.lease_id,
        of_job("j"),
        Some(0),
        all[..3].to_vec(),
        c.now,
        c.wall(),
    );
    assert_eq!(handled(&out), [(w, a.lease_id, 3)]);
    let p = s.snapshot("j", false, c.now).unwrap().progress;
    assert_eq!((p.proxies_checked, p.proxies_usable), (3, 1));
    // A batch from before what was handled changes nothing.
    let out = s.verdicts_of_job(
        w,
        a.lease_id,
        of_job("j"),
        Some(1),
        all[1..2].to_vec(),
        c.now,
        c.wall(),
    );
    assert_eq!(
        handled(&out),
        [(w, a.lease_id, 3)],
        "the mark does not go back"
    );
    let out = s.verdicts_of_job(
        w,
        a.lease_id,
        of_job("j"),
        Some(3),
        all[3..].to_vec(),
        c.now,
        c.wall(),
    );
    assert_eq!(handled(&out), [(w, a.lease_id, 4)]);
    assert!(out.contains(&Outbound::LeaseDone(w, live(&a))));
    let p = s.snapshot("j", false, c.now).unwrap().progress;
    assert_eq!((p.proxies_checked, p.stale_verdicts_refused), (4, 0));
}

#[test]
fn verdicts_sent_again_after_a_broken_stream_are_counted_once() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 4, 4, 0), c.now, c.wall());
    let (w1, out) = s.hello(hello("w", 1), c.now);
    let a = assignments(&out).remove(0).1;
    let all = verdicts_for(&a, |_| false);
    // Two verdicts recorded; the stream breaks before the worker hears so, and before a third
    // one arrives.
    s.verdicts_of_job(
        w1,
        a.lease_id,
        of_job("j"),
        Some(0),
        all[..2].to_vec(),
        c.now,
        c.wall(),
    );
    s.disconnect(w1, c.now);
    let (w2, _) = s.hello(hello("w", 1), c.now);
    // Sent again on the next stream: the two recorded ones are skipped, the third is late.
    let out = s.verdicts_of_job(
        w2,
        a.lease_id,
        of_job("j"),
        Some(0),
        all[..3].to_vec(),
        c.now,
        c.wall(),
    );
    assert!(out.contains(&Outbound::Revoke(w2, live(&a), "stale lease")));
    assert_eq!(handled(&out), [(w2, a.lease_id, 3)]);
    let p = s.snapshot("j", false, c.now).unwrap().progress;
    assert_eq!((p.proxies_checked, p.stale_verdicts_refused), (2, 1));
    // That stream breaks too before the acknowledgement: sent once more, counted no more.
    s.disconnect(w2, c.now);
    let (w3, _) = s.hello(hello("w", 1), c.now);
    let out = s.verdicts_of_job(
        w3,
        a.lease_id,
        of_job("j"),
        Some(0),
        all[..3].to_vec(),
        c.now,
        c.wall(),
    );
    assert_eq!(handled(&out), [(w3, a.lease_id, 3)]);
    let p = s.snapshot("j", false, c.now).unwrap().progress;
    assert_eq!((p.proxies_checked, p.stale_verdicts_refused), (2, 1));
    assert_eq!(s.stale_refused_total(), 1);
    // Verdicts without positions (an older worker) are counted as they come.
    s.verdicts_of_job(
        w3,
        a.lease_id,
        of_job("j"),
        None,
        all[..1].to_vec(),
        c.now,
        c.wall(),
    );
    assert_eq!(s.stale_refused_total(), 2);
}

#[test]
fn of_a_lease_granted_before_a_restart_only_verdicts_not_recorded_count() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 4, 4, 0), c.now, c.wall());
    let (w, out) = s.hello(hello("w", 1), c.now);
    let a = assignments(&out).remove(0).1;
    let all = verdicts_for(&a, |_| false);
    s.verdicts_of_job(
        w,
        a.lease_id,
        of_job("j"),
        Some(0),
        all[..2].to_vec(),
        c.now,
        c.wall(),
    );
    // Lease 999 is none of this scheduler's: of its batch, the two verdicts for candidates
    // recorded may be these very ones, recorded before a restart; they are not counted again.
    let out = s.verdicts_of_job(w, 999, of_job("j"), Some(0), all.clone(), c.now, c.wall());
    assert_eq!(handled(&out), [(w, 999, 4)]);
    let p = s.snapshot("j", false, c.now).unwrap().progress;
    assert_eq!((p.proxies_checked, p.stale_verdicts_refused), (2, 2));
    // Without positions, every one of them counts.
    s.verdicts_of_job(w, 999, of_job("j"), None, all, c.now, c.wall());
    assert_eq!(s.stale_refused_total(), 6);
}

#[test]
fn a_heartbeat_renews_and_revokes_leases_not_held() {
    let mut c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 4, 4, 1), c.now, c.wall());
    let (w, out) = s.hello(hello("w", 1), c.now);
    let a = assignments(&out).remove(0).1;
    for _ in 0..5 {
        let t = c.advance(TTL / 2);
        let out = s.heartbeat(w, &[a.lease_id, 999], t);
        let unknown = LeaseRef {
            lease_id: 999,
            job_id: String::new(),
            chunk_id: None,
        };
        assert_eq!(out, [Outbound::Revoke(w, unknown, "stale lease")]);
        assert!(
            s.tick(t, c.wall()).is_empty(),
            "heartbeats keep the lease alive"
        );
    }
}

#[test]
fn a_heartbeat_naming_many_more_leases_than_it_claims_is_handled() {
    let mut c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 8, 4, 1), c.now, c.wall());
    let (w, _) = s.hello(hello("w", 1), c.now);
    let t = c.advance(TTL / 4);
    // Far more entries than a worker holds: each claimed lease is looked up once, and only as
    // many entries as it claims are read.
    let held: Vec<LeaseRef> = (0..200_000)
        .map(|i| LeaseRef {
            lease_id: 10_000 + i,
            job_id: "j".into(),
            chunk_id: Some(0),
        })
        .collect();
    let claimed: Vec<LeaseId> = (10_000..10_000 + 2_000).collect();
    let out = s.heartbeat_naming(w, &claimed, &held, t);
    let revoked: Vec<&LeaseRef> = out
        .iter()
        .filter_map(|o| match o {
            Outbound::Revoke(_, lease, "stale lease") => Some(lease),
            _ => None,
        })
        .collect();
    assert_eq!(revoked.len(), claimed.len());
    assert_eq!(revoked[0], &held[0]);
    // An entry past the claimed count names nothing.
    let beyond = s.heartbeat_naming(w, &[10_000 + 5_000], &held, t);
    assert_eq!(
        beyond,
        [Outbound::Revoke(
            w,
            LeaseRef {
                lease_id: 15_000,
                job_id: String::new(),
                chunk_id: None,
            },
            "stale lease"
        )]
    );
}

#[test]
fn a_lease_granted_before_a_restart_is_revoked_with_the_ids_the_worker_names() {
    let mut c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 8, 4, 1), c.now, c.wall());
    let (w, _) = s.hello(hello("w", 1), c.now);
    // Lease 999 was never granted by this scheduler: it is one of the coordinator's before a
    // restart, which the worker still holds.
    let t = c.advance(TTL / 4);
    let held = [LeaseRef {
        lease_id: 999,
        job_id: "j".into(),
        chunk_id: Some(1),
    }];
    let out = s.heartbeat_naming(w, &[999], &held, t);
    assert_eq!(out, [Outbound::Revoke(w, held[0].clone(), "stale lease")]);

    // Its verdicts name the job and chunk; from a worker that names no chunk, the chunk holding
    // the verdicts is named.
    let late = |index: u32| {
        vec![Verdict {
            index,
            usable: false,
            reason: Reason::Refused,
            latency_ms: 0,
            exit_ip: "".into(),
            detail: "".into(),
            anonymity: Anonymity::Unknown,
            connect_ms: 0,
            targets: Vec::new(),
        }]
    };
    for chunk_id in [Some(1), None] {
        let named = Named {
            job_id: "j",
            chunk_id,
        };
        let out = s.verdicts_of_job(w, 999, named, Some(0), late(5), t, c.wall());
        let revoke = out
            .iter()
            .find_map(|o| match o {
                Outbound::Revoke(_, lease, why) => Some((lease.clone(), *why)),
                _ => None,
            })
            .expect("a revoke");
        assert_eq!(revoke, (held[0].clone(), "stale lease"), "{chunk_id:?}");
    }

    // Once the job ended and left memory, the chunk is still named from the verdicts.
    s.cancel("j", t, c.wall()).unwrap();
    assert!(s.keep_in_store("j"));
    let named = Named {
        job_id: "j",
        chunk_id: None,
    };
    let out = s.verdicts_of_job(w, 1000, named, None, late(6), t, c.wall());
    let expected = LeaseRef {
        lease_id: 1000,
        job_id: "j".into(),
        chunk_id: Some(1),
    };
    assert_eq!(out, [Outbound::Revoke(w, expected, "stale lease")]);
    // An index outside the job names no chunk rather than a wrong one.
    let out = s.verdicts_of_job(w, 1001, named, None, late(80), t, c.wall());
    assert!(
        matches!(&out[..], [Outbound::Revoke(_, lease, _)] if lease.chunk_id.is_none()),
        "{out:?}"
    );
}

#[test]
fn a_second_hello_replaces_the_session_and_ends_its_leases() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 4, 4, 1), c.now, c.wall());
    let (old, out) = s.hello(hello("w", 1), c.now);
    let a = assignments(&out).remove(0).1;
    let (new, out) = s.hello(hello("w", 1), c.now);
    assert!(out.contains(&Outbound::Close(old)));
    let b = assignments(&out);
    assert_eq!(b[0].0, new);
    assert_eq!(b[0].1.attempt, 2);
    s.verdicts(old, a.lease_id, verdicts_for(&a, |_| true), c.now, c.wall());
    let snap = s.snapshot("j", false, c.now).unwrap();
    assert_eq!(
        snap.progress.proxies_checked, 0,
        "an ended session's verdicts count for nothing"
    );
    assert_eq!(s.workers(c.now).len(), 1);
}

/// Runs job `job` with `workers` workers of `slots` check slots until it ends, in which every
/// worker that is leased candidate `poison` dies with all its leases (and another starts in its
/// place), and every other lease is checked whole. Returns how many workers died.
fn run_with_poison(
    s: &mut Scheduler,
    c: &Clock,
    job: &str,
    poison: u32,
    workers: u32,
    slots: u32,
) -> u32 {
    let mut pending: VecDeque<(SessionId, Assignment)> = VecDeque::new();
    let mut dead = BTreeSet::new();
    let mut started = 0;
    let mut start = |s: &mut Scheduler, pending: &mut VecDeque<_>| {
        started += 1;
        let (_, out) = s.hello(with_slots(&format!("w{started}"), slots), c.now);
        pending.extend(assignments(&out));
    };
    for _ in 0..workers {
        start(s, &mut pending);
    }
    let mut deaths = 0;
    for _ in 0..10_000 {
        if state(s, job, c.now).is_terminal() {
            return deaths;
        }
        let (session, a) = pending.pop_front().expect("a live job has leases out");
        if dead.contains(&session) {
            continue;
        }
        if a.candidates.iter().any(|(i, _)| *i == poison) {
            deaths += 1;
            dead.insert(session);
            let out = s.disconnect(session, c.now);
            pending.extend(assignments(&out));
            start(s, &mut pending);
        } else {
            let out = s.verdicts(
                session,
                a.lease_id,
                verdicts_for(&a, |_| true),
                c.now,
                c.wall(),
            );
            pending.extend(assignments(&out));
        }
    }
    panic!("job {job} did not end");
}

#[test]
fn a_chunk_whose_attempts_run_out_is_cut_until_only_its_poison_candidate_is_left() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 100, 100, 1), c.now, c.wall());
    let deaths = run_with_poison(&mut s, &c, "j", 37, 2, 100);
    let snap = s.snapshot("j", true, c.now).unwrap();
    assert_eq!(snap.state, JobState::Succeeded, "{}", snap.reason);
    let results = s.results("j", RowFilter::All).unwrap();
    let poison: Vec<_> = results
        .iter()
        .filter_map(|r| r.verdict.as_ref())
        .filter(|v| v.reason == Reason::Poison)
        .map(|v| v.index)
        .collect();
    assert_eq!(poison, [37], "exactly the poison candidate");
    assert_eq!(
        results
            .iter()
            .filter(|r| r.verdict.as_ref().is_some_and(|v| v.usable))
            .count(),
        99,
        "every other candidate was checked"
    );
    assert_eq!(
        (
            snap.progress.proxies_poison,
            snap.progress.proxies_unchecked,
            snap.progress.proxies_checked
        ),
        (1, 1, 99)
    );
    assert!(snap.reason.contains("1 of them poison"), "{}", snap.reason);
    // 3 attempts whole, one per halving down to a piece of one (100 → 50 → … → 2 → 1: 7), and
    // 3 attempts alone; a few more where a worker died holding two pieces, which charges
    // neither.
    assert!(deaths <= 3 + 7 + 3 + 7, "{deaths} workers died");
    assert!(snap.chunks.iter().any(|c| c.state == ChunkState::Split));
    assert_eq!(
        snap.chunks
            .iter()
            .filter(|c| c.state == ChunkState::Failed)
            .count(),
        1,
        "the piece of one holding the poison candidate"
    );
}

#[test]
fn a_fleet_of_one_still_narrows_a_poison_proxy_down_and_ends() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 16, 16, 1), c.now, c.wall());
    // One worker at a time: it holds every piece, and dies with them.
    let deaths = run_with_poison(&mut s, &c, "j", 5, 1, 100);
    let snap = s.snapshot("j", false, c.now).unwrap();
    assert!(snap.state.is_terminal(), "{snap:?}");
    let results = s.results("j", RowFilter::All).unwrap();
    let poison: Vec<u32> = results
        .iter()
        .filter_map(|r| r.verdict.as_ref())
        .filter(|v| v.reason == Reason::Poison)
        .map(|v| v.index)
        .collect();
    assert_eq!(poison, [5], "after {deaths} deaths");
}

#[test]
fn a_lease_waiting_its_turn_in_a_busy_worker_gets_a_backup_only_later() {
    let mut c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 20, 10, 0), c.now, c.wall());
    // A worker of 4 slots holding 20 candidates: it works through them in rounds.
    let mut h = hello("busy", 100);
    h.max_checks = 4;
    let (busy, out) = s.hello(h, c.now);
    let held = assignments(&out);
    assert_eq!(held.len(), 2);
    let (idle, out) = s.hello(hello("idle", 4), c.now);
    assert!(assignments(&out).is_empty(), "nothing is queued");
    // It keeps bringing verdicts, one a second, from its first lease only.
    let first = verdicts_for(&held[0].1, |_| true);
    let mut backups = Vec::new();
    for second in 1..=9u64 {
        let t = c.advance(Duration::from_secs(1));
        let one = first[(second as usize - 1) % first.len()..][..1].to_vec();
        s.verdicts(busy, held[0].1.lease_id, one, t, c.wall());
        s.heartbeat(idle, &[], t);
        backups.extend(assignments(&s.tick(t, c.wall())));
    }
    assert!(
        backups.is_empty(),
        "a busy worker's queued lease is not slow: {backups:?}"
    );
    // Then the worker brings nothing more: it is frozen, and its leases go to the idle one.
    let t = c.advance(Duration::from_secs(8));
    s.heartbeat(idle, &[], t);
    s.heartbeat(busy, &[held[0].1.lease_id, held[1].1.lease_id], t);
    let backups = assignments(&s.tick(t, c.wall()));
    assert!(backups.iter().all(|(to, _)| *to == idle), "{backups:?}");
    let chunks: BTreeSet<ChunkId> = backups.iter().map(|(_, a)| a.chunk_id).collect();
    assert_eq!(chunks, BTreeSet::from([0, 1]), "both of its leases");
}

#[test]
fn a_chunk_charged_an_attempt_gets_no_backup_lease() {
    let mut c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 4, 4, 0), c.now, c.wall());
    let (v, _) = s.hello(hello("v", 4), c.now);
    s.disconnect(v, c.now);
    let (slow, out) = s.hello(hello("slow", 4), c.now);
    let a = assignments(&out).remove(0).1;
    assert_eq!(a.attempt, 2);
    s.hello(hello("idle", 4), c.now);
    let t = c.advance(Duration::from_secs(9));
    let mut out = s.heartbeat(slow, &[a.lease_id], t);
    out.extend(s.tick(t, c.wall()));
    assert!(
        assignments(&out).is_empty(),
        "a suspect goes to one holder at a time"
    );
}

#[test]
fn pieces_are_spread_and_a_worker_dying_with_two_charges_neither() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 8, 8, 0), c.now, c.wall());
    // Three workers vanish with the chunk: its attempts run out and it is cut in halves.
    for attempt in 0..3 {
        let (w, out) = s.hello(with_slots(&format!("v{attempt}"), 100), c.now);
        assert_eq!(assignments(&out).len(), 1);
        s.disconnect(w, c.now);
    }
    let snap = s.snapshot("j", true, c.now).unwrap();
    assert_eq!(snap.chunks[0].state, ChunkState::Split);
    assert_eq!(snap.chunks.len(), 3);
    // The one worker there takes both pieces and dies with them: which killed it is unknown, so
    // neither is charged.
    let (lone, out) = s.hello(with_slots("lone", 100), c.now);
    assert_eq!(assignments(&out).len(), 2);
    let attempts = |s: &Scheduler| -> Vec<u32> {
        let snap = s.snapshot("j", true, c.now).unwrap();
        snap.chunks[1..].iter().map(|p| p.attempts).collect()
    };
    let before = attempts(&s);
    // Two more workers come, with nothing queued for them.
    let (a, out) = s.hello(with_slots("a", 100), c.now);
    assert!(assignments(&out).is_empty());
    let (b, out) = s.hello(with_slots("b", 100), c.now);
    assert!(assignments(&out).is_empty());
    let requeued = assignments(&s.disconnect(lone, c.now));
    assert_eq!(attempts(&s), before, "neither piece is charged");
    // The pieces are spread: one each.
    let to = |session| requeued.iter().filter(|(s, _)| *s == session).count();
    assert_eq!((to(a), to(b)), (1, 1), "{requeued:?}");
    // One dies holding its piece alone: that piece is charged and cut again; the other is not.
    let (pa, pb) = (&requeued[0].1, &requeued[1].1);
    s.disconnect(requeued[0].0, c.now);
    let snap = s.snapshot("j", true, c.now).unwrap();
    assert_eq!(snap.chunks[pa.chunk_id as usize].state, ChunkState::Split);
    assert_eq!(
        snap.chunks[pb.chunk_id as usize].state,
        ChunkState::Leased(pb.lease_id)
    );
}

#[test]
fn too_many_poison_chunks_fail_the_job() {
    let c = Clock::new();
    let mut s = scheduler();
    let mut job = new_job("j", 1, 4, 0);
    job.settings.max_failed_chunk_ratio = 0.5;
    s.submit(job, c.now, c.wall());
    run_with_poison(&mut s, &c, "j", 0, 1, 10);
    let snap = s.snapshot("j", false, c.now).unwrap();
    assert_eq!(snap.state, JobState::Failed);
    assert!(
        snap.reason.contains("1 of 1 proxies could not be checked"),
        "{}",
        snap.reason
    );
    assert_eq!(snap.progress.proxies_poison, 1);
}

#[test]
fn lost_chunks_are_spread_over_sessions_not_handed_to_one() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 40, 4, 0), c.now, c.wall());
    let slots = |name: &str| {
        let mut h = hello(name, 100);
        h.max_checks = 8;
        h
    };
    // Two workers take chunks up to twice their slots while the queue is deep.
    let (doomed, out) = s.hello(slots("doomed"), c.now);
    assert_eq!(assignments(&out).len(), 4);
    let (busy, out) = s.hello(slots("busy"), c.now);
    let held = assignments(&out);
    assert!(!held.is_empty());
    // One dies; the other has room for one lost chunk; a worker that reconnects then has the
    // most room, yet takes only its share of the lost chunks (and fresh ones besides), so one
    // freeze of it cannot charge them all.
    let mut granted = assignments(&s.disconnect(doomed, c.now));
    let (fresh, out) = s.hello(slots("fresh"), c.now);
    granted.extend(assignments(&out));
    // The busy worker takes the rest once it has room.
    for (_, a) in &held {
        let out = s.verdicts(busy, a.lease_id, verdicts_for(a, |_| true), c.now, c.wall());
        granted.extend(assignments(&out));
    }
    let retried_to = |session| {
        granted
            .iter()
            .filter(|(s, a)| *s == session && a.attempt > 1)
            .count()
    };
    assert_eq!((retried_to(busy), retried_to(fresh)), (2, 2), "{granted:?}");
}

#[test]
fn a_chunk_restored_with_attempts_behind_fresh_ones_is_still_leased() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 8, 4, 0), c.now, c.wall());
    // Chunk 0 goes to a worker that vanishes; chunk 1 stays fresh.
    let (v, _) = s.hello(hello("v", 1), c.now);
    s.disconnect(v, c.now);
    let mut restarted = scheduler();
    for job in replay(&s.take_journal()) {
        restarted.restore(job, c.now, c.wall());
    }
    let (_, out) = restarted.hello(hello("w", 4), c.now);
    let chunks: BTreeSet<ChunkId> = assignments(&out).iter().map(|(_, a)| a.chunk_id).collect();
    assert_eq!(chunks, BTreeSet::from([0, 1]));
}

#[test]
fn a_worker_fills_its_check_slots_whatever_the_chunk_shapes() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 4000, 40, 0), c.now, c.wall());
    // A worker that may hold a lease per check slot (what workers ask for by default).
    let (w, out) = s.hello(with_slots("w", 16), c.now);
    let mut new = assignments(&out);
    // Each chunk keeps one slow candidate in flight; the rest answer at once.
    for _ in 0..100 {
        let Some((_, a)) = new.pop() else { break };
        let mut v = verdicts_for(&a, |_| true);
        v.pop();
        let out = s.verdicts(w, a.lease_id, v, c.now, c.wall());
        new.extend(assignments(&out));
    }
    // A slow candidate a lease: the worker holds at least a lease per check slot.
    let leases = s.workers(c.now)[0].leases.len();
    assert!(leases >= 16, "{leases} leases for 16 slots");
}

#[test]
fn at_the_tail_a_quiet_lease_is_leased_again_to_an_idle_worker_and_the_first_verdict_wins() {
    let mut c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 4, 4, 0), c.now, c.wall());
    let (slow, out) = s.hello(hello("slow", 4), c.now);
    let a = assignments(&out).remove(0).1;
    let (idle, out) = s.hello(hello("idle", 4), c.now);
    assert!(assignments(&out).is_empty(), "nothing is queued");
    // The slow worker answers one candidate, then nothing for longer than a check may take.
    let first = verdicts_for(&a, |_| true);
    s.verdicts(slow, a.lease_id, first[..1].to_vec(), c.now, c.wall());
    let t = c.advance(Duration::from_secs(5));
    let mut out = s.heartbeat(slow, &[a.lease_id], t);
    out.extend(s.tick(t, c.wall()));
    assert!(
        assignments(&out).is_empty(),
        "not quiet for long enough yet"
    );
    let t = c.advance(Duration::from_secs(3));
    let mut out = s.heartbeat(slow, &[a.lease_id], t);
    out.extend(s.tick(t, c.wall()));
    let backup = assignments(&out);
    assert_eq!(backup.len(), 1);
    let (to, b) = &backup[0];
    assert_eq!((*to, b.chunk_id), (idle, a.chunk_id));
    assert_eq!(b.candidates.len(), 3, "only what is still unchecked");
    assert!(
        assignments(&s.tick(t, c.wall())).is_empty(),
        "one backup a chunk"
    );
    // The slow worker wakes and answers one more; then the backup answers everything.
    s.verdicts(slow, a.lease_id, first[1..2].to_vec(), t, c.wall());
    let out = s.verdicts(idle, b.lease_id, verdicts_for(b, |_| true), t, c.wall());
    assert!(out.contains(&Outbound::LeaseDone(idle, live(b))));
    assert!(out.contains(&Outbound::Revoke(
        slow,
        live(&a),
        "checked by another worker"
    )));
    // The slow worker's last verdicts come too late: refused and counted.
    s.verdicts(slow, a.lease_id, first[2..].to_vec(), t, c.wall());
    let snap = s.snapshot("j", false, t).unwrap();
    assert_eq!(snap.state, JobState::Succeeded);
    assert_eq!(snap.progress.proxies_checked, 4);
    assert_eq!(snap.progress.speculative_leases, 1);
    assert_eq!(snap.progress.duplicate_verdicts_refused, 1);
    assert_eq!(snap.progress.stale_verdicts_refused, 2);
}

#[test]
fn without_speculation_a_quiet_lease_waits_for_its_ttl() {
    let mut c = Clock::new();
    let mut s = Scheduler::new(
        LeaseConfig {
            lease_ttl: TTL,
            default_judges: vec!["http://judge.test/judge".into()],
            speculation: false,
        },
        1,
    );
    s.submit(new_job("j", 4, 4, 0), c.now, c.wall());
    let (slow, out) = s.hello(hello("slow", 4), c.now);
    let a = assignments(&out).remove(0).1;
    s.hello(hello("idle", 4), c.now);
    let t = c.advance(Duration::from_secs(9));
    let mut out = s.heartbeat(slow, &[a.lease_id], t);
    out.extend(s.tick(t, c.wall()));
    assert!(assignments(&out).is_empty());
}

#[test]
fn a_backup_lease_goes_on_when_the_lease_it_backs_is_lost() {
    let mut c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 4, 4, 0), c.now, c.wall());
    let (slow, out) = s.hello(hello("slow", 4), c.now);
    let a = assignments(&out).remove(0).1;
    let (idle, _) = s.hello(hello("idle", 4), c.now);
    let t = c.advance(Duration::from_secs(8));
    let mut out = s.heartbeat(slow, &[a.lease_id], t);
    out.extend(s.tick(t, c.wall()));
    let b = assignments(&out).remove(0).1;
    // The slow worker dies: its lease costs an attempt, but the chunk stays with the backup.
    let out = s.disconnect(slow, t);
    assert!(assignments(&out).is_empty());
    let snap = s.snapshot("j", true, t).unwrap();
    assert_eq!(snap.chunks[0].state, ChunkState::Leased(b.lease_id));
    assert_eq!(snap.chunks[0].attempts, 1);
    s.verdicts(idle, b.lease_id, verdicts_for(&b, |_| true), t, c.wall());
    assert_eq!(state(&s, "j", t), JobState::Succeeded);
}

#[test]
fn drain_and_hand_back_cost_no_attempt() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 8, 4, 1), c.now, c.wall());
    let (w, out) = s.hello(hello("w", 2), c.now);
    let a = assignments(&out);
    assert_eq!(a.len(), 2);
    s.draining(w, c.now);
    let mut partial = verdicts_for(&a[0].1, |_| false);
    partial.truncate(1);
    s.verdicts(w, a[0].1.lease_id, partial, c.now, c.wall());
    assert!(
        assignments(&s.hand_back(w, a[0].1.lease_id, c.now)).is_empty(),
        "a draining worker gets nothing"
    );
    s.verdicts(
        w,
        a[1].1.lease_id,
        verdicts_for(&a[1].1, |_| false),
        c.now,
        c.wall(),
    );
    s.disconnect(w, c.now);
    let snap = s.snapshot("j", true, c.now).unwrap();
    assert_eq!(snap.progress.handed_back, 1);
    assert_eq!(snap.progress.reassignments, 0);
    assert_eq!(snap.chunks[0].attempts, 0);
    let (w2, out) = s.hello(hello("w2", 2), c.now);
    let b = assignments(&out).remove(0).1;
    assert_eq!(
        b.candidates.len(),
        3,
        "the verdict recorded before the hand-back stays"
    );
    s.verdicts(w2, b.lease_id, verdicts_for(&b, |_| false), c.now, c.wall());
    assert_eq!(state(&s, "j", c.now), JobState::Insufficient);
}

#[test]
fn a_coordinator_stopping_costs_no_attempt_and_grants_nothing() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 8, 4, 1), c.now, c.wall());
    let (w, out) = s.hello(hello("w", 2), c.now);
    assert_eq!(assignments(&out).len(), 2);
    s.take_journal();
    s.stop(c.now);
    let snap = s.snapshot("j", true, c.now).unwrap();
    assert_eq!(
        (snap.progress.reassignments, snap.progress.chunks_leased),
        (0, 0)
    );
    assert!(snap.chunks.iter().all(|chunk| chunk.attempts == 0));
    assert!(
        !s.take_journal()
            .iter()
            .any(|r| matches!(r, Record::Chunk { .. })),
        "no attempt is stored"
    );
    // The streams closing afterwards change nothing, and nobody is leased anything.
    assert!(s.disconnect(w, c.now).is_empty());
    let (_, out) = s.hello(hello("late", 2), c.now);
    assert!(assignments(&out).is_empty());
}

#[test]
fn an_ended_job_says_how_many_candidates_it_left_unchecked() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 8, 4, 0), c.now, c.wall());
    let (w, out) = s.hello(hello("w", 1), c.now);
    let a = assignments(&out).remove(0).1;
    s.verdicts(w, a.lease_id, verdicts_for(&a, |_| true), c.now, c.wall());
    let running = s.snapshot("j", false, c.now).unwrap();
    assert_eq!(running.progress.proxies_unchecked, 0, "not while it runs");
    s.cancel("j", c.now, c.wall()).unwrap();
    let ended = s.snapshot("j", false, c.now).unwrap();
    assert_eq!(
        (
            ended.progress.proxies_checked,
            ended.progress.proxies_unchecked
        ),
        (4, 4)
    );
    s.keep_in_store("j");
    assert_eq!(
        s.snapshot("j", false, c.now).unwrap().progress,
        ended.progress
    );
}

#[test]
fn a_job_without_workers_fails_at_its_deadline() {
    let mut c = Clock::new();
    let mut s = scheduler();
    let mut job = new_job("j", 4, 4, 1);
    job.settings.deadline = Duration::from_secs(30);
    s.submit(job, c.now, c.wall());
    let t = c.advance(Duration::from_secs(29));
    s.tick(t, c.wall());
    assert_eq!(state(&s, "j", t), JobState::Checking);
    let t = c.advance(Duration::from_secs(1));
    s.tick(t, c.wall());
    let snap = s.snapshot("j", false, t).unwrap();
    assert_eq!(snap.state, JobState::Failed);
    assert!(snap.reason.contains("deadline of 30s"), "{}", snap.reason);
    assert!(
        snap.reason.contains("no worker is connected"),
        "{}",
        snap.reason
    );
}

#[test]
fn a_deadline_revokes_live_leases_and_refuses_their_verdicts() {
    let mut c = Clock::new();
    let mut s = scheduler();
    let mut job = new_job("j", 4, 4, 1);
    job.settings.deadline = Duration::from_secs(5);
    s.submit(job, c.now, c.wall());
    let (w, out) = s.hello(hello("w", 1), c.now);
    let a = assignments(&out).remove(0).1;
    let t = c.advance(Duration::from_secs(5));
    s.heartbeat(w, &[a.lease_id], t);
    let out = s.tick(t, c.wall());
    assert!(out.contains(&Outbound::Revoke(w, live(&a), "job ended")));
    s.verdicts(w, a.lease_id, verdicts_for(&a, |_| true), t, c.wall());
    let snap = s.snapshot("j", false, t).unwrap();
    assert_eq!(snap.state, JobState::Failed);
    assert_eq!(snap.progress.proxies_checked, 0);
    assert_eq!(snap.progress.stale_verdicts_refused, 4);
}

#[test]
fn cancel_ends_a_job_and_is_idempotent() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 4, 4, 1), c.now, c.wall());
    let (w, out) = s.hello(hello("w", 1), c.now);
    let a = assignments(&out).remove(0).1;
    let (snap, out) = s.cancel("j", c.now, c.wall()).unwrap();
    assert_eq!(snap.state, JobState::Cancelled);
    assert!(out.contains(&Outbound::Revoke(w, live(&a), "job ended")));
    let (snap, out) = s.cancel("j", c.now, c.wall()).unwrap();
    assert_eq!(snap.state, JobState::Cancelled);
    assert!(out.is_empty());
    assert_eq!(
        s.cancel("nope", c.now, c.wall()).unwrap_err(),
        JobError::NotFound("nope".into())
    );
}

#[test]
fn one_job_per_pool_at_a_time() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("a", 4, 4, 0), c.now, c.wall());
    s.submit(new_job("b", 4, 4, 0), c.now, c.wall());
    let mut other = new_job("c", 4, 4, 0);
    other.settings.pool = "other".into();
    s.submit(other, c.now, c.wall());
    assert_eq!(state(&s, "a", c.now), JobState::Checking);
    assert_eq!(state(&s, "b", c.now), JobState::Queued);
    assert_eq!(state(&s, "c", c.now), JobState::Checking);
    s.cancel("a", c.now, c.wall()).unwrap();
    assert_eq!(state(&s, "b", c.now), JobState::Checking);
}

#[test]
fn duplicate_and_foreign_verdicts_are_not_counted_twice() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 8, 4, 0), c.now, c.wall());
    let (w, out) = s.hello(hello("w", 1), c.now);
    let a = assignments(&out).remove(0).1;
    let mut v = verdicts_for(&a, |_| true);
    v.truncate(2);
    s.verdicts(w, a.lease_id, v.clone(), c.now, c.wall());
    s.verdicts(w, a.lease_id, v, c.now, c.wall());
    let foreign = Verdict {
        index: 7,
        usable: true,
        reason: Reason::None,
        latency_ms: 1,
        exit_ip: "".into(),
        detail: "".into(),
        anonymity: Anonymity::Elite,
        connect_ms: 1,
        targets: Vec::new(),
    };
    s.verdicts(w, a.lease_id, vec![foreign], c.now, c.wall());
    let snap = s.snapshot("j", false, c.now).unwrap();
    assert_eq!(
        (snap.progress.proxies_checked, snap.progress.proxies_usable),
        (2, 2)
    );
}

#[test]
fn verdicts_from_an_ended_session_are_refused_and_counted() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 4, 4, 1), c.now, c.wall());
    let (w, out) = s.hello(hello("w", 1), c.now);
    let a = assignments(&out).remove(0).1;
    s.disconnect(w, c.now);
    let out = s.verdicts(w, a.lease_id, verdicts_for(&a, |_| true), c.now, c.wall());
    assert!(out.is_empty(), "nobody to tell");
    let p = s.snapshot("j", false, c.now).unwrap().progress;
    assert_eq!((p.proxies_checked, p.stale_verdicts_refused), (0, 4));
}

#[test]
fn only_a_draining_worker_hands_back_for_free() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 4, 4, 1), c.now, c.wall());
    let (w, out) = s.hello(hello("w", 1), c.now);
    let a = assignments(&out).remove(0).1;
    let (other, _) = s.hello(hello("other", 1), c.now);
    s.hand_back(w, a.lease_id, c.now);
    s.draining(other, c.now);
    s.hand_back(other, a.lease_id, c.now);
    let snap = s.snapshot("j", true, c.now).unwrap();
    assert_eq!(
        snap.progress.handed_back, 0,
        "ignored: not draining, or not the holder"
    );
    assert!(matches!(snap.chunks[0].state, ChunkState::Leased(l) if l == a.lease_id));
}

#[test]
fn a_draining_session_that_ends_costs_no_attempt() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 4, 4, 1), c.now, c.wall());
    let (w, _) = s.hello(hello("w", 1), c.now);
    s.draining(w, c.now);
    let (_, out) = s.hello(hello("w", 1), c.now);
    let b = assignments(&out).remove(0).1;
    let snap = s.snapshot("j", true, c.now).unwrap();
    assert_eq!((snap.chunks[0].attempts, snap.progress.handed_back), (0, 1));
    assert_eq!(b.attempt, 2);
}

#[test]
fn a_silent_session_that_speaks_again_gets_work_again() {
    let mut c = Clock::new();
    let mut s = scheduler();
    let (w, _) = s.hello(hello("w", 1), c.now);
    let t = c.advance(TTL);
    s.tick(t, c.wall());
    assert_eq!(s.workers(t)[0].status, "silent");
    let out = s.submit(new_job("j", 4, 4, 1), t, c.wall());
    assert!(
        assignments(&out).is_empty(),
        "a silent session gets nothing"
    );
    let out = s.heartbeat(w, &[], t);
    assert_eq!(assignments(&out).len(), 1);
    assert_eq!(s.workers(t)[0].status, "active");
}

#[test]
fn messages_from_unknown_sessions_change_nothing() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 4, 4, 1), c.now, c.wall());
    assert!(s.heartbeat(42, &[1], c.now).is_empty());
    assert!(s.hand_back(42, 1, c.now).is_empty());
    assert!(s.disconnect(42, c.now).is_empty());
    s.draining(42, c.now);
    let snap = s.snapshot("j", true, c.now).unwrap();
    assert_eq!(snap.chunks[0].state, ChunkState::Queued);
}

#[test]
fn a_job_queued_behind_its_pool_fails_at_its_deadline_saying_so() {
    let mut c = Clock::new();
    let mut s = scheduler();
    s.hello(hello("w", 1), c.now);
    s.submit(new_job("a", 4, 4, 1), c.now, c.wall());
    let mut b = new_job("b", 4, 4, 1);
    b.settings.deadline = Duration::from_secs(5);
    s.submit(b, c.now, c.wall());
    let t = c.advance(Duration::from_secs(5));
    s.tick(t, c.wall());
    let snap = s.snapshot("b", false, t).unwrap();
    assert_eq!(snap.state, JobState::Failed);
    assert!(
        snap.reason.contains("waited behind another job"),
        "{}",
        snap.reason
    );
}

#[test]
fn working_proxies_outside_the_filter_are_recorded_as_filtered() {
    let c = Clock::new();
    let mut s = scheduler();
    let mut job = new_job("j", 3, 3, 1);
    job.settings.filter = UsableFilter {
        max_latency: Some(Duration::from_millis(100)),
        min_anonymity: Some(Anonymity::Anonymous),
        require_https: false,
    };
    s.submit(job, c.now, c.wall());
    let (w, out) = s.hello(hello("w", 1), c.now);
    let a = assignments(&out).remove(0).1;
    let mut v = verdicts_for(&a, |_| true);
    v[0].latency_ms = 500;
    v[1].anonymity = Anonymity::Transparent;
    s.verdicts(w, a.lease_id, v, c.now, c.wall());
    let results = s.results("j", RowFilter::All).unwrap();
    let reasons: Vec<Reason> = results
        .iter()
        .map(|r| r.verdict.as_ref().unwrap().reason)
        .collect();
    assert_eq!(reasons, [Reason::Filtered, Reason::Filtered, Reason::None]);
    assert!(
        results[0]
            .verdict
            .as_ref()
            .unwrap()
            .detail
            .contains("latency 500ms")
    );
    assert!(
        results[1]
            .verdict
            .as_ref()
            .unwrap()
            .detail
            .contains("Transparent")
    );
    assert_eq!(
        s.snapshot("j", false, c.now)
            .unwrap()
            .progress
            .proxies_usable,
        1
    );
}

#[test]
fn require_https_needs_a_tunnel() {
    let filter = UsableFilter {
        require_https: true,
        ..UsableFilter::default()
    };
    let verdict = verdicts_for(
        &Assignment {
            lease_id: 1,
            job_id: "j".into(),
            chunk_id: 0,
            attempt: 1,
            candidates: vec![(0, candidates(1).remove(0))],
            judge_urls: vec![],
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            targets: Default::default(),
        },
        |_| true,
    )
    .remove(0);
    let mut candidate = candidates(1).remove(0);
    assert!(filter.refuse(&verdict, &candidate, false).is_some());
    assert!(filter.refuse(&verdict, &candidate, true).is_none());
    candidate.protocol = Protocol::Socks5;
    assert!(filter.refuse(&verdict, &candidate, false).is_none());
}

#[test]
fn a_job_with_sources_scrapes_then_checks_its_merged_candidates() {
    let c = Clock::new();
    let mut s = scheduler();
    let mut job = new_job("j", 2, 2, 1);
    job.sources = vec![SourceSpec {
        url: "http://lists.test/a.txt".into(),
        protocols: vec![],
        content: None,
        trusted: false,
    }];
    let out = s.submit(job, c.now, c.wall());
    assert!(out.is_empty(), "nothing for a worker yet: {out:?}");
    assert!(
        matches!(&s.take_scrapes()[..], [Scrape { job_id, sources }] if job_id == "j" && sources.len() == 1)
    );
    assert!(s.take_scrapes().is_empty(), "each scrape is taken once");
    let snap = s.snapshot("j", false, c.now).unwrap();
    assert_eq!(
        (snap.state, snap.sources[0].state),
        (JobState::Scraping, SourceState::Pending)
    );
    s.source_progress(
        "j",
        SourceStatus {
            url: "http://lists.test/a.txt".into(),
            state: SourceState::Fetched,
            candidates: 3,
            rejected: 1,
            bytes: 40,
            error: String::new(),
        },
    );
    // One scraped candidate repeats an inline one.
    let mut scraped = candidates(3);
    scraped.remove(1);
    let out = s.scraped(
        "j",
        scraped,
        BTreeMap::from([("malformed".to_string(), 1)]),
        c.now,
        c.wall(),
    );
    assert!(out.is_empty(), "no worker yet");
    let snap = s.snapshot("j", false, c.now).unwrap();
    assert_eq!(snap.state, JobState::Checking);
    assert_eq!(snap.progress.proxies_total, 3);
    assert_eq!(
        snap.dropped,
        BTreeMap::from([("duplicate".to_string(), 1), ("malformed".to_string(), 1)])
    );
    assert_eq!(snap.sources[0].candidates, 3);
    assert_eq!(snap.progress.chunks_total, 2);
}

#[test]
fn a_job_whose_sources_all_failed_fails_saying_so() {
    let c = Clock::new();
    let mut s = scheduler();
    let mut job = new_job("j", 0, 2, 1);
    job.sources = vec![SourceSpec {
        url: "http://lists.test/a".into(),
        protocols: vec![],
        content: None,
        trusted: false,
    }];
    s.submit(job, c.now, c.wall());
    s.source_progress(
        "j",
        SourceStatus {
            url: "http://lists.test/a".into(),
            state: SourceState::Failed,
            candidates: 0,
            rejected: 0,
            bytes: 0,
            error: "status 503".into(),
        },
    );
    s.scraped("j", Vec::new(), BTreeMap::new(), c.now, c.wall());
    let snap = s.snapshot("j", false, c.now).unwrap();
    assert_eq!(snap.state, JobState::Failed);
    assert!(
        snap.reason
            .contains("every source failed: http://lists.test/a: status 503"),
        "{}",
        snap.reason
    );
}

#[test]
fn a_cancelled_scraping_job_ignores_late_candidates() {
    let c = Clock::new();
    let mut s = scheduler();
    let mut job = new_job("j", 0, 2, 1);
    job.sources = vec![SourceSpec {
        url: "http://lists.test/a".into(),
        protocols: vec![],
        content: None,
        trusted: false,
    }];
    s.submit(job, c.now, c.wall());
    s.cancel("j", c.now, c.wall()).unwrap();
    s.scraped("j", candidates(4), BTreeMap::new(), c.now, c.wall());
    let snap = s.snapshot("j", false, c.now).unwrap();
    assert_eq!(
        (snap.state, snap.progress.proxies_total),
        (JobState::Cancelled, 0)
    );
}

#[test]
fn a_job_whose_judges_are_all_down_fails_at_once() {
    let c = Clock::new();
    let mut s = scheduler();
    let mut job = new_job("j", 4, 4, 1);
    job.settings.judge_urls = vec!["http://a.test/".into(), "http://b.test/".into()];
    s.submit(job, c.now, c.wall());
    let (w, _) = s.hello(hello("w", 1), c.now);
    let down = |url: &str| JudgeStatus {
        url: url.into(),
        ok: false,
        own_ip: String::new(),
        error: "refused".into(),
    };
    s.judge_status(w, down("http://a.test/"), c.now, c.wall());
    assert_eq!(state(&s, "j", c.now), JobState::Checking, "one judge left");
    s.judge_status(w, down("http://b.test/"), c.now, c.wall());
    let snap = s.snapshot("j", false, c.now).unwrap();
    assert_eq!(snap.state, JobState::Failed);
    assert!(
        snap.reason
            .contains("no judge of the job works from worker w"),
        "{}",
        snap.reason
    );
    assert_eq!(s.workers(c.now)[0].judges.len(), 2);
}

#[test]
fn followers_see_each_candidate_once_as_it_is_recorded() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 6, 3, 0), c.now, c.wall());
    let (w, out) = s.hello(hello("w", 1), c.now);
    let a = assignments(&out).remove(0).1;
    let first = s.results_since("j", 0, 100, false).unwrap();
    assert_eq!((first.rows.len(), first.cursor, first.done), (0, 0, false));
    let mut v = verdicts_for(&a, |i| i == 1);
    v.truncate(2);
    s.verdicts(w, a.lease_id, v, c.now, c.wall());
    let second = s.results_since("j", first.cursor, 100, false).unwrap();
    assert_eq!(second.rows.len(), 2);
    assert_eq!(
        s.results_since("j", first.cursor, 100, true)
            .unwrap()
            .rows
            .len(),
        1
    );
    let one = s.results_since("j", first.cursor, 1, false).unwrap();
    assert_eq!((one.rows.len(), one.cursor), (1, 1), "at most `limit` rows");
    s.cancel("j", c.now, c.wall()).unwrap();
    let last = s.results_since("j", second.cursor, 100, false).unwrap();
    assert!(last.done);
    assert!(last.rows.is_empty());
    let (rest, next) = s.results_page("j", 0, 100, RowFilter::Unchecked).unwrap();
    assert_eq!((rest.len(), next), (4, None), "the unchecked rest, once");
    let mut all: Vec<String> = second
        .rows
        .iter()
        .chain(&rest)
        .map(|r| r.candidate.url())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 6);
}

/// What a store replaying `records` would give back.
fn replay(records: &[Record]) -> Vec<StoredJob> {
    let mut jobs: BTreeMap<String, StoredJob> = BTreeMap::new();
    let mut candidates: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    let mut verdicts: BTreeMap<String, Vec<Verdict>> = BTreeMap::new();
    let mut chunks: BTreeMap<String, BTreeMap<ChunkId, ChunkRecord>> = BTreeMap::new();
    for r in records {
        match r {
            Record::Job(j) => {
                let stored = StoredJob {
                    record: (**j).clone(),
                    candidates: vec![],
                    verdicts: vec![],
                    chunks: vec![],
                };
                jobs.insert(j.id.clone(), stored);
            }
            Record::Candidates {
                job_id,
                candidates: c,
            } => {
                candidates.insert(job_id.clone(), c.to_vec());
                verdicts.remove(job_id);
            }
            Record::Verdicts {
                job_id,
                verdicts: v,
                ..
            } => verdicts
                .entry(job_id.clone())
                .or_default()
                .extend(v.clone()),
            Record::Chunk { job_id, chunk } => {
                let of_job = chunks.entry(job_id.clone()).or_default();
                of_job.insert(chunk.chunk_id, chunk.clone());
            }
            Record::Pool(_) => {}
        }
    }
    jobs.into_values()
        .map(|mut j| {
            let id = j.record.id.clone();
            j.candidates = candidates.remove(&id).unwrap_or_default();
            j.verdicts = verdicts.remove(&id).unwrap_or_default();
            j.chunks = chunks
                .remove(&id)
                .map(|c| c.into_values().collect())
                .unwrap_or_default();
            j
        })
        .collect()
}

#[test]
fn a_restored_job_keeps_its_verdicts_and_checks_only_the_rest() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 8, 4, 1), c.now, c.wall());
    let (w, out) = s.hello(hello("w", 2), c.now);
    let leases = assignments(&out);
    // Chunk 0 finished, chunk 1 half done, then the coordinator dies.
    let first = &leases[0].1;
    s.verdicts(
        w,
        first.lease_id,
        verdicts_for(first, |i| i == 2),
        c.now,
        c.wall(),
    );
    let mut half = verdicts_for(&leases[1].1, |_| false);
    half.truncate(2);
    s.verdicts(w, leases[1].1.lease_id, half, c.now, c.wall());
    let journal = s.take_journal();
    assert!(s.take_journal().is_empty(), "taken once");

    let mut restarted = Scheduler::new(
        LeaseConfig {
            lease_ttl: TTL,
            default_judges: vec!["http://judge.test/judge".into()],
            speculation: true,
        },
        s.next_lease_id(),
    );
    for job in replay(&journal) {
        restarted.restore(job, c.now, c.wall());
    }
    let snap = restarted.snapshot("j", true, c.now).unwrap();
    assert_eq!(snap.state, JobState::Checking);
    assert_eq!(
        (snap.progress.proxies_checked, snap.progress.proxies_usable),
        (6, 1)
    );
    assert_eq!(snap.chunks[0].state, ChunkState::Done);
    assert_eq!(snap.chunks[1].state, ChunkState::Queued);
    let (w2, out) = restarted.hello(hello("w", 2), c.now);
    let again = assignments(&out);
    assert_eq!(again.len(), 1);
    let indices: Vec<u32> = again[0].1.candidates.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, [6, 7], "only the unchecked proxies");
    assert!(
        again[0].1.lease_id >= s.next_lease_id(),
        "lease ids stay unique across restarts"
    );
    // A verdict for a lease from before the restart is refused.
    let old = &leases[1].1;
    let late = verdicts_for(old, |_| true);
    restarted.verdicts_of_job(w2, old.lease_id, of_job("j"), None, late, c.now, c.wall());
    let refused = restarted
        .snapshot("j", false, c.now)
        .unwrap()
        .progress
        .stale_verdicts_refused;
    assert_eq!(refused, 4);
    let new = &again[0].1;
    restarted.verdicts(
        w2,
        new.lease_id,
        verdicts_for(new, |_| false),
        c.now,
        c.wall(),
    );
    let snap = restarted.snapshot("j", false, c.now).unwrap();
    assert_eq!(snap.state, JobState::Succeeded);
    assert_eq!(
        (snap.progress.proxies_checked, snap.progress.proxies_usable),
        (8, 1)
    );
}

#[test]
fn restored_failed_chunks_and_ended_jobs_stay_as_they_were() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("done", 2, 2, 0), c.now, c.wall());
    let mut poison = new_job("poison", 4, 2, 0);
    poison.settings.pool = "p".into();
    s.submit(poison, c.now, c.wall());
    s.cancel("done", c.now, c.wall()).unwrap();
    for attempt in 1..=3 {
        let (v, _) = s.hello(hello(&format!("v{attempt}"), 1), c.now);
        s.disconnect(v, c.now);
    }
    let before = s.snapshot("poison", true, c.now).unwrap();
    let mut restarted = Scheduler::new(
        LeaseConfig {
            lease_ttl: TTL,
            default_judges: vec!["http://judge.test/judge".into()],
            speculation: true,
        },
        1,
    );
    for job in replay(&s.take_journal()) {
        restarted.restore(job, c.now, c.wall());
    }
    let done = restarted.snapshot("done", false, c.now).unwrap();
    assert_eq!(done.state, JobState::Cancelled);
    // Its attempts ran out and it was cut in halves; the pieces live in memory only, so after a
    // restart the chunk is leased whole again, and cut at its next loss.
    assert_eq!(before.chunks[0].state, ChunkState::Split);
    let after = restarted.snapshot("poison", true, c.now).unwrap();
    assert_eq!(after.chunks[0].state, ChunkState::Queued);
    assert_eq!(after.chunks[0].attempts, 3);
    assert_eq!(after.progress.reassignments, before.progress.reassignments);
    let (v, _) = restarted.hello(hello("v4", 1), c.now);
    restarted.disconnect(v, c.now);
    let cut = restarted.snapshot("poison", true, c.now).unwrap();
    assert_eq!(cut.chunks[0].state, ChunkState::Split);
}

#[test]
fn chunks_spread_over_sessions_least_loaded_first() {
    let c = Clock::new();
    let mut s = scheduler();
    let (w1, _) = s.hello(hello("w1", 4), c.now);
    let (w2, _) = s.hello(hello("w2", 4), c.now);
    let out = s.submit(new_job("j", 40, 10, 0), c.now, c.wall());
    let a = assignments(&out);
    assert_eq!(a.iter().filter(|(s, _)| *s == w1).count(), 2);
    assert_eq!(a.iter().filter(|(s, _)| *s == w2).count(), 2);
    let leases: BTreeSet<_> = a.iter().map(|(_, a)| a.lease_id).collect();
    assert_eq!(leases.len(), 4, "lease ids are unique");
}

#[test]
fn lease_ids_start_where_told() {
    let c = Clock::new();
    let mut s = Scheduler::new(
        LeaseConfig {
            lease_ttl: TTL,
            default_judges: vec!["http://judge.test/judge".into()],
            speculation: true,
        },
        1_000,
    );
    s.submit(new_job("j", 1, 1, 0), c.now, c.wall());
    let (_, out) = s.hello(hello("w", 1), c.now);
    assert_eq!(assignments(&out)[0].1.lease_id, 1_000);
}

#[test]
fn progress_reports_a_rate_and_an_eta() {
    let mut c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 20, 10, 0), c.now, c.wall());
    let (w, out) = s.hello(hello("w", 1), c.now);
    let a = assignments(&out).remove(0).1;
    s.tick(c.now, c.wall());
    let t = c.advance(Duration::from_secs(2));
    s.verdicts(w, a.lease_id, verdicts_for(&a, |_| false), t, c.wall());
    s.tick(t, c.wall());
    let p = s.snapshot("j", false, t).unwrap().progress;
    assert!(
        (p.checks_per_second - 5.0).abs() < 1e-9,
        "{}",
        p.checks_per_second
    );
    assert_eq!(p.eta, Some(Duration::from_secs(2)));
    assert_eq!(p.workers, 1);
}

#[test]
fn a_job_that_ends_during_restore_journals_its_end_and_nothing_more() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("checked", 4, 2, 1), c.now, c.wall());
    let mut ended = new_job("ended", 2, 2, 0);
    ended.settings.pool = "p".into();
    s.submit(ended, c.now, c.wall());
    s.cancel("ended", c.now, c.wall()).unwrap();
    let (w, out) = s.hello(hello("w", 2), c.now);
    for (_, a) in assignments(&out) {
        s.verdicts(w, a.lease_id, verdicts_for(&a, |i| i == 0), c.now, c.wall());
    }
    let checked = s.snapshot("checked", false, c.now).unwrap();
    assert_eq!(checked.state, JobState::Succeeded);
    let mut stored = replay(&s.take_journal());
    // Every verdict of the job stored, its end not.
    for job in &mut stored {
        if job.record.id == "checked" {
            job.record.state = JobState::Checking;
            job.record.ended_wall_ms = 0;
        }
    }
    let mut restarted = scheduler();
    for job in stored {
        restarted.restore(job, c.now, c.wall());
    }
    let snap = restarted.snapshot("checked", false, c.now).unwrap();
    assert_eq!(snap.state, JobState::Succeeded, "{}", snap.reason);
    let journal = restarted.take_journal();
    let rows: Vec<(&str, JobState)> = journal
        .iter()
        .filter_map(|r| match r {
            Record::Job(j) => Some((j.id.as_str(), j.state)),
            _ => None,
        })
        .collect();
    assert_eq!(
        rows,
        [("checked", JobState::Succeeded)],
        "the end made by restoring is saved; what was read back is not saved again"
    );
    // Its pool (not restored here: the store brings pools back before jobs) is met anew.
    let not_pools = journal
        .iter()
        .filter(|r| !matches!(r, Record::Pool(_)))
        .count();
    assert_eq!(not_pools, 1, "{journal:?}");
}

#[test]
fn an_ended_job_kept_in_the_store_shows_the_same_and_holds_no_rows() {
    let c = Clock::new();
    let mut s = scheduler();
    s.submit(new_job("j", 10, 4, 0), c.now, c.wall());
    let (w, out) = s.hello(hello("w", 1), c.now);
    let a = assignments(&out).remove(0).1;
    assert!(!s.keep_in_store("j"), "a running job keeps its rows");
    let mut v = verdicts_for(&a, |i| i == 0);
    let late = v.split_off(2);
    s.verdicts(w, a.lease_id, v, c.now, c.wall());
    s.cancel("j", c.now, c.wall()).unwrap();
    s.take_journal();
    let before = s.snapshot("j", false, c.now).unwrap();
    let metrics = s.metrics();
    assert_eq!(s.stored_rows("j"), Ok(None));
    assert!(s.keep_in_store("j"));
    assert!(s.keep_in_store("j"), "once is enough");
    assert_eq!(s.snapshot("j", false, c.now).unwrap(), before);
    assert_eq!(s.metrics(), metrics);
    assert_eq!(
        s.stored_rows("j"),
        Ok(Some(StoredRows {
            chunk_size: 4,
            total: 10
        }))
    );
    let job = &s.jobs["j"];
    assert!(job.candidates.is_empty() && job.verdicts.is_empty() && job.recorded.is_empty());
    // Late verdicts are still refused and counted; the job's row keeps its candidate count.
    let stale = s.stale_refused_total();
    s.verdicts(w, a.lease_id, late, c.now, c.wall());
    assert_eq!(s.stale_refused_total(), stale + 2);
    s.mark_dirty("j");
    s.changed.save.insert("j".into());
    let records = s.take_journal();
    assert!(matches!(&records[..], [Record::Job(r)] if r.candidate_count == 10));
    assert_eq!(
        s.stored_rows("nope"),
        Err(JobError::NotFound("nope".into()))
    );
}

/// The first lease `session` holds, as it was assigned (its unchecked candidates).
fn held(s: &Scheduler, session: SessionId) -> Option<Assignment> {
    let (_, leases) = s.session_leases(session)?;
    let lease = leases.first()?.clone();
    let chunk = lease.chunk_id?;
    Some(Assignment {
        lease_id: lease.lease_id,
        job_id: lease.job_id.clone(),
        chunk_id: chunk,
        attempt: 1,
        candidates: s.jobs[&lease.job_id].unchecked_of(chunk),
        judge_urls: vec![],
        timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        targets: Default::default(),
    })
}

/// `steps` times 5 s pass, the worker `w` beating its heart all along; the time after them.
fn pass(s: &mut Scheduler, c: &mut Clock, w: SessionId, steps: u32) -> Instant {
    let mut t = c.now;
    for _ in 0..steps {
        t = c.advance(Duration::from_secs(5));
        let held: Vec<LeaseId> = s
            .session_leases(w)
            .map(|(_, leases)| leases.iter().map(|l| l.lease_id).collect())
            .unwrap_or_default();
        s.heartbeat(w, &held, t);
        let out = s.tick(t, c.wall());
        assert!(
            out.iter().all(|o| !matches!(o, Outbound::Revoke(..))),
            "{out:?}"
        );
    }
    t
}

/// The pool members in `records`, as they are after them, by proxy.
fn members(records: &[Record]) -> BTreeMap<String, Member> {
    let mut out = BTreeMap::new();
    for r in records {
        if let Record::Pool(PoolChange::Member { member, .. }) = r {
            out.insert(member.candidate.full_url(), (**member).clone());
        }
    }
    out
}

#[test]
fn a_refresh_feeds_its_pool_in_the_write_of_its_verdicts() {
    let c = Clock::new();
    let mut s = scheduler();
    // A GeoIP database that puts 10.0.0.0/8 in Germany (id 56).
    let geo = crate::geo::write::legacy_v4(&[(std::net::Ipv4Addr::new(10, 0, 0, 0), 8, 56)]);
    let path = std::env::temp_dir().join(format!("proxyfleet-sched-geo-{}", std::process::id()));
    std::fs::write(&path, geo).unwrap();
    let geo = crate::geo::Geo::open(std::slice::from_ref(&path)).unwrap();
    let _ = std::fs::remove_file(&path);
    s.configure_pools(2, Duration::from_secs(60), Arc::new(geo));
    s.submit(new_job("j", 4, 4, 0), c.now, c.wall());
    let (w, out) = s.hello(hello("w", 1), c.now);
    let a = &assignments(&out)[0].1;
    s.take_journal();
    let mut verdicts = verdicts_for(a, |i| i < 2);
    verdicts[0].exit_ip = "10.1.2.3".into();
    s.verdicts(w, a.lease_id, verdicts, c.now, c.wall());
    let records = s.take_journal();
    let verdicts_at = records
        .iter()
        .position(|r| matches!(r, Record::Verdicts { .. }))
        .expect("the verdicts are journaled");
    let first_member = records
        .iter()
        .position(|r| matches!(r, Record::Pool(PoolChange::Member { .. })))
        .expect("the pool's members are journaled");
    assert!(
        verdicts_at < first_member,
        "members come after the verdicts, in one write"
    );
    let members = members(&records);
    assert_eq!(
        members.len(),
        2,
        "only the usable proxies join: {members:?}"
    );
    assert!(members.values().all(|m| m.live && m.last_job_id == "j"));
    let countries: BTreeSet<&str> = members.values().map(|m| m.country.as_str()).collect();
    assert_eq!(
        countries,
        BTreeSet::from(["", "DE"]),
        "the exit address's country, where known"
    );
}

#[test]
fn rounds_check_the_live_members_before_new_candidates_and_failures_take_them_out() {
    let mut c = Clock::new();
    let mut s = scheduler();
    s.configure_pools(2, Duration::from_secs(60), Arc::default());
    s.submit(new_job("j", 4, 4, 0), c.now, c.wall());
    let (w, out) = s.hello(hello("w", 1), c.now);
    let a = assignments(&out)[0].1.clone();
    s.verdicts(w, a.lease_id, verdicts_for(&a, |_| true), c.now, c.wall());
    assert_eq!(state(&s, "j", c.now), JobState::Succeeded);
    // The first round comes an interval after the refresh; a big refresh queued before it waits
    // behind it.
    let mut big = new_job("big", 100, 4, 0);
    big.settings.pool = "other".into();
    s.submit(big, c.now, c.wall());
    // A minute on, the worker busy all along.
    let t = pass(&mut s, &mut c, w, 13);
    let out = s.tick(t, c.wall());
    let granted = assignments(&out);
    assert!(
        granted.is_empty(),
        "the worker's one lease is a big chunk: {granted:?}"
    );
    let round = s
        .job_ids()
        .into_iter()
        .find(|id| id.starts_with("round-"))
        .expect("a round started");
    let snapshot = s.snapshot(&round, false, t).unwrap();
    assert_eq!(snapshot.settings.kind, JobKind::Revalidation);
    assert_eq!(snapshot.progress.proxies_total, 4);
    // The big chunk's verdicts free the slot: the round's chunk goes first.
    let big_a = held(&s, w).expect("the worker holds a big chunk");
    assert_eq!(big_a.job_id, "big");
    let out = s.verdicts(
        w,
        big_a.lease_id,
        verdicts_for(&big_a, |_| false),
        t,
        c.wall(),
    );
    let next = assignments(&out);
    assert_eq!(next.len(), 1);
    assert_eq!(
        next[0].1.job_id, round,
        "the round's chunk before the rest of the big refresh"
    );
    // Two rounds that find three members dead take them out of the live set. The one that
    // passes comes last: the failures before it are held until a member passes.
    s.take_journal();
    let survivor = next[0].1.candidates[3].1.full_url();
    let out = s.verdicts(
        w,
        next[0].1.lease_id,
        verdicts_for(&next[0].1, |i| i == 3),
        t,
        c.wall(),
    );
    assert_eq!(state(&s, &round, t), JobState::Succeeded);
    let after_one = members(&s.take_journal());
    assert_eq!(after_one.len(), 4);
    for (proxy, m) in &after_one {
        let failures = u32::from(*proxy != survivor);
        assert!(m.live && m.failures == failures, "{m:?}");
    }
    drop(out);
    // Not due again before the interval.
    pass(&mut s, &mut c, w, 6);
    assert_eq!(
        s.job_ids()
            .iter()
            .filter(|id| id.starts_with("round-"))
            .count(),
        1
    );
    let t = pass(&mut s, &mut c, w, 7);
    let rounds: Vec<String> = s
        .job_ids()
        .into_iter()
        .filter(|id| id.starts_with("round-"))
        .collect();
    assert_eq!(rounds.len(), 2, "the next round comes at the interval");
    let second = rounds.into_iter().find(|id| *id != round).unwrap();
    s.take_journal();
    // Whatever the worker holds, it gets the round's chunk once a slot frees.
    let finish = |s: &mut Scheduler,
                  round: &str,
                  (t, wall): (Instant, u64),
                  pass: &dyn Fn(&Candidate) -> bool| {
        for _ in 0..30 {
            let Some(a) = held(s, w) else { break };
            let usable = |i: u32| {
                a.job_id == round
                    && a.candidates
                        .iter()
                        .any(|(j, candidate)| *j == i && pass(candidate))
            };
            s.verdicts(w, a.lease_id, verdicts_for(&a, usable), t, wall);
            if state(s, round, t).is_terminal() {
                break;
            }
        }
        assert_eq!(state(s, round, t), JobState::Succeeded);
    };
    finish(&mut s, &second, (t, c.wall()), &|candidate| {
        candidate.full_url() == survivor
    });
    let after_two = members(&s.take_journal());
    assert_eq!(after_two.len(), 4);
    for (proxy, m) in &after_two {
        if *proxy == survivor {
            assert!(m.live && m.failures == 0 && m.successes == 3, "{m:?}");
        } else {
            assert!(
                !m.live && m.failures == 2,
                "two failures in a row take them out: {m:?}"
            );
        }
    }
    // A round in which no member passes changes none: the judge may be down, not the proxies.
    let t = pass(&mut s, &mut c, w, 13);
    let third = s
        .job_ids()
        .into_iter()
        .filter(|id| id.starts_with("round-") && *id != round && *id != second)
        .collect::<Vec<_>>();
    assert_eq!(third.len(), 1, "one live member left: rounds go on");
    s.take_journal();
    finish(&mut s, &third[0], (t, c.wall()), &|_| false);
    assert!(
        members(&s.take_journal()).is_empty(),
        "an inconclusive round changes no member"
    );
    assert_eq!(s.active_jobs(), 1, "rounds are not the clients' jobs");
}

#[test]
fn a_round_running_at_a_restart_ends_and_its_pool_runs_one_round_at_a_time() {
    let mut c = Clock::new();
    let mut s = scheduler();
    s.configure_pools(2, Duration::from_secs(60), Arc::default());
    s.submit(new_job("j", 4, 4, 0), c.now, c.wall());
    let (w, out) = s.hello(hello("w", 1), c.now);
    let a = assignments(&out)[0].1.clone();
    s.verdicts(w, a.lease_id, verdicts_for(&a, |_| true), c.now, c.wall());
    pass(&mut s, &mut c, w, 13);
    let round = s
        .job_ids()
        .into_iter()
        .find(|id| id.starts_with("round-"))
        .expect("a round started");
    assert_eq!(state(&s, &round, c.now), JobState::Checking);
    // The store, as a restart finds it.
    let records = s.take_journal();
    let stored = replay(&records);
    let mut meta = None;
    let mut kept = BTreeMap::new();
    for r in &records {
        match r {
            Record::Pool(PoolChange::Meta(m)) => meta = Some((**m).clone()),
            Record::Pool(PoolChange::Member { member, .. }) => {
                kept.insert(member.candidate.full_url(), (**member).clone());
            }
            _ => {}
        }
    }
    let meta = meta.expect("the pool's meta is journaled");
    assert_eq!(meta.round_job.as_deref(), Some(round.as_str()));
    let mut restarted = scheduler();
    restarted.configure_pools(2, Duration::from_secs(60), Arc::default());
    restarted.restore_pool(meta, kept.into_values().collect());
    for job in stored {
        restarted.restore(job, c.now, c.wall());
    }
    assert_eq!(state(&restarted, &round, c.now), JobState::Cancelled);
    let running = |s: &Scheduler, t: Instant| {
        s.job_ids()
            .into_iter()
            .filter(|id| id.starts_with("round-") && !state(s, id, t).is_terminal())
            .count()
    };
    assert_eq!(running(&restarted, c.now), 0);
    // The next comes at the interval, alone.
    for _ in 0..4 {
        let t = c.advance(Duration::from_secs(20));
        restarted.tick(t, c.wall());
        assert!(running(&restarted, t) <= 1);
    }
    assert_eq!(running(&restarted, c.now), 1);
}

#[test]
fn a_job_report_counts_every_candidate_once_by_reason_and_the_workers_that_checked_it() {
    let mut c = Clock::new();
    let mut s = scheduler();
    let t = c.advance(Duration::from_secs(1));
    s.submit(new_job("j", 8, 4, 1), t, c.wall());
    let (w, out) = s.hello(hello("w", 1), t);
    let a = assignments(&out).remove(0).1;
    let t = c.advance(Duration::from_secs(1));
    s.verdicts(w, a.lease_id, verdicts_for(&a, |i| i % 2 == 0), t, c.wall());
    let report = s.report("j", t).unwrap();
    assert_eq!(report.started_wall_ms, 1_000, "it started when submitted");
    assert_eq!(
        report.by_reason,
        BTreeMap::from([
            ("refused".to_string(), 2),
            ("unchecked".to_string(), 4),
            ("usable".to_string(), 2),
        ])
    );
    assert_eq!(report.workers.len(), 1);
    assert_eq!(report.workers[0].0, "w");
    assert_eq!(
        (report.workers[0].1.verdicts, report.workers[0].1.usable),
        (4, 2)
    );
    assert_eq!(
        (
            report.chunks.total,
            report.chunks.done,
            report.chunks.leased,
            report.chunks.leases
        ),
        (2, 1, 1, 2)
    );
    assert!(!report.counts_since_restart);

    // Restored while it runs, the job keeps its start and says its counts start at the restart.
    let mut journal = s.take_journal();
    let mut restarted = scheduler();
    for job in replay(&journal) {
        restarted.restore(job, t, c.wall());
    }
    let running = restarted.report("j", t).unwrap();
    assert_eq!(running.started_wall_ms, 1_000);
    assert!(running.counts_since_restart);

    // The worker dies holding the second chunk, and so do the next two: its attempts run out
    // and it is cut in halves, which a new worker checks.
    s.disconnect(w, t);
    for dying in ["w-a", "w-b"] {
        let (d, out) = s.hello(hello(dying, 1), t);
        assert_eq!(assignments(&out).len(), 1);
        s.disconnect(d, t);
    }
    let (w2, out) = s.hello(hello("w2", 2), t);
    let pieces = assignments(&out);
    assert_eq!(pieces.len(), 2, "{pieces:?}");
    for (_, b) in &pieces {
        s.verdicts(w2, b.lease_id, verdicts_for(b, |_| false), t, c.wall());
    }
    let report = s.report("j", t).unwrap();
    assert_eq!(state(&s, "j", t), JobState::Succeeded);
    assert_eq!(
        report.by_reason,
        BTreeMap::from([("refused".to_string(), 6), ("usable".to_string(), 2)])
    );
    assert_eq!(
        (
            report.chunks.total,
            report.chunks.done,
            report.chunks.split,
            report.chunks.attempts,
            report.chunks.leases
        ),
        (3, 3, 1, 3, 6)
    );
    let by_worker: Vec<(&str, u64)> = report
        .workers
        .iter()
        .map(|(id, tally)| (id.as_str(), tally.verdicts))
        .collect();
    assert_eq!(by_worker, [("w", 4), ("w2", 4)]);

    // Kept in the store, the job reports the same counts.
    assert!(s.keep_in_store("j"));
    let stored = s.report("j", t).unwrap();
    assert_eq!(stored.by_reason, report.by_reason);
    assert_eq!(stored.chunks, report.chunks);
    assert_eq!(stored.workers, report.workers);

    // Restored after a restart, it reports the same again: its pieces, leases, attempts, start
    // and workers were kept with it.
    journal.extend(s.take_journal());
    let later = c.advance(Duration::from_secs(5));
    let mut restarted = scheduler();
    for job in replay(&journal) {
        restarted.restore(job, later, c.wall());
    }
    for kept in [false, true] {
        if kept {
            assert!(restarted.keep_in_store("j"));
        }
        let restored = restarted.report("j", later).unwrap();
        assert_eq!(restored.started_wall_ms, report.started_wall_ms);
        assert_eq!(restored.by_reason, report.by_reason);
        assert_eq!(restored.chunks, report.chunks);
        assert_eq!(restored.workers, report.workers);
        assert!(!restored.counts_since_restart);
        assert_eq!(restored.job.progress.chunks_total, 3);
        assert_eq!(restored.job.progress.elapsed, report.job.progress.elapsed);
    }
}
