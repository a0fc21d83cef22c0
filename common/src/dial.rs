//! Talking through a proxy: the handshakes of HTTP forward, CONNECT, SOCKS4/4a and SOCKS5/5h, and
//! a minimal HTTP/1.1 exchange with the judge or a check target. Encoding and decoding are pure functions; the IO
//! functions only move their bytes.

use std::net::IpAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest response head accepted from a proxy or a judge.
const MAX_HEAD: usize = 16 * 1024;
/// Most bytes of a judge's body read; a judge's answer is small.
pub const MAX_BODY: usize = 64 * 1024;

/// Where a request goes: the judge, parsed by the one URL parser the coordinator validates with.
pub use crate::url::HttpUrl as JudgeUrl;

/// What went wrong in a handshake, with the proxy's own words where it gave some.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The proxy refused or failed the request (SOCKS reply code, CONNECT status).
    Rejected(String),
    /// The proxy wants credentials we do not have, or refused ours.
    Auth(String),
    /// The proxy answered like a web server, not a proxy: a fake.
    Fake(String),
    /// The bytes did not make sense for the protocol.
    Garbled(String),
    /// The connection broke.
    Io(std::io::ErrorKind, String),
}

impl From<std::io::Error> for HandshakeError {
    fn from(e: std::io::Error) -> Self {
        HandshakeError::Io(e.kind(), e.to_string())
    }
}

/// Base64 of `user:pass`, for Basic auth.
pub fn basic_auth(user: &str, pass: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{pass}");
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The HTTP request for the judge. `absolute` for a forward proxy (absolute-form target).
pub fn judge_request(
    judge: &JudgeUrl,
    token: &str,
    absolute: bool,
    proxy_auth: Option<&(String, String)>,
) -> Vec<u8> {
    get_request(
        judge,
        &judge.path_with_token(token),
        "application/json",
        absolute,
        proxy_auth,
    )
}

/// The HTTP request for a check target: its URL as given, asking for any content.
pub fn target_request(
    target: &JudgeUrl,
    absolute: bool,
    proxy_auth: Option<&(String, String)>,
) -> Vec<u8> {
    get_request(target, &target.path, "*/*", absolute, proxy_auth)
}

fn get_request(
    url: &JudgeUrl,
    path: &str,
    accept: &str,
    absolute: bool,
    proxy_auth: Option<&(String, String)>,
) -> Vec<u8> {
    let target = if absolute {
        format!(
            "{}://{}{path}",
            if url.https { "https" } else { "http" },
            url.authority()
        )
    } else {
        path.to_string()
    };
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: proxyfleet/{}\r\nAccept: {accept}\r\nConnection: close\r\n",
        url.authority(),
        env!("CARGO_PKG_VERSION")
    );
    finish_request(request, proxy_auth)
}

/// The CONNECT request opening a tunnel to the judge.
pub fn connect_request(judge: &JudgeUrl, proxy_auth: Option<&(String, String)>) -> Vec<u8> {
    let target = judge.authority_with_port();
    finish_request(
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"),
        proxy_auth,
    )
}

/// Adds the proxy's credentials, if any, and the blank line ending the head.
fn finish_request(mut request: String, proxy_auth: Option<&(String, String)>) -> Vec<u8> {
    if let Some((user, pass)) = proxy_auth {
        request.push_str(&format!(
            "Proxy-Authorization: Basic {}\r\n",
            basic_auth(user, pass)
        ));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// A parsed HTTP response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> Option<usize> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }
}

/// Parses a response head (everything before the blank line).
pub fn parse_head(head: &[u8]) -> Result<ResponseHead, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!(
            "not an HTTP response: {:?}",
            status_line.chars().take(40).collect::<String>()
        ));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(ResponseHead { status, headers })
}

