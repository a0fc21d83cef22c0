//! The judges a worker can reach: each is asked directly once per session (which also tells the
//! worker its own address, for anonymity grading), and what it answered is reported to the
//! coordinator, so a dead judge is a loud report rather than every proxy marked dead.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proxyfleet_common::guard::Guard;
use proxyfleet_proto::v1 as pb;
use tokio::sync::{OnceCell, mpsc};
use tracing::{info, warn};

use crate::check::Checker;
use crate::dial::JudgeUrl;

/// Time a direct judge probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

type Probe = Arc<OnceCell<Result<IpAddr, String>>>;

/// Probed judges of one session.
#[derive(Clone)]
pub struct Judges {
    checker: Checker,
    /// The coordinator's own judges (its Welcome), set by its operator: dialled wherever they are.
    /// A client's judges are dialled only where the lease's guard allows.
    trusted: Arc<HashSet<String>>,
    /// One probe per judge URL; concurrent askers share it.
    probes: Arc<Mutex<HashMap<String, Probe>>>,
    /// Each probe's result, once, for the coordinator.
    reports: mpsc::UnboundedSender<pb::JudgeStatus>,
}

impl Judges {
    pub fn new(
        checker: Checker,
        trusted: &[String],
        reports: mpsc::UnboundedSender<pb::JudgeStatus>,
    ) -> Judges {
        Judges {
            checker,
            trusted: Arc::new(trusted.iter().cloned().collect()),
            probes: Arc::default(),
            reports,
        }
    }

    /// The judges of `urls` that answer this worker directly, probing those not asked yet;
    /// `guard` says where a client's judges may be.
    pub async fn reachable(&self, urls: &[String], guard: Guard) -> Vec<JudgeUrl> {
        let mut out = Vec::new();
        for url in urls {
            if self.probe(url, guard).await.is_ok()
                && let Ok(judge) = JudgeUrl::parse(url)
            {
                out.push(judge);
            }
        }
        out
    }

    async fn probe(&self, url: &str, guard: Guard) -> Result<IpAddr, String> {
        let guard = if self.trusted.contains(url) {
            Guard::new(true)
        } else {
            guard
        };
        let cell = {
            let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
            probes.entry(url.to_string()).or_default().clone()
        };
        cell.get_or_init(|| async {
            let result = match JudgeUrl::parse(url) {
                Ok(judge) => self.checker.learn_own_address(&judge, PROBE_TIMEOUT, guard).await,
                Err(e) => Err(e.to_string()),
            };
            let status = match &result {
                Ok(ip) => {
                    info!(judge = %url, own_ip = %ip, "judge reachable");
                    pb::JudgeStatus { url: url.to_string(), ok: true, own_ip: ip.to_string(), error: String::new() }
                }
                Err(e) => {
                    warn!(judge = %url, error = %e, "judge unreachable: checks against it cannot run");
                    pb::JudgeStatus { url: url.to_string(), ok: false, own_ip: String::new(), error: e.clone() }
                }
            };
            // The session may be gone; the probe result still serves this session's checks.
            let _ = self.reports.send(status);
            result
        })
        .await
        .clone()
    }
}
