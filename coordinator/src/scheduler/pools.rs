//! Pools: every proxy a pool has seen usable, with its history, its score, and whether it is in
//! the live set; and when each pool's live members are due to be checked again. Pure: it knows no
//! job and no lease, the wall clock is passed in, and every change it makes is returned so that
//! the caller can journal it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::candidate::Candidate;

use super::{Anonymity, JobSettings, Reason};

/// Weight of the newest latency in a member's moving average.
const LATENCY_WEIGHT: f64 = 0.3;

/// One check of a member, as a verdict reported it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Observation {
    pub(crate) wall_ms: u64,
    pub(crate) usable: bool,
    pub(crate) reason: Reason,
    pub(crate) latency_ms: u32,
    pub(crate) anonymity: Anonymity,
    pub(crate) exit_ip: String,
    /// The exit address's country, where a GeoIP database knows it.
    pub(crate) country: String,
    pub(crate) detail: String,
    pub(crate) job_id: String,
}

/// A proxy the pool has seen usable, and its history.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    pub(crate) candidate: Candidate,
    /// In the live set: fewer than `max_failures` failed checks in a row since it last passed.
    pub(crate) live: bool,
    pub(crate) first_seen_ms: u64,
    /// When a check last found it usable.
    pub(crate) last_seen_ms: u64,
    pub(crate) last_checked_ms: u64,
    /// Checks in a row that found it usable, and not usable; one of them is 0.
    pub(crate) successes: u32,
    pub(crate) failures: u32,
    pub(crate) checks: u64,
    pub(crate) checks_usable: u64,
    /// Latency of the last usable check, and a moving average of the usable ones.
    pub(crate) latency_ms: u32,
    pub(crate) latency_avg_ms: u32,
    pub(crate) anonymity: Anonymity,
    pub(crate) exit_ip: String,
    /// Exit country (ISO 3166 alpha-2), where a GeoIP database told it; empty otherwise.
    pub(crate) country: String,
    /// Why the last check failed (None when it passed).
    pub(crate) last_reason: Reason,
    pub(crate) last_detail: String,
    pub(crate) last_job_id: String,
}

impl Member {
    /// A member first seen usable by `seen`.
    fn new(candidate: Candidate, seen: &Observation) -> Member {
        let mut member = Member {
            candidate,
            live: true,
            first_seen_ms: seen.wall_ms,
            last_seen_ms: 0,
            last_checked_ms: 0,
            successes: 0,
            failures: 0,
            checks: 0,
            checks_usable: 0,
            latency_ms: seen.latency_ms,
            latency_avg_ms: seen.latency_ms,
            anonymity: Anonymity::Unknown,
            exit_ip: String::new(),
            country: String::new(),
            last_reason: Reason::None,
            last_detail: String::new(),
            last_job_id: String::new(),
        };
        member.observe(seen, u32::MAX);
        member
    }

    /// Counts one check in; a member that fails `max_failures` times in a row leaves the live
    /// set, and one that passes (a refresh found it again) joins it.
    pub(crate) fn observe(&mut self, seen: &Observation, max_failures: u32) {
        self.checks += 1;
        self.last_checked_ms = self.last_checked_ms.max(seen.wall_ms);
        self.last_job_id = seen.job_id.clone();
        if seen.usable {
            self.checks_usable += 1;
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            self.last_seen_ms = self.last_seen_ms.max(seen.wall_ms);
            self.latency_avg_ms = if self.checks_usable == 1 {
                seen.latency_ms
            } else {
                (f64::from(self.latency_avg_ms) * (1.0 - LATENCY_WEIGHT)
                    + f64::from(seen.latency_ms) * LATENCY_WEIGHT)
                    .round() as u32
            };
            self.latency_ms = seen.latency_ms;
            if seen.anonymity != Anonymity::Unknown {
                self.anonymity = seen.anonymity;
            }
            if !seen.exit_ip.is_empty() {
                self.exit_ip = seen.exit_ip.clone();
                self.country = seen.country.clone();
            }
            self.last_reason = Reason::None;
            self.last_detail.clear();
            self.live = true;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            self.last_reason = seen.reason;
            self.last_detail = seen.detail.clone();
            if self.failures >= max_failures {
                self.live = false;
            }
        }
    }

