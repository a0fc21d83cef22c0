//! The web dashboard on the HTTP API's port: a page (HTML, CSS and JS shipped in the binary), the
//! sign-in that turns the client token into a session cookie, and the event stream that keeps the
//! page live, fed by the jobs' progress watches and the pools' change streams.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use proxyfleet_common::auth::{Refusal, TokenCheck};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream, WatchStream};
use tracing::{debug, info};

use crate::pools::{Applied, ChangeKind, PoolFilter};
use crate::scheduler::{JobSnapshot, Member, SessionId, WorkerSnapshot};
use crate::state::State;

pub(crate) const INDEX_HTML: &str = include_str!("dashboard/index.html");
const LOGIN_HTML: &str = include_str!("dashboard/login.html");
pub(crate) const APP_JS: &str = include_str!("dashboard/app.js");
pub(crate) const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// The page runs only the coordinator's own script and style, talks only to the coordinator, and
/// is framed by no one.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The session cookie's name.
const COOKIE: &str = "proxyfleet_session";
/// How long a session lasts after sign-in.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once; signing in past it ends the oldest.
const MAX_SESSIONS: usize = 1000;
/// Jobs the page shows, newest first.
const MAX_JOBS: usize = 50;
/// Members of a pool sent in its snapshot, best score first; changes after it are all sent.
const MAX_MEMBERS: usize = 5000;
/// How often the lists (jobs, workers, pools) are read again.
const TICK: Duration = Duration::from_secs(1);
/// How often gathered changes are sent, at most.
const FLUSH: Duration = Duration::from_millis(250);

/// Signed-in browsers, by session id (a random secret that stands for the client token).
#[derive(Debug, Default)]
struct Sessions {
    /// When each session ends.
    ends: HashMap<String, Instant>,
}

impl Sessions {
    fn open(&mut self, id: String, now: Instant) {
        self.ends.retain(|_, end| *end > now);
        if self.ends.len() >= MAX_SESSIONS
            && let Some(oldest) = self
                .ends
                .iter()
                .min_by_key(|(_, end)| **end)
                .map(|(id, _)| id.clone())
        {
            self.ends.remove(&oldest);
        }
        self.ends.insert(id, now + SESSION_TTL);
    }

    fn valid(&self, id: &str, now: Instant) -> bool {
        self.ends.get(id).is_some_and(|end| *end > now)
    }

