//! The gateway's clients: one port speaking HTTP (forward requests for `http://` URLs, CONNECT for
//! anything else) and SOCKS5 (with or without username and password), told apart by the first
//! byte. Each client connection goes through one upstream, tried again on another when the
//! upstream cannot be reached or refuses the handshake, before the client sees an error; once a
//! tunnel stands, the client's bytes are never sent anywhere else.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proxyfleet_common::guard::Guard;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::choose::{Chooser, Cooled, Upstream};
use crate::metrics::Metrics;
use crate::upstream::{self, UpstreamError};
use crate::wants::{self, Wants};

/// Longest request head or SOCKS greeting a client may send.
const MAX_HEAD: usize = 16 * 1024;

/// What every client connection shares.
pub(crate) struct Front {
    /// Failures through upstreams, for the coordinator (see `report`).
    pub(crate) failures: tokio::sync::mpsc::Sender<crate::report::Failure>,
    pub(crate) chooser: Arc<Mutex<Chooser>>,
    pub(crate) metrics: Arc<Metrics>,
    /// Users and passwords; None: no authentication (loopback only).
    pub(crate) users: Option<HashMap<String, String>>,
    /// What a client that asks nothing gets.
    pub(crate) defaults: Wants,
    /// Where upstreams may be.
    pub(crate) guard: Guard,
    /// Other upstreams tried after the first fails.
    pub(crate) retries: u32,
    /// Connect and handshake time an upstream gets.
    pub(crate) connect_timeout: Duration,
    /// A client must send its request (or SOCKS greeting) this soon.
    pub(crate) request_timeout: Duration,
    /// A tunnel that carries no byte either way this long is closed.
    pub(crate) idle_timeout: Duration,
    /// Open connections per client address, for the per-client cap.
    pub(crate) per_client: Mutex<HashMap<IpAddr, u32>>,
    pub(crate) max_per_client: u32,
}

/// Why a client connection ended without a tunnel.
#[derive(Debug)]
enum Refusal {
    /// The client spoke nonsense or too slowly; closed without an answer beyond the protocol's.
    BadClient(String),
    /// Wrong or missing credentials.
    Auth,
    /// No upstream passes the client's asks.
    NoUpstream,
    /// Every upstream tried failed; the last error.
    Upstreams(UpstreamError),
}

/// A client connection's slot in the per-client count, given back on drop.
struct ClientSlot<'a> {
    front: &'a Front,
    ip: IpAddr,
}

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        let mut per = self
            .front
            .per_client
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
    }
}

