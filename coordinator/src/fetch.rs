//! Fetching candidate sources: http(s) URLs with bounded concurrency, timeouts, retries on
//! transient failures and a size cap, read as they stream; local files when allowed. Every
//! connection, redirects included, is dialled through the guard.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use proxyfleet_common::guard::{DialError, Guard};
use proxyfleet_common::url::{HttpUrl, UrlError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::Semaphore;

use crate::candidate::{SourceReader, Stop};

/// How sources are fetched.
#[derive(Debug, Clone)]
pub(crate) struct FetchPolicy {
    /// Sources fetched at once, over every job.
    pub(crate) concurrency: usize,
    /// Time one attempt may take, body included.
    pub(crate) timeout: Duration,
    /// Attempts per source for transient failures (connect errors, 408, 429, 5xx).
    pub(crate) attempts: u32,
    /// Largest body read from one source.
    pub(crate) max_bytes: u64,
    /// Source URLs on loopback and private addresses are allowed (labs, tests).
    pub(crate) allow_private: bool,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        FetchPolicy {
            concurrency: 8,
            timeout: Duration::from_secs(30),
            attempts: 3,
            max_bytes: 64 * 1024 * 1024,
            allow_private: false,
        }
    }
}

/// Why a source could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FetchError {
    #[error("{0}")]
    Refused(String),
    #[error("answered status {0}")]
    Status(u16),
    #[error("larger than the {0}-byte limit for one source")]
    TooLarge(u64),
    #[error("{0}")]
    Stopped(#[from] Stop),
    #[error("{0}")]
    Network(String),
    #[error("cannot read {path}: {error}")]
    File { path: String, error: String },
    #[error("{0}")]
    Location(#[from] LocationError),
}

/// What a source location may be, for messages.
pub(crate) const LOCATIONS: &str = "expected an http://, https:// or file:/// URL, or a local path";

/// Why a text is no source location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    /// An http(s) URL the strict parser refuses; its text names the URL and what is wrong.
    #[error("source {0}")]
    Url(#[from] UrlError),
    /// Neither an http(s) URL, a local file URL nor a path.
    #[error("{0:?} is not a list location; {LOCATIONS}")]
    NotALocation(String),
}

impl LocationError {
    /// What is wrong, without the location itself.
    pub(crate) fn why(&self) -> String {
        match self {
            LocationError::Url(e) => e.to_string(),
            LocationError::NotALocation(_) => LOCATIONS.to_string(),
        }
    }
}

/// Where a source lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Http(HttpUrl),
    File(PathBuf),
}

/// Where a source lives, read the one way every part of proxyfleet reads it (a sources file, a
/// client's sources, the fetcher): an `http(s)://` URL, parsed as strictly as it is fetched; a
/// local file URL, `file:///path` or `file://localhost/path`; or a plain path. Other schemes, file
/// URLs of other hosts, and near-misses such as `http:/host`, which would otherwise be taken for
/// a relative path, are refused.
pub fn locate(url: &str) -> Result<Location, LocationError> {
    let refused = || LocationError::NotALocation(url.to_string());
    if url.is_empty() || url.chars().any(char::is_control) {
        return Err(refused());
    }
    match url.split_once("://") {
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" => Ok(Location::Http(HttpUrl::parse(url)?)),
            "file" => {
                let path = rest.strip_prefix("localhost").unwrap_or(rest);
                if path.starts_with('/') && path.len() > 1 {
                    Ok(Location::File(PathBuf::from(path)))
                } else {
                    Err(refused())
                }
            }
            _ => Err(refused()),
        },
        // A scheme of two letters or more before ':' is a URL gone wrong; one letter is a
        // Windows drive (`C:\lists\http.txt`).
        None if url.split_once(':').is_some_and(|(scheme, _)| {
            scheme.len() > 1 && scheme.bytes().all(|b| b.is_ascii_alphabetic())
        }) =>
        {
            Err(refused())
        }
        None => Ok(Location::File(PathBuf::from(url))),
    }
}