    fn close(&mut self, id: &str) {
        self.ends.remove(id);
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A new session id: 32 bytes from the kernel's random source, in hex.
fn new_session_id() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What the dashboard's handlers share besides the state.
pub(crate) struct Dashboard {
    /// The client token check, fixed for the process's life.
    tokens: TokenCheck,
    /// Signed-in browsers; opened by sign-in, closed by sign-out or their end.
    sessions: Mutex<Sessions>,
    /// Keys members by a keyed hash of their URL, so that credentials never reach the page.
    member_keys: std::collections::hash_map::RandomState,
    /// One permit per open event stream.
    streams: Arc<Semaphore>,
    /// Turns true at shutdown; event streams end on it.
    stop: watch::Receiver<bool>,
}

/// Whether a request may see the dashboard's data.
pub(crate) enum Access {
    Granted,
    Refused(Refusal),
}

impl Dashboard {
    pub(crate) fn new(
        tokens: TokenCheck,
        max_streams: usize,
        stop: watch::Receiver<bool>,
    ) -> Dashboard {
        Dashboard {
            tokens,
            sessions: Mutex::default(),
            member_keys: Default::default(),
            streams: Arc::new(Semaphore::new(max_streams.max(1))),
            stop,
        }
    }

    /// Tokens are set: the page asks for the client token before it shows anything.
    fn locked(&self) -> bool {
        self.tokens.expected.is_some()
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open without tokens; otherwise an `authorization: Bearer` header or a session cookie.
    pub(crate) fn access(&self, headers: &HeaderMap) -> Access {
        if !self.locked() {
            return Access::Granted;
        }
        if let Some(given) = headers.get(header::AUTHORIZATION) {
            return match self.tokens.check_header(given.to_str().ok()) {
                Ok(()) => Access::Granted,
                Err(refusal) => Access::Refused(refusal),
            };
        }
        match cookie(headers, COOKIE) {
            Some(id) if self.sessions().valid(id, Instant::now()) => Access::Granted,
            Some(_) => Access::Refused(Refusal::Unauthenticated(
                "the dashboard session has ended: sign in again at /dashboard".into(),
            )),
            None => Access::Refused(Refusal::Unauthenticated(
                "a client token is required: sign in at /dashboard, or send 'authorization: Bearer TOKEN'".into(),
            )),
        }
    }

    /// The page, or the sign-in form when the caller has no access.
    pub(crate) fn page(&self, headers: &HeaderMap) -> Response {
        match self.access(headers) {
            Access::Granted => html(StatusCode::OK, INDEX_HTML.to_string()),
            Access::Refused(_) => login_page(None),
        }
    }

    /// Signs in with `token`: a session cookie and the page, or the form again saying why not.
    pub(crate) fn sign_in(&self, token: &str) -> Response {
        if !self.locked() {
            return see_other("/dashboard", None);
        }
        let authorization = format!("Bearer {}", token.trim());
        if let Err(refusal) = self.tokens.check_header(Some(&authorization)) {
            info!("dashboard sign-in refused");
            return login_page(Some(match refusal {
                Refusal::WrongRole(_) => "That is not the client token.",
                Refusal::Unauthenticated(_) => "Wrong token.",
            }));
        }
        let id = match new_session_id() {
            Ok(id) => id,
            Err(e) => {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot make a session: reading /dev/urandom failed: {e}\n"),
                )
                    .into_response();
            }
        };
        self.sessions().open(id.clone(), Instant::now());
        info!("dashboard session opened");
        let cookie = format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            SESSION_TTL.as_secs()
        );
        see_other("/dashboard", Some(cookie))
    }

    /// Ends the caller's session, if any, and shows the sign-in form.
    pub(crate) fn sign_out(&self, headers: &HeaderMap) -> Response {
        if let Some(id) = cookie(headers, COOKIE) {
            self.sessions().close(id);
            info!("dashboard session closed");
        }
        let expired = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
        see_other("/dashboard", Some(expired))
    }

    /// The event stream: everything the page shows, then its changes, until the client goes or
    /// the coordinator stops.
    pub(crate) fn events(&self, state: State) -> Response {
        let Ok(permit) = self.streams.clone().try_acquire_owned() else {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many dashboards are open; close one or raise --max-watchers\n",
            )
                .into_response();
        };
        let (tx, rx) = mpsc::channel(64);
        let feed = Feed {
            state,
            tx,
            locked: self.locked(),
            member_keys: self.member_keys.clone(),
            jobs: tokio_stream::StreamMap::new(),
            shown_jobs: Vec::new(),
            pending_jobs: BTreeMap::new(),
            pools: tokio_stream::StreamMap::new(),
            pool_versions: HashMap::new(),
            pending_pools: BTreeMap::new(),
            last_pools: String::new(),
            rates: HashMap::new(),
            stop: self.stop.clone(),
        };
        // Ends by itself: when the page goes away or at shutdown.
        tokio::spawn(async move {
            let _permit = permit;
            feed.run().await;
        });
        let mut response = Sse::new(ReceiverStream::new(rx))
            .keep_alive(KeepAlive::default())
            .into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// Headers every dashboard answer carries.
pub(crate) fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The sign-in form (401), with `problem` shown when the last try failed.
fn login_page(problem: Option<&'static str>) -> Response {
    let message = problem
        .map(|p| format!("<p class=\"problem\" role=\"alert\">{p}</p>"))
        .unwrap_or_default();
    html(
        StatusCode::UNAUTHORIZED,
        LOGIN_HTML.replace("<!-- problem -->", &message),
    )
}

fn see_other(location: &'static str, cookie: Option<String>) -> Response {
    let mut response = (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, "no-store"),
        ],
    )
        .into_response();
    if let Some(value) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// A pool's changes gathered since the last send.
#[derive(Debug, Default)]
struct PoolDelta {
    /// A new snapshot replaces everything the page holds of the pool.
    snapshot: Option<Value>,
    upsert: BTreeMap<String, Value>,
    remove: BTreeSet<String>,
}

/// One page's event stream.
struct Feed {
    state: State,
    /// The page's stream; closed when the page goes away.
    tx: mpsc::Sender<Result<Event, std::convert::Infallible>>,
    /// The page can sign out.
    locked: bool,
    member_keys: std::collections::hash_map::RandomState,
    /// Progress of the shown jobs that have not ended, from their watches.
    jobs: tokio_stream::StreamMap<String, WatchStream<JobSnapshot>>,
    /// The ids shown, newest first.
    shown_jobs: Vec<String>,
    pending_jobs: BTreeMap<String, JobSnapshot>,
    /// Every pool's committed changes.
    pools: tokio_stream::StreamMap<String, BroadcastStream<Arc<Applied>>>,
    /// The version each pool's page copy is at.
    pool_versions: HashMap<String, u64>,
    pending_pools: BTreeMap<String, PoolDelta>,
    /// The pools' heads as last sent.
    last_pools: String,
    /// Each worker session's accepted verdicts when last read, for its rate.
    rates: HashMap<SessionId, (u64, Instant)>,
    /// Turns true at shutdown.
    stop: watch::Receiver<bool>,
}

/// The page has gone away.
struct Gone;

/// What woke a feed.
enum Wake {
    /// The page went away, or the coordinator is stopping.
    Stop,
    Job(String, Box<JobSnapshot>),
    Pool(String, Result<Arc<Applied>, BroadcastStreamRecvError>),
    Flush,
    Tick,
}

impl Feed {
    async fn run(mut self) {
        let mut stop = self.stop.clone();
        if *stop.borrow_and_update() {
            return;
        }
        let hello = json!({ "locked": self.locked, "max_members": MAX_MEMBERS });
        if self.send("hello", &hello).await.is_err() || self.tick().await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(FLUSH);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = tokio::select! {
                _ = stop.changed() => Wake::Stop,
                _ = self.tx.closed() => Wake::Stop,
                Some((id, snapshot)) = self.jobs.next(), if !self.jobs.is_empty() => {
                    Wake::Job(id, Box::new(snapshot))
                }
                Some((pool, change)) = self.pools.next(), if !self.pools.is_empty() => {
                    Wake::Pool(pool, change)
                }
                _ = flush.tick() => Wake::Flush,
                _ = tick.tick() => Wake::Tick,
            };
            let done = match wake {
                Wake::Stop => return,
                Wake::Job(id, snapshot) => {
                    if snapshot.state.is_terminal() {
                        self.jobs.remove(&id);
                    }
                    self.pending_jobs.insert(id, *snapshot);
                    Ok(())
                }
                Wake::Pool(pool, change) => {
                    self.pool_change(pool, change);
                    Ok(())
                }
                Wake::Flush => self.flush().await,
                Wake::Tick => self.tick().await,
            };
            if done.is_err() {
                return;
            }
        }
    }

