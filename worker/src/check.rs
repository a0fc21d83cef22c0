//! One proxy check: through the proxy, a GET of the judge URL carrying a random token, then of each
//! of the job's check targets; then the pure classification of what came back into a verdict with
//! an anonymity grade and one verdict per target.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use proxyfleet_proto::v1 as pb;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::echo::{self, JudgeKind};
use crate::targets::{self, LeaseTarget};
use proxyfleet_common::dial::{self, HandshakeError, JudgeUrl, Socks4Dest, Socks5Dest};
use proxyfleet_common::guard::{DialError, Guard};
use proxyfleet_common::url::HttpUrl;

/// A proxy to check, as leased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    pub protocol: pb::Protocol,
    pub host: String,
    pub port: u16,
    pub auth: Option<(String, String)>,
}

impl Proxy {
    pub fn from_proto(c: &pb::Candidate) -> Option<Proxy> {
        let protocol = pb::Protocol::try_from(c.protocol)
            .ok()
            .filter(|p| *p != pb::Protocol::Unspecified)?;
        Some(Proxy {
            protocol,
            host: c.host.clone(),
            port: u16::try_from(c.port).ok().filter(|p| *p != 0)?,
            auth: (!c.username.is_empty()).then(|| (c.username.clone(), c.password.clone())),
        })
    }
}

/// A judge as its direct probe found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judge {
    pub url: JudgeUrl,
    /// The shape of its answers; every check's answer must have it.
    pub kind: JudgeKind,
    /// It echoed the probe's token, so every check's answer must carry the check's.
    pub holds_token: bool,
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

