//! The gRPC services, a thin adapter: destructure, validate, call the state, map errors to `Status`.

use std::pin::Pin;
use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_proto::v1::coordinator_server::Coordinator;
use proxyfleet_proto::v1::workers_server::Workers;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::convert;
use crate::scheduler::{Hello, JobError, RowFilter};
use crate::state::{CommitError, FollowCursor, PoolError, State};
use crate::submit::{self, SubmitError};

/// Longest worker id, name or version a worker may give: they are shown and logged everywhere.
const MAX_WORKER_ID: usize = 128;
/// Results are streamed in pages of this many proxies.
const RESULTS_PAGE: usize = 1_000;
/// A worker must say hello this soon after opening its stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Watchers get at most this many snapshots a second.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl From<JobError> for Status {
    fn from(e: JobError) -> Self {
        match e {
            JobError::NotFound(_) => Status::not_found(e.to_string()),
            JobError::Unreadable(_) => Status::unavailable(e.to_string()),
        }
    }
}

impl From<PoolError> for Status {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::BadName { .. } => Status::invalid_argument(e.to_string()),
            PoolError::NotFound { .. } => Status::not_found(e.to_string()),
        }
    }
}

impl From<SubmitError> for Status {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::TooMany { .. } | SubmitError::Busy { .. } => {
                Status::resource_exhausted(e.to_string())
            }
            // The request is fine; the coordinator's own sources file is not.
            SubmitError::NoSourcesFile | SubmitError::SourcesFile(_) => {
                Status::failed_precondition(e.to_string())
            }
            SubmitError::Empty
            | SubmitError::AllRejected(_)
            | SubmitError::Strict(_)
            | SubmitError::Invalid { .. }
            | SubmitError::Judge(_) => Status::invalid_argument(e.to_string()),
        }
    }
}

/// What the client is told when the job it submitted is not known to be durable: UNAVAILABLE,
/// as the coordinator stops on a failed store and the job may be submitted again once it is back.
fn submission_not_kept(e: CommitError) -> Status {
    Status::unavailable(match e {
        CommitError::StoreFailed(_) => {
            format!("the job was not kept and has no id: {e}, then submit again")
        }
        CommitError::TimedOut(_) => format!(
            "the job has no id yet: {e}; it may still be kept: look with `proxyfleet jobs` before you submit again"
        ),
    })
}

/// What the client is told when its cancel is not known to be durable.
fn cancel_not_kept(e: CommitError) -> Status {
    Status::unavailable(match e {
        CommitError::StoreFailed(_) => format!("the cancel was not kept: {e}, then cancel again"),
        CommitError::TimedOut(_) => format!(
            "the cancel is not confirmed: {e}; it may still take effect: look at the job before you cancel again"
        ),
    })
}

/// Runs a step of a submission on a blocking thread: reading the operator's sources file, and
/// parsing, shuffling and chunking a big list take a while, and the threads that serve the
/// streams must not wait for them.
async fn off_the_streams<T: Send + 'static>(
    step: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(step)
        .await
        .map_err(|e| Status::internal(format!("the submission failed: {e}")))
}

fn require_job_id(job_id: &str) -> Result<&str, Status> {
    let id = job_id.trim();
    if id.is_empty() {
        return Err(Status::invalid_argument("job_id is required"));
    }
    Ok(id)
}

/// The client-facing service.
pub(crate) struct CoordinatorService {
    pub(crate) state: State,
    /// Flips to true on shutdown so open watch streams end.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Open progress and results streams, bounded.
    pub(crate) watchers: WatcherLimit,
}

/// Counts open streams; a slot is held by a guard that the stream's task drops when it ends.
#[derive(Clone)]
pub(crate) struct WatcherLimit {
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max: usize,
}