    /// Sends one event; a page that stops reading holds the feed only until shutdown.
    async fn send(&self, event: &str, data: &Value) -> Result<(), Gone> {
        let event = Event::default().event(event).data(data.to_string());
        let mut stop = self.stop.clone();
        tokio::select! {
            sent = self.tx.send(Ok(event)) => sent.map_err(|_| Gone),
            _ = stop.changed() => Err(Gone),
        }
    }

    /// Reads the lists again: new jobs and pools are followed, workers and pool heads sent.
    async fn tick(&mut self) -> Result<(), Gone> {
        let ids = self.state.recent_job_ids(MAX_JOBS);
        for id in &ids {
            if self.shown_jobs.contains(id) {
                continue;
            }
            // The watch, where there is one, is what gRPC watchers see: the page never shows
            // an end before they do.
            let snapshot = match self.state.watch(id) {
                Ok(mut progress) => {
                    let snapshot = progress.borrow_and_update().clone();
                    if !snapshot.state.is_terminal() {
                        self.jobs
                            .insert(id.clone(), WatchStream::from_changes(progress));
                    }
                    snapshot
                }
                Err(_) => match self.state.job(id, false) {
                    Ok(snapshot) => snapshot,
                    Err(_) => continue,
                },
            };
            self.pending_jobs.insert(id.clone(), snapshot);
        }
        if ids != self.shown_jobs {
            for gone in self.shown_jobs.iter().filter(|id| !ids.contains(id)) {
                self.jobs.remove(gone);
                self.pending_jobs.remove(gone);
            }
            self.shown_jobs = ids;
            self.flush().await?;
            self.send("jobs", &json!({ "ids": self.shown_jobs }))
                .await?;
        }

        let now = Instant::now();
        let workers = self.state.workers();
        let mut rates = HashMap::new();
        let listed: Vec<Value> = workers
            .iter()
            .map(|w| {
                let rate = verdict_rate(self.rates.get(&w.session_id), w.verdicts_accepted, now);
                rates.insert(w.session_id, (w.verdicts_accepted, now));
                worker_json(w, rate)
            })
            .collect();
        self.rates = rates;
        self.send("workers", &json!({ "workers": listed })).await?;

        let pools = self.state.pools();
        for summary in &pools {
            let name = &summary.meta.name;
            if self.pool_versions.contains_key(name) {
                continue;
            }
            self.follow_pool(name);
        }
        let heads = json!({
            "pools": pools.iter().map(|p| json!({
                "pool": p.meta.name,
                "live": p.live,
                "total": p.total,
                "version": p.meta.version,
                "revalidate_every_ms": p.meta.revalidate_every.as_millis() as u64,
                "last_revalidation_ms": p.meta.last_round_ms,
                "round_job": p.meta.round_job,
            })).collect::<Vec<_>>(),
        });
        let text = heads.to_string();
        if text != self.last_pools {
            self.last_pools = text;
            self.send("pools", &heads).await?;
        }
        self.flush().await
    }

