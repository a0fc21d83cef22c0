//! A poison proxy: a loopback server that SIGKILLs whichever worker process connects to it. The
//! process is found from the connection itself: the peer's socket inode in `/proc/net/tcp`, then
//! the process holding a descriptor to that inode. Only a process named `proxyfleet-worker` is
//! ever killed.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The name the kernel gives worker processes (`/proc/PID/comm` keeps 15 bytes).
const WORKER_COMM: &str = "proxyfleet-work";

/// A running poison proxy; dropping it stops it.
#[derive(Debug)]
pub struct PoisonProxy {
    pub addr: SocketAddr,
    /// Worker processes killed so far.
    kills: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl PoisonProxy {
    /// Listens on 127.0.0.1, port 0.
    pub async fn spawn() -> std::io::Result<PoisonProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let kills = Arc::new(AtomicU64::new(0));
        let counted = kills.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let counted = counted.clone();
                // Each connection is handled on its own, so one slow /proc scan delays no other.
                tokio::spawn(async move {
                    // Found by a blocking scan of /proc: kept off the runtime's threads.
                    let pid = tokio::task::spawn_blocking(move || find_worker(peer, addr))
                        .await
                        .ok()
                        .flatten();
                    if let Some(pid) = pid {
                        // SAFETY: kill(2) on a pid read from /proc, checked to be a worker.
                        if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    drop(stream);
                });
            }
        });
        Ok(PoisonProxy { addr, kills, task })
    }

    /// Its candidate line.
    pub fn candidate_line(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Worker processes it has killed.
    pub fn kills(&self) -> u64 {
        self.kills.load(Ordering::SeqCst)
    }
}

impl Drop for PoisonProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The worker process whose socket is `peer` connected to `ours`, looked for a few times: the
/// socket shows in /proc as soon as the connection is accepted, its descriptor a moment later at
/// worst.
fn find_worker(peer: SocketAddr, ours: SocketAddr) -> Option<i32> {
    for _ in 0..50 {
        if let Some(inode) = socket_inode(peer, ours)
            && let Some(pid) = holder_of(inode)
        {
            return Some(pid);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// The inode of the IPv4 TCP socket bound to `local` and connected to `remote`.
fn socket_inode(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (l, r, inode) = (fields.get(1)?, fields.get(2)?, fields.get(9)?);
        (parse_addr(l)? == local && parse_addr(r)? == remote).then(|| inode.parse().ok())?
    })
}

/// An address as /proc/net/tcp writes it: the IPv4 address as the host stores it, in hex, then
/// the port in hex (`0100007F:1F90` is 127.0.0.1:8080 on a little-endian host).
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddr::new(
        Ipv4Addr::from(ip.to_ne_bytes()).into(),
        port,
    ))
}

/// The worker process holding a descriptor to socket `inode`.
fn holder_of(inode: u64) -> Option<i32> {
    let link = format!("socket:[{inode}]");
    let own = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            if pid == own {
                return None;
            }
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            if comm.trim() != WORKER_COMM {
                return None;
            }
            let holds = std::fs::read_dir(entry.path().join("fd"))
                .ok()?
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.as_os_str() == link.as_str())
                });
            holds.then_some(pid)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_addresses_parse_as_the_kernel_writes_them() {
        let addr = parse_addr(&format!("{:08X}:1F90", u32::from_ne_bytes([127, 0, 0, 1])));
        assert_eq!(addr, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(parse_addr("nonsense"), None);
    }

    #[tokio::test]
    async fn a_connection_is_traced_to_the_process_that_holds_it() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let ours = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(ours).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();
        assert_eq!(client.local_addr().unwrap(), peer);
        let inode = socket_inode(peer, ours).expect("the client's socket is listed");
        // This test process holds it, and is no worker: it is found, and not named a worker.
        assert!(
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .any(|fd| std::fs::read_link(fd.path())
                    .is_ok_and(|t| t.as_os_str() == format!("socket:[{inode}]").as_str()))
        );
        assert_eq!(holder_of(inode), None);
    }
}
