//! The one parser of http(s) URLs that proxyfleet dials (judges, sources, redirects): strict, so
//! that the URL a client submits, the URL checked and the URL connected to are the same URL.
//!
//! Forms that parsers disagree on are refused rather than interpreted: user info (`a@b`),
//! backslashes, percent-encoded or non-ASCII hosts, and every IPv4 spelling but the dotted quad
//! (`2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`, `0`). What is left means one thing to every
//! resolver, and the address it resolves to is checked again where it is dialled
//! ([`crate::guard`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest URL taken: judges and sources are addresses, not documents.
pub const MAX_URL_LEN: usize = 2048;

/// An http(s) URL split once: scheme, host, port, and path with query.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpUrl {
    pub https: bool,
    /// A lowercase name, a dotted-quad IPv4 address, or an IPv6 address without brackets.
    pub host: String,
    pub port: u16,
    /// Path and query, starting with '/'; the fragment is dropped.
    pub path: String,
}

/// Why a URL was refused; its text names the URL and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError {
    url: String,
    why: String,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "URL {:?} {}", self.url, self.why)
    }
}

impl std::error::Error for UrlError {}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<HttpUrl, UrlError> {
        let fail = |why: &str| UrlError {
            url: shorten(url),
            why: why.to_string(),
        };
        if url.len() > MAX_URL_LEN {
            return Err(fail("is longer than 2048 bytes"));
        }
        if url
            .chars()
            .any(|c| c.is_ascii_control() || c.is_whitespace() || c == '\\')
        {
            return Err(fail("contains a space, a control character or a backslash"));
        }
        let lower = url
            .get(..8)
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let (https, rest) = if lower.starts_with("http://") {
            (false, &url[7..])
        } else if lower.starts_with("https://") {
            (true, &url[8..])
        } else {
            return Err(fail("must start with http:// or https://"));
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err(fail(
                "has user info (user@host), which is not supported: name the host alone",
            ));
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (inside, after) = bracketed
                .split_once(']')
                .ok_or_else(|| fail("has an unclosed '['"))?;
            let v6: Ipv6Addr = inside
                .parse()
                .map_err(|_| fail("has a bracketed host that is not an IPv6 address"))?;
            (v6.to_string(), port_of(after, default_port).map_err(fail)?)
        } else {
            let (host, after) = match authority.find(':') {
                Some(i) => authority.split_at(i),
                None => (authority, ""),
            };
            (
                checked_host(host).map_err(fail)?,
                port_of(after, default_port).map_err(fail)?,
            )
        };
        let tail = tail.split('#').next().unwrap_or("");
        let path = if tail.is_empty() {
            "/".to_string()
        } else if tail.starts_with('?') {
            format!("/{tail}")
        } else {
            tail.to_string()
        };
        Ok(HttpUrl {
            https,
            host,
            port,
            path,
        })
    }

    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// `host[:port]` for a Host header or an absolute URL: brackets for IPv6, the port only when it
    /// is not the scheme's default.
    pub fn authority(&self) -> String {
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            self.bracketed_host()
        } else {
            self.authority_with_port()
        }
    }

    /// `host:port` always, as a CONNECT target.
    pub fn authority_with_port(&self) -> String {
        format!("{}:{}", self.bracketed_host(), self.port)
    }

    fn bracketed_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    /// The path with `token=...` added to its query.
    pub fn path_with_token(&self, token: &str) -> String {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        format!("{}{sep}token={token}", self.path)
    }

    /// Where a redirect's `Location` points, from this URL, resolved as RFC 3986 resolves a
    /// reference: absolute, scheme-relative, path-absolute, query-only or relative to this URL's
    /// directory, dot segments removed. Parsed as strictly as any URL.
    pub fn join(&self, location: &str) -> Result<HttpUrl, UrlError> {
        let location = location.split('#').next().unwrap_or("");
        let scheme = if self.https { "https" } else { "http" };
        if has_scheme(location) {
            return HttpUrl::parse(location);
        }
        if location.starts_with("//") {
            return HttpUrl::parse(&format!("{scheme}:{location}"));
        }
        let base = format!("{scheme}://{}", self.authority());
        let (own_path, own_query) = match self.path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (self.path.as_str(), None),
        };
        let (path, query) = match location.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (location, None),
        };
        let merged = if path.is_empty() {
            own_path.to_string()
        } else if path.starts_with('/') {
            path.to_string()
        } else {
            let dir = &own_path[..own_path.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{path}")
        };
        let query = match (path.is_empty(), query) {
            (_, Some(query)) => Some(query),
            (true, None) => own_query,
            (false, None) => None,
        };
        let mut url = format!("{base}{}", remove_dot_segments(&merged));
        if let Some(query) = query {
            url.push('?');
            url.push_str(query);
        }
        HttpUrl::parse(&url)
    }
}

/// Whether a reference starts with a scheme (`name:`), as opposed to a path that holds a colon
/// further on (`/web/2024/https://...`).
fn has_scheme(reference: &str) -> bool {
    let Some(colon) = reference.find(':') else {
        return false;
    };
    let name = &reference[..colon];
    name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// A path with `.` and `..` segments resolved (RFC 3986, 5.2.4); never above the root.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            other => out.push(other),
        }
    }
    format!("/{}", out.join("/"))
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

