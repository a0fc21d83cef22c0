//! Simulated proxies: real TCP servers on loopback with controlled behaviour.
//!
//! Every server runs as a tokio task that owns a [`JoinSet`] of its connection
//! tasks, so dropping a [`SimProxy`] aborts the accept loop and every
//! connection it is still serving. The servers only ever connect to the
//! upstream addresses their clients ask for, optionally from a chosen local
//! address ([`ProxySpec::egress`]) so a judge sees a distinct client address.
//!
//! Every forwarding protocol (HTTP, SOCKS4/4a, SOCKS5) is a handshake that
//! yields a [`Tunnel`]; connecting upstream and relaying are shared.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

/// Largest request head (request line plus headers) a simulated proxy reads.
const HEAD_LIMIT: usize = 64 * 1024;
/// Longest SOCKS4 user id or SOCKS4a hostname a simulated proxy reads.
const SOCKS4_FIELD_LIMIT: usize = 255;
/// Time a client gets to finish its handshake (HTTP request head, SOCKS
/// negotiation), upstream connect included.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for connecting to an upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a proxy that answers and closes drains its client, so unread
/// request bytes do not turn the close into a reset that destroys the answer.
const LINGER: Duration = Duration::from_secs(2);
/// The `Via` header an anonymous or transparent HTTP proxy adds.
const VIA: &str = "Via: 1.1 proxyfleet-sim";

/// Username of the SOCKS5 proxies in a [`Farm`].
pub const FARM_USER: &str = "fleet";
/// Password of the SOCKS5 proxies in a [`Farm`].
pub const FARM_PASS: &str = "secret";

/// The protocol a forwarding [`SimProxy`] speaks to its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimProtocol {
    /// HTTP forward proxy: absolute-form requests and `CONNECT`.
    Http,
    /// SOCKS4, CONNECT only; rejects SOCKS4a hostname requests.
    Socks4,
    /// SOCKS4 plus the SOCKS4a extension (address `0.0.0.x`, hostname after
    /// the user id), CONNECT only.
    Socks4a,
    /// SOCKS5 (RFC 1928), CONNECT only, ATYP IPv4, IPv6 and domain name.
    Socks5,
}

impl SimProtocol {
    /// The candidate-line scheme: `http`, `socks4`, `socks4a` or `socks5`.
    pub fn scheme(self) -> &'static str {
        match self {
            SimProtocol::Http => "http",
            SimProtocol::Socks4 => "socks4",
            SimProtocol::Socks4a => "socks4a",
            SimProtocol::Socks5 => "socks5",
        }
    }
}

/// What an HTTP forward proxy adds to the requests it forwards in absolute
/// form. `CONNECT` tunnels relay bytes, so nothing is ever added there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum HeaderMode {
    /// Adds nothing (only `Proxy-*` headers, meant for the proxy, are dropped).
    #[default]
    Elite,
    /// Adds `Via: 1.1 proxyfleet-sim`: reveals a proxy, not the client.
    Anonymous,
    /// Adds `Via: 1.1 proxyfleet-sim` and `X-Forwarded-For: <client ip>`,
    /// the client ip being the peer address of the client connection.
    Transparent,
}

/// A forwarding proxy: protocol, credentials, header mode and egress
/// address. Build it with [`ProxySpec::http`] (or `socks4`, `socks4a`,
/// `socks5`) and the `with_*` methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySpec {
    /// The protocol spoken to clients.
    pub protocol: SimProtocol,
    /// Required credentials, `(user, pass)`, or `None` for none. HTTP wants
    /// `Proxy-Authorization: Basic ..` (else `407`), SOCKS5 wants RFC 1929
    /// username/password; SOCKS4/4a want the user id `user` and ignore `pass`.
    pub auth: Option<(String, String)>,
    /// Headers added to forwarded HTTP requests (HTTP only).
    pub headers: HeaderMode,
    /// Local address the upstream connections are bound to, or `None` to let
    /// the system choose.
    pub egress: Option<IpAddr>,
    /// `(from, to)`: every `from` in the bodies of the answers relayed back
    /// is replaced by `to` (its `Content-Length` fixed), as a proxy that
    /// injects or censors content does. Plain HTTP answers only; `None`
    /// relays bytes untouched.
    pub rewrite: Option<(String, String)>,
}

impl ProxySpec {
    /// A proxy speaking `protocol`: no auth, [`HeaderMode::Elite`], no egress binding.
    pub const fn new(protocol: SimProtocol) -> ProxySpec {
        ProxySpec {
            protocol,
            auth: None,
            headers: HeaderMode::Elite,
            egress: None,
            rewrite: None,
        }
    }

    /// An elite HTTP proxy without auth.
    pub const fn http() -> ProxySpec {
        ProxySpec::new(SimProtocol::Http)
    }

    /// A SOCKS4 proxy accepting any user id.
    pub const fn socks4() -> ProxySpec {
        ProxySpec::new(SimProtocol::Socks4)
    }

    /// A SOCKS4a proxy accepting any user id.
    pub const fn socks4a() -> ProxySpec {
        ProxySpec::new(SimProtocol::Socks4a)
    }

    /// A SOCKS5 proxy without auth.
    pub const fn socks5() -> ProxySpec {
        ProxySpec::new(SimProtocol::Socks5)
    }

    /// Requires `user`/`pass` (see [`ProxySpec::auth`]).
    pub fn with_auth(mut self, user: impl Into<String>, pass: impl Into<String>) -> ProxySpec {
        self.auth = Some((user.into(), pass.into()));
        self
    }

    /// Requires the SOCKS4 user id `user_id`. The candidate line then reads
    /// `socks4://USERID:x@IP:PORT`: the project's parser wants `user:pass@`,
    /// and SOCKS4 ignores the password part.
    pub fn with_user_id(self, user_id: impl Into<String>) -> ProxySpec {
        self.with_auth(user_id, "x")
    }

    /// Adds headers to forwarded HTTP requests as `mode` says.
    pub fn with_headers(mut self, mode: HeaderMode) -> ProxySpec {
        self.headers = mode;
        self
    }

    /// Binds every upstream connection to `ip` (port 0) before connecting.
    pub fn with_egress(mut self, ip: IpAddr) -> ProxySpec {
        self.egress = Some(ip);
        self
    }

    /// Rewrites the answers it relays: every `from` in a body becomes `to`
    /// (see [`ProxySpec::rewrite`]).
    pub fn with_rewrite(mut self, from: impl Into<String>, to: impl Into<String>) -> ProxySpec {
        self.rewrite = Some((from.into(), to.into()));
        self
    }

    /// The candidate line of this proxy listening on `addr`:
    /// `scheme://[user:pass@]IP:PORT`.
    pub fn candidate_line(&self, addr: SocketAddr) -> String {
        let scheme = self.protocol.scheme();
        match &self.auth {
            Some((user, pass)) => format!(
                "{scheme}://{}:{}@{addr}",
                encode_userinfo(user),
                encode_userinfo(pass)
            ),
            None => format!("{scheme}://{addr}"),
        }
    }
}

impl Default for ProxySpec {
    fn default() -> ProxySpec {
        ProxySpec::http()
    }
}

/// What a [`SimProxy`] does with the connections it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// A working forwarding proxy as `spec` describes.
    ///
    /// HTTP accepts absolute-form requests (`GET http://host:port/path
    /// HTTP/1.1`), connects to `host:port`, forwards the request rewritten to
    /// origin-form (headers kept except `Proxy-*`, plus what the
    /// [`HeaderMode`] adds), then relays bytes both ways until either side
    /// closes. `CONNECT host:port` is answered with `HTTP/1.1 200 Connection
    /// established` before relaying. One request is parsed per client
    /// connection; later bytes are relayed raw. An unreachable upstream gets
    /// `502`.
    ///
    /// SOCKS4/4a answer `0x5A` (granted) or `0x5B` (rejected: wrong user id,
    /// other command, hostname on plain SOCKS4, upstream unreachable).
    Proxy(ProxySpec),
    /// Shorthand for `Proxy(ProxySpec::http())`: elite HTTP proxy, no auth,
    /// no egress binding.
    Http,
    /// Shorthand for a SOCKS5 [`Behavior::Proxy`]. With `Some((user, pass))`
    /// it requires username/password authentication (RFC 1929) and rejects
    /// wrong credentials (status 0x01, then close); with `None` it accepts
    /// method 0x00 (no authentication).
    Socks5 {
        /// Required credentials, `(user, pass)`, or `None` for no auth.
        auth: Option<(String, String)>,
    },
    /// Accepts TCP connections and never sends a byte; holds them open until
    /// the client closes or the proxy is dropped.
    BlackHole,
    /// Answers the first bytes of every connection, whatever they are (a
    /// `GET`, a `CONNECT`, a SOCKS greeting), with `HTTP/1.1 200 OK`, body
    /// `hello` (`Content-Length` set, `Connection: close`), without contacting
    /// anything: a fake proxy.
    Fake200,
    /// Accepts, waits `delay` before reading anything, then behaves as
    /// `Proxy(spec)`: a proxy too slow for a check's timeout.
    Slow {
        /// Wait before the handshake starts.
        delay: Duration,
        /// The proxy served after the wait.
        spec: ProxySpec,
    },
    /// Answers the first bytes of every connection with 16 bytes of garbage,
    /// then closes: a proxy whose handshake breaks.
    BrokenHandshake,
}

