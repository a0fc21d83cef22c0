//! Checks against the user's own site: a shop on loopback whose pages answer the right body, a
//! wrong status, a body without the expected text, or too slowly; proxies that work, one that
//! rewrites the pages it relays, and a fake. Every verdict names the target and the reason, with
//! the judge and without it (targets only).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, WAIT_LIMIT};
use proxyfleet_tests::sim::{Behavior, ProxySpec, SimProxy};
use proxyfleet_tests::sites::Site;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// How long the shop's slow page takes; its target allows far less.
const SLOW: Duration = Duration::from_secs(3);

fn egress(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// What a target verdict must say.
#[derive(Debug, PartialEq)]
struct Seen {
    target: String,
    passed: bool,
    reason: pb::Reason,
    /// The start of its detail.
    detail: String,
}

fn seen(t: &pb::TargetVerdict, detail_len: usize) -> Seen {
    Seen {
        target: t.target.clone(),
        passed: t.passed,
        reason: pb::Reason::try_from(t.reason).unwrap(),
        detail: t.detail.chars().take(detail_len).collect(),
    }
}

fn expect(target: &str, reason: pb::Reason, detail: &str) -> Seen {
    Seen {
        target: target.into(),
        passed: reason == pb::Reason::None,
        reason,
        detail: detail.into(),
    }
}

/// The proxies under test: an HTTP proxy (forwarding), a SOCKS5 proxy (tunnelling), an HTTP proxy
/// that rewrites "Add to cart" in what it relays, and a fake answering everything itself.
struct Proxies {
    http: SimProxy,
    socks: SimProxy,
    rewriting: SimProxy,
    fake: SimProxy,
}

impl Proxies {
    async fn spawn() -> Proxies {
        Proxies {
            http: SimProxy::spawn(LOCAL, ProxySpec::http().with_egress(egress(41)))
                .await
                .unwrap(),
            socks: SimProxy::spawn(LOCAL, ProxySpec::socks5().with_egress(egress(42)))
                .await
                .unwrap(),
            rewriting: SimProxy::spawn(
                LOCAL,
                ProxySpec::http()
                    .with_egress(egress(43))
                    .with_rewrite("Add to cart", "Buy elsewhere"),
            )
            .await
            .unwrap(),
            fake: SimProxy::spawn(LOCAL, Behavior::Fake200).await.unwrap(),
        }
    }

    fn lines(&self) -> Vec<String> {
        [&self.http, &self.socks, &self.rewriting, &self.fake]
            .iter()
            .map(|p| p.candidate_line())
            .collect()
    }
}

/// Runs a job of `lines` with `options` to its end; its results by proxy.
async fn run(
    coordinator: &CoordinatorProc,
    lines: &[String],
    options: &[&str],
) -> (pb::Job, BTreeMap<String, pb::ProxyResult>) {
    let mut args = vec!["--timeout", "8s", "--min-usable", "0"];
    args.extend_from_slice(options);
    let job_id = coordinator.submit(lines, &args).await;
    let mut client = coordinator.client().await;
    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    let results = harness::results(&mut client, &job_id)
        .await
        .into_iter()
        .map(|r| (r.proxy.clone(), r))
        .collect();
    (job, results)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_target_behaviour_gets_its_verdict_and_names_the_target() {
    let shop = Site::shop(LOCAL, SLOW).await.unwrap();
    let proxies = Proxies::spawn().await;
    let coordinator = CoordinatorProc::start(&[]).await;
    let _worker = coordinator.worker("w", &["--max-checks", "16"]);
    let item = format!("{};contains=Add to cart;name=item", shop.url("/item"));
    let down = format!("{};name=down", shop.url("/down"));
    let sold_out = format!(
        "{};contains=Add to cart;name=sold-out",
        shop.url("/sold-out")
    );
    let slow = format!(
        "{};contains=Add to cart;max-latency=500ms;name=slow",
        shop.url("/slow")
    );
    let (job, results) = run(
        &coordinator,
        &proxies.lines(),
        &[
            "--target", &item, "--target", &down, "--target", &sold_out, "--target", &slow,
        ],
    )
    .await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let settings = job.settings.unwrap();
    let names: Vec<&str> = settings.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["item", "down", "sold-out", "slow"]);

    // The working proxies, forwarding and tunnelling alike, reach every page as it answers: the
    // first failing target decides the verdict and names itself.
    for proxy in [&proxies.http, &proxies.socks] {
        let r = &results[&proxy.candidate_line()];
        assert!(r.checked && !r.usable, "{r:?}");
        assert_eq!(r.reason, pb::Reason::BadStatus as i32, "{r:?}");
        assert_eq!(
            r.detail, "target \"down\": answered status 503, expected 200",
            "{r:?}"
        );
        let verdicts: Vec<Seen> = r.targets.iter().map(|t| seen(t, 60)).collect();
        assert_eq!(
            verdicts,
            [
                expect("item", pb::Reason::None, ""),
                expect(
                    "down",
                    pb::Reason::BadStatus,
                    "target \"down\": answered status 503, expected 200"
                ),
                expect(
                    "sold-out",
                    pb::Reason::BodyMismatch,
                    "target \"sold-out\": body lacks \"Add to cart\""
                ),
                expect(
                    "slow",
                    pb::Reason::Slow,
                    "target \"slow\": no answer within its maximum of 500ms"
                ),
            ],
            "{r:?}"
        );
        assert_eq!(r.targets[1].status, 503);
        assert!(r.targets[3].latency_ms < SLOW.as_millis() as u32, "{r:?}");
    }
    // The rewriting proxy changes the item page; a page without the text passes it untouched.
    let r = &results[&proxies.rewriting.candidate_line()];
    let verdicts: Vec<Seen> = r.targets.iter().take(2).map(|t| seen(t, 60)).collect();
    assert_eq!(
        verdicts,
        [
            expect(
                "item",
                pb::Reason::BodyMismatch,
                "target \"item\": body lacks \"Add to cart\""
            ),
            expect(
                "down",
                pb::Reason::BadStatus,
                "target \"down\": answered status 503, expected 200"
            ),
        ],
        "{r:?}"
    );
    assert_eq!(r.reason, pb::Reason::BodyMismatch as i32, "{r:?}");
    // The fake fails the judge; no target is asked through it.
    let r = &results[&proxies.fake.candidate_line()];
    assert_eq!(r.reason, pb::Reason::TokenMissing as i32, "{r:?}");
    assert!(r.targets.is_empty(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_is_usable_for_a_target_it_passes_with_or_without_a_judge() {
    let shop = Site::shop(LOCAL, SLOW).await.unwrap();
    let proxies = Proxies::spawn().await;
    let coordinator = CoordinatorProc::start(&[]).await;
    let _worker = coordinator.worker("w", &["--max-checks", "16"]);
    let item = format!(
        "{};status=200,301;contains=Add to cart;regex=\\d+ in stock;max-latency=5s;name=shop",
        shop.url("/item")
    );

    // With the judge: graded as ever, and the target's verdict beside it.
    let (job, results) = run(&coordinator, &proxies.lines(), &["--target", &item]).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    for (proxy, exit) in [(&proxies.http, egress(41)), (&proxies.socks, egress(42))] {
        let r = &results[&proxy.candidate_line()];
        assert!(r.usable, "{r:?}");
        assert_eq!(r.exit_ip, exit.to_string(), "{r:?}");
        assert_eq!(r.anonymity, pb::Anonymity::Elite as i32, "{r:?}");
        let verdicts: Vec<Seen> = r.targets.iter().map(|t| seen(t, 60)).collect();
        assert_eq!(verdicts, [expect("shop", pb::Reason::None, "")], "{r:?}");
        assert_eq!(r.targets[0].status, 200);
    }
    let r = &results[&proxies.rewriting.candidate_line()];
    assert_eq!(
        (r.usable, r.reason, r.detail.as_str()),
        (
            false,
            pb::Reason::BodyMismatch as i32,
            "target \"shop\": body lacks \"Add to cart\""
        ),
        "{r:?}"
    );
    assert_eq!(
        results[&proxies.fake.candidate_line()].reason,
        pb::Reason::TokenMissing as i32
    );
    // What `results` prints shows each target's verdict.
    let printed = coordinator.cli(&["results", &job.job_id]).await;
    assert_eq!(printed.code, 0, "{printed:?}");
    let line = printed
        .stdout
        .lines()
        .find(|l| l.starts_with(&proxies.rewriting.candidate_line()))
        .unwrap_or_else(|| panic!("{printed:?}"));
    assert!(
        line.contains("targets: shop=body_mismatch") && line.contains("body lacks \"Add to cart\""),
        "{line}"
    );

    // Targets only: no judge asked, so nothing graded, and the results say fakes went unchecked;
    // a fake still fails a target that expects its text.
    let (job, results) = run(
        &coordinator,
        &proxies.lines(),
        &["--target", &item, "--targets-only"],
    )
    .await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let settings = job.settings.unwrap();
    assert!(
        settings.targets_only && settings.judge_urls.is_empty(),
        "{settings:?}"
    );
    for proxy in [&proxies.http, &proxies.socks] {
        let r = &results[&proxy.candidate_line()];
        assert!(r.usable, "{r:?}");
        assert_eq!(
            (r.anonymity, r.exit_ip.as_str()),
            (pb::Anonymity::Unknown as i32, ""),
            "{r:?}"
        );
        assert!(r.detail.contains("fakes"), "{r:?}");
        assert!(r.targets[0].passed, "{r:?}");
    }
    for (proxy, detail) in [
        (
            &proxies.rewriting,
            "target \"shop\": body lacks \"Add to cart\"",
        ),
        (&proxies.fake, "target \"shop\": body lacks \"Add to cart\""),
    ] {
        let r = &results[&proxy.candidate_line()];
        assert_eq!(
            (r.usable, r.reason, r.detail.as_str()),
            (false, pb::Reason::BodyMismatch as i32, detail),
            "{r:?}"
        );
    }
}
