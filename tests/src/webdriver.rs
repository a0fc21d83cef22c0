//! A real browser for tests: headless Chromium driven by chromedriver over WebDriver (HTTP and
//! JSON), and the small HTTP/1.1 client that speaks to it, also used to read pages and event
//! streams byte for byte. Chromedriver and every browser process are killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{self, TempDir};

/// Where Debian's `chromium` and `chromium-driver` packages put their binaries.
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Longest one WebDriver command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The first header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Splits a response's head from its body: the status and headers.
fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn unchunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        body = &body[end + 2..];
        if size == 0 || body.len() < size {
            break;
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
    out
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
}

/// Whether `raw` holds a whole answer: its head, and its body as long as the head says.
fn answer_complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let (_, headers) = parse_head(&String::from_utf8_lossy(&raw[..split]));
    let body = &raw[split + 4..];
    if is_chunked(&headers) {
        return body.ends_with(b"0\r\n\r\n");
    }
    headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .is_some_and(|length| body.len() >= length)
}

/// The `Host` line for a request to `addr`, unless `headers` give their own.
fn host(addr: SocketAddr, headers: &[(&str, &str)]) -> String {
    if headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        String::new()
    } else {
        format!("Host: {addr}\r\n")
    }
}

/// Sends one request (`Connection: close`; `Host: ADDR` unless `headers` hold another) and
/// reads the whole answer, at most `COMMAND_LIMIT`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Answer {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\n{}Connection: close\r\n",
            host(addr, headers)
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        if let Some(body) = body {
            stream.write_all(body).await?;
        }
        // Read to the body's end as the head gives it: some servers keep the connection open.
        let mut raw = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            if answer_complete(&raw) {
                break;
            }
            let read = stream.read(&mut buf).await?;
            if read == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..read]);
        }
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(COMMAND_LIMIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} on {addr} took over {COMMAND_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no HTTP head from {addr}: {:?}",
                String::from_utf8_lossy(&raw)
            )
        });
    let (status, headers) = parse_head(&String::from_utf8_lossy(&raw[..split]));
    let mut body = raw[split + 4..].to_vec();
    if is_chunked(&headers) {
        body = unchunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

/// GETs a stream that does not end by itself (server-sent events) and reads it until `done`
/// holds for what came so far, at most `limit`: the status, headers and the raw body read.
pub async fn read_stream(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> Answer {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let mut head = format!("GET {path} HTTP/1.1\r\n{}", host(addr, headers));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let (status, headers) = parse_head(head);
            if status != 200 || done(body) {
                return Answer {
                    status,
                    headers,
                    body: body.as_bytes().to_vec(),
                };
            }
        }
        let mut buf = [0u8; 8192];
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!("{path} did not bring what was awaited within {limit:?}; read:\n{text}")
            })
            .unwrap_or_else(|e| panic!("reading {path}: {e}"));
        assert!(
            read > 0,
            "{path} ended before what was awaited came; read:\n{text}"
        );
        raw.extend_from_slice(&buf[..read]);
    }
}

/// Standard base64, as WebDriver sends screenshots.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let sextets: Vec<u8> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(sextets.len() * 3 / 4);
    for group in sextets.chunks(4) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, s)| n | (u32::from(*s) << (18 - 6 * i)));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..group.len().saturating_sub(1)]);
    }
    out
}

