//! What a judge's answer shows of the caller: the kinds of judge a worker understands, told apart
//! from the answer alone, and the exit address and anonymity grade each kind allows.
//!
//! - [`JudgeKind::Proxyfleet`]: proxyfleet's own judge, JSON with `token`, `remote_addr` and
//!   `headers`. It echoes the check's token, so a proxy that answers by itself is caught.
//! - [`JudgeKind::Httpbin`]: JSON with `origin` (one address, or the `a, b` chain a proxy's
//!   `X-Forwarded-For` made) and, but for `/ip`, a `headers` object; `/get` also echoes the query
//!   in `args`.
//! - [`JudgeKind::Azenv`]: a text or HTML dump of `HTTP_*` header lines and `REMOTE_ADDR = ...`.
//! - [`JudgeKind::Address`]: the body is the caller's address and nothing else (icanhazip).
//! - [`JudgeKind::Page`]: anything else a judge URL answers 200 with, e.g. a plain web page. It
//!   shows nothing of the caller: a proxy is usable when the page answers 200 through it.
//!
//! A judge whose answer to the direct probe carried the probe's token (the built-in judge; an
//! httpbin `/get`, whose `args` echo the query; an azenv dump showing `QUERY_STRING`) is held to
//! the token on every check, which is what detects a proxy answering by itself. Other judges
//! cannot tell such a proxy from a working one, beyond an answer that lost the judge's shape.

use std::collections::BTreeSet;
use std::net::IpAddr;

use proxyfleet_proto::v1 as pb;

/// The shape of a judge's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JudgeKind {
    Proxyfleet,
    Httpbin,
    Azenv,
    Address,
    Page,
}

impl JudgeKind {
    /// The name logs and verdict details use.
    pub fn name(self) -> &'static str {
        match self {
            JudgeKind::Proxyfleet => "proxyfleet",
            JudgeKind::Httpbin => "httpbin-style",
            JudgeKind::Azenv => "azenv-style",
            JudgeKind::Address => "address-only",
            JudgeKind::Page => "plain page",
        }
    }
}

/// What a judge's answer showed, read once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo {
    pub kind: JudgeKind,
    /// Addresses the judge names as the caller, the one that connected to it last (an httpbin
    /// `origin` chain lists the forwarded ones first). Empty when it names none.
    pub callers: Vec<IpAddr>,
    /// The request headers the judge saw, names lowercase; `None` when the kind shows none.
    pub headers: Option<Vec<(String, String)>>,
    /// The answer carries this check's token where the kind echoes the request's query.
    pub token_seen: bool,
}

impl Echo {
    /// The address the judge saw connecting: the exit address of a proxy.
    pub fn exit_ip(&self) -> Option<IpAddr> {
        self.callers.last().copied()
    }
}

/// Headers that reveal a proxy in the request the judge received.
const PROXY_HEADERS: &[&str] = &[
    "via",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-server",
    "x-real-ip",
    "client-ip",
    "x-client-ip",
    "x-proxy-id",
    "x-proxy-connection",
    "proxy-connection",
    "x-bluecoat-via",
    "x-tinyproxy",
    "x-cache",
    "x-cache-lookup",
    "cache-control-proxy",
];

/// Reads a judge's answer body: its kind, the caller it names, the headers it shows, and whether
/// it echoes `token`. Never fails: an answer of no known shape is a [`JudgeKind::Page`].
pub fn read(body: &str, token: &str) -> Echo {
    let page = Echo {
        kind: JudgeKind::Page,
        callers: Vec::new(),
        headers: None,
        token_seen: false,
    };
    let trimmed = body.trim();
    if trimmed.starts_with('{') {
        return match serde_json::from_str::<serde_json::Value>(trimmed) {
            Ok(serde_json::Value::Object(json)) => read_json(&json, token).unwrap_or(page),
            _ => page,
        };
    }
    if let Ok(ip) = trimmed.parse::<IpAddr>() {
        return Echo {
            kind: JudgeKind::Address,
            callers: vec![ip],
            headers: None,
            token_seen: false,
        };
    }
    read_azenv(body, token).unwrap_or(page)
}

fn read_json(json: &serde_json::Map<String, serde_json::Value>, token: &str) -> Option<Echo> {
    let headers = json.get("headers").and_then(|h| h.as_object()).map(|h| {
        h.iter()
            .map(|(name, value)| {
                let value = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (name.to_ascii_lowercase(), value)
            })
            .collect::<Vec<_>>()
    });
    if let (Some(remote), Some(headers)) = (
        json.get("remote_addr").and_then(|a| a.as_str()),
        headers.clone(),
    ) {
        return Some(Echo {
            kind: JudgeKind::Proxyfleet,
            callers: remote.trim().parse().ok().into_iter().collect(),
            headers: Some(headers),
            token_seen: json.get("token").and_then(|t| t.as_str()) == Some(token),
        });
    }
    let origin = json.get("origin")?.as_str()?;
    let callers: Vec<IpAddr> = origin
        .split(',')
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    if callers.is_empty() {
        return None;
    }
    let token_seen = json
        .get("args")
        .and_then(|a| a.get("token"))
        .and_then(|t| t.as_str())
        == Some(token);
    Some(Echo {
        kind: JudgeKind::Httpbin,
        callers,
        headers,
        token_seen,
    })
}

