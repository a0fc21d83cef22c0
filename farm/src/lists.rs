//! A list server: a real HTTP server on loopback serving proxy lists by path (for tests and the
//! `farm` command), each path with a scripted sequence of answers (to exercise retries) or an
//! endless body.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A status and a body.
    Body(u16, String),
    /// 200 with a body that never ends (until the client hangs up).
    Endless,
    /// 200 with `start`, then `repeat` over and over (until the client hangs up).
    EndlessOf { start: String, repeat: String },
    /// 302 to this Location, sent as given (tricks included).
    Redirect(String),
}

/// Serves scripted answers per path; answers run in order, the last one repeats. Unknown paths
/// get 404. Stopped on drop.
#[derive(Debug)]
pub struct ListServer {
    pub addr: SocketAddr,
    /// Requests seen per path.
    hits: Arc<Mutex<HashMap<String, usize>>>,
    /// Connections accepted, whether or not they sent a request.
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl ListServer {
    pub async fn spawn(
        ip: IpAddr,
        routes: Vec<(&str, Vec<Answer>)>,
    ) -> std::io::Result<ListServer> {
        Self::spawn_on(SocketAddr::new(ip, 0), routes).await
    }

    /// Serves on a given address (port 0 picks one).
    pub async fn spawn_on(
        addr: SocketAddr,
        routes: Vec<(&str, Vec<Answer>)>,
    ) -> std::io::Result<ListServer> {
        let listener = TcpListener::bind(addr).await?;
        Self::serve(listener, routes)
    }

    /// Serves on a listener already bound (in another network namespace, say).
    pub fn spawn_listening(
        listener: std::net::TcpListener,
        routes: Vec<(&str, Vec<Answer>)>,
    ) -> std::io::Result<ListServer> {
        listener.set_nonblocking(true)?;
        Self::serve(TcpListener::from_std(listener)?, routes)
    }

    fn serve(
        listener: TcpListener,
        routes: Vec<(&str, Vec<Answer>)>,
    ) -> std::io::Result<ListServer> {
        let addr = listener.local_addr()?;
        let routes: Arc<HashMap<String, Vec<Answer>>> = Arc::new(
            routes
                .into_iter()
                .map(|(p, a)| (p.to_string(), a))
                .collect(),
        );
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let accepted: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let task = {
            let hits = hits.clone();
            let accepted = accepted.clone();
            tokio::spawn(async move {
                // Connection tasks live in the set, so dropping the server aborts them too.
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let routes = routes.clone();
                    let hits = hits.clone();
                    connections.spawn(async move {
                        let _ = answer(stream, &routes, &hits).await;
                    });
                    while connections.try_join_next().is_some() {}
                }
            })
        };
        Ok(ListServer {
            addr,
            hits,
            connections: accepted,
            task,
        })
    }

    /// `http://ADDR/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connections accepted so far, requests or not.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for ListServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    routes: &HashMap<String, Vec<Answer>>,
    hits: &Mutex<HashMap<String, usize>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
    let seen = {
        let mut hits = hits.lock().unwrap_or_else(|e| e.into_inner());
        let n = hits.entry(path.clone()).or_default();
        *n += 1;
        *n
    };
    let chosen = routes
        .get(&path)
        .and_then(|answers| answers.get(seen - 1).or(answers.last()));
    match chosen {
        None => respond(&mut stream, 404, "not found\n").await,
        Some(Answer::Body(status, body)) => respond(&mut stream, *status, body).await,
        Some(Answer::EndlessOf { start, repeat }) => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
                .await?;
            stream.write_all(start.as_bytes()).await?;
            let block = repeat.repeat((64 * 1024 / repeat.len().max(1)).max(1));
            loop {
                stream.write_all(block.as_bytes()).await?;
            }
        }
        Some(Answer::Redirect(location)) => {
            let head = format!(
                "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await?;
            stream.shutdown().await
        }
        Some(Answer::Endless) => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
                .await?;
            let line = "203.0.113.9:8080\n".repeat(4096);
            // Until the client gives up: the test bounds it.
            loop {
                stream.write_all(line.as_bytes()).await?;
            }
        }
    }
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: u16,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