/// Reads up to the end of a response head; returns the head and any bytes read past it.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(ResponseHead, Vec<u8>), HandshakeError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = parse_head(&buf[..end]).map_err(HandshakeError::Garbled)?;
            return Ok((head, buf[end + 4..].to_vec()));
        }
        if buf.len() > MAX_HEAD {
            return Err(HandshakeError::Garbled("response head too long".into()));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(if buf.is_empty() {
                HandshakeError::Io(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed without answering".into(),
                )
            } else {
                HandshakeError::Garbled("closed in the middle of a response head".into())
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Opens a CONNECT tunnel through an HTTP proxy.
pub async fn http_connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    judge: &JudgeUrl,
    auth: Option<&(String, String)>,
) -> Result<(), HandshakeError> {
    http_connect_to(stream, &judge.authority_with_port(), auth).await
}

/// Opens a CONNECT tunnel through an HTTP proxy to `authority` (`host:port`, IPv6 in brackets).
pub async fn http_connect_to<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    authority: &str,
    auth: Option<&(String, String)>,
) -> Result<(), HandshakeError> {
    stream
        .write_all(&finish_request(
            format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"),
            auth,
        ))
        .await?;
    let (head, extra) = read_head(stream).await?;
    match head.status {
        200..=299 => {
            // A tunnel has no body: a 200 carrying one is a web server answering everything.
            if head.content_length().is_some_and(|n| n > 0) || !extra.is_empty() || head.chunked() {
                return Err(HandshakeError::Fake(
                    "answered CONNECT with a body, like a web server".into(),
                ));
            }
            Ok(())
        }
        407 => Err(HandshakeError::Auth(
            "proxy authentication required (407)".into(),
        )),
        status => Err(HandshakeError::Rejected(format!(
            "CONNECT answered {status}"
        ))),
    }
}

/// SOCKS4 (IPv4 address) or SOCKS4a (host name) CONNECT request.
pub fn socks4_request(dest: &Socks4Dest, port: u16, user_id: &str) -> Vec<u8> {
    let mut req = vec![4, 1];
    req.extend_from_slice(&port.to_be_bytes());
    match dest {
        Socks4Dest::Ip(ip) => req.extend_from_slice(&ip.octets()),
        Socks4Dest::Host(_) => req.extend_from_slice(&[0, 0, 0, 1]),
    }
    req.extend_from_slice(user_id.as_bytes());
    req.push(0);
    if let Socks4Dest::Host(host) = dest {
        req.extend_from_slice(host.as_bytes());
        req.push(0);
    }
    req
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Socks4Dest {
    Ip(std::net::Ipv4Addr),
    Host(String),
}

/// Checks a SOCKS4 reply (8 bytes).
pub fn socks4_reply(reply: &[u8; 8]) -> Result<(), HandshakeError> {
    if reply[0] != 0 {
        return Err(HandshakeError::Garbled(format!(
            "SOCKS4 reply version {} instead of 0",
            reply[0]
        )));
    }
    match reply[1] {
        0x5a => Ok(()),
        0x5b => Err(HandshakeError::Rejected(
            "SOCKS4 request rejected or failed (0x5b)".into(),
        )),
        0x5c | 0x5d => Err(HandshakeError::Auth(format!(
            "SOCKS4 identd check failed ({:#x})",
            reply[1]
        ))),
        other => Err(HandshakeError::Garbled(format!(
            "SOCKS4 reply code {other:#x}"
        ))),
    }
}

pub async fn socks4_connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    dest: &Socks4Dest,
    port: u16,
    user_id: &str,
) -> Result<(), HandshakeError> {
    stream
        .write_all(&socks4_request(dest, port, user_id))
        .await?;
    let mut reply = [0u8; 8];
    stream.read_exact(&mut reply).await?;
    socks4_reply(&reply)
}

/// Where a SOCKS5 proxy should connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Socks5Dest {
    Ip(IpAddr),
    Host(String),
}

