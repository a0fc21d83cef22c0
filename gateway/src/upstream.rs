//! Reaching a destination through one upstream proxy: a tunnel (CONNECT, SOCKS4/4a, SOCKS5/5h) to
//! `host:port`, or a plain connection to an HTTP upstream that a forward request is sent to.

use std::net::IpAddr;
use std::time::Duration;

use proxyfleet_common::dial::{self, HandshakeError, Socks4Dest, Socks5Dest};
use proxyfleet_common::guard::Guard;
use proxyfleet_proto::v1 as pb;
use tokio::net::TcpStream;

use crate::choose::Upstream;

/// Why an upstream could not be used; the gateway tries another.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream's handshake failed: {0}")]
    Handshake(String),
    #[error("the upstream did not finish its handshake within {0:?}")]
    Timeout(Duration),
}

impl UpstreamError {
    /// A short reason for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Handshake(_) => "handshake",
            UpstreamError::Timeout(_) => "timeout",
        }
    }
}

fn handshake(e: HandshakeError) -> UpstreamError {
    UpstreamError::Handshake(match e {
        HandshakeError::Rejected(d)
        | HandshakeError::Auth(d)
        | HandshakeError::Fake(d)
        | HandshakeError::Garbled(d) => d,
        HandshakeError::Io(_, d) => d,
    })
}

/// Whether forward requests for `http://` URLs go to this upstream as they are (an HTTP proxy)
/// rather than through a tunnel.
pub fn forwards(upstream: &Upstream) -> bool {
    matches!(upstream.protocol, pb::Protocol::Http | pb::Protocol::Https)
}

/// A TCP connection to the upstream itself, where `guard` allows.
pub async fn connect(
    upstream: &Upstream,
    guard: Guard,
    limit: Duration,
) -> Result<TcpStream, UpstreamError> {
    let tcp = tokio::time::timeout(
        limit,
        guard.connect(&upstream.host, upstream.port, Some(limit)),
    )
    .await
    .map_err(|_| UpstreamError::Timeout(limit))?
    .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// A tunnel through `upstream` to `host:port`, handshake done, within `limit`.
pub async fn tunnel(
    upstream: &Upstream,
    host: &str,
    port: u16,
    guard: Guard,
    limit: Duration,
) -> Result<TcpStream, UpstreamError> {
    let work = async {
        let mut tcp = connect(upstream, guard, limit).await?;
        let auth = upstream.auth.as_ref();
        let ip: Option<IpAddr> = host.trim_matches(['[', ']']).parse().ok();
        match upstream.protocol {
            pb::Protocol::Http | pb::Protocol::Https => {
                let authority = match ip {
                    Some(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
                    _ => format!("{host}:{port}"),
                };
                dial::http_connect_to(&mut tcp, &authority, auth).await
            }
            pb::Protocol::Socks4 | pb::Protocol::Socks4a => {
                let dest = match ip {
                    Some(IpAddr::V4(v4)) => Socks4Dest::Ip(v4),
                    _ => Socks4Dest::Host(host.to_string()),
                };
                let user_id = auth.map(|(u, _)| u.as_str()).unwrap_or("");
                dial::socks4_connect(&mut tcp, &dest, port, user_id).await
            }
            pb::Protocol::Socks5 | pb::Protocol::Socks5h => {
                let dest = match ip {
                    Some(ip) => Socks5Dest::Ip(ip),
                    None => Socks5Dest::Host(host.to_string()),
                };
                dial::socks5_connect(&mut tcp, &dest, port, auth).await
            }
            pb::Protocol::Unspecified => Err(HandshakeError::Garbled("unknown protocol".into())),
        }
        .map_err(handshake)?;
        Ok(tcp)
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| UpstreamError::Timeout(limit))?
}
