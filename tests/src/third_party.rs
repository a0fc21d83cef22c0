//! Real third-party proxy servers for end-to-end tests: squid and tinyproxy (HTTP forward proxies
//! whose headers are configurable) and dante (SOCKS5), each run in the foreground on loopback with
//! a config file written into its own temp dir, and killed with its whole process group on drop.
//!
//! Every proxy connects out from its own loopback address (127.0.0.10 and up), never from the
//! worker's 127.0.0.1: otherwise the judge would see the worker's address as the caller and grade
//! every proxy transparent. The exit address a check reports thus also names the proxy it went
//! through.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::harness::TempDir;

/// Longest a proxy may take to accept connections after it is started.
const START_LIMIT: Duration = Duration::from_secs(30);

/// Starts per proxy before giving up: a free port picked by binding port 0 and releasing it may
/// be taken by someone else before the proxy binds it.
const START_ATTEMPTS: usize = 3;

/// Last octet of the next proxy's egress address; each proxy takes one.
static NEXT_EGRESS: AtomicU8 = AtomicU8::new(10);

/// What an HTTP proxy tells the server about its client, the three textbook anonymity grades.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderMode {
    /// Forwards the client's address in a header.
    Transparent,
    /// Announces itself (Via, an address-free X-Forwarded-For) but hides the client.
    Anonymous,
    /// Adds nothing.
    Elite,
}

/// Which program a [`RealProxy`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    Squid,
    Tinyproxy,
    Dante,
}

impl Program {
    /// The executable's name.
    pub fn binary(self) -> &'static str {
        match self {
            Program::Squid => "squid",
            Program::Tinyproxy => "tinyproxy",
            Program::Dante => "danted",
        }
    }

    /// The Debian package that ships it.
    pub fn package(self) -> &'static str {
        match self {
            Program::Squid => "squid",
            Program::Tinyproxy => "tinyproxy",
            Program::Dante => "dante-server",
        }
    }

    /// The executable's path; panics saying how to install it when it is missing, because a
    /// skipped test would pass without having checked anything.
    pub fn path(self) -> PathBuf {
        let name = self.binary();
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        // Daemons live in sbin, which is not on every user's PATH.
        std::env::split_paths(&path_var)
            .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "{name} is not installed: install it with `apt-get install -y {}` \
                     (scripts/test does)",
                    self.package()
                )
            })
    }
}

/// A program and how it is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Squid(HeaderMode),
    Tinyproxy(HeaderMode),
    /// SOCKS5 without authentication; SOCKS adds no headers.
    Dante,
}

impl Setup {
    pub fn program(self) -> Program {
        match self {
            Setup::Squid(_) => Program::Squid,
            Setup::Tinyproxy(_) => Program::Tinyproxy,
            Setup::Dante => Program::Dante,
        }
    }

    /// The header mode of an HTTP proxy; `None` for SOCKS.
    pub fn mode(self) -> Option<HeaderMode> {
        match self {
            Setup::Squid(mode) | Setup::Tinyproxy(mode) => Some(mode),
            Setup::Dante => None,
        }
    }

    /// Names it in file names and messages, e.g. `squid-elite`.
    pub fn label(self) -> String {
        match self.mode() {
            Some(mode) => format!("{}-{mode:?}", self.program().binary()).to_lowercase(),
            None => self.program().binary().to_string(),
        }
    }

    /// The config file listening on 127.0.0.1:`port`, connecting out from `egress`, with any
    /// file the program writes in `dir`.
    pub fn config(self, port: u16, egress: Ipv4Addr, dir: &Path) -> String {
        match self {
            Setup::Squid(mode) => squid_config(mode, port, egress, dir),
            Setup::Tinyproxy(mode) => tinyproxy_config(mode, port, egress),
            Setup::Dante => dante_config(port, egress),
        }
    }

    /// The command line running it in the foreground.
    fn command(self, binary: &Path, conf: &Path, dir: &Path) -> Command {
        let mut command = Command::new(binary);
        match self {
            Setup::Squid(_) => command.args(["-N", "-d", "1", "-f"]).arg(conf),
            Setup::Tinyproxy(_) => command.arg("-d").arg("-c").arg(conf),
            // Without -p it would write /run/danted.pid.
            Setup::Dante => command
                .arg("-f")
                .arg(conf)
                .arg("-p")
                .arg(dir.join("danted.pid")),
        };
        command
    }
}

/// A real proxy server on 127.0.0.1, killed with its process group when dropped.
#[derive(Debug)]
pub struct RealProxy {
    pub setup: Setup,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The loopback address it connects out from: the exit address a judge sees.
    pub egress: Ipv4Addr,
    /// Its candidate line, e.g. `http://127.0.0.1:40123`.
    pub line: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    child: Child,
    /// Holds the config and log; kept after a failure for reading.
    _dir: TempDir,
}

impl RealProxy {
    /// squid configured for `mode`.
    pub async fn squid(mode: HeaderMode) -> RealProxy {
        Self::start(Setup::Squid(mode)).await
    }

    /// tinyproxy configured for `mode`.
    pub async fn tinyproxy(mode: HeaderMode) -> RealProxy {
        Self::start(Setup::Tinyproxy(mode)).await
    }

    /// dante's SOCKS5 server, without authentication.
    pub async fn dante() -> RealProxy {
        Self::start(Setup::Dante).await
    }