impl Front {
    fn lock_chooser(&self) -> std::sync::MutexGuard<'_, Chooser> {
        self.chooser.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn client_slot(&self, ip: IpAddr) -> Option<ClientSlot<'_>> {
        let mut per = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let n = per.entry(ip).or_default();
        if *n >= self.max_per_client {
            return None;
        }
        *n += 1;
        Some(ClientSlot { front: self, ip })
    }

    /// Serves one client connection to its end.
    pub(crate) async fn serve(&self, mut client: TcpStream, peer: SocketAddr) {
        let Some(_slot) = self.client_slot(peer.ip()) else {
            self.metrics.outcome("refused");
            debug!(%peer, "client over its connection cap; closed");
            return;
        };
        let _ = client.set_nodelay(true);
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(self.request_timeout, client.peek(&mut first)).await;
        let outcome = match peeked {
            Ok(Ok(1)) if first[0] == 5 => self.socks5(&mut client).await,
            Ok(Ok(1)) => self.http(&mut client).await,
            _ => Err(Refusal::BadClient("no request".into())),
        };
        match outcome {
            Ok(()) => self.metrics.outcome("ok"),
            Err(Refusal::BadClient(why)) => {
                self.metrics.outcome("bad_client");
                debug!(%peer, why, "client connection closed");
            }
            Err(Refusal::Auth) => self.metrics.outcome("auth"),
            Err(Refusal::NoUpstream) => {
                self.metrics.outcome("no_upstream");
                warn!(%peer, "no upstream passes the client's asks");
            }
            Err(Refusal::Upstreams(e)) => {
                self.metrics.outcome("upstreams_failed");
                warn!(%peer, error = %e, "every upstream tried failed");
            }
        }
    }

    /// Checks `user`/`pass` (the user may carry options); the client's asks over the defaults.
    fn admit(&self, user: Option<&str>, pass: Option<&str>) -> Result<Wants, Refusal> {
        let (base, asks) = match user {
            Some(user) => wants::parse_username(user).map_err(|_| Refusal::Auth)?,
            None => (String::new(), Wants::default()),
        };
        if let Some(users) = &self.users {
            let known = users.get(&base).is_some_and(|p| {
                pass.is_some_and(|given| {
                    given.len() == p.len()
                        && given
                            .bytes()
                            .zip(p.bytes())
                            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                            == 0
                })
            });
            if !known {
                return Err(Refusal::Auth);
            }
        }
        Ok(asks.over(&self.defaults))
    }

    /// Chooses upstreams for `wants` and runs `open` on each until one works, at most
    /// `1 + retries` of them.
    async fn through<T, F, Fut>(&self, wants: &Wants, mut open: F) -> Result<(T, Upstream), Refusal>
    where
        F: FnMut(Upstream) -> Fut,
        Fut: std::future::Future<Output = Result<T, UpstreamError>>,
    {
        let mut tried: Vec<String> = Vec::new();
        let mut last = None;
        for attempt in 0..=self.retries {
            let Some(upstream) = self.lock_chooser().pick(wants, &tried, Instant::now()) else {
                break;
            };
            if attempt > 0 {
                self.metrics.retries.fetch_add(1, Ordering::Relaxed);
            }
            let started = Instant::now();
            match open(upstream.clone()).await {
                Ok(opened) => {
                    self.metrics.ready_after(started.elapsed());
                    self.metrics.attempt(&upstream.key, "ok");
                    return Ok((opened, upstream));
                }
                Err(e) => {
                    // Logs and the metrics page name upstreams without their credentials.
                    self.metrics.attempt(&upstream.key, e.reason());
                    let cooled = self.lock_chooser().failed(&upstream.key, Instant::now());
                    match cooled {
                        Cooled::Yes => {
                            warn!(upstream = %upstream.url(), reason = e.reason(), error = %e, "upstream failed; trying another");
                            // A full backlog drops it: the pool's rounds find dead proxies too.
                            let _ = self.failures.try_send(crate::report::Failure {
                                proxy: upstream.key.clone(),
                                error: e.clone(),
                            });
                        }
                        Cooled::No { cooling, cap } => {
                            self.metrics.held_back.fetch_add(1, Ordering::Relaxed);
                            warn!(upstream = %upstream.url(), reason = e.reason(), error = %e, cooling, cap, "upstream failed while the most upstreams allowed cool down already: trying another, but neither cooling it down nor reporting it (so many failing at once points at this gateway's own network or load)");
                        }
                        Cooled::Gone => {
                            warn!(upstream = %upstream.url(), reason = e.reason(), error = %e, "upstream failed and has left the pool; trying another");
                        }
                    }
                    tried.push(upstream.key.clone());
                    last = Some(e);
                }
            }
        }
        Err(match last {
            Some(e) => Refusal::Upstreams(e),
            None => Refusal::NoUpstream,
        })
    }

    /// A tunnel to `host:port` through an upstream `wants` allows (see [`Front::through`]).
    async fn tunnel(
        &self,
        wants: &Wants,
        host: &str,
        port: u16,
    ) -> Result<(TcpStream, Upstream), Refusal> {
        self.through(wants, |up| async move {
            upstream::tunnel(&up, host, port, self.guard, self.connect_timeout).await
        })
        .await
    }

    /// Carries bytes both ways until both sides close or nothing moves for the idle timeout.
    async fn splice(&self, upstream: &Upstream, client: &mut TcpStream, mut remote: TcpStream) {
        self.lock_chooser().started(&upstream.key);
        self.metrics.active.fetch_add(1, Ordering::Relaxed);
        let moved = AtomicU64::new(0);
        let mut near = Counted {
            inner: client,
            moved: &moved,
        };
        let mut far = Counted {
            inner: &mut remote,
            moved: &moved,
        };
        let copy = tokio::io::copy_bidirectional(&mut near, &mut far);
        tokio::pin!(copy);
        // One timer a connection, not one a read: every idle period, did anything move?
        let mut seen = 0;
        loop {
            tokio::select! {
                _ = &mut copy => break,
                _ = tokio::time::sleep(self.idle_timeout) => {
                    let now = moved.load(Ordering::Relaxed);
                    if now == seen {
                        debug!(upstream = %upstream.url(), "tunnel idle; closed");
                        break;
                    }
                    seen = now;
                }
            }
        }
        self.metrics.active.fetch_sub(1, Ordering::Relaxed);
        self.lock_chooser().finished(&upstream.key);
    }

    async fn socks5(&self, client: &mut TcpStream) -> Result<(), Refusal> {
        let limit = self.request_timeout;
        let io = |e: std::io::Error| Refusal::BadClient(e.to_string());
        let mut head = [0u8; 2];
        read_within(client, &mut head, limit).await.map_err(io)?;
        let mut methods = vec![0u8; usize::from(head[1])];
        read_within(client, &mut methods, limit).await.map_err(io)?;
        let wants = if self.users.is_some() || methods == [2] {
            if !methods.contains(&2) {
                let _ = client.write_all(&[5, 0xff]).await;
                return Err(Refusal::Auth);
            }
            client.write_all(&[5, 2]).await.map_err(io)?;
            let mut ver_len = [0u8; 2];
            read_within(client, &mut ver_len, limit).await.map_err(io)?;
            let mut user = vec![0u8; usize::from(ver_len[1])];
            read_within(client, &mut user, limit).await.map_err(io)?;
            let mut plen = [0u8; 1];
            read_within(client, &mut plen, limit).await.map_err(io)?;
            let mut pass = vec![0u8; usize::from(plen[0])];
            read_within(client, &mut pass, limit).await.map_err(io)?;
            let user = String::from_utf8_lossy(&user).into_owned();
            let pass = String::from_utf8_lossy(&pass).into_owned();
            match self.admit(Some(&user), Some(&pass)) {
                Ok(wants) => {
                    client.write_all(&[1, 0]).await.map_err(io)?;
                    wants
                }
                Err(e) => {
                    let _ = client.write_all(&[1, 1]).await;
                    return Err(e);
                }
            }
        } else {
            if !methods.contains(&0) {
                let _ = client.write_all(&[5, 0xff]).await;
                return Err(Refusal::BadClient("no acceptable SOCKS5 method".into()));
            }
            client.write_all(&[5, 0]).await.map_err(io)?;
            self.admit(None, None)?
        };
        let mut request = [0u8; 4];
        read_within(client, &mut request, limit).await.map_err(io)?;
        if request[0] != 5 || request[1] != 1 {
            let _ = client.write_all(&socks5_reply(7)).await;
            return Err(Refusal::BadClient("only SOCKS5 CONNECT is served".into()));
        }
        let host = match request[3] {
            1 => {
                let mut a = [0u8; 4];
                read_within(client, &mut a, limit).await.map_err(io)?;
                std::net::Ipv4Addr::from(a).to_string()
            }
            4 => {
                let mut a = [0u8; 16];
                read_within(client, &mut a, limit).await.map_err(io)?;
                std::net::Ipv6Addr::from(a).to_string()
            }
            3 => {
                let mut len = [0u8; 1];
                read_within(client, &mut len, limit).await.map_err(io)?;
                let mut name = vec![0u8; usize::from(len[0])];
                read_within(client, &mut name, limit).await.map_err(io)?;
                String::from_utf8(name).map_err(|_| Refusal::BadClient("bad host name".into()))?
            }
            _ => {
                let _ = client.write_all(&socks5_reply(8)).await;
                return Err(Refusal::BadClient("unknown SOCKS5 address type".into()));
            }
        };
        let mut port = [0u8; 2];
        read_within(client, &mut port, limit).await.map_err(io)?;
        let port = u16::from_be_bytes(port);
        let opened = self.tunnel(&wants, &host, port).await;
        let (remote, upstream) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                let code = if matches!(e, Refusal::NoUpstream) {
                    2
                } else {
                    1
                };
                let _ = client.write_all(&socks5_reply(code)).await;
                return Err(e);
            }
        };
        client.write_all(&socks5_reply(0)).await.map_err(io)?;
        self.splice(&upstream, client, remote).await;
        Ok(())
    }

    async fn http(&self, client: &mut TcpStream) -> Result<(), Refusal> {
        let (head, extra) = read_head(client, self.request_timeout)
            .await
            .map_err(Refusal::BadClient)?;
        let request = match Request::parse(&head) {
            Ok(r) => r,
            Err(why) => {
                let _ = client.write_all(&answer(400, "Bad Request", &why)).await;
                return Err(Refusal::BadClient(why));
            }
        };
        let (user, pass) = match request.proxy_credentials() {
            Some((u, p)) => (Some(u), Some(p)),
            None => (None, None),
        };
        let wants = match self.admit(user.as_deref(), pass.as_deref()) {
            Ok(w) => w,
            Err(e) => {
                let _ = client
                    .write_all(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"proxyfleet\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
                return Err(e);
            }
        };
        let io = |e: std::io::Error| Refusal::BadClient(e.to_string());
        if request.method.eq_ignore_ascii_case("CONNECT") {
            let (host, port) = split_authority(&request.target, 443).ok_or_else(|| {
                Refusal::BadClient(format!("bad CONNECT target {:?}", request.target))
            })?;
            let opened = self.tunnel(&wants, &host, port).await;
            let (mut remote, upstream) = answered(client, opened).await?;
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .map_err(io)?;
            if !extra.is_empty() {
                remote.write_all(&extra).await.map_err(io)?;
            }
            self.splice(&upstream, client, remote).await;
            return Ok(());
        }
        // A forward request: an absolute http:// URL.
        let Some((host, port, path)) = split_http_url(&request.target) else {
            let why = format!(
                "{:?} is not an absolute http:// URL; use CONNECT for anything else",
                request.target
            );
            let _ = client.write_all(&answer(400, "Bad Request", &why)).await;
            return Err(Refusal::BadClient(why));
        };
        let host = host.as_str();
        let opened = self
            .through(&wants, |up| async move {
                if upstream::forwards(&up) {
                    upstream::connect(&up, self.guard, self.connect_timeout).await
                } else {
                    upstream::tunnel(&up, host, port, self.guard, self.connect_timeout).await
                }
            })
            .await;
        let (mut remote, upstream) = answered(client, opened).await?;
        let forwarded = request.forwarded(
            if upstream::forwards(&upstream) {
                &request.target
            } else {
                &path
            },
            if upstream::forwards(&upstream) {
                upstream.auth.as_ref()
            } else {
                None
            },
        );
        remote.write_all(&forwarded).await.map_err(io)?;
        if !extra.is_empty() {
            remote.write_all(&extra).await.map_err(io)?;
        }
        self.splice(&upstream, client, remote).await;
        Ok(())
    }
}

