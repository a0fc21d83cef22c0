//! The user's check targets as a lease names them, compiled once per lease, and the pure verdict
//! of one proxy against one target: the status, the body text or pattern, the latency.

use std::time::Duration;

use proxyfleet_common::url::HttpUrl;
use proxyfleet_proto::v1 as pb;

use crate::check::Outcome;

/// Most bytes of a target's body read and searched: a page's text, not its downloads.
pub const MAX_BODY: usize = 1024 * 1024;
/// Longest expected text or pattern quoted in a verdict's detail.
const MAX_QUOTED: usize = 60;

/// A check target, ready to check proxies against.
#[derive(Debug, Clone)]
pub struct CheckTarget {
    /// How verdicts name it: its name, or its URL.
    pub name: String,
    pub url: HttpUrl,
    /// Statuses that pass; never empty.
    pub statuses: Vec<u16>,
    pub contains: Option<String>,
    pub pattern: Option<regex::Regex>,
    pub max_latency: Option<Duration>,
}

/// A target of the lease: compiled, or why it could not be (the coordinator validates targets,
/// so only a coordinator of another version sends one that fails here).
pub type LeaseTarget = Result<CheckTarget, (String, String)>;

/// Compiles a lease's target; on failure, its name and why.
pub fn compile(target: &pb::CheckTarget) -> LeaseTarget {
    let name = if target.name.trim().is_empty() {
        target.url.clone()
    } else {
        target.name.trim().to_string()
    };
    let fail = |why: String| (name.clone(), why);
    let url = HttpUrl::parse(&target.url).map_err(|e| fail(e.to_string()))?;
    let statuses = if target.statuses.is_empty() {
        vec![200]
    } else {
        target
            .statuses
            .iter()
            .map(|&s| {
                u16::try_from(s)
                    .ok()
                    .filter(|s| (100..=599).contains(s))
                    .ok_or_else(|| fail(format!("status {s} is not an HTTP status")))
            })
            .collect::<Result<_, _>>()?
    };
    let pattern = if target.body_regex.is_empty() {
        None
    } else {
        Some(
            regex::RegexBuilder::new(&target.body_regex)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| fail(format!("invalid body pattern: {e}")))?,
        )
    };
    Ok(CheckTarget {
        name: name.clone(),
        url,
        statuses,
        contains: (!target.body_contains.is_empty()).then(|| target.body_contains.clone()),
        pattern,
        max_latency: (target.max_latency_ms > 0)
            .then(|| Duration::from_millis(target.max_latency_ms)),
    })
}

