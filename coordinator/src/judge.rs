//! The built-in judge: an HTTP (or HTTPS) endpoint that echoes the caller's address, headers and
//! token, so a check can tell a working proxy from a fake one and grade anonymity without any
//! outside service.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::connect_info::Connected;
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::IntoResponse;
use axum::serve::IncomingStream;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::first_request::Http1Scan;
use crate::listener::{GuardedListener, Handshake, Plain, PortLimits};

/// The address a request came from, over plain TCP or TLS.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

impl<H: Handshake> Connected<IncomingStream<'_, GuardedListener<H, Http1Scan>>> for Peer {
    fn connect_info(stream: IncomingStream<'_, GuardedListener<H, Http1Scan>>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// Reads a PEM certificate chain and private key into a TLS acceptor for the judge.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<TlsAcceptor, crate::Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| crate::Error::tls("--judge-tls-cert", cert, e))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| crate::Error::tls("--judge-tls-key", key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| crate::Error::tls("--judge-tls-cert and --judge-tls-key", cert, e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Request headers left out of the echo.
const NOT_ECHOED: [header::HeaderName; 2] = [header::COOKIE, header::AUTHORIZATION];

/// What the judge saw of a request, as JSON.
fn echo(method: &Method, uri: &Uri, peer: SocketAddr, headers: &HeaderMap) -> String {
    let token = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .unwrap_or("");
    // A browser's cookies and credentials for this host are no concern of a check (it looks for
    // headers a proxy adds), and are not sent back to whoever made the request.
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .filter(|(name, _)| !NOT_ECHOED.contains(name))
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
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
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

fn routes() -> Router {
    Router::new()
        .route("/judge", axum::routing::any(judge))
        .route("/", axum::routing::any(judge))
}

/// Serves the judge on `listener` at `/judge` (and `/`), over TLS when `tls` is given, until
/// `shutdown` completes. A TLS handshake runs beside the accept loop, and with the request head
/// must arrive within `limits.first_request_timeout`.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: PortLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        None => {
            let listener = GuardedListener::<_, Http1Scan>::new(listener, Plain, "judge", limits);
            axum::serve(
                listener,
                routes().into_make_service_with_connect_info::<Peer>(),
            )
            .with_graceful_shutdown(shutdown)
            .await
        }
        Some(acceptor) => {
            let listener =
                GuardedListener::<_, Http1Scan>::new(listener, acceptor, "judge", limits);
            axum::serve(
                listener,
                routes().into_make_service_with_connect_info::<Peer>(),
            )
            .with_graceful_shutdown(shutdown)
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_carries_token_address_and_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("via", "1.1 squid".parse().unwrap());
        headers.insert("cookie", "proxyfleet_session_8081=abc".parse().unwrap());
        headers.insert("authorization", "Bearer client-secret".parse().unwrap());
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
        assert!(v["headers"].get("cookie").is_none(), "{body}");
        assert!(!body.contains("client-secret"), "{body}");
    }
}
