//! Simulated proxies: real TCP servers on loopback with controlled behaviour.
//!
//! Every server runs as a tokio task that owns a [`JoinSet`] of its connection
//! tasks, so dropping a [`SimProxy`] aborts the accept loop and every
//! connection it is still serving. The servers only ever connect to the
//! upstream addresses their clients ask for.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

/// Largest request head (request line plus headers) a simulated proxy reads.
const HEAD_LIMIT: usize = 64 * 1024;
/// Time a client gets to send its request head or finish a SOCKS5 handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for connecting to an upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Behavior::Fake200`] drains a client after answering.
const LINGER: Duration = Duration::from_secs(2);

/// Username of the SOCKS5 proxies in a [`Farm`].
pub const FARM_USER: &str = "fleet";
/// Password of the SOCKS5 proxies in a [`Farm`].
pub const FARM_PASS: &str = "secret";

/// What a [`SimProxy`] does with the connections it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// HTTP forward proxy: accepts absolute-form requests
    /// (`GET http://host:port/path HTTP/1.1`), connects to `host:port`,
    /// forwards the request rewritten to origin-form (headers kept, no proxy
    /// headers added; `Proxy-Connection` and `Proxy-Authorization`, which are
    /// meant for the proxy, are dropped), then relays bytes both ways until
    /// either side closes. Also supports `CONNECT host:port`, answered with
    /// `HTTP/1.1 200 Connection established` before relaying. One request is
    /// parsed per client connection; later bytes are relayed raw.
    Http,
    /// SOCKS5 proxy (RFC 1928, CONNECT command only, ATYP IPv4, IPv6 and
    /// domain name). With `Some((user, pass))` it requires username/password
    /// authentication (RFC 1929) and rejects wrong credentials (status 0x01,
    /// then close); with `None` it accepts method 0x00 (no authentication).
    Socks5 {
        /// Required credentials, `(user, pass)`, or `None` for no auth.
        auth: Option<(String, String)>,
    },
    /// Accepts TCP connections and never sends a byte; holds them open until
    /// the client closes or the proxy is dropped.
    BlackHole,
    /// Answers every request with `HTTP/1.1 200 OK` and body `hello`
    /// (`Content-Length` set, `Connection: close`) without contacting
    /// anything: a fake proxy.
    Fake200,
}

