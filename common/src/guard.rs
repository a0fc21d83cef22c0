//! The one gate of every outgoing connection proxyfleet makes (sources, redirects and judge probes
//! of the coordinator; proxies and judges of workers): the address about to be dialled, after all
//! parsing and resolving, is checked, so no spelling of a URL or a name can reach inside. Inside
//! is every non-public range and every address of this machine's own interfaces: a public
//! address on the machine's own network card reaches its services as loopback does.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::addr::is_private;

/// Which addresses may be dialled: public ones always, the others only when allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    /// Loopback, private, link-local and the like are allowed too (labs, tests).
    allow_private: bool,
}

/// Why nothing was dialled, or the dial failed.
#[derive(Debug)]
pub enum DialError {
    /// Every address of the host is one the guard refuses; nothing was sent to any of them.
    Forbidden { host: String },
    /// The host did not resolve.
    Resolve { host: String, error: String },
    /// Every allowed address failed; the last error.
    Connect(std::io::Error),
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DialError::Forbidden { host } => write!(
                f,
                "{host} is a loopback, private or link-local address, which the coordinator does not allow (start it with --allow-private-targets in a lab)"
            ),
            DialError::Resolve { host, error } => write!(f, "cannot resolve {host}: {error}"),
            DialError::Connect(e) => write!(f, "cannot connect: {e}"),
        }
    }
}

impl std::error::Error for DialError {}

impl Guard {
    pub const fn new(allow_private: bool) -> Guard {
        Guard { allow_private }
    }

    pub fn allows_private(self) -> bool {
        self.allow_private
    }

    /// Whether `ip` may be dialled.
    pub fn permits(self, ip: IpAddr) -> bool {
        self.allow_private || !(is_private(ip) || is_own(ip))
    }