pub fn socks5_connect_request(dest: &Socks5Dest, port: u16) -> Result<Vec<u8>, HandshakeError> {
    let mut req = vec![5, 1, 0];
    match dest {
        Socks5Dest::Ip(IpAddr::V4(v4)) => {
            req.push(1);
            req.extend_from_slice(&v4.octets());
        }
        Socks5Dest::Ip(IpAddr::V6(v6)) => {
            req.push(4);
            req.extend_from_slice(&v6.octets());
        }
        Socks5Dest::Host(host) => {
            let len = u8::try_from(host.len())
                .map_err(|_| HandshakeError::Garbled("host name too long for SOCKS5".into()))?;
            req.push(3);
            req.push(len);
            req.extend_from_slice(host.as_bytes());
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    Ok(req)
}

fn socks5_reply_error(code: u8) -> HandshakeError {
    let what = match code {
        1 => "general failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused by the destination",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unknown error",
    };
    HandshakeError::Rejected(format!("SOCKS5 connect failed: {what} ({code:#x})"))
}

pub async fn socks5_connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    dest: &Socks5Dest,
    port: u16,
    auth: Option<&(String, String)>,
) -> Result<(), HandshakeError> {
    let greeting: &[u8] = if auth.is_some() {
        &[5, 2, 0, 2]
    } else {
        &[5, 1, 0]
    };
    stream.write_all(greeting).await?;
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await?;
    if choice[0] != 5 {
        return Err(HandshakeError::Garbled(format!(
            "SOCKS5 greeting answered with version {}",
            choice[0]
        )));
    }
    match (choice[1], auth) {
        (0, _) => {}
        (2, Some((user, pass))) => {
            let (Ok(ulen), Ok(plen)) = (u8::try_from(user.len()), u8::try_from(pass.len())) else {
                return Err(HandshakeError::Auth(
                    "credentials longer than 255 bytes".into(),
                ));
            };
            let mut req = vec![1, ulen];
            req.extend_from_slice(user.as_bytes());
            req.push(plen);
            req.extend_from_slice(pass.as_bytes());
            stream.write_all(&req).await?;
            let mut status = [0u8; 2];
            stream.read_exact(&mut status).await?;
            if status[1] != 0 {
                return Err(HandshakeError::Auth(
                    "SOCKS5 proxy refused the credentials".into(),
                ));
            }
        }
        (0xff, _) | (2, None) => {
            return Err(HandshakeError::Auth(
                "SOCKS5 proxy accepts none of our auth methods".into(),
            ));
        }
        (other, _) => {
            return Err(HandshakeError::Garbled(format!(
                "SOCKS5 proxy chose unknown method {other:#x}"
            )));
        }
    }
    stream
        .write_all(&socks5_connect_request(dest, port)?)
        .await?;
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(HandshakeError::Garbled(format!(
            "SOCKS5 reply version {}",
            head[0]
        )));
    }
    if head[1] != 0 {
        return Err(socks5_reply_error(head[1]));
    }
    let skip = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len).await?;
            usize::from(len[0]) + 2
        }
        other => {
            return Err(HandshakeError::Garbled(format!(
                "SOCKS5 reply address type {other:#x}"
            )));
        }
    };
    let mut bound = vec![0u8; skip];
    stream.read_exact(&mut bound).await?;
    Ok(())
}

/// Sends the request and reads the response: its head and up to `max_body` bytes of body.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    max_body: usize,
) -> Result<(ResponseHead, Vec<u8>), HandshakeError> {
    stream.write_all(request).await?;
    stream.flush().await?;
    let (head, mut body) = read_head(stream).await?;
    let limit = head.content_length().unwrap_or(max_body).min(max_body);
    let mut chunk = [0u8; 4096];
    while body.len() < limit {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            // A close without TLS close_notify after the body is common and harmless.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !body.is_empty() => break,
            Err(e) => return Err(e.into()),
        }
        if head.chunked() && find(&body, b"\r\n0\r\n").is_some() {
            break;
        }
    }
    body.truncate(max_body);
    if head.chunked() {
        body = dechunk(&body);
    }
    Ok((head, body))
}