    /// Checks that found it usable, of all its checks.
    pub(crate) fn uptime(&self) -> f64 {
        if self.checks == 0 {
            0.0
        } else {
            self.checks_usable as f64 / self.checks as f64
        }
    }

    /// 0 to 100, higher is better: half from uptime (smoothed, so one lucky check is not a
    /// perfect record), a fifth from the current success streak, the rest from recent latency.
    pub(crate) fn score(&self) -> f64 {
        let uptime = (self.checks_usable as f64 + 1.0) / (self.checks as f64 + 2.0);
        let streak = if self.failures > 0 {
            0.0
        } else {
            f64::from(self.successes.min(10)) / 10.0
        };
        let speed = 1.0 - (f64::from(self.latency_avg_ms) / 10_000.0).min(1.0);
        let score = 50.0 * uptime + 20.0 * streak + 30.0 * speed;
        (score * 10.0).round() / 10.0
    }
}

/// How the detail of a failure a client reported starts (see `ReportProxies`).
pub(crate) const REPORTED: &str = "reported by a client: ";
/// Added to a reported failure's detail when the member stays live past the reports' cap.
const KEPT_LIVE: &str =
    " (kept live until the next round: clients' reports took out half the live set already)";

/// What a pool keeps besides its members: how and when they are checked again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PoolMeta {
    pub(crate) name: String,
    /// The check settings of the newest refresh that fed the pool; revalidation checks with them.
    pub(crate) settings: Option<JobSettings>,
    /// How often the live members are checked again; zero: never.
    pub(crate) revalidate_every: Duration,
    /// When the last revalidation round started (wall ms; 0: none yet).
    pub(crate) last_round_ms: u64,
    /// The revalidation job running now, if any.
    pub(crate) round_job: Option<String>,
    /// Bumped by every change of a member.
    pub(crate) version: u64,
}

/// A change for the store and for readers: a member as it is now, or the pool's meta.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PoolChange {
    Member {
        pool: String,
        /// The pool's version this change made.
        version: u64,
        member: Box<Member>,
    },
    Meta(Box<PoolMeta>),
    /// A member out of the live set for long is forgotten (by `Candidate::full_url`).
    Forget {
        pool: String,
        /// The pool's version this change made.
        version: u64,
        proxy: String,
    },
}

/// One pool.
#[derive(Debug, Clone, PartialEq)]
struct Pool {
    meta: PoolMeta,
    /// By `Candidate::full_url`.
    members: BTreeMap<String, Member>,
    /// Members (by key) clients' reports took out of the live set since the last round or
    /// refresh started: at most half the live set they came from (see [`Pools::reported`]). The
    /// next round checks them again with the live ones, so a member reported out wrongly comes
    /// back.
    reported_out: BTreeSet<String>,
}

/// Where a check of a pool's candidate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feed {
    /// A refresh: a usable proxy joins (or rejoins) the pool.
    Refresh,
    /// A revalidation round: it checks members only.
    Revalidation,
}

/// Every pool, by name.
#[derive(Debug, Default)]
pub(crate) struct Pools {
    pools: BTreeMap<String, Pool>,
    /// A member leaves the live set after this many failed checks in a row.
    max_failures: u32,
    /// The interval of pools whose refreshes name none.
    default_every: Duration,
}

impl Pools {
    pub(crate) fn new(max_failures: u32, default_every: Duration) -> Pools {
        Pools {
            pools: BTreeMap::new(),
            max_failures: max_failures.max(1),
            default_every,
        }
    }

    /// Brings back a pool as the store had it (a round that was running ends when its job is
    /// restored, see [`Pools::job_ended`]).
    pub(crate) fn restore(&mut self, meta: PoolMeta, members: Vec<Member>) {
        let members: BTreeMap<String, Member> = members
            .into_iter()
            .map(|m| (m.candidate.full_url(), m))
            .collect();
        // Those reports took out since the last round started, as far as the store tells.
        let reported_out = members
            .iter()
            .filter(|(_, m)| {
                !m.live
                    && m.last_detail.starts_with(REPORTED)
                    && m.last_checked_ms >= meta.last_round_ms
            })
            .map(|(key, _)| key.clone())
            .collect();
        self.pools.insert(
            meta.name.clone(),
            Pool {
                meta,
                members,
                reported_out,
            },
        );
    }