/// Why a URL a client named may not be contacted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublicUrlError {
    #[error("{0}")]
    Url(#[from] UrlError),
    #[error(
        "{0} points to a loopback, private or link-local address; start the coordinator with --allow-private-targets to use it"
    )]
    Inside(String),
    #[error("cannot resolve the host of {url}: {error}")]
    Unresolved { url: String, error: std::io::Error },
    #[error("resolving the host of {0} took more than 5s")]
    SlowLookup(String),
}

/// Whether an http(s) URL a client named may be contacted: it parses as strictly as it is fetched,
/// and its host, resolved now, has no address inside (a name with one public and one loopback
/// address is refused too). Where it is dialled later, the guard checks again.
pub(crate) async fn check_public_url(url: &str, allow_private: bool) -> Result<(), PublicUrlError> {
    let parsed = HttpUrl::parse(url)?;
    if allow_private {
        return Ok(());
    }
    let inside = || PublicUrlError::Inside(url.to_string());
    // The guard's rule, which also counts the machine's own addresses as inside.
    let guard = Guard::new(false);
    if let Some(ip) = parsed.ip() {
        return if guard.permits(ip) {
            Ok(())
        } else {
            Err(inside())
        };
    }
    let lookup = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::lookup_host((parsed.host.as_str(), parsed.port)),
    )
    .await;
    let addrs: Vec<SocketAddr> = match lookup {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(error)) => {
            return Err(PublicUrlError::Unresolved {
                url: url.to_string(),
                error,
            });
        }
        Err(_) => return Err(PublicUrlError::SlowLookup(url.to_string())),
    };
    if addrs.iter().any(|a| !guard.permits(a.ip())) {
        return Err(inside());
    }
    Ok(())
}

/// True for statuses worth another attempt.
pub(crate) fn transient(status: u16) -> bool {
    matches!(status, 408 | 429) || (500..600).contains(&status)
}

/// Redirects followed from one source URL.
const MAX_REDIRECTS: usize = 5;

/// Fetches sources; shared by every job of a coordinator.
#[derive(Clone)]
pub(crate) struct Fetcher {
    tls: tokio_rustls::TlsConnector,
    guard: Guard,
    permits: Arc<Semaphore>,
    policy: FetchPolicy,
}