/// An azenv-style dump: `NAME = value` lines, HTML tags around them ignored.
fn read_azenv(body: &str, token: &str) -> Option<Echo> {
    let mut remote = None;
    let mut headers = Vec::new();
    let mut token_seen = false;
    for line in body.lines() {
        let line = strip_tags(line);
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            continue;
        }
        if name == "REMOTE_ADDR" {
            remote = value.parse::<IpAddr>().ok();
        } else if let Some(header) = name.strip_prefix("HTTP_") {
            headers.push((header.to_ascii_lowercase().replace('_', "-"), value.into()));
        } else if matches!(name, "QUERY_STRING" | "REQUEST_URI")
            && value.contains(&format!("token={token}"))
        {
            token_seen = true;
        }
    }
    Some(Echo {
        kind: JudgeKind::Azenv,
        callers: vec![remote?],
        headers: Some(headers),
        token_seen,
    })
}

/// A line without its HTML tags.
fn strip_tags(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_tag = false;
    for c in line.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// Every IP-looking token of a header value, e.g. of `for=192.0.2.1, 10.0.0.1:8080`.
fn ip_tokens(value: &str) -> impl Iterator<Item = IpAddr> + '_ {
    value
        .split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        .filter(|t| !t.is_empty())
        .filter_map(|t| {
            t.parse::<IpAddr>()
                .ok()
                .or_else(|| t.rsplit_once(':').and_then(|(ip, _port)| ip.parse().ok()))
        })
}