/// Kills every process whose command line names `marker` (the browser's own profile directory,
/// which no other process names), by pid.
fn kill_processes_naming(marker: &str) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let own = std::process::id();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid as u32 == own {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            // SAFETY: kill(2) on a pid read from /proc; at worst it has exited already.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Headless Chromium under chromedriver, with a WebDriver session open. On drop the session is
/// closed, then chromedriver's process group and every process of the browser's profile are
/// killed, even when the test panics.
pub struct Browser {
    driver: tokio::process::Child,
    driver_pid: i32,
    addr: SocketAddr,
    session: String,
    /// The browser's profile; names its processes.
    profile: TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port below 32768 and opens a session of headless Chromium
    /// that can reach loopback only. Missing binaries fail the test, saying how to install them.
    pub async fn start(log_dir: &Path) -> Browser {
        for (binary, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: run scripts/test, which installs Debian's {package} package \
                 (or: apt-get install chromium chromium-driver)"
            );
        }
        let profile = TempDir::new("chromium-profile");
        let addr = harness::quiet_port();
        let log = std::fs::File::create(log_dir.join("chromedriver.log"))
            .expect("creating chromedriver's log");
        let mut command = tokio::process::Command::new(CHROMEDRIVER);
        command
            .arg(format!("--port={}", addr.port()))
            .arg(format!(
                "--log-path={}",
                log_dir.join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .process_group(0)
            .kill_on_drop(true);
        let driver = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {CHROMEDRIVER}: {e}"));
        let driver_pid = driver.id().expect("a running child has a pid") as i32;
        let mut browser = Browser {
            driver,
            driver_pid,
            addr,
            session: String::new(),
            profile,
        };
        harness::wait_for(
            "chromedriver to be ready",
            Duration::from_secs(30),
            || async {
                let ready = TcpStream::connect(addr).await.is_ok()
                    && browser_status(addr).await == Some(true);
                ready.then_some(())
            },
        )
        .await;
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless=new",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--window-size=1440,1600",
                        format!("--user-data-dir={}", browser.profile.path().display()),
                        "--no-first-run",
                        "--no-default-browser-check",
                        "--disable-extensions",
                        "--disable-background-networking",
                        "--disable-component-update",
                        "--disable-sync",
                        "--disable-default-apps",
                        "--disable-domain-reliability",
                        "--disable-client-side-phishing-detection",
                        "--disable-breakpad",
                        "--disable-crash-reporter",
                        // Loopback only: no name resolves, and anything off loopback goes to a
                        // proxy that refuses.
                        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                        "--proxy-server=http://127.0.0.1:9",
                    ],
                },
            }},
        });
        let created = browser
            .command("POST", "/session", Some(capabilities))
            .await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver opened no session: {created}"))
            .to_string();
        browser
    }

    /// Sends a WebDriver command; its `value`, or a panic naming the WebDriver error.
    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string());
        let answer = request(
            self.addr,
            method,
            path,
            &[("Content-Type", "application/json; charset=utf-8")],
            body.as_deref().map(str::as_bytes),
        )
        .await;
        let reply: Value = serde_json::from_slice(&answer.body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", answer.text()));
        let value = reply.get("value").cloned().unwrap_or(Value::Null);
        assert!(
            answer.status == 200,
            "WebDriver {method} {path} failed ({}): {value}",
            answer.status
        );
        value
    }

    fn at(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    /// Opens `url` and waits until it has loaded.
    pub async fn goto(&self, url: &str) {
        self.command("POST", &self.at("/url"), Some(json!({ "url": url })))
            .await;
    }

    /// The address the page shows now.
    pub async fn url(&self) -> String {
        self.command("GET", &self.at("/url"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The element matching `css`, waiting up to `limit` for it.
    pub async fn find(&self, css: &str, limit: Duration) -> String {
        harness::wait_for(&format!("an element {css:?}"), limit, || async {
            let found = self
                .execute(
                    "return document.querySelector(arguments[0]) !== null",
                    json!([css]),
                )
                .await;
            found.as_bool().unwrap_or(false).then_some(())
        })
        .await;
        let element = self
            .command(
                "POST",
                &self.at("/element"),
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        element
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element reference for {css:?}: {element}"))
            .to_string()
    }

    /// The rendered text of an element.
    pub async fn text(&self, element: &str) -> String {
        self.command("GET", &self.at(&format!("/element/{element}/text")), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Types `text` into an element, as keystrokes.
    pub async fn type_into(&self, element: &str, text: &str) {
        self.command(
            "POST",
            &self.at(&format!("/element/{element}/value")),
            Some(json!({ "text": text })),
        )
        .await;
    }

    pub async fn click(&self, element: &str) {
        self.command(
            "POST",
            &self.at(&format!("/element/{element}/click")),
            Some(json!({})),
        )
        .await;
    }

    /// Runs `script` (a function body; its arguments are `args`) in the page; what it returns.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            &self.at("/execute/sync"),
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Runs a Chrome DevTools command through chromedriver (`Emulation.setEmulatedMedia`, ...).
    pub async fn devtools(&self, command: &str, params: Value) -> Value {
        self.command(
            "POST",
            &self.at("/goog/cdp/execute"),
            Some(json!({ "cmd": command, "params": params })),
        )
        .await
    }

    /// Saves a PNG of the window to `path` (its directory made if needed).
    pub async fn screenshot(&self, path: &Path) {
        let png = self.command("GET", &self.at("/screenshot"), None).await;
        let bytes = base64_decode(png.as_str().expect("a base64 screenshot"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("making the screenshot's directory");
        }
        std::fs::write(path, bytes).expect("writing the screenshot");
    }

    /// The directory whose name marks the browser's processes.
    pub fn profile(&self) -> &Path {
        self.profile.path()
    }
}

/// chromedriver's readiness, from `/status`.
async fn browser_status(addr: SocketAddr) -> Option<bool> {
    let answer = request(addr, "GET", "/status", &[], None).await;
    let status: Value = serde_json::from_slice(&answer.body).ok()?;
    status["value"]["ready"].as_bool()
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask chromedriver to close the browser (bounded), then kill whatever is left.
        if !self.session.is_empty()
            && let Ok(mut stream) =
                std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
        {
            use std::io::{Read, Write};
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                stream,
                "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.session, self.addr
            );
            let (mut raw, mut buf) = (Vec::new(), [0u8; 4096]);
            while !answer_complete(&raw) {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                }
            }
        }
        // SAFETY: killpg(2) on the process group chromedriver leads (spawned with its own).
        unsafe { libc::killpg(self.driver_pid, libc::SIGKILL) };
        let _ = self.driver.start_kill();
        kill_processes_naming(&self.profile.path().display().to_string());
    }
}

/// Where tests leave what a person may want to look at (`target/test-output`).
pub fn test_output_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .find(|dir| dir.file_name().is_some_and(|n| n == "target"))
        .map(|target| target.join("test-output"))
        .unwrap_or_else(|| std::env::temp_dir().join("proxyfleet-test-output"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(base64_decode("aGVsbG8="), b"hello");
        assert_eq!(base64_decode("aGVsbG8h"), b"hello!");
        assert_eq!(base64_decode("aGk="), b"hi");
        assert_eq!(base64_decode(""), b"");
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(unchunk(b"5\r\nhello\r\n1;x=y\r\n!\r\n0\r\n\r\n"), b"hello!");
    }
}
