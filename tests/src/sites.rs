//! Web sites on loopback for checks to reach through proxies: public-style echo judges (httpbin,
//! azenv and icanhazip shapes) and a shop whose pages answer in several ways, as a user's check
//! target would.
//!
//! Each site is a small HTTP/1.1 server answering one request per connection. Dropping a [`Site`]
//! stops it and every connection it serves.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Longest request head a site reads.
const HEAD_LIMIT: usize = 16 * 1024;
/// Time a client gets to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A request as a site saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The address that connected: a proxy's egress, or the worker itself.
    pub peer: IpAddr,
    pub path: String,
    pub query: String,
    /// Header names and values as sent.
    pub headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a site answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    /// A 200 answer of `body` as plain text.
    pub fn ok(body: impl Into<String>) -> Reply {
        Reply::new(200, "text/plain", body)
    }

    fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
}

type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// A running site. Dropping it stops the server.
pub struct Site {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Site {
    fn drop(&mut self) {
        // The accept task owns the connection tasks: aborting it ends them all.
        self.task.abort();
    }
}

impl Site {
    /// Serves `handler` on `ip:0`.
    pub async fn spawn(
        ip: IpAddr,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> io::Result<Site> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        let handler: Handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let handler = handler.clone();
                            conns.spawn(async move {
                                let _ = serve(stream, peer.ip(), &handler).await;
                            });
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(Site { addr, task })
    }

    /// The URL of `path` on this site.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// An httpbin-style judge: `/get` answers JSON with `args` (the query), `headers`, `origin`
    /// (the `X-Forwarded-For` chain, then the address that connected) and `url`; `/json` the
    /// same without `args` and `url`.
    pub async fn httpbin(ip: IpAddr) -> io::Result<Site> {
        Site::spawn(ip, |req| {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone().into()))
                .collect();
            let mut origin: Vec<String> = req
                .header("x-forwarded-for")
                .map(|chain| chain.split(',').map(|a| a.trim().to_string()).collect())
                .unwrap_or_default();
            origin.push(req.peer.to_string());
            let origin = origin.join(", ");
            match req.path.as_str() {
                "/get" => {
                    let args: serde_json::Map<String, serde_json::Value> = req
                        .query
                        .split('&')
                        .filter_map(|pair| pair.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.into()))
                        .collect();
                    let body = serde_json::json!({
                        "args": args,
                        "headers": headers,
                        "origin": origin,
                        "url": format!("http://{}{}?{}", req.header("host").unwrap_or(""), req.path, req.query),
                    });
                    Reply::new(200, "application/json", body.to_string())
                }
                "/json" => {
                    let body = serde_json::json!({"headers": headers, "origin": origin});
                    Reply::new(200, "application/json", body.to_string())
                }
                _ => Reply::new(404, "text/plain", "not found"),
            }
        })
        .await
    }

    /// An azenv-style judge: an HTML page listing `HTTP_*` lines for the request headers and
    /// `REMOTE_ADDR = <address that connected>`.
    pub async fn azenv(ip: IpAddr) -> io::Result<Site> {
        Site::spawn(ip, |req| {
            let mut body =
                String::from("<html><head><title>AZ Environment</title></head>\n<body><pre>\n");
            for (name, value) in &req.headers {
                let name = name.to_ascii_uppercase().replace('-', "_");
                body.push_str(&format!("HTTP_{name} = {value}\n"));
            }
            body.push_str(&format!("REMOTE_ADDR = {}\n", req.peer));
            body.push_str("REQUEST_TIME = 1700000000\n</pre></body></html>\n");
            Reply::new(200, "text/html", body)
        })
        .await
    }

    /// An icanhazip-style judge: the body is the address that connected, and a newline.
    pub async fn icanhazip(ip: IpAddr) -> io::Result<Site> {
        Site::spawn(ip, |req| {
            Reply::new(200, "text/plain", format!("{}\n", req.peer))
        })
        .await
    }

    /// A shop, as a user's check target: `/item` answers 200 with "Add to cart" in the page;
    /// `/down` 503; `/sold-out` 200 without it; `/slow` the item page after `slow`.
    pub async fn shop(ip: IpAddr, slow: Duration) -> io::Result<Site> {
        const ITEM: &str = "<html><body><h1>Teapot</h1><p>12 in stock</p><button>Add to cart</button></body></html>";
        Site::spawn(ip, move |req| match req.path.as_str() {
            "/item" => Reply::new(200, "text/html", ITEM),
            "/down" => Reply::new(503, "text/html", "<html>maintenance</html>"),
            "/sold-out" => Reply::new(
                200,
                "text/html",
                "<html><body><h1>Teapot</h1><p>Sold out</p></body></html>",
            ),
            "/slow" => Reply {
                delay: slow,
                ..Reply::new(200, "text/html", ITEM)
            },
            _ => Reply::new(404, "text/html", "<html>not found</html>"),
        })
        .await
    }
}

/// Reads one request, answers it and closes.
async fn serve(mut stream: TcpStream, peer: IpAddr, handler: &Handler) -> io::Result<()> {
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request head timed out"))??;
    let Some(request) = parse(&head, peer) else {
        stream
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await?;
        return stream.shutdown().await;
    };
    let reply = handler(&request);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let answer = format!(
        "HTTP/1.1 {} Site\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        reply.status,
        reply.content_type,
        reply.body.len(),
        reply.body
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

async fn read_head(stream: &mut TcpStream) -> io::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > HEAD_LIMIT {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn parse(head: &str, peer: IpAddr) -> Option<Request> {
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (_method, target) = (parts.next()?, parts.next()?);
    // A forward proxy may pass the absolute form on; the path is what follows the authority.
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Request {
        peer,
        path: path.to_string(),
        query: query.to_string(),
        headers,
    })
}
