//! Choosing an upstream: the gateway's view of the pool's live set, rotation policies, sticky
//! sessions by rendezvous hashing, in-flight counts and cool-downs. Pure: the clock is passed in.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use proxyfleet_proto::v1 as pb;

use crate::wants::{Wants, protocol_name};

/// Most filters whose round-robin turn is remembered; past it the turns start again, which
/// costs evenness for a moment and bounds what clients naming ever new filters can grow.
const MAX_FILTERS: usize = 1024;

/// An upstream proxy of the pool, as the gateway dials it.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// The pool's name for it: `scheme://[user:pass@]host:port` (PoolMember.proxy); unique.
    pub key: String,
    /// How the gateway speaks to it.
    pub protocol: pb::Protocol,
    /// A name or an address; an IPv6 address without brackets.
    pub host: String,
    /// From 1.
    pub port: u16,
    /// Credentials the upstream wants.
    pub auth: Option<(String, String)>,
    /// The pool's recent average latency.
    pub latency_avg_ms: u32,
    /// What the pool's checks found it reveals.
    pub anonymity: pb::Anonymity,
    /// ISO 3166 alpha-2, upper case; empty when unknown.
    pub country: String,
    /// The pool's 0 to 100, higher is better.
    pub score: f64,
}

impl Upstream {
    /// From a pool member; None when it cannot be dialled (unknown protocol, port 0 or > 65535).
    /// Credentials come from the member's `proxy` URL userinfo, as the pool checked them.
    ///
    /// A member without a host or without its `proxy` name is refused too: the name is the key
    /// REMOVED and CHANGED events find it by.
    pub fn from_member(m: &pb::PoolMember) -> Option<Upstream> {
        let protocol = pb::Protocol::try_from(m.protocol)
            .ok()
            .filter(|p| *p != pb::Protocol::Unspecified)?;
        let port = u16::try_from(m.port).ok().filter(|p| *p != 0)?;
        if m.host.is_empty() || m.proxy.is_empty() {
            return None;
        }
        Some(Upstream {
            key: m.proxy.clone(),
            protocol,
            host: m.host.clone(),
            port,
            auth: credentials(&m.proxy),
            latency_avg_ms: m.latency_avg_ms,
            anonymity: pb::Anonymity::try_from(m.anonymity).unwrap_or_default(),
            country: m.country.trim().to_ascii_uppercase(),
            score: m.score,
        })
    }

    /// `scheme://host:port` without credentials: how logs and metrics name it.
    pub fn url(&self) -> String {
        let scheme = protocol_name(self.protocol);
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// `user:pass` from `scheme://user:pass@host:port`, as the coordinator wrote them (it keeps
/// credentials as the list gave them, and the workers checked the proxy with those very bytes).
/// Like the coordinator's reading of a proxy line, the userinfo ends at the last `@` and the user
/// at its first `:`.
fn credentials(proxy: &str) -> Option<(String, String)> {
    let rest = proxy.split_once("://").map_or(proxy, |(_, rest)| rest);
    let (userinfo, _) = rest.rsplit_once('@')?;
    let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    Some((user.to_string(), pass.to_string()))
}

/// How a connection without a session picks among the upstreams that pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Each in turn, over the sorted list of those that pass.
    #[default]
    RoundRobin,
    /// Any, uniformly.
    Random,
    /// The lowest recent average latency; ties in turn.
    LeastLatency,
    /// The fewest connections open through it; ties in turn.
    LeastInFlight,
}

impl Policy {
    const ALL: [Policy; 4] = [
        Policy::RoundRobin,
        Policy::Random,
        Policy::LeastLatency,
        Policy::LeastInFlight,
    ];

    /// The name a flag takes: `round-robin`, `random`, `least-latency`, `least-in-flight`.
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round-robin",
            Policy::Random => "random",
            Policy::LeastLatency => "least-latency",
            Policy::LeastInFlight => "least-in-flight",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Policy, String> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!(
                    "unknown policy {s:?}: expected round-robin, random, least-latency or least-in-flight"
                )
            })
    }
}

/// One upstream and what the gateway knows of it beyond the pool.
#[derive(Debug)]
struct Member {
    /// As the pool last described it; replaced by `upsert` and `replace`.
    upstream: Upstream,
    /// Connections open through it: `started` adds, `finished` takes away.
    in_flight: u32,
    /// Skipped until then, after `failed`; a past instant is no cool-down.
    cooling_until: Option<Instant>,
    /// Changed whenever it joins or fails, so a session bound before either chooses again.
    generation: u64,
}

impl Member {
    fn cooling(&self, now: Instant) -> bool {
        self.cooling_until.is_some_and(|until| until > now)
    }
}

/// Most of the set, in percent, cooling down at once unless told otherwise.
pub const DEFAULT_MAX_COOLING_PERCENT: u8 = 50;

/// What [`Chooser::failed`] did with a failed upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cooled {
    /// It cools down: skipped until the cool-down ends, and worth reporting.
    Yes,
    /// `cooling` upstreams cool down already, the most allowed (`cap`): it stays in turn.
    No { cooling: usize, cap: usize },
    /// The set no longer holds it.
    Gone,
}

/// A session key's upstream.
#[derive(Debug)]
struct Binding {
    /// The upstream's key.
    key: String,
    /// The upstream's generation when bound; another means it failed or left since.
    generation: u64,
    /// The session's last pick: the TTL runs from here.
    last_used: Instant,
    /// Its place in `Chooser::sessions_by_use`.
    use_number: u64,
}

/// Which upstreams a client asks for, leaving out the session: the round-robin turn is kept
/// per filter, so each filter's picks spread evenly however they interleave with others'.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Filter {
    protocols: Vec<i32>,
    min_anonymity: i32,
    max_latency_ms: Option<u32>,
    country: Option<String>,
}

impl Filter {
    fn of(wants: &Wants) -> Filter {
        let mut protocols: Vec<i32> = wants.protocols.iter().map(|p| *p as i32).collect();
        protocols.sort_unstable();
        protocols.dedup();
        Filter {
            protocols,
            min_anonymity: wants.min_anonymity as i32,
            max_latency_ms: wants.max_latency_ms,
            country: wants.country.as_ref().map(|c| c.to_ascii_uppercase()),
        }
    }
}