/// Reads exactly `buf.len()` bytes within `limit`.
async fn read_within(
    stream: &mut TcpStream,
    buf: &mut [u8],
    limit: Duration,
) -> std::io::Result<()> {
    tokio::time::timeout(limit, stream.read_exact(buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client too slow"))?
        .map(|_| ())
}

/// A SOCKS5 reply with `code` and an empty IPv4 bound address.
fn socks5_reply(code: u8) -> [u8; 10] {
    [5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

fn answer(status: u16, reason: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `opened`, after telling the HTTP client why when no upstream would carry its request.
async fn answered<T>(client: &mut TcpStream, opened: Result<T, Refusal>) -> Result<T, Refusal> {
    if let Err(e) = &opened {
        let _ = client.write_all(&refused_answer(e)).await;
    }
    opened
}

/// What a client is told when no upstream would carry its request.
fn refused_answer(refusal: &Refusal) -> Vec<u8> {
    match refusal {
        Refusal::NoUpstream => answer(
            503,
            "Service Unavailable",
            "no live upstream passes the request's options\n",
        ),
        Refusal::Upstreams(e) => answer(
            502,
            "Bad Gateway",
            &format!("every upstream tried failed; the last: {e}\n"),
        ),
        _ => answer(502, "Bad Gateway", "no upstream\n"),
    }
}

/// A stream that counts the bytes read from it into `moved`, for the idle timeout.
struct Counted<'a, S> {
    inner: S,
    moved: &'a AtomicU64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.moved.fetch_add(read as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Reads a request head (through the blank line) within `limit`; what came after it too.
async fn read_head(stream: &mut TcpStream, limit: Duration) -> Result<(Vec<u8>, Vec<u8>), String> {
    let work = async {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before its request head ended".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let extra = buf.split_off(end + 4);
                return Ok((buf, extra));
            }
            if buf.len() > MAX_HEAD {
                return Err(format!("request head over {MAX_HEAD} bytes"));
            }
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| "no request head in time".to_string())?
}

/// A client's request head, read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    method: String,
    target: String,
    version: String,
    /// Header lines as sent, in order.
    headers: Vec<(String, String)>,
}

impl Request {
    fn parse(head: &[u8]) -> Result<Request, String> {
        let text =
            std::str::from_utf8(head).map_err(|_| "the request head is not text".to_string())?;
        let mut lines = text.split("\r\n");
        let line = lines.next().unwrap_or_default();
        let mut parts = line.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("bad request line {line:?}"));
        };
        if !version.starts_with("HTTP/1.") {
            return Err(format!("not HTTP/1: {version:?}"));
        }
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.split_once(':')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| format!("bad header line {l:?}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Request {
            method: method.to_string(),
            target: target.to_string(),
            version: version.to_string(),
            headers,
        })
    }

    /// The client's `Proxy-Authorization: Basic` user and password.
    fn proxy_credentials(&self) -> Option<(String, String)> {
        let value = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("proxy-authorization"))?
            .1
            .as_str();
        let (scheme, encoded) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
        let (user, pass) = decoded.split_once(':')?;
        Some((user.to_string(), pass.to_string()))
    }

    /// The request as the next hop gets it: to `target`, without the client's proxy headers, with
    /// the upstream's credentials when it wants them, and closing after one exchange.
    fn forwarded(&self, target: &str, auth: Option<&(String, String)>) -> Vec<u8> {
        let mut out = format!("{} {target} {}\r\n", self.method, self.version);
        for (k, v) in &self.headers {
            let lower = k.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "proxy-authorization" | "proxy-connection" | "connection" | "keep-alive"
            ) {
                continue;
            }
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some((user, pass)) = auth {
            out.push_str(&format!(
                "Proxy-Authorization: Basic {}\r\n",
                proxyfleet_common::dial::basic_auth(user, pass)
            ));
        }
        out.push_str("Connection: close\r\n\r\n");
        out.into_bytes()
    }
}

