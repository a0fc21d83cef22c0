//! The judges a worker can reach: each is asked directly once per session (which tells what kind
//! of judge it is, and the worker its own address, for anonymity grading), and what it answered is
//! reported to the coordinator, so a dead judge is a loud report rather than every proxy marked
//! dead. A judge that answers 200 is reachable, whatever its kind.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proxyfleet_common::guard::Guard;
use proxyfleet_proto::v1 as pb;
use tokio::sync::{OnceCell, mpsc};
use tracing::{info, warn};

use crate::check::{Checker, Judge};
use proxyfleet_common::dial::JudgeUrl;

/// Time a direct judge probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

type Probe = Arc<OnceCell<Result<Judge, String>>>;

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
    pub async fn reachable(&self, urls: &[String], guard: Guard) -> Vec<Judge> {
        let mut out = Vec::new();
        for url in urls {
            if let Ok(judge) = self.probe(url, guard).await {
                out.push(judge);
            }
        }
        out
    }

    /// Reports again what the judges of `urls` answered when they were probed and failed: a lease
    /// none of them can serve is then ended by the coordinator, as the job of the first report
    /// was (each judge is probed once a session, so a later job would otherwise get no report).
    pub fn report_again(&self, urls: &[String]) {
        let probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        for url in urls {
            if let Some(Err(error)) = probes.get(url).and_then(|cell| cell.get()) {
                let _ = self.reports.send(pb::JudgeStatus {
                    url: url.clone(),
                    ok: false,
                    own_ip: String::new(),
                    error: error.clone(),
                });
            }
        }
    }

    async fn probe(&self, url: &str, guard: Guard) -> Result<Judge, String> {
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
                Ok(judge) => self.checker.probe_judge(&judge, PROBE_TIMEOUT, guard).await,
                Err(e) => Err(e.to_string()),
            };
            let status = match &result {
                Ok((judge, own_ip)) => {
                    let own_ip = own_ip.map(|ip| ip.to_string()).unwrap_or_default();
                    info!(judge = %url, kind = judge.kind.name(), holds_token = judge.holds_token, own_ip = %own_ip, "judge reachable");
                    pb::JudgeStatus { url: url.to_string(), ok: true, own_ip, error: String::new() }
                }
                Err(e) => {
                    warn!(judge = %url, error = %e, "judge not usable: checks against it cannot run");
                    pb::JudgeStatus { url: url.to_string(), ok: false, own_ip: String::new(), error: e.clone() }
                }
            };
            // The session may be gone; the probe result still serves this session's checks.
            let _ = self.reports.send(status);
            result.map(|(judge, _)| judge)
        })
        .await
        .clone()
    }
}