    /// Starts following `name` (again, after falling behind): its snapshot is sent next.
    fn follow_pool(&mut self, name: &str) {
        let Ok(following) = self.state.follow_pool(name, &PoolFilter::default()) else {
            return;
        };
        let view = following.view;
        let members: Vec<Value> = view
            .members
            .iter()
            .take(MAX_MEMBERS)
            .map(|m| self.member_json(m))
            .collect();
        self.pool_versions
            .insert(name.to_string(), view.summary.meta.version);
        self.pending_pools.insert(
            name.to_string(),
            PoolDelta {
                snapshot: Some(json!({
                    "pool": name,
                    "live": view.summary.live,
                    "members": members,
                })),
                ..PoolDelta::default()
            },
        );
        self.pools
            .insert(name.to_string(), BroadcastStream::new(following.changes));
    }

    fn pool_change(
        &mut self,
        pool: String,
        change: Result<Arc<Applied>, BroadcastStreamRecvError>,
    ) {
        let applied = match change {
            Ok(applied) => applied,
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                debug!(pool = %pool, missed, "dashboard fell behind a pool; sending a new snapshot");
                self.follow_pool(&pool);
                return;
            }
        };
        let version = self.pool_versions.entry(pool.clone()).or_default();
        // Already in the snapshot the page holds.
        if applied.version <= *version {
            return;
        }
        *version = applied.version;
        let Some(member) = applied.member() else {
            return;
        };
        let kind = crate::pools::change_kind(
            &PoolFilter::default(),
            applied.before.as_ref(),
            applied.after.as_ref(),
        );
        let key = self.member_key(member);
        let json = self.member_json(member);
        let delta = self.pending_pools.entry(pool).or_default();
        match kind {
            Some(ChangeKind::Added | ChangeKind::Changed) => {
                delta.remove.remove(&key);
                delta.upsert.insert(key, json);
            }
            Some(ChangeKind::Removed) => {
                delta.upsert.remove(&key);
                delta.remove.insert(key);
            }
            None => {}
        }
    }

    /// Sends what changed since the last send.
    async fn flush(&mut self) -> Result<(), Gone> {
        for (_, snapshot) in std::mem::take(&mut self.pending_jobs) {
            self.send("job", &job_json(&snapshot)).await?;
        }
        for (pool, delta) in std::mem::take(&mut self.pending_pools) {
            if let Some(snapshot) = &delta.snapshot {
                self.send("pool", snapshot).await?;
            }
            if delta.upsert.is_empty() && delta.remove.is_empty() {
                continue;
            }
            let members = json!({
                "pool": pool,
                "upsert": delta.upsert.into_values().collect::<Vec<_>>(),
                "remove": delta.remove,
            });
            self.send("members", &members).await?;
        }
        Ok(())
    }

    fn member_key(&self, m: &Member) -> String {
        format!("{:016x}", self.member_keys.hash_one(m.candidate.full_url()))
    }

    fn member_json(&self, m: &Member) -> Value {
        member_json(self.member_key(m), m)
    }
}

