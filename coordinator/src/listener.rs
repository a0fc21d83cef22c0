//! The coordinator's listening ports: each holds at most so many connections, closes a
//! connection that has not sent its first request (TLS handshake included) by a deadline, and
//! pauses accepting, instead of spinning, when the process is out of descriptors.

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

use crate::first_request::FirstRequest;

/// How long accepts pause after one failed for want of descriptors (or another resource): long
/// enough not to spin, short enough that a freed descriptor is soon used.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// At most one warning of each kind per port this often; the others are counted in the next.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// Connections accepted in one poll before the accept loop lets other tasks run.
const ACCEPTS_PER_POLL: usize = 64;

/// What one port admits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PortLimits {
    /// Connections held at once; more are closed as they arrive.
    pub(crate) max_connections: usize,
    /// A connection that has not sent its first request this long after it was accepted is
    /// closed.
    pub(crate) first_request_timeout: Duration,
}

/// Turns an accepted socket into the connection that is served: as it is, or after a TLS
/// handshake.
pub(crate) trait Handshake: Send + Unpin + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    fn handshake(
        &self,
        tcp: TcpStream,
    ) -> impl Future<Output = io::Result<Self::Io>> + Send + 'static;
}

/// Plain TCP: no handshake.
pub(crate) struct Plain;

impl Handshake for Plain {
    type Io = TcpStream;

    fn handshake(
        &self,
        tcp: TcpStream,
    ) -> impl Future<Output = io::Result<TcpStream>> + Send + 'static {
        std::future::ready(Ok(tcp))
    }
}

impl Handshake for TlsAcceptor {
    type Io = TlsStream<TcpStream>;

    fn handshake(
        &self,
        tcp: TcpStream,
    ) -> impl Future<Output = io::Result<TlsStream<TcpStream>>> + Send + 'static {
        self.accept(tcp)
    }
}

