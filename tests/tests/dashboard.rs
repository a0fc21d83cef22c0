//! The web dashboard: served on the HTTP API's port behind the client token (a sign-in form that
//! sets an HttpOnly, SameSite=Strict session cookie), with a strict content policy; and, in a
//! real headless Chromium, a job's progress moving to its end, the pool table filling with its
//! usable proxies, sorting and filtering, and server-provided text shown as text, never markup.

use std::collections::BTreeSet;
use std::time::Duration;

use proxyfleet_common::auth::BearerToken;
use proxyfleet_proto::v1 as pb;
use proxyfleet_proto::v1::coordinator_client::CoordinatorClient;
use proxyfleet_tests::harness::{self, CoordinatorProc, WAIT_LIMIT};
use proxyfleet_tests::sim::Farm;
use proxyfleet_tests::webdriver::{self, Browser};
use serde_json::{Value, json};

/// Markup a page that wrote server text as HTML would run.
const HOSTILE: &str = "<img src=x onerror=\"document.title='pwned'\">";

fn tokens() -> [&'static str; 4] {
    [
        "--worker-token",
        "worker-secret",
        "--client-token",
        "client-secret",
    ]
}

/// A client of the coordinator's gRPC port that sends the client token.
async fn client(
    coordinator: &CoordinatorProc,
) -> CoordinatorClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
> {
    let channel = tonic::transport::Channel::from_shared(coordinator.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    CoordinatorClient::with_interceptor(channel, BearerToken::new(Some("client-secret")).unwrap())
}

/// The unreachable source: its address holds a key and a token, which the page never shows.
/// (A user and password in a source's address are refused at submission.)
const SECRET_SOURCE: &str = "http://127.0.0.1:1/proxies.txt?apikey=src-key&token=src-pass";
/// `SECRET_SOURCE` as the page shows it.
const SECRET_SOURCE_SHOWN: &str = "http://127.0.0.1:1/proxies.txt?apikey=***&token=***";

/// A job of `lines`, named with markup, with a source labelled with markup (its text sent along)
/// and a source that cannot be reached (its error shown), its credentials in its address.
fn hostile_job(lines: Vec<String>) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        candidates: lines,
        name: format!("nightly {HOSTILE}"),
        timeout_ms: 4_000,
        min_usable: Some(1),
        sources: vec![
            pb::SourceSpec {
                url: format!("list {HOSTILE}"),
                protocols: Vec::new(),
                content: "not a proxy\n".into(),
            },
            pb::SourceSpec {
                url: SECRET_SOURCE.into(),
                protocols: Vec::new(),
                content: String::new(),
            },
        ],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_its_event_stream_are_behind_the_client_token_with_a_strict_policy() {
    let coordinator = CoordinatorProc::start(&tokens()).await;
    let http = coordinator.http.expect("the HTTP API listens by default");
    // No worker: the job stays queued, and is shown so.
    let job_id = client(&coordinator)
        .await
        .submit_job(hostile_job(vec!["127.0.0.1:9".into()]))
        .await
        .unwrap()
        .into_inner()
        .job_id;

    // Without a token: the sign-in form, under the policy; the page's files carry no data.
    let page = webdriver::request(http, "GET", "/dashboard", &[], None).await;
    assert_eq!(page.status, 401, "{page:?}");
    assert!(page.text().contains("name=\"token\""), "{}", page.text());
    let policy = page
        .header("content-security-policy")
        .expect("a CSP header");
    for rule in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(rule), "{policy}");
    }
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let root = webdriver::request(http, "GET", "/", &[], None).await;
    assert_eq!(
        (root.status, root.header("location")),
        (303, Some("/dashboard"))
    );
    for (path, kind) in [
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
    ] {
        let asset = webdriver::request(http, "GET", path, &[], None).await;
        assert_eq!(asset.status, 200, "{path}");
        assert!(
            asset.header("content-type").unwrap().starts_with(kind),
            "{asset:?}"
        );
        assert!(asset.header("content-security-policy").is_some());
        assert!(!asset.text().contains("innerHTML"), "{path} writes markup");
    }

    // The event stream: 401 without a token, 403 with the worker's, 401 with a made-up session.
    let events = |headers: &'static [(&'static str, &'static str)]| {
        webdriver::read_stream(http, "/dashboard/events", headers, WAIT_LIMIT, |_| true)
    };
    assert_eq!(events(&[]).await.status, 401);
    assert_eq!(
        events(&[("Authorization", "Bearer worker-secret")])
            .await
            .status,
        403
    );
    let made_up = format!("proxyfleet_session_{}=0123", http.port());
    let made_up = [("Cookie", made_up.as_str())];
    assert_eq!(
        webdriver::read_stream(http, "/dashboard/events", &made_up, WAIT_LIMIT, |_| true)
            .await
            .status,
        401
    );

    // Signing in: a wrong token is refused, and only after a delay that makes guessing slow; the
    // right one sets a cookie that is not the token.
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let asked = std::time::Instant::now();
    let wrong =
        webdriver::request(http, "POST", "/dashboard/login", &form, Some(b"token=nope")).await;
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());

    // Another site's page cannot sign a browser in or out, even with the right token.
    let origin = format!("http://{http}");
    for from_elsewhere in [
        vec![("Sec-Fetch-Site", "cross-site")],
        vec![("Origin", "http://evil.example")],
        vec![("Origin", "http://127.0.0.1:1")],
    ] {
        let headers: Vec<(&str, &str)> = form.iter().copied().chain(from_elsewhere).collect();
        let refused = webdriver::request(
            http,
            "POST",
            "/dashboard/login",
            &headers,
            Some(b"token=client-secret"),
        )
        .await;
        assert_eq!(refused.status, 403, "{headers:?}: {refused:?}");
        assert!(refused.header("set-cookie").is_none());
        let out = webdriver::request(http, "POST", "/dashboard/logout", &headers, Some(b"")).await;
        assert_eq!(out.status, 403, "{headers:?}: {out:?}");
    }
    let same_origin = [
        form[0],
        ("Origin", origin.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    let signed = webdriver::request(
        http,
        "POST",
        "/dashboard/login",
        &same_origin,
        Some(b"token=client-secret"),
    )
    .await;
    assert_eq!(
        (signed.status, signed.header("location")),
        (303, Some("/dashboard"))
    );
    let set_cookie = signed
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    // Named after the port, and sent only with the dashboard's requests: the judge on the next
    // port, which echoes headers, never gets it, nor does another coordinator on the host.
    assert!(
        set_cookie.starts_with(&format!("proxyfleet_session_{}=", http.port())),
        "{set_cookie}"
    );
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/dashboard;"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("client-secret"), "{set_cookie}");
    let session = set_cookie.split(';').next().unwrap().to_string();
    let cookie = [("Cookie", session.as_str())];
    let page = webdriver::request(http, "GET", "/dashboard", &cookie, None).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("src=\"/dashboard/app.js\""));

    // The stream with the cookie: the job, its name and source label as data, never rewritten.
    let stream = webdriver::read_stream(http, "/dashboard/events", &cookie, WAIT_LIMIT, |body| {
        body.contains(&job_id) && body.contains("event: workers")
    })
    .await;
    assert_eq!(stream.status, 200);
    assert!(
        stream
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let job = stream
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|d| d["id"] == job_id.as_str())
        .expect("a job event");
    assert_eq!(job["name"], format!("nightly {HOSTILE}"));
    assert_eq!(job["sources"][0]["url"], format!("list {HOSTILE}"));
    assert_eq!(job["sources"][1]["url"], SECRET_SOURCE_SHOWN);
    for secret in ["src-pass", "src-key"] {
        assert!(!stream.text().contains(secret), "{secret} sent to the page");
    }

    // A token in the address signs nobody in: addresses end up in logs and histories.
    let by_query =
        webdriver::request(http, "GET", "/dashboard?token=client-secret", &[], None).await;
    assert_eq!(by_query.status, 401, "{by_query:?}");
    assert!(by_query.header("set-cookie").is_none());

    // Signing out ends the session.
    let out = webdriver::request(http, "POST", "/dashboard/logout", &cookie, Some(b"")).await;
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    let after =
        webdriver::read_stream(http, "/dashboard/events", &cookie, WAIT_LIMIT, |_| true).await;
    assert_eq!(after.status, 401);

    let log = coordinator.proc.log_text();
    assert!(log.contains("dashboard session opened"), "{log}");
    assert!(!log.contains("client-secret"), "a token in the log:\n{log}");
}