/// A connection a source is read over: plain TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Aborts the task driving a connection when the response is done with.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Fetcher {
    pub(crate) fn new(policy: FetchPolicy) -> Result<Fetcher, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Fetcher {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            guard: Guard::new(policy.allow_private),
            permits: Arc::new(Semaphore::new(policy.concurrency.max(1))),
            policy,
        })
    }

    /// Reads a source into `reader` as it arrives; returns how many bytes it had. `trusted`
    /// sources (the operator's own sources file) may be local files; a client's may not. A failed
    /// attempt that is retried starts `reader` afresh.
    pub(crate) async fn fetch(
        &self,
        url: &str,
        trusted: bool,
        reader: &mut SourceReader,
    ) -> Result<u64, FetchError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| FetchError::Network("shutting down".into()))?;
        match locate(url)? {
            Location::File(path) => {
                if !trusted {
                    return Err(FetchError::Refused(format!(
                        "{url:?} is a local path; only the coordinator's own --sources file may name local files"
                    )));
                }
                self.read_file(path, reader).await
            }
            Location::Http(url) => self.get_with_retries(&url, reader).await,
        }
    }

    async fn read_file(&self, path: PathBuf, reader: &mut SourceReader) -> Result<u64, FetchError> {
        let shown = path.display().to_string();
        let file_error = |e: std::io::Error| FetchError::File {
            path: shown.clone(),
            error: e.to_string(),
        };
        let mut file = tokio::fs::File::open(&path).await.map_err(file_error)?;
        let mut buffer = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buffer).await.map_err(file_error)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
            if total > self.policy.max_bytes {
                return Err(FetchError::TooLarge(self.policy.max_bytes));
            }
            reader.push(&buffer[..n]);
            if let Some(stop) = reader.stopped() {
                return Err(FetchError::Stopped(stop));
            }
        }
    }

    async fn get_with_retries(
        &self,
        url: &HttpUrl,
        reader: &mut SourceReader,
    ) -> Result<u64, FetchError> {
        let mut last = FetchError::Network("not fetched".into());
        for attempt in 0..self.policy.attempts.max(1) {
            if attempt > 0 {
                // What the failed attempt read goes back before the pause, for other sources.
                reader.restart();
                tokio::time::sleep(Duration::from_millis(250 << attempt.min(4))).await;
            }
            let once = tokio::time::timeout(self.policy.timeout, self.get_once(url, reader)).await;
            match once.unwrap_or_else(|_| {
                Err(FetchError::Network(format!(
                    "no complete answer within {:?}",
                    self.policy.timeout
                )))
            }) {
                Ok(bytes) => return Ok(bytes),
                Err(e @ FetchError::Status(status)) if transient(status) => last = e,
                Err(e @ FetchError::Network(_)) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// One GET, following redirects, with the body streamed into `reader`.
    async fn get_once(&self, url: &HttpUrl, reader: &mut SourceReader) -> Result<u64, FetchError> {
        let mut url = url.clone();
        let mut hops = 0;
        let (response, _driver) = loop {
            let (response, driver) = self.request(&url, hops > 0).await?;
            let status = response.status();
            if !matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                break (response, driver);
            }
            if hops == MAX_REDIRECTS {
                return Err(FetchError::Refused(format!(
                    "more than {MAX_REDIRECTS} redirects"
                )));
            }
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| {
                    FetchError::Refused(format!("answered {status} without a usable Location"))
                })?;
            let next = url
                .join(location)
                .map_err(|e| FetchError::Refused(format!("redirected to a refused {e}")))?;
            if url.https && !next.https {
                return Err(FetchError::Refused(format!(
                    "{url} redirected to {next}, from https to plain http"
                )));
            }
            url = next;
            hops += 1;
        };
        let status = response.status().as_u16();
        if status != 200 {
            return Err(FetchError::Status(status));
        }
        let mut body = response.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| FetchError::Network(chain(&e)))?;
            if let Ok(data) = frame.into_data() {
                total += data.len() as u64;
                if total > self.policy.max_bytes {
                    return Err(FetchError::TooLarge(self.policy.max_bytes));
                }
                reader.push(&data);
                if let Some(stop) = reader.stopped() {
                    return Err(FetchError::Stopped(stop));
                }
            }
        }
        Ok(total)
    }

    /// Sends a GET of `url` over a new connection, dialled through the guard.
    async fn request(
        &self,
        url: &HttpUrl,
        redirected: bool,
    ) -> Result<(http::Response<hyper::body::Incoming>, Driver), FetchError> {
        // Each address of the name gets a share of the attempt, at least a few seconds.
        let each = (self.policy.timeout / 3).max(Duration::from_secs(3));
        let tcp = self
            .guard
            .connect(&url.host, url.port, Some(each))
            .await
            .map_err(|e| match e {
                DialError::Forbidden { .. } if redirected => {
                    FetchError::Refused(format!("redirected to {url}: {e}"))
                }
                DialError::Forbidden { .. } => FetchError::Refused(e.to_string()),
                other => FetchError::Network(other.to_string()),
            })?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if url.https {
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|_| FetchError::Refused(format!("{url} has no valid TLS name")))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| FetchError::Network(format!("TLS to {url} failed: {e}")))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| FetchError::Network(chain(&e)))?;
        // The connection is driven beside the response; its errors reach the response or the
        // body, and it is aborted when they are done with.
        let driver = Driver(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let request = http::Request::get(url.path.as_str())
            .header(http::header::HOST, url.authority())
            .header(
                http::header::USER_AGENT,
                concat!("proxyfleet/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::ACCEPT, "*/*")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| FetchError::Refused(format!("cannot request {url}: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| FetchError::Network(chain(&e)))?;
        Ok((response, driver))
    }
}

/// An error with its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candidate::{Protocol, TargetPolicy};

    fn reader() -> SourceReader {
        SourceReader::new(
            &[Protocol::Http],
            TargetPolicy {
                allow_private: false,
            },
        )
    }

    #[test]
    fn locations_of_sources() {
        assert_eq!(
            locate("https://x.test/a").unwrap(),
            Location::Http(HttpUrl::parse("https://x.test/a").unwrap())
        );
        assert_eq!(
            locate("file:///tmp/a.txt").unwrap(),
            Location::File("/tmp/a.txt".into())
        );
        assert_eq!(
            locate("lists/a.txt").unwrap(),
            Location::File("lists/a.txt".into())
        );
        assert_eq!(
            locate("file://localhost/tmp/a.txt").unwrap(),
            Location::File("/tmp/a.txt".into())
        );
        assert_eq!(
            locate("C:\\lists\\a.txt").unwrap(),
            Location::File("C:\\lists\\a.txt".into())
        );
        for elsewhere in [
            "ftp://x/a",
            "file://server/share/a.txt",
            "file://lists/a.txt",
            "file:///",
            "http:/x.test/a",
            "mailto:lists@x.test",
            "",
            "lists/a\n.txt",
        ] {
            let err = locate(elsewhere).unwrap_err();
            assert_eq!(err, LocationError::NotALocation(elsewhere.into()));
            assert!(err.to_string().ends_with(LOCATIONS), "{err}");
        }
        for trick in [
            "http://2130706433:80/",
            "http://127.0.0.1:80\\@192.0.2.1/",
            "http://u@127.0.0.1/",
        ] {
            let err = locate(trick).unwrap_err().to_string();
            assert!(err.starts_with("source URL"), "{trick}: {err}");
        }
    }

    #[test]
    fn transient_statuses() {
        for s in [408, 429, 500, 502, 503, 599] {
            assert!(transient(s), "{s}");
        }
        for s in [200, 301, 400, 403, 404] {
            assert!(!transient(s), "{s}");
        }
    }

    #[tokio::test]
    async fn names_that_resolve_inside_are_refused_unless_allowed() {
        let err = check_public_url("http://localhost:8080/judge", false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--allow-private-targets"), "{err}");
        assert!(
            check_public_url("http://localhost:8080/judge", true)
                .await
                .is_ok()
        );
        for inside in [
            "http://10.1.2.3/judge",
            "http://[::ffff:127.0.0.1]/judge",
            "http://[::127.0.0.1]/judge",
        ] {
            let err = check_public_url(inside, false).await.unwrap_err();
            assert!(
                err.to_string().contains("--allow-private-targets"),
                "{inside}: {err}"
            );
        }
        assert!(
            check_public_url("http://0x7f000001/judge", true)
                .await
                .is_err(),
            "a spelling parsers disagree on is refused even in a lab"
        );
        assert!(
            check_public_url("http://203.0.113.7/judge", false)
                .await
                .is_ok()
        );
        let fetcher = Fetcher::new(FetchPolicy::default()).unwrap();
        let err = fetcher
            .fetch("http://localhost:1/list.txt", false, &mut reader())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.to_string().contains("--allow-private-targets"), "{err}");
    }

    #[tokio::test]
    async fn private_urls_and_client_local_paths_are_refused() {
        let fetcher = Fetcher::new(FetchPolicy::default()).unwrap();
        let err = fetcher
            .fetch("http://127.0.0.1:1/list", false, &mut reader())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--allow-private-targets"), "{err}");
        let err = fetcher
            .fetch("/etc/hostname", false, &mut reader())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("local path"), "{err}");
    }

    #[tokio::test]
    async fn trusted_local_files_are_read_with_a_cap() {
        let dir = std::env::temp_dir().join(format!("proxyfleet-fetch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = dir.join("small.txt");
        std::fs::write(&small, "1.2.3.4:80\n").unwrap();
        let big = dir.join("big.txt");
        std::fs::write(&big, vec![b'x'; 2048]).unwrap();
        let fetcher = Fetcher::new(FetchPolicy {
            max_bytes: 1024,
            ..FetchPolicy::default()
        })
        .unwrap();
        let mut found = reader();
        assert_eq!(
            fetcher
                .fetch(small.to_str().unwrap(), true, &mut found)
                .await
                .unwrap(),
            11
        );
        assert_eq!(found.finish().unwrap().candidates.len(), 1);
        assert_eq!(
            fetcher
                .fetch(big.to_str().unwrap(), true, &mut reader())
                .await
                .unwrap_err(),
            FetchError::TooLarge(1024)
        );
        let missing = fetcher
            .fetch("/nonexistent/x.txt", true, &mut reader())
            .await
            .unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/x.txt"),
            "{missing}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
