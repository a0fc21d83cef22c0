//! One proxy check: a GET of the judge URL through the proxy, carrying a random token, and the
//! pure classification of what came back into a verdict.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proxyfleet_proto::v1 as pb;

/// Most bytes of a judge's answer read by a check.
const MAX_BODY: usize = 64 * 1024;

/// A proxy to check, as leased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub protocol: pb::Protocol,
    pub host: String,
    pub port: u16,
    pub auth: Option<(String, String)>,
}

impl Target {
    pub fn from_proto(c: &pb::Candidate) -> Option<Target> {
        let protocol = pb::Protocol::try_from(c.protocol)
            .ok()
            .filter(|p| *p != pb::Protocol::Unspecified)?;
        Some(Target {
            protocol,
            host: c.host.clone(),
            port: u16::try_from(c.port).ok().filter(|p| *p != 0)?,
            auth: (!c.username.is_empty()).then(|| (c.username.clone(), c.password.clone())),
        })
    }

    /// The proxy URL reqwest is given; credentials go in separately.
    fn proxy_url(&self) -> String {
        let scheme = match self.protocol {
            pb::Protocol::Http | pb::Protocol::Unspecified => "http",
            pb::Protocol::Https => "https",
            pb::Protocol::Socks4 => "socks4",
            pb::Protocol::Socks4a => "socks4a",
            pb::Protocol::Socks5 => "socks5",
            pb::Protocol::Socks5h => "socks5h",
        };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// What a check saw, before classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The judge (or something pretending to be it) answered.
    Response { status: u16, body: String },
    /// The connection to the proxy was refused.
    Refused,
    /// Nothing came back in time.
    Timeout,
    /// The proxy accepted the connection but the proxy protocol failed (SOCKS or CONNECT refused).
    Handshake(String),
    /// TLS to the judge failed through the proxy.
    Tls(String),
    /// Anything else on the network.
    Network(String),
}

/// A check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub usable: bool,
    pub reason: pb::Reason,
    pub exit_ip: String,
    pub detail: String,
}

/// Decides a verdict: usable only if the judge answered 200 and echoed this check's token.
pub fn classify(outcome: Outcome, token: &str) -> Classified {
    let fail = |reason, detail: String| Classified {
        usable: false,
        reason,
        exit_ip: String::new(),
        detail,
    };
    match outcome {
        Outcome::Response { status, body } => {
            if status != 200 {
                return fail(
                    pb::Reason::BadStatus,
                    format!("judge answered status {status}"),
                );
            }
            let echoed: Option<serde_json::Value> = serde_json::from_str(&body).ok();
            let token_seen = echoed
                .as_ref()
                .and_then(|v| v.get("token"))
                .and_then(|t| t.as_str())
                .is_some_and(|t| t == token);
            if !token_seen {
                return fail(
                    pb::Reason::TokenMissing,
                    "the answer does not carry the check's token: hijacked or fake proxy".into(),
                );
            }
            let exit_ip = echoed
                .as_ref()
                .and_then(|v| v.get("remote_addr"))
                .and_then(|a| a.as_str())
                .unwrap_or("")
                .to_string();
            Classified {
                usable: true,
                reason: pb::Reason::None,
                exit_ip,
                detail: String::new(),
            }
        }
        Outcome::Refused => fail(pb::Reason::Refused, "connection refused".into()),
        Outcome::Timeout => fail(pb::Reason::Timeout, "timed out".into()),
        Outcome::Handshake(d) => fail(pb::Reason::Handshake, d),
        Outcome::Tls(d) => fail(pb::Reason::Tls, d),
        Outcome::Network(d) => fail(pb::Reason::Network, d),
    }
}

/// Shared by every check: the TLS configuration (roots parsed once), so a check builds only a
/// light client of its own.
#[derive(Clone)]
pub struct Checker {
    tls: Arc<rustls::ClientConfig>,
}

