//! Listening sockets for the services, and the descriptor limit their connections count against.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Connections a listener queues before they are accepted. A judge is dialled by every check in
/// flight on every worker at once; with the usual 128 a burst overflows the queue and the kernel
/// drops SYNs, which costs a check a one-second retransmit. The kernel caps this at
/// `net.core.somaxconn`.
pub const BACKLOG: u32 = 4096;

/// Binds `addr` (address reuse on, as `TcpListener::bind` does) and listens with [`BACKLOG`].
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The open-files limit of this process, before and after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit found at startup.
    pub before: u64,
    /// The soft limit now in force: what the process may hold open.
    pub soft: u64,
    /// The hard limit, which only a privileged process can raise.
    pub hard: u64,
}

/// Most descriptors asked for when the hard limit is unlimited (where a system allows that).
const OPEN_FILES_CEILING: u64 = 1 << 20;

/// The soft limit to ask for: the hard one, bounded, never lower than what is in force.
fn open_files_target(soft: u64, hard: u64) -> u64 {
    hard.min(OPEN_FILES_CEILING).max(soft)
}

/// Raises the soft limit on open descriptors to the hard limit. Every connection holds one;
/// the usual soft limit of 1024 is reached long before memory or CPU run out.
pub fn raise_open_files_limit() -> std::io::Result<OpenFiles> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes into the struct it is given, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    let target = open_files_target(limit.rlim_cur, limit.rlim_max);
    if target != limit.rlim_cur {
        let wanted = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit(2) reads the struct it is given, which lives across the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit.rlim_cur = target;
    }
    Ok(OpenFiles {
        before,
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_goes_up_to_the_hard_one_and_never_down() {
        assert_eq!(open_files_target(1024, 4096), 4096);
        assert_eq!(open_files_target(1024, 1024), 1024);
        assert_eq!(open_files_target(1024, u64::MAX), OPEN_FILES_CEILING);
        assert_eq!(open_files_target(2 << 20, u64::MAX), 2 << 20);
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let raised = raise_open_files_limit().unwrap();
        assert!(raised.soft >= raised.before);
        assert_eq!(raised.soft, open_files_target(raised.before, raised.hard));
        assert_eq!(raise_open_files_limit().unwrap().before, raised.soft);
    }

    #[tokio::test]
    async fn listens_and_accepts() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        assert_eq!(client.unwrap().local_addr().unwrap(), accepted.unwrap().1);
    }
}