/// Verdicts a second since the last reading (none: no rate yet).
fn verdict_rate(before: Option<&(u64, Instant)>, now_count: u64, now: Instant) -> Option<f64> {
    let (count, at) = before?;
    let secs = now.saturating_duration_since(*at).as_secs_f64();
    (secs > 0.0).then(|| now_count.saturating_sub(*count) as f64 / secs)
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// A job as the page shows it: its state, counts and sources.
fn job_json(s: &JobSnapshot) -> Value {
    let p = &s.progress;
    json!({
        "id": s.id,
        "name": s.name,
        "state": s.state.name(),
        "terminal": s.state.is_terminal(),
        "reason": s.reason,
        "kind": s.settings.kind.name(),
        "pool": s.settings.pool,
        "min_usable": s.settings.min_usable,
        "created_ms": s.created_wall_ms,
        "ended_ms": s.ended_wall_ms,
        "total": p.proxies_total,
        "checked": p.proxies_checked,
        "usable": p.proxies_usable,
        "unchecked": p.proxies_unchecked,
        "poison": p.proxies_poison,
        "chunks": {
            "total": p.chunks_total,
            "queued": p.chunks_queued,
            "leased": p.chunks_leased,
            "done": p.chunks_done,
            "failed": p.chunks_failed,
        },
        "workers": p.workers,
        "checks_per_second": p.checks_per_second,
        "eta_ms": p.eta.map(ms),
        "elapsed_ms": ms(p.elapsed),
        "reassignments": p.reassignments,
        "stale_refused": p.stale_verdicts_refused,
        "sources": s.sources.iter().map(|src| json!({
            "url": src.url,
            "state": src.state.name(),
            "candidates": src.candidates,
            "rejected": src.rejected,
            "bytes": src.bytes,
            "error": src.error,
        })).collect::<Vec<_>>(),
        "dropped": s.dropped,
    })
}

/// A worker session as the page shows it.
fn worker_json(w: &WorkerSnapshot, verdicts_per_second: Option<f64>) -> Value {
    json!({
        "id": w.worker_id,
        "name": w.name,
        "version": w.version,
        "peer": w.peer,
        "status": w.status,
        "leases": w.leases,
        "capacity": w.capacity,
        "max_checks": w.max_checks,
        "connected_ms": ms(w.connected_for),
        "last_seen_ms": ms(w.last_seen_ago),
        "verdicts": w.verdicts_accepted,
        "verdicts_per_second": verdicts_per_second,
        "judges": w.judges.iter().map(|j| json!({
            "url": j.url,
            "ok": j.ok,
            "error": j.error,
        })).collect::<Vec<_>>(),
    })
}

/// A pool member as the page shows it: its URL with the user name but never the password.
fn member_json(key: String, m: &Member) -> Value {
    let c = &m.candidate;
    let proxy = match c.auth.as_deref() {
        Some((user, _)) => format!("{}://{user}:***@{}", c.protocol, c.host_port()),
        None => c.url(),
    };
    json!({
        "key": key,
        "proxy": proxy,
        "protocol": c.protocol.scheme(),
        "latency_ms": m.latency_avg_ms,
        "anonymity": m.anonymity.name(),
        "score": m.score(),
        "country": m.country,
        "exit_ip": m.exit_ip,
        "uptime": m.uptime(),
        "checks": m.checks,
        "failures": m.failures,
        "last_checked_ms": m.last_checked_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_after_their_time_and_the_oldest_goes_first_when_full() {
        let start = Instant::now();
        let mut sessions = Sessions::default();
        sessions.open("a".into(), start);
        assert!(sessions.valid("a", start + Duration::from_secs(60)));
        assert!(!sessions.valid("a", start + SESSION_TTL));
        assert!(!sessions.valid("b", start));
        for i in 0..MAX_SESSIONS {
            sessions.open(format!("s{i}"), start + Duration::from_secs(1 + i as u64));
        }
        assert_eq!(sessions.ends.len(), MAX_SESSIONS);
        assert!(
            !sessions.valid("a", start + Duration::from_secs(2)),
            "the oldest went"
        );
        assert!(sessions.valid("s0", start + Duration::from_secs(2)));
        sessions.close("s0");
        assert!(!sessions.valid("s0", start + Duration::from_secs(2)));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; lang=en"),
        );
        assert_eq!(cookie(&headers, COOKIE), None);
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("x=1;proxyfleet_session=abc ; y=2"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "y"), Some("2"));
    }

    #[test]
    fn session_ids_are_long_and_differ() {
        let (a, b) = (new_session_id().unwrap(), new_session_id().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }

    fn locked() -> Dashboard {
        let tokens = TokenCheck {
            role: "client",
            expected: Some("client-secret".into()),
            other: Some("worker-secret".into()),
        };
        Dashboard::new(tokens, 4, watch::channel(false).1)
    }

    fn set_cookie(response: &Response) -> String {
        response.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn signing_in_sets_an_http_only_strict_cookie_that_grants_access_until_sign_out() {
        let dashboard = locked();
        assert!(matches!(
            dashboard.access(&HeaderMap::new()),
            Access::Refused(Refusal::Unauthenticated(_))
        ));
        for wrong in ["nope", "worker-secret", ""] {
            let refused = dashboard.sign_in(wrong);
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
            assert!(!refused.headers().contains_key(header::SET_COOKIE));
        }
        let signed_in = dashboard.sign_in(" client-secret\n");
        assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
        let set = set_cookie(&signed_in);
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict") && !set.contains("secret"),
            "{set}"
        );
        let mut headers = HeaderMap::new();
        let pair = set.split(';').next().unwrap().to_string();
        headers.insert(header::COOKIE, HeaderValue::from_str(&pair).unwrap());
        assert!(matches!(dashboard.access(&headers), Access::Granted));
        assert!(set_cookie(&dashboard.sign_out(&headers)).contains("Max-Age=0"));
        assert!(matches!(dashboard.access(&headers), Access::Refused(_)));

        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer worker-secret"),
        );
        assert!(matches!(
            dashboard.access(&bearer),
            Access::Refused(Refusal::WrongRole(_))
        ));
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer client-secret"),
        );
        assert!(matches!(dashboard.access(&bearer), Access::Granted));
    }

    #[test]
    fn without_tokens_the_dashboard_is_open() {
        let open = Dashboard::new(TokenCheck::default(), 4, watch::channel(false).1);
        assert!(matches!(open.access(&HeaderMap::new()), Access::Granted));
        assert_eq!(open.page(&HeaderMap::new()).status(), StatusCode::OK);
    }

    #[test]
    fn verdict_rates_come_from_two_readings() {
        let t = Instant::now();
        assert_eq!(verdict_rate(None, 10, t), None);
        let rate = verdict_rate(Some(&(10, t)), 30, t + Duration::from_secs(2)).unwrap();
        assert!((rate - 10.0).abs() < 1e-9);
        assert_eq!(verdict_rate(Some(&(10, t)), 30, t), None);
    }

    #[test]
    fn the_page_never_writes_markup_from_data() {
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!APP_JS.contains(forbidden), "app.js uses {forbidden}");
        }
        for page in [INDEX_HTML, LOGIN_HTML] {
            assert!(!page.contains("<script>"), "no inline script");
            assert!(!page.contains("style=\""), "no inline style");
            assert!(
                !page.contains("http://") && !page.contains("https://"),
                "nothing fetched from outside"
            );
        }
    }
}