    /// The addresses of `host` that may be dialled, in the resolver's order. A host with
    /// addresses, none of them allowed, is `Forbidden`.
    pub async fn resolve(self, host: &str, port: u16) -> Result<Vec<SocketAddr>, DialError> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let all: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| DialError::Resolve {
                    host: host.to_string(),
                    error: e.to_string(),
                })?
                .collect(),
        };
        self.allowed(host, all)
    }

    /// Keeps the allowed addresses of `all`, those of `host`.
    pub fn allowed(self, host: &str, all: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, DialError> {
        if all.is_empty() {
            return Err(DialError::Resolve {
                host: host.to_string(),
                error: "no address".into(),
            });
        }
        let allowed: Vec<SocketAddr> = all.into_iter().filter(|a| self.permits(a.ip())).collect();
        if allowed.is_empty() {
            return Err(DialError::Forbidden {
                host: host.to_string(),
            });
        }
        Ok(allowed)
    }

    /// Resolves `host` and connects to the first allowed address that answers, giving each
    /// address at most `each`.
    pub async fn connect(
        self,
        host: &str,
        port: u16,
        each: Option<Duration>,
    ) -> Result<TcpStream, DialError> {
        let addrs = self.resolve(host, port).await?;
        self.connect_to(&addrs, each)
            .await
            .map_err(DialError::Connect)
    }

    /// Connects to the first of `addrs` that answers, checking each right before it is dialled
    /// (refused ones are skipped) and giving each at most `each`, so one address that drops SYNs
    /// does not hide the others.
    pub async fn connect_to(
        self,
        addrs: &[SocketAddr],
        each: Option<Duration>,
    ) -> std::io::Result<TcpStream> {
        let mut last = std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "no address the coordinator allows",
        );
        for addr in addrs {
            if !self.permits(addr.ip()) {
                continue;
            }
            let attempt = TcpStream::connect(addr);
            let outcome = match each {
                Some(limit) => tokio::time::timeout(limit, attempt)
                    .await
                    .unwrap_or_else(|_| {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("{addr} did not answer within {limit:?}"),
                        ))
                    }),
                None => attempt.await,
            };
            match outcome {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// How long the list of the machine's own addresses is trusted before it is read again.
const OWN_ADDRESSES_FOR: Duration = Duration::from_secs(5);

/// The machine's own interface addresses, read at most every [`OWN_ADDRESSES_FOR`].
static OWN_ADDRESSES: RwLock<Option<(Instant, Arc<HashSet<IpAddr>>)>> = RwLock::new(None);

/// Whether `ip` is an address of one of this machine's interfaces.
fn is_own(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let fresh = |cached: &Option<(Instant, Arc<HashSet<IpAddr>>)>| {
        cached
            .as_ref()
            .filter(|(read, _)| read.elapsed() < OWN_ADDRESSES_FOR)
            .map(|(_, own)| own.clone())
    };
    let cached = fresh(&OWN_ADDRESSES.read().unwrap_or_else(|e| e.into_inner()));
    let own = cached.unwrap_or_else(|| {
        let mut slot = OWN_ADDRESSES.write().unwrap_or_else(|e| e.into_inner());
        fresh(&slot).unwrap_or_else(|| {
            let own = Arc::new(own_addresses());
            *slot = Some((Instant::now(), own.clone()));
            own
        })
    });
    own.contains(&ip)
}

/// The addresses of this machine's interfaces, as `getifaddrs` lists them.
fn own_addresses() -> HashSet<IpAddr> {
    let mut found = HashSet::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list that freeifaddrs releases; every node
    // and address read here lives until then, and each address is read as the family it names.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return found;
        }
        let mut node = list;
        while !node.is_null() {
            let addr = (*node).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let v4 = &*(addr as *const libc::sockaddr_in);
                        found.insert(IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let v6 = &*(addr as *const libc::sockaddr_in6);
                        found.insert(IpAddr::from(v6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            node = (*node).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn private_addresses_are_refused_before_any_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let closed = Guard::new(false);
        for host in ["127.0.0.1", "[::1]", "::ffff:127.0.0.1", "localhost"] {
            let err = closed.connect(host, port, None).await.unwrap_err();
            assert!(matches!(err, DialError::Forbidden { .. }), "{host}: {err}");
            assert!(err.to_string().contains("--allow-private-targets"), "{err}");
        }
        // Every spelling the resolver understands still ends at the address check.
        for host in ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0"] {
            match closed.connect(host, port, None).await {
                Err(DialError::Forbidden { .. } | DialError::Resolve { .. }) => {}
                other => panic!("{host}: {other:?}"),
            }
        }
        let addr = listener.local_addr().unwrap();
        assert_eq!(
            closed.connect_to(&[addr], None).await.unwrap_err().kind(),
            std::io::ErrorKind::PermissionDenied
        );
        let open = Guard::new(true);
        let (dialled, accepted) = tokio::join!(
            open.connect("127.0.0.1", port, Some(Duration::from_secs(5))),
            listener.accept()
        );
        assert_eq!(dialled.unwrap().local_addr().unwrap(), accepted.unwrap().1);
    }

    #[test]
    fn the_machines_own_addresses_are_inside() {
        let own = own_addresses();
        assert!(own.contains(&"127.0.0.1".parse().unwrap()), "{own:?}");
        for ip in own {
            assert!(!Guard::new(false).permits(ip), "{ip}");
            assert!(Guard::new(true).permits(ip), "{ip}");
        }
        assert!(Guard::new(false).permits("192.0.2.77".parse().unwrap()));
    }

    #[test]
    fn mixed_records_keep_only_public_addresses() {
        let all: Vec<SocketAddr> = vec![
            "127.0.0.1:80".parse().unwrap(),
            "192.0.2.1:80".parse().unwrap(),
            "[::ffff:10.0.0.1]:80".parse().unwrap(),
        ];
        assert_eq!(
            Guard::new(false)
                .allowed("mixed.test", all.clone())
                .unwrap(),
            vec!["192.0.2.1:80".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            Guard::new(true).allowed("mixed.test", all).unwrap().len(),
            3
        );
        assert!(matches!(
            Guard::new(false).allowed("inside.test", vec!["10.1.1.1:80".parse().unwrap()]),
            Err(DialError::Forbidden { .. })
        ));
    }
}
