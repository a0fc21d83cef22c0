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

/// The session cookie's name, before the HTTP port: browsers send a host's cookies to all its
/// ports, so two coordinators on one host would otherwise overwrite each other's session.
const COOKIE_PREFIX: &str = "proxyfleet_session_";
/// The cookie's path: only the dashboard's own requests carry it.
const COOKIE_PATH: &str = "/dashboard";
/// How long a wrong sign-in is answered after, so that guessing the token is slow.
pub(crate) const FAILED_SIGN_IN_DELAY: Duration = Duration::from_secs(1);
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

/// The session cookie's name for the dashboard on HTTP port `port`.
fn cookie_name(port: u16) -> String {
    format!("{COOKIE_PREFIX}{port}")
}

/// Whether a sign-in or sign-out POST came from another site: the browser says so in
/// `Sec-Fetch-Site`, or its `Origin` names another host than the request's `Host` (or is
/// `null`, as from a sandboxed page, where the browser does not vouch for the same origin).
pub(crate) fn cross_site(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("\u{0}").trim())
    };
    let site = text("sec-fetch-site");
    if site.is_some_and(|site| !matches!(site, "same-origin" | "none")) {
        return true;
    }
    let Some(origin) = text("origin") else {
        return false;
    };
    if origin == "null" {
        return site != Some("same-origin");
    }
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let host = text("host").map(str::trim);
    !matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
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
    /// The session cookie's name, which holds the HTTP port; fixed for the process's life.
    cookie: String,
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
        http_port: u16,
        max_streams: usize,
        stop: watch::Receiver<bool>,
    ) -> Dashboard {
        Dashboard {
            tokens,
            cookie: cookie_name(http_port),
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
        match cookie(headers, &self.cookie) {
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
            "{}={id}; Path={COOKIE_PATH}; HttpOnly; SameSite=Strict; Max-Age={}",
            self.cookie,
            SESSION_TTL.as_secs()
        );
        see_other("/dashboard", Some(cookie))
    }

    /// Signs in as `sign_in` does, answering a refusal only after `FAILED_SIGN_IN_DELAY`; nothing
    /// is held while it waits.
    pub(crate) async fn sign_in_slowly(&self, token: &str) -> Response {
        let answer = self.sign_in(token);
        if answer.status() == StatusCode::UNAUTHORIZED {
            tokio::time::sleep(FAILED_SIGN_IN_DELAY).await;
        }
        answer
    }

    /// Ends the caller's session, if any, and shows the sign-in form.
    pub(crate) fn sign_out(&self, headers: &HeaderMap) -> Response {
        if let Some(id) = cookie(headers, &self.cookie) {
            self.sessions().close(id);
            info!("dashboard session closed");
        }
        let expired = format!(
            "{}=; Path={COOKIE_PATH}; HttpOnly; SameSite=Strict; Max-Age=0",
            self.cookie
        );
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
        // Not `no-referrer`: under it a browser's form posts say `Origin: null`, and the sign-in
        // could not tell its own page from a sandboxed one.
        (header::REFERRER_POLICY, "same-origin"),
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
    /// Members added or changed, by key, as the page shows them; the last change of each wins.
    upsert: BTreeMap<String, Value>,
    /// Keys of members that left the pool since the last send.
    remove: BTreeSet<String>,
}

/// One page's event stream.
struct Feed {
    /// The coordinator's state, read every tick.
    state: State,
    /// The page's stream; closed when the page goes away.
    tx: mpsc::Sender<Result<Event, std::convert::Infallible>>,
    /// The page can sign out.
    locked: bool,
    /// Keys the members sent to the page (see `member_key`); shared by every page of the process.
    member_keys: std::collections::hash_map::RandomState,
    /// Progress of the shown jobs that have not ended, from their watches.
    jobs: tokio_stream::StreamMap<String, WatchStream<JobSnapshot>>,
    /// The ids shown, newest first.
    shown_jobs: Vec<String>,
    /// Each shown job's latest snapshot not yet sent.
    pending_jobs: BTreeMap<String, JobSnapshot>,
    /// Every pool's committed changes.
    pools: tokio_stream::StreamMap<String, BroadcastStream<Arc<Applied>>>,
    /// The version each pool's page copy is at.
    pool_versions: HashMap<String, u64>,
    /// Each pool's snapshot and changes not yet sent, gathered between flushes.
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
            "pools": pools.iter().map(|p| {
                let mut head = crate::pools::summary_json(p);
                head["round_job"] = json!(p.meta.round_job);
                head
            }).collect::<Vec<_>>(),
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
        let keys = &self.member_keys;
        gather_change(
            &mut self.pool_versions,
            &mut self.pending_pools,
            pool,
            &applied,
            |m| {
                let key = member_key(keys, m);
                (key.clone(), member_json(key, m))
            },
        );
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

    fn member_json(&self, m: &Member) -> Value {
        member_json(member_key(&self.member_keys, m), m)
    }
}

/// A member's key on the page: a keyed hash of its URL, so that no credential is sent as a key.
fn member_key(keys: &std::collections::hash_map::RandomState, m: &Member) -> String {
    format!("{:016x}", keys.hash_one(m.candidate.full_url()))
}

/// Gathers `applied` into `pool`'s pending delta, unless the page's copy, at the version in
/// `versions`, already holds it. A member's last change wins: an upsert replaces the one not yet
/// sent and cancels a pending removal, and a removal cancels a pending upsert. `describe` gives
/// a member's key and its JSON, and is called only for a change that is kept.
fn gather_change(
    versions: &mut HashMap<String, u64>,
    pending: &mut BTreeMap<String, PoolDelta>,
    pool: String,
    applied: &Applied,
    describe: impl FnOnce(&Member) -> (String, Value),
) {
    let version = versions.entry(pool.clone()).or_default();
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
    let Some(kind) = kind else {
        return;
    };
    let (key, json) = describe(member);
    let delta = pending.entry(pool).or_default();
    match kind {
        ChangeKind::Added | ChangeKind::Changed => {
            delta.remove.remove(&key);
            delta.upsert.insert(key, json);
        }
        ChangeKind::Removed => {
            delta.upsert.remove(&key);
            delta.remove.insert(key);
        }
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
        "sources": s.sources.iter().map(|src| {
            let url = mask_url(&src.url);
            json!({
                "state": src.state.name(),
                "candidates": src.candidates,
                "rejected": src.rejected,
                "bytes": src.bytes,
                // A fetch error may quote the URL it fetched.
                "error": if url == src.url {
                    src.error.clone()
                } else {
                    src.error.replace(&src.url, &url)
                },
                "url": url,
            })
        }).collect::<Vec<_>>(),
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
            "url": mask_url(&j.url),
            "ok": j.ok,
            "error": j.error,
        })).collect::<Vec<_>>(),
    })
}

