//! What clients read of pools: every pool's members as the store holds them (changes arrive
//! once they are committed), filtered and ordered for `GetPool`, the HTTP API and the CLI;
//! followers of `WatchPool`; and the live set's files. The scheduler decides what changes; this
//! room only shows it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::candidate::Protocol;
use crate::output;
use crate::scheduler::{Anonymity, Member, PoolMeta};

/// How many changes a follower may fall behind before it is sent a new snapshot instead.
const FOLLOWER_BACKLOG: usize = 4096;

/// Which members a reader wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PoolFilter {
    /// Any of these (empty: any).
    pub(crate) protocols: Vec<Protocol>,
    pub(crate) min_anonymity: Option<Anonymity>,
    /// Recent average latency at most this.
    pub(crate) max_latency_ms: Option<u32>,
    pub(crate) min_score: Option<f64>,
    /// Exit country, upper case.
    pub(crate) country: Option<String>,
    /// Members out of the live set too.
    pub(crate) include_dead: bool,
}

impl PoolFilter {
    pub(crate) fn passes(&self, m: &Member) -> bool {
        (m.live || self.include_dead)
            && (self.protocols.is_empty() || self.protocols.contains(&m.candidate.protocol))
            && self.min_anonymity.is_none_or(|min| m.anonymity >= min)
            && self
                .max_latency_ms
                .is_none_or(|max| m.latency_avg_ms <= max)
            && self.min_score.is_none_or(|min| m.score() >= min)
            && self
                .country
                .as_deref()
                .is_none_or(|c| m.country.eq_ignore_ascii_case(c))
    }
}

/// How members are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum PoolOrder {
    /// Best score first.
    #[default]
    Score,
    /// Lowest recent latency first.
    Latency,
    /// Most recently checked first.
    Recent,
    Random,
}

/// Members that pass `filter`, in `order`, at most `limit` (0: all). Ties keep the proxy order,
/// so equal queries give equal answers.
pub(crate) fn select(
    members: &BTreeMap<String, Member>,
    filter: &PoolFilter,
    order: PoolOrder,
    limit: usize,
) -> Vec<Member> {
    let mut chosen: Vec<&Member> = members.values().filter(|m| filter.passes(m)).collect();
    match order {
        PoolOrder::Score => chosen.sort_by(|a, b| b.score().total_cmp(&a.score())),
        PoolOrder::Latency => chosen.sort_by_key(|m| m.latency_avg_ms),
        PoolOrder::Recent => chosen.sort_by_key(|m| std::cmp::Reverse(m.last_checked_ms)),
        PoolOrder::Random => fastrand::shuffle(&mut chosen),
    }
    if limit > 0 {
        chosen.truncate(limit);
    }
    chosen.into_iter().cloned().collect()
}

/// What a follower is told of one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    /// The member passes the filter now and did not before.
    Added,
    /// It passed the filter and does not now.
    Removed,
    /// It passes the filter and changed.
    Changed,
}

/// How a follower with `filter` sees a member go from `before` to `after` (none: forgotten); none
/// when it sees nothing (it passed the filter neither before nor after).
pub(crate) fn change_kind(
    filter: &PoolFilter,
    before: Option<&Member>,
    after: Option<&Member>,
) -> Option<ChangeKind> {
    match (
        before.is_some_and(|b| filter.passes(b)),
        after.is_some_and(|a| filter.passes(a)),
    ) {
        (false, true) => Some(ChangeKind::Added),
        (true, false) => Some(ChangeKind::Removed),
        (true, true) => Some(ChangeKind::Changed),
        (false, false) => None,
    }
}

/// One committed change of a member, as followers get it.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    /// The pool's version after it.
    pub(crate) version: u64,
    pub(crate) before: Option<Member>,
    /// None: the member was forgotten.
    pub(crate) after: Option<Member>,
}

impl Applied {
    /// The member as followers are shown it: as it is now, or as it was when forgotten.
    pub(crate) fn member(&self) -> Option<&Member> {
        self.after.as_ref().or(self.before.as_ref())
    }
}

/// A pool as clients see it.
#[derive(Debug)]
struct ServedPool {
    meta: PoolMeta,
    members: BTreeMap<String, Member>,
    /// Every committed change, in order, for followers.
    changes: broadcast::Sender<Arc<Applied>>,
    /// The live set changed since the files were written.
    files_stale: bool,
    /// The live set's files as last written.
    files: Option<WrittenFiles>,
    /// The store holds the pool (a refresh made it): it is listed and has files. A pool only
    /// followed (a gateway may start first) is neither, until then.
    exists: bool,
}

