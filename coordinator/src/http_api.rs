//! The coordinator's small HTTP API, for tools that do not speak gRPC: a pool's members
//! (`GET /pool/NAME`), one of them at random (`GET /pool/NAME/random`) and the pools
//! (`GET /pools`), as JSON or plain text, and the web dashboard (`/dashboard`), behind the
//! client token when tokens are set, and otherwise only for requests addressed to loopback.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State as Extract};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use proxyfleet_common::auth::{Refusal, TokenCheck};
use tokio::net::TcpListener;

use crate::candidate::Protocol;
use crate::dashboard::{self, Access, Dashboard};
use crate::first_request::Http1Scan;
use crate::listener::{GuardedListener, Plain, PortLimits};
use crate::pools::{self, PoolFilter, PoolOrder};
use crate::scheduler::Anonymity;
use crate::state::{PoolError, State};

/// Longest query string read; a longer one is refused.
const MAX_QUERY: usize = 4096;

/// What the handlers share.
#[derive(Clone)]
struct Api {
    state: State,
    /// The client token, when tokens are set.
    tokens: TokenCheck,
    dashboard: Arc<Dashboard>,
    /// The address the port listens on: a `Host` naming it exactly is this coordinator.
    listen: SocketAddr,
}

/// Whether `host` (a request's `Host` header) names this machine's loopback or exactly `listen`.
///
/// Without a client token the API and the dashboard are open to whoever reaches the port, so a
/// web page the operator visits could point its own name at 127.0.0.1 and read them from the
/// operator's browser; its requests carry that name in `Host`, and are refused.
fn host_allowed(host: &str, listen: SocketAddr) -> bool {
    let host = host.trim();
    if host.eq_ignore_ascii_case(&listen.to_string()) {
        return true;
    }
    // The name without its port: `[v6]` keeps its brackets off, a name or IPv4 its last `:N`.
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, "")) => v6,
            Some((v6, port)) if port.strip_prefix(':').is_some_and(is_port) => v6,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if host.starts_with('[') {
        return name
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    }
    name.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// Refuses (421) a request whose `Host` is neither loopback nor the listen address, when no
/// client token is set; with a token, the token is what keeps other sites out.
async fn check_host(
    Extract(api): Extract<Api>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if api.tokens.expected.is_none() {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()));
        if !host.is_some_and(|h| host_allowed(h, api.listen)) {
            return error(
                StatusCode::MISDIRECTED_REQUEST,
                "without a client token this port answers only requests addressed to localhost, \
                 127.0.0.1, [::1] or its listen address; set --client-token to reach it by \
                 another name",
            );
        }
    }
    next.run(request).await
}

/// How an answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    /// One `scheme://[user:pass@]host:port` a line.
    Txt,
}

/// A request's query, read: which members, in what order, how many, in what format.
#[derive(Debug, Clone, PartialEq)]
struct PoolQuery {
    filter: PoolFilter,
    order: PoolOrder,
    limit: usize,
    format: Format,
}

/// `%XX` and `+` decoded; None for a bad escape or text that is not UTF-8.
fn decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.bytes();
    while let Some(b) = rest.next() {
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let high = (rest.next()? as char).to_digit(16)?;
                let low = (rest.next()? as char).to_digit(16)?;
                bytes.push((high * 16 + low) as u8);
            }
            _ => bytes.push(b),
        }
    }
    String::from_utf8(bytes).ok()
}