    /// Starts `setup` on a free port and waits until it accepts connections.
    pub async fn start(setup: Setup) -> RealProxy {
        let binary = setup.program().path();
        let egress = Ipv4Addr::new(127, 0, 0, NEXT_EGRESS.fetch_add(1, Ordering::Relaxed));
        let label = setup.label();
        let dir = TempDir::new(&label);
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let conf = dir.write(
                &format!("{label}-{attempt}.conf"),
                setup.config(port, egress, dir.path()),
            );
            let log = dir.path().join(format!("{label}-{attempt}.log"));
            let file = std::fs::File::create(&log).expect("creating a log file");
            let stdout = file.try_clone().expect("cloning a log file handle");
            let mut command = setup.command(&binary, &conf, dir.path());
            command
                .stdin(Stdio::null())
                .stdout(Stdio::from(stdout))
                .stderr(Stdio::from(file))
                // Its own group, so that drop kills the helpers dante forks along with it.
                .process_group(0)
                .kill_on_drop(true);
            let mut child = command
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
            match wait_ready(&mut child, addr).await {
                Ok(()) => {
                    let scheme = match setup {
                        Setup::Dante => "socks5",
                        Setup::Squid(_) | Setup::Tinyproxy(_) => "http",
                    };
                    return RealProxy {
                        setup,
                        addr,
                        egress,
                        line: format!("{scheme}://{addr}"),
                        log,
                        child,
                        _dir: dir,
                    };
                }
                Err(why) => {
                    kill_group(&child);
                    failures.push(format!(
                        "attempt {attempt} on {addr}: {why}; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    ));
                }
            }
        }
        panic!(
            "{label} did not start (files in {}):\n{}",
            dir.path().display(),
            failures.join("\n")
        );
    }

    /// The proxy's log so far, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GETs `url` (plain http) through this HTTP proxy as a forward request, the way a check
    /// does, and returns the response body: what the judge saw, for failure messages.
    pub async fn fetch(&self, url: &str, limit: Duration) -> Result<String, String> {
        let host = url
            .strip_prefix("http://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| format!("{url} is not a plain http URL"))?;
        let exchange = async {
            let mut tcp = TcpStream::connect(self.addr).await?;
            let request =
                format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            tcp.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            tcp.read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(response)
        };
        let response = tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| format!("no answer through {} within {limit:?}", self.line))?
            .map_err(|e| format!("through {}: {e}", self.line))?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP response through {}: {text:?}", self.line))?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(format!("through {}: {head}", self.line));
        }
        Ok(body.to_string())
    }
}

impl Drop for RealProxy {
    fn drop(&mut self) {
        kill_group(&self.child);
    }
}

/// SIGKILLs the process group `child` leads (it was spawned with `process_group(0)`).
fn kill_group(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on the group our child leads; the child is not reaped (`id` is Some),
        // so the group id cannot have been reused.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    }
}

/// Waits until the proxy accepts connections while still running: a port someone else took
/// accepts too, but then the proxy has exited.
async fn wait_ready(child: &mut Child, addr: SocketAddr) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + START_LIMIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        if TcpStream::connect(addr).await.is_ok() {
            return match child.try_wait() {
                Ok(Some(status)) => Err(format!("exited with {status}")),
                _ => Ok(()),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("not accepting after {START_LIMIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

fn squid_config(mode: HeaderMode, port: u16, egress: Ipv4Addr, dir: &Path) -> String {
    let headers = match mode {
        // X-Forwarded-For: <client address>.
        HeaderMode::Transparent => "via on\nforwarded_for on",
        // Via: 1.1 proxyfleet-squid (squid/x.y), no X-Forwarded-For.
        HeaderMode::Anonymous => "via on\nforwarded_for delete",
        HeaderMode::Elite => "via off\nforwarded_for delete",
    };
    // Logs go to stderr (-d 1); squid drops root for the `proxy` user, which cannot write in the
    // temp dir, hence no cache_log file. No pinger helper (it would outlive a SIGKILLed squid
    // and send ICMP), and DNS, never needed for an IP judge, only to loopback.
    format!(
        "http_port 127.0.0.1:{port}
tcp_outgoing_address {egress}
http_access allow all
cache deny all
cache_mem 8 MB
pid_filename none
cache_log /dev/null
access_log none
netdb_filename none
pinger_enable off
dns_nameservers 127.0.0.1
visible_hostname proxyfleet-squid
coredump_dir {dir}
{headers}
",
        dir = dir.display()
    )
}

fn tinyproxy_config(mode: HeaderMode, port: u16, egress: Ipv4Addr) -> String {
    let headers = match mode {
        // X-Tinyproxy: <client address>, and Via.
        HeaderMode::Transparent => "XTinyproxy Yes\nDisableViaHeader No",
        // Via: 1.1 proxyfleet-tinyproxy (tinyproxy/x.y).
        HeaderMode::Anonymous => "XTinyproxy No\nDisableViaHeader No",
        HeaderMode::Elite => "XTinyproxy No\nDisableViaHeader Yes",
    };
    // No User/Group, PidFile or LogFile: it stays root in the foreground and logs to stderr.
    format!(
        "Port {port}
Listen 127.0.0.1
Bind {egress}
Allow 127.0.0.0/8
ViaProxyName \"proxyfleet-tinyproxy\"
Timeout 30
MaxClients 64
LogLevel Info
{headers}
"
    )
}

fn dante_config(port: u16, egress: Ipv4Addr) -> String {
    format!(
        "logoutput: stderr
internal: 127.0.0.1 port = {port}
external: {egress}
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
}}
socks pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
    command: connect
}}
"
    )
}