/// What a pool's files hold, as last written.
#[derive(Debug, Clone)]
struct WrittenFiles {
    /// The live set's txt file.
    path: String,
    /// When each proxy in them was last seen usable (wall ms), ascending.
    seen: Vec<u64>,
}

impl ServedPool {
    fn summary(&self) -> PoolSummary {
        PoolSummary {
            meta: self.meta.clone(),
            live: self.members.values().filter(|m| m.live).count() as u64,
            total: self.members.len() as u64,
            files: self
                .files
                .as_ref()
                .map(|f| f.path.clone())
                .unwrap_or_default(),
        }
    }

    fn new(meta: PoolMeta) -> ServedPool {
        ServedPool {
            meta,
            members: BTreeMap::new(),
            changes: broadcast::channel(FOLLOWER_BACKLOG).0,
            files_stale: true,
            files: None,
            exists: false,
        }
    }
}

/// A pool's head: its meta and counts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PoolSummary {
    pub(crate) meta: PoolMeta,
    pub(crate) live: u64,
    pub(crate) total: u64,
    /// The live set's txt file, once written.
    pub(crate) files: String,
}

/// A pool's members that pass a filter, and its head.
#[derive(Debug, Clone)]
pub(crate) struct PoolView {
    pub(crate) summary: PoolSummary,
    pub(crate) members: Vec<Member>,
}

/// A follower's start: what it sees first and where its changes come from.
pub(crate) struct Following {
    pub(crate) view: PoolView,
    pub(crate) changes: broadcast::Receiver<Arc<Applied>>,
}

/// Every pool clients can read, by name. Changed only by the publisher, with what the store
/// committed.
#[derive(Debug, Default)]
pub(crate) struct ServedPools {
    pools: HashMap<String, ServedPool>,
}

impl ServedPools {
    /// The pools as the store holds them at start.
    pub(crate) fn new(stored: impl IntoIterator<Item = (PoolMeta, Vec<Member>)>) -> ServedPools {
        let pools = stored
            .into_iter()
            .map(|(meta, members)| {
                let mut pool = ServedPool::new(meta);
                pool.exists = true;
                pool.members = members
                    .into_iter()
                    .map(|m| (m.candidate.full_url(), m))
                    .collect();
                (pool.meta.name.clone(), pool)
            })
            .collect();
        ServedPools { pools }
    }

    /// The pool `name`, made if it is new; `committed` says a committed change made it.
    fn pool_mut(&mut self, name: &str, committed: bool) -> &mut ServedPool {
        let pool = self
            .pools
            .entry(name.to_string())
            .or_insert_with(|| ServedPool::new(empty_meta(name)));
        pool.exists |= committed;
        pool
    }

    /// A pool the store holds.
    fn existing(&self, name: &str) -> Option<&ServedPool> {
        self.pools.get(name).filter(|p| p.exists)
    }

    /// A committed member change: followers get it, and the files are stale if the live set
    /// changed.
    pub(crate) fn apply_member(&mut self, pool: &str, version: u64, member: Member) {
        let served = self.pool_mut(pool, true);
        let key = member.candidate.full_url();
        let before = served.members.insert(key, member.clone());
        served.meta.version = served.meta.version.max(version);
        if member.live || before.as_ref().is_some_and(|b| b.live) {
            served.files_stale = true;
        }
        // No follower is fine.
        let _ = served.changes.send(Arc::new(Applied {
            version,
            before,
            after: Some(member),
        }));
    }

    /// A committed meta change.
    pub(crate) fn apply_meta(&mut self, meta: PoolMeta) {
        let served = self.pool_mut(&meta.name, true);
        let version = served.meta.version.max(meta.version);
        served.meta = PoolMeta { version, ..meta };
    }

    /// A member forgotten (out of the live set for long): followers that see dead members are
    /// told it is gone.
    pub(crate) fn forget(&mut self, pool: &str, version: u64, key: &str) {
        let served = self.pool_mut(pool, true);
        served.meta.version = served.meta.version.max(version);
        if let Some(before) = served.members.remove(key) {
            let _ = served.changes.send(Arc::new(Applied {
                version,
                before: Some(before),
                after: None,
            }));
        }
    }

    /// The pools the store holds, by name.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .pools
            .iter()
            .filter(|(_, p)| p.exists)
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    pub(crate) fn summary(&self, name: &str) -> Option<PoolSummary> {
        self.existing(name).map(ServedPool::summary)
    }