/// Reads a query string; an unknown key or a bad value is an error naming it and what is
/// expected.
fn parse_query(query: &str) -> Result<PoolQuery, String> {
    if query.len() > MAX_QUERY {
        return Err(format!("the query is longer than {MAX_QUERY} bytes"));
    }
    let mut q = PoolQuery {
        filter: PoolFilter::default(),
        order: PoolOrder::Score,
        limit: 0,
        format: Format::Json,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key).ok_or_else(|| format!("{key:?} is not a valid query key"))?;
        let value = decode(value).ok_or_else(|| format!("{key}: {value:?} is badly escaped"))?;
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let number = |what: &str| {
            value
                .parse::<u64>()
                .map_err(|_| format!("{key}: {value:?} is not {what}"))
        };
        match key.as_str() {
            "protocol" => {
                for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let protocol = name.parse::<Protocol>().map_err(|_| {
                        format!(
                            "protocol: {name:?} is not one of {}",
                            Protocol::ALL.map(|p| p.scheme()).join(", ")
                        )
                    })?;
                    q.filter.protocols.push(protocol);
                }
            }
            "anonymity" => {
                q.filter.min_anonymity = Some(
                    Anonymity::from_name(value)
                        .filter(|a| *a != Anonymity::Unknown)
                        .ok_or_else(|| {
                            format!(
                                "anonymity: {value:?} is not one of transparent, anonymous, elite"
                            )
                        })?,
                )
            }
            "max_latency_ms" => {
                q.filter.max_latency_ms =
                    Some(u32::try_from(number("a number of milliseconds")?).unwrap_or(u32::MAX))
            }
            "min_score" => {
                let score: f64 = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && (0.0..=100.0).contains(s))
                    .ok_or_else(|| format!("min_score: {value:?} is not a number from 0 to 100"))?;
                q.filter.min_score = Some(score);
            }
            "country" => q.filter.country = Some(value.to_ascii_uppercase()),
            "include_dead" => {
                q.filter.include_dead = match value {
                    "1" | "true" | "yes" => true,
                    "0" | "false" | "no" => false,
                    _ => return Err(format!("include_dead: {value:?} is not true or false")),
                }
            }
            "limit" => q.limit = number("a count")?.min(usize::MAX as u64) as usize,
            "order" => {
                q.order = match value {
                    "score" => PoolOrder::Score,
                    "latency" => PoolOrder::Latency,
                    "recent" => PoolOrder::Recent,
                    "random" => PoolOrder::Random,
                    _ => {
                        return Err(format!(
                            "order: {value:?} is not one of score, latency, recent, random"
                        ));
                    }
                }
            }
            "format" => {
                q.format = match value {
                    "json" => Format::Json,
                    "txt" | "text" => Format::Txt,
                    _ => return Err(format!("format: {value:?} is not json or txt")),
                }
            }
            _ => {
                return Err(format!(
                    "unknown parameter {key:?}; known: protocol, anonymity, max_latency_ms, min_score, country, include_dead, limit, order, format"
                ));
            }
        }
    }
    Ok(q)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() }).to_string() + "\n";
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn pool_error(e: PoolError) -> Response {
    match e {
        PoolError::BadName { .. } => error(StatusCode::BAD_REQUEST, e.to_string()),
        PoolError::NotFound { .. } => error(StatusCode::NOT_FOUND, e.to_string()),
    }
}

impl Api {
    /// The answer refusing the caller, if its token is refused.
    fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match self.tokens.check_header(given) {
            Ok(()) => None,
            Err(Refusal::Unauthenticated(m)) => Some(error(StatusCode::UNAUTHORIZED, m)),
            Err(Refusal::WrongRole(m)) => Some(error(StatusCode::FORBIDDEN, m)),
        }
    }
}

fn json(value: serde_json::Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(&value).expect("json values serialize") + "\n",
    )
        .into_response()
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

impl Api {
    /// Checks the caller's token and the query, reads `name`'s members that pass it (in `order`
    /// and at most `limit`, or as the query says when None), and answers with `answer`.
    fn with_pool(
        &self,
        name: &str,
        uri: &Uri,
        headers: &HeaderMap,
        pick: Option<(PoolOrder, usize)>,
        answer: impl FnOnce(Format, pools::PoolView) -> Response,
    ) -> Response {
        if let Some(refused) = self.refusal(headers) {
            return refused;
        }
        let q = match parse_query(uri.query().unwrap_or_default()) {
            Ok(q) => q,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        let (order, limit) = pick.unwrap_or((q.order, q.limit));
        match self.state.pool(name, &q.filter, order, limit) {
            Ok(view) => answer(q.format, view),
            Err(e) => pool_error(e),
        }
    }
}

async fn pool(
    Extract(api): Extract<Api>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    api.with_pool(&name, &uri, &headers, None, |format, view| match format {
        Format::Txt => text(
            view.members
                .iter()
                .map(|m| format!("{}\n", m.candidate.full_url()))
                .collect(),
        ),
        Format::Json => json(serde_json::json!({
            "pool": view.summary.meta.name,
            "live": view.summary.live,
            "total": view.summary.total,
            "version": view.summary.meta.version,
            "members": view.members.iter().map(pools::member_json).collect::<Vec<_>>(),
        })),
    })
}

async fn random(
    Extract(api): Extract<Api>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let pick = Some((PoolOrder::Random, 1));
    api.with_pool(&name, &uri, &headers, pick, |format, view| {
        let Some(member) = view.members.first() else {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "pool {name:?} has no live proxy that passes the filter ({} live); loosen the filter or wait for a refresh",
                    view.summary.live
                ),
            );
        };
        match format {
            Format::Txt => text(format!("{}\n", member.candidate.full_url())),
            Format::Json => json(pools::member_json(member)),
        }
    })
}