    /// How often `pool`'s live members are checked again.
    pub(crate) fn revalidate_every(&self, pool: &str) -> Option<Duration> {
        self.pools.get(pool).map(|p| p.meta.revalidate_every)
    }

    /// A refresh of `pool` started checking with `settings`: the pool's revalidation checks as it
    /// does from now on. `every` is the interval the refresh asked for (None: keep the pool's, or
    /// the default for a new pool).
    /// The pool's first round comes one interval after its first refresh started (`wall_ms`).
    /// None when nothing changed (a restored refresh starting again).
    pub(crate) fn refresh_started(
        &mut self,
        pool: &str,
        settings: &JobSettings,
        every: Option<Duration>,
        wall_ms: u64,
    ) -> Option<PoolChange> {
        let entry = self.pool_mut(pool);
        entry.reported_out.clear();
        let before = entry.meta.clone();
        entry.meta.settings = Some(settings.clone());
        if let Some(every) = every {
            entry.meta.revalidate_every = every;
        }
        if entry.meta.last_round_ms == 0 {
            entry.meta.last_round_ms = wall_ms;
        }
        (entry.meta != before).then(|| PoolChange::Meta(Box::new(entry.meta.clone())))
    }

    fn pool_mut(&mut self, pool: &str) -> &mut Pool {
        let default_every = self.default_every;
        self.pools.entry(pool.to_string()).or_insert_with(|| Pool {
            meta: PoolMeta {
                name: pool.to_string(),
                settings: None,
                revalidate_every: default_every,
                last_round_ms: 0,
                round_job: None,
                version: 0,
            },
            members: BTreeMap::new(),
            reported_out: BTreeSet::new(),
        })
    }

    /// Counts a check of `candidate` into `pool`. A usable proxy from a refresh joins the pool (or
    /// its live set again); an unusable one counts against a member only. Checks of proxies the
    /// pool does not hold change nothing.
    pub(crate) fn observe(
        &mut self,
        pool: &str,
        feed: Feed,
        candidate: &Candidate,
        seen: &Observation,
    ) -> Option<PoolChange> {
        let max_failures = self.max_failures;
        let key = candidate.full_url();
        let known = self
            .pools
            .get(pool)
            .is_some_and(|p| p.members.contains_key(&key));
        if !(known || seen.usable && feed == Feed::Refresh) {
            return None;
        }
        let entry = self.pool_mut(pool);
        let member = match entry.members.entry(key) {
            std::collections::btree_map::Entry::Occupied(e) => {
                let member = e.into_mut();
                member.observe(seen, max_failures);
                member
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(Member::new(candidate.clone(), seen))
            }
        };
        let member = Box::new(member.clone());
        entry.meta.version += 1;
        Some(PoolChange::Member {
            pool: pool.to_string(),
            version: entry.meta.version,
            member,
        })
    }

    /// Pools whose live members are due to be checked again at `wall_ms`: the interval since the
    /// last round started has passed, no round runs, and there are live members and settings to
    /// check them with. Each is returned with its members to check, least recently checked first.
    pub(crate) fn due(&self, wall_ms: u64) -> Vec<(String, JobSettings, Vec<Candidate>)> {
        self.pools
            .values()
            .filter(|p| {
                !p.meta.revalidate_every.is_zero()
                    && p.meta.round_job.is_none()
                    && wall_ms
                        >= p.meta
                            .last_round_ms
                            .saturating_add(p.meta.revalidate_every.as_millis() as u64)
            })
            .filter_map(|p| {
                let settings = p.meta.settings.clone()?;
                // The live members, and those clients' reports took out since the last round.
                let mut live: Vec<&Member> = p
                    .members
                    .iter()
                    .filter(|(key, m)| m.live || p.reported_out.contains(*key))
                    .map(|(_, m)| m)
                    .collect();
                if live.is_empty() {
                    return None;
                }
                live.sort_by_key(|m| m.last_checked_ms);
                let candidates = live.into_iter().map(|m| m.candidate.clone()).collect();
                Some((p.meta.name.clone(), settings, candidates))
            })
            .collect()
    }