impl Behavior {
    /// A slow elite HTTP proxy: `Slow { delay, spec: ProxySpec::http() }`.
    pub fn slow(delay: Duration) -> Behavior {
        Behavior::Slow {
            delay,
            spec: ProxySpec::http(),
        }
    }

    /// Short stable name of the behaviour: the protocol scheme for a working
    /// proxy (`http`, `socks4`, `socks4a`, `socks5`), else `black-hole`,
    /// `fake200`, `slow` or `broken-handshake`.
    pub fn name(&self) -> &'static str {
        match self {
            Behavior::Proxy(spec) => spec.protocol.scheme(),
            Behavior::Http => "http",
            Behavior::Socks5 { .. } => "socks5",
            Behavior::BlackHole => "black-hole",
            Behavior::Fake200 => "fake200",
            Behavior::Slow { .. } => "slow",
            Behavior::BrokenHandshake => "broken-handshake",
        }
    }
}

impl From<ProxySpec> for Behavior {
    fn from(spec: ProxySpec) -> Behavior {
        Behavior::Proxy(spec)
    }
}

/// A [`Behavior`] with its shorthands spelled out: what connection tasks run.
#[derive(Debug)]
enum Service {
    /// Forward as `spec` says, after waiting `delay`.
    Forward { delay: Duration, spec: ProxySpec },
    /// Never answer.
    BlackHole,
    /// Answer the first bytes with `reply`, then close.
    Answer { reply: &'static [u8] },
}

impl From<Behavior> for Service {
    fn from(behavior: Behavior) -> Service {
        let forward = |spec| Service::Forward {
            delay: Duration::ZERO,
            spec,
        };
        match behavior {
            Behavior::Proxy(spec) => forward(spec),
            Behavior::Http => forward(ProxySpec::http()),
            Behavior::Socks5 { auth } => forward(ProxySpec {
                auth,
                ..ProxySpec::socks5()
            }),
            Behavior::BlackHole => Service::BlackHole,
            Behavior::Fake200 => Service::Answer { reply: FAKE_200 },
            Behavior::Slow { delay, spec } => Service::Forward { delay, spec },
            Behavior::BrokenHandshake => Service::Answer { reply: GARBAGE },
        }
    }
}

/// A running simulated proxy. Dropping it stops the server and aborts every
/// connection it is serving.
#[derive(Debug)]
pub struct SimProxy {
    /// Address the proxy listens on.
    pub addr: SocketAddr,
    /// Name of the behaviour served (see [`Behavior::name`]).
    pub behavior_name: &'static str,
    /// What every connection gets; shared with the connection tasks.
    service: Arc<Service>,
    /// Connections accepted so far.
    accepted: Arc<AtomicU64>,
    /// The accept loop; it owns the connection tasks.
    task: JoinHandle<()>,
}

impl SimProxy {
    /// Binds `ip:0` and serves `behavior`.
    pub async fn spawn(ip: IpAddr, behavior: impl Into<Behavior>) -> io::Result<SimProxy> {
        SimProxy::spawn_on(SocketAddr::new(ip, 0), behavior).await
    }

    /// Binds `addr` and serves `behavior`: a proxy that was stopped comes back where it was.
    pub async fn spawn_on(addr: SocketAddr, behavior: impl Into<Behavior>) -> io::Result<SimProxy> {
        let behavior = behavior.into();
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let behavior_name = behavior.name();
        let service = Arc::new(Service::from(behavior));
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            behavior_name,
            service.clone(),
            accepted.clone(),
        ));
        tracing::debug!(%addr, behavior = behavior_name, "sim proxy started");
        Ok(SimProxy {
            addr,
            behavior_name,
            service,
            accepted,
            task,
        })
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// The candidate line for this proxy: `scheme://[user:pass@]IP:PORT` for
    /// a forwarding proxy (slow ones included, see
    /// [`ProxySpec::candidate_line`]), `http://IP:PORT` for everything else.
    pub fn candidate_line(&self) -> String {
        match &*self.service {
            Service::Forward { spec, .. } => spec.candidate_line(self.addr),
            Service::BlackHole | Service::Answer { .. } => format!("http://{}", self.addr),
        }
    }
}

impl Drop for SimProxy {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every
        // connection task.
        self.task.abort();
    }
}

/// An address on `ip` where nothing listens (binds port 0, notes the port and
/// drops the listener): connections to it are refused.
pub fn refused_addr(ip: IpAddr) -> io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0))?;
    let addr = listener.local_addr()?;
    drop(listener);
    Ok(addr)
}

/// Where the `i`th refused address of a farm on `ip` lives. On IPv4 loopback each gets an address
/// of its own in 127.254.0.0/16, which nothing binds, so a port freed here and later taken by
/// another listener (of this or a parallel test) can never turn a refused candidate into a live one.
fn refused_ip(ip: IpAddr, i: usize) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => {
            let i = i % (250 * 250);
            IpAddr::V4(std::net::Ipv4Addr::new(
                127,
                254,
                (i / 250) as u8,
                (i % 250 + 1) as u8,
            ))
        }
        other => other,
    }
}

/// A farm: some working proxies (alternating Http and Socks5 with auth user
/// `fleet` / password `secret`), some black holes, some refused addresses.
#[derive(Debug)]
pub struct Farm {
    /// Working proxies, alternating Http and Socks5 (with auth), Http first.
    pub working: Vec<SimProxy>,
    /// Proxies that accept and never answer.
    pub black_holes: Vec<SimProxy>,
    /// Addresses where connections are refused.
    pub refused: Vec<SocketAddr>,
}

impl Farm {
    /// Starts `working` working proxies, `black_holes` black holes and picks
    /// `refused` refused addresses, all on `ip`.
    pub async fn spawn(
        ip: IpAddr,
        working: usize,
        black_holes: usize,
        refused: usize,
    ) -> io::Result<Farm> {
        let mut farm = Farm {
            working: Vec::with_capacity(working),
            black_holes: Vec::with_capacity(black_holes),
            refused: Vec::with_capacity(refused),
        };
        for i in 0..working {
            let behavior = if i % 2 == 0 {
                Behavior::Http
            } else {
                Behavior::Socks5 {
                    auth: Some((FARM_USER.to_owned(), FARM_PASS.to_owned())),
                }
            };
            farm.working.push(SimProxy::spawn(ip, behavior).await?);
        }
        for _ in 0..black_holes {
            farm.black_holes
                .push(SimProxy::spawn(ip, Behavior::BlackHole).await?);
        }
        for i in 0..refused {
            farm.refused.push(refused_addr(refused_ip(ip, i))?);
        }
        Ok(farm)
    }

    /// Candidate lines: `http://IP:PORT` for Http, `socks5://fleet:secret@IP:PORT`
    /// for Socks5, `http://IP:PORT` for black holes and refused addresses.
    /// Working ones first, then black holes, then refused.
    pub fn candidate_lines(&self) -> Vec<String> {
        let mut lines = self.working_lines();
        lines.extend(self.black_holes.iter().map(SimProxy::candidate_line));
        lines.extend(self.refused.iter().map(|addr| format!("http://{addr}")));
        lines
    }

    /// The candidate lines of the working proxies only (same format).
    pub fn working_lines(&self) -> Vec<String> {
        self.working.iter().map(SimProxy::candidate_line).collect()
    }
}