async fn list(Extract(api): Extract<Api>, headers: HeaderMap) -> Response {
    if let Some(refused) = api.refusal(&headers) {
        return refused;
    }
    let pools: Vec<serde_json::Value> = api
        .state
        .pools()
        .iter()
        .map(|p| {
            let mut head = crate::pools::summary_json(p);
            head["files"] = serde_json::json!(p.files);
            head
        })
        .collect();
    json(serde_json::json!({ "pools": pools }))
}

async fn not_found(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no such path {:?}; try /dashboard, /pools, /pool/NAME or /pool/NAME/random",
            uri.path()
        ),
    )
}

/// The value of `key` in a query string or form body, decoded.
fn form_value(text: &str, key: &str) -> Option<String> {
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| decode(k).as_deref() == Some(key))
        .and_then(|(_, v)| decode(v))
}

/// The page, or the sign-in form. A token in the address is not read: addresses end up in
/// proxy logs and the browser's history.
async fn dashboard_page(Extract(api): Extract<Api>, headers: HeaderMap) -> Response {
    dashboard::secure(api.dashboard.page(&headers))
}

/// The answer to a sign-in or sign-out sent from another site's page.
fn cross_site_refusal() -> Response {
    dashboard::secure(error(
        StatusCode::FORBIDDEN,
        "signing in or out is accepted only from the dashboard's own page",
    ))
}

/// The sign-in form's target: `token=...` as a form body; a wrong token is answered slowly.
async fn dashboard_login(
    Extract(api): Extract<Api>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if dashboard::cross_site(&headers) {
        return cross_site_refusal();
    }
    let token = std::str::from_utf8(&body)
        .ok()
        .and_then(|b| form_value(b, "token"))
        .unwrap_or_default();
    dashboard::secure(api.dashboard.sign_in_slowly(&token).await)
}

async fn dashboard_logout(Extract(api): Extract<Api>, headers: HeaderMap) -> Response {
    if dashboard::cross_site(&headers) {
        return cross_site_refusal();
    }
    dashboard::secure(api.dashboard.sign_out(&headers))
}

async fn dashboard_events(Extract(api): Extract<Api>, headers: HeaderMap) -> Response {
    dashboard::secure(match api.dashboard.access(&headers) {
        Access::Granted => api.dashboard.events(api.state.clone()),
        Access::Refused(Refusal::Unauthenticated(m)) => error(StatusCode::UNAUTHORIZED, m),
        Access::Refused(Refusal::WrongRole(m)) => error(StatusCode::FORBIDDEN, m),
    })
}

/// A file of the page: no data in it, so it is served to anyone.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    dashboard::secure(
        (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
    )
}

fn routes(api: Api) -> Router {
    use axum::routing::{get, post};
    Router::new()
        .route("/pools", get(list))
        .route("/pool/{name}", get(pool))
        .route("/pool/{name}/random", get(random))
        .route(
            "/",
            get(|| async { axum::response::Redirect::to("/dashboard") }),
        )
        .route("/dashboard", get(dashboard_page))
        .route(
            "/dashboard/login",
            post(dashboard_login).layer(axum::extract::DefaultBodyLimit::max(4096)),
        )
        .route("/dashboard/logout", post(dashboard_logout))
        .route("/dashboard/events", get(dashboard_events))
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", dashboard::APP_JS) }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset("text/css; charset=utf-8", dashboard::STYLE_CSS) }),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            check_host,
        ))
        .with_state(api)
}

