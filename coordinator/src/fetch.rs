//! Fetching candidate sources: http(s) URLs with bounded concurrency, timeouts, retries on
//! transient failures and a size cap; local files when allowed.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

use crate::candidate::is_private;

/// How sources are fetched.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    /// Sources fetched at once, over every job.
    pub concurrency: usize,
    /// Time one attempt may take, body included.
    pub timeout: Duration,
    /// Attempts per source for transient failures (connect errors, 408, 429, 5xx).
    pub attempts: u32,
    /// Largest body read from one source.
    pub max_bytes: u64,
    /// Source URLs on loopback and private addresses are allowed (labs, tests).
    pub allow_private: bool,
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
pub enum FetchError {
    #[error("{0}")]
    Refused(String),
    #[error("answered status {0}")]
    Status(u16),
    #[error("larger than the {0}-byte limit for one source")]
    TooLarge(u64),
    #[error("{0}")]
    Network(String),
    #[error("cannot read {path}: {error}")]
    File { path: String, error: String },
}

/// Where a source lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Http(String),
    File(PathBuf),
}

/// Reads a source URL: `http(s)://...`, `file:///path`, or a plain path.
pub fn locate(url: &str) -> Result<Location, FetchError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(Location::Http(url.to_string()));
    }
    if let Some(path) = url.strip_prefix("file://") {
        return Ok(Location::File(PathBuf::from(path)));
    }
    if url.contains("://") {
        return Err(FetchError::Refused(format!(
            "unsupported source scheme in {url:?}: use http://, https://, file:// or a path"
        )));
    }
    Ok(Location::File(PathBuf::from(url)))
}

/// The host of an http(s) URL, if it is an IP literal.
fn literal_ip(url: &str) -> Option<IpAddr> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority
        .rsplit_once('@')
        .map(|(_, a)| a)
        .unwrap_or(authority);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']')?.0.parse().ok();
    }
    authority
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(authority)
        .parse()
        .ok()
}