/// Reads a PEM certificate chain and key, and for mTLS a CA, into the gRPC port's TLS acceptor:
/// HTTP/2 by ALPN, and a client certificate optional (clients connect without one; workers are
/// asked for one by the service).
pub(crate) fn grpc_tls(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, crate::Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| crate::Error::tls("--tls-cert", cert, e))?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| crate::Error::tls("--tls-key", key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for found in CertificateDer::pem_file_iter(ca)
                .map_err(|e| crate::Error::tls("--tls-client-ca", ca, e))?
            {
                let found = found.map_err(|e| crate::Error::tls("--tls-client-ca", ca, e))?;
                roots.add(found).map_err(|e| {
                    crate::Error::tls("--tls-client-ca", ca, format!("not a CA certificate: {e}"))
                })?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| crate::Error::tls("--tls-client-ca", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| crate::Error::tls("--tls-cert and --tls-key", cert, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Warnings of connections closed at their deadline, shared by a port's connections.
pub(crate) struct LateWarnings {
    /// Which port, in logs.
    port: &'static str,
    /// One warning per period; every connection closed late goes through it.
    every: std::sync::Mutex<WarnEvery>,
}

impl LateWarnings {
    pub(crate) fn new(port: &'static str) -> Self {
        LateWarnings {
            port,
            every: std::sync::Mutex::new(WarnEvery::new(WARN_EVERY)),
        }
    }

    /// `peer` is being closed for sending no request in time.
    fn closing(&self, peer: SocketAddr) {
        let allowed = self
            .every
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allow(Instant::now());
        if let Some(held_back) = allowed {
            warn!(
                port = self.port,
                peer = %peer,
                also_closed = held_back,
                "connection closed: no request before the first-request deadline"
            );
        }
    }
}

/// What a connection holds from its port: its place under the cap, and where to report being
/// closed late.
pub(crate) struct Admission {
    /// Given back when the connection closes.
    _slot: OwnedSemaphorePermit,
    /// Where its closing for want of a request is reported; taken when it is.
    late: Option<Arc<LateWarnings>>,
    peer: SocketAddr,
}

/// A served connection: reads fail once its deadline passes before its first request arrived;
/// it holds its place under the port's cap until dropped.
pub(crate) struct Guarded<IO, S> {
    io: IO,
    /// Until the first request is seen: when the connection is given up. `None` after.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Watches the bytes read for the first request.
    scan: S,
    /// Its port's share; `None` for a connection no port counts.
    admission: Option<Admission>,
}

impl<IO, S: FirstRequest> Guarded<IO, S> {
    pub(crate) fn new(io: IO, deadline: Instant, admission: Option<Admission>) -> Self {
        Guarded {
            io,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            scan: S::default(),
            admission,
        }
    }

    /// The error a read gets once the deadline has passed; the first one is reported.
    fn too_late(&mut self) -> io::Error {
        if let Some(admission) = &mut self.admission
            && let Some(late) = admission.late.take()
        {
            late.closing(admission.peer);
        }
        too_late()
    }
}

fn too_late() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no request before the first-request deadline",
    )
}

impl<IO: AsyncRead + Unpin, S: FirstRequest> AsyncRead for Guarded<IO, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(deadline) = this.deadline.as_mut() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        if Instant::now() >= deadline.deadline() {
            return Poll::Ready(Err(this.too_late()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.scan.feed(&buf.filled()[before..]) {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Waiting for bytes: the deadline wakes this reader if none come in time.
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(this.too_late())),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<IO: AsyncWrite + Unpin, S: Unpin> AsyncWrite for Guarded<IO, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The services see the connection's own address and, over TLS, its peer's certificates.
impl<IO: tonic::transport::server::Connected, S> tonic::transport::server::Connected
    for Guarded<IO, S>
{
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Allows one warning per period and counts the ones held back.
#[derive(Debug)]
pub(crate) struct WarnEvery {
    every: Duration,
    /// When the last warning was allowed.
    last: Option<Instant>,
    /// Warnings held back since then.
    held_back: u64,
}

impl WarnEvery {
    pub(crate) fn new(every: Duration) -> Self {
        WarnEvery {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// Whether to warn at `now`: `Some(warnings held back since the last one)`, or `None` to
    /// stay quiet.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

/// Why an accept failed, and so what the loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptFailure {
    /// The peer gave up before it was accepted: accept the next one at once.
    PeerGone,
    /// The process or the system has no descriptor left: pause, connections will close.
    OutOfDescriptors,
    /// Anything else (memory, buffers...): pause too, rather than spin on it.
    Other,
}

impl AcceptFailure {
    pub(crate) fn of(error: &io::Error) -> AcceptFailure {
        if matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            return AcceptFailure::OutOfDescriptors;
        }
        match error.kind() {
            io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock => AcceptFailure::PeerGone,
            _ => AcceptFailure::Other,
        }
    }
}

/// A connection accepted, handshaken and guarded, with its peer's address; `None` when its
/// handshake failed or did not finish by the deadline.
type Admitted<IO, S> = Option<(Guarded<IO, S>, SocketAddr)>;

/// A listening port that hands out guarded connections: a tonic incoming stream, and an axum
/// listener.
pub(crate) struct GuardedListener<H: Handshake, S> {
    tcp: TcpListener,
    handshake: H,
    /// Which port, in logs: "grpc" or "judge".
    port: &'static str,
    limits: PortLimits,
    /// One permit per connection held; a connection takes one when accepted and gives it back
    /// when it closes.
    slots: Arc<Semaphore>,
    /// Handshakes under way, each bounded by its connection's deadline.
    handshakes: JoinSet<Admitted<H::Io, S>>,
    /// Set after an accept failed for want of a resource: no accept before it fires.
    paused: Option<Pin<Box<Sleep>>>,
    /// Warnings of connections closed at the cap.
    full: WarnEvery,
    /// Warnings of failed accepts.
    failing: WarnEvery,
    /// Warnings of connections closed for sending no request (or no handshake) in time.
    late: Arc<LateWarnings>,
    _scan: PhantomData<fn() -> S>,
}

impl<H: Handshake, S: FirstRequest> GuardedListener<H, S> {
    pub(crate) fn new(
        tcp: TcpListener,
        handshake: H,
        port: &'static str,
        limits: PortLimits,
    ) -> Self {
        GuardedListener {
            tcp,
            handshake,
            port,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            handshakes: JoinSet::new(),
            paused: None,
            full: WarnEvery::new(WARN_EVERY),
            failing: WarnEvery::new(WARN_EVERY),
            late: Arc::new(LateWarnings::new(port)),
            _scan: PhantomData,
        }
    }

    /// The next connection ready to be served.
    pub(crate) fn poll_next_connection(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<(Guarded<H::Io, S>, SocketAddr)> {
        for _ in 0..ACCEPTS_PER_POLL {
            while let Poll::Ready(Some(done)) = self.handshakes.poll_join_next(cx) {
                match done {
                    Ok(Some(connection)) => return Poll::Ready(connection),
                    Ok(None) => {}
                    Err(e) => {
                        warn!(port = self.port, error = %e, "a connection's handshake task failed")
                    }
                }
            }
            if let Some(pause) = self.paused.as_mut() {
                ready!(pause.as_mut().poll(cx));
                self.paused = None;
            }
            match self.tcp.poll_accept(cx) {
                Poll::Ready(Ok((tcp, peer))) => self.admit(tcp, peer),
                Poll::Ready(Err(e)) => self.accept_failed(e),
                Poll::Pending => return Poll::Pending,
            }
        }
        // A burst of arrivals: let the connections already served run before accepting more.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn admit(&mut self, tcp: TcpStream, peer: SocketAddr) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            // Closed at once: the descriptor is free again and the caller learns it now.
            drop(tcp);
            if let Some(held_back) = self.full.allow(Instant::now()) {
                warn!(
                    port = self.port,
                    max_connections = self.limits.max_connections,
                    peer = %peer,
                    also_closed = held_back,
                    "connection closed on arrival: the port holds its most connections"
                );
            }
            return;
        };
        // No Nagle delay: a lease granted right after another must not wait for an ACK.
        let _ = tcp.set_nodelay(true);
        let deadline = Instant::now() + self.limits.first_request_timeout;
        let handshake = self.handshake.handshake(tcp);
        let port = self.port;
        let late = self.late.clone();
        self.handshakes.spawn(async move {
            match tokio::time::timeout_at(deadline, handshake).await {
                Ok(Ok(io)) => {
                    let admission = Admission {
                        _slot: slot,
                        late: Some(late),
                        peer,
                    };
                    Some((Guarded::new(io, deadline, Some(admission)), peer))
                }
                Ok(Err(e)) => {
                    debug!(port, peer = %peer, error = %e, "handshake failed");
                    None
                }
                Err(_) => {
                    late.closing(peer);
                    None
                }
            }
        });
    }

    fn accept_failed(&mut self, error: io::Error) {
        let failure = AcceptFailure::of(&error);
        if failure == AcceptFailure::PeerGone {
            debug!(port = self.port, error = %error, "a connection went away before it was accepted");
            return;
        }
        if let Some(held_back) = self.failing.allow(Instant::now()) {
            warn!(
                port = self.port,
                error = %error,
                out_of_descriptors = failure == AcceptFailure::OutOfDescriptors,
                open_connections = self.limits.max_connections - self.slots.available_permits(),
                also_failed = held_back,
                pause = ?ACCEPT_PAUSE,
                "cannot accept connections: pausing accepts"
            );
        }
        self.paused = Some(Box::pin(tokio::time::sleep(ACCEPT_PAUSE)));
    }
}

impl<H: Handshake, S: FirstRequest> tokio_stream::Stream for GuardedListener<H, S> {
    type Item = io::Result<Guarded<H::Io, S>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .poll_next_connection(cx)
            .map(|(connection, _)| Some(Ok(connection)))
    }
}

impl<H: Handshake, S: FirstRequest> axum::serve::Listener for GuardedListener<H, S> {
    type Io = Guarded<H::Io, S>;
    type Addr = SocketAddr;

    fn accept(&mut self) -> impl Future<Output = (Self::Io, Self::Addr)> + Send {
        std::future::poll_fn(|cx| self.poll_next_connection(cx))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::first_request::{H2Scan, Http1Scan};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PREFACE_AND_HEADERS: &[u8] =
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x01\x04\x00\x00\x00\x01";

    #[test]
    fn warnings_are_one_per_period_and_count_the_rest() {
        let start = Instant::now();
        let mut warn = WarnEvery::new(Duration::from_secs(5));
        assert_eq!(warn.allow(start), Some(0));
        assert_eq!(warn.allow(start + Duration::from_secs(1)), None);
        assert_eq!(warn.allow(start + Duration::from_secs(4)), None);
        assert_eq!(warn.allow(start + Duration::from_secs(5)), Some(2));
        assert_eq!(warn.allow(start + Duration::from_secs(6)), None);
        assert_eq!(warn.allow(start + Duration::from_secs(60)), Some(1));
        assert_eq!(warn.allow(start + Duration::from_secs(61)), None);
    }

    #[test]
    fn accept_failures_are_told_apart() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(
            AcceptFailure::of(&os(libc::EMFILE)),
            AcceptFailure::OutOfDescriptors
        );
        assert_eq!(
            AcceptFailure::of(&os(libc::ENFILE)),
            AcceptFailure::OutOfDescriptors
        );
        assert_eq!(
            AcceptFailure::of(&os(libc::ECONNABORTED)),
            AcceptFailure::PeerGone
        );
        assert_eq!(AcceptFailure::of(&os(libc::EINTR)), AcceptFailure::PeerGone);
        assert_eq!(AcceptFailure::of(&os(libc::ENOBUFS)), AcceptFailure::Other);
        assert_eq!(AcceptFailure::of(&os(libc::ENOMEM)), AcceptFailure::Other);
    }

    /// A guarded end of an in-memory pipe with `timeout` to its deadline, and the other end.
    fn pipe<S: FirstRequest>(
        timeout: Duration,
    ) -> (Guarded<tokio::io::DuplexStream, S>, tokio::io::DuplexStream) {
        let (server, client) = tokio::io::duplex(4096);
        (Guarded::new(server, Instant::now() + timeout, None), client)
    }

    #[tokio::test(start_paused = true)]
    async fn silence_fails_reads_at_the_deadline_and_not_before() {
        let (mut server, _client) = pipe::<H2Scan>(Duration::from_secs(10));
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // And it stays failed.
        assert!(server.read(&mut buf).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_preface_without_a_request_is_not_enough() {
        let (mut server, mut client) = pipe::<H2Scan>(Duration::from_secs(10));
        let headers_at = PREFACE_AND_HEADERS.len() - 9;
        client
            .write_all(&PREFACE_AND_HEADERS[..headers_at])
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut read = 0;
        let error = loop {
            match server.read(&mut buf).await {
                Ok(n) => read += n,
                Err(e) => break e,
            }
        };
        assert_eq!(read, headers_at, "every byte sent was read first");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_time_lifts_the_deadline() {
        let (mut server, mut client) = pipe::<H2Scan>(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(9)).await;
        client.write_all(PREFACE_AND_HEADERS).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut read = 0;
        while read < PREFACE_AND_HEADERS.len() {
            read += server.read(&mut buf).await.unwrap();
        }
        // Long after the deadline, the connection still reads and writes.
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"later").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 5);
        server.write_all(b"answer").await.unwrap();
        let mut answer = [0u8; 6];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"answer");
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_of_bytes_does_not_extend_the_deadline() {
        let (mut server, mut client) = pipe::<Http1Scan>(Duration::from_secs(10));
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                if client.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let error = loop {
            if let Err(e) = server.read(&mut buf).await {
                break e;
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() <= Duration::from_secs(10));
        drop(server);
        trickle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_http1_head_in_time_lifts_the_deadline() {
        let (mut server, mut client) = pipe::<Http1Scan>(Duration::from_secs(10));
        let head = b"GET /judge HTTP/1.1\r\nHost: j\r\n\r\n";
        client.write_all(head).await.unwrap();
        let mut buf = [0u8; 64];
        server.read_exact(&mut buf[..head.len()]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        client.write_all(b"GET").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 3);
    }

    fn limits(max_connections: usize) -> PortLimits {
        PortLimits {
            max_connections,
            first_request_timeout: Duration::from_secs(2),
        }
    }

    async fn listener<H: Handshake>(
        handshake: H,
        max_connections: usize,
    ) -> (GuardedListener<H, Http1Scan>, SocketAddr) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        (
            GuardedListener::new(tcp, handshake, "test", limits(max_connections)),
            addr,
        )
    }

    /// Reads from `stream` until it ends (EOF or reset), at most 30 s.
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 256];
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_on_arrival_and_slots_come_back() {
        let (mut listener, addr) = listener(Plain, 2).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let client = TcpStream::connect(addr).await.unwrap();
            let (server, _) = std::future::poll_fn(|cx| listener.poll_next_connection(cx)).await;
            held.push((client, server));
        }
        let mut third = TcpStream::connect(addr).await.unwrap();
        let accept = tokio::time::timeout(
            Duration::from_millis(300),
            std::future::poll_fn(|cx| listener.poll_next_connection(cx)),
        );
        assert!(
            accept.await.is_err(),
            "no connection is handed out over the cap"
        );
        assert!(closed(&mut third).await, "the third connection is closed");
        // One closes: the next is served.
        held.pop();
        let _fourth = TcpStream::connect(addr).await.unwrap();
        let served = tokio::time::timeout(
            Duration::from_secs(10),
            std::future::poll_fn(|cx| listener.poll_next_connection(cx)),
        );
        assert!(served.await.is_ok(), "a freed slot is used");
    }

    #[tokio::test]
    async fn a_tls_handshake_that_never_starts_ends_at_the_deadline() {
        let dir = std::env::temp_dir().join(format!("pf-listener-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let signed = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, signed.cert.pem()).unwrap();
        std::fs::write(&key, signed.signing_key.serialize_pem()).unwrap();
        let acceptor = grpc_tls(&cert, &key, None).unwrap();
        let (mut listener, addr) = listener(acceptor, 8).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let serve = tokio::spawn(async move {
            // Nothing is ever handed out: the only connection never handshakes.
            std::future::poll_fn(|cx| listener.poll_next_connection(cx)).await
        });
        let started = std::time::Instant::now();
        assert!(closed(&mut silent).await, "the silent connection is closed");
        assert!(started.elapsed() >= Duration::from_secs(1));
        serve.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