/// The gateway's view of the pool and its choices: which upstream serves each client connection.
pub struct Chooser {
    /// Round-robin or otherwise, for connections without a session.
    policy: Policy,
    /// How long an upstream that failed is skipped.
    cooldown: Duration,
    /// Most of the set, in percent, cooling down at once (at least one upstream may always).
    max_cooling_percent: u8,
    /// How long a session key keeps its upstream after its last use.
    sticky_ttl: Duration,
    /// Most session keys remembered.
    max_sessions: usize,
    /// The pool's live set by key, sorted: the order round-robin runs over. Changed by
    /// `replace`, `upsert` and `remove`; in-flight counts and cool-downs by the connections.
    members: BTreeMap<String, Member>,
    /// Session key to its upstream; set by `pick`, the oldest dropped past `max_sessions` or
    /// when idle past `sticky_ttl`.
    sessions: HashMap<String, Binding>,
    /// Session keys by use number, least recently used first: what is dropped first.
    sessions_by_use: BTreeMap<u64, String>,
    /// The last use number given to a session.
    uses: u64,
    /// The last generation given to a member.
    generations: u64,
    /// Picks made so far per filter: the round-robin turn.
    turns: HashMap<Filter, u64>,
    /// For `Policy::Random`.
    rng: fastrand::Rng,
}

impl fmt::Debug for Chooser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chooser")
            .field("policy", &self.policy)
            .field("upstreams", &self.members.len())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Chooser {
    /// `cooldown`: how long an upstream that failed is skipped; `sticky_ttl`: how long a session key
    /// keeps its upstream after its last use; `max_sessions`: most session keys remembered (oldest
    /// dropped first).
    pub fn new(
        policy: Policy,
        cooldown: Duration,
        sticky_ttl: Duration,
        max_sessions: usize,
    ) -> Chooser {
        Chooser {
            policy,
            cooldown,
            max_cooling_percent: DEFAULT_MAX_COOLING_PERCENT,
            sticky_ttl,
            max_sessions,
            members: BTreeMap::new(),
            sessions: HashMap::new(),
            sessions_by_use: BTreeMap::new(),
            uses: 0,
            generations: 0,
            turns: HashMap::new(),
            rng: fastrand::Rng::new(),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// At most `percent` of the set cools down at once (at least one upstream may always): past
    /// it, [`Chooser::failed`] leaves upstreams in turn and says so.
    pub fn with_max_cooling(mut self, percent: u8) -> Chooser {
        self.max_cooling_percent = percent.min(100);
        self
    }

    /// Replaces the whole set (a WatchPool snapshot). An upstream in both keeps its in-flight
    /// count, its cool-down and its sessions; one that is gone takes them along.
    pub fn replace(&mut self, upstreams: Vec<Upstream>) {
        let mut old = std::mem::take(&mut self.members);
        for upstream in upstreams {
            let member = match old.remove(&upstream.key) {
                Some(member) => Member { upstream, ..member },
                None => self.joined(upstream),
            };
            self.members.insert(member.upstream.key.clone(), member);
        }
    }

    /// Adds or updates one (ADDED / CHANGED event).
    pub fn upsert(&mut self, upstream: Upstream) {
        match self.members.get_mut(&upstream.key) {
            Some(member) => member.upstream = upstream,
            None => {
                let member = self.joined(upstream);
                self.members.insert(member.upstream.key.clone(), member);
            }
        }
    }

    /// Removes one (REMOVED event), with its in-flight count, cool-down and sessions.
    pub fn remove(&mut self, key: &str) {
        self.members.remove(key);
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The upstream named `key`, if the pool has it.
    pub fn get(&self, key: &str) -> Option<&Upstream> {
        self.members.get(key).map(|m| &m.upstream)
    }

    /// Upstreams cooling down at `now`.
    pub fn cooling(&self, now: Instant) -> usize {
        self.members.values().filter(|m| m.cooling(now)).count()
    }

    /// Session keys remembered, idle ones not yet dropped included.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The upstream for one client connection: among the upstreams that pass `wants` and are not in
    /// `tried` (already failed for this connection) and not cooling down, by the policy; with
    /// `wants.session` set, the session's upstream while it is live, passes, was not tried and its
    /// TTL has not run out (refreshed by each use); otherwise the rendezvous-hash choice for the
    /// session among the candidates (highest hash(session, key)), so a pool change moves only the
    /// sessions it must. If every passing upstream is cooling down, the one whose cool-down ends
    /// first is used rather than none (a pool of a few should not fail every client for a
    /// cool-down). None only when no upstream passes `wants` outside `tried`.
    pub fn pick(&mut self, wants: &Wants, tried: &[String], now: Instant) -> Option<Upstream> {
        self.forget_idle_sessions(now);
        let usable = |m: &Member| wants.passes(&m.upstream) && !tried.contains(&m.upstream.key);

        if let Some(session) = wants.session.as_deref() {
            let ttl = self.sticky_ttl;
            let bound = self
                .sessions
                .get(session)
                .filter(|b| now.saturating_duration_since(b.last_used) < ttl)
                .and_then(|binding| {
                    self.members
                        .get(&binding.key)
                        .filter(|m| m.generation == binding.generation)
                });
            if let Some(member) = bound.filter(|m| !m.cooling(now) && usable(m)) {
                let (key, generation) = (member.upstream.key.clone(), member.generation);
                let upstream = member.upstream.clone();
                self.bind(session, key, generation, now);
                return Some(upstream);
            }
        }

        let passing: Vec<&Member> = self.members.values().filter(|m| usable(m)).collect();
        let ready: Vec<&Member> = passing
            .iter()
            .copied()
            .filter(|m| !m.cooling(now))
            .collect();
        let chosen = if ready.is_empty() {
            // Every one failed lately: the one whose cool-down ends first is the best bet.
            passing
                .iter()
                .copied()
                .min_by_key(|m| (m.cooling_until, &m.upstream.key))?
        } else if let Some(session) = wants.session.as_deref() {
            ready
                .iter()
                .copied()
                .max_by_key(|m| (rendezvous(session, &m.upstream.key), &m.upstream.key))?
        } else {
            let turn = next_turn(&mut self.turns, wants);
            match self.policy {
                Policy::RoundRobin => in_turn(&ready, turn),
                Policy::Random => ready[self.rng.usize(..ready.len())],
                Policy::LeastLatency => least_by(&ready, turn, |m| m.upstream.latency_avg_ms),
                Policy::LeastInFlight => least_by(&ready, turn, |m| m.in_flight),
            }
        };
        let (key, generation) = (chosen.upstream.key.clone(), chosen.generation);
        let upstream = chosen.upstream.clone();
        if let Some(session) = wants.session.as_deref() {
            self.bind(session, key, generation, now);
        }
        Some(upstream)
    }

    /// A connection through `key` started (LeastInFlight counts them; in_flight() reads).
    pub fn started(&mut self, key: &str) {
        if let Some(member) = self.members.get_mut(key) {
            member.in_flight = member.in_flight.saturating_add(1);
        }
    }

    /// A connection through `key` ended.
    pub fn finished(&mut self, key: &str) {
        if let Some(member) = self.members.get_mut(key) {
            member.in_flight = member.in_flight.saturating_sub(1);
        }
    }

    /// Connections open through `key`; 0 for one the pool does not have.
    pub fn in_flight(&self, key: &str) -> u32 {
        self.members.get(key).map_or(0, |m| m.in_flight)
    }

    /// Connecting or handshaking through `key` failed at `now`: sessions bound to it choose
    /// again, and it is skipped for the cool-down, unless that would leave more than the
    /// max-cooling share of the set cooling at once (at least one upstream may always cool).
    /// `Cooled::No` then: so many failing together points at the gateway's own side (its network,
    /// its load) more than at the proxies, and a failure it does not cool is not worth reporting.
    pub fn failed(&mut self, key: &str, now: Instant) -> Cooled {
        let cap = (self.members.len() * usize::from(self.max_cooling_percent) / 100).max(1);
        let cooling = self.cooling(now);
        let Some(member) = self.members.get_mut(key) else {
            return Cooled::Gone;
        };
        self.generations += 1;
        member.generation = self.generations;
        if !member.cooling(now) && cooling >= cap {
            return Cooled::No { cooling, cap };
        }
        member.cooling_until = Some(now.checked_add(self.cooldown).unwrap_or(now));
        Cooled::Yes
    }

    /// A new member for an upstream that joins, with a generation no binding holds.
    fn joined(&mut self, upstream: Upstream) -> Member {
        self.generations += 1;
        Member {
            upstream,
            in_flight: 0,
            cooling_until: None,
            generation: self.generations,
        }
    }

    /// Binds `session` to `key` as used at `now`, dropping the least recently used past the
    /// bound.
    fn bind(&mut self, session: &str, key: String, generation: u64, now: Instant) {
        if self.max_sessions == 0 {
            return;
        }
        self.uses += 1;
        let binding = Binding {
            key,
            generation,
            last_used: now,
            use_number: self.uses,
        };
        if let Some(old) = self.sessions.insert(session.to_string(), binding) {
            self.sessions_by_use.remove(&old.use_number);
        }
        self.sessions_by_use.insert(self.uses, session.to_string());
        while self.sessions.len() > self.max_sessions {
            let Some((_, oldest)) = self.sessions_by_use.pop_first() else {
                break;
            };
            self.sessions.remove(&oldest);
        }
    }

    /// Drops the sessions idle for `sticky_ttl`, least recently used first.
    fn forget_idle_sessions(&mut self, now: Instant) {
        while let Some((_, session)) = self.sessions_by_use.first_key_value() {
            let idle = self
                .sessions
                .get(session)
                .is_none_or(|b| now.saturating_duration_since(b.last_used) >= self.sticky_ttl);
            if !idle {
                break;
            }
            if let Some((_, session)) = self.sessions_by_use.pop_first() {
                self.sessions.remove(&session);
            }
        }
    }
}

/// The turn of `wants`' filter, counted up for the next pick.
fn next_turn(turns: &mut HashMap<Filter, u64>, wants: &Wants) -> u64 {
    let filter = Filter::of(wants);
    if turns.len() >= MAX_FILTERS && !turns.contains_key(&filter) {
        turns.clear();
    }
    let turn = turns.entry(filter).or_insert(0);
    let this = *turn;
    *turn = turn.wrapping_add(1);
    this
}

/// The candidate whose turn it is; `candidates` is not empty.
fn in_turn<'a>(candidates: &[&'a Member], turn: u64) -> &'a Member {
    // usize fits in u64 on every target Rust supports, and the remainder fits in usize.
    candidates[(turn % candidates.len() as u64) as usize]
}

