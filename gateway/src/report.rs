//! Passive health: failures the gateway sees through upstreams go back to the coordinator, in
//! batches, where each counts as a failed check of the pool's member.

use std::time::Duration;

use proxyfleet_common::auth::BearerToken;
use proxyfleet_proto::v1 as pb;
use proxyfleet_proto::v1::coordinator_client::CoordinatorClient;
use tokio::sync::{mpsc, watch};
use tonic::transport::Endpoint;
use tracing::{debug, warn};

use crate::upstream::UpstreamError;

/// How long failures gather before they are sent.
const BATCH_EVERY: Duration = Duration::from_millis(500);
/// Most failures waiting to be sent; more are dropped (the coordinator's rounds still see them).
pub(crate) const BACKLOG: usize = 4096;

/// One failure through one upstream.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    pub(crate) proxy: String,
    pub(crate) error: UpstreamError,
}

fn to_proto(f: Failure) -> pb::ProxyReport {
    let reason = match &f.error {
        UpstreamError::Connect(_) => pb::Reason::Refused,
        UpstreamError::Handshake(_) => pb::Reason::Handshake,
        UpstreamError::Timeout(_) => pb::Reason::Timeout,
    };
    pb::ProxyReport {
        proxy: f.proxy,
        reason: reason as i32,
        detail: f.error.to_string(),
    }
}

/// Sends what arrives on `failures` until `shutdown` flips; a batch the coordinator cannot take
/// is dropped (the pool's rounds find dead proxies too).
pub(crate) async fn report(
    endpoint: Endpoint,
    token: BearerToken,
    pool: String,
    mut failures: mpsc::Receiver<Failure>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut client = None;
    loop {
        let first = tokio::select! {
            f = failures.recv() => match f { Some(f) => f, None => return },
            _ = shutdown.changed() => return,
        };
        tokio::select! {
            _ = tokio::time::sleep(BATCH_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let mut batch = vec![to_proto(first)];
        while let Ok(f) = failures.try_recv() {
            batch.push(to_proto(f));
            if batch.len() == 1_000 {
                break;
            }
        }
        if client.is_none() {
            client = endpoint
                .connect()
                .await
                .ok()
                .map(|channel| CoordinatorClient::with_interceptor(channel, token.clone()));
        }
        let Some(c) = client.as_mut() else {
            warn!(pool = %pool, failures = batch.len(), "cannot reach the coordinator to report failed upstreams; dropped");
            continue;
        };
        let sent = batch.len();
        match c
            .report_proxies(pb::ReportProxiesRequest {
                pool: pool.clone(),
                reports: batch,
            })
            .await
        {
            Ok(answer) => {
                debug!(pool = %pool, sent, counted = answer.into_inner().counted, "failed upstreams reported")
            }
            Err(status) => {
                warn!(pool = %pool, failures = sent, error = %status.message(), "the coordinator did not take the failed upstreams; dropped");
                client = None;
            }
        }
    }
}