/// Resolves host names for source fetches, keeping only public addresses unless private targets
/// are allowed: a list URL whose name points inside the network is refused, not fetched.
struct PublicOnly {
    allow_private: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<std::net::SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| allow_private || !is_private(a.ip()))
                .collect();
            if allowed.is_empty() && !all.is_empty() {
                return Err(format!(
                    "{host} resolves only to loopback, private or link-local addresses; start the coordinator with --allow-private-targets to fetch it"
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether the host of an http(s) URL may be contacted: a private literal, or a name that
/// resolves only to private addresses, is refused unless private targets are allowed.
pub async fn check_public_url(url: &str, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    if let Some(ip) = literal_ip(url) {
        if is_private(ip) {
            return Err(format!(
                "{url} is on a loopback, private or link-local address; start the coordinator with --allow-private-targets to use it"
            ));
        }
        return Ok(());
    }
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority
        .rsplit_once('@')
        .map(|(_, a)| a)
        .unwrap_or(authority);
    let host = authority
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(authority);
    let lookup =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((host, 0))).await;
    let addrs: Vec<std::net::SocketAddr> = match lookup {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => return Err(format!("cannot resolve the host of {url}: {e}")),
        Err(_) => return Err(format!("resolving the host of {url} took more than 5s")),
    };
    if !addrs.is_empty() && addrs.iter().all(|a| is_private(a.ip())) {
        return Err(format!(
            "{url} resolves only to loopback, private or link-local addresses; start the coordinator with --allow-private-targets to use it"
        ));
    }
    Ok(())
}

/// True for statuses worth another attempt.
pub fn transient(status: u16) -> bool {
    matches!(status, 408 | 429) || (500..600).contains(&status)
}

/// Fetches sources; shared by every job of a coordinator.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    permits: Arc<Semaphore>,
    policy: FetchPolicy,
}

impl Fetcher {
    pub fn new(policy: FetchPolicy) -> anyhow::Result<Fetcher> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let allow_private = policy.allow_private;
        // Redirects are followed a few times, never to a private address literal (names are
        // checked by the resolver).
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            let private = literal_ip(attempt.url().as_str()).is_some_and(is_private);
            if private && !allow_private {
                attempt.error("redirected to a loopback, private or link-local address")
            } else if attempt.previous().len() >= 5 {
                attempt.error("more than 5 redirects")
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(PublicOnly { allow_private })
            .redirect(redirects)
            .tls_backend_preconfigured(tls)
            .connect_timeout(policy.timeout)
            .timeout(policy.timeout)
            .user_agent(concat!("proxyfleet/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Fetcher {
            client,
            permits: Arc::new(Semaphore::new(policy.concurrency.max(1))),
            policy,
        })
    }

    /// The body of a source as text (lossy UTF-8). `trusted` sources (the operator's own sources
    /// file) may be local files; a client's may not.
    pub async fn fetch(&self, url: &str, trusted: bool) -> Result<String, FetchError> {
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
                self.read_file(path).await
            }
            Location::Http(url) => {
                if !self.policy.allow_private
                    && let Some(ip) = literal_ip(&url)
                    && is_private(ip)
                {
                    return Err(FetchError::Refused(format!(
                        "{url} is on a loopback, private or link-local address; start the coordinator with --allow-private-targets to fetch it"
                    )));
                }
                self.get_with_retries(&url).await
            }
        }
    }

    async fn read_file(&self, path: PathBuf) -> Result<String, FetchError> {
        let shown = path.display().to_string();
        let file_error = |e: std::io::Error| FetchError::File {
            path: shown.clone(),
            error: e.to_string(),
        };
        let file = tokio::fs::File::open(&path).await.map_err(file_error)?;
        let mut bytes = Vec::new();
        file.take(self.policy.max_bytes + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(file_error)?;
        if bytes.len() as u64 > self.policy.max_bytes {
            return Err(FetchError::TooLarge(self.policy.max_bytes));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn get_with_retries(&self, url: &str) -> Result<String, FetchError> {
        let mut last = FetchError::Network("not fetched".into());
        for attempt in 0..self.policy.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 << attempt.min(4))).await;
            }
            match self.get_once(url).await {
                Ok(text) => return Ok(text),
                Err(e @ FetchError::Status(status)) if transient(status) => last = e,
                Err(e @ FetchError::Network(_)) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn get_once(&self, url: &str) -> Result<String, FetchError> {
        let network = |e: reqwest::Error| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            FetchError::Network(text)
        };
        let mut response = self.client.get(url).send().await.map_err(network)?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(FetchError::Status(status));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(network)? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > self.policy.max_bytes {
                return Err(FetchError::TooLarge(self.policy.max_bytes));
            }
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_of_sources() {
        assert_eq!(
            locate("https://x.test/a").unwrap(),
            Location::Http("https://x.test/a".into())
        );
        assert_eq!(
            locate("file:///tmp/a.txt").unwrap(),
            Location::File("/tmp/a.txt".into())
        );
        assert_eq!(
            locate("lists/a.txt").unwrap(),
            Location::File("lists/a.txt".into())
        );
        assert!(locate("ftp://x/a").is_err());
    }

    #[test]
    fn literal_ips_are_found_in_urls() {
        assert_eq!(
            literal_ip("http://127.0.0.1:8080/x"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            literal_ip("http://u:p@10.0.0.1/x"),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            literal_ip("https://[::1]:443/"),
            Some("::1".parse().unwrap())
        );
        assert_eq!(literal_ip("https://lists.example.net/"), None);
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
        assert!(err.contains("resolves only to loopback"), "{err}");
        assert!(
            check_public_url("http://localhost:8080/judge", true)
                .await
                .is_ok()
        );
        assert!(
            check_public_url("http://10.1.2.3/judge", false)
                .await
                .unwrap_err()
                .contains("--allow-private-targets")
        );
        assert!(
            check_public_url("http://203.0.113.7/judge", false)
                .await
                .is_ok()
        );
        let fetcher = Fetcher::new(FetchPolicy::default()).unwrap();
        let err = fetcher
            .fetch("http://localhost:1/list.txt", false)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("resolves only to loopback"), "{err}");
    }

    #[tokio::test]
    async fn private_urls_and_client_local_paths_are_refused() {
        let fetcher = Fetcher::new(FetchPolicy::default()).unwrap();
        let err = fetcher
            .fetch("http://127.0.0.1:1/list", false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--allow-private-targets"), "{err}");
        let err = fetcher.fetch("/etc/hostname", false).await.unwrap_err();
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
        assert_eq!(
            fetcher.fetch(small.to_str().unwrap(), true).await.unwrap(),
            "1.2.3.4:80\n"
        );
        assert_eq!(
            fetcher
                .fetch(big.to_str().unwrap(), true)
                .await
                .unwrap_err(),
            FetchError::TooLarge(1024)
        );
        let missing = fetcher.fetch("/nonexistent/x.txt", true).await.unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/x.txt"),
            "{missing}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