/// The candidates with the least `measure`, the one whose turn it is among them.
fn least_by<'a>(
    candidates: &[&'a Member],
    turn: u64,
    measure: impl Fn(&Member) -> u32,
) -> &'a Member {
    let least = candidates.iter().map(|m| measure(m)).min().unwrap_or(0);
    let tied: Vec<&Member> = candidates
        .iter()
        .copied()
        .filter(|m| measure(m) == least)
        .collect();
    in_turn(&tied, turn)
}

/// How much `session` wants upstream `key`: FNV-1a 64 over both, then a SplitMix64 finish so
/// that keys alike in all but their last bytes still spread. Fixed for good: gateways and their
/// restarts must agree on it.
fn rendezvous(session: &str, key: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    // 0xff never occurs in UTF-8, so ("ab", "c") and ("a", "bc") differ.
    let bytes = session.bytes().chain([0xff]).chain(key.bytes());
    let mut h = bytes.fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(30);
    const TTL: Duration = Duration::from_secs(60);

    fn key(n: usize) -> String {
        format!("http://10.0.0.{n}:8080")
    }

    fn upstream(n: usize) -> Upstream {
        Upstream {
            key: key(n),
            protocol: pb::Protocol::Http,
            host: format!("10.0.0.{n}"),
            port: 8080,
            auth: None,
            latency_avg_ms: 100,
            anonymity: pb::Anonymity::Elite,
            country: "DE".to_string(),
            score: 90.0,
        }
    }

    /// With no cap on cooling: the cap has tests of its own.
    fn chooser(policy: Policy, n: usize) -> Chooser {
        let mut c = Chooser::new(policy, COOLDOWN, TTL, 10_000).with_max_cooling(100);
        c.rng = fastrand::Rng::with_seed(7);
        c.replace((0..n).map(upstream).collect());
        c
    }

    fn any() -> Wants {
        Wants::default()
    }

    fn session(s: &str) -> Wants {
        Wants {
            session: Some(s.to_string()),
            ..Wants::default()
        }
    }

    fn picked(c: &mut Chooser, wants: &Wants, tried: &[String], now: Instant) -> String {
        c.pick(wants, tried, now).expect("an upstream").key
    }

    /// How many times each key came out of `picks` picks.
    fn tally(
        c: &mut Chooser,
        wants: &Wants,
        picks: usize,
        now: Instant,
    ) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..picks {
            *counts.entry(picked(c, wants, &[], now)).or_insert(0) += 1;
        }
        counts
    }

    fn assert_even(counts: &BTreeMap<String, usize>, n: usize, picks: usize) {
        assert_eq!(counts.len(), n, "{counts:?}");
        for (key, count) in counts {
            assert!(
                count.abs_diff(picks / n) <= 1,
                "{key} picked {count} of {picks} times over {n}: {counts:?}"
            );
        }
    }

    /// Where a chooser that remembers nothing sends `session`: the rendezvous choice.
    fn fresh_choice(upstreams: &[Upstream], s: &str) -> String {
        let mut c = Chooser::new(Policy::RoundRobin, COOLDOWN, TTL, 0);
        c.replace(upstreams.to_vec());
        picked(&mut c, &session(s), &[], Instant::now())
    }

    #[test]
    fn an_empty_pool_gives_none() {
        let mut c = chooser(Policy::RoundRobin, 0);
        assert!(c.is_empty());
        assert_eq!(c.len(), 0);
        assert_eq!(c.pick(&any(), &[], Instant::now()), None);
        assert_eq!(c.pick(&session("s"), &[], Instant::now()), None);
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let now = Instant::now();
        for n in 1..=13 {
            let mut c = chooser(Policy::RoundRobin, n);
            assert_eq!(c.len(), n);
            let counts = tally(&mut c, &any(), 1000, now);
            assert_even(&counts, n, 1000);
        }
    }

    #[test]
    fn round_robin_runs_in_key_order() {
        let now = Instant::now();
        let mut c = chooser(Policy::RoundRobin, 3);
        let order: Vec<String> = (0..6).map(|_| picked(&mut c, &any(), &[], now)).collect();
        assert_eq!(order, [key(0), key(1), key(2), key(0), key(1), key(2)]);
    }

    #[test]
    fn round_robin_is_even_per_filter_however_filters_interleave() {
        let now = Instant::now();
        let mut c = chooser(Policy::RoundRobin, 0);
        // 0..4 speak HTTP, 4..7 SOCKS5; 0, 2, 4 and 6 are in FR.
        for n in 0..7 {
            let mut u = upstream(n);
            if n >= 4 {
                u.protocol = pb::Protocol::Socks5;
                u.key = format!("socks5://10.0.0.{n}:1080");
            }
            if n % 2 == 0 {
                u.country = "FR".to_string();
            }
            c.upsert(u);
        }
        let filters = [
            Wants {
                protocols: vec![pb::Protocol::Http],
                ..any()
            },
            Wants {
                protocols: vec![pb::Protocol::Socks5],
                ..any()
            },
            Wants {
                country: Some("FR".to_string()),
                ..any()
            },
            any(),
        ];
        let mut counts = vec![BTreeMap::new(); filters.len()];
        for round in 0..1000 {
            // Every order of the filters, not only a fixed alternation.
            for i in 0..filters.len() {
                let f = (i + round) % filters.len();
                let chosen = c.pick(&filters[f], &[], now).unwrap();
                assert!(filters[f].passes(&chosen));
                *counts[f].entry(chosen.key).or_insert(0) += 1;
            }
        }
        assert_even(&counts[0], 4, 1000);
        assert_even(&counts[1], 3, 1000);
        assert_even(&counts[2], 4, 1000);
        assert_even(&counts[3], 7, 1000);
    }

    #[test]
    fn round_robin_spreads_over_those_not_cooling() {
        let now = Instant::now();
        let mut c = chooser(Policy::RoundRobin, 5);
        c.failed(&key(2), now);
        let counts = tally(&mut c, &any(), 1000, now);
        assert!(!counts.contains_key(&key(2)));
        assert_even(&counts, 4, 1000);
    }

    #[test]
    fn random_reaches_every_upstream() {
        let now = Instant::now();
        let mut c = chooser(Policy::Random, 10);
        let counts = tally(&mut c, &any(), 1000, now);
        assert_eq!(counts.len(), 10, "{counts:?}");
        for (key, count) in &counts {
            assert!((40..=160).contains(count), "{key}: {count} of 1000");
        }
        let wants = Wants {
            country: Some("NL".to_string()),
            ..any()
        };
        c.upsert(Upstream {
            country: "NL".to_string(),
            ..upstream(3)
        });
        for _ in 0..50 {
            assert_eq!(picked(&mut c, &wants, &[], now), key(3));
        }
    }

    #[test]
    fn least_latency_picks_the_fastest_and_takes_turns_among_ties() {
        let now = Instant::now();
        let mut c = chooser(Policy::LeastLatency, 0);
        for (n, latency) in [300, 90, 200, 90, 90].into_iter().enumerate() {
            c.upsert(Upstream {
                latency_avg_ms: latency,
                ..upstream(n)
            });
        }
        let counts = tally(&mut c, &any(), 999, now);
        assert_eq!(
            counts.keys().cloned().collect::<Vec<_>>(),
            [key(1), key(3), key(4)]
        );
        assert_even(&counts, 3, 999);

        // The fastest one is cooling or tried: the next fastest.
        c.failed(&key(1), now);
        let tried = [key(3), key(4)];
        assert_eq!(picked(&mut c, &any(), &tried, now), key(2));

        // A CHANGED event moves it.
        c.upsert(Upstream {
            latency_avg_ms: 10,
            ..upstream(0)
        });
        assert_eq!(picked(&mut c, &any(), &[], now), key(0));
    }

    #[test]
    fn least_in_flight_picks_the_idlest_and_takes_turns_among_ties() {
        let now = Instant::now();
        let mut c = chooser(Policy::LeastInFlight, 3);
        for _ in 0..2 {
            c.started(&key(0));
        }
        c.started(&key(1));
        assert_eq!(c.in_flight(&key(0)), 2);
        assert_eq!(c.in_flight(&key(1)), 1);
        assert_eq!(c.in_flight(&key(2)), 0);
        assert_eq!(picked(&mut c, &any(), &[], now), key(2));
        assert_eq!(picked(&mut c, &any(), &[], now), key(2), "not started yet");

        // Each connection that starts shifts the next pick to the idlest.
        let mut counts = BTreeMap::new();
        for _ in 0..300 {
            let k = picked(&mut c, &any(), &[], now);
            c.started(&k);
            *counts.entry(k).or_insert(0) += 1;
        }
        let open: Vec<u32> = (0..3).map(|n| c.in_flight(&key(n))).collect();
        assert_eq!(open, [101, 101, 101], "{counts:?}");

        // Ties go in turn rather than to the first key.
        let mut c = chooser(Policy::LeastInFlight, 4);
        let counts = tally(&mut c, &any(), 1000, now);
        assert_even(&counts, 4, 1000);

        c.finished(&key(3));
        assert_eq!(c.in_flight(&key(3)), 0, "never below zero");
        c.started(&key(0));
        c.finished(&key(0));
        assert_eq!(c.in_flight(&key(0)), 0);
        c.started("socks5://nowhere:1");
        c.finished("socks5://nowhere:1");
        assert_eq!(c.in_flight("socks5://nowhere:1"), 0);
    }

    #[test]
    fn only_upstreams_that_pass_are_picked() {
        let now = Instant::now();
        let mut c = chooser(Policy::RoundRobin, 0);
        let members = [
            (pb::Protocol::Http, pb::Anonymity::Transparent, 50, "DE"),
            (pb::Protocol::Socks5, pb::Anonymity::Anonymous, 500, "FR"),
            (pb::Protocol::Socks5h, pb::Anonymity::Elite, 1500, ""),
            (pb::Protocol::Https, pb::Anonymity::Unknown, 0, "DE"),
        ];
        for (n, (protocol, anonymity, latency, country)) in members.into_iter().enumerate() {
            c.upsert(Upstream {
                protocol,
                anonymity,
                latency_avg_ms: latency,
                country: country.to_string(),
                ..upstream(n)
            });
        }
        let only = |c: &mut Chooser, wants: Wants, expected: &[usize]| {
            let counts = tally(c, &wants, 40, now);
            let expected: Vec<String> = expected.iter().map(|n| key(*n)).collect();
            assert_eq!(
                counts.keys().cloned().collect::<Vec<_>>(),
                expected,
                "{wants:?}"
            );
        };
        only(&mut c, any(), &[0, 1, 2, 3]);
        let socks = vec![pb::Protocol::Socks5, pb::Protocol::Socks5h];
        only(
            &mut c,
            Wants {
                protocols: socks,
                ..any()
            },
            &[1, 2],
        );
        let anonymous = pb::Anonymity::Anonymous;
        only(
            &mut c,
            Wants {
                min_anonymity: anonymous,
                ..any()
            },
            &[1, 2],
        );
        let transparent = pb::Anonymity::Transparent;
        only(
            &mut c,
            Wants {
                min_anonymity: transparent,
                ..any()
            },
            &[0, 1, 2],
        );
        only(
            &mut c,
            Wants {
                min_anonymity: pb::Anonymity::Elite,
                ..any()
            },
            &[2],
        );
        only(
            &mut c,
            Wants {
                max_latency_ms: Some(500),
                ..any()
            },
            &[0, 1, 3],
        );
        only(
            &mut c,
            Wants {
                country: Some("DE".to_string()),
                ..any()
            },
            &[0, 3],
        );
        let both = Wants {
            country: Some("DE".to_string()),
            protocols: vec![pb::Protocol::Https],
            ..any()
        };
        only(&mut c, both, &[3]);

        let nothing = Wants {
            country: Some("US".to_string()),
            ..any()
        };
        assert_eq!(c.pick(&nothing, &[], now), None);
        let nothing = Wants {
            protocols: vec![pb::Protocol::Socks4],
            session: Some("s".to_string()),
            ..any()
        };
        assert_eq!(c.pick(&nothing, &[], now), None);
    }

    #[test]
    fn tried_upstreams_are_not_picked_again() {
        let now = Instant::now();
        for policy in Policy::ALL {
            let mut c = chooser(policy, 4);
            let tried = [key(0), key(2), key(3)];
            for _ in 0..20 {
                assert_eq!(picked(&mut c, &any(), &tried, now), key(1), "{policy}");
                assert_eq!(
                    picked(&mut c, &session("s"), &tried, now),
                    key(1),
                    "{policy}"
                );
            }
            let all: Vec<String> = (0..4).map(key).collect();
            assert_eq!(c.pick(&any(), &all, now), None, "{policy}");
            assert_eq!(c.pick(&session("s"), &all, now), None, "{policy}");
            // Even when the rest cools down, a tried one is not the fallback.
            c.failed(&key(1), now);
            assert_eq!(picked(&mut c, &any(), &tried, now), key(1), "{policy}");
        }
    }

    #[test]
    fn a_failed_upstream_is_skipped_until_its_cool_down_ends() {
        let t0 = Instant::now();
        let mut c = chooser(Policy::RoundRobin, 3);
        c.failed(&key(1), t0);
        assert_eq!(c.cooling(t0), 1);
        let during = tally(
            &mut c,
            &any(),
            100,
            t0 + COOLDOWN - Duration::from_millis(1),
        );
        assert!(!during.contains_key(&key(1)), "{during:?}");
        assert_eq!(c.cooling(t0 + COOLDOWN), 0);
        let after = tally(&mut c, &any(), 99, t0 + COOLDOWN);
        assert_even(&after, 3, 99);

        // A second failure starts the cool-down again from then.
        let t1 = t0 + COOLDOWN + Duration::from_secs(5);
        c.failed(&key(1), t1);
        let during = tally(&mut c, &any(), 100, t1 + COOLDOWN - Duration::from_secs(1));
        assert!(!during.contains_key(&key(1)));

        // One the pool does not have is ignored.
        assert_eq!(c.failed("http://gone:1", t0), Cooled::Gone);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn at_most_the_max_cooling_share_of_the_set_cools_down_at_once() {
        let t0 = Instant::now();
        let mut c = chooser(Policy::RoundRobin, 10).with_max_cooling(50);
        for n in 0..5 {
            assert_eq!(c.failed(&key(n), t0), Cooled::Yes);
        }
        assert_eq!(c.failed(&key(5), t0), Cooled::No { cooling: 5, cap: 5 });
        assert_eq!(c.cooling(t0), 5);
        // The one past the cap stays in turn with the others not cooling.
        let picks = tally(&mut c, &any(), 100, t0);
        assert_eq!(picks.len(), 5, "{picks:?}");
        assert_eq!(picks.get(&key(5)), Some(&20));
        // One cooling already may fail again and cool on: it does not add to the share.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(c.failed(&key(0), later), Cooled::Yes);
        // Once cool-downs end, others may cool.
        assert_eq!(c.failed(&key(5), t0 + COOLDOWN), Cooled::Yes);
        assert_eq!(c.cooling(t0 + COOLDOWN), 2);
        // The share follows the set's size: from ten to four members, two may cool.
        c.replace((6..10).map(upstream).collect());
        let now = t0 + COOLDOWN * 2;
        assert_eq!(c.failed(&key(6), now), Cooled::Yes);
        assert_eq!(c.failed(&key(7), now), Cooled::Yes);
        assert_eq!(c.failed(&key(8), now), Cooled::No { cooling: 2, cap: 2 });
    }

    #[test]
    fn at_least_one_upstream_may_always_cool_down() {
        let now = Instant::now();
        let mut c = chooser(Policy::RoundRobin, 1).with_max_cooling(50);
        assert_eq!(c.failed(&key(0), now), Cooled::Yes);
        let mut c = chooser(Policy::RoundRobin, 3).with_max_cooling(0);
        assert_eq!(c.failed(&key(1), now), Cooled::Yes);
        assert_eq!(c.failed(&key(2), now), Cooled::No { cooling: 1, cap: 1 });
    }

    #[test]
    fn when_every_passing_upstream_cools_the_one_ending_first_is_used() {
        let t0 = Instant::now();
        let mut c = chooser(Policy::RoundRobin, 4);
        c.failed(&key(2), t0);
        c.failed(&key(0), t0 + Duration::from_secs(1));
        c.failed(&key(1), t0 + Duration::from_secs(2));
        // 3 is still ready.
        let now = t0 + Duration::from_secs(3);
        assert_eq!(picked(&mut c, &any(), &[], now), key(3));
        c.failed(&key(3), now);
        for _ in 0..10 {
            assert_eq!(picked(&mut c, &any(), &[], now), key(2));
            assert_eq!(picked(&mut c, &session("s"), &[], now), key(2));
        }
        assert_eq!(picked(&mut c, &any(), &[key(2)], now), key(0));
        let not_2_or_0 = Wants {
            protocols: vec![pb::Protocol::Http],
            ..any()
        };
        assert_eq!(picked(&mut c, &not_2_or_0, &[key(2), key(0)], now), key(1));
        let none = Wants {
            protocols: vec![pb::Protocol::Socks4],
            ..any()
        };
        assert_eq!(c.pick(&none, &[], now), None);
        // Once 2 has rested, it is the only one ready.
        let later = t0 + COOLDOWN;
        assert_eq!(tally(&mut c, &any(), 10, later).len(), 1);
    }

    #[test]
    fn a_session_keeps_its_upstream() {
        let now = Instant::now();
        for policy in Policy::ALL {
            let mut c = chooser(policy, 10);
            let first = picked(&mut c, &session("alpha"), &[], now);
            for i in 0..100 {
                assert_eq!(
                    picked(&mut c, &session("alpha"), &[], now),
                    first,
                    "{policy}"
                );
                // Picks for others between do not disturb it.
                picked(&mut c, &any(), &[], now);
                picked(&mut c, &session(&format!("other{i}")), &[], now);
            }
        }
        // Sessions spread over the pool too.
        let mut c = chooser(Policy::RoundRobin, 10);
        let used: std::collections::BTreeSet<String> = (0..200)
            .map(|i| picked(&mut c, &session(&format!("s{i}")), &[], now))
            .collect();
        assert_eq!(used.len(), 10);
    }

    /// A chooser whose session `s` is bound to an upstream other than its rendezvous choice, and
    /// both keys.
    fn bound_elsewhere(c: &mut Chooser, s: &str, now: Instant) -> (String, String) {
        let natural = picked(c, &session(s), &[], now);
        let bound = picked(c, &session(s), std::slice::from_ref(&natural), now);
        assert_ne!(natural, bound);
        assert_eq!(picked(c, &session(s), &[], now), bound, "the binding holds");
        (natural, bound)
    }

    #[test]
    fn a_session_is_forgotten_after_its_ttl_and_refreshed_by_use() {
        let t0 = Instant::now();
        let mut c = chooser(Policy::RoundRobin, 5);
        let (natural, bound) = bound_elsewhere(&mut c, "s", t0);
        // Each use within the TTL starts it again.
        let mut now = t0;
        for _ in 0..5 {
            now += TTL - Duration::from_secs(1);
            assert_eq!(picked(&mut c, &session("s"), &[], now), bound);
        }
        now += TTL;
        assert_eq!(picked(&mut c, &session("s"), &[], now), natural);
        assert_eq!(
            natural,
            fresh_choice(&(0..5).map(upstream).collect::<Vec<_>>(), "s")
        );
    }

    #[test]
    fn a_session_moves_when_its_upstream_fails_and_stays_moved() {
        let t0 = Instant::now();
        let mut c = chooser(Policy::RoundRobin, 5);
        let first = picked(&mut c, &session("s"), &[], t0);
        c.failed(&first, t0);
        let second = picked(&mut c, &session("s"), &[], t0);
        assert_ne!(first, second);
        // Not back once the cool-down is over: the session stays where it went.
        let later = t0 + COOLDOWN + Duration::from_secs(1);
        assert_eq!(picked(&mut c, &session("s"), &[], later), second);
    }

    #[test]
    fn a_session_moves_when_its_upstream_no_longer_passes() {
        let now = Instant::now();
        let mut c = chooser(Policy::RoundRobin, 5);
        let first = picked(&mut c, &session("s"), &[], now);
        let n: usize = first
            .trim_end_matches(":8080")
            .rsplit('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        c.upsert(Upstream {
            latency_avg_ms: 5000,
            ..upstream(n)
        });
        let fast = Wants {
            max_latency_ms: Some(1000),
            ..session("s")
        };
        let second = picked(&mut c, &fast, &[], now);
        assert_ne!(first, second);
        assert_eq!(picked(&mut c, &session("s"), &[], now), second);
    }

    #[test]
    fn removing_one_upstream_moves_only_its_sessions() {
        let now = Instant::now();
        let all: Vec<Upstream> = (0..10).map(upstream).collect();
        let sessions: Vec<String> = (0..1000).map(|i| format!("client_{i}")).collect();
        let before: Vec<String> = sessions.iter().map(|s| fresh_choice(&all, s)).collect();

        let mut share = BTreeMap::new();
        for k in &before {
            *share.entry(k.clone()).or_insert(0) += 1;
        }
        assert_eq!(share.len(), 10);
        for (k, count) in &share {
            assert!(
                (50..=150).contains(count),
                "{k} holds {count} of 1000 sessions"
            );
        }

        let gone = key(4);
        let rest: Vec<Upstream> = all.iter().filter(|u| u.key != gone).cloned().collect();
        for (s, was) in sessions.iter().zip(&before) {
            let now_at = fresh_choice(&rest, s);
            if *was == gone {
                assert_ne!(now_at, gone);
            } else {
                assert_eq!(&now_at, was, "{s} moved though its upstream stayed");
            }
        }

        // The same with a chooser that remembers its sessions, and the pool changing under it.
        let mut c = Chooser::new(Policy::RoundRobin, COOLDOWN, TTL, 10_000);
        c.replace(all.clone());
        for (s, was) in sessions.iter().zip(&before) {
            assert_eq!(&picked(&mut c, &session(s), &[], now), was);
        }
        c.remove(&gone);
        let mut moved = 0;
        for (s, was) in sessions.iter().zip(&before) {
            let now_at = picked(&mut c, &session(s), &[], now);
            if *was == gone {
                moved += 1;
            } else {
                assert_eq!(&now_at, was);
            }
        }
        assert_eq!(moved, share[&gone]);

        // An upstream that joins takes sessions only for itself.
        let newcomer = upstream(10);
        c.upsert(newcomer.clone());
        let mut grown = rest.clone();
        grown.push(newcomer);
        for s in &sessions {
            let fresh = fresh_choice(&grown, s);
            let before_join = fresh_choice(&rest, s);
            assert!(fresh == before_join || fresh == key(10), "{s}");
        }
    }

    #[test]
    fn the_rendezvous_hash_never_changes() {
        // Gateways and their restarts must agree: these values are fixed for good.
        assert_eq!(rendezvous("", ""), PINNED[0]);
        assert_eq!(rendezvous("client_1", "http://10.0.0.1:8080"), PINNED[1]);
        assert_eq!(rendezvous("a", "bc"), PINNED[2]);
        assert_ne!(rendezvous("ab", "c"), rendezvous("a", "bc"));
    }

    /// FNV-1a 64 then SplitMix64's finish, computed apart from this code.
    const PINNED: [u64; 3] = [
        5_705_415_379_283_624_141,
        17_445_120_344_423_987_669,
        6_110_001_816_571_610_165,
    ];

    #[test]
    fn sessions_are_bounded_least_recently_used_first() {
        let now = Instant::now();
        let mut c = Chooser::new(Policy::RoundRobin, COOLDOWN, TTL, 3);
        c.replace((0..4).map(upstream).collect());
        for s in ["a", "b", "c"] {
            picked(&mut c, &session(s), &[], now);
        }
        picked(&mut c, &session("a"), &[], now);
        picked(&mut c, &session("d"), &[], now);
        assert_eq!(c.sessions(), 3);
        let mut kept: Vec<&String> = c.sessions.keys().collect();
        kept.sort();
        assert_eq!(kept, ["a", "c", "d"]);
        assert_eq!(c.sessions_by_use.len(), 3);

        // Idle ones go at the next pick, whatever it asks.
        picked(&mut c, &session("c"), &[], now + TTL / 2);
        picked(&mut c, &any(), &[], now + TTL);
        assert_eq!(c.sessions.keys().collect::<Vec<_>>(), ["c"]);
        picked(&mut c, &any(), &[], now + TTL * 2);
        assert_eq!(c.sessions(), 0);
        assert!(c.sessions_by_use.is_empty());

        // Remembering none still gives each session its rendezvous choice.
        let mut c = Chooser::new(Policy::RoundRobin, COOLDOWN, TTL, 0);
        c.replace((0..4).map(upstream).collect());
        let first = picked(&mut c, &session("s"), &[], now);
        assert_eq!(picked(&mut c, &session("s"), &[], now), first);
        assert_eq!(c.sessions(), 0);
    }

    #[test]
    fn round_robin_turns_are_bounded() {
        let now = Instant::now();
        let mut c = chooser(Policy::RoundRobin, 3);
        for ms in 1..=(MAX_FILTERS as u32 * 2) {
            let wants = Wants {
                max_latency_ms: Some(ms + 1000),
                ..any()
            };
            picked(&mut c, &wants, &[], now);
        }
        assert!(c.turns.len() <= MAX_FILTERS);
    }

    #[test]
    fn a_removed_upstream_takes_its_cool_down_in_flight_and_sessions_along() {
        let now = Instant::now();
        let mut c = chooser(Policy::RoundRobin, 5);
        let (natural, bound) = bound_elsewhere(&mut c, "s", now);
        c.started(&bound);
        c.started(&bound);
        c.failed(&bound, now);
        assert_eq!(c.cooling(now), 1);
        c.remove(&bound);
        assert_eq!(c.len(), 4);
        assert_eq!(c.in_flight(&bound), 0);
        assert_eq!(c.cooling(now), 0);

        let n: usize = bound
            .trim_end_matches(":8080")
            .rsplit('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        c.upsert(upstream(n));
        assert_eq!(c.in_flight(&bound), 0);
        assert_eq!(c.cooling(now), 0);
        // A connection that started before it left ends without harm.
        c.finished(&bound);
        assert_eq!(c.in_flight(&bound), 0);
        assert_eq!(picked(&mut c, &session("s"), &[], now), natural);

        // Bound again elsewhere, then gone and back without a pick between: not bound to it.
        let mut c = chooser(Policy::RoundRobin, 5);
        let (natural, bound) = bound_elsewhere(&mut c, "s", now);
        let u = c.get(&bound).unwrap().clone();
        c.remove(&bound);
        c.upsert(u);
        assert_eq!(picked(&mut c, &session("s"), &[], now), natural);
    }

    #[test]
    fn replace_keeps_what_stays_and_drops_what_goes() {
        let now = Instant::now();
        let mut c = chooser(Policy::RoundRobin, 5);
        let (_, bound) = bound_elsewhere(&mut c, "s", now);
        let other = (0..5).map(key).find(|k| *k != bound).unwrap();
        c.started(&bound);
        c.started(&other);
        c.failed(&other, now);

        // A snapshot that keeps both: nothing is lost, and the pool's new figures are taken.
        let snapshot: Vec<Upstream> = (0..5)
            .map(|n| Upstream {
                latency_avg_ms: 7,
                ..upstream(n)
            })
            .collect();
        c.replace(snapshot.clone());
        assert_eq!(c.len(), 5);
        assert_eq!(c.get(&bound).unwrap().latency_avg_ms, 7);
        assert_eq!(c.in_flight(&bound), 1);
        assert_eq!(c.in_flight(&other), 1);
        assert_eq!(c.cooling(now), 1);
        assert_eq!(picked(&mut c, &session("s"), &[], now), bound);

        // One without them: their counts, cool-down and sessions go.
        let rest: Vec<Upstream> = snapshot
            .iter()
            .filter(|u| u.key != bound && u.key != other)
            .cloned()
            .collect();
        c.replace(rest.clone());
        assert_eq!(c.len(), 3);
        assert_eq!(c.in_flight(&bound), 0);
        assert_eq!(c.in_flight(&other), 0);
        assert_eq!(c.cooling(now), 0);
        assert_eq!(
            picked(&mut c, &session("s"), &[], now),
            fresh_choice(&rest, "s")
        );

        // And back: fresh.
        c.replace(snapshot.clone());
        assert_eq!(c.in_flight(&other), 0);
        assert_eq!(c.cooling(now), 0);
        assert_eq!(c.get(&other), snapshot.iter().find(|u| u.key == other));
    }

    #[test]
    fn upsert_updates_in_place() {
        let now = Instant::now();
        let mut c = chooser(Policy::RoundRobin, 2);
        c.started(&key(1));
        c.failed(&key(1), now);
        c.upsert(Upstream {
            score: 10.0,
            ..upstream(1)
        });
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&key(1)).unwrap().score, 10.0);
        assert_eq!(c.in_flight(&key(1)), 1);
        assert_eq!(c.cooling(now), 1);
    }

    fn member(proxy: &str) -> pb::PoolMember {
        pb::PoolMember {
            proxy: proxy.to_string(),
            protocol: pb::Protocol::Socks5 as i32,
            host: "203.0.113.9".to_string(),
            port: 1080,
            live: true,
            latency_avg_ms: 240,
            anonymity: pb::Anonymity::Anonymous as i32,
            country: "nl".to_string(),
            score: 71.5,
            ..pb::PoolMember::default()
        }
    }

    #[test]
    fn a_member_becomes_an_upstream() {
        let m = member("socks5://203.0.113.9:1080");
        assert_eq!(
            Upstream::from_member(&m),
            Some(Upstream {
                key: "socks5://203.0.113.9:1080".to_string(),
                protocol: pb::Protocol::Socks5,
                host: "203.0.113.9".to_string(),
                port: 1080,
                auth: None,
                latency_avg_ms: 240,
                anonymity: pb::Anonymity::Anonymous,
                country: "NL".to_string(),
                score: 71.5,
            })
        );
    }

    #[test]
    fn member_credentials_are_taken_as_the_pool_checked_them() {
        let auth = |proxy: &str| Upstream::from_member(&member(proxy)).unwrap().auth;
        let pair = |u: &str, p: &str| Some((u.to_string(), p.to_string()));
        assert_eq!(
            auth("socks5://fleet:secret@203.0.113.9:1080"),
            pair("fleet", "secret")
        );
        // Escapes are the proxy's own characters: the workers sent them as they are.
        assert_eq!(
            auth("socks5://u:p%40ss@203.0.113.9:1080"),
            pair("u", "p%40ss")
        );
        // Raw '@' and ':' in a password, as the coordinator writes them.
        assert_eq!(
            auth("socks5://u:p@s:s@203.0.113.9:1080"),
            pair("u", "p@s:s")
        );
        // An empty password, and a user alone (a SOCKS4 user id).
        assert_eq!(auth("socks5://u:@203.0.113.9:1080"), pair("u", ""));
        assert_eq!(auth("socks5://u@203.0.113.9:1080"), pair("u", ""));
    }

    #[test]
    fn members_that_cannot_be_dialled_are_refused() {
        let ok = member("socks5://203.0.113.9:1080");
        assert!(Upstream::from_member(&ok).is_some());
        let refused = [
            pb::PoolMember {
                protocol: pb::Protocol::Unspecified as i32,
                ..ok.clone()
            },
            pb::PoolMember {
                protocol: 99,
                ..ok.clone()
            },
            pb::PoolMember {
                port: 0,
                ..ok.clone()
            },
            pb::PoolMember {
                port: 65536,
                ..ok.clone()
            },
            pb::PoolMember {
                host: String::new(),
                ..ok.clone()
            },
            pb::PoolMember {
                proxy: String::new(),
                ..ok.clone()
            },
        ];
        for m in refused {
            assert_eq!(Upstream::from_member(&m), None, "{m:?}");
        }
        let highest = pb::PoolMember {
            port: 65535,
            anonymity: 42,
            country: String::new(),
            ..ok
        };
        let u = Upstream::from_member(&highest).unwrap();
        assert_eq!(u.port, 65535);
        assert_eq!(u.anonymity, pb::Anonymity::Unknown);
        assert_eq!(u.country, "");
    }

    #[test]
    fn urls_leave_credentials_out() {
        let mut m = member("socks5h://u:secret@[2001:db8::1]:1080");
        m.protocol = pb::Protocol::Socks5h as i32;
        m.host = "2001:db8::1".to_string();
        let u = Upstream::from_member(&m).unwrap();
        assert_eq!(u.url(), "socks5h://[2001:db8::1]:1080");
        assert_eq!(upstream(3).url(), "http://10.0.0.3:8080");
    }

    #[test]
    fn policies_are_named() {
        for policy in Policy::ALL {
            assert_eq!(policy.name().parse::<Policy>(), Ok(policy));
            assert_eq!(policy.to_string(), policy.name());
        }
        assert_eq!("Least-Latency".parse::<Policy>(), Ok(Policy::LeastLatency));
        let e = "fastest".parse::<Policy>().unwrap_err();
        assert!(e.contains("fastest") && e.contains("round-robin"), "{e}");
        assert_eq!(Policy::default(), Policy::RoundRobin);
        assert_eq!(chooser(Policy::Random, 1).policy(), Policy::Random);
    }
}
