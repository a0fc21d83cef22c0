//! Public-style judges on loopback (httpbin `/get` and `/json`, azenv, icanhazip) and a plain web
//! page named as the judge: simulated elite, anonymous and transparent proxies are graded as far
//! as each judge's answer allows, a fake is caught where the answer has a shape to lose, and no
//! answering judge is called unreachable.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{self, CoordinatorProc, WAIT_LIMIT};
use proxyfleet_tests::sim::{Behavior, HeaderMode, ProxySpec, SimProxy};
use proxyfleet_tests::sites::Site;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn egress(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// The proxies under test, by role.
struct Proxies {
    elite: SimProxy,
    anonymous: SimProxy,
    transparent: SimProxy,
    /// An elite proxy leaving from the worker's own address: what a judge seeing only the caller's
    /// address can tell as transparent.
    from_own: SimProxy,
    fake: SimProxy,
}

impl Proxies {
    async fn spawn() -> Proxies {
        let http = |mode, n| ProxySpec::http().with_headers(mode).with_egress(egress(n));
        Proxies {
            elite: SimProxy::spawn(LOCAL, http(HeaderMode::Elite, 51))
                .await
                .unwrap(),
            anonymous: SimProxy::spawn(LOCAL, http(HeaderMode::Anonymous, 52))
                .await
                .unwrap(),
            transparent: SimProxy::spawn(LOCAL, http(HeaderMode::Transparent, 53))
                .await
                .unwrap(),
            from_own: SimProxy::spawn(LOCAL, ProxySpec::http().with_egress(LOCAL))
                .await
                .unwrap(),
            fake: SimProxy::spawn(LOCAL, Behavior::Fake200).await.unwrap(),
        }
    }

    fn lines(&self) -> Vec<String> {
        self.all().iter().map(|p| p.candidate_line()).collect()
    }

    fn all(&self) -> [&SimProxy; 5] {
        [
            &self.elite,
            &self.anonymous,
            &self.transparent,
            &self.from_own,
            &self.fake,
        ]
    }
}

/// A result as compared: usable, reason, exit address, grade.
type Graded = (bool, pb::Reason, String, pb::Anonymity);

fn works(exit: IpAddr, anonymity: pb::Anonymity) -> Graded {
    (true, pb::Reason::None, exit.to_string(), anonymity)
}

fn fake() -> Graded {
    (
        false,
        pb::Reason::TokenMissing,
        String::new(),
        pb::Anonymity::Unknown,
    )
}

/// Checks every proxy against `judge`; the job must end well, the worker must report the judge
/// reachable, and the results are returned by proxy.
async fn graded_by(
    coordinator: &CoordinatorProc,
    proxies: &Proxies,
    judge: &str,
) -> BTreeMap<String, (Graded, pb::ProxyResult)> {
    let job_id = coordinator
        .submit(
            &proxies.lines(),
            &["--judge", judge, "--timeout", "5s", "--min-usable", "1"],
        )
        .await;
    let mut client = coordinator.client().await;
    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    assert_eq!(
        job.state,
        pb::JobState::Succeeded as i32,
        "{judge}: {job:?}"
    );
    let workers = harness::workers(&mut client).await;
    let status = workers[0]
        .judges
        .iter()
        .find(|j| j.url == judge)
        .unwrap_or_else(|| panic!("{judge} not reported: {workers:?}"));
    assert!(status.ok && status.error.is_empty(), "{status:?}");
    harness::results(&mut client, &job_id)
        .await
        .into_iter()
        .map(|r| {
            let graded = (
                r.usable,
                pb::Reason::try_from(r.reason).unwrap(),
                r.exit_ip.clone(),
                pb::Anonymity::try_from(r.anonymity).unwrap(),
            );
            (r.proxy.clone(), (graded, r))
        })
        .collect()
}

fn assert_graded(
    judge: &str,
    proxies: &Proxies,
    results: &BTreeMap<String, (Graded, pb::ProxyResult)>,
    expected: [Graded; 5],
) {
    for (proxy, expected) in proxies.all().into_iter().zip(expected) {
        let (graded, result) = &results[&proxy.candidate_line()];
        assert_eq!(graded, &expected, "{judge}: {result:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_judges_grade_what_their_answers_show() {
    use pb::Anonymity::{Anonymous, Elite, Transparent, Unknown};
    let proxies = Proxies::spawn().await;
    let httpbin = Site::httpbin(LOCAL).await.unwrap();
    let azenv = Site::azenv(LOCAL).await.unwrap();
    let icanhazip = Site::icanhazip(LOCAL).await.unwrap();
    let coordinator = CoordinatorProc::start(&[]).await;
    let _worker = coordinator.worker("w", &["--max-checks", "16"]);

    // Caller address and headers: every grade, as with the built-in judge. The transparent proxy
    // shows the worker's address in X-Forwarded-For (httpbin puts it in `origin`, azenv in
    // HTTP_X_FORWARDED_FOR). /get echoes the token in `args`; /json and azenv lose their shape
    // through a fake.
    for judge in [httpbin.url("/get"), httpbin.url("/json"), azenv.url("/")] {
        let results = graded_by(&coordinator, &proxies, &judge).await;
        assert_graded(
            &judge,
            &proxies,
            &results,
            [
                works(egress(51), Elite),
                works(egress(52), Anonymous),
                works(egress(53), Transparent),
                works(LOCAL, Transparent),
                fake(),
            ],
        );
    }

    // The caller's address alone: the exit address, and transparent only when it is the
    // worker's own; anonymous and elite cannot be told apart.
    let judge = icanhazip.url("/");
    let results = graded_by(&coordinator, &proxies, &judge).await;
    assert_graded(
        &judge,
        &proxies,
        &results,
        [
            works(egress(51), Unknown),
            works(egress(52), Unknown),
            works(egress(53), Unknown),
            works(LOCAL, Transparent),
            fake(),
        ],
    );
    let (_, elite) = &results[&proxies.elite.candidate_line()];
    assert!(elite.detail.contains("cannot be told apart"), "{elite:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_page_as_the_judge_is_used_not_called_unreachable() {
    let proxies = Proxies::spawn().await;
    let shop = Site::shop(LOCAL, Duration::ZERO).await.unwrap();
    let coordinator = CoordinatorProc::start(&[]).await;
    let _worker = coordinator.worker("w", &["--max-checks", "16"]);
    let judge = shop.url("/item");
    let results = graded_by(&coordinator, &proxies, &judge).await;
    for proxy in [&proxies.elite, &proxies.anonymous, &proxies.transparent] {
        let ((usable, _, exit, anonymity), result) = &results[&proxy.candidate_line()];
        assert!(*usable, "{result:?}");
        assert_eq!((exit.as_str(), *anonymity), ("", pb::Anonymity::Unknown));
        assert!(result.detail.contains("fakes not detected"), "{result:?}");
    }
}