/// Percent-encodes the characters that may not appear raw in URL userinfo.
fn encode_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Accepts connections until aborted; connection tasks live in a JoinSet
/// owned by this future so that aborting it aborts them all.
async fn accept_loop(
    listener: TcpListener,
    behavior_name: &'static str,
    service: Arc<Service>,
    accepted: Arc<AtomicU64>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, peer)) => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let service = service.clone();
                    conns.spawn(async move {
                        if let Err(err) = serve(stream, peer, &service).await {
                            tracing::debug!(%peer, behavior = behavior_name, error = %err, "sim connection ended");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "sim proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Serves one accepted connection from `peer` according to `service`.
async fn serve(stream: TcpStream, peer: SocketAddr, service: &Service) -> io::Result<()> {
    // Relayed traffic is small and interactive; avoid Nagle delays.
    let _ = stream.set_nodelay(true);
    match service {
        Service::Forward { delay, spec } => {
            if !delay.is_zero() {
                tokio::time::sleep(*delay).await;
            }
            serve_proxy(stream, peer, spec).await
        }
        Service::BlackHole => serve_black_hole(stream).await,
        Service::Answer { reply } => answer_first_bytes(stream, reply).await,
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads a request head (up to and including the blank line) within the
/// size and time limits. Returns the head and any bytes read past it.
async fn read_head(stream: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
    timeout(HANDSHAKE_TIMEOUT, async {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "eof before end of request head",
                ));
            }
            let search_from = buf.len().saturating_sub(3);
            buf.extend_from_slice(&chunk[..n]);
            if let Some(pos) = find(&buf[search_from..], b"\r\n\r\n") {
                let end = search_from + pos + 4;
                if end > HEAD_LIMIT {
                    return Err(invalid("request head too large"));
                }
                let rest = buf.split_off(end);
                return Ok((buf, rest));
            }
            if buf.len() > HEAD_LIMIT {
                return Err(invalid("request head too large"));
            }
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request head timed out"))?
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A parsed request head.
struct RequestHead<'a> {
    method: &'a str,
    target: &'a str,
    version: &'a str,
    /// Header lines, without line terminators.
    headers: Vec<&'a str>,
}

fn parse_head(head: &[u8]) -> io::Result<RequestHead<'_>> {
    let text = std::str::from_utf8(head).map_err(|_| invalid("request head is not utf-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().ok_or_else(|| invalid("empty request"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("malformed request line"));
    };
    if method.is_empty() || target.is_empty() || !version.starts_with("HTTP/") {
        return Err(invalid("malformed request line"));
    }
    let headers: Vec<&str> = lines.take_while(|l| !l.is_empty()).collect();
    if headers.iter().any(|h| !h.contains(':')) {
        return Err(invalid("malformed header line"));
    }
    Ok(RequestHead {
        method,
        target,
        version,
        headers,
    })
}

/// Splits `host:port` (`[v6]:port` for IPv6) into host and port, with
/// `default_port` when the port is absent.
fn split_authority(authority: &str, default_port: Option<u16>) -> io::Result<(String, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| invalid("unterminated ipv6 literal"))?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(invalid("garbage after ipv6 literal")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(invalid("empty host"));
    }
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| invalid("bad port"))?,
        None => default_port.ok_or_else(|| invalid("missing port"))?,
    };
    if port == 0 {
        return Err(invalid("port 0"));
    }
    Ok((host.to_owned(), port))
}

/// Splits an absolute-form `http://` target into host, port and origin-form
/// path.
fn split_absolute(target: &str) -> io::Result<(String, u16, String)> {
    let scheme_len = "http://".len();
    if target.len() < scheme_len || !target[..scheme_len].eq_ignore_ascii_case("http://") {
        return Err(invalid("not an absolute http url"));
    }
    let rest = &target[scheme_len..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // Drop any userinfo.
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = split_authority(authority, Some(80))?;
    let mut path = rest[end..].split('#').next().unwrap_or("").to_owned();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    Ok((host, port, path))
}

impl RequestHead<'_> {
    /// The trimmed value of the first header called `name` (any case).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|line| {
            let (n, value) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Whether a header line is meant for the proxy (`Proxy-Connection`,
/// `Proxy-Authorization`, ...) and so is not forwarded.
fn is_proxy_header(line: &str) -> bool {
    let name = line.split(':').next().unwrap_or("").trim();
    name.get(.."proxy-".len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("proxy-"))
}

/// Standard base64 (RFC 4648, padded), for HTTP Basic credentials.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let group = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(group >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Whether `req` carries HTTP Basic proxy credentials equal to `user`/`pass`.
fn authorizes(req: &RequestHead<'_>, (user, pass): &(String, String)) -> bool {
    let expected = base64_encode(format!("{user}:{pass}").as_bytes());
    req.header("proxy-authorization")
        .and_then(|value| value.split_once(' '))
        .is_some_and(|(scheme, token)| {
            scheme.eq_ignore_ascii_case("basic") && token.trim() == expected
        })
}

/// Connects to `host:port` (names resolved with the system resolver), from
/// `egress` when set, trying every resolved address in turn: `localhost` may
/// give `::1` first, which a v4 egress address cannot reach.
async fn connect_upstream(host: &str, port: u16, egress: Option<IpAddr>) -> io::Result<TcpStream> {
    let connect = async {
        let mut last_err = None;
        for addr in tokio::net::lookup_host((host, port)).await? {
            match connect_from(addr, egress).await {
                Ok(stream) => return Ok(stream),
                Err(err) => last_err = Some(err),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "host resolved to no address")
        }))
    };
    let res = timeout(CONNECT_TIMEOUT, connect).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "upstream connect timed out",
        ))
    });
    match res {
        Ok(stream) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Err(err) => {
            tracing::debug!(%host, port, ?egress, error = %err, "sim upstream connect failed");
            Err(err)
        }
    }
}

/// Connects to `addr`, first binding the socket to `egress:0` when set.
async fn connect_from(addr: SocketAddr, egress: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = egress {
        bind_source(&socket, ip)?;
    }
    socket.connect(addr).await
}

/// Binds `socket` to the source address `ip` and leaves the choice of its port to `connect`,
/// which may take a port in use toward other destinations. A port chosen at `bind` must be free
/// toward every destination: a search that grows with the TIME_WAIT sockets of the address, and
/// under a churn of short connections comes to cost more than the connections themselves.
pub fn bind_source(socket: &TcpSocket, ip: IpAddr) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if ip.is_ipv4() {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: setsockopt(2) on a socket this function borrows, with a pointer to a live
        // c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    socket.bind(SocketAddr::new(ip, 0))
}

/// An upstream connection a client's handshake asked for.
struct Tunnel {
    upstream: TcpStream,
    /// Bytes to send upstream before relaying: a forwarded HTTP request, or
    /// what the client sent early behind its handshake.
    first_bytes: Vec<u8>,
}

/// Serves one client of a forwarding proxy: the protocol's handshake, then
/// a relay to the upstream it asked for. A rejected client (the rejection
/// has been sent) is closed gently.
async fn serve_proxy(mut client: TcpStream, peer: SocketAddr, spec: &ProxySpec) -> io::Result<()> {
    let handshake = async {
        match spec.protocol {
            SimProtocol::Http => http_handshake(&mut client, peer, spec).await,
            SimProtocol::Socks4 | SimProtocol::Socks4a => socks4_handshake(&mut client, spec).await,
            SimProtocol::Socks5 => socks5_handshake(&mut client, spec).await,
        }
    };
    let tunnel = timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))??;
    let Some(Tunnel {
        mut upstream,
        first_bytes,
    }) = tunnel
    else {
        close_gently(client).await;
        return Ok(());
    };
    if !first_bytes.is_empty() {
        upstream.write_all(&first_bytes).await?;
    }
    match &spec.rewrite {
        None => {
            tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        }
        Some((from, to)) => relay_rewritten(client, upstream, from, to).await?,
    }
    Ok(())
}

/// Most bytes of an answer a rewriting proxy holds.
const REWRITE_LIMIT: usize = 1024 * 1024;

/// Relays the client's bytes upstream as they come, and the upstream's
/// answer back once it ended (the upstream closed), with `from` replaced by
/// `to` in its body.
async fn relay_rewritten(
    mut client: TcpStream,
    mut upstream: TcpStream,
    from: &str,
    to: &str,
) -> io::Result<()> {
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let upload = async {
        let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
        let _ = upstream_write.shutdown().await;
        // Done sending; the answer decides when the relay ends.
        std::future::pending::<()>().await;
    };
    let download = async {
        let mut answer = Vec::new();
        timeout(
            HANDSHAKE_TIMEOUT,
            (&mut upstream_read)
                .take(REWRITE_LIMIT as u64)
                .read_to_end(&mut answer),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "upstream answer timed out"))??;
        client_write
            .write_all(&rewrite_answer(&answer, from, to))
            .await?;
        client_write.shutdown().await
    };
    tokio::select! {
        result = download => result,
        () = upload => Ok(()),
    }
}

