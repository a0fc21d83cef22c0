//! Following the pool: a WatchPool stream, reopened with backoff whenever it breaks, feeding the
//! chooser; the last known set keeps serving meanwhile.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proxyfleet_common::auth::BearerToken;
use proxyfleet_proto::v1 as pb;
use proxyfleet_proto::v1::coordinator_client::CoordinatorClient;
use tokio::sync::watch;
use tonic::transport::Endpoint;
use tracing::{info, warn};

use crate::choose::{Chooser, Upstream};
use crate::metrics::Metrics;

/// Backoff between attempts to reach the coordinator.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What one stream ended with.
enum Ended {
    /// The gateway is stopping.
    Shutdown,
    /// The stream broke or never opened; why.
    Broken(String),
}

/// Follows `pool` until `shutdown` flips, keeping `chooser` as the pool's live set.
pub(crate) async fn follow(
    endpoint: Endpoint,
    token: BearerToken,
    pool: String,
    chooser: Arc<Mutex<Chooser>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut wait = RETRY_MIN;
    loop {
        match follow_once(&endpoint, &token, &pool, &chooser, &metrics, &mut shutdown).await {
            Ended::Shutdown => return,
            Ended::Broken(why) => {
                metrics.following.store(false, Ordering::Relaxed);
                let known = lock(&chooser).len();
                warn!(pool = %pool, error = %why, upstreams = known, retry_in = ?wait, "lost the pool's stream; serving the last known set and reconnecting");
            }
        }
        let jitter = Duration::from_millis(fastrand::u64(0..=wait.as_millis() as u64 / 2));
        tokio::select! {
            _ = tokio::time::sleep(wait + jitter) => {}
            _ = shutdown.changed() => return,
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
}

fn lock(chooser: &Mutex<Chooser>) -> std::sync::MutexGuard<'_, Chooser> {
    chooser.lock().unwrap_or_else(|e| e.into_inner())
}

async fn follow_once(
    endpoint: &Endpoint,
    token: &BearerToken,
    pool: &str,
    chooser: &Mutex<Chooser>,
    metrics: &Metrics,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let channel = tokio::select! {
        channel = endpoint.connect() => match channel {
            Ok(channel) => channel,
            Err(e) => return Ended::Broken(format!("cannot reach the coordinator: {e}")),
        },
        _ = shutdown.changed() => return Ended::Shutdown,
    };
    let mut client = CoordinatorClient::with_interceptor(channel, token.clone())
        .max_decoding_message_size(256 * 1024 * 1024);
    let request = pb::WatchPoolRequest {
        pool: pool.to_string(),
        filter: None,
    };
    let mut stream = tokio::select! {
        opened = client.watch_pool(request) => match opened {
            Ok(stream) => stream.into_inner(),
            Err(status) => return Ended::Broken(status.message().to_string()),
        },
        _ = shutdown.changed() => return Ended::Shutdown,
    };
    loop {
        let event = tokio::select! {
            event = stream.message() => event,
            _ = shutdown.changed() => return Ended::Shutdown,
        };
        let event = match event {
            Ok(Some(event)) => event,
            Ok(None) => return Ended::Broken("the coordinator ended the stream".into()),
            Err(status) => return Ended::Broken(status.message().to_string()),
        };
        let mut chooser = lock(chooser);
        match pb::PoolEventKind::try_from(event.kind) {
            Ok(pb::PoolEventKind::Snapshot) => {
                let members = event.pool.map(|p| p.members).unwrap_or_default();
                let upstreams: Vec<Upstream> = members
                    .iter()
                    .filter(|m| m.live)
                    .filter_map(Upstream::from_member)
                    .collect();
                info!(pool = %pool, upstreams = upstreams.len(), "following the pool");
                chooser.replace(upstreams);
                metrics.following.store(true, Ordering::Relaxed);
            }
            Ok(pb::PoolEventKind::Added | pb::PoolEventKind::Changed) => {
                if let Some(upstream) = event.member.as_ref().and_then(Upstream::from_member) {
                    chooser.upsert(upstream);
                }
            }
            Ok(pb::PoolEventKind::Removed) => {
                if let Some(m) = &event.member {
                    chooser.remove(&m.proxy);
                }
            }
            _ => {}
        }
        metrics
            .upstreams
            .store(chooser.len() as u64, Ordering::Relaxed);
    }
}