/// Grades what the judge saw: transparent when the worker's own address shows anywhere;
/// anonymous when proxy headers show, or the judge names a chain of callers; elite otherwise.
/// A judge that shows no headers cannot tell elite: without those signs the grade is unknown.
pub fn grade(echo: &Echo, own: &BTreeSet<IpAddr>) -> pb::Anonymity {
    let no_headers = Vec::new();
    let headers = echo.headers.as_ref().unwrap_or(&no_headers);
    // The Host header names the judge, which may share the worker's address; it reveals nothing.
    let leaks_own = echo.callers.iter().any(|ip| own.contains(ip))
        || headers
            .iter()
            .filter(|(name, _)| name != "host")
            .any(|(_, v)| ip_tokens(v).any(|ip| own.contains(&ip)));
    if leaks_own {
        pb::Anonymity::Transparent
    } else if echo.callers.len() > 1
        || headers
            .iter()
            .any(|(name, _)| PROXY_HEADERS.contains(&name.as_str()))
    {
        pb::Anonymity::Anonymous
    } else if echo.headers.is_none() {
        pb::Anonymity::Unknown
    } else {
        pb::Anonymity::Elite
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> BTreeSet<IpAddr> {
        ["127.0.0.1".parse().unwrap()].into()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn each_kind_is_told_from_its_answer() {
        let proxyfleet = read(
            r#"{"token":"t1","remote_addr":"127.0.0.9","headers":{"Via":"1.1 x"}}"#,
            "t1",
        );
        assert_eq!(
            (proxyfleet.kind, proxyfleet.exit_ip(), proxyfleet.token_seen),
            (JudgeKind::Proxyfleet, Some(ip("127.0.0.9")), true)
        );
        assert_eq!(
            proxyfleet.headers,
            Some(vec![("via".to_string(), "1.1 x".to_string())])
        );

        let get = read(
            r#"{"args":{"token":"t1"},"headers":{"Host":"j"},"origin":"10.0.0.1, 203.0.113.5","url":"http://j/get?token=t1"}"#,
            "t1",
        );
        assert_eq!(get.kind, JudgeKind::Httpbin);
        assert_eq!(get.callers, [ip("10.0.0.1"), ip("203.0.113.5")]);
        assert_eq!(get.exit_ip(), Some(ip("203.0.113.5")));
        assert!(get.token_seen);
        let json = read(r#"{"origin":"203.0.113.5","headers":{}}"#, "t1");
        assert_eq!((json.kind, json.token_seen), (JudgeKind::Httpbin, false));

        let azenv = read(
            "<html><body><pre>\nHTTP_HOST = judge.test\nHTTP_VIA = 1.1 squid\nQUERY_STRING = token=t1\nREMOTE_ADDR = 198.51.100.7\nREQUEST_TIME = 1700000000\n</pre></body></html>",
            "t1",
        );
        assert_eq!(azenv.kind, JudgeKind::Azenv);
        assert_eq!(azenv.exit_ip(), Some(ip("198.51.100.7")));
        assert!(azenv.token_seen);
        assert_eq!(
            azenv.headers,
            Some(vec![
                ("host".to_string(), "judge.test".to_string()),
                ("via".to_string(), "1.1 squid".to_string()),
            ])
        );

        let address = read("203.0.113.9\n", "t1");
        assert_eq!(
            (address.kind, address.exit_ip(), address.headers),
            (JudgeKind::Address, Some(ip("203.0.113.9")), None)
        );
        assert_eq!(
            read(" 2001:db8::7 ", "t").exit_ip(),
            Some(ip("2001:db8::7"))
        );
    }

    #[test]
    fn answers_of_no_known_shape_are_pages() {
        for body in [
            "",
            "hello",
            "<html><title>Shop</title>Add to cart</html>",
            r#"{"slideshow":{"title":"Sample"}}"#,
            r#"{"origin":"not an address","headers":{}}"#,
            "{ broken json",
            "[1, 2]",
            "KEY = value without a remote address",
            "203.0.113.9 and more",
        ] {
            let echo = read(body, "t");
            assert_eq!(echo.kind, JudgeKind::Page, "{body:?}");
            assert_eq!((echo.exit_ip(), echo.token_seen), (None, false), "{body:?}");
        }
    }

    #[test]
    fn the_token_counts_only_where_the_kind_echoes_the_query() {
        assert!(
            !read(
                r#"{"token":"t0","remote_addr":"1.1.1.1","headers":{}}"#,
                "t1"
            )
            .token_seen
        );
        assert!(!read(r#"{"args":{},"origin":"1.1.1.1","headers":{}}"#, "t1").token_seen);
        assert!(!read("QUERY_STRING = token=t0\nREMOTE_ADDR = 1.1.1.1", "t1").token_seen);
        // A page that quotes the URL asked for is no echo of the caller.
        assert!(!read("<a href=\"/judge?token=t1\">again</a>", "t1").token_seen);
    }

    #[test]
    fn grades_follow_what_the_kind_shows() {
        let grade_of = |body: &str| grade(&read(body, "t"), &own());
        use pb::Anonymity::*;
        let cases: [(&str, pb::Anonymity); 13] = [
            (
                r#"{"remote_addr":"127.0.0.7","headers":{"Host":"127.0.0.1:80","User-Agent":"x"}}"#,
                Elite,
            ),
            (
                r#"{"remote_addr":"127.0.0.7","headers":{"Via":"1.1 squid"}}"#,
                Anonymous,
            ),
            (
                r#"{"remote_addr":"127.0.0.7","headers":{"X-Forwarded-For":"unknown"}}"#,
                Anonymous,
            ),
            (
                r#"{"remote_addr":"127.0.0.7","headers":{"x-forwarded-for":"127.0.0.1"}}"#,
                Transparent,
            ),
            (r#"{"remote_addr":"127.0.0.1","headers":{}}"#, Transparent),
            (r#"{"origin":"127.0.0.7","headers":{"Host":"j"}}"#, Elite),
            (
                r#"{"origin":"127.0.0.7","headers":{"Via":"1.1 x"}}"#,
                Anonymous,
            ),
            (
                r#"{"origin":"10.1.1.1, 127.0.0.7","headers":{}}"#,
                Anonymous,
            ),
            (
                r#"{"origin":"127.0.0.1, 127.0.0.7","headers":{"Via":"1.1 x"}}"#,
                Transparent,
            ),
            ("REMOTE_ADDR = 127.0.0.7\nHTTP_HOST = j", Elite),
            ("REMOTE_ADDR = 127.0.0.7\nHTTP_VIA = 1.1 x", Anonymous),
            (
                "REMOTE_ADDR = 127.0.0.7\nHTTP_X_FORWARDED_FOR = 127.0.0.1",
                Transparent,
            ),
            ("127.0.0.1", Transparent),
        ];
        for (body, expected) in cases {
            assert_eq!(grade_of(body), expected, "{body}");
        }
        // httpbin's /ip shows the chain of callers but no headers.
        assert_eq!(grade_of(r#"{"origin":"10.1.1.1, 127.0.0.7"}"#), Anonymous);
        assert_eq!(grade_of(r#"{"origin":"127.0.0.7"}"#), Unknown);
        // An address alone cannot tell an anonymous proxy from an elite one; a page tells nothing.
        assert_eq!(grade_of("127.0.0.7"), Unknown);
        assert_eq!(grade_of("<html>hi</html>"), Unknown);
    }

    #[test]
    fn ipv6_own_addresses_are_found_in_headers() {
        let own: BTreeSet<IpAddr> = [ip("2001:db8::5")].into();
        let echo = read(
            r#"{"remote_addr":"2001:db8::9","headers":{"x-forwarded-for":"2001:db8::5, 10.0.0.1"}}"#,
            "t",
        );
        assert_eq!(grade(&echo, &own), pb::Anonymity::Transparent);
    }
}