/// One open stream.
pub(crate) struct WatcherSlot(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl WatcherLimit {
    pub(crate) fn new(max: usize) -> Self {
        WatcherLimit {
            open: Default::default(),
            max,
        }
    }

    pub(crate) fn acquire(&self) -> Result<WatcherSlot, Status> {
        use std::sync::atomic::Ordering;
        let taken = self.open.fetch_add(1, Ordering::SeqCst);
        let slot = WatcherSlot(self.open.clone());
        if taken >= self.max {
            return Err(Status::resource_exhausted(format!(
                "{} streams are open, the most the coordinator serves (--max-watchers); try again when some end",
                self.max
            )));
        }
        Ok(slot)
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let request = request.into_inner();
        let state = self.state.clone();
        let valid = off_the_streams(move || state.validate(request)).await??;
        submit::check_urls(&valid.settings, self.state.config().target_policy()).await?;
        let state = self.state.clone();
        let submitted = off_the_streams(move || state.submit(valid)).await?;
        // No id is given out for a job the store may not have.
        self.state
            .committed(submitted.commit)
            .await
            .map_err(submission_not_kept)?;
        Ok(Response::new(convert::submitted_to_proto(submitted)))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let r = request.into_inner();
        let snapshot = self
            .state
            .job(require_job_id(&r.job_id)?, r.include_chunks)?;
        Ok(Response::new(convert::job_to_proto(&snapshot)))
    }

    async fn get_job_report(
        &self,
        request: Request<pb::GetJobReportRequest>,
    ) -> Result<Response<pb::JobReport>, Status> {
        let r = request.into_inner();
        let report = self.state.job_report(require_job_id(&r.job_id)?)?;
        Ok(Response::new(convert::report_to_proto(&report)))
    }

    async fn get_pool(
        &self,
        request: Request<pb::GetPoolRequest>,
    ) -> Result<Response<pb::Pool>, Status> {
        let r = request.into_inner();
        let filter = convert::pool_filter_from_proto(r.filter).map_err(Status::invalid_argument)?;
        let order = convert::pool_order_from_proto(r.order);
        let view = self
            .state
            .pool(r.pool.trim(), &filter, order, r.limit as usize)?;
        Ok(Response::new(convert::pool_to_proto(
            &view,
            self.state.pool_max_failures(),
        )))
    }

    type WatchPoolStream = BoxStream<pb::PoolEvent>;

    async fn watch_pool(
        &self,
        request: Request<pb::WatchPoolRequest>,
    ) -> Result<Response<Self::WatchPoolStream>, Status> {
        let r = request.into_inner();
        let name = r.pool.trim().to_string();
        let filter = convert::pool_filter_from_proto(r.filter).map_err(Status::invalid_argument)?;
        let slot = self.watchers.acquire()?;
        let following = self.state.follow_pool(&name, &filter)?;
        let mut shutdown = self.shutdown.clone();
        let state = self.state.clone();
        let max_failures = self.state.pool_max_failures();
        let (tx, rx) = mpsc::channel(64);
        // Ends when the client goes away or at shutdown.
        tokio::spawn(async move {
            let _slot = slot;
            let snapshot = |view: &crate::pools::PoolView| {
                convert::pool_event(
                    pb::PoolEventKind::Snapshot,
                    view.summary.meta.version,
                    None,
                    Some(convert::pool_to_proto(view, max_failures)),
                )
            };
            let mut version = following.view.summary.meta.version;
            let mut changes = following.changes;
            if tx.send(Ok(snapshot(&following.view))).await.is_err() {
                return;
            }
            loop {
                let event = tokio::select! {
                    change = changes.recv() => change,
                    _ = shutdown.changed() => {
                        let _ = tx.try_send(Err(Status::unavailable(
                            "the coordinator is shutting down; watch again after it restarts",
                        )));
                        return;
                    }
                    _ = tx.closed() => return,
                };
                let message = match event {
                    Ok(applied) => {
                        // Already in the snapshot this stream started from.
                        if applied.version <= version {
                            continue;
                        }
                        version = applied.version;
                        let Some(kind) = crate::pools::change_kind(
                            &filter,
                            applied.before.as_ref(),
                            applied.after.as_ref(),
                        ) else {
                            continue;
                        };
                        let kind = match kind {
                            crate::pools::ChangeKind::Added => pb::PoolEventKind::Added,
                            crate::pools::ChangeKind::Removed => pb::PoolEventKind::Removed,
                            crate::pools::ChangeKind::Changed => pb::PoolEventKind::Changed,
                        };
                        convert::pool_event(kind, applied.version, applied.member(), None)
                    }
                    // Fell behind: a fresh snapshot says where things are now.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        debug!(pool = %name, missed, "pool follower fell behind; sending a new snapshot");
                        let Ok(again) = state.follow_pool(&name, &filter) else {
                            return;
                        };
                        changes = again.changes;
                        version = again.view.summary.meta.version;
                        snapshot(&again.view)
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                tokio::select! {
                    sent = tx.send(Ok(message)) => if sent.is_err() { return },
                    _ = shutdown.changed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn report_proxies(
        &self,
        request: Request<pb::ReportProxiesRequest>,
    ) -> Result<Response<pb::ReportProxiesResponse>, Status> {
        /// Most reports one call may carry.
        const MAX_REPORTS: usize = 1_000;
        let r = request.into_inner();
        if r.reports.len() > MAX_REPORTS {
            return Err(Status::invalid_argument(format!(
                "{} reports is more than the {MAX_REPORTS} one call may carry; send them in batches",
                r.reports.len()
            )));
        }
        let reports = r
            .reports
            .into_iter()
            .map(|report| {
                let reason = convert::reason_from_proto(report.reason)
                    .filter(|r| *r != crate::scheduler::Reason::None)
                    .unwrap_or(crate::scheduler::Reason::Network);
                let detail = convert::clip(
                    format!("{}{}", crate::scheduler::REPORTED, report.detail),
                    convert::MAX_WORKER_TEXT,
                );
                (report.proxy, reason, detail)
            })
            .collect();
        let counted = self.state.report_proxies(r.pool.trim(), reports).await?;
        Ok(Response::new(pb::ReportProxiesResponse {
            counted: counted as u32,
        }))
    }

    async fn list_pools(
        &self,
        _request: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        let max_failures = self.state.pool_max_failures();
        let pools = self
            .state
            .pools()
            .into_iter()
            .map(|summary| {
                convert::pool_to_proto(
                    &crate::pools::PoolView {
                        summary,
                        members: Vec::new(),
                    },
                    max_failures,
                )
            })
            .collect();
        Ok(Response::new(pb::ListPoolsResponse { pools }))
    }

    type WatchJobStream = BoxStream<pb::Job>;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let r = request.into_inner();
        let job_id = require_job_id(&r.job_id)?.to_string();
        let mut progress = self.state.watch(&job_id)?;
        let slot = self.watchers.acquire()?;
        let mut shutdown = self.shutdown.clone();
        let (tx, rx) = mpsc::channel(4);
        // Ends by itself: at the terminal snapshot, when the client goes away, or at shutdown.
        tokio::spawn(async move {
            let _slot = slot;
            let shutting_down = || {
                Err(Status::unavailable(
                    "the coordinator is shutting down; watch again after it restarts",
                ))
            };
            loop {
                let snapshot = progress.borrow_and_update().clone();
                let terminal = snapshot.state.is_terminal();
                // A client that stops reading holds this task only until shutdown.
                tokio::select! {
                    sent = tx.send(Ok(convert::job_to_proto(&snapshot))) => if sent.is_err() { return },
                    _ = shutdown.changed() => return,
                }
                if terminal {
                    return;
                }
                tokio::select! {
                    changed = progress.changed() => if changed.is_err() { return },
                    _ = shutdown.changed() => {
                        let _ = tx.try_send(shutting_down());
                        return;
                    }
                    _ = tx.closed() => return,
                }
                // Coalesce: at most a few snapshots a second, but the job's end at once.
                tokio::select! {
                    _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                    _ = progress.wait_for(|s| s.state.is_terminal()) => {}
                    _ = shutdown.changed() => {
                        let _ = tx.try_send(shutting_down());
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let r = request.into_inner();
        let (snapshot, commit) = self.state.cancel(require_job_id(&r.job_id)?)?;
        self.state
            .committed(commit)
            .await
            .map_err(cancel_not_kept)?;
        Ok(Response::new(convert::job_to_proto(&snapshot)))
    }

    async fn list_jobs(
        &self,
        _request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let jobs = self
            .state
            .jobs()
            .iter()
            .map(convert::job_to_proto)
            .collect();
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn list_workers(
        &self,
        _request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let workers = self
            .state
            .workers()
            .iter()
            .map(convert::worker_to_proto)
            .collect();
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    type GetResultsStream = BoxStream<pb::ResultsPage>;

    async fn get_results(
        &self,
        request: Request<pb::GetResultsRequest>,
    ) -> Result<Response<Self::GetResultsStream>, Status> {
        let r = request.into_inner();
        let job_id = require_job_id(&r.job_id)?.to_string();
        let page = |rows: &[crate::scheduler::ResultRow]| pb::ResultsPage {
            results: rows.iter().map(convert::result_to_proto).collect(),
        };
        if !r.follow {
            // Page by page, as the client reads: a million results never sit in memory at once.
            let filter = RowFilter::usable_only(r.usable_only);
            let first = self.state.results_page(&job_id, 0, RESULTS_PAGE, filter)?;
            let state = self.state.clone();
            let (tx, rx) = mpsc::channel(2);
            tokio::spawn(async move {
                let (mut rows, mut next) = first;
                loop {
                    if !rows.is_empty() && tx.send(Ok(page(&rows))).await.is_err() {
                        return;
                    }
                    let Some(start) = next else { return };
                    match state.results_page(&job_id, start, RESULTS_PAGE, filter) {
                        Ok((more, after)) => (rows, next) = (more, after),
                        Err(e) => {
                            // Pruned meanwhile: say so rather than end as if complete.
                            let _ = tx
                                .send(Err(Status::not_found(format!(
                                    "{e}; the results sent are incomplete"
                                ))))
                                .await;
                            return;
                        }
                    }
                }
            });
            return Ok(Response::new(Box::pin(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )));
        }
        // Follow: verdicts as they are recorded, then the unchecked rest once the job ends.
        self.state.job(&job_id, false)?;
        let slot = self.watchers.acquire()?;
        let state = self.state.clone();
        let mut shutdown = self.shutdown.clone();
        let (tx, rx) = mpsc::channel(8);
        // Ends at the job's end, when the client goes away, or at shutdown.
        tokio::spawn(async move {
            let _slot = slot;
            let mut cursor = FollowCursor::Recorded(0);
            loop {
                let (rows, next) = match state.follow(&job_id, cursor, RESULTS_PAGE, r.usable_only)
                {
                    Ok(followed) => followed,
                    Err(e) => {
                        // Pruned meanwhile, or the store unreadable: say so rather than end
                        // as if complete.
                        let status = Status::from(e);
                        let message =
                            format!("{}; the results sent are incomplete", status.message());
                        let _ = tx.send(Err(Status::new(status.code(), message))).await;
                        return;
                    }
                };
                let caught_up =
                    matches!(next, FollowCursor::Recorded(_) if rows.len() < RESULTS_PAGE);
                cursor = next;
                if !rows.is_empty() {
                    tokio::select! {
                        sent = tx.send(Ok(page(&rows))) => if sent.is_err() { return },
                        _ = shutdown.changed() => return,
                    }
                }
                if cursor == FollowCursor::Done {
                    return;
                }
                if caught_up {
                    tokio::select! {
                        _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                        _ = shutdown.changed() => return,
                        _ = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The worker-facing service.
pub(crate) struct WorkersService {
    pub(crate) state: State,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// mTLS: a worker must have presented a certificate signed by the configured CA.
    pub(crate) require_client_cert: bool,
}

#[tonic::async_trait]
impl Workers for WorkersService {
    type SessionStream = BoxStream<pb::CoordinatorMessage>;

    async fn session(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        if self.require_client_cert && request.peer_certs().is_none_or(|certs| certs.is_empty()) {
            return Err(Status::unauthenticated(
                "workers must present a client certificate signed by the coordinator's --tls-client-ca (--client-cert, --client-key)",
            ));
        }
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("no Hello within 10s of opening the session")
            })??;
        let hello = match first.and_then(|m| m.kind) {
            Some(pb::worker_message::Kind::Hello(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be Hello",
                ));
            }
        };
        if hello.worker_id.trim().is_empty() {
            return Err(Status::invalid_argument("Hello.worker_id is required"));
        }
        if hello.worker_id.len() > MAX_WORKER_ID {
            return Err(Status::invalid_argument(format!(
                "Hello.worker_id is longer than {MAX_WORKER_ID} bytes"
            )));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let session = self.state.open_session(
            Hello {
                worker_id: hello.worker_id,
                name: convert::clip(hello.name, MAX_WORKER_ID),
                version: convert::clip(hello.version, MAX_WORKER_ID),
                peer,
                capacity: hello.capacity.clamp(1, 1024),
                max_checks: hello.max_checks,
            },
            tx,
        );
        let state = self.state.clone();
        let mut shutdown = self.shutdown.clone();
        // The reader lives as long as the worker's stream; on its end the session's leases are requeued.
        tokio::spawn(async move {
            let why = loop {
                let message = tokio::select! {
                    m = inbound.message() => m,
                    _ = shutdown.changed() => break "coordinator shutting down",
                };
                let kind = match message {
                    Ok(Some(m)) => m.kind,
                    Ok(None) => break "stream closed by the worker",
                    Err(status) => {
                        debug!(session_id = session, error = %status, "worker stream broke");
                        break "stream broken";
                    }
                };
                state.on_message(session, kind);
            };
            state.close_session(session, why);
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_not_kept_is_refused_without_an_id_saying_what_to_do() {
        let full = submission_not_kept(CommitError::StoreFailed(
            "the coordinator cannot write its store in /data: database or disk is full; free space there and start the coordinator again".into(),
        ));
        assert_eq!(full.code(), tonic::Code::Unavailable);
        assert!(
            full.message().contains("has no id")
                && full.message().contains("database or disk is full")
                && full.message().ends_with("then submit again"),
            "{}",
            full.message()
        );
        let slow = submission_not_kept(CommitError::TimedOut(Duration::from_secs(60)));
        assert_eq!(slow.code(), tonic::Code::Unavailable);
        assert!(
            slow.message().contains("within 60s") && slow.message().contains("proxyfleet jobs"),
            "{}",
            slow.message()
        );
        let cancel = cancel_not_kept(CommitError::StoreFailed("disk gone".into()));
        assert_eq!(cancel.code(), tonic::Code::Unavailable);
        assert!(
            cancel.message().contains("cancel again"),
            "{}",
            cancel.message()
        );
    }
}
