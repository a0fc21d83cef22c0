//! One proxy check: through the proxy, a GET of the judge URL carrying a random token; then the
//! pure classification of what came back into a verdict with an anonymity grade.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use proxyfleet_proto::v1 as pb;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::dial::{self, HandshakeError, JudgeUrl, Socks4Dest, Socks5Dest};
use proxyfleet_common::guard::{DialError, Guard};

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
    /// The proxy protocol failed (SOCKS or CONNECT refused, garbage, auth wanted).
    Handshake(String),
    /// The proxy behaved like a web server answering everything.
    Fake(String),
    /// TLS to the judge failed through the proxy.
    Tls(String),
    /// Anything else on the network.
    Network(String),
    /// Not tried: the proxy's address is not allowed.
    Forbidden(String),
}

/// How long a check may take and where it may go.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Proxies on loopback, private or link-local addresses may be checked.
    pub allow_private: bool,
}

/// A check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub usable: bool,
    pub reason: pb::Reason,
    pub exit_ip: String,
    pub anonymity: pb::Anonymity,
    pub detail: String,
}

/// Headers that reveal a proxy in the request the judge received.
const PROXY_HEADERS: &[&str] = &[
    "via",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-server",
    "x-real-ip",
    "client-ip",
    "x-client-ip",
    "x-proxy-id",
    "x-proxy-connection",
    "proxy-connection",
    "x-bluecoat-via",
    "x-tinyproxy",
    "x-cache",
    "x-cache-lookup",
    "cache-control-proxy",
];

/// Every IP-looking token of a header value, e.g. of `for=192.0.2.1, 10.0.0.1:8080`.
fn ip_tokens(value: &str) -> impl Iterator<Item = IpAddr> + '_ {
    value
        .split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        .filter(|t| !t.is_empty())
        .filter_map(|t| {
            t.parse::<IpAddr>()
                .ok()
                .or_else(|| t.rsplit_once(':').and_then(|(ip, _port)| ip.parse().ok()))
        })
}

