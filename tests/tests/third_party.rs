//! Real third-party proxies (squid and tinyproxy in each header mode, dante's SOCKS5) checked by
//! a real coordinator and worker: every one usable, graded as its headers deserve, and seen by the
//! judge from its own exit address.

use std::collections::HashMap;
use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, WAIT_LIMIT};
use proxyfleet_tests::third_party::{HeaderMode, RealProxy, Setup};

/// Headers that announce a proxy, as the worker's grading knows them (lowercase).
const PROXY_HEADERS: &[&str] = &["via", "x-forwarded-for", "x-tinyproxy", "forwarded"];

/// The grade each setup must get: the worker calls from 127.0.0.1 and each proxy connects out
/// from its own address, so only a header carrying 127.0.0.1 makes it transparent.
fn expected_grade(setup: Setup) -> pb::Anonymity {
    match setup.mode() {
        Some(HeaderMode::Transparent) => pb::Anonymity::Transparent,
        Some(HeaderMode::Anonymous) => pb::Anonymity::Anonymous,
        Some(HeaderMode::Elite) | None => pb::Anonymity::Elite,
    }
}

/// What the judge saw through `proxy`, asked directly: the raw facts behind a grade.
async fn judge_echo(proxy: &RealProxy, judge_url: &str) -> serde_json::Value {
    let url = format!("{judge_url}?token=direct-{}", fastrand::u32(..));
    let body = proxy
        .fetch(&url, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{}: {e}; log:\n{}", proxy.line, proxy.log_text()));
    serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{}: judge answered non-JSON ({e}): {body}", proxy.line))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_proxies_are_usable_and_graded_by_their_headers() {
    let coordinator = CoordinatorProc::start(&[]).await;
    let _worker = coordinator.worker("w1", &["--max-checks", "16"]);
    let modes = [
        HeaderMode::Transparent,
        HeaderMode::Anonymous,
        HeaderMode::Elite,
    ];
    let mut proxies = Vec::new();
    for mode in modes {
        proxies.push(RealProxy::squid(mode).await);
        proxies.push(RealProxy::tinyproxy(mode).await);
    }
    proxies.push(RealProxy::dante().await);

    // The programs' own behavior first, so a wrong grade below can be told from a wrong config.
    let mut echoes: HashMap<String, serde_json::Value> = HashMap::new();
    for proxy in proxies.iter().filter(|p| p.setup.mode().is_some()) {
        let echo = judge_echo(proxy, &coordinator.judge_url).await;
        let headers: HashMap<String, String> = echo["headers"]
            .as_object()
            .expect("judge echoes headers")
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_string()))
            .collect();
        let announced: Vec<&str> = PROXY_HEADERS
            .iter()
            .copied()
            .filter(|h| headers.contains_key(*h))
            .collect();
        // The Host header names the judge, which also listens on 127.0.0.1.
        let leaks_client = headers
            .iter()
            .any(|(name, value)| name != "host" && value.contains("127.0.0.1"));
        let label = proxy.setup.label();
        assert_eq!(
            echo["remote_addr"],
            proxy.egress.to_string(),
            "{label}: {echo}"
        );
        match proxy.setup.mode() {
            Some(HeaderMode::Transparent) => assert!(leaks_client, "{label}: {echo}"),
            Some(HeaderMode::Anonymous) => {
                assert!(!leaks_client && !announced.is_empty(), "{label}: {echo}")
            }
            Some(HeaderMode::Elite) | None => {
                assert!(!leaks_client && announced.is_empty(), "{label}: {echo}")
            }
        }
        echoes.insert(proxy.line.clone(), echo);
    }

    let lines: Vec<String> = proxies.iter().map(|p| p.line.clone()).collect();
    let job_id = coordinator
        .submit(
            &lines,
            &["--timeout", "5s", "--chunk-size", "10", "--min-usable", "0"],
        )
        .await;
    let mut client = coordinator.client().await;
    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");

    let results = harness::results(&mut client, &job_id).await;
    assert_eq!(results.len(), proxies.len(), "{results:?}");
    for proxy in &proxies {
        let label = proxy.setup.label();
        let found: Vec<&pb::ProxyResult> =
            results.iter().filter(|r| r.proxy == proxy.line).collect();
        let [result] = found[..] else {
            panic!(
                "{label} ({}) checked {} times: {results:?}",
                proxy.line,
                found.len()
            );
        };
        let seen = echoes
            .get(&proxy.line)
            .map_or_else(|| "(SOCKS: no headers)".to_string(), |e| e.to_string());
        let context = || {
            format!(
                "{label}: {result:?}\njudge saw, asked directly: {seen}\nproxy log:\n{}",
                proxy.log_text()
            )
        };
        assert!(result.usable, "{}", context());
        assert_eq!(result.reason, pb::Reason::None as i32, "{}", context());
        assert_eq!(result.exit_ip, proxy.egress.to_string(), "{}", context());
        assert_eq!(
            pb::Anonymity::try_from(result.anonymity),
            Ok(expected_grade(proxy.setup)),
            "{}",
            context()
        );
    }
}