/// Query keys whose values are taken for secrets, matched within the key, ignoring case.
const SECRET_KEYS: [&str; 8] = [
    "key", "token", "secret", "pass", "auth", "sig", "cred", "session",
];

/// `url` with its credentials masked as `***`, as the page shows it: the password of
/// `scheme://user:password@host` (or the whole user part, which may itself be a token), and the
/// values of query keys such as `apikey`, `token` or `password`. Text that is no URL is kept.
fn mask_url(url: &str) -> String {
    let (head, fragment) = match url.find('#') {
        Some(at) => url.split_at(at),
        None => (url, ""),
    };
    let (base, query) = match head.find('?') {
        Some(at) => (&head[..at], Some(&head[at + 1..])),
        None => (head, None),
    };
    let mut masked = String::with_capacity(url.len());
    match base.find("://") {
        Some(at) => {
            let (scheme, rest) = base.split_at(at + 3);
            let end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(end);
            masked.push_str(scheme);
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    match userinfo.split_once(':') {
                        Some((user, _)) => masked.push_str(&format!("{user}:***@")),
                        None => masked.push_str("***@"),
                    }
                    masked.push_str(host);
                }
                None => masked.push_str(authority),
            }
            masked.push_str(path);
        }
        None => masked.push_str(base),
    }
    if let Some(query) = query {
        masked.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, value)) if !value.is_empty() && secret_key(key) => format!("{key}=***"),
                _ => pair.to_string(),
            })
            .collect();
        masked.push_str(&pairs.join("&"));
    }
    masked.push_str(fragment);
    masked
}

fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|secret| key.contains(secret))
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
        assert_eq!(cookie(&headers, &cookie_name(8081)), None);
        headers.append(
            header::COOKIE,
            HeaderValue::from_static(
                "x=1;proxyfleet_session_8082=other ; proxyfleet_session_8081=abc ; y=2",
            ),
        );
        assert_eq!(cookie(&headers, &cookie_name(8081)), Some("abc"));
        assert_eq!(cookie(&headers, &cookie_name(8082)), Some("other"));
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
        Dashboard::new(tokens, 8081, 4, watch::channel(false).1)
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
        assert!(set.starts_with("proxyfleet_session_8081="), "{set}");
        assert!(set.contains("; Path=/dashboard;"), "{set}");
        let mut headers = HeaderMap::new();
        let pair = set.split(';').next().unwrap().to_string();
        headers.insert(header::COOKIE, HeaderValue::from_str(&pair).unwrap());
        assert!(matches!(dashboard.access(&headers), Access::Granted));
        let expired = set_cookie(&dashboard.sign_out(&headers));
        assert!(expired.contains("Max-Age=0"), "{expired}");
        assert!(
            expired.starts_with("proxyfleet_session_8081=;")
                && expired.contains("Path=/dashboard;"),
            "the same cookie is ended: {expired}"
        );
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
        let open = Dashboard::new(TokenCheck::default(), 8081, 4, watch::channel(false).1);
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

    #[tokio::test(start_paused = true)]
    async fn a_wrong_sign_in_is_answered_only_after_the_delay() {
        let dashboard = locked();
        let start = tokio::time::Instant::now();
        let refused = dashboard.sign_in_slowly("guess").await;
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert!(start.elapsed() >= FAILED_SIGN_IN_DELAY);
        let start = tokio::time::Instant::now();
        let signed_in = dashboard.sign_in_slowly("client-secret").await;
        assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "the right token is not held"
        );
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn posts_from_other_sites_are_told_apart() {
        for same in [
            &[][..],
            &[("host", "127.0.0.1:8081")],
            &[
                ("host", "127.0.0.1:8081"),
                ("sec-fetch-site", "same-origin"),
            ],
            &[("sec-fetch-site", "none")],
            &[
                ("host", "127.0.0.1:8081"),
                ("origin", "http://127.0.0.1:8081"),
            ],
            &[
                ("host", "Coord.example:8081"),
                ("origin", "https://coord.example:8081"),
            ],
            &[
                ("host", "127.0.0.1:8081"),
                ("origin", "null"),
                ("sec-fetch-site", "same-origin"),
            ],
        ] {
            assert!(!cross_site(&headers(same)), "{same:?}");
        }
        for other in [
            &[("host", "127.0.0.1:8081"), ("sec-fetch-site", "cross-site")][..],
            &[("host", "127.0.0.1:8081"), ("sec-fetch-site", "same-site")],
            &[
                ("host", "127.0.0.1:8081"),
                ("origin", "http://evil.example"),
            ],
            &[
                ("host", "127.0.0.1:8081"),
                ("origin", "http://127.0.0.1:8082"),
            ],
            &[("host", "127.0.0.1:8081"), ("origin", "null")],
            &[("origin", "http://127.0.0.1:8081")],
        ] {
            assert!(cross_site(&headers(other)), "{other:?}");
        }
    }

    #[test]
    fn source_urls_are_shown_without_their_credentials() {
        for (url, shown) in [
            (
                "https://user:pa55@lists.example/p.txt",
                "https://user:***@lists.example/p.txt",
            ),
            (
                "https://ghp_abc@raw.example/p.txt?x=1#top",
                "https://***@raw.example/p.txt?x=1#top",
            ),
            (
                "http://lists.example/p.txt?apikey=k1&format=txt&token=t2&Access_Token=t3&empty=",
                "http://lists.example/p.txt?apikey=***&format=txt&token=***&Access_Token=***&empty=",
            ),
            (
                "http://lists.example/get?password=x&sig=y&q=a@b",
                "http://lists.example/get?password=***&sig=***&q=a@b",
            ),
            (
                "http://127.0.0.1:1/proxies.txt",
                "http://127.0.0.1:1/proxies.txt",
            ),
            ("list <img src=x>", "list <img src=x>"),
            ("", ""),
        ] {
            assert_eq!(mask_url(url), shown, "{url}");
        }
    }

    fn live_member(port: u16, live: bool, latency: u32) -> Member {
        Member {
            candidate: crate::candidate::Candidate {
                protocol: crate::candidate::Protocol::Http,
                host: "127.0.0.1".into(),
                port,
                auth: Some(Box::new(("u".into(), "pw".into()))),
            },
            live,
            first_seen_ms: 1,
            last_seen_ms: 1,
            last_checked_ms: 1,
            successes: u32::from(live),
            failures: u32::from(!live),
            checks: 1,
            checks_usable: u64::from(live),
            latency_ms: latency,
            latency_avg_ms: latency,
            anonymity: crate::scheduler::Anonymity::Elite,
            exit_ip: String::new(),
            country: String::new(),
            last_reason: crate::scheduler::Reason::None,
            last_detail: String::new(),
            last_job_id: String::new(),
        }
    }

    #[test]
    fn pool_changes_are_coalesced_and_old_versions_skipped() {
        let keys = std::collections::hash_map::RandomState::new();
        let mut versions = HashMap::from([("p".to_string(), 3)]);
        let mut pending: BTreeMap<String, PoolDelta> = BTreeMap::new();
        let gather = |versions: &mut HashMap<String, u64>,
                      pending: &mut BTreeMap<String, PoolDelta>,
                      version,
                      before: Option<Member>,
                      after: Option<Member>| {
            let applied = Applied {
                version,
                before,
                after,
            };
            gather_change(versions, pending, "p".into(), &applied, |m| {
                let key = member_key(&keys, m);
                (key.clone(), member_json(key, m))
            });
        };
        let (a, b) = (live_member(1, true, 100), live_member(2, true, 200));
        // At or below the snapshot's version: already on the page.
        gather(&mut versions, &mut pending, 3, None, Some(a.clone()));
        gather(&mut versions, &mut pending, 2, None, Some(b.clone()));
        assert!(pending.is_empty());
        // Added, then changed: one upsert with the last state.
        gather(&mut versions, &mut pending, 4, None, Some(a.clone()));
        let faster = live_member(1, true, 50);
        gather(
            &mut versions,
            &mut pending,
            5,
            Some(a.clone()),
            Some(faster.clone()),
        );
        // Added, then gone dead: only a removal.
        gather(&mut versions, &mut pending, 6, None, Some(b.clone()));
        gather(
            &mut versions,
            &mut pending,
            7,
            Some(b.clone()),
            Some(live_member(2, false, 200)),
        );
        // A replayed older change is skipped.
        gather(&mut versions, &mut pending, 6, Some(faster.clone()), None);
        // Dead before and after: nothing for the page.
        gather(
            &mut versions,
            &mut pending,
            8,
            Some(live_member(3, false, 1)),
            Some(live_member(3, false, 2)),
        );
        let delta = &pending["p"];
        let key = |m: &Member| member_key(&keys, m);
        assert_eq!(delta.upsert.len(), 1, "{delta:?}");
        assert_eq!(delta.upsert[&key(&a)]["latency_ms"], 50);
        assert_eq!(delta.upsert[&key(&a)]["proxy"], "http://u:***@127.0.0.1:1");
        assert_eq!(delta.remove, BTreeSet::from([key(&b)]));
        assert_eq!(versions["p"], 8);
        // Back again after its removal: the removal is cancelled.
        gather(&mut versions, &mut pending, 9, None, Some(b.clone()));
        let delta = &pending["p"];
        assert!(
            delta.remove.is_empty() && delta.upsert.len() == 2,
            "{delta:?}"
        );
    }
}
