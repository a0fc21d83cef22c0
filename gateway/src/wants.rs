//! What a client asks of its upstream, from its username (`USER-session-ID-country-DE...`) and
//! the listener's defaults. Pure.

use proxyfleet_proto::v1 as pb;

/// What a client asks of its upstream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wants {
    pub session: Option<String>,
    pub protocols: Vec<pb::Protocol>,
    pub min_anonymity: pb::Anonymity,
    pub max_latency_ms: Option<u32>,
    pub country: Option<String>,
}

impl Wants {
    pub fn passes(&self, _u: &crate::choose::Upstream) -> bool {
        true
    }
    pub fn over(self, _defaults: &Wants) -> Wants {
        self
    }
}

pub fn parse_username(name: &str) -> Result<(String, Wants), String> {
    Ok((name.to_string(), Wants::default()))
}

pub fn parse_defaults(_spec: &str) -> Result<Wants, String> {
    Ok(Wants::default())
}