    /// The members of `name` that pass `filter`, in `order`; none for a pool not known.
    pub(crate) fn view(
        &self,
        name: &str,
        filter: &PoolFilter,
        order: PoolOrder,
        limit: usize,
    ) -> Option<PoolView> {
        let p = self.existing(name)?;
        Some(PoolView {
            summary: p.summary(),
            members: select(&p.members, filter, order, limit),
        })
    }

    /// A snapshot and the changes after it; a pool not known yet is followed from empty (it is
    /// not listed, and has no files, until a refresh makes it). Pools only followed that no one
    /// follows any more are dropped here: the followers' limit bounds them.
    pub(crate) fn follow(&mut self, name: &str, filter: &PoolFilter) -> Following {
        self.pools
            .retain(|_, p| p.exists || p.changes.receiver_count() > 0);
        let pool = self.pool_mut(name, false);
        let changes = pool.changes.subscribe();
        let view = PoolView {
            summary: pool.summary(),
            members: select(&pool.members, filter, PoolOrder::Score, 0),
        };
        Following { view, changes }
    }

    /// Pools whose live set changed since their files were written, with their live members.
    pub(crate) fn stale_files(&self) -> Vec<(String, Vec<Member>)> {
        self.pools
            .values()
            .filter(|p| p.exists && p.files_stale)
            .map(|p| {
                let live = select(&p.members, &PoolFilter::default(), PoolOrder::Latency, 0);
                (p.meta.name.clone(), live)
            })
            .collect()
    }

    /// `name`'s files now hold `live`, at `path`.
    pub(crate) fn files_written(&mut self, name: &str, path: String, live: &[Member]) {
        let served = self.pool_mut(name, true);
        served.files_stale = false;
        let mut seen: Vec<u64> = live.iter().map(|m| m.last_seen_ms).collect();
        seen.sort_unstable();
        served.files = Some(WrittenFiles { path, seen });
    }

    /// `name`'s files are left as they are (not stale any more, not written either).
    pub(crate) fn files_kept(&mut self, name: &str) {
        self.pool_mut(name, true).files_stale = false;
    }

    /// The live set's txt file, once written, and how many proxies in it were seen usable at
    /// `since_ms` or after: what a refresh that started then may call fresh.
    pub(crate) fn files_fresh_since(&self, name: &str, since_ms: u64) -> Option<(String, u64)> {
        let files = self.pools.get(name)?.files.as_ref()?;
        let older = files.seen.partition_point(|&seen| seen < since_ms);
        Some((files.path.clone(), (files.seen.len() - older) as u64))
    }
}

fn empty_meta(name: &str) -> PoolMeta {
    PoolMeta {
        name: name.to_string(),
        settings: None,
        revalidate_every: std::time::Duration::ZERO,
        last_round_ms: 0,
        round_job: None,
        version: 0,
    }
}

/// The files of a pool's live set: `live_proxies.json` (every member with its history, fastest
/// first), `live_proxies.txt` and one txt per protocol.
pub(crate) fn render(live: &[Member]) -> Vec<(String, String)> {
    let entries: Vec<serde_json::Value> = live.iter().map(member_json).collect();
    let lines = |members: &mut dyn Iterator<Item = &Member>| -> String {
        members
            .map(|m| format!("{}\n", m.candidate.full_url()))
            .collect()
    };
    let mut files = vec![
        (
            "live_proxies.json".to_string(),
            serde_json::to_string_pretty(&entries).expect("json values serialize") + "\n",
        ),
        (output::LIVE_TXT.to_string(), lines(&mut live.iter())),
    ];
    for protocol in Protocol::ALL {
        files.push((
            format!("{}.txt", protocol.scheme()),
            lines(&mut live.iter().filter(|m| m.candidate.protocol == protocol)),
        ));
    }
    files
}

/// A member as the files and the HTTP API show it.
/// A pool's head as JSON, for the HTTP API's pool list and the dashboard: its sizes, version and
/// revalidation.
pub(crate) fn summary_json(p: &PoolSummary) -> serde_json::Value {
    serde_json::json!({
        "pool": p.meta.name,
        "live": p.live,
        "total": p.total,
        "version": p.meta.version,
        "revalidate_every_ms": p.meta.revalidate_every.as_millis() as u64,
        "last_revalidation_ms": p.meta.last_round_ms,
    })
}