    /// A revalidation round of `pool` started as `job_id` at `wall_ms`.
    pub(crate) fn round_started(&mut self, pool: &str, job_id: &str, wall_ms: u64) -> PoolChange {
        let entry = self.pool_mut(pool);
        entry.reported_out.clear();
        entry.meta.round_job = Some(job_id.to_string());
        entry.meta.last_round_ms = wall_ms;
        PoolChange::Meta(Box::new(entry.meta.clone()))
    }

    /// The job `job_id` ended: if it was a pool's revalidation round, the next may be due.
    pub(crate) fn job_ended(&mut self, job_id: &str) -> Option<PoolChange> {
        let pool = self
            .pools
            .values_mut()
            .find(|p| p.meta.round_job.as_deref() == Some(job_id))?;
        pool.meta.round_job = None;
        Some(PoolChange::Meta(Box::new(pool.meta.clone())))
    }

    /// A failure a client saw through the member `key` of `pool`; none for a proxy the pool does
    /// not hold. It counts as a failed check. In a pool with revalidation rounds, reports alone
    /// take at most half the live set out (at least one member) until the next round or refresh
    /// starts, and the next round checks those again, so one that works comes back: past the
    /// cap, a member keeps its failures but stays live for the round to judge. Clients failing on
    /// that scale are more likely failing on their own side (their network, their load) than the
    /// proxies, and a pool emptied on their word would leave every client with nothing. A pool
    /// without rounds has nothing to judge again, and takes reports as they come.
    pub(crate) fn reported(
        &mut self,
        pool: &str,
        key: &str,
        seen: &Observation,
    ) -> Option<PoolChange> {
        let max_failures = self.max_failures;
        let entry = self.pools.get_mut(pool)?;
        let was_live = entry.members.get(key)?.live;
        let member = entry.members.get_mut(key)?;
        member.observe(seen, max_failures);
        if was_live && !member.live && !entry.meta.revalidate_every.is_zero() {
            let live = entry.members.values().filter(|m| m.live).count();
            // The live set the reports since the last round came from.
            let cap = ((live + 1 + entry.reported_out.len()) / 2).max(1);
            let member = entry.members.get_mut(key)?;
            if entry.reported_out.len() < cap {
                entry.reported_out.insert(key.to_string());
            } else {
                member.live = true;
                let mut detail: String = member.last_detail.chars().take(400).collect();
                detail.push_str(KEPT_LIVE);
                member.last_detail = detail;
            }
        }
        let member = Box::new(entry.members.get(key)?.clone());
        entry.meta.version += 1;
        Some(PoolChange::Member {
            pool: pool.to_string(),
            version: entry.meta.version,
            member,
        })
    }

    /// Forgets members that left the live set and were last seen usable before `before_ms`; the
    /// pool's memory follows its size, not its history.
    pub(crate) fn forget_dead(&mut self, before_ms: u64) -> Vec<PoolChange> {
        let mut gone = Vec::new();
        for pool in self.pools.values_mut() {
            let meta = &mut pool.meta;
            pool.members.retain(|key, m| {
                let keep = m.live || m.last_seen_ms >= before_ms;
                if !keep {
                    meta.version += 1;
                    gone.push(PoolChange::Forget {
                        pool: meta.name.clone(),
                        version: meta.version,
                        proxy: key.clone(),
                    });
                }
                keep
            });
        }
        gone
    }

    #[cfg(test)]
    pub(crate) fn member(&self, pool: &str, key: &str) -> Option<&Member> {
        self.pools.get(pool)?.members.get(key)
    }