/// A host name or dotted quad, lowercased; anything a resolver might read another way is refused.
fn checked_host(host: &str) -> Result<String, &'static str> {
    if host.is_empty() {
        return Err("has no host");
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(
            "has a host with characters other than letters, digits, '.', '-' and '_' (write internationalized names in their xn-- form)",
        );
    }
    let host = host.to_ascii_lowercase();
    if ends_in_a_number(&host) {
        match host.parse::<Ipv4Addr>() {
            Ok(ip) if ip.to_string() == host => {}
            _ => {
                return Err(
                    "has a numeric host that is not a plain dotted-quad IPv4 address (a.b.c.d): other spellings are refused",
                );
            }
        }
    }
    Ok(host)
}

/// Whether `host` is an IPv4 address to WHATWG parsers and to `inet_aton`: its last label is a
/// number, in decimal, octal or hex (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`). Only the
/// plain dotted quad among these means the same to every reader; the rest are refused.
pub fn ends_in_a_number(host: &str) -> bool {
    let last = host.trim_end_matches('.').rsplit('.').next().unwrap_or("");
    !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || last
                .strip_prefix("0x")
                .or_else(|| last.strip_prefix("0X"))
                .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit())))
}

/// The port after the host (`""` or `":N"`).
fn port_of(after: &str, default: u16) -> Result<u16, &'static str> {
    if after.is_empty() {
        return Ok(default);
    }
    let digits = after.strip_prefix(':').ok_or("has text after its host")?;
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("has a bad port");
    }
    match digits.parse::<u16>() {
        Ok(0) | Err(_) => Err("has a bad port (1 to 65535)"),
        Ok(port) => Ok(port),
    }
}

fn shorten(text: &str) -> String {
    crate::text::shorten(text, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_parts() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/judge").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (false, "127.0.0.1", 8080, "/judge")
        );
        assert_eq!(u.path_with_token("t"), "/judge?token=t");
        let u = HttpUrl::parse("HTTPS://Judge.Example.net?x=1#frag").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (true, "judge.example.net", 443, "/?x=1")
        );
        assert_eq!(u.to_string(), "https://judge.example.net/?x=1");
        let u = HttpUrl::parse("http://[::1]:9/j?a=b").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        assert_eq!(u.authority(), "[::1]:9");
        assert_eq!(u.ip(), Some("::1".parse().unwrap()));
        let u = HttpUrl::parse("http://[::ffff:127.0.0.1]/").unwrap();
        assert_eq!(u.ip(), Some("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn forms_parsers_disagree_on_are_refused() {
        for bad in [
            "http://2130706433:80/",
            "http://0x7f000001:80/",
            "http://0X7F.0.0.1/",
            "http://0177.0.0.1:80/",
            "http://127.1:80/",
            "http://0:80/",
            "http://127.0.0.1.:80/",
            "http://1.2.3.4.5/",
            "http://127.0.0.1:80\\@192.0.2.1/",
            "http://192.0.2.1@127.0.0.1/",
            "http://a:b@example.net/",
            "http://%31%32%37.0.0.1/",
            "http://exämple.net/",
            "http://[::1/",
            "http://[zz]/",
            "http:///x",
            "http://host:0/",
            "http://host:65536/",
            "http://host:/",
            "http://host:80:80/",
            "http://host /",
            "ftp://host/",
            "//host/",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad} was taken");
        }
        for good in [
            "http://example.net",
            "http://sub-1.example.net:8080/a/b?c",
            "http://under_score.test/",
            "http://192.0.2.1/",
            "http://0.example/",
            "http://1x.example/",
        ] {
            assert!(HttpUrl::parse(good).is_ok(), "{good} was refused");
        }
    }

    #[test]
    fn redirects_join_like_a_browser() {
        let base = HttpUrl::parse("http://lists.test:8080/a/b/list.txt?x").unwrap();
        let at = |l: &str| base.join(l).unwrap().to_string();
        assert_eq!(at("/other"), "http://lists.test:8080/other");
        assert_eq!(at("next.txt"), "http://lists.test:8080/a/b/next.txt");
        assert_eq!(at("//mirror.test/l"), "http://mirror.test/l");
        assert_eq!(at("https://mirror.test/l"), "https://mirror.test/l");
        assert_eq!(at("?page=2"), "http://lists.test:8080/a/b/list.txt?page=2");
        assert_eq!(at(""), "http://lists.test:8080/a/b/list.txt?x");
        assert_eq!(at("#top"), "http://lists.test:8080/a/b/list.txt?x");
        assert_eq!(at("../x"), "http://lists.test:8080/a/x");
        assert_eq!(at("../../../x"), "http://lists.test:8080/x");
        assert_eq!(at("./"), "http://lists.test:8080/a/b/");
        assert_eq!(
            at("/web/2024/https://example.net/list.txt"),
            "http://lists.test:8080/web/2024/https://example.net/list.txt"
        );
        assert_eq!(
            at("login?next=https://x.test/"),
            "http://lists.test:8080/a/b/login?next=https://x.test/"
        );
        assert!(base.join("http://2130706433/").is_err());
        assert!(base.join("gopher://x/").is_err());
        assert!(base.join("/x\\@y").is_err());
        assert!(HttpUrl::parse(&format!("http://x.test/{}", "a".repeat(MAX_URL_LEN))).is_err());
    }
}