/// Decodes a chunked body as far as it goes.
pub fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = find(raw, b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        let end = (start + size).min(raw.len());
        out.extend_from_slice(&raw[start..end]);
        if end + 2 > raw.len() {
            break;
        }
        raw = &raw[end + 2..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_base64() {
        assert_eq!(
            basic_auth("Aladdin", "open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(basic_auth("a", "b"), "YTpi");
        assert_eq!(basic_auth("fleet", "secret"), "ZmxlZXQ6c2VjcmV0");
    }

    #[test]
    fn requests_have_the_right_form() {
        let j = JudgeUrl::parse("http://127.0.0.1:9/judge").unwrap();
        let forward = String::from_utf8(judge_request(
            &j,
            "tok",
            true,
            Some(&("u".into(), "p".into())),
        ))
        .unwrap();
        assert!(
            forward.starts_with(
                "GET http://127.0.0.1:9/judge?token=tok HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"
            ),
            "{forward}"
        );
        assert!(forward.contains("Proxy-Authorization: Basic dTpw\r\n"));
        assert!(forward.ends_with("\r\n\r\n"));
        let origin = String::from_utf8(judge_request(&j, "tok", false, None)).unwrap();
        assert!(origin.starts_with("GET /judge?token=tok HTTP/1.1\r\n"));
        assert!(!origin.contains("Proxy-Authorization"));
        let connect = String::from_utf8(connect_request(
            &JudgeUrl::parse("https://j.test/").unwrap(),
            None,
        ))
        .unwrap();
        assert_eq!(
            connect,
            "CONNECT j.test:443 HTTP/1.1\r\nHost: j.test:443\r\n\r\n"
        );
        let shop = JudgeUrl::parse("http://shop.test:8080/item?id=7").unwrap();
        let target = String::from_utf8(target_request(&shop, true, None)).unwrap();
        assert!(
            target.starts_with(
                "GET http://shop.test:8080/item?id=7 HTTP/1.1\r\nHost: shop.test:8080\r\n"
            ),
            "{target}"
        );
        assert!(!target.contains("token="), "{target}");
    }

    #[test]
    fn socks_requests_encode_addresses() {
        let v4 = socks4_request(&Socks4Dest::Ip("1.2.3.4".parse().unwrap()), 80, "me");
        assert_eq!(v4, [4, 1, 0, 80, 1, 2, 3, 4, b'm', b'e', 0]);
        let v4a = socks4_request(&Socks4Dest::Host("ab".into()), 443, "");
        assert_eq!(v4a, [4, 1, 1, 187, 0, 0, 0, 1, 0, b'a', b'b', 0]);
        let s5 = socks5_connect_request(&Socks5Dest::Host("ab".into()), 80).unwrap();
        assert_eq!(s5, [5, 1, 0, 3, 2, b'a', b'b', 0, 80]);
        let s5 = socks5_connect_request(&Socks5Dest::Ip("::1".parse().unwrap()), 1).unwrap();
        assert_eq!(s5.len(), 4 + 16 + 2);
        assert!(socks5_connect_request(&Socks5Dest::Host("x".repeat(300)), 1).is_err());
    }

    #[test]
    fn socks4_replies_are_classified() {
        assert!(socks4_reply(&[0, 0x5a, 0, 0, 0, 0, 0, 0]).is_ok());
        assert!(matches!(
            socks4_reply(&[0, 0x5b, 0, 0, 0, 0, 0, 0]),
            Err(HandshakeError::Rejected(_))
        ));
        assert!(matches!(
            socks4_reply(&[0, 0x5d, 0, 0, 0, 0, 0, 0]),
            Err(HandshakeError::Auth(_))
        ));
        assert!(matches!(
            socks4_reply(&[b'H', b'T', 0, 0, 0, 0, 0, 0]),
            Err(HandshakeError::Garbled(_))
        ));
    }

    #[test]
    fn heads_parse_and_garbage_does_not() {
        let head = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nVia: 1.1 x").unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-length"), Some("5"));
        assert_eq!(head.header("VIA"), Some("1.1 x"));
        assert!(parse_head(b"\x05\x00garbage").is_err());
        assert!(parse_head(b"HTTP/1.1 abc").is_err());
    }

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n"),
            b"hello world"
        );
        assert_eq!(dechunk(b"zz\r\n"), b"");
        assert_eq!(dechunk(b"10\r\nshort"), b"short");
    }

    #[tokio::test]
    async fn connect_refuses_a_fake_200_with_a_body() {
        let j = JudgeUrl::parse("https://j.test/").unwrap();
        let (mut client, mut server) = tokio::io::duplex(4096);
        server
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
            .await
            .unwrap();
        let err = http_connect(&mut client, &j, None).await.unwrap_err();
        assert!(matches!(err, HandshakeError::Fake(_)), "{err:?}");

        let (mut client, mut server) = tokio::io::duplex(4096);
        server
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .unwrap();
        http_connect(&mut client, &j, None).await.unwrap();

        let (mut client, mut server) = tokio::io::duplex(4096);
        server
            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
            .await
            .unwrap();
        assert!(matches!(
            http_connect(&mut client, &j, None).await,
            Err(HandshakeError::Auth(_))
        ));
    }

    #[tokio::test]
    async fn exchange_reads_a_bounded_body() {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let body = "x".repeat(MAX_BODY * 2);
        server
            .write_all(format!("HTTP/1.1 200 OK\r\n\r\n{body}").as_bytes())
            .await
            .unwrap();
        let (head, got) = exchange(&mut client, b"GET / HTTP/1.1\r\n\r\n", MAX_BODY)
            .await
            .unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(got.len(), MAX_BODY);
    }
}