/// Grades what the judge saw: transparent when the worker's own address shows anywhere, anonymous
/// when proxy headers show, elite otherwise.
pub fn grade(echo: &serde_json::Value, own: &BTreeSet<IpAddr>) -> pb::Anonymity {
    let headers: Vec<(String, String)> = echo
        .get("headers")
        .and_then(|h| h.as_object())
        .map(|h| {
            h.iter()
                .map(|(k, v)| {
                    (
                        k.to_ascii_lowercase(),
                        v.as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let remote: Option<IpAddr> = echo
        .get("remote_addr")
        .and_then(|a| a.as_str())
        .and_then(|a| a.parse().ok());
    // The Host header names the judge, which may share the worker's address; it reveals nothing.
    let leaks_own = remote.is_some_and(|ip| own.contains(&ip))
        || headers
            .iter()
            .filter(|(name, _)| name != "host")
            .any(|(_, v)| ip_tokens(v).any(|ip| own.contains(&ip)));
    if leaks_own {
        pb::Anonymity::Transparent
    } else if headers
        .iter()
        .any(|(name, _)| PROXY_HEADERS.contains(&name.as_str()))
    {
        pb::Anonymity::Anonymous
    } else {
        pb::Anonymity::Elite
    }
}

/// Decides a verdict: usable only if the judge answered 200 and echoed this check's token.
pub fn classify(outcome: Outcome, token: &str, own: &BTreeSet<IpAddr>) -> Classified {
    let fail = |reason, detail: String| Classified {
        usable: false,
        reason,
        exit_ip: String::new(),
        anonymity: pb::Anonymity::Unknown,
        detail,
    };
    match outcome {
        Outcome::Response { status, body } => {
            let echo: Option<serde_json::Value> = serde_json::from_str(&body).ok();
            let token_seen = echo
                .as_ref()
                .and_then(|v| v.get("token"))
                .and_then(|t| t.as_str())
                .is_some_and(|t| t == token);
            if status == 200 && !token_seen {
                return fail(
                    pb::Reason::TokenMissing,
                    "the answer does not carry the check's token: hijacked or fake proxy".into(),
                );
            }
            if status != 200 {
                return fail(
                    pb::Reason::BadStatus,
                    format!("judge request answered status {status}"),
                );
            }
            let echo = echo.unwrap_or_default();
            let exit_ip = echo
                .get("remote_addr")
                .and_then(|a| a.as_str())
                .unwrap_or("")
                .to_string();
            Classified {
                usable: true,
                reason: pb::Reason::None,
                anonymity: grade(&echo, own),
                exit_ip,
                detail: String::new(),
            }
        }
        Outcome::Refused => fail(pb::Reason::Refused, "connection refused".into()),
        Outcome::Timeout => fail(pb::Reason::Timeout, "timed out".into()),
        Outcome::Handshake(d) => fail(pb::Reason::Handshake, d),
        Outcome::Fake(d) => fail(
            pb::Reason::TokenMissing,
            format!("hijacked or fake proxy: {d}"),
        ),
        Outcome::Tls(d) => fail(pb::Reason::Tls, d),
        Outcome::Network(d) => fail(pb::Reason::Network, d),
        Outcome::Forbidden(d) => fail(pb::Reason::Forbidden, d),
    }
}

/// A check's verdict and timings.
#[derive(Debug, Clone)]
pub struct Checked {
    pub classified: Classified,
    /// Time to open the TCP connection to the proxy (zero if it failed before).
    pub connect: Duration,
    pub total: Duration,
}

/// A stream to the judge: a TCP connection, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Shared by every check: the TLS configuration (roots parsed once) and the worker's own
/// addresses, learned from the judges.
#[derive(Clone)]
pub struct Checker {
    tls: tokio_rustls::TlsConnector,
    /// The worker's own addresses as judges see them; filled by `learn_own_address` and flags.
    own: Arc<RwLock<BTreeSet<IpAddr>>>,
}

impl Checker {
    /// `extra_roots`: PEM CA certificates trusted for https judges besides the public roots.
    pub fn new(
        extra_roots: &[rustls::pki_types::CertificateDer<'static>],
        own: &[IpAddr],
    ) -> Result<Checker, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in extra_roots {
            roots.add(cert.clone())?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Checker {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            own: Arc::new(RwLock::new(own.iter().copied().collect())),
        })
    }

    pub fn own_addresses(&self) -> BTreeSet<IpAddr> {
        self.own.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Asks the judge directly (no proxy) which address it sees; remembers it as the worker's own.
    /// The judge is dialled only where `guard` allows.
    pub async fn learn_own_address(
        &self,
        judge: &JudgeUrl,
        timeout: Duration,
        guard: Guard,
    ) -> Result<IpAddr, String> {
        let token = new_token();
        let work = async {
            let tcp = guard
                .connect(&judge.host, judge.port, Some(timeout / 2))
                .await
                .map_err(|e| e.to_string())?;
            let request = dial::judge_request(judge, &token, false, None);
            let (head, body) = self
                .exchange(judge, tcp, &request)
                .await
                .map_err(|o| format!("{o:?}"))?;
            if head != 200 {
                return Err(format!("answered status {head}"));
            }
            let echo: serde_json::Value = serde_json::from_str(&body)
                .map_err(|_| "the answer is not a judge's JSON echo".to_string())?;
            if echo.get("token").and_then(|t| t.as_str()) != Some(token.as_str()) {
                return Err("the answer does not echo the token: not a proxyfleet judge".into());
            }
            echo.get("remote_addr")
                .and_then(|a| a.as_str())
                .and_then(|a| a.parse::<IpAddr>().ok())
                .ok_or_else(|| "the echo has no remote_addr".to_string())
        };
        let ip = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))??;
        self.own
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ip);
        Ok(ip)
    }

    /// Checks one proxy against the judge; never takes longer than `timeout`.
    pub async fn check(&self, target: &Target, judge: &JudgeUrl, limits: &Limits) -> Checked {
        let token = new_token();
        let started = Instant::now();
        let mut connect = Duration::ZERO;
        let outcome = match tokio::time::timeout(
            limits.timeout,
            self.fetch(target, judge, &token, limits, &mut connect),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Timeout,
        };
        let own = self.own_addresses();
        Checked {
            classified: classify(outcome, &token, &own),
            connect,
            total: started.elapsed(),
        }
    }

    async fn fetch(
        &self,
        target: &Target,
        judge: &JudgeUrl,
        token: &str,
        limits: &Limits,
        connect: &mut Duration,
    ) -> Outcome {
        let started = Instant::now();
        // Names are resolved here, at the last moment, and every address is checked where it is
        // dialled: a name pointing inside is caught too.
        let guard = Guard::new(limits.allow_private);
        let addrs = match guard.resolve(&target.host, target.port).await {
            Ok(addrs) => addrs,
            Err(DialError::Forbidden { .. }) => {
                return Outcome::Forbidden(format!(
                    "{} is a loopback, private or link-local address, which the coordinator does not allow",
                    target.host
                ));
            }
            Err(_) => {
                return Outcome::Network(format!("cannot resolve the proxy host {}", target.host));
            }
        };
        let mut tcp = match tokio::time::timeout(
            limits.connect_timeout,
            guard.connect_to(&addrs, None),
        )
        .await
        {
            Err(_) => return Outcome::Timeout,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Outcome::Refused;
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => return Outcome::Timeout,
            Ok(Err(e)) => return Outcome::Network(format!("cannot connect to the proxy: {e}")),
            Ok(Ok(tcp)) => tcp,
        };
        *connect = started.elapsed();
        let _ = tcp.set_nodelay(true);
        let auth = target.auth.as_ref();
        // A plain HTTP proxy with a plain judge forwards the request; everything else tunnels.
        let forward = target.protocol == pb::Protocol::Http && !judge.https;
        let handshake = match target.protocol {
            pb::Protocol::Http if forward => Ok(()),
            pb::Protocol::Http | pb::Protocol::Https | pb::Protocol::Unspecified => {
                dial::http_connect(&mut tcp, judge, auth).await
            }
            pb::Protocol::Socks4 => match local_ipv4(judge).await {
                Ok(ip) => {
                    dial::socks4_connect(&mut tcp, &Socks4Dest::Ip(ip), judge.port, user_id(auth))
                        .await
                }
                Err(e) => return Outcome::Network(e),
            },
            pb::Protocol::Socks4a => {
                dial::socks4_connect(
                    &mut tcp,
                    &Socks4Dest::Host(judge.host.clone()),
                    judge.port,
                    user_id(auth),
                )
                .await
            }
            pb::Protocol::Socks5 => match resolve_judge(judge).await {
                Ok(a) if !a.is_empty() => {
                    dial::socks5_connect(&mut tcp, &Socks5Dest::Ip(a[0].ip()), judge.port, auth)
                        .await
                }
                _ => {
                    return Outcome::Network(format!(
                        "cannot resolve the judge host {}",
                        judge.host
                    ));
                }
            },
            pb::Protocol::Socks5h => {
                dial::socks5_connect(
                    &mut tcp,
                    &Socks5Dest::Host(judge.host.clone()),
                    judge.port,
                    auth,
                )
                .await
            }
        };
        if let Err(e) = handshake {
            return handshake_outcome(e);
        }
        let request = dial::judge_request(judge, token, forward, if forward { auth } else { None });
        match self.exchange(judge, tcp, &request).await {
            // A forward proxy answers 407 itself: its protocol, not the judge, refused us.
            Ok((407, _)) if forward => Outcome::Handshake(if auth.is_some() {
                "the proxy refused the credentials (407)".into()
            } else {
                "the proxy requires authentication (407)".into()
            }),
            Ok((status, body)) => Outcome::Response { status, body },
            Err(outcome) => outcome,
        }
    }

    /// Sends the judge request over `tcp` (TLS first for an https judge); returns status and body.
    async fn exchange(
        &self,
        judge: &JudgeUrl,
        tcp: TcpStream,
        request: &[u8],
    ) -> Result<(u16, String), Outcome> {
        let mut stream: Box<dyn Io> = if judge.https {
            let name = ServerName::try_from(judge.host.clone())
                .map_err(|_| Outcome::Network(format!("invalid judge host {:?}", judge.host)))?;
            match self.tls.connect(name, tcp).await {
                Ok(tls) => Box::new(tls),
                Err(e) => {
                    return Err(Outcome::Tls(format!(
                        "TLS to the judge through the proxy failed: {e}"
                    )));
                }
            }
        } else {
            Box::new(tcp)
        };
        match dial::exchange(&mut stream, request).await {
            Ok((head, body)) => Ok((head.status, String::from_utf8_lossy(&body).into_owned())),
            Err(HandshakeError::Io(kind, text)) => Err(match kind {
                std::io::ErrorKind::TimedOut => Outcome::Timeout,
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                    Outcome::Handshake(format!(
                        "the proxy closed the connection without an answer: {text}"
                    ))
                }
                _ => Outcome::Network(text),
            }),
            Err(other) => Err(handshake_outcome(other)),
        }
    }
}

fn handshake_outcome(e: HandshakeError) -> Outcome {
    match e {
        HandshakeError::Fake(d) => Outcome::Fake(d),
        HandshakeError::Rejected(d) | HandshakeError::Auth(d) | HandshakeError::Garbled(d) => {
            Outcome::Handshake(d)
        }
        HandshakeError::Io(std::io::ErrorKind::TimedOut, _) => Outcome::Timeout,
        HandshakeError::Io(_, d) => {
            Outcome::Handshake(format!("the proxy broke the handshake: {d}"))
        }
    }
}

/// SOCKS4 carries a user id where other protocols carry a user name.
fn user_id(auth: Option<&(String, String)>) -> &str {
    auth.map(|(user, _)| user.as_str()).unwrap_or("")
}

/// The judge's addresses, for a SOCKS proxy told an address rather than a name. The proxy dials
/// them from its own network; the judge itself was probed through the guard.
async fn resolve_judge(judge: &JudgeUrl) -> std::io::Result<Vec<std::net::SocketAddr>> {
    if let Some(ip) = judge.ip() {
        return Ok(vec![std::net::SocketAddr::new(ip, judge.port)]);
    }
    Ok(tokio::net::lookup_host((judge.host.as_str(), judge.port))
        .await?
        .collect())
}

/// SOCKS4 needs the judge's IPv4 address, resolved here.
async fn local_ipv4(judge: &JudgeUrl) -> Result<std::net::Ipv4Addr, String> {
    let addrs = resolve_judge(judge)
        .await
        .map_err(|e| format!("cannot resolve the judge host {}: {e}", judge.host))?;
    addrs
        .iter()
        .find_map(|a| match a.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .ok_or_else(|| {
            format!(
                "the judge host {} has no IPv4 address, which SOCKS4 needs",
                judge.host
            )
        })
}

fn new_token() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> BTreeSet<IpAddr> {
        ["127.0.0.1".parse().unwrap()].into()
    }

    fn echo(token: &str, remote: &str, headers: &[(&str, &str)]) -> String {
        let headers: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        serde_json::json!({"token": token, "remote_addr": remote, "headers": headers}).to_string()
    }

    #[test]
    fn usable_only_with_status_200_and_the_token() {
        let ok = classify(
            Outcome::Response {
                status: 200,
                body: echo("t1", "127.0.0.9", &[]),
            },
            "t1",
            &own(),
        );
        assert!(ok.usable);
        assert_eq!(
            (ok.reason, ok.exit_ip.as_str(), ok.anonymity),
            (pb::Reason::None, "127.0.0.9", pb::Anonymity::Elite)
        );

        let other_token = classify(
            Outcome::Response {
                status: 200,
                body: echo("t0", "1.1.1.1", &[]),
            },
            "t1",
            &own(),
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
            &own(),
        );
        assert_eq!(
            (fake.usable, fake.reason),
            (false, pb::Reason::TokenMissing)
        );

        let status = classify(
            Outcome::Response {
                status: 403,
                body: echo("t1", "1.1.1.1", &[]),
            },
            "t1",
            &own(),
        );
        assert_eq!(
            (status.usable, status.reason),
            (false, pb::Reason::BadStatus)
        );
    }

    #[test]
    fn anonymity_grades() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], pb::Anonymity);
        let cases: [Case; 8] = [
            (
                "127.0.0.7",
                &[("host", "j"), ("user-agent", "x")],
                pb::Anonymity::Elite,
            ),
            (
                "127.0.0.7",
                &[("via", "1.1 squid")],
                pb::Anonymity::Anonymous,
            ),
            (
                "127.0.0.7",
                &[("X-Forwarded-For", "unknown")],
                pb::Anonymity::Anonymous,
            ),
            (
                "127.0.0.7",
                &[("x-forwarded-for", "127.0.0.1")],
                pb::Anonymity::Transparent,
            ),
            (
                "127.0.0.7",
                &[("forwarded", "for=127.0.0.1:5555;proto=http")],
                pb::Anonymity::Transparent,
            ),
            (
                "127.0.0.7",
                &[("x-custom", "seen 127.0.0.10 only")],
                pb::Anonymity::Elite,
            ),
            ("127.0.0.1", &[], pb::Anonymity::Transparent),
            (
                "127.0.0.7",
                &[("host", "127.0.0.1:8080")],
                pb::Anonymity::Elite,
            ),
        ];
        for (remote, headers, expected) in cases {
            let body = echo("t", remote, headers);
            let c = classify(Outcome::Response { status: 200, body }, "t", &own());
            assert_eq!(c.anonymity, expected, "{remote} {headers:?}");
        }
    }

    #[test]
    fn ipv6_own_addresses_are_found_in_headers() {
        let own: BTreeSet<IpAddr> = ["2001:db8::5".parse().unwrap()].into();
        let body = echo(
            "t",
            "2001:db8::9",
            &[("x-forwarded-for", "2001:db8::5, 10.0.0.1")],
        );
        let c = classify(Outcome::Response { status: 200, body }, "t", &own);
        assert_eq!(c.anonymity, pb::Anonymity::Transparent);
    }

    #[test]
    fn failures_keep_their_reason() {
        for (outcome, reason) in [
            (Outcome::Refused, pb::Reason::Refused),
            (Outcome::Timeout, pb::Reason::Timeout),
            (Outcome::Handshake("socks".into()), pb::Reason::Handshake),
            (Outcome::Fake("body".into()), pb::Reason::TokenMissing),
            (Outcome::Tls("cert".into()), pb::Reason::Tls),
            (Outcome::Network("reset".into()), pb::Reason::Network),
        ] {
            let c = classify(outcome, "t", &own());
            assert!(!c.usable);
            assert_eq!(c.reason, reason);
            assert_eq!(c.anonymity, pb::Anonymity::Unknown);
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
