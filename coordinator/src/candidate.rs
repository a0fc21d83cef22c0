//! Proxy candidates: parsing a list line by line, normalizing, deduplicating, refusing private targets.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Longest line accepted in a candidate list; a longer one is rejected on its own.
pub const MAX_LINE_LEN: usize = 2048;

/// How a worker talks to a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Https,
    Socks4,
    Socks4a,
    Socks5,
    Socks5h,
}

impl Protocol {
    pub const ALL: [Protocol; 6] = [
        Protocol::Http,
        Protocol::Https,
        Protocol::Socks4,
        Protocol::Socks4a,
        Protocol::Socks5,
        Protocol::Socks5h,
    ];

    pub fn scheme(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Socks4 => "socks4",
            Protocol::Socks4a => "socks4a",
            Protocol::Socks5 => "socks5",
            Protocol::Socks5h => "socks5h",
        }
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        Protocol::ALL
            .into_iter()
            .find(|p| p.scheme() == lower)
            .ok_or_else(|| {
                format!("unknown protocol {s:?}: expected http, https, socks4, socks4a, socks5 or socks5h")
            })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme())
    }
}

/// One proxy to check, normalized (lowercase scheme and host, IPv6 without brackets).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Candidate {
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    pub auth: Option<(String, String)>,
}

impl Candidate {
    /// `scheme://host:port`, without credentials: what users see in results.
    pub fn url(&self) -> String {
        format!("{}://{}", self.protocol, self.host_port())
    }

    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL a client uses, credentials included; also the identity for deduplication (the
    /// same proxy with other credentials is another candidate).
    pub fn full_url(&self) -> String {
        match &self.auth {
            Some((user, pass)) => format!("{}://{user}:{pass}@{}", self.protocol, self.host_port()),
            None => self.url(),
        }
    }
}

/// A line of the list that was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Line number, from 1.
    pub line: u64,
    pub text: String,
    pub reason: String,
}

/// What came out of a list.
#[derive(Debug, Default)]
pub struct ParsedList {
    pub candidates: Vec<Candidate>,
    pub rejected: Vec<Rejected>,
    pub duplicates: u64,
}

/// Which targets a list may name.
#[derive(Debug, Clone, Copy)]
pub struct TargetPolicy {
    /// Loopback, private, link-local, multicast and unspecified addresses are allowed.
    pub allow_private: bool,
}

/// Parses every line; blank lines and lines starting with `#` are skipped. Numbers come with the lines.
pub fn parse_list<'a>(
    lines: impl IntoIterator<Item = (u64, &'a str)>,
    default_protocols: &[Protocol],
    policy: TargetPolicy,
) -> ParsedList {
    let mut out = ParsedList::default();
    let mut seen = HashSet::new();
    for (line, text) in lines {
        match parse_line(text, default_protocols, policy) {
            Ok(candidates) => {
                for candidate in candidates {
                    if seen.insert(candidate.full_url()) {
                        out.candidates.push(candidate);
                    } else {
                        out.duplicates += 1;
                    }
                }
            }
            Err(reason) => out.rejected.push(Rejected {
                line,
                text: shorten(text.trim()),
                reason,
            }),
        }
    }
    out
}

fn shorten(text: &str) -> String {
    const MAX: usize = 120;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Parses one line: `host:port` (one candidate per default protocol) or
/// `scheme://[user:pass@]host:port`. Blank lines and comments give no candidate.
pub fn parse_line(
    text: &str,
    default_protocols: &[Protocol],
    policy: TargetPolicy,
) -> Result<Vec<Candidate>, String> {
    if text.len() > MAX_LINE_LEN {
        return Err(format!(
            "line is {} bytes long; at most {MAX_LINE_LEN} are accepted",
            text.len()
        ));
    }
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return Ok(Vec::new());
    }
    let (protocols, rest): (Vec<Protocol>, &str) = match text.split_once("://") {
        Some((scheme, rest)) => (vec![scheme.parse::<Protocol>()?], rest),
        None => (default_protocols.to_vec(), text),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (auth, host_port) = match rest.rsplit_once('@') {
        Some((userinfo, host_port)) => {
            let (user, pass) = userinfo
                .split_once(':')
                .ok_or("credentials must be written user:password@")?;
            if user.is_empty() {
                return Err("empty user name before '@'".into());
            }
            (Some((user.to_string(), pass.to_string())), host_port)
        }
        None => (None, rest),
    };
    let (host, port) = split_host_port(host_port)?;
    check_target(&host, policy)?;
    Ok(protocols
        .into_iter()
        .map(|protocol| Candidate {
            protocol,
            host: host.clone(),
            port,
            auth: auth.clone(),
        })
        .collect())
}

fn split_host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("IPv6 address is missing its closing ']'")?;
        let port = after
            .strip_prefix(':')
            .ok_or("expected ':port' after the IPv6 address")?;
        let ip =
            Ipv6Addr::from_str(host).map_err(|_| format!("{host:?} is not an IPv6 address"))?;
        (ip.to_string(), port)
    } else {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or("expected host:port (no port given)")?;
        if host.contains(':') {
            return Err("IPv6 addresses must be written in brackets: [addr]:port".into());
        }
        (normalize_host(host)?, port)
    };
    let port: u32 = port
        .parse()
        .map_err(|_| format!("port {port:?} is not a number"))?;
    if port == 0 || port > 65535 {
        return Err(format!("port {port} is out of range 1-65535"));
    }
    Ok((host, port as u16))
}

