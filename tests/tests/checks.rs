//! The check against simulated proxies of every protocol, with and without auth, egressing from
//! different 127.0.0.x addresses: every working one usable with the right exit address and
//! anonymity grade, every broken one refused with the right reason; with an http judge and with
//! an https judge (its CA given to the worker).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::certs::TestCa;
use proxyfleet_tests::harness::{self, CoordinatorProc, TempDir, WAIT_LIMIT};
use proxyfleet_tests::sim::{Behavior, HeaderMode, ProxySpec, SimProxy, refused_addr};

/// What a candidate's result must be.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    usable: bool,
    reason: pb::Reason,
    exit_ip: Option<IpAddr>,
    anonymity: pb::Anonymity,
}

fn works(exit: IpAddr, anonymity: pb::Anonymity) -> Expected {
    Expected {
        usable: true,
        reason: pb::Reason::None,
        exit_ip: Some(exit),
        anonymity,
    }
}

fn fails(reason: pb::Reason) -> Expected {
    Expected {
        usable: false,
        reason,
        exit_ip: None,
        anonymity: pb::Anonymity::Unknown,
    }
}

fn egress(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// The proxies under test, each with its candidate line and what its check must say. With an
/// https judge every request goes through a tunnel, where no proxy can add headers.
async fn proxies(https_judge: bool) -> (Vec<SimProxy>, BTreeMap<String, Expected>) {
    let local: IpAddr = [127, 0, 0, 1].into();
    let graded = |mode: pb::Anonymity| {
        if https_judge {
            pb::Anonymity::Elite
        } else {
            mode
        }
    };
    let specs: Vec<(Behavior, Expected, Option<&str>)> = vec![
        (
            ProxySpec::http().with_egress(egress(11)).into(),
            works(egress(11), pb::Anonymity::Elite),
            None,
        ),
        (
            ProxySpec::http()
                .with_headers(HeaderMode::Anonymous)
                .with_egress(egress(12))
                .into(),
            works(egress(12), graded(pb::Anonymity::Anonymous)),
            None,
        ),
        (
            ProxySpec::http()
                .with_headers(HeaderMode::Transparent)
                .with_egress(egress(13))
                .into(),
            works(egress(13), graded(pb::Anonymity::Transparent)),
            None,
        ),
        (
            ProxySpec::http()
                .with_auth("fleet", "secret")
                .with_egress(egress(14))
                .into(),
            works(egress(14), pb::Anonymity::Elite),
            None,
        ),
        // An HTTP proxy listed as https: checked through CONNECT even with an http judge.
        (
            ProxySpec::http().with_egress(egress(15)).into(),
            works(egress(15), pb::Anonymity::Elite),
            Some("https"),
        ),
        (
            ProxySpec::socks4().with_egress(egress(16)).into(),
            works(egress(16), pb::Anonymity::Elite),
            None,
        ),
        (
            ProxySpec::socks4()
                .with_user_id("fleet")
                .with_egress(egress(17))
                .into(),
            works(egress(17), pb::Anonymity::Elite),
            None,
        ),
        (
            ProxySpec::socks4a().with_egress(egress(18)).into(),
            works(egress(18), pb::Anonymity::Elite),
            None,
        ),
        (
            ProxySpec::socks5().with_egress(egress(19)).into(),
            works(egress(19), pb::Anonymity::Elite),
            None,
        ),
        (
            ProxySpec::socks5()
                .with_auth("fleet", "secret")
                .with_egress(egress(20))
                .into(),
            works(egress(20), pb::Anonymity::Elite),
            None,
        ),
        // The same SOCKS5 server, asked to resolve the judge's name itself.
        (
            ProxySpec::socks5().with_egress(egress(21)).into(),
            works(egress(21), pb::Anonymity::Elite),
            Some("socks5h"),
        ),
        (Behavior::Fake200, fails(pb::Reason::TokenMissing), None),
        (Behavior::BlackHole, fails(pb::Reason::Timeout), None),
        (
            Behavior::slow(Duration::from_secs(6)),
            fails(pb::Reason::Timeout),
            None,
        ),
        (
            Behavior::BrokenHandshake,
            fails(pb::Reason::Handshake),
            None,
        ),
        (
            ProxySpec::http().with_auth("fleet", "secret").into(),
            fails(pb::Reason::Handshake),
            Some("http-no-auth"),
        ),
    ];
    let mut running = Vec::new();
    let mut expected = BTreeMap::new();
    for (behavior, outcome, rewrite) in specs {
        let proxy = SimProxy::spawn(local, behavior)
            .await
            .expect("spawning a simulated proxy");
        let line = proxy.candidate_line();
        let line = match rewrite {
            None => line,
            Some("http-no-auth") => format!("http://{}", proxy.addr),
            Some(scheme) => format!("{scheme}://{}", line.split_once("://").unwrap().1),
        };
        expected.insert(line, outcome);
        running.push(proxy);
    }
    let refused = refused_addr(local).unwrap();
    expected.insert(format!("http://{refused}"), fails(pb::Reason::Refused));
    (running, expected)
}

async fn check_all(coordinator: &CoordinatorProc, worker_args: &[&str], https_judge: bool) {
    let (_proxies, expected) = proxies(https_judge).await;
    let _worker = coordinator.worker("checker", worker_args);
    let lines: Vec<String> = expected.keys().cloned().collect();
    let job_id = coordinator
        .submit(
            &lines,
            &["--timeout", "2s", "--chunk-size", "5", "--min-usable", "1"],
        )
        .await;
    let mut client = coordinator.client().await;
    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let results = harness::results(&mut client, &job_id).await;
    assert_eq!(results.len(), expected.len());
    let mut wrong = Vec::new();
    for r in &results {
        let want = &expected[&r.proxy];
        let got = Expected {
            usable: r.usable,
            reason: pb::Reason::try_from(r.reason).unwrap(),
            exit_ip: r.exit_ip.parse().ok(),
            anonymity: pb::Anonymity::try_from(r.anonymity).unwrap(),
        };
        if &got != want {
            wrong.push(format!(
                "{}: want {want:?}, got {got:?} ({})",
                r.proxy, r.detail
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong verdicts:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_is_graded_right_through_an_http_judge() {
    let coordinator = CoordinatorProc::start(&[]).await;
    assert!(coordinator.judge_url.starts_with("http://"));
    check_all(&coordinator, &["--max-checks", "32"], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_is_graded_right_through_an_https_judge() {
    let dir = TempDir::new("tls");
    let ca = TestCa::new(&dir, "judge-ca");
    let judge = ca.sign(&dir, "judge");
    let (cert, key) = (judge.cert.to_str().unwrap(), judge.key.to_str().unwrap());
    let coordinator =
        CoordinatorProc::start(&["--judge-tls-cert", cert, "--judge-tls-key", key]).await;
    let ca = ca.pem.to_str().unwrap().to_string();
    assert!(
        coordinator.judge_url.starts_with("https://"),
        "{}",
        coordinator.judge_url
    );
    check_all(
        &coordinator,
        &["--max-checks", "32", "--judge-ca", &ca],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_the_worker_cannot_reach_fails_every_job_of_it_loudly() {
    let coordinator = CoordinatorProc::start(&[]).await;
    let _worker = coordinator.worker("w", &["--max-checks", "8"]);
    let dead = format!(
        "http://{}/judge",
        refused_addr([127, 0, 0, 1].into()).unwrap()
    );
    let proxy = SimProxy::spawn([127, 0, 0, 1].into(), ProxySpec::http())
        .await
        .unwrap();
    let job_id = coordinator
        .submit(
            &[proxy.candidate_line()],
            &["--judge", &dead, "--timeout", "2s"],
        )
        .await;
    let mut client = coordinator.client().await;
    let job = harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Failed as i32, "{job:?}");
    assert!(
        job.reason
            .contains("no judge of the job works from worker w"),
        "{}",
        job.reason
    );
    assert!(job.reason.contains(&dead), "{}", job.reason);
    assert_eq!(
        job.progress.unwrap().proxies_checked,
        0,
        "no proxy was recorded dead for it"
    );
    // The probe of the coordinator's own judge, started with the session, may report after the
    // job already failed on the dead one.
    let judges = harness::wait_for("both judges to be reported", WAIT_LIMIT, || {
        let mut client = client.clone();
        let own = coordinator.judge_url.clone();
        async move {
            let workers = harness::workers(&mut client).await;
            let judges = workers.first()?.judges.clone();
            judges.iter().any(|j| j.url == own).then_some(judges)
        }
    })
    .await;
    assert!(judges.iter().any(|j| j.url == dead && !j.ok), "{judges:?}");
    assert!(
        judges
            .iter()
            .any(|j| j.url == coordinator.judge_url && j.ok && j.own_ip == "127.0.0.1"),
        "{judges:?}"
    );
    // A second job with the same dead judge, which the worker probed already, fails the same way
    // rather than wait in CHECKING for a verdict that never comes.
    let again = coordinator
        .submit(
            &[proxy.candidate_line()],
            &["--judge", &dead, "--timeout", "2s"],
        )
        .await;
    let job = harness::wait_terminal(&mut client, &again, WAIT_LIMIT).await;
    assert_eq!(job.state, pb::JobState::Failed as i32, "{job:?}");
    assert!(job.reason.contains(&dead), "{}", job.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_filters_decide_what_counts_as_usable() {
    let local: IpAddr = [127, 0, 0, 1].into();
    let elite = SimProxy::spawn(local, ProxySpec::http().with_egress(egress(31)))
        .await
        .unwrap();
    let anonymous = SimProxy::spawn(
        local,
        ProxySpec::http()
            .with_headers(HeaderMode::Anonymous)
            .with_egress(egress(32)),
    )
    .await
    .unwrap();
    let transparent = SimProxy::spawn(
        local,
        ProxySpec::http()
            .with_headers(HeaderMode::Transparent)
            .with_egress(egress(33)),
    )
    .await
    .unwrap();
    let socks = SimProxy::spawn(local, ProxySpec::socks5().with_egress(egress(34)))
        .await
        .unwrap();
    let lines: Vec<String> = [&elite, &anonymous, &transparent, &socks]
        .iter()
        .map(|p| p.candidate_line())
        .collect();
    let coordinator = CoordinatorProc::start(&[]).await;
    let _worker = coordinator.worker("w", &["--max-checks", "8"]);
    let mut client = coordinator.client().await;
    let usable_under = |options: &'static [&'static str]| {
        let lines = lines.clone();
        let coordinator = &coordinator;
        let mut client = client.clone();
        async move {
            let mut args = vec!["--timeout", "2s", "--min-usable", "0"];
            args.extend_from_slice(options);
            let job_id = coordinator.submit(&lines, &args).await;
            harness::wait_terminal(&mut client, &job_id, WAIT_LIMIT).await;
            let results = harness::results(&mut client, &job_id).await;
            for r in results.iter().filter(|r| !r.usable) {
                assert_eq!(r.reason, pb::Reason::Filtered as i32, "{r:?}");
            }
            // Checked in random order: compared as sets.
            results
                .iter()
                .filter(|r| r.usable)
                .map(|r| r.proxy.clone())
                .collect::<std::collections::BTreeSet<_>>()
        }
    };
    let graded = usable_under(&["--min-anonymity", "anonymous"]).await;
    assert_eq!(
        graded,
        [lines[0].clone(), lines[1].clone(), lines[3].clone()].into()
    );
    let tunnels = usable_under(&["--require-https"]).await;
    assert_eq!(tunnels, [lines[3].clone()].into());
    let any = usable_under(&[]).await;
    assert_eq!(any.len(), 4);
    let _ = &mut client;
}