/// An HTTP answer with `from` replaced by `to` in its body and its
/// `Content-Length` made to match.
fn rewrite_answer(answer: &[u8], from: &str, to: &str) -> Vec<u8> {
    let Some(end) = find(answer, b"\r\n\r\n") else {
        return answer.to_vec();
    };
    let head = String::from_utf8_lossy(&answer[..end]);
    let body = String::from_utf8_lossy(&answer[end + 4..]).replace(from, to);
    let mut out = String::new();
    for line in head.split("\r\n") {
        let is_length = line
            .split_once(':')
            .is_some_and(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"));
        if is_length {
            let _ = write!(out, "Content-Length: {}\r\n", body.len());
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

const BAD_GATEWAY: &[u8] =
    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const PROXY_AUTH_REQUIRED: &[u8] = b"HTTP/1.1 407 Proxy Authentication Required\r\n\
    Proxy-Authenticate: Basic realm=\"sim\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const CONNECTION_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// Reads one HTTP proxy request (absolute-form or `CONNECT`), checks the
/// credentials and connects upstream. Answers `407` or `502` itself.
async fn http_handshake(
    client: &mut TcpStream,
    peer: SocketAddr,
    spec: &ProxySpec,
) -> io::Result<Option<Tunnel>> {
    let (head, rest) = read_head(client).await?;
    let req = parse_head(&head)?;
    if let Some(creds) = &spec.auth
        && !authorizes(&req, creds)
    {
        client.write_all(PROXY_AUTH_REQUIRED).await?;
        return Ok(None);
    }
    let connect = req.method.eq_ignore_ascii_case("CONNECT");
    let (host, port, first_bytes) = if connect {
        let (host, port) = split_authority(req.target, None)?;
        (host, port, rest)
    } else {
        let (host, port, path) = split_absolute(req.target)?;
        let mut forwarded = forward_head(&req, &path, spec.headers, peer.ip());
        forwarded.extend_from_slice(&rest);
        (host, port, forwarded)
    };
    let Ok(upstream) = connect_upstream(&host, port, spec.egress).await else {
        client.write_all(BAD_GATEWAY).await?;
        return Ok(None);
    };
    if connect {
        client.write_all(CONNECTION_ESTABLISHED).await?;
    }
    Ok(Some(Tunnel {
        upstream,
        first_bytes,
    }))
}

/// The request head forwarded upstream: origin-form request line, the
/// client's headers but `Proxy-*`, and what `mode` adds for `client_ip`.
fn forward_head(req: &RequestHead<'_>, path: &str, mode: HeaderMode, client_ip: IpAddr) -> Vec<u8> {
    let mut out = format!("{} {} {}\r\n", req.method, path, req.version);
    for header in req.headers.iter().filter(|h| !is_proxy_header(h)) {
        out.push_str(header);
        out.push_str("\r\n");
    }
    match mode {
        HeaderMode::Elite => {}
        HeaderMode::Anonymous => out.push_str(&format!("{VIA}\r\n")),
        HeaderMode::Transparent => {
            let _ = write!(out, "{VIA}\r\nX-Forwarded-For: {client_ip}\r\n");
        }
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// SOCKS4 command and reply codes.
const SOCKS4_CONNECT: u8 = 0x01;
const SOCKS4_GRANTED: u8 = 0x5A;
const SOCKS4_REJECTED: u8 = 0x5B;

/// Reads a SOCKS4/4a CONNECT request and connects upstream; answers
/// `0x5B` itself when rejecting.
async fn socks4_handshake(client: &mut TcpStream, spec: &ProxySpec) -> io::Result<Option<Tunnel>> {
    // VN CD DSTPORT DSTIP USERID NUL [HOSTNAME NUL]
    let mut req = [0u8; 8];
    client.read_exact(&mut req).await?;
    if req[0] != 0x04 {
        return Err(invalid("not socks4"));
    }
    let command = req[1];
    let port = u16::from_be_bytes([req[2], req[3]]);
    let ip = Ipv4Addr::new(req[4], req[5], req[6], req[7]);
    let user_id = read_nul_terminated(client).await?;
    // SOCKS4a: an address 0.0.0.x (x != 0) says a hostname follows. It is
    // read even by a plain SOCKS4 proxy, so the rejection is not reset away
    // by unread bytes.
    let [a, b, c, d] = ip.octets();
    let host = if [a, b, c] == [0, 0, 0] && d != 0 {
        let name = read_nul_terminated(client).await?;
        String::from_utf8(name)
            .ok()
            .filter(|name| !name.is_empty() && spec.protocol == SimProtocol::Socks4a)
    } else {
        Some(ip.to_string())
    };
    let user_ok = spec
        .auth
        .as_ref()
        .is_none_or(|(required, _)| required.as_bytes() == user_id);
    let upstream = match host {
        Some(host) if command == SOCKS4_CONNECT && user_ok => {
            connect_upstream(&host, port, spec.egress).await.ok()
        }
        _ => None,
    };
    let code = if upstream.is_some() {
        SOCKS4_GRANTED
    } else {
        SOCKS4_REJECTED
    };
    // VN(0) CD DSTPORT DSTIP; the address fields are ignored by clients.
    client.write_all(&[0x00, code, 0, 0, 0, 0, 0, 0]).await?;
    Ok(upstream.map(|upstream| Tunnel {
        upstream,
        first_bytes: Vec::new(),
    }))
}

/// Reads a NUL-terminated SOCKS4 field (user id, hostname), NUL excluded.
async fn read_nul_terminated(client: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut field = Vec::new();
    loop {
        // Byte by byte: nothing past the handshake may be consumed here.
        match client.read_u8().await? {
            0 => return Ok(field),
            _ if field.len() == SOCKS4_FIELD_LIMIT => return Err(invalid("socks4 field too long")),
            byte => field.push(byte),
        }
    }
}

/// SOCKS5 reply codes (RFC 1928 section 6).
const REP_SUCCEEDED: u8 = 0x00;
const REP_GENERAL_FAILURE: u8 = 0x01;
const REP_NETWORK_UNREACHABLE: u8 = 0x03;
const REP_HOST_UNREACHABLE: u8 = 0x04;
const REP_CONNECTION_REFUSED: u8 = 0x05;
const REP_COMMAND_NOT_SUPPORTED: u8 = 0x07;
const REP_ATYP_NOT_SUPPORTED: u8 = 0x08;

async fn socks5_reply(
    stream: &mut TcpStream,
    rep: u8,
    bound: Option<SocketAddr>,
) -> io::Result<()> {
    let mut msg = vec![0x05, rep, 0x00];
    match bound {
        Some(SocketAddr::V4(a)) => {
            msg.push(0x01);
            msg.extend_from_slice(&a.ip().octets());
            msg.extend_from_slice(&a.port().to_be_bytes());
        }
        Some(SocketAddr::V6(a)) => {
            msg.push(0x04);
            msg.extend_from_slice(&a.ip().octets());
            msg.extend_from_slice(&a.port().to_be_bytes());
        }
        None => msg.extend_from_slice(&[0x01, 0, 0, 0, 0, 0, 0]),
    }
    stream.write_all(&msg).await
}

/// Runs the SOCKS5 handshake and returns the connected upstream, or `None`
/// when the client was rejected (the rejection has been sent).
async fn socks5_handshake(client: &mut TcpStream, spec: &ProxySpec) -> io::Result<Option<Tunnel>> {
    let auth = spec.auth.as_ref();
    // Greeting: VER NMETHODS METHODS...
    let mut hdr = [0u8; 2];
    client.read_exact(&mut hdr).await?;
    if hdr[0] != 0x05 {
        return Err(invalid("not socks5"));
    }
    let mut methods = vec![0u8; usize::from(hdr[1])];
    client.read_exact(&mut methods).await?;
    let wanted = if auth.is_some() { 0x02 } else { 0x00 };
    if !methods.contains(&wanted) {
        client.write_all(&[0x05, 0xFF]).await?;
        return Ok(None);
    }
    client.write_all(&[0x05, wanted]).await?;

    if let Some((user, pass)) = auth {
        // RFC 1929: VER ULEN UNAME PLEN PASSWD
        let mut ver_ulen = [0u8; 2];
        client.read_exact(&mut ver_ulen).await?;
        if ver_ulen[0] != 0x01 {
            return Err(invalid("bad auth version"));
        }
        let mut uname = vec![0u8; usize::from(ver_ulen[1])];
        client.read_exact(&mut uname).await?;
        let plen = client.read_u8().await?;
        let mut passwd = vec![0u8; usize::from(plen)];
        client.read_exact(&mut passwd).await?;
        if uname != user.as_bytes() || passwd != pass.as_bytes() {
            client.write_all(&[0x01, 0x01]).await?;
            return Ok(None);
        }
        client.write_all(&[0x01, 0x00]).await?;
    }

    // Request: VER CMD RSV ATYP DST.ADDR DST.PORT
    let mut req = [0u8; 4];
    client.read_exact(&mut req).await?;
    if req[0] != 0x05 {
        return Err(invalid("bad request version"));
    }
    let host = match req[3] {
        0x01 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        0x04 => {
            let mut ip = [0u8; 16];
            client.read_exact(&mut ip).await?;
            std::net::Ipv6Addr::from(ip).to_string()
        }
        0x03 => {
            let len = client.read_u8().await?;
            let mut name = vec![0u8; usize::from(len)];
            client.read_exact(&mut name).await?;
            match String::from_utf8(name) {
                Ok(name) if !name.is_empty() => name,
                _ => {
                    socks5_reply(client, REP_GENERAL_FAILURE, None).await?;
                    return Ok(None);
                }
            }
        }
        _ => {
            socks5_reply(client, REP_ATYP_NOT_SUPPORTED, None).await?;
            return Ok(None);
        }
    };
    let port = client.read_u16().await?;
    if req[1] != 0x01 {
        socks5_reply(client, REP_COMMAND_NOT_SUPPORTED, None).await?;
        return Ok(None);
    }
    match connect_upstream(&host, port, spec.egress).await {
        Ok(upstream) => {
            let bound = upstream.local_addr().ok();
            socks5_reply(client, REP_SUCCEEDED, bound).await?;
            Ok(Some(Tunnel {
                upstream,
                first_bytes: Vec::new(),
            }))
        }
        Err(err) => {
            let rep = match err.kind() {
                io::ErrorKind::ConnectionRefused => REP_CONNECTION_REFUSED,
                io::ErrorKind::TimedOut | io::ErrorKind::HostUnreachable => REP_HOST_UNREACHABLE,
                io::ErrorKind::NetworkUnreachable => REP_NETWORK_UNREACHABLE,
                _ => REP_GENERAL_FAILURE,
            };
            socks5_reply(client, rep, None).await?;
            Ok(None)
        }
    }
}

async fn serve_black_hole(mut client: TcpStream) -> io::Result<()> {
    // Swallow whatever arrives so the client never blocks on writes; never
    // answer. Returns (closing the socket) once the client closes.
    let mut buf = [0u8; 4096];
    while client.read(&mut buf).await? != 0 {}
    Ok(())
}

/// What [`Behavior::Fake200`] answers to anything.
const FAKE_200: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
/// What [`Behavior::BrokenHandshake`] answers: neither HTTP nor SOCKS (no
/// `HTTP/`, and a first byte that is no SOCKS version or reply byte).
const GARBAGE: &[u8; 16] = b"\xde\xad\xbe\xef\x13\x37garbage!!\xff";

/// Waits for the client's first bytes, whatever they are, answers `reply`
/// and closes.
async fn answer_first_bytes(mut client: TcpStream, reply: &[u8]) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    let n = timeout(HANDSHAKE_TIMEOUT, client.read(&mut buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request"))??;
    if n == 0 {
        return Ok(());
    }
    client.write_all(reply).await?;
    close_gently(client).await;
    Ok(())
}

/// Closes the sending side, then drains the client for a moment so unread
/// request bytes do not turn the close into a reset that could destroy the
/// last answer before the client reads it.
async fn close_gently(mut client: TcpStream) {
    let _ = client.shutdown().await;
    let _ = timeout(LINGER, async {
        let mut buf = [0u8; 4096];
        while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const STEP: Duration = Duration::from_secs(5);

    #[test]
    fn a_rewritten_answer_keeps_its_length_right() {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\ncontent-length: 18\r\n\r\n<p>Add to cart</p>";
        let rewritten = rewrite_answer(answer, "Add to cart", "Blocked");
        assert_eq!(
            String::from_utf8(rewritten).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 14\r\n\r\n<p>Blocked</p>"
        );
        assert_eq!(rewrite_answer(b"garbage", "a", "b"), b"garbage");
    }

    /// Runs `fut` under the per-step timeout, failing the test on expiry.
    async fn within<T>(fut: impl Future<Output = T>) -> T {
        timeout(STEP, fut).await.expect("test step timed out")
    }

    /// A TCP echo server; the task ends with the test runtime.
    async fn echo_server(ip: IpAddr) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Ok(addr)
    }

    /// An HTTP server (a judge) answering with the request head it received
    /// as body and the peer address it saw in an `X-Peer` header.
    async fn http_mirror_server() -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(SocketAddr::new(LOCAL, 0)).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, peer)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok((head, _)) = read_head(&mut s).await else {
                        return;
                    };
                    let mut resp = format!(
                        "HTTP/1.1 200 OK\r\nX-Peer: {peer}\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n",
                        head.len()
                    )
                    .into_bytes();
                    resp.extend_from_slice(&head);
                    let _ = s.write_all(&resp).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Ok(addr)
    }

    async fn read_until_blank_line(s: &mut TcpStream) -> String {
        let (head, rest) = within(read_head(s)).await.expect("read head");
        assert!(rest.is_empty(), "unexpected bytes after head");
        String::from_utf8(head).expect("utf-8 head")
    }

    async fn assert_echo(s: &mut TcpStream) {
        within(s.write_all(b"ping")).await.expect("write ping");
        let mut buf = [0u8; 4];
        within(s.read_exact(&mut buf)).await.expect("read pong");
        assert_eq!(&buf, b"ping");
    }

    /// SOCKS5 greeting (+ optional RFC 1929 auth); returns the auth status
    /// byte when authenticating, 0 otherwise.
    async fn socks5_greet(s: &mut TcpStream, creds: Option<(&str, &str)>) -> u8 {
        let method = if creds.is_some() { 0x02 } else { 0x00 };
        within(s.write_all(&[0x05, 0x01, method])).await.unwrap();
        let mut choice = [0u8; 2];
        within(s.read_exact(&mut choice)).await.unwrap();
        assert_eq!(choice, [0x05, method]);
        let Some((user, pass)) = creds else {
            return 0;
        };
        let mut msg = vec![0x01, user.len() as u8];
        msg.extend_from_slice(user.as_bytes());
        msg.push(pass.len() as u8);
        msg.extend_from_slice(pass.as_bytes());
        within(s.write_all(&msg)).await.unwrap();
        let mut status = [0u8; 2];
        within(s.read_exact(&mut status)).await.unwrap();
        assert_eq!(status[0], 0x01);
        status[1]
    }

    /// Sends a SOCKS5 CONNECT request and returns the reply code.
    async fn socks5_connect(s: &mut TcpStream, atyp: u8, addr: &[u8], port: u16) -> u8 {
        let mut msg = vec![0x05, 0x01, 0x00, atyp];
        if atyp == 0x03 {
            msg.push(addr.len() as u8);
        }
        msg.extend_from_slice(addr);
        msg.extend_from_slice(&port.to_be_bytes());
        within(s.write_all(&msg)).await.unwrap();
        let mut reply = [0u8; 4];
        within(s.read_exact(&mut reply)).await.unwrap();
        assert_eq!(reply[0], 0x05);
        let rest = match reply[3] {
            0x01 => 4 + 2,
            0x04 => 16 + 2,
            other => panic!("unexpected bound atyp {other}"),
        };
        let mut bound = vec![0u8; rest];
        within(s.read_exact(&mut bound)).await.unwrap();
        reply[1]
    }

    #[tokio::test]
    async fn http_forwards_absolute_form_get() {
        let upstream = http_mirror_server().await.unwrap();
        let proxy = SimProxy::spawn(LOCAL, Behavior::Http).await.unwrap();
        assert_eq!(proxy.behavior_name, "http");
        let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
        let req = format!(
            "GET http://{upstream}/judge?x=1 HTTP/1.1\r\nHost: {upstream}\r\nX-Test: yes\r\n\
             Proxy-Connection: keep-alive\r\n\r\n"
        );
        within(s.write_all(req.as_bytes())).await.unwrap();
        let mut resp = Vec::new();
        within(s.read_to_end(&mut resp)).await.unwrap();
        let resp = String::from_utf8(resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.contains("GET /judge?x=1 HTTP/1.1\r\n"), "{resp}");
        assert!(resp.contains(&format!("Host: {upstream}\r\n")), "{resp}");
        assert!(resp.contains("X-Test: yes\r\n"), "{resp}");
        assert!(!resp.to_ascii_lowercase().contains("proxy-"), "{resp}");
        assert_eq!(proxy.connections(), 1);
    }

    #[tokio::test]
    async fn http_connect_tunnels() {
        let upstream = echo_server(LOCAL).await.unwrap();
        let proxy = SimProxy::spawn(LOCAL, Behavior::Http).await.unwrap();
        let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
        let req = format!("CONNECT {upstream} HTTP/1.1\r\nHost: {upstream}\r\n\r\n");
        within(s.write_all(req.as_bytes())).await.unwrap();
        let head = read_until_blank_line(&mut s).await;
        assert_eq!(head, "HTTP/1.1 200 Connection established\r\n\r\n");
        assert_echo(&mut s).await;
    }

    #[tokio::test]
    async fn http_upstream_refused_is_502_and_garbage_closes() {
        let dead = refused_addr(LOCAL).unwrap();
        let proxy = SimProxy::spawn(LOCAL, Behavior::Http).await.unwrap();

        let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
        let req = format!("GET http://{dead}/ HTTP/1.1\r\nHost: {dead}\r\n\r\n");
        within(s.write_all(req.as_bytes())).await.unwrap();
        let mut resp = Vec::new();
        within(s.read_to_end(&mut resp)).await.unwrap();
        assert!(resp.starts_with(b"HTTP/1.1 502 "));

        let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
        within(s.write_all(b"\x05\x01\x00garbage\r\n\r\n"))
            .await
            .unwrap();
        let mut resp = Vec::new();
        // Closed without an answer (a reset is fine too).
        let _ = within(s.read_to_end(&mut resp)).await;
        assert!(resp.is_empty());
    }

    #[tokio::test]
    async fn socks5_without_auth() {
        let upstream = echo_server(LOCAL).await.unwrap();
        let proxy = SimProxy::spawn(LOCAL, Behavior::Socks5 { auth: None })
            .await
            .unwrap();
        assert_eq!(proxy.behavior_name, "socks5");
        assert_eq!(proxy.candidate_line(), format!("socks5://{}", proxy.addr));

        // ATYP IPv4.
        let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
        assert_eq!(socks5_greet(&mut s, None).await, 0);
        let IpAddr::V4(ip) = upstream.ip() else {
            unreachable!()
        };
        let rep = socks5_connect(&mut s, 0x01, &ip.octets(), upstream.port()).await;
        assert_eq!(rep, REP_SUCCEEDED);
        assert_echo(&mut s).await;

        // ATYP domain name.
        let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
        socks5_greet(&mut s, None).await;
        let rep = socks5_connect(&mut s, 0x03, b"127.0.0.1", upstream.port()).await;
        assert_eq!(rep, REP_SUCCEEDED);
        assert_echo(&mut s).await;

        // Refused upstream.
        let dead = refused_addr(LOCAL).unwrap();
        let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
        socks5_greet(&mut s, None).await;
        let rep = socks5_connect(&mut s, 0x01, &ip.octets(), dead.port()).await;
        assert_eq!(rep, REP_CONNECTION_REFUSED);

        // Client offering only username/password is rejected.
        let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
        within(s.write_all(&[0x05, 0x01, 0x02])).await.unwrap();
        let mut choice = [0u8; 2];
        within(s.read_exact(&mut choice)).await.unwrap();
        assert_eq!(choice, [0x05, 0xFF]);
        assert_eq!(proxy.connections(), 4);
    }

    #[tokio::test]
    async fn socks5_ipv6() {
        let v6: IpAddr = "::1".parse().unwrap();
        let Ok(upstream) = echo_server(v6).await else {
            eprintln!("no ipv6 loopback, skipping");
            return;
        };
        let proxy = SimProxy::spawn(v6, Behavior::Socks5 { auth: None })
            .await
            .unwrap();
        assert!(proxy.candidate_line().starts_with("socks5://[::1]:"));
        let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
        socks5_greet(&mut s, None).await;
        let IpAddr::V6(ip) = upstream.ip() else {
            unreachable!()
        };
        let rep = socks5_connect(&mut s, 0x04, &ip.octets(), upstream.port()).await;
        assert_eq!(rep, REP_SUCCEEDED);
        assert_echo(&mut s).await;

        let farm = Farm::spawn(v6, 1, 1, 1).await.unwrap();
        for line in farm.candidate_lines() {
            assert!(line.starts_with("http://[::1]:"), "{line}");
        }
    }

    #[tokio::test]
    async fn socks5_with_auth() {
        let upstream = echo_server(LOCAL).await.unwrap();
        let auth = Some(("fleet".to_owned(), "secret".to_owned()));
        let proxy = SimProxy::spawn(LOCAL, Behavior::Socks5 { auth })
            .await
            .unwrap();
        let IpAddr::V4(ip) = upstream.ip() else {
            unreachable!()
        };

        let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
        assert_eq!(socks5_greet(&mut s, Some(("fleet", "secret"))).await, 0x00);
        let rep = socks5_connect(&mut s, 0x01, &ip.octets(), upstream.port()).await;
        assert_eq!(rep, REP_SUCCEEDED);
        assert_echo(&mut s).await;

        // Wrong password: status 0x01, then the connection is closed.
        let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
        assert_eq!(socks5_greet(&mut s, Some(("fleet", "wrong"))).await, 0x01);
        let mut rest = Vec::new();
        let _ = within(s.read_to_end(&mut rest)).await;
        assert!(rest.is_empty());

        // No-auth-only client is refused.
        let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
        within(s.write_all(&[0x05, 0x01, 0x00])).await.unwrap();
        let mut choice = [0u8; 2];
        within(s.read_exact(&mut choice)).await.unwrap();
        assert_eq!(choice, [0x05, 0xFF]);
    }

    #[tokio::test]
    async fn black_hole_never_answers_and_drop_closes() {
        let proxy = SimProxy::spawn(LOCAL, Behavior::BlackHole).await.unwrap();
        let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
        within(s.write_all(b"GET http://127.0.0.1:9/ HTTP/1.1\r\n\r\n"))
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let res = timeout(Duration::from_millis(300), s.read(&mut buf)).await;
        assert!(res.is_err(), "black hole answered: {res:?}");
        assert_eq!(proxy.connections(), 1);

        // Dropping the proxy aborts the held connection: the client sees EOF
        // (or a reset) instead of hanging.
        let addr = proxy.addr;
        drop(proxy);
        let res = within(s.read(&mut buf)).await;
        assert!(matches!(res, Ok(0) | Err(_)), "{res:?}");
        let err = within(TcpStream::connect(addr)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn fake200_answers_hello() {
        let proxy = SimProxy::spawn(LOCAL, Behavior::Fake200).await.unwrap();
        assert_eq!(proxy.candidate_line(), format!("http://{}", proxy.addr));
        let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
        within(
            s.write_all(b"GET http://example.invalid/ HTTP/1.1\r\nHost: example.invalid\r\n\r\n"),
        )
        .await
        .unwrap();
        let mut resp = Vec::new();
        within(s.read_to_end(&mut resp)).await.unwrap();
        let resp = String::from_utf8(resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.contains("Content-Length: 5\r\n"), "{resp}");
        assert!(resp.ends_with("\r\n\r\nhello"), "{resp}");
    }

    #[tokio::test]
    async fn refused_addr_refuses() {
        let addr = refused_addr(LOCAL).unwrap();
        assert_eq!(addr.ip(), LOCAL);
        let err = within(TcpStream::connect(addr)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn farm_lines() {
        let farm = Farm::spawn(LOCAL, 3, 2, 2).await.unwrap();
        let names: Vec<_> = farm.working.iter().map(|p| p.behavior_name).collect();
        assert_eq!(names, ["http", "socks5", "http"]);
        let w = &farm.working;
        let expected_working = vec![
            format!("http://{}", w[0].addr),
            format!("socks5://fleet:secret@{}", w[1].addr),
            format!("http://{}", w[2].addr),
        ];
        assert_eq!(farm.working_lines(), expected_working);
        let mut expected = expected_working;
        expected.extend(
            farm.black_holes
                .iter()
                .map(|p| format!("http://{}", p.addr)),
        );
        expected.extend(farm.refused.iter().map(|a| format!("http://{a}")));
        assert_eq!(farm.candidate_lines(), expected);
        assert_eq!(farm.candidate_lines().len(), 7);
        assert!(
            farm.black_holes
                .iter()
                .all(|p| p.behavior_name == "black-hole")
        );
    }

    /// A loopback address other than the proxies' own, for egress binding.
    const EGRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7));

    /// Whether this host lets us bind [`EGRESS`]; prints a note when not.
    fn egress_available() -> bool {
        let ok = std::net::TcpListener::bind(SocketAddr::new(EGRESS, 0)).is_ok();
        if !ok {
            eprintln!("cannot bind {EGRESS}, skipping the egress checks");
        }
        ok
    }

    async fn read_all(s: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        within(s.read_to_end(&mut buf)).await.expect("read answer");
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The body of an HTTP answer: for the mirror, the request head it got.
    fn body(resp: &str) -> &str {
        resp.split_once("\r\n\r\n").map_or("", |(_, body)| body)
    }

    /// The client address the mirror saw.
    fn peer_seen(resp: &str) -> IpAddr {
        let peer = resp
            .lines()
            .find_map(|l| l.strip_prefix("X-Peer: "))
            .unwrap_or_else(|| panic!("no X-Peer in {resp}"));
        peer.parse::<SocketAddr>().unwrap().ip()
    }

    /// The `Proxy-Authorization` line carrying `user`/`pass`.
    fn basic_auth_line(user: &str, pass: &str) -> String {
        let token = base64_encode(format!("{user}:{pass}").as_bytes());
        format!("Proxy-Authorization: Basic {token}\r\n")
    }

    /// Asks the mirror for `/judge` on an open tunnel; returns its answer.
    async fn judge_via_tunnel(s: &mut TcpStream) -> String {
        within(s.write_all(b"GET /judge HTTP/1.1\r\nHost: judge\r\n\r\n"))
            .await
            .unwrap();
        read_all(s).await
    }

    /// An absolute-form GET of the mirror through an HTTP proxy, with
    /// `extra` header lines; returns the whole answer.
    async fn http_get(proxy: SocketAddr, upstream: SocketAddr, extra: &str) -> String {
        let mut s = within(TcpStream::connect(proxy)).await.unwrap();
        let req =
            format!("GET http://{upstream}/judge HTTP/1.1\r\nHost: {upstream}\r\n{extra}\r\n");
        within(s.write_all(req.as_bytes())).await.unwrap();
        read_all(&mut s).await
    }

    /// Sends `CONNECT upstream` with `extra` header lines; returns the stream
    /// and the proxy's answer head.
    async fn http_connect(
        proxy: SocketAddr,
        upstream: SocketAddr,
        extra: &str,
    ) -> (TcpStream, String) {
        let mut s = within(TcpStream::connect(proxy)).await.unwrap();
        let req = format!("CONNECT {upstream} HTTP/1.1\r\nHost: {upstream}\r\n{extra}\r\n");
        within(s.write_all(req.as_bytes())).await.unwrap();
        let head = read_until_blank_line(&mut s).await;
        (s, head)
    }

    /// Sends a SOCKS4 request (SOCKS4a with `hostname`) for `dst` and returns
    /// the reply code.
    async fn socks4_request(
        s: &mut TcpStream,
        command: u8,
        dst: SocketAddr,
        user_id: &str,
        hostname: Option<&str>,
    ) -> u8 {
        let ip = match (hostname, dst.ip()) {
            (Some(_), _) => [0, 0, 0, 1],
            (None, IpAddr::V4(v4)) => v4.octets(),
            (None, IpAddr::V6(_)) => panic!("socks4 is ipv4 only"),
        };
        let mut msg = vec![0x04, command];
        msg.extend_from_slice(&dst.port().to_be_bytes());
        msg.extend_from_slice(&ip);
        msg.extend_from_slice(user_id.as_bytes());
        msg.push(0);
        if let Some(name) = hostname {
            msg.extend_from_slice(name.as_bytes());
            msg.push(0);
        }
        within(s.write_all(&msg)).await.unwrap();
        let mut reply = [0u8; 8];
        within(s.read_exact(&mut reply)).await.unwrap();
        assert_eq!(reply[0], 0x00, "{reply:?}");
        reply[1]
    }

    /// Asks the mirror for `/judge` through `proxy` speaking `spec`'s
    /// protocol (HTTP: absolute-form GET; SOCKS4a: by the name `localhost`)
    /// with `spec`'s credentials; returns the mirror's answer.
    async fn judge_via(proxy: &SimProxy, spec: &ProxySpec, upstream: SocketAddr) -> String {
        let (user, pass) = spec
            .auth
            .as_ref()
            .map_or(("", ""), |(u, p)| (u.as_str(), p.as_str()));
        let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
        match spec.protocol {
            SimProtocol::Http => {
                let extra = if spec.auth.is_some() {
                    basic_auth_line(user, pass)
                } else {
                    String::new()
                };
                return http_get(proxy.addr, upstream, &extra).await;
            }
            SimProtocol::Socks4 => {
                let rep = socks4_request(&mut s, SOCKS4_CONNECT, upstream, user, None).await;
                assert_eq!(rep, SOCKS4_GRANTED);
            }
            SimProtocol::Socks4a => {
                let rep =
                    socks4_request(&mut s, SOCKS4_CONNECT, upstream, user, Some("localhost")).await;
                assert_eq!(rep, SOCKS4_GRANTED);
            }
            SimProtocol::Socks5 => {
                let creds = spec.auth.as_ref().map(|_| (user, pass));
                assert_eq!(socks5_greet(&mut s, creds).await, 0x00);
                let IpAddr::V4(ip) = upstream.ip() else {
                    unreachable!()
                };
                let rep = socks5_connect(&mut s, 0x01, &ip.octets(), upstream.port()).await;
                assert_eq!(rep, REP_SUCCEEDED);
            }
        }
        judge_via_tunnel(&mut s).await
    }

    #[tokio::test]
    async fn every_protocol_forwards_and_names_itself() {
        let upstream = http_mirror_server().await.unwrap();
        let specs = [
            (ProxySpec::http(), "http://"),
            (
                ProxySpec::http().with_auth("fleet", "p@ss"),
                "http://fleet:p%40ss@",
            ),
            (ProxySpec::socks4(), "socks4://"),
            (
                ProxySpec::socks4().with_user_id("fleet"),
                "socks4://fleet:x@",
            ),
            (ProxySpec::socks4a(), "socks4a://"),
            (
                ProxySpec::socks4a().with_user_id("fleet"),
                "socks4a://fleet:x@",
            ),
            (ProxySpec::socks5(), "socks5://"),
            (
                ProxySpec::socks5().with_auth("fleet", "secret"),
                "socks5://fleet:secret@",
            ),
        ];
        for (spec, prefix) in specs {
            let proxy = SimProxy::spawn(LOCAL, spec.clone()).await.unwrap();
            assert_eq!(proxy.behavior_name, spec.protocol.scheme());
            assert_eq!(proxy.candidate_line(), format!("{prefix}{}", proxy.addr));
            let resp = judge_via(&proxy, &spec, upstream).await;
            assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{spec:?}: {resp}");
            assert!(body(&resp).starts_with("GET /judge HTTP/1.1\r\n"), "{resp}");
            // No egress binding: the system picks the proxy's own address.
            assert_eq!(peer_seen(&resp), LOCAL, "{spec:?}");
        }
    }

    #[tokio::test]
    async fn egress_address_is_what_upstream_sees() {
        if !egress_available() {
            return;
        }
        let upstream = http_mirror_server().await.unwrap();
        for spec in [
            ProxySpec::http(),
            ProxySpec::socks4(),
            ProxySpec::socks4a(),
            ProxySpec::socks5(),
        ] {
            let spec = spec.with_egress(EGRESS);
            let proxy = SimProxy::spawn(LOCAL, spec.clone()).await.unwrap();
            let resp = judge_via(&proxy, &spec, upstream).await;
            assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{spec:?}: {resp}");
            assert_eq!(peer_seen(&resp), EGRESS, "{spec:?}");
        }

        // HTTP CONNECT tunnels leave from the egress address too.
        let proxy = SimProxy::spawn(LOCAL, ProxySpec::http().with_egress(EGRESS))
            .await
            .unwrap();
        let (mut s, head) = http_connect(proxy.addr, upstream, "").await;
        assert_eq!(head.as_bytes(), CONNECTION_ESTABLISHED);
        assert_eq!(peer_seen(&judge_via_tunnel(&mut s).await), EGRESS);
    }

    #[tokio::test]
    async fn http_header_modes() {
        let upstream = http_mirror_server().await.unwrap();
        let sent = "X-Test: yes\r\nProxy-Connection: keep-alive\r\nProxy-Foo: 1\r\n";
        let forwarded = format!("GET /judge HTTP/1.1\r\nHost: {upstream}\r\nX-Test: yes\r\n");
        let cases = [
            (HeaderMode::Elite, ""),
            (HeaderMode::Anonymous, "Via: 1.1 proxyfleet-sim\r\n"),
            (
                HeaderMode::Transparent,
                "Via: 1.1 proxyfleet-sim\r\nX-Forwarded-For: 127.0.0.1\r\n",
            ),
        ];
        for (mode, added) in cases {
            let proxy = SimProxy::spawn(LOCAL, ProxySpec::http().with_headers(mode))
                .await
                .unwrap();
            let resp = http_get(proxy.addr, upstream, sent).await;
            assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{mode:?}: {resp}");
            assert_eq!(body(&resp), format!("{forwarded}{added}\r\n"), "{mode:?}");

            // A CONNECT tunnel relays bytes: nothing is added.
            let (mut s, head) = http_connect(proxy.addr, upstream, "").await;
            assert_eq!(head.as_bytes(), CONNECTION_ESTABLISHED);
            let resp = judge_via_tunnel(&mut s).await;
            assert_eq!(
                body(&resp),
                "GET /judge HTTP/1.1\r\nHost: judge\r\n\r\n",
                "{mode:?}"
            );
        }
    }

    #[tokio::test]
    async fn http_proxy_auth() {
        let upstream = http_mirror_server().await.unwrap();
        let spec = ProxySpec::http().with_auth("fleet", "secret");
        let proxy = SimProxy::spawn(LOCAL, spec).await.unwrap();
        let good = basic_auth_line("fleet", "secret");
        let required = "HTTP/1.1 407 Proxy Authentication Required\r\n";
        let challenge = "\r\nProxy-Authenticate: Basic realm=\"sim\"\r\n";

        for extra in [
            String::new(),
            basic_auth_line("fleet", "wrong"),
            "Proxy-Authorization: Bearer abc\r\n".to_owned(),
        ] {
            let resp = http_get(proxy.addr, upstream, &extra).await;
            assert!(resp.starts_with(required), "{extra:?}: {resp}");
            assert!(resp.contains(challenge), "{resp}");
            let (_, head) = http_connect(proxy.addr, upstream, &extra).await;
            assert!(head.starts_with(required), "{extra:?}: {head}");
            assert!(head.contains(challenge), "{head}");
        }

        let resp = http_get(proxy.addr, upstream, &good).await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        // The credentials are for the proxy: not forwarded.
        assert!(
            !body(&resp).to_ascii_lowercase().contains("proxy-"),
            "{resp}"
        );
        // The scheme is case-insensitive.
        let resp = http_get(proxy.addr, upstream, &good.replace("Basic", "basic")).await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");

        let (mut s, head) = http_connect(proxy.addr, upstream, &good).await;
        assert_eq!(head.as_bytes(), CONNECTION_ESTABLISHED);
        assert!(
            judge_via_tunnel(&mut s)
                .await
                .starts_with("HTTP/1.1 200 OK\r\n")
        );
    }

    #[tokio::test]
    async fn socks4_grants_and_rejects() {
        let upstream = http_mirror_server().await.unwrap();
        let proxy = SimProxy::spawn(LOCAL, ProxySpec::socks4().with_user_id("fleet"))
            .await
            .unwrap();
        assert_eq!(proxy.behavior_name, "socks4");

        let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
        let rep = socks4_request(&mut s, SOCKS4_CONNECT, upstream, "fleet", None).await;
        assert_eq!(rep, SOCKS4_GRANTED);
        assert!(
            judge_via_tunnel(&mut s)
                .await
                .starts_with("HTTP/1.1 200 OK\r\n")
        );

        let dead = refused_addr(LOCAL).unwrap();
        let rejected = [
            // Wrong or missing user id.
            (SOCKS4_CONNECT, upstream, "intruder", None),
            (SOCKS4_CONNECT, upstream, "", None),
            // BIND is not supported.
            (0x02, upstream, "fleet", None),
            // Plain SOCKS4 takes no hostname.
            (SOCKS4_CONNECT, upstream, "fleet", Some("localhost")),
            // Upstream refuses.
            (SOCKS4_CONNECT, dead, "fleet", None),
        ];
        for (command, dst, user_id, hostname) in rejected {
            let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
            let rep = socks4_request(&mut s, command, dst, user_id, hostname).await;
            assert_eq!(
                rep, SOCKS4_REJECTED,
                "{command} {dst} {user_id:?} {hostname:?}"
            );
            // Then the proxy closes.
            assert_eq!(read_all(&mut s).await, "");
        }

        // Without a required user id any one is granted.
        let open = SimProxy::spawn(LOCAL, ProxySpec::socks4()).await.unwrap();
        let mut s = within(TcpStream::connect(open.addr)).await.unwrap();
        let rep = socks4_request(&mut s, SOCKS4_CONNECT, upstream, "anyone", None).await;
        assert_eq!(rep, SOCKS4_GRANTED);
    }

    #[tokio::test]
    async fn socks4a_resolves_hostnames() {
        let upstream = http_mirror_server().await.unwrap();
        let proxy = SimProxy::spawn(LOCAL, ProxySpec::socks4a()).await.unwrap();
        assert_eq!(proxy.behavior_name, "socks4a");

        for hostname in [Some("localhost"), Some("127.0.0.1"), None] {
            let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
            let rep = socks4_request(&mut s, SOCKS4_CONNECT, upstream, "", hostname).await;
            assert_eq!(rep, SOCKS4_GRANTED, "{hostname:?}");
            let resp = judge_via_tunnel(&mut s).await;
            assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        }

        // An empty hostname is rejected.
        let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
        let rep = socks4_request(&mut s, SOCKS4_CONNECT, upstream, "", Some("")).await;
        assert_eq!(rep, SOCKS4_REJECTED);
    }

    #[tokio::test]
    async fn slow_proxy_waits_then_works() {
        const DELAY: Duration = Duration::from_millis(600);
        let upstream = http_mirror_server().await.unwrap();
        let proxy = SimProxy::spawn(LOCAL, Behavior::slow(DELAY)).await.unwrap();
        assert_eq!(proxy.behavior_name, "slow");
        assert_eq!(proxy.candidate_line(), format!("http://{}", proxy.addr));

        let started = tokio::time::Instant::now();
        let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
        let req = format!("GET http://{upstream}/judge HTTP/1.1\r\nHost: {upstream}\r\n\r\n");
        within(s.write_all(req.as_bytes())).await.unwrap();
        // A check with a shorter timeout gives up before any answer.
        let mut byte = [0u8; 1];
        let early = timeout(DELAY / 3, s.read(&mut byte)).await;
        assert!(early.is_err(), "slow proxy answered early: {early:?}");
        let resp = read_all(&mut s).await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(started.elapsed() >= DELAY);

        // A slow proxy of another protocol keeps its candidate line.
        let spec = ProxySpec::socks5().with_auth("fleet", "secret");
        let slow_socks = SimProxy::spawn(LOCAL, Behavior::Slow { delay: DELAY, spec })
            .await
            .unwrap();
        assert_eq!(
            slow_socks.candidate_line(),
            format!("socks5://fleet:secret@{}", slow_socks.addr)
        );
    }

    #[tokio::test]
    async fn broken_handshake_answers_garbage() {
        let proxy = SimProxy::spawn(LOCAL, Behavior::BrokenHandshake)
            .await
            .unwrap();
        assert_eq!(proxy.behavior_name, "broken-handshake");
        assert_eq!(proxy.candidate_line(), format!("http://{}", proxy.addr));
        let firsts: [&[u8]; 3] = [
            b"\x05\x01\x00",
            b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00",
            b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n",
        ];
        for first in firsts {
            let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
            within(s.write_all(first)).await.unwrap();
            let mut answer = Vec::new();
            within(s.read_to_end(&mut answer)).await.unwrap();
            assert_eq!(answer.len(), 16);
            assert_eq!(answer, GARBAGE);
        }
    }

    #[tokio::test]
    async fn fake200_answers_anything() {
        let expected = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        let proxy = SimProxy::spawn(LOCAL, Behavior::Fake200).await.unwrap();
        let firsts: [&[u8]; 2] = [
            b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n",
            b"\x05\x01\x00",
        ];
        for first in firsts {
            let mut s = within(TcpStream::connect(proxy.addr)).await.unwrap();
            within(s.write_all(first)).await.unwrap();
            assert_eq!(read_all(&mut s).await, expected);
        }
    }

    #[test]
    fn base64_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64_encode(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn parsing_helpers() {
        assert_eq!(
            split_absolute("http://h:81/a?b").unwrap(),
            ("h".to_owned(), 81, "/a?b".to_owned())
        );
        assert_eq!(
            split_absolute("HTTP://u:p@h?q#f").unwrap(),
            ("h".to_owned(), 80, "/?q".to_owned())
        );
        assert_eq!(
            split_absolute("http://[::1]:8080").unwrap(),
            ("::1".to_owned(), 8080, "/".to_owned())
        );
        assert!(split_absolute("https://h/").is_err());
        assert!(split_absolute("/relative").is_err());
        assert!(split_authority("h", None).is_err());
        assert!(split_authority("h:0", None).is_err());
        assert!(split_authority("[::1", None).is_err());
        assert_eq!(encode_userinfo("a b@c"), "a%20b%40c");
        assert!(parse_head(b"GET / HTTP/1.1\r\nbad header\r\n\r\n").is_err());
        assert!(parse_head(b"GET  / HTTP/1.1\r\n\r\n").is_err());
    }
}
