//! proxyfleet gateway: follows one pool over WatchPool and serves clients on one address (HTTP
//! forward and CONNECT, SOCKS5), sending each client connection through one live upstream proxy
//! of the pool, chosen by policy, retried on another before the client sees an error.

pub mod choose;
mod follow;
mod front;
pub mod metrics;
mod report;
pub mod upstream;
pub mod wants;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proxyfleet_common::auth::BearerToken;
use proxyfleet_common::guard::Guard;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tonic::transport::Endpoint;
use tracing::{info, warn};

pub use choose::Policy;
pub use metrics::Metrics;
pub use wants::Wants;

/// How a gateway runs; validated by its maker.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The coordinator, TLS set up when it is served over TLS.
    pub endpoint: Endpoint,
    /// The client token, when the coordinator wants one.
    pub token: BearerToken,
    /// The pool followed.
    pub pool: String,
    pub policy: Policy,
    /// What a client that asks nothing gets.
    pub defaults: Wants,
    /// Users and passwords; None: no authentication (only on a loopback listener).
    pub users: Option<HashMap<String, String>>,
    /// Other upstreams tried after the first fails, before the client sees an error.
    pub retries: u32,
    /// How long a failed upstream is skipped.
    pub cooldown: Duration,
    /// Most of the set, in percent, cooling down (and so reported) at once.
    pub max_cooling_percent: u8,
    /// How long a session keeps its upstream after its last use.
    pub sticky_ttl: Duration,
    /// Connect and handshake time an upstream gets.
    pub connect_timeout: Duration,
    /// A client must send its request this soon.
    pub request_timeout: Duration,
    /// A tunnel idle this long either way is closed.
    pub idle_timeout: Duration,
    /// Client connections open at once; more wait for a slot.
    pub max_connections: usize,
    /// Client connections open at once from one address; more are closed.
    pub max_per_client: u32,
    /// Upstreams on loopback, private or link-local addresses may be dialled (labs, tests).
    pub allow_private_upstreams: bool,
}

impl GatewayConfig {
    pub fn new(endpoint: Endpoint, pool: &str) -> GatewayConfig {
        GatewayConfig {
            endpoint,
            token: BearerToken::default(),
            pool: pool.to_string(),
            policy: Policy::RoundRobin,
            defaults: Wants::default(),
            users: None,
            retries: 3,
            cooldown: Duration::from_secs(30),
            max_cooling_percent: choose::DEFAULT_MAX_COOLING_PERCENT,
            sticky_ttl: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 4096,
            max_per_client: 512,
            allow_private_upstreams: false,
        }
    }
}

/// What can go wrong reading a users file; the message names the file and line.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read the users file {path}: {error}")]
    Read { path: String, error: String },
    #[error("{path}:{line}: expected USER:PASSWORD (the user without '-', which starts options)")]
    Line { path: String, line: usize },
}

/// Reads a users file: `USER:PASSWORD` a line, `#` comments and blank lines skipped.
pub fn read_users(path: &Path) -> Result<HashMap<String, String>, UsersError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| UsersError::Read {
        path: name.clone(),
        error: e.to_string(),
    })?;
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((user, pass)) if !user.is_empty() && !user.contains('-') => {
                users.insert(user.to_string(), pass.to_string());
            }
            _ => {
                return Err(UsersError::Line {
                    path: name,
                    line: i + 1,
                });
            }
        }
    }
    Ok(users)
}

/// What every accept loop of a gateway shares.
struct Shared {
    front: Arc<front::Front>,
    /// Client connections open at once, across every thread.
    slots: Arc<Semaphore>,
}