/// The job's row as the page shows it: its state and its checked / total count.
async fn job_row(browser: &Browser, job_id: &str) -> Option<(String, String)> {
    let row = browser
        .execute(
            "const row = document.querySelector(`#jobs tr[data-job=\"${arguments[0]}\"]`);
             return row && [row.dataset.state, row.querySelector('.count').textContent];",
            json!([job_id]),
        )
        .await;
    let row = row.as_array()?;
    Some((row[0].as_str()?.to_string(), row[1].as_str()?.to_string()))
}

/// The text of the element `css` names, if there is one. Rows are drawn anew as data comes, so
/// they are read in one script rather than held as WebDriver element references.
async fn text_of(browser: &Browser, css: &str) -> Option<String> {
    browser
        .execute(
            "const e = document.querySelector(arguments[0]); return e && e.textContent;",
            json!([css]),
        )
        .await
        .as_str()
        .map(str::to_string)
}

/// The proxies the pool table shows, in its order.
async fn pool_rows(browser: &Browser) -> Vec<String> {
    let rows = browser
        .execute(
            "return [...document.querySelectorAll('#pool-members tbody tr .proxy')].map(c => c.textContent);",
            json!([]),
        )
        .await;
    serde_json::from_value(rows).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_real_browser_a_jobs_progress_moves_to_its_end_and_the_pool_table_fills() {
    // Black holes keep the job checking for its timeout, so the page sees it run.
    let farm = Farm::spawn([127, 0, 0, 1].into(), 6, 4, 0).await.unwrap();
    let coordinator = CoordinatorProc::start(&tokens()).await;
    let http = coordinator.http.expect("the HTTP API listens by default");
    let _worker = coordinator.worker("w", &["--token", "worker-secret", "--max-checks", "8"]);
    let browser = Browser::start(coordinator.dir.path()).await;
    let base = format!("http://{http}");

    // Sign in through the form; the address never holds the token, the script never sees the
    // cookie.
    browser.goto(&format!("{base}/dashboard")).await;
    let token = browser.find("#token", WAIT_LIMIT).await;
    browser.type_into(&token, "client-secret").await;
    let sign_in = browser.find("#sign-in", WAIT_LIMIT).await;
    browser.click(&sign_in).await;
    let live = browser.find("#conn[data-state=\"live\"]", WAIT_LIMIT).await;
    assert_eq!(browser.text(&live).await, "live");
    assert_eq!(browser.url().await, format!("{base}/dashboard"));
    let cookies = browser.execute("return document.cookie", json!([])).await;
    assert_eq!(cookies, "", "the session cookie is HttpOnly");
    harness::wait_for("the worker's row", WAIT_LIMIT, || async {
        let status = browser
            .execute(
                "const row = document.querySelector('#workers tr[data-worker=\"w\"]');
                 return row && row.querySelector('.badge').textContent;",
                json!([]),
            )
            .await;
        (status == "active").then_some(())
    })
    .await;

    let mut grpc = client(&coordinator).await;
    let job_id = grpc
        .submit_job(hostile_job(farm.candidate_lines()))
        .await
        .unwrap()
        .into_inner()
        .job_id;

    // Every state and count the page shows, until the end.
    let mut seen: Vec<(String, String)> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    loop {
        if let Some(row) = job_row(&browser, &job_id).await
            && seen.last() != Some(&row)
        {
            seen.push(row);
        }
        if seen.last().is_some_and(|(state, _)| {
            ["SUCCEEDED", "INSUFFICIENT", "FAILED", "CANCELLED"].contains(&state.as_str())
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page did not show the job end within {WAIT_LIMIT:?}; it showed {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let job = grpc
        .get_job(pb::GetJobRequest {
            job_id: job_id.clone(),
            include_chunks: false,
        })
        .await
        .unwrap()
        .into_inner();
    let total = job.progress.as_ref().map_or(0, |p| p.proxies_total);
    assert_eq!(total, 10, "{job:?}");
    let (last_state, last_count) = seen.last().unwrap().clone();
    assert_eq!(last_state, "SUCCEEDED", "{seen:?}");
    assert_eq!(last_count, format!("{total} / {total}"), "{seen:?}");
    assert!(
        seen.iter()
            .any(|(state, count)| state == "CHECKING" && count != &last_count),
        "the page showed the job checking, short of its end: {seen:?}"
    );

    // The pool table fills with the job's usable proxies, passwords masked.
    let expected: BTreeSet<String> = farm
        .working_lines()
        .iter()
        .map(|l| l.replace(":secret@", ":***@"))
        .collect();
    let shown = harness::wait_for("the pool table to fill", WAIT_LIMIT, || async {
        let rows: BTreeSet<String> = pool_rows(&browser).await.into_iter().collect();
        (rows == expected).then_some(rows)
    })
    .await;
    assert_eq!(shown.len(), 6);
    let page_text = browser
        .execute("return document.body.innerText", json!([]))
        .await;
    for secret in ["secret", "src-pass", "src-key"] {
        assert!(
            !page_text.as_str().unwrap().contains(secret),
            "a password on the page: {secret}"
        );
    }

    // Sorting by latency orders the rows; filtering keeps the matching ones.
    let header = browser
        .find("th[data-key=\"latency_ms\"]", WAIT_LIMIT)
        .await;
    browser.click(&header).await;
    let latencies = browser
        .execute(
            "return [...document.querySelectorAll('#pool-members tbody tr')].map(r => parseInt(r.cells[2].textContent.replace(/\\D/g, ''), 10));",
            json!([]),
        )
        .await;
    let latencies: Vec<u64> = serde_json::from_value(latencies).unwrap();
    assert!(latencies.windows(2).all(|w| w[0] <= w[1]), "{latencies:?}");
    let filter = browser.find("#pool-filter", WAIT_LIMIT).await;
    browser.type_into(&filter, "socks5").await;
    let socks = harness::wait_for("the filter to apply", WAIT_LIMIT, || async {
        let rows = pool_rows(&browser).await;
        (rows.len() == 3).then_some(rows)
    })
    .await;
    assert!(
        socks.iter().all(|p| p.starts_with("socks5://")),
        "{socks:?}"
    );

    // Server text is shown as text: the markup is visible, no element came of it.
    let sources = browser
        .execute(
            "return [...document.querySelectorAll('#sources tbody tr')].map(r => [r.querySelector('.source').textContent, r.querySelector('.badge').textContent, r.querySelector('.error').textContent]);",
            json!([]),
        )
        .await;
    let sources: Vec<(String, String, String)> = serde_json::from_value(sources).unwrap();
    assert!(
        sources.contains(&(format!("list {HOSTILE}"), "fetched".into(), String::new())),
        "{sources:?}"
    );
    assert!(
        sources
            .iter()
            .any(|(url, state, error)| url == SECRET_SOURCE_SHOWN
                && state == "failed"
                && !error.is_empty()
                && !error.contains("src-")),
        "the unreachable source and its error: {sources:?}"
    );
    let name = text_of(&browser, &format!("#jobs tr[data-job=\"{job_id}\"] .name")).await;
    assert_eq!(name, Some(format!("nightly {HOSTILE}")));
    let injected = browser
        .execute(
            "return [document.querySelectorAll('img').length, document.title];",
            json!([]),
        )
        .await;
    assert_eq!(injected, json!([0, "proxyfleet"]));

    // Clear the filter; a second refresh's proxies join the table as the pool's changes.
    browser
        .execute(
            "const f = document.getElementById('pool-filter'); f.value = ''; f.dispatchEvent(new Event('input'));",
            json!([]),
        )
        .await;
    let more = Farm::spawn([127, 0, 0, 1].into(), 2, 0, 0).await.unwrap();
    grpc.submit_job(pb::SubmitJobRequest {
        candidates: more.working_lines(),
        timeout_ms: 4_000,
        ..Default::default()
    })
    .await
    .unwrap();
    let expected: BTreeSet<String> = expected
        .into_iter()
        .chain(
            more.working_lines()
                .iter()
                .map(|l| l.replace(":secret@", ":***@")),
        )
        .collect();
    harness::wait_for(
        "the second refresh's proxies in the table",
        WAIT_LIMIT,
        || async {
            let rows: BTreeSet<String> = pool_rows(&browser).await.into_iter().collect();
            (rows == expected).then_some(())
        },
    )
    .await;
    harness::wait_for("the pool's tab to count 8 live", WAIT_LIMIT, || async {
        let tab = text_of(&browser, "#pool-tabs [data-pool=\"default\"]").await;
        (tab.as_deref() == Some("default 8 live")).then_some(())
    })
    .await;
    let screenshot = webdriver::test_output_dir().join("dashboard.png");
    browser.screenshot(&screenshot).await;
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    println!("dashboard screenshot: {}", screenshot.display());
    // And as a browser that prefers dark pages sees it.
    browser
        .devtools(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": "dark" }] }),
        )
        .await;
    let background = browser
        .execute(
            "return getComputedStyle(document.body).backgroundColor",
            json!([]),
        )
        .await;
    assert_eq!(background, "rgb(15, 19, 24)", "the dark palette applies");
    let dark = webdriver::test_output_dir().join("dashboard-dark.png");
    browser.screenshot(&dark).await;
    println!("dashboard screenshot (dark): {}", dark.display());

    // Signing out from the page ends the session: the sign-in form again.
    let sign_out = browser.find("#logout button", WAIT_LIMIT).await;
    browser.click(&sign_out).await;
    browser.find("#token", WAIT_LIMIT).await;
    let events = browser
        .execute(
            "return fetch('/dashboard/events').then(r => r.status)",
            json!([]),
        )
        .await;
    assert_eq!(events, 401, "the session ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_token_the_dashboard_on_loopback_is_open() {
    let coordinator = CoordinatorProc::start(&[]).await;
    let http = coordinator.http.expect("the HTTP API listens by default");
    let page = webdriver::request(http, "GET", "/dashboard", &[], None).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("id=\"jobs\""));
    let stream = webdriver::read_stream(http, "/dashboard/events", &[], WAIT_LIMIT, |body| {
        body.contains("event: workers")
    })
    .await;
    assert_eq!(stream.status, 200);
    assert!(
        stream.text().contains("\"locked\":false"),
        "{}",
        stream.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_token_only_requests_addressed_to_loopback_are_served() {
    let coordinator = CoordinatorProc::start(&[]).await;
    let http = coordinator.http.expect("the HTTP API listens by default");
    let port = http.port();
    // A page whose name was pointed at 127.0.0.1 sends its own name as the host.
    for path in ["/dashboard", "/dashboard/events", "/pool/default", "/pools"] {
        for host in ["evil.example", &format!("evil.example:{port}")] {
            let refused = webdriver::request(http, "GET", path, &[("Host", host)], None).await;
            let text = refused.text();
            assert_eq!(refused.status, 421, "{path} for {host}: {text}");
            assert!(
                text.contains("--client-token"),
                "the answer says what to do: {text}"
            );
        }
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_string(),
    ] {
        let served =
            webdriver::request(http, "GET", "/pools", &[("Host", host.as_str())], None).await;
        assert_eq!(served.status, 200, "{host}: {}", served.text());
        let page =
            webdriver::request(http, "GET", "/dashboard", &[("Host", host.as_str())], None).await;
        assert_eq!(page.status, 200, "{host}: {}", page.text());
    }
}