/// Serves the API and the dashboard on `listener` until `shutdown` completes; `tokens` is the
/// client token check.
pub(crate) async fn serve(
    listener: TcpListener,
    state: State,
    tokens: TokenCheck,
    limits: PortLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listen = listener.local_addr()?;
    let listener = GuardedListener::<_, Http1Scan>::new(listener, Plain, "http", limits);
    // Event streams never end by themselves: they end when this turns true.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let dashboard = Arc::new(Dashboard::new(
        tokens.clone(),
        listen.port(),
        state.config().max_watchers,
        stop,
    ));
    let api = Api {
        state,
        tokens,
        dashboard,
        listen,
    };
    axum::serve(listener, routes(api).into_make_service())
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_read_every_filter() {
        let q = parse_query(
            "protocol=http,socks5&anonymity=anonymous&max_latency_ms=800&min_score=50.5&country=de&include_dead=true&limit=10&order=latency&format=txt",
        )
        .unwrap();
        assert_eq!(q.filter.protocols, vec![Protocol::Http, Protocol::Socks5]);
        assert_eq!(q.filter.min_anonymity, Some(Anonymity::Anonymous));
        assert_eq!(q.filter.max_latency_ms, Some(800));
        assert_eq!(q.filter.min_score, Some(50.5));
        assert_eq!(q.filter.country.as_deref(), Some("DE"));
        assert!(q.filter.include_dead);
        assert_eq!(
            (q.limit, q.order, q.format),
            (10, PoolOrder::Latency, Format::Txt)
        );
        let empty = parse_query("").unwrap();
        assert_eq!(empty.filter, PoolFilter::default());
        assert_eq!(
            parse_query("protocol=&limit=").unwrap().limit,
            0,
            "empty values are unset"
        );
        assert_eq!(
            parse_query("protocol=socks5%2Chttp")
                .unwrap()
                .filter
                .protocols,
            vec![Protocol::Socks5, Protocol::Http]
        );
    }

    #[test]
    fn bad_queries_name_what_is_wrong() {
        for (query, names) in [
            ("protocol=ftp", "protocol: \"ftp\""),
            ("anonymity=unknown", "anonymity"),
            ("max_latency_ms=fast", "max_latency_ms"),
            ("min_score=101", "min_score"),
            ("limit=-1", "limit"),
            ("order=best", "order"),
            ("format=xml", "format"),
            ("colour=red", "unknown parameter \"colour\""),
            ("country=%zz", "badly escaped"),
        ] {
            let e = parse_query(query).unwrap_err();
            assert!(e.contains(names), "{query}: {e}");
        }
        assert!(parse_query(&"a".repeat(MAX_QUERY + 1)).is_err());
    }

    #[test]
    fn only_loopback_names_or_the_listen_address_are_served_without_a_token() {
        let listen: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        for host in [
            "localhost",
            "LocalHost:8081",
            "localhost.:8081",
            "127.0.0.1",
            "127.0.0.1:8081",
            "127.9.8.7:1",
            "[::1]",
            "[::1]:8081",
        ] {
            assert!(host_allowed(host, listen), "{host} refused");
        }
        for host in [
            "evil.example",
            "evil.example:8081",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "127.0.0.1:80:80",
            "127.0.0.1:x",
            "10.0.0.1:8081",
            "0.0.0.0:8081",
            "[::2]:8081",
            "[::1]x",
            "::1",
            "",
        ] {
            assert!(!host_allowed(host, listen), "{host} served");
        }
        let wide: SocketAddr = "0.0.0.0:8081".parse().unwrap();
        assert!(host_allowed("0.0.0.0:8081", wide));
        assert!(!host_allowed("0.0.0.0:8082", wide));
    }

    #[test]
    fn form_values_are_found_by_key_and_decoded() {
        let body = "a=1&token=abc%2Bdef+ghi%25&empty=&flag&t%6Fken2=x";
        assert_eq!(form_value(body, "token").as_deref(), Some("abc+def ghi%"));
        assert_eq!(form_value(body, "a").as_deref(), Some("1"));
        assert_eq!(form_value(body, "empty").as_deref(), Some(""));
        assert_eq!(
            form_value(body, "flag"),
            None,
            "a key without '=' has no value"
        );
        assert_eq!(
            form_value(body, "token2").as_deref(),
            Some("x"),
            "keys are decoded"
        );
        assert_eq!(form_value(body, "missing"), None);
        assert_eq!(form_value("token=a&token=b", "token").as_deref(), Some("a"));
        // A browser encodes a literal '+' as %2B and a space as '+'.
        assert_eq!(form_value("token=a%2Bb", "token").as_deref(), Some("a+b"));
        assert_eq!(form_value("token=a+b", "token").as_deref(), Some("a b"));
        assert_eq!(
            form_value("token=%C3%A9", "token").as_deref(),
            Some("\u{e9}")
        );
        for bad in [
            "token=%",
            "token=%2",
            "token=%zz",
            "token=%+1",
            "token=%-1",
            "token=%FF",
        ] {
            assert_eq!(form_value(bad, "token"), None, "{bad}");
        }
    }
}