pub(crate) fn member_json(m: &Member) -> serde_json::Value {
    serde_json::json!({
        "proxy": m.candidate.full_url(),
        "protocol": m.candidate.protocol.scheme(),
        "host": m.candidate.host,
        "port": m.candidate.port,
        "live": m.live,
        "latency_ms": m.latency_ms,
        "latency_avg_ms": m.latency_avg_ms,
        "exit_ip": m.exit_ip,
        "anonymity": m.anonymity.name(),
        "country": m.country,
        "score": m.score(),
        "uptime": m.uptime(),
        "successes": m.successes,
        "failures": m.failures,
        "checks": m.checks,
        "first_seen_ms": m.first_seen_ms,
        "last_seen_ms": m.last_seen_ms,
        "last_checked_ms": m.last_checked_ms,
        "last_reason": m.last_reason.name(),
        "job_id": m.last_job_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candidate::Candidate;
    use crate::scheduler::Reason;

    fn member(port: u16, protocol: Protocol, live: bool, latency: u32) -> Member {
        Member {
            candidate: Candidate {
                protocol,
                host: "127.0.0.1".into(),
                port,
                auth: None,
            },
            live,
            first_seen_ms: 1,
            last_seen_ms: 1,
            last_checked_ms: u64::from(port),
            successes: u32::from(live),
            failures: u32::from(!live) * 3,
            checks: 4,
            checks_usable: 1,
            latency_ms: latency,
            latency_avg_ms: latency,
            anonymity: Anonymity::Elite,
            exit_ip: String::new(),
            country: if port.is_multiple_of(2) {
                "DE".into()
            } else {
                String::new()
            },
            last_reason: Reason::None,
            last_detail: String::new(),
            last_job_id: String::new(),
        }
    }

    fn pool(members: &[Member]) -> BTreeMap<String, Member> {
        members
            .iter()
            .map(|m| (m.candidate.full_url(), m.clone()))
            .collect()
    }

    fn ports(members: &[Member]) -> Vec<u16> {
        members.iter().map(|m| m.candidate.port).collect()
    }

    #[test]
    fn filters_orders_and_limits() {
        let members = pool(&[
            member(1, Protocol::Http, true, 300),
            member(2, Protocol::Socks5, true, 100),
            member(3, Protocol::Http, false, 50),
            member(4, Protocol::Http, true, 200),
        ]);
        let all = PoolFilter::default();
        assert_eq!(
            ports(&select(&members, &all, PoolOrder::Latency, 0)),
            [2, 4, 1]
        );
        assert_eq!(ports(&select(&members, &all, PoolOrder::Recent, 2)), [4, 2]);
        assert_eq!(
            ports(&select(&members, &all, PoolOrder::Score, 0)),
            [2, 4, 1]
        );
        let http = PoolFilter {
            protocols: vec![Protocol::Http],
            ..PoolFilter::default()
        };
        assert_eq!(
            ports(&select(&members, &http, PoolOrder::Latency, 0)),
            [4, 1]
        );
        let fast = PoolFilter {
            max_latency_ms: Some(200),
            include_dead: true,
            ..PoolFilter::default()
        };
        assert_eq!(
            ports(&select(&members, &fast, PoolOrder::Latency, 0)),
            [3, 2, 4]
        );
        let german = PoolFilter {
            country: Some("de".into()),
            ..PoolFilter::default()
        };
        assert_eq!(
            ports(&select(&members, &german, PoolOrder::Latency, 0)),
            [2, 4]
        );
        let anonymous = PoolFilter {
            min_anonymity: Some(Anonymity::Anonymous),
            min_score: Some(101.0),
            ..PoolFilter::default()
        };
        assert!(select(&members, &anonymous, PoolOrder::Score, 0).is_empty());
    }

    #[test]
    fn followers_see_changes_through_their_filter() {
        let http = PoolFilter {
            protocols: vec![Protocol::Http],
            ..PoolFilter::default()
        };
        let live = member(1, Protocol::Http, true, 10);
        let dead = member(1, Protocol::Http, false, 10);
        let socks = member(2, Protocol::Socks5, true, 10);
        assert_eq!(
            change_kind(&http, None, Some(&live)),
            Some(ChangeKind::Added)
        );
        assert_eq!(
            change_kind(&http, Some(&live), Some(&live)),
            Some(ChangeKind::Changed)
        );
        assert_eq!(
            change_kind(&http, Some(&live), Some(&dead)),
            Some(ChangeKind::Removed)
        );
        assert_eq!(change_kind(&http, Some(&dead), Some(&dead)), None);
        assert_eq!(
            change_kind(&http, Some(&dead), Some(&live)),
            Some(ChangeKind::Added)
        );
        assert_eq!(change_kind(&http, None, Some(&socks)), None);
        let everyone = PoolFilter {
            include_dead: true,
            ..PoolFilter::default()
        };
        assert_eq!(
            change_kind(&everyone, Some(&dead), None),
            Some(ChangeKind::Removed)
        );
        assert_eq!(change_kind(&http, Some(&dead), None), None);
    }

    #[test]
    fn committed_changes_reach_followers_once_and_stale_the_files() {
        let mut served = ServedPools::new([]);
        let mut following = served.follow("p", &PoolFilter::default());
        assert!(following.view.members.is_empty());
        assert!(
            served.stale_files().is_empty() && served.names().is_empty(),
            "a pool only followed has no files and is not listed"
        );
        served.apply_meta(empty_meta("p"));
        assert_eq!(served.stale_files().len(), 1);
        assert_eq!(served.names(), ["p"]);
        served.files_written("p", "/x/live_proxies.txt".into(), &[]);
        assert!(served.stale_files().is_empty());
        served.apply_member("p", 1, member(1, Protocol::Http, true, 10));
        served.apply_member("p", 2, member(1, Protocol::Http, false, 10));
        let first = following.changes.try_recv().unwrap();
        assert_eq!((first.version, first.before.is_none()), (1, true));
        let second = following.changes.try_recv().unwrap();
        assert_eq!(second.version, 2);
        assert!(second.before.as_ref().unwrap().live && !second.after.as_ref().unwrap().live);
        assert!(following.changes.try_recv().is_err(), "each change once");
        let stale = served.stale_files();
        assert_eq!(stale.len(), 1);
        assert!(stale[0].1.is_empty(), "the live set is empty again");
        let summary = served.summary("p").unwrap();
        assert_eq!(
            (summary.live, summary.total, summary.meta.version),
            (0, 1, 2)
        );
        // A dead member changing again does not touch the live set's files.
        served.files_written("p", "/x/live_proxies.txt".into(), &[]);
        served.apply_member("p", 3, member(1, Protocol::Http, false, 10));
        assert!(served.stale_files().is_empty());
        // Forgotten: gone, and followers are told.
        while following.changes.try_recv().is_ok() {}
        served.forget(
            "p",
            4,
            &member(1, Protocol::Http, false, 10).candidate.full_url(),
        );
        let gone = following.changes.try_recv().unwrap();
        assert_eq!((gone.version, gone.after.is_none()), (4, true));
        assert_eq!(gone.member().unwrap().candidate.port, 1);
        assert_eq!(served.summary("p").unwrap().total, 0);
        assert_eq!(served.summary("p").unwrap().meta.version, 4);
        // A pool only followed, and followed no more, is dropped at the next follow.
        drop(served.follow("q", &PoolFilter::default()));
        let _r = served.follow("r", &PoolFilter::default());
        assert!(!served.pools.contains_key("q"));
    }

    #[test]
    fn a_refresh_calls_fresh_what_was_seen_usable_since_it_started() {
        let mut served = ServedPools::new([]);
        assert_eq!(served.files_fresh_since("p", 0), None, "not written yet");
        let mut old = member(1, Protocol::Http, true, 10);
        old.last_seen_ms = 100;
        let mut new = member(2, Protocol::Http, true, 10);
        new.last_seen_ms = 200;
        served.files_written("p", "/x/live_proxies.txt".into(), &[new, old]);
        let fresh = |since| served.files_fresh_since("p", since).unwrap().1;
        assert_eq!(
            (fresh(0), fresh(100), fresh(101), fresh(200), fresh(201)),
            (2, 2, 1, 1, 0)
        );
    }

    #[test]
    fn the_files_list_the_live_set() {
        let live = [
            member(2, Protocol::Socks5, true, 100),
            member(4, Protocol::Http, true, 200),
        ];
        let files: BTreeMap<String, String> = render(&live).into_iter().collect();
        assert_eq!(
            files["live_proxies.txt"],
            "socks5://127.0.0.1:2\nhttp://127.0.0.1:4\n"
        );
        assert_eq!(files["http.txt"], "http://127.0.0.1:4\n");
        let json: serde_json::Value = serde_json::from_str(&files["live_proxies.json"]).unwrap();
        assert_eq!(json[0]["proxy"], "socks5://127.0.0.1:2");
        assert_eq!(json[0]["latency_avg_ms"], 100);
    }
}