    #[cfg(test)]
    pub(crate) fn meta(&self, pool: &str) -> Option<&PoolMeta> {
        self.pools.get(pool).map(|p| &p.meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candidate::Protocol;

    fn candidate(port: u16) -> Candidate {
        Candidate {
            protocol: Protocol::Http,
            host: "127.0.0.1".into(),
            port,
            auth: None,
        }
    }

    fn seen(wall_ms: u64, usable: bool, latency_ms: u32) -> Observation {
        Observation {
            wall_ms,
            usable,
            reason: if usable {
                Reason::None
            } else {
                Reason::Timeout
            },
            latency_ms,
            anonymity: if usable {
                Anonymity::Elite
            } else {
                Anonymity::Unknown
            },
            exit_ip: if usable {
                "127.0.0.9".into()
            } else {
                String::new()
            },
            country: if usable { "DE".into() } else { String::new() },
            detail: if usable {
                String::new()
            } else {
                "timed out".into()
            },
            job_id: "job".into(),
        }
    }

    fn settings() -> JobSettings {
        crate::scheduler::tests::settings(10, 0)
    }

    fn member_of(change: Option<PoolChange>) -> Member {
        match change {
            Some(PoolChange::Member { member, .. }) => *member,
            other => panic!("expected a member change, got {other:?}"),
        }
    }

    #[test]
    fn a_refresh_adds_usable_proxies_and_nothing_else() {
        let mut pools = Pools::new(3, Duration::from_secs(60));
        assert_eq!(
            pools.observe("p", Feed::Refresh, &candidate(1), &seen(10, false, 0)),
            None,
            "an unusable stranger is not a member"
        );
        assert_eq!(
            pools.observe("p", Feed::Revalidation, &candidate(1), &seen(10, true, 5)),
            None,
            "a revalidation checks members only"
        );
        let m = member_of(pools.observe("p", Feed::Refresh, &candidate(1), &seen(10, true, 50)));
        assert!(m.live);
        assert_eq!(
            (m.first_seen_ms, m.last_seen_ms, m.last_checked_ms),
            (10, 10, 10)
        );
        assert_eq!(
            (m.successes, m.failures, m.checks, m.checks_usable),
            (1, 0, 1, 1)
        );
        assert_eq!((m.latency_ms, m.latency_avg_ms), (50, 50));
        assert_eq!(
            (m.exit_ip.as_str(), m.country.as_str()),
            ("127.0.0.9", "DE")
        );
        assert_eq!(m.anonymity, Anonymity::Elite);
        assert_eq!(pools.meta("p").unwrap().version, 1);
    }

    #[test]
    fn k_failures_in_a_row_leave_the_live_set_and_a_refresh_brings_it_back() {
        let mut pools = Pools::new(3, Duration::from_secs(60));
        let c = candidate(1);
        pools.observe("p", Feed::Refresh, &c, &seen(0, true, 100));
        // A failure between passes resets the streak: only failures in a row count.
        let m = member_of(pools.observe("p", Feed::Revalidation, &c, &seen(1, false, 0)));
        assert!(m.live && m.failures == 1 && m.successes == 0);
        let m = member_of(pools.observe("p", Feed::Revalidation, &c, &seen(2, true, 200)));
        assert!(m.live && m.failures == 0 && m.successes == 1);
        assert_eq!(
            m.latency_avg_ms, 130,
            "a moving average: 0.7 × 100 + 0.3 × 200"
        );
        for (i, wall) in [3, 4].into_iter().enumerate() {
            let m = member_of(pools.observe("p", Feed::Revalidation, &c, &seen(wall, false, 0)));
            assert!(m.live, "failure {} of 3 keeps it live", i + 1);
        }
        let m = member_of(pools.observe("p", Feed::Revalidation, &c, &seen(5, false, 0)));
        assert!(!m.live, "the third failure in a row takes it out");
        assert_eq!((m.failures, m.last_checked_ms, m.last_seen_ms), (3, 5, 2));
        assert_eq!(m.last_reason, Reason::Timeout);
        assert_eq!(m.last_detail, "timed out");
        assert_eq!((m.checks, m.checks_usable), (6, 2));
        assert!(pools.due(1_000_000).is_empty(), "no live member to check");
        // A refresh that finds it usable again readmits it.
        let m = member_of(pools.observe("p", Feed::Refresh, &c, &seen(9, true, 80)));
        assert!(m.live && m.failures == 0 && m.successes == 1);
        assert_eq!(m.first_seen_ms, 0, "its history stays");
        assert_eq!(pools.meta("p").unwrap().version, 7);
    }

    #[test]
    fn the_score_rewards_uptime_streaks_and_speed() {
        let mut fast = Member::new(candidate(1), &seen(0, true, 100));
        let mut slow = Member::new(candidate(2), &seen(0, true, 5_000));
        for t in 1..10 {
            fast.observe(&seen(t, true, 100), 3);
            slow.observe(&seen(t, true, 5_000), 3);
        }
        assert!(fast.score() > slow.score());
        let before = fast.score();
        fast.observe(&seen(20, false, 0), 3);
        assert!(
            fast.score() < before,
            "a failure costs the streak and uptime"
        );
        assert!((0.0..=100.0).contains(&fast.score()));
        assert!((fast.uptime() - 10.0 / 11.0).abs() < 1e-9);
    }

    #[test]
    fn rounds_come_at_the_interval_one_at_a_time() {
        let mut pools = Pools::new(3, Duration::from_secs(10));
        for port in 1..=3 {
            pools.observe(
                "p",
                Feed::Refresh,
                &candidate(port),
                &seen(port.into(), true, 10),
            );
        }
        assert!(
            pools.due(100_000).is_empty(),
            "no settings yet: no refresh started the pool"
        );
        assert!(pools.refresh_started("p", &settings(), None, 5).is_some());
        assert!(
            pools.refresh_started("p", &settings(), None, 6).is_none(),
            "nothing changed"
        );
        assert!(
            pools.due(10_004).is_empty(),
            "the first round comes an interval after"
        );
        let due = pools.due(10_005);
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].2.iter().map(|c| c.port).collect::<Vec<_>>(),
            vec![1, 2, 3],
            "least recently checked first"
        );
        pools.round_started("p", "r1", 10_005);
        assert!(pools.due(100_000).is_empty(), "one round at a time");
        assert_eq!(pools.job_ended("other"), None);
        assert!(pools.job_ended("r1").is_some());
        assert!(pools.due(20_004).is_empty(), "not before the interval");
        assert_eq!(pools.due(20_005).len(), 1);
        // A refresh may change the interval; zero turns rounds off.
        pools.refresh_started("p", &settings(), Some(Duration::ZERO), 30_000);
        assert!(pools.due(1_000_000).is_empty());
        pools.refresh_started("p", &settings(), None, 40_000);
        assert!(
            pools.due(1_000_000).is_empty(),
            "a refresh naming none keeps the pool's"
        );
    }