impl Behavior {
    /// Short stable name of the behaviour: `http`, `socks5`, `black-hole` or
    /// `fake200`.
    pub fn name(&self) -> &'static str {
        match self {
            Behavior::Http => "http",
            Behavior::Socks5 { .. } => "socks5",
            Behavior::BlackHole => "black-hole",
            Behavior::Fake200 => "fake200",
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
    /// Credentials required by a SOCKS5 proxy, if any.
    auth: Option<(String, String)>,
    /// Connections accepted so far.
    accepted: Arc<AtomicU64>,
    /// The accept loop; it owns the connection tasks.
    task: JoinHandle<()>,
}

impl SimProxy {
    /// Binds `ip:0` and serves `behavior`.
    pub async fn spawn(ip: IpAddr, behavior: Behavior) -> io::Result<SimProxy> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        let behavior_name = behavior.name();
        let auth = match &behavior {
            Behavior::Socks5 { auth } => auth.clone(),
            _ => None,
        };
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(listener, Arc::new(behavior), accepted.clone()));
        tracing::debug!(%addr, behavior = behavior_name, "sim proxy started");
        Ok(SimProxy {
            addr,
            behavior_name,
            auth,
            accepted,
            task,
        })
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// The candidate line for this proxy: `socks5://[user:pass@]IP:PORT` for
    /// SOCKS5, `http://IP:PORT` for everything else.
    pub fn candidate_line(&self) -> String {
        if self.behavior_name == "socks5" {
            match &self.auth {
                Some((user, pass)) => format!(
                    "socks5://{}:{}@{}",
                    encode_userinfo(user),
                    encode_userinfo(pass),
                    self.addr
                ),
                None => format!("socks5://{}", self.addr),
            }
        } else {
            format!("http://{}", self.addr)
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
async fn accept_loop(listener: TcpListener, behavior: Arc<Behavior>, accepted: Arc<AtomicU64>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, peer)) => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let behavior = behavior.clone();
                    conns.spawn(async move {
                        if let Err(err) = serve(stream, &behavior).await {
                            tracing::debug!(%peer, behavior = behavior.name(), error = %err, "sim connection ended");
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

/// Serves one accepted connection according to `behavior`.
async fn serve(stream: TcpStream, behavior: &Behavior) -> io::Result<()> {
    // Relayed traffic is small and interactive; avoid Nagle delays.
    let _ = stream.set_nodelay(true);
    match behavior {
        Behavior::Http => serve_http(stream).await,
        Behavior::Socks5 { auth } => serve_socks5(stream, auth.as_ref()).await,
        Behavior::BlackHole => serve_black_hole(stream).await,
        Behavior::Fake200 => serve_fake200(stream).await,
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

async fn connect_upstream(host: &str, port: u16) -> io::Result<TcpStream> {
    let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "upstream connect timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn relay(client: &mut TcpStream, upstream: &mut TcpStream) -> io::Result<()> {
    tokio::io::copy_bidirectional(client, upstream).await?;
    Ok(())
}

const BAD_GATEWAY: &[u8] =
    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

async fn serve_http(mut client: TcpStream) -> io::Result<()> {
    let (head, rest) = read_head(&mut client).await?;
    let req = parse_head(&head)?;
    if req.method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = split_authority(req.target, None)?;
        let mut upstream = match connect_upstream(&host, port).await {
            Ok(s) => s,
            Err(err) => {
                let _ = client.write_all(BAD_GATEWAY).await;
                let _ = client.shutdown().await;
                return Err(err);
            }
        };
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        if !rest.is_empty() {
            upstream.write_all(&rest).await?;
        }
        return relay(&mut client, &mut upstream).await;
    }

    let (host, port, path) = split_absolute(req.target)?;
    let mut forwarded = Vec::with_capacity(head.len() + rest.len());
    forwarded.extend_from_slice(format!("{} {} {}\r\n", req.method, path, req.version).as_bytes());
    for header in &req.headers {
        let name = header.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("proxy-connection")
            || name.eq_ignore_ascii_case("proxy-authorization")
        {
            continue;
        }
        forwarded.extend_from_slice(header.as_bytes());
        forwarded.extend_from_slice(b"\r\n");
    }
    forwarded.extend_from_slice(b"\r\n");
    forwarded.extend_from_slice(&rest);

    let mut upstream = match connect_upstream(&host, port).await {
        Ok(s) => s,
        Err(err) => {
            let _ = client.write_all(BAD_GATEWAY).await;
            let _ = client.shutdown().await;
            return Err(err);
        }
    };
    upstream.write_all(&forwarded).await?;
    relay(&mut client, &mut upstream).await
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
async fn socks5_handshake(
    client: &mut TcpStream,
    auth: Option<&(String, String)>,
) -> io::Result<Option<TcpStream>> {
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
    match connect_upstream(&host, port).await {
        Ok(upstream) => {
            let bound = upstream.local_addr().ok();
            socks5_reply(client, REP_SUCCEEDED, bound).await?;
            Ok(Some(upstream))
        }
        Err(err) => {
            let rep = match err.kind() {
                io::ErrorKind::ConnectionRefused => REP_CONNECTION_REFUSED,
                io::ErrorKind::TimedOut | io::ErrorKind::HostUnreachable => REP_HOST_UNREACHABLE,
                io::ErrorKind::NetworkUnreachable => REP_NETWORK_UNREACHABLE,
                _ => REP_GENERAL_FAILURE,
            };
            tracing::debug!(%host, port, error = %err, "sim socks5 upstream connect failed");
            socks5_reply(client, rep, None).await?;
            Ok(None)
        }
    }
}

async fn serve_socks5(mut client: TcpStream, auth: Option<&(String, String)>) -> io::Result<()> {
    let upstream = timeout(HANDSHAKE_TIMEOUT, socks5_handshake(&mut client, auth))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "socks5 handshake timed out"))??;
    match upstream {
        Some(mut upstream) => relay(&mut client, &mut upstream).await,
        None => {
            let _ = client.shutdown().await;
            Ok(())
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

const FAKE_200: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";

async fn serve_fake200(mut client: TcpStream) -> io::Result<()> {
    read_head(&mut client).await?;
    client.write_all(FAKE_200).await?;
    client.shutdown().await?;
    // Drain for a moment so unread request bytes do not turn the close into
    // a reset that could destroy the response before the client reads it.
    let _ = timeout(LINGER, async {
        let mut buf = [0u8; 4096];
        while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const STEP: Duration = Duration::from_secs(5);

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

    /// An HTTP server answering with the request head it received as body.
    async fn http_mirror_server() -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(SocketAddr::new(LOCAL, 0)).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok((head, _)) = read_head(&mut s).await else {
                        return;
                    };
                    let mut resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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
