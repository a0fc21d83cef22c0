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

/// Runs the gateway on `listener` until `shutdown` completes; `metrics` is its counters (shared
/// with a metrics page, if the caller serves one).
pub async fn run(
    listener: TcpListener,
    config: GatewayConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let chooser = Arc::new(Mutex::new(choose::Chooser::new(
        config.policy,
        config.cooldown,
        config.sticky_ttl,
        100_000,
    )));
    let (stop_tx, stop_rx) = watch::channel(false);
    let follower = tokio::spawn(follow::follow(
        config.endpoint.clone(),
        config.token.clone(),
        config.pool.clone(),
        chooser.clone(),
        metrics.clone(),
        stop_rx.clone(),
    ));
    let (failures_tx, failures_rx) = tokio::sync::mpsc::channel(report::BACKLOG);
    let reporter = tokio::spawn(report::report(
        config.endpoint.clone(),
        config.token.clone(),
        config.pool.clone(),
        failures_rx,
        stop_rx.clone(),
    ));
    let front = Arc::new(front::Front {
        failures: failures_tx,
        chooser,
        metrics: metrics.clone(),
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
    info!(listen = %listener.local_addr()?, pool = %config.pool, policy = ?config.policy, "gateway listening");
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // A slot first: at the cap, connections wait in the listen queue, not in memory.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        match accepted {
            Ok((client, peer)) => {
                let front = front.clone();
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
    info!("gateway stopping");
    let _ = stop_tx.send(true);
    connections.shutdown().await;
    let _ = follower.await;
    let _ = reporter.await;
    Ok(())
}