fn normalize_host(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err("empty host".into());
    }
    if let Ok(ip) = Ipv4Addr::from_str(host) {
        return Ok(ip.to_string());
    }
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    if host.len() > 253 {
        return Err("host name longer than 253 characters".into());
    }
    let all_numeric = host
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if all_numeric {
        return Err(format!("{host:?} is not a valid IPv4 address"));
    }
    for label in host.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(format!("{host:?} is not a valid host name"));
        }
    }
    Ok(host.to_string())
}

fn check_target(host: &str, policy: TargetPolicy) -> Result<(), String> {
    if policy.allow_private {
        return Ok(());
    }
    let private = match IpAddr::from_str(host) {
        Ok(ip) => is_private(ip),
        Err(_) => host == "localhost" || host.ends_with(".localhost"),
    };
    if private {
        return Err(format!(
            "{host} is a loopback, private, link-local or multicast address; start the coordinator with --allow-private-targets to check such proxies"
        ));
    }
    Ok(())
}

/// Loopback, private, link-local, multicast, unspecified or otherwise not publicly routable.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 0
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: TargetPolicy = TargetPolicy {
        allow_private: false,
    };
    const LAB: TargetPolicy = TargetPolicy {
        allow_private: true,
    };

    fn one(line: &str) -> Candidate {
        let mut all = parse_line(line, &[Protocol::Http], PUBLIC).expect(line);
        assert_eq!(all.len(), 1, "{line}");
        all.remove(0)
    }

    #[test]
    fn bare_host_port_takes_the_default_protocols() {
        let all = parse_line("8.8.4.4:3128", &[Protocol::Http, Protocol::Socks5], PUBLIC).unwrap();
        let urls: Vec<_> = all.iter().map(Candidate::url).collect();
        assert_eq!(urls, ["http://8.8.4.4:3128", "socks5://8.8.4.4:3128"]);
    }

    #[test]
    fn scheme_auth_and_case_are_normalized() {
        let c = one("SOCKS5://User:Pa:ss@Proxy-7.Example.COM:1080/");
        assert_eq!(c.protocol, Protocol::Socks5);
        assert_eq!(c.host, "proxy-7.example.com");
        assert_eq!(c.port, 1080);
        assert_eq!(c.auth, Some(("User".into(), "Pa:ss".into())));
        assert_eq!(c.url(), "socks5://proxy-7.example.com:1080");
    }

    #[test]
    fn hostnames_with_digits_and_ipv6_in_brackets() {
        assert_eq!(one("1proxy2.net:80").host, "1proxy2.net");
        let v6 = one("http://[2001:DB8::1]:8080");
        assert_eq!(v6.host, "2001:db8::1");
        assert_eq!(v6.url(), "http://[2001:db8::1]:8080");
    }

    #[test]
    fn blank_lines_and_comments_give_nothing() {
        assert!(
            parse_line("   ", &[Protocol::Http], PUBLIC)
                .unwrap()
                .is_empty()
        );
        assert!(
            parse_line("# list", &[Protocol::Http], PUBLIC)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn malformed_lines_say_what_is_wrong() {
        let cases = [
            ("8.8.8.8", "no port"),
            ("8.8.8.8:0", "out of range"),
            ("8.8.8.8:65536", "out of range"),
            ("8.8.8.8:http", "not a number"),
            ("ftp://8.8.8.8:21", "unknown protocol"),
            ("999.1.1.1:80", "not a valid IPv4"),
            ("bad_host!:80", "not a valid host name"),
            ("2001:db8::1:80", "brackets"),
            ("[2001:db8::1:80", "closing"),
            ("http://:secret@8.8.8.8:80", "empty user"),
            ("http://user@8.8.8.8:80", "user:password"),
            (":80", "empty host"),
        ];
        for (line, expected) in cases {
            let err = parse_line(line, &[Protocol::Http], PUBLIC).unwrap_err();
            assert!(err.contains(expected), "{line}: {err}");
        }
        let long = format!("{}:80", "a".repeat(MAX_LINE_LEN));
        assert!(
            parse_line(&long, &[Protocol::Http], PUBLIC)
                .unwrap_err()
                .contains("bytes long")
        );
    }

    #[test]
    fn private_targets_need_the_lab_policy() {
        for line in [
            "127.0.0.1:80",
            "10.1.2.3:80",
            "192.168.0.1:80",
            "172.16.0.1:80",
            "169.254.1.1:80",
            "224.0.0.1:80",
            "0.0.0.0:80",
            "localhost:80",
            "[::1]:80",
            "[fe80::1]:80",
            "[fd00::1]:80",
            "[::ffff:127.0.0.1]:80",
        ] {
            let err = parse_line(line, &[Protocol::Http], PUBLIC).unwrap_err();
            assert!(err.contains("--allow-private-targets"), "{line}: {err}");
            assert_eq!(parse_line(line, &[Protocol::Http], LAB).unwrap().len(), 1);
        }
    }

    #[test]
    fn a_list_dedups_and_numbers_its_rejections() {
        let text =
            "8.8.8.8:80\n\nhttp://8.8.8.8:80\nnonsense\nsocks5://8.8.8.8:80\n# c\n1.1.1.1:1\n";
        let parsed = parse_list(
            text.lines().enumerate().map(|(i, l)| (i as u64 + 1, l)),
            &[Protocol::Http],
            PUBLIC,
        );
        let urls: Vec<_> = parsed.candidates.iter().map(Candidate::url).collect();
        assert_eq!(
            urls,
            [
                "http://8.8.8.8:80",
                "socks5://8.8.8.8:80",
                "http://1.1.1.1:1"
            ]
        );
        assert_eq!(parsed.duplicates, 1);
        assert_eq!(parsed.rejected.len(), 1);
        assert_eq!(parsed.rejected[0].line, 4);
        assert_eq!(parsed.rejected[0].text, "nonsense");
    }
}