/// Builds what the accept loops share, and starts following the pool and reporting failures on
/// the current runtime (they end when `stop` flips).
fn start(
    config: &GatewayConfig,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> (Shared, Vec<tokio::task::JoinHandle<()>>) {
    let chooser = Arc::new(Mutex::new(
        choose::Chooser::new(config.policy, config.cooldown, config.sticky_ttl, 100_000)
            .with_max_cooling(config.max_cooling_percent),
    ));
    let follower = tokio::spawn(follow::follow(
        config.endpoint.clone(),
        config.token.clone(),
        config.pool.clone(),
        chooser.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    let (failures_tx, failures_rx) = tokio::sync::mpsc::channel(report::BACKLOG);
    let reporter = tokio::spawn(report::report(
        config.endpoint.clone(),
        config.token.clone(),
        config.pool.clone(),
        failures_rx,
        stop,
    ));
    let front = Arc::new(front::Front {
        failures: failures_tx,
        chooser,
        metrics,
        users: config.users.clone(),
        defaults: config.defaults.clone(),
        guard: Guard::new(config.allow_private_upstreams),
        retries: config.retries,
        connect_timeout: config.connect_timeout,
        request_timeout: config.request_timeout,
        idle_timeout: config.idle_timeout,
        per_client: Mutex::new(HashMap::new()),
        max_per_client: config.max_per_client,
    });
    let shared = Shared {
        front,
        slots: Arc::new(Semaphore::new(config.max_connections.max(1))),
    };
    (shared, vec![follower, reporter])
}

/// How often each gateway runtime's timer driver wakes at least (see [`keep_timers_near`]).
const TIMER_TICK: Duration = Duration::from_secs(1);

/// Keeps this runtime's timer driver waking every [`TIMER_TICK`] until `stop` flips. A timer set
/// earlier than the driver's next wake makes tokio wake the driver through its eventfd; every
/// connection sets timers (its request, connect and idle timeouts, all longer than the tick),
/// and without a nearer one each of them would cost a write and a wakeup (two a request, seen
/// with strace). One wakeup a second costs nothing in comparison.
async fn keep_timers_near(mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Accepts clients on `listener` and serves each on this runtime until `stop` flips.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut connections = tokio::task::JoinSet::new();
    let ticker = tokio::spawn(keep_timers_near(stop.clone()));
    loop {
        // A slot first: at the cap, connections wait in the listen queue, not in memory.
        let slot = tokio::select! {
            slot = shared.slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = stop.wait_for(|s| *s) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        match accepted {
            Ok((client, peer)) => {
                let front = shared.front.clone();
                connections.spawn(async move {
                    let _slot = slot;
                    front.serve(client, peer).await;
                });
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // Reap what ended, so the set holds only live connections.
        while connections.try_join_next().is_some() {}
    }
    ticker.abort();
    connections.shutdown().await;
}

/// Runs the gateway on `listener`, on the current runtime, until `shutdown` completes; `metrics`
/// is its counters (shared with a metrics page, if the caller serves one).
pub async fn run(
    listener: TcpListener,
    config: GatewayConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (shared, tasks) = start(&config, metrics, stop_rx.clone());
    info!(listen = %listener.local_addr()?, pool = %config.pool, policy = ?config.policy, "gateway listening");
    let serving = accept_loop(listener, Arc::new(shared), stop_rx);
    tokio::pin!(serving);
    tokio::select! {
        _ = &mut serving => {}
        _ = shutdown => {
            let _ = stop_tx.send(true);
            serving.await;
        }
    }
    info!("gateway stopping");
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

/// Binds `threads` listeners on `addr` with SO_REUSEPORT (the kernel spreads connections over
/// them); with port 0, every one takes the port the first got.
pub fn reuseport_listeners(
    addr: std::net::SocketAddr,
    threads: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(threads.max(1));
    let mut addr = addr;
    for _ in 0..threads.max(1) {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(proxyfleet_common::net::BACKLOG)?;
        addr = listener.local_addr()?;
        listeners.push(listener.into_std()?);
    }
    Ok(listeners)
}

/// Runs the gateway on `listeners`, one thread each, each with a single-threaded runtime of its
/// own: a connection lives on one thread from accept to close, with no wakeup crossing threads.
/// Returns when `stop` flips and every thread has finished.
pub fn run_threads(
    listeners: Vec<std::net::TcpListener>,
    config: GatewayConfig,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let threads = listeners.len();
    // The first thread builds what they all share, then hands it to each of the others.
    let (senders, mut receivers): (Vec<_>, Vec<_>) = (1..threads)
        .map(|_| std::sync::mpsc::channel::<Arc<Shared>>())
        .unzip();
    let mut senders = Some(senders);
    let mut handles = Vec::with_capacity(threads);
    for (i, listener) in listeners.into_iter().enumerate() {
        let config = config.clone();
        let metrics = metrics.clone();
        let stop = stop.clone();
        let role = if i == 0 {
            Ok(senders.take().expect("the first thread takes the senders"))
        } else {
            Err(receivers.remove(0))
        };
        let handle = std::thread::Builder::new()
            .name(format!("gateway-{i}"))
            .spawn(move || -> std::io::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    listener.set_nonblocking(true)?;
                    let listener = TcpListener::from_std(listener)?;
                    match role {
                        Ok(senders) => {
                            let (shared, tasks) = start(&config, metrics, stop.clone());
                            let shared = Arc::new(shared);
                            for tx in senders {
                                let _ = tx.send(shared.clone());
                            }
                            info!(listen = %listener.local_addr()?, threads, pool = %config.pool, policy = ?config.policy, "gateway listening");
                            accept_loop(listener, shared, stop).await;
                            for task in tasks {
                                let _ = task.await;
                            }
                        }
                        Err(rx) => {
                            let shared = rx.recv().map_err(|_| {
                                std::io::Error::other("the first gateway thread failed")
                            })?;
                            accept_loop(listener, shared, stop).await;
                        }
                    }
                    Ok(())
                })
            })?;
        handles.push(handle);
    }
    let mut outcome = Ok(());
    for handle in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => outcome = Err(e),
            Err(_) => outcome = Err(std::io::Error::other("a gateway thread panicked")),
        }
    }
    info!("gateway stopped");
    outcome
}