/// Decides the judge's part of a verdict: usable only if the judge answered 200 with an answer of
/// its kind, carrying the check's token where the judge echoes it.
pub fn classify(
    outcome: Outcome,
    judge: &Judge,
    token: &str,
    own: &BTreeSet<IpAddr>,
) -> Classified {
    let fail = |reason, detail: String| Classified {
        usable: false,
        reason,
        exit_ip: String::new(),
        anonymity: pb::Anonymity::Unknown,
        detail,
    };
    match outcome {
        Outcome::Response { status, body } => {
            if status != 200 {
                return fail(
                    pb::Reason::BadStatus,
                    format!("judge request answered status {status}"),
                );
            }
            let echo = echo::read(&body, token);
            if judge.holds_token && !echo.token_seen {
                return fail(
                    pb::Reason::TokenMissing,
                    "the answer does not carry the check's token: hijacked or fake proxy".into(),
                );
            }
            if judge.kind != JudgeKind::Page && echo.kind != judge.kind {
                return fail(
                    pb::Reason::TokenMissing,
                    format!(
                        "the answer is not the {} judge's echo: hijacked or fake proxy",
                        judge.kind.name()
                    ),
                );
            }
            let anonymity = echo::grade(&echo, own);
            let detail = match judge.kind {
                JudgeKind::Page => {
                    "the judge is a plain page: exit address and anonymity unknown, fakes not detected"
                }
                JudgeKind::Address if anonymity == pb::Anonymity::Unknown => {
                    "the judge shows the exit address only: anonymous and elite cannot be told apart"
                }
                _ => "",
            };
            Classified {
                usable: true,
                reason: pb::Reason::None,
                exit_ip: echo.exit_ip().map(|ip| ip.to_string()).unwrap_or_default(),
                anonymity,
                detail: detail.into(),
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

/// What a verdict says when no judge was asked (a job of targets only).
pub const NO_JUDGE: &str = "checked against its targets only: no judge, so fakes, exit address and anonymity were not checked";

/// The whole verdict from the judge's part (none with targets only) and the targets' verdicts:
/// usable when the judge passed and every target did; otherwise the judge's failure, or the
/// first failing target's reason and detail.
pub fn combine(judged: Option<Classified>, targets: &[pb::TargetVerdict]) -> Classified {
    let judged = judged.unwrap_or_else(|| Classified {
        usable: true,
        reason: pb::Reason::None,
        exit_ip: String::new(),
        anonymity: pb::Anonymity::Unknown,
        detail: NO_JUDGE.into(),
    });
    if !judged.usable {
        return judged;
    }
    match targets.iter().find(|t| !t.passed) {
        Some(failed) => Classified {
            usable: false,
            reason: pb::Reason::try_from(failed.reason).unwrap_or(pb::Reason::Network),
            detail: failed.detail.clone(),
            ..judged
        },
        None => judged,
    }
}

/// A check's verdict, its targets' verdicts and timings.
#[derive(Debug, Clone)]
pub struct Checked {
    pub classified: Classified,
    /// One per target of the lease, in its order; empty when the judge check failed first.
    pub targets: Vec<pb::TargetVerdict>,
    /// Time to open the TCP connection to the proxy (zero if it failed before).
    pub connect: Duration,
    /// The judge request's time; with targets only, the slowest target's.
    pub latency: Duration,
}

/// What a request through the proxy asks for, and how much of the answer it reads.
#[derive(Debug, Clone, Copy)]
enum Ask<'a> {
    /// The judge, with the check's token.
    Judge(&'a str),
    /// A check target.
    Target,
}

impl Ask<'_> {
    /// How messages name the far end.
    fn what(self) -> &'static str {
        match self {
            Ask::Judge(_) => "judge",
            Ask::Target => "target",
        }
    }

    fn body_limit(self) -> usize {
        match self {
            Ask::Judge(_) => dial::MAX_BODY,
            Ask::Target => targets::MAX_BODY,
        }
    }
}

/// A stream to the judge or a target: a TCP connection, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Shared by every check: the TLS configuration (roots parsed once) and the worker's own
/// addresses, learned from the judges.
#[derive(Clone)]
pub struct Checker {
    tls: tokio_rustls::TlsConnector,
    /// The worker's own addresses as judges see them; filled by `probe_judge` and flags.
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

    /// Asks the judge directly (no proxy), dialled only where `guard` allows: what kind of judge
    /// it is, and which address it sees, remembered as the worker's own. Any answer of status 200
    /// makes a judge; one that shows no address (a plain page) tells no own address.
    pub async fn probe_judge(
        &self,
        url: &JudgeUrl,
        timeout: Duration,
        guard: Guard,
    ) -> Result<(Judge, Option<IpAddr>), String> {
        let token = new_token();
        let work = async {
            let tcp = guard
                .connect(&url.host, url.port, Some(timeout / 2))
                .await
                .map_err(|e| format!("unreachable: {e}"))?;
            let request = dial::judge_request(url, &token, false, None);
            let (status, body) = self
                .exchange(url, Ask::Judge(&token), tcp, &request)
                .await
                .map_err(|o| format!("unreachable: {}", outcome_text(o)))?;
            if status != 200 {
                return Err(format!(
                    "answered status {status}; a judge must answer 200 (a site to check proxies against is a check target)"
                ));
            }
            Ok(echo::read(&body, &token))
        };
        let echo = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| format!("unreachable: no answer within {timeout:?}"))??;
        let judge = Judge {
            url: url.clone(),
            kind: echo.kind,
            holds_token: echo.token_seen,
        };
        self.own
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(echo.callers.iter().copied());
        Ok((judge, echo.exit_ip()))
    }

    /// Checks one proxy against the judge (none with targets only), then, if it passed, against
    /// each target in turn; never takes longer than `limits.timeout` in all.
    pub async fn check(
        &self,
        proxy: &Proxy,
        judge: Option<&Judge>,
        targets: &[LeaseTarget],
        limits: &Limits,
    ) -> Checked {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + limits.timeout);
        let mut connect = None;
        let mut latency = Duration::ZERO;
        let judged = match judge {
            Some(judge) => {
                let token = new_token();
                let mut opened = Duration::ZERO;
                let outcome = tokio::time::timeout_at(
                    deadline,
                    self.fetch(proxy, &judge.url, Ask::Judge(&token), limits, &mut opened),
                )
                .await
                .unwrap_or(Outcome::Timeout);
                connect = Some(opened);
                latency = started.elapsed();
                Some(classify(outcome, judge, &token, &self.own_addresses()))
            }
            None => None,
        };
        let mut verdicts = Vec::new();
        if judged.as_ref().is_none_or(|j| j.usable) {
            for target in targets {
                let target = match target {
                    Ok(target) => target,
                    Err((name, why)) => {
                        verdicts.push(targets::invalid(name, why));
                        continue;
                    }
                };
                let begun = Instant::now();
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                // Past its maximum latency a target has failed: no need to wait any longer.
                let wait = target.max_latency.map_or(left, |max| max.min(left));
                let mut opened = Duration::ZERO;
                let outcome = if wait.is_zero() {
                    Outcome::Timeout
                } else {
                    tokio::time::timeout(
                        wait,
                        self.fetch(proxy, &target.url, Ask::Target, limits, &mut opened),
                    )
                    .await
                    .unwrap_or(Outcome::Timeout)
                };
                connect.get_or_insert(opened);
                let took = begun.elapsed();
                if judge.is_none() {
                    latency = latency.max(took);
                }
                verdicts.push(targets::verdict(target, outcome, took));
            }
        }
        Checked {
            classified: combine(judged, &verdicts),
            targets: verdicts,
            connect: connect.unwrap_or_default(),
            latency,
        }
    }

    /// One GET of `url` through the proxy: connects to the proxy, speaks its protocol, asks.
    async fn fetch(
        &self,
        proxy: &Proxy,
        url: &HttpUrl,
        ask: Ask<'_>,
        limits: &Limits,
        connect: &mut Duration,
    ) -> Outcome {
        let started = Instant::now();
        let what = ask.what();
        // Names are resolved here, at the last moment, and every address is checked where it is
        // dialled: a name pointing inside is caught too.
        let guard = Guard::new(limits.allow_private);
        let addrs = match guard.resolve(&proxy.host, proxy.port).await {
            Ok(addrs) => addrs,
            Err(DialError::Forbidden { .. }) => {
                return Outcome::Forbidden(format!(
                    "{} is a loopback, private or link-local address, which the coordinator does not allow",
                    proxy.host
                ));
            }
            Err(_) => {
                return Outcome::Network(format!("cannot resolve the proxy host {}", proxy.host));
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
        let auth = proxy.auth.as_ref();
        // A plain HTTP proxy with a plain URL forwards the request; everything else tunnels.
        let forward = proxy.protocol == pb::Protocol::Http && !url.https;
        let handshake = match proxy.protocol {
            pb::Protocol::Http if forward => Ok(()),
            pb::Protocol::Http | pb::Protocol::Https | pb::Protocol::Unspecified => {
                dial::http_connect(&mut tcp, url, auth).await
            }
            pb::Protocol::Socks4 => match local_ipv4(url, what).await {
                Ok(ip) => {
                    dial::socks4_connect(&mut tcp, &Socks4Dest::Ip(ip), url.port, user_id(auth))
                        .await
                }
                Err(e) => return Outcome::Network(e),
            },
            pb::Protocol::Socks4a => {
                dial::socks4_connect(
                    &mut tcp,
                    &Socks4Dest::Host(url.host.clone()),
                    url.port,
                    user_id(auth),
                )
                .await
            }
            pb::Protocol::Socks5 => match resolve_dest(url).await {
                Ok(a) if !a.is_empty() => {
                    dial::socks5_connect(&mut tcp, &Socks5Dest::Ip(a[0].ip()), url.port, auth).await
                }
                _ => {
                    return Outcome::Network(format!(
                        "cannot resolve the {what} host {}",
                        url.host
                    ));
                }
            },
            pb::Protocol::Socks5h => {
                dial::socks5_connect(
                    &mut tcp,
                    &Socks5Dest::Host(url.host.clone()),
                    url.port,
                    auth,
                )
                .await
            }
        };
        if let Err(e) = handshake {
            return handshake_outcome(e);
        }
        let proxy_auth = if forward { auth } else { None };
        let request = match ask {
            Ask::Judge(token) => dial::judge_request(url, token, forward, proxy_auth),
            Ask::Target => dial::target_request(url, forward, proxy_auth),
        };
        match self.exchange(url, ask, tcp, &request).await {
            // A forward proxy answers 407 itself: its protocol, not the far end, refused us.
            Ok((407, _)) if forward => Outcome::Handshake(if auth.is_some() {
                "the proxy refused the credentials (407)".into()
            } else {
                "the proxy requires authentication (407)".into()
            }),
            Ok((status, body)) => Outcome::Response { status, body },
            Err(outcome) => outcome,
        }
    }

    /// Sends the request over `tcp` (TLS first for an https URL); returns status and body.
    async fn exchange(
        &self,
        url: &HttpUrl,
        ask: Ask<'_>,
        tcp: TcpStream,
        request: &[u8],
    ) -> Result<(u16, String), Outcome> {
        let what = ask.what();
        let mut stream: Box<dyn Io> = if url.https {
            let name = ServerName::try_from(url.host.clone())
                .map_err(|_| Outcome::Network(format!("invalid {what} host {:?}", url.host)))?;
            match self.tls.connect(name, tcp).await {
                Ok(tls) => Box::new(tls),
                Err(e) => {
                    return Err(Outcome::Tls(format!(
                        "TLS to the {what} through the proxy failed: {e}"
                    )));
                }
            }
        } else {
            Box::new(tcp)
        };
        match dial::exchange(&mut stream, request, ask.body_limit()).await {
            Ok((head, body)) => Ok((head.status, String::from_utf8_lossy(&body).into_owned())),
            Err(HandshakeError::Io(kind, text)) => Err(match kind {
                std::io::ErrorKind::TimedOut => Outcome::Timeout,
                // The dial's own words for a clean close say no more than this line does.
                std::io::ErrorKind::UnexpectedEof => {
                    Outcome::Handshake("the proxy closed the connection without an answer".into())
                }
                std::io::ErrorKind::ConnectionReset => Outcome::Handshake(format!(
                    "the proxy reset the connection without an answer: {text}"
                )),
                _ => Outcome::Network(text),
            }),
            Err(other) => Err(handshake_outcome(other)),
        }
    }
}

/// A failed direct exchange, in words.
fn outcome_text(outcome: Outcome) -> String {
    match outcome {
        Outcome::Response { status, .. } => format!("answered status {status}"),
        Outcome::Refused => "connection refused".into(),
        Outcome::Timeout => "timed out".into(),
        Outcome::Handshake(d)
        | Outcome::Fake(d)
        | Outcome::Tls(d)
        | Outcome::Network(d)
        | Outcome::Forbidden(d) => d,
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

/// The addresses of a URL's host, for a SOCKS proxy told an address rather than a name. The
/// proxy dials them from its own network: resolving is all the worker does with them.
async fn resolve_dest(url: &HttpUrl) -> std::io::Result<Vec<std::net::SocketAddr>> {
    if let Some(ip) = url.ip() {
        return Ok(vec![std::net::SocketAddr::new(ip, url.port)]);
    }
    Ok(tokio::net::lookup_host((url.host.as_str(), url.port))
        .await?
        .collect())
}

/// SOCKS4 needs the host's IPv4 address, resolved here.
async fn local_ipv4(url: &HttpUrl, what: &str) -> Result<std::net::Ipv4Addr, String> {
    let addrs = resolve_dest(url)
        .await
        .map_err(|e| format!("cannot resolve the {what} host {}: {e}", url.host))?;
    addrs
        .iter()
        .find_map(|a| match a.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .ok_or_else(|| {
            format!(
                "the {what} host {} has no IPv4 address, which SOCKS4 needs",
                url.host
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

    fn judge(kind: JudgeKind, holds_token: bool) -> Judge {
        Judge {
            url: JudgeUrl::parse("http://judge.test/judge").unwrap(),
            kind,
            holds_token,
        }
    }

    fn builtin() -> Judge {
        judge(JudgeKind::Proxyfleet, true)
    }

    fn echo(token: &str, remote: &str, headers: &[(&str, &str)]) -> String {
        let headers: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        serde_json::json!({"token": token, "remote_addr": remote, "headers": headers}).to_string()
    }

    fn answered(status: u16, body: impl Into<String>) -> Outcome {
        Outcome::Response {
            status,
            body: body.into(),
        }
    }

    #[test]
    fn usable_only_with_status_200_and_the_token() {
        let ok = classify(
            answered(200, echo("t1", "127.0.0.9", &[])),
            &builtin(),
            "t1",
            &own(),
        );
        assert!(ok.usable);
        assert_eq!(
            (ok.reason, ok.exit_ip.as_str(), ok.anonymity),
            (pb::Reason::None, "127.0.0.9", pb::Anonymity::Elite)
        );
        let other_token = classify(
            answered(200, echo("t0", "1.1.1.1", &[])),
            &builtin(),
            "t1",
            &own(),
        );
        assert_eq!(
            (other_token.usable, other_token.reason),
            (false, pb::Reason::TokenMissing)
        );
        let fake = classify(answered(200, "hello"), &builtin(), "t1", &own());
        assert_eq!(
            (fake.usable, fake.reason),
            (false, pb::Reason::TokenMissing)
        );
        let status = classify(
            answered(403, echo("t1", "1.1.1.1", &[])),
            &builtin(),
            "t1",
            &own(),
        );
        assert_eq!(
            (status.usable, status.reason),
            (false, pb::Reason::BadStatus)
        );
    }

    #[test]
    fn the_builtin_judge_grades_every_anonymity() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], pb::Anonymity);
        let cases: [Case; 4] = [
            ("127.0.0.7", &[("user-agent", "x")], pb::Anonymity::Elite),
            (
                "127.0.0.7",
                &[("via", "1.1 squid")],
                pb::Anonymity::Anonymous,
            ),
            (
                "127.0.0.7",
                &[("x-forwarded-for", "127.0.0.1")],
                pb::Anonymity::Transparent,
            ),
            ("127.0.0.1", &[], pb::Anonymity::Transparent),
        ];
        for (remote, headers, expected) in cases {
            let c = classify(
                answered(200, echo("t", remote, headers)),
                &builtin(),
                "t",
                &own(),
            );
            assert_eq!(c.anonymity, expected, "{remote} {headers:?}");
        }
    }

    #[test]
    fn public_judges_grade_what_their_shape_shows() {
        let httpbin = judge(JudgeKind::Httpbin, false);
        let c = classify(
            answered(
                200,
                r#"{"origin":"127.0.0.1, 127.0.0.8","headers":{"Via":"1.1 x"}}"#,
            ),
            &httpbin,
            "t",
            &own(),
        );
        assert_eq!(
            (c.usable, c.exit_ip.as_str(), c.anonymity),
            (true, "127.0.0.8", pb::Anonymity::Transparent)
        );
        let azenv = judge(JudgeKind::Azenv, false);
        let c = classify(
            answered(
                200,
                "<pre>\nHTTP_VIA = 1.1 x\nREMOTE_ADDR = 127.0.0.8\n</pre>",
            ),
            &azenv,
            "t",
            &own(),
        );
        assert_eq!(
            (c.usable, c.exit_ip.as_str(), c.anonymity),
            (true, "127.0.0.8", pb::Anonymity::Anonymous)
        );
        let address = judge(JudgeKind::Address, false);
        let c = classify(answered(200, "127.0.0.8\n"), &address, "t", &own());
        assert_eq!(
            (c.usable, c.exit_ip.as_str(), c.anonymity),
            (true, "127.0.0.8", pb::Anonymity::Unknown)
        );
        assert!(c.detail.contains("cannot be told apart"), "{}", c.detail);
        let c = classify(answered(200, "127.0.0.1"), &address, "t", &own());
        assert_eq!(c.anonymity, pb::Anonymity::Transparent);
        let page = judge(JudgeKind::Page, false);
        let c = classify(answered(200, "<html>welcome</html>"), &page, "t", &own());
        assert_eq!(
            (c.usable, c.exit_ip.as_str(), c.anonymity),
            (true, "", pb::Anonymity::Unknown)
        );
        assert!(c.detail.contains("fakes not detected"), "{}", c.detail);
    }

    #[test]
    fn an_answer_that_lost_the_judges_shape_or_token_is_a_fake() {
        for (kind, holds_token, body) in [
            (JudgeKind::Httpbin, false, "hello"),
            (
                JudgeKind::Httpbin,
                true,
                r#"{"args":{},"origin":"1.1.1.1","headers":{}}"#,
            ),
            (
                JudgeKind::Azenv,
                false,
                r#"{"origin":"1.1.1.1","headers":{}}"#,
            ),
            (JudgeKind::Address, false, "<html>blocked</html>"),
        ] {
            let c = classify(answered(200, body), &judge(kind, holds_token), "t", &own());
            assert_eq!(
                (c.usable, c.reason),
                (false, pb::Reason::TokenMissing),
                "{kind:?} {body}"
            );
        }
        // A page judge takes any answer of status 200: it cannot tell a fake.
        let c = classify(
            answered(200, "hello"),
            &judge(JudgeKind::Page, false),
            "t",
            &own(),
        );
        assert!(c.usable);
        let c = classify(
            answered(502, ""),
            &judge(JudgeKind::Page, false),
            "t",
            &own(),
        );
        assert_eq!(c.reason, pb::Reason::BadStatus);
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
            let c = classify(outcome, &builtin(), "t", &own());
            assert!(!c.usable);
            assert_eq!(c.reason, reason);
            assert_eq!(c.anonymity, pb::Anonymity::Unknown);
        }
    }

    fn target_verdict(name: &str, reason: pb::Reason) -> pb::TargetVerdict {
        pb::TargetVerdict {
            target: name.into(),
            passed: reason == pb::Reason::None,
            reason: reason as i32,
            detail: if reason == pb::Reason::None {
                String::new()
            } else {
                format!("target {name:?}: failed")
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_verdict_is_usable_when_the_judge_and_every_target_pass() {
        let judged = classify(
            answered(200, echo("t", "127.0.0.9", &[])),
            &builtin(),
            "t",
            &own(),
        );
        let all = combine(
            Some(judged.clone()),
            &[
                target_verdict("a", pb::Reason::None),
                target_verdict("b", pb::Reason::None),
            ],
        );
        assert_eq!(all, judged);
        let second_fails = combine(
            Some(judged.clone()),
            &[
                target_verdict("a", pb::Reason::None),
                target_verdict("b", pb::Reason::BodyMismatch),
                target_verdict("c", pb::Reason::Slow),
            ],
        );
        assert_eq!(
            (
                second_fails.usable,
                second_fails.reason,
                second_fails.detail.as_str()
            ),
            (false, pb::Reason::BodyMismatch, "target \"b\": failed")
        );
        assert_eq!(
            second_fails.exit_ip, "127.0.0.9",
            "the judge's findings stay"
        );
        let judge_failed = classify(Outcome::Timeout, &builtin(), "t", &own());
        assert_eq!(combine(Some(judge_failed.clone()), &[]), judge_failed);
    }

    #[test]
    fn targets_only_says_what_was_not_checked() {
        let c = combine(None, &[target_verdict("a", pb::Reason::None)]);
        assert!(c.usable);
        assert_eq!(
            (c.anonymity, c.exit_ip.as_str()),
            (pb::Anonymity::Unknown, "")
        );
        assert_eq!(c.detail, NO_JUDGE);
        let c = combine(None, &[target_verdict("a", pb::Reason::BadStatus)]);
        assert_eq!((c.usable, c.reason), (false, pb::Reason::BadStatus));
    }

    #[test]
    fn proxies_come_from_candidates() {
        let c = pb::Candidate {
            index: 3,
            protocol: pb::Protocol::Socks5 as i32,
            host: "::1".into(),
            port: 1080,
            username: "u".into(),
            password: "p".into(),
        };
        let t = Proxy::from_proto(&c).unwrap();
        assert_eq!(t.auth, Some(("u".into(), "p".into())));
        assert!(
            Proxy::from_proto(&pb::Candidate {
                port: 0,
                ..c.clone()
            })
            .is_none()
        );
        assert!(Proxy::from_proto(&pb::Candidate { protocol: 0, ..c }).is_none());
    }
}