/// `host:port` (IPv6 in brackets), with `default` when the port is missing.
fn split_authority(authority: &str, default: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host.to_string(), port.parse().ok()?)),
        None if !authority.is_empty() => Some((authority.to_string(), default)),
        _ => None,
    }
    .filter(|(host, _)| !host.is_empty())
}

/// `http://authority/path` split into host, port and origin-form path.
fn split_http_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..])?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = split_authority(authority, 80)?;
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path
    };
    Some((host, port, path))
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = text.bytes().filter(|&b| b != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for group in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &b) in group.iter().enumerate() {
            n |= value(b)? << (18 - 6 * i);
        }
        let keep = match group.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&n.to_be_bytes()[1..1 + keep]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_their_forms() {
        let r = Request::parse(
            b"GET http://example.test:8080/a?b=1 HTTP/1.1\r\nHost: example.test:8080\r\nProxy-Authorization: Basic YWxpY2Utc2Vzc2lvbi14OnMzY3JldA==\r\nProxy-Connection: keep-alive\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(
            r.proxy_credentials(),
            Some(("alice-session-x".into(), "s3cret".into()))
        );
        assert_eq!(
            split_http_url(&r.target),
            Some(("example.test".into(), 8080, "/a?b=1".into()))
        );
        let forwarded = String::from_utf8(r.forwarded("/a?b=1", None)).unwrap();
        assert_eq!(
            forwarded,
            "GET /a?b=1 HTTP/1.1\r\nHost: example.test:8080\r\nConnection: close\r\n\r\n"
        );
        let with_auth =
            String::from_utf8(r.forwarded(&r.target, Some(&("u".into(), "p".into())))).unwrap();
        assert!(with_auth.starts_with("GET http://example.test:8080/a?b=1 HTTP/1.1\r\n"));
        assert!(with_auth.contains("Proxy-Authorization: Basic dTpw\r\n"));
        assert!(Request::parse(b"GET / SPDY/3\r\n\r\n").is_err());
        assert!(Request::parse(b"nonsense\r\n\r\n").is_err());
    }

    #[test]
    fn authorities_and_urls() {
        assert_eq!(
            split_authority("a.test:443", 1),
            Some(("a.test".into(), 443))
        );
        assert_eq!(split_authority("a.test", 443), Some(("a.test".into(), 443)));
        assert_eq!(split_authority("[::1]:8443", 1), Some(("::1".into(), 8443)));
        assert_eq!(split_authority("[::1]", 443), Some(("::1".into(), 443)));
        assert_eq!(split_authority(":80", 1), None);
        assert_eq!(split_authority("a.test:x", 1), None);
        assert_eq!(
            split_http_url("http://u:p@h.test"),
            Some(("h.test".into(), 80, "/".into()))
        );
        assert_eq!(
            split_http_url("HTTP://h.test?q"),
            Some(("h.test".into(), 80, "/?q".into()))
        );
        assert_eq!(split_http_url("https://h.test/"), None);
        assert_eq!(base64_decode("dTpw"), Some(b"u:p".to_vec()));
        assert_eq!(base64_decode("YQ=="), Some(b"a".to_vec()));
        assert_eq!(base64_decode("!!"), None);
    }
}
