//! The built-in judge: an HTTP endpoint that echoes the caller's address, headers and token, so a
//! check can tell a working proxy from a fake one and grade anonymity without any outside service.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::IntoResponse;
use tokio::net::TcpListener;

/// What the judge saw of a request, as JSON.
fn echo(method: &Method, uri: &Uri, peer: SocketAddr, headers: &HeaderMap) -> String {
    let token = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .unwrap_or("");
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes())
                    .into_owned()
                    .into(),
            )
        })
        .collect();
    serde_json::json!({
        "token": token,
        "remote_addr": peer.ip().to_string(),
        "remote_port": peer.port(),
        "method": method.as_str(),
        "path": uri.path(),
        "headers": headers,
    })
    .to_string()
}

async fn judge(
    method: Method,
    uri: Uri,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        echo(&method, &uri, peer, &headers),
    )
}

/// Serves the judge on `listener` at `/judge` (and `/`) until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/judge", axum::routing::any(judge))
        .route("/", axum::routing::any(judge));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_carries_token_address_and_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("via", "1.1 squid".parse().unwrap());
        let uri: Uri = "http://judge.test/judge?x=1&token=abc123".parse().unwrap();
        let body = echo(
            &Method::GET,
            &uri,
            "127.0.0.7:4000".parse().unwrap(),
            &headers,
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["token"], "abc123");
        assert_eq!(v["remote_addr"], "127.0.0.7");
        assert_eq!(v["headers"]["via"], "1.1 squid");
        assert_eq!(v["path"], "/judge");
    }
}