    #[test]
    fn a_clients_report_counts_as_a_failed_check_of_a_member_only() {
        let mut pools = Pools::new(2, Duration::from_secs(10));
        let c = candidate(1);
        pools.observe("p", Feed::Refresh, &c, &seen(1, true, 10));
        assert_eq!(
            pools.reported("p", "http://127.0.0.1:2", &seen(2, false, 0)),
            None
        );
        assert_eq!(pools.reported("q", &c.full_url(), &seen(2, false, 0)), None);
        let m = member_of(pools.reported("p", &c.full_url(), &seen(2, false, 0)));
        assert!(m.live && m.failures == 1);
        let m = member_of(pools.reported("p", &c.full_url(), &seen(3, false, 0)));
        assert!(!m.live, "K reports in a row take it out");
    }

    #[test]
    fn reports_alone_take_out_at_most_half_the_live_set_and_the_next_round_judges_them() {
        let mut pools = Pools::new(1, Duration::from_secs(10));
        for port in 1..=4 {
            pools.observe("p", Feed::Refresh, &candidate(port), &seen(1, true, 10));
        }
        pools.refresh_started("p", &settings(), None, 1);
        let live = |pools: &Pools| {
            (1..=4)
                .filter(|p| pools.member("p", &candidate(*p).full_url()).unwrap().live)
                .count()
        };
        let mut kept = Vec::new();
        for port in 1..=4 {
            let m = member_of(pools.reported("p", &candidate(port).full_url(), &seen(2, false, 0)));
            if m.live {
                assert_eq!(m.failures, 1, "it keeps its failure");
                assert!(m.last_detail.contains("kept live"), "{}", m.last_detail);
                kept.push(port);
            }
        }
        assert_eq!(kept, vec![3, 4]);
        assert_eq!(live(&pools), 2);
        // A kept member reported again stays too.
        let m = member_of(pools.reported("p", &candidate(3).full_url(), &seen(3, false, 0)));
        assert!(m.live);
        // The next round checks the live members and those reports took out.
        let due = pools.due(10_001);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].2.len(), 4, "{:?}", due[0].2);
        pools.round_started("p", "r1", 10_001);
        // A usable check brings a reported one back; a failed one takes a kept one out.
        let m =
            member_of(pools.observe("p", Feed::Revalidation, &candidate(1), &seen(11, true, 10)));
        assert!(m.live && m.failures == 0);
        let m =
            member_of(pools.observe("p", Feed::Revalidation, &candidate(3), &seen(11, false, 0)));
        assert!(!m.live);
        assert_eq!(live(&pools), 2, "1 and 4");
        // From the round's start, reports may take half of what is live again: one of two.
        let m = member_of(pools.reported("p", &candidate(4).full_url(), &seen(12, false, 0)));
        assert!(!m.live);
        let m = member_of(pools.reported("p", &candidate(1).full_url(), &seen(12, false, 0)));
        assert!(m.live, "{m:?}");
    }

    #[test]
    fn in_a_pool_without_rounds_reports_count_in_full() {
        let mut pools = Pools::new(1, Duration::ZERO);
        for port in 1..=2 {
            pools.observe("p", Feed::Refresh, &candidate(port), &seen(1, true, 10));
        }
        for port in 1..=2 {
            let m = member_of(pools.reported("p", &candidate(port).full_url(), &seen(2, false, 0)));
            assert!(!m.live);
        }
    }

    #[test]
    fn a_restored_pool_remembers_which_members_reports_took_out_since_its_last_round() {
        let report = |wall_ms| Observation {
            detail: format!("{REPORTED}connection refused"),
            ..seen(wall_ms, false, 0)
        };
        let mut pools = Pools::new(1, Duration::from_secs(10));
        for port in 1..=4 {
            pools.observe("p", Feed::Refresh, &candidate(port), &seen(1, true, 10));
        }
        pools.refresh_started("p", &settings(), None, 1);
        for port in 1..=2 {
            let m = member_of(pools.reported("p", &candidate(port).full_url(), &report(2)));
            assert!(!m.live);
        }
        let meta = pools.meta("p").unwrap().clone();
        let members: Vec<Member> = (1..=4)
            .map(|p| pools.member("p", &candidate(p).full_url()).unwrap().clone())
            .collect();
        let mut restored = Pools::new(1, Duration::from_secs(10));
        restored.restore(meta, members);
        // Half the live set went already: the third report keeps its member live.
        let m = member_of(restored.reported("p", &candidate(3).full_url(), &report(3)));
        assert!(m.live, "{m:?}");
        // And the next round checks the two reported out.
        assert_eq!(restored.due(10_001)[0].2.len(), 4);
    }

    #[test]
    fn dead_members_are_forgotten_after_a_while_live_ones_never() {
        let mut pools = Pools::new(1, Duration::from_secs(10));
        pools.observe("p", Feed::Refresh, &candidate(1), &seen(100, true, 10));
        pools.observe("p", Feed::Refresh, &candidate(2), &seen(100, true, 10));
        pools.observe("p", Feed::Revalidation, &candidate(2), &seen(200, false, 0));
        assert_eq!(pools.forget_dead(100), vec![]);
        assert_eq!(
            pools.forget_dead(101),
            vec![PoolChange::Forget {
                pool: "p".into(),
                version: 4,
                proxy: candidate(2).full_url()
            }]
        );
        assert!(pools.member("p", &candidate(1).full_url()).is_some());
    }

    #[test]
    fn a_restored_pool_keeps_its_round_until_the_rounds_job_ends() {
        let mut pools = Pools::new(3, Duration::from_secs(10));
        let member = Member::new(candidate(1), &seen(1, true, 10));
        let meta = PoolMeta {
            name: "p".into(),
            settings: Some(settings()),
            revalidate_every: Duration::from_secs(10),
            last_round_ms: 50,
            round_job: Some("r".into()),
            version: 7,
        };
        pools.restore(meta, vec![member.clone()]);
        assert_eq!(pools.member("p", &candidate(1).full_url()), Some(&member));
        assert!(pools.due(10_050).is_empty(), "its round is still on");
        assert!(pools.job_ended("r").is_some());
        assert_eq!(pools.due(10_050).len(), 1);
        let m =
            member_of(pools.observe("p", Feed::Revalidation, &candidate(1), &seen(9, true, 10)));
        assert_eq!(m.checks, 2);
        assert_eq!(pools.meta("p").unwrap().version, 8);
    }
}
