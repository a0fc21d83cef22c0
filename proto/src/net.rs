//! Listening sockets for the services.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listens_and_accepts() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        assert_eq!(client.unwrap().local_addr().unwrap(), accepted.unwrap().1);
    }
}