/// `text` quoted for a detail, cut to a readable length.
fn quoted(text: &str) -> String {
    if text.chars().count() <= MAX_QUOTED {
        format!("{text:?}")
    } else {
        let cut: String = text.chars().take(MAX_QUOTED).collect();
        format!("{cut:?}…")
    }
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

/// The verdict of one proxy against `target`: what came back through the proxy, after `latency`
/// (from opening the connection to the proxy to the end of the body, or to giving up).
pub fn verdict(target: &CheckTarget, outcome: Outcome, latency: Duration) -> pb::TargetVerdict {
    let named = |reason: pb::Reason, status: u16, what: String| pb::TargetVerdict {
        target: target.name.clone(),
        passed: reason == pb::Reason::None,
        reason: reason as i32,
        status: u32::from(status),
        latency_ms: millis(latency),
        detail: if what.is_empty() {
            String::new()
        } else {
            format!("target {:?}: {what}", target.name)
        },
    };
    let over = |max: Duration| {
        format!(
            "took {}ms, over its maximum of {}ms",
            millis(latency),
            max.as_millis()
        )
    };
    let (status, body) = match outcome {
        Outcome::Response { status, body } => (status, body),
        Outcome::Timeout => {
            return match target.max_latency {
                Some(max) if latency >= max => named(
                    pb::Reason::Slow,
                    0,
                    format!("no answer within its maximum of {}ms", max.as_millis()),
                ),
                _ => named(pb::Reason::Timeout, 0, "timed out".into()),
            };
        }
        Outcome::Refused => return named(pb::Reason::Refused, 0, "connection refused".into()),
        Outcome::Handshake(d) => return named(pb::Reason::Handshake, 0, d),
        Outcome::Fake(d) => {
            return named(
                pb::Reason::TokenMissing,
                0,
                format!("hijacked or fake proxy: {d}"),
            );
        }
        Outcome::Tls(d) => return named(pb::Reason::Tls, 0, d),
        Outcome::Network(d) => return named(pb::Reason::Network, 0, d),
        Outcome::Forbidden(d) => return named(pb::Reason::Forbidden, 0, d),
    };
    if !target.statuses.contains(&status) {
        let expected: Vec<String> = target.statuses.iter().map(u16::to_string).collect();
        let expected = match expected.as_slice() {
            [one] => one.clone(),
            many => format!("one of {}", many.join(", ")),
        };
        return named(
            pb::Reason::BadStatus,
            status,
            format!("answered status {status}, expected {expected}"),
        );
    }
    if let Some(text) = &target.contains
        && !body.contains(text.as_str())
    {
        return named(
            pb::Reason::BodyMismatch,
            status,
            format!("body lacks {}", quoted(text)),
        );
    }
    if let Some(pattern) = &target.pattern
        && !pattern.is_match(&body)
    {
        return named(
            pb::Reason::BodyMismatch,
            status,
            format!("body does not match {}", quoted(pattern.as_str())),
        );
    }
    if let Some(max) = target.max_latency
        && latency > max
    {
        return named(pb::Reason::Slow, status, over(max));
    }
    named(pb::Reason::None, status, String::new())
}

/// The verdict on a target that could not be compiled: it fails every proxy, saying why.
pub fn invalid(name: &str, why: &str) -> pb::TargetVerdict {
    pb::TargetVerdict {
        target: name.to_string(),
        passed: false,
        reason: pb::Reason::Network as i32,
        status: 0,
        latency_ms: 0,
        detail: format!("target {name:?}: cannot be checked: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(spec: pb::CheckTarget) -> CheckTarget {
        compile(&spec).expect("compiles")
    }

    fn shop() -> CheckTarget {
        target(pb::CheckTarget {
            url: "https://shop.test/item/7".into(),
            statuses: vec![200, 301],
            body_contains: "Add to cart".into(),
            max_latency_ms: 2_000,
            name: "shop".into(),
            ..Default::default()
        })
    }

    fn answered(status: u16, body: &str) -> Outcome {
        Outcome::Response {
            status,
            body: body.into(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_target_passes_with_its_status_text_and_time() {
        let v = verdict(&shop(), answered(200, "<b>Add to cart</b>"), ms(150));
        assert_eq!(
            v,
            pb::TargetVerdict {
                target: "shop".into(),
                passed: true,
                reason: pb::Reason::None as i32,
                status: 200,
                latency_ms: 150,
                detail: String::new(),
            }
        );
        assert!(verdict(&shop(), answered(301, "Add to cart"), ms(1)).passed);
    }

    #[test]
    fn each_failure_names_the_target_and_its_reason() {
        let cases = [
            (
                answered(503, "Add to cart"),
                ms(10),
                pb::Reason::BadStatus,
                "target \"shop\": answered status 503, expected one of 200, 301",
            ),
            (
                answered(200, "Sold out"),
                ms(10),
                pb::Reason::BodyMismatch,
                "target \"shop\": body lacks \"Add to cart\"",
            ),
            (
                answered(200, "Add to cart"),
                ms(2_300),
                pb::Reason::Slow,
                "target \"shop\": took 2300ms, over its maximum of 2000ms",
            ),
            (
                Outcome::Timeout,
                ms(2_000),
                pb::Reason::Slow,
                "target \"shop\": no answer within its maximum of 2000ms",
            ),
            (
                Outcome::Timeout,
                ms(900),
                pb::Reason::Timeout,
                "target \"shop\": timed out",
            ),
            (
                Outcome::Refused,
                ms(1),
                pb::Reason::Refused,
                "target \"shop\": connection refused",
            ),
            (
                Outcome::Fake("answered CONNECT with a body".into()),
                ms(1),
                pb::Reason::TokenMissing,
                "target \"shop\": hijacked or fake proxy: answered CONNECT with a body",
            ),
        ];
        for (outcome, latency, reason, detail) in cases {
            let v = verdict(&shop(), outcome.clone(), latency);
            assert!(!v.passed, "{outcome:?}");
            assert_eq!((v.reason, v.detail.as_str()), (reason as i32, detail));
        }
    }

    #[test]
    fn the_status_decides_before_the_body_and_the_body_before_the_time() {
        let v = verdict(&shop(), answered(404, "nothing"), ms(5_000));
        assert_eq!(v.reason, pb::Reason::BadStatus as i32);
        assert_eq!(v.status, 404);
        let v = verdict(&shop(), answered(200, "nothing"), ms(5_000));
        assert_eq!(v.reason, pb::Reason::BodyMismatch as i32);
    }

    #[test]
    fn a_pattern_must_match_and_defaults_apply() {
        let t = target(pb::CheckTarget {
            url: "http://shop.test/".into(),
            body_regex: r"price: \d+".into(),
            ..Default::default()
        });
        assert_eq!(
            (t.name.as_str(), t.statuses.as_slice()),
            ("http://shop.test/", &[200][..])
        );
        assert!(verdict(&t, answered(200, "price: 42"), ms(1)).passed);
        let v = verdict(&t, answered(200, "price: ?"), ms(99_999));
        assert_eq!(v.reason, pb::Reason::BodyMismatch as i32);
        assert_eq!(
            v.detail,
            r#"target "http://shop.test/": body does not match "price: \\d+""#
        );
        let v = verdict(&t, answered(201, "price: 42"), ms(1));
        assert_eq!(
            v.detail,
            "target \"http://shop.test/\": answered status 201, expected 200"
        );
    }

    #[test]
    fn long_expected_texts_are_cut_in_details() {
        let t = target(pb::CheckTarget {
            url: "http://shop.test/".into(),
            body_contains: "x".repeat(5_000),
            name: "long".into(),
            ..Default::default()
        });
        let v = verdict(&t, answered(200, ""), ms(1));
        assert!(v.detail.len() < 100, "{}", v.detail);
    }

    #[test]
    fn targets_that_cannot_compile_say_why() {
        for (spec, why) in [
            (
                pb::CheckTarget {
                    url: "ftp://shop.test/".into(),
                    ..Default::default()
                },
                "http:// or https://",
            ),
            (
                pb::CheckTarget {
                    url: "http://shop.test/".into(),
                    body_regex: "(".into(),
                    ..Default::default()
                },
                "invalid body pattern",
            ),
            (
                pb::CheckTarget {
                    url: "http://shop.test/".into(),
                    statuses: vec![1000],
                    ..Default::default()
                },
                "not an HTTP status",
            ),
        ] {
            let (name, error) = compile(&spec).unwrap_err();
            assert_eq!(name, spec.url);
            assert!(error.contains(why), "{error}");
            let v = invalid(&name, &error);
            assert!(!v.passed && v.detail.contains(why), "{v:?}");
        }
    }
}
