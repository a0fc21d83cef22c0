//! A TCP relay on loopback, between a worker and its coordinator: it passes bytes both ways until
//! told to lose what one side sends (a partition, as the other side sees it), and cuts every
//! connection on demand. Stopped, with its connections, when dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Which way bytes go through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From whoever connects to the relay (the worker) to the target (the coordinator).
    Upstream,
    /// From the target back to whoever connected.
    Downstream,
}

/// What every connection of the relay obeys; changed by the test.
#[derive(Debug, Default)]
struct Rules {
    /// Bytes going upstream are read and dropped.
    lose_upstream: AtomicBool,
    /// Bytes going downstream are read and dropped.
    lose_downstream: AtomicBool,
}

impl Rules {
    fn loses(&self, direction: Direction) -> &AtomicBool {
        match direction {
            Direction::Upstream => &self.lose_upstream,
            Direction::Downstream => &self.lose_downstream,
        }
    }
}

/// A running relay to one target.
#[derive(Debug)]
pub struct Relay {
    /// Where the relay listens.
    pub addr: SocketAddr,
    rules: Arc<Rules>,
    /// Bumped by [`Relay::cut`]; every connection open then ends.
    cuts: watch::Sender<u64>,
    /// The accept loop; it owns the connections' tasks.
    task: JoinHandle<()>,
}

impl Relay {
    /// Listens on 127.0.0.1:0 and relays every connection to `target`.
    pub async fn spawn(target: SocketAddr) -> std::io::Result<Relay> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let rules = Arc::new(Rules::default());
        let (cuts, _) = watch::channel(0);
        let task = tokio::spawn(accept_loop(listener, target, rules.clone(), cuts.clone()));
        Ok(Relay {
            addr,
            rules,
            cuts,
            task,
        })
    }

    /// The relay as a gRPC URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, bytes going `direction` on the connections open now are lost: read and
    /// dropped, never delivered, as in a network partition.
    pub fn lose(&self, direction: Direction) {
        self.rules.loses(direction).store(true, Ordering::SeqCst);
    }

    /// Closes every connection open now, both ways; connections made after pass everything.
    pub fn cut(&self) {
        self.rules.lose_upstream.store(false, Ordering::SeqCst);
        self.rules.lose_downstream.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    rules: Arc<Rules>,
    cuts: watch::Sender<u64>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let rules = rules.clone();
                // Subscribed as the connection is accepted: only later cuts end it.
                let cut = cuts.subscribe();
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        relay(client, server, &rules, cut).await;
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Passes bytes both ways until either side closes or the relay cuts the connection.
async fn relay(client: TcpStream, server: TcpStream, rules: &Rules, mut cut: watch::Receiver<u64>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = pump(
        &mut client_read,
        &mut server_write,
        rules,
        Direction::Upstream,
    );
    let downstream = pump(
        &mut server_read,
        &mut client_write,
        rules,
        Direction::Downstream,
    );
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
        _ = cut.changed() => {}
    }
    // Dropping the halves closes both connections.
}

async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    rules: &Rules,
    direction: Direction,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if rules.loses(direction).load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