impl Checker {
    pub fn new() -> anyhow::Result<Checker> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Checker { tls: Arc::new(tls) })
    }

    /// Checks one proxy against the judge; never takes much longer than `timeout`.
    pub async fn check(
        &self,
        target: &Target,
        judge_url: &str,
        timeout: Duration,
    ) -> (Classified, Duration) {
        let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let started = Instant::now();
        let outcome = self.fetch(target, judge_url, &token, timeout).await;
        (classify(outcome, &token), started.elapsed())
    }

    async fn fetch(
        &self,
        target: &Target,
        judge_url: &str,
        token: &str,
        timeout: Duration,
    ) -> Outcome {
        let mut proxy = match reqwest::Proxy::all(target.proxy_url()) {
            Ok(p) => p,
            Err(e) => return Outcome::Network(format!("invalid proxy address: {e}")),
        };
        if let Some((user, pass)) = &target.auth {
            proxy = proxy.basic_auth(user, pass);
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .proxy(proxy)
            .tls_backend_preconfigured((*self.tls).clone())
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .build();
        let client = match client {
            Ok(c) => c,
            Err(e) => return Outcome::Network(format!("cannot build the client: {e}")),
        };
        let separator = if judge_url.contains('?') { '&' } else { '?' };
        let url = format!("{judge_url}{separator}token={token}");
        let work = async {
            let response = client
                .get(&url)
                .send()
                .await
                .map_err(|e| outcome_of_error(&e))?;
            let status = response.status().as_u16();
            let mut response = response;
            let mut body = Vec::new();
            // A judge's answer is small; a proxy streaming more is cut off, not buffered.
            while let Some(chunk) = response.chunk().await.map_err(|e| outcome_of_error(&e))? {
                let room = MAX_BODY - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= MAX_BODY {
                    break;
                }
            }
            let body = String::from_utf8_lossy(&body).into_owned();
            Ok::<_, Outcome>(Outcome::Response { status, body })
        };
        // reqwest enforces the timeout too; this bound also covers a body that trickles forever.
        match tokio::time::timeout(timeout + Duration::from_millis(50), work).await {
            Ok(Ok(outcome)) | Ok(Err(outcome)) => outcome,
            Err(_) => Outcome::Timeout,
        }
    }
}

/// Maps a reqwest error to what happened, by walking its sources.
fn outcome_of_error(e: &reqwest::Error) -> Outcome {
    if e.is_timeout() {
        return Outcome::Timeout;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return Outcome::Refused,
                std::io::ErrorKind::TimedOut => return Outcome::Timeout,
                _ => {}
            }
        }
        text = format!("{text}: {s}");
        source = s.source();
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("timed out") || lower.contains("timeout") {
        Outcome::Timeout
    } else if lower.contains("certificate") || lower.contains("tls") {
        Outcome::Tls(text)
    } else if e.is_connect() {
        Outcome::Handshake(text)
    } else {
        Outcome::Network(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge_body(token: &str) -> String {
        format!(r#"{{"token":"{token}","remote_addr":"127.0.0.9","headers":{{}}}}"#)
    }

    #[test]
    fn usable_only_with_status_200_and_the_token() {
        let ok = classify(
            Outcome::Response {
                status: 200,
                body: judge_body("t1"),
            },
            "t1",
        );
        assert!(ok.usable);
        assert_eq!(ok.reason, pb::Reason::None);
        assert_eq!(ok.exit_ip, "127.0.0.9");

        let other_token = classify(
            Outcome::Response {
                status: 200,
                body: judge_body("t0"),
            },
            "t1",
        );
        assert_eq!(
            (other_token.usable, other_token.reason),
            (false, pb::Reason::TokenMissing)
        );

        let fake = classify(
            Outcome::Response {
                status: 200,
                body: "hello".into(),
            },
            "t1",
        );
        assert_eq!(
            (fake.usable, fake.reason),
            (false, pb::Reason::TokenMissing)
        );

        let status = classify(
            Outcome::Response {
                status: 403,
                body: judge_body("t1"),
            },
            "t1",
        );
        assert_eq!(
            (status.usable, status.reason),
            (false, pb::Reason::BadStatus)
        );
    }

    #[test]
    fn failures_keep_their_reason() {
        for (outcome, reason) in [
            (Outcome::Refused, pb::Reason::Refused),
            (Outcome::Timeout, pb::Reason::Timeout),
            (Outcome::Handshake("socks".into()), pb::Reason::Handshake),
            (Outcome::Tls("cert".into()), pb::Reason::Tls),
            (Outcome::Network("reset".into()), pb::Reason::Network),
        ] {
            let c = classify(outcome, "t");
            assert!(!c.usable);
            assert_eq!(c.reason, reason);
        }
    }

    #[test]
    fn targets_come_from_candidates() {
        let c = pb::Candidate {
            index: 3,
            protocol: pb::Protocol::Socks5 as i32,
            host: "::1".into(),
            port: 1080,
            username: "u".into(),
            password: "p".into(),
        };
        let t = Target::from_proto(&c).unwrap();
        assert_eq!(t.proxy_url(), "socks5://[::1]:1080");
        assert_eq!(t.auth, Some(("u".into(), "p".into())));
        assert!(
            Target::from_proto(&pb::Candidate {
                port: 0,
                ..c.clone()
            })
            .is_none()
        );
        assert!(Target::from_proto(&pb::Candidate { protocol: 0, ..c }).is_none());
    }
}
