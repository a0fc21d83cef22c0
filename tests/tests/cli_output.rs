//! What the `proxyfleet` command prints, as scripts and people read it: standard output holds
//! only data (proxies, ids, JSON), `--json` parses, help lists only what applies, errors name
//! the flag, and embedded runs leave no directory behind unless told to keep it.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;

use proxyfleet_coordinator::Protocol;
use proxyfleet_tests::harness::{self, CliOutput, CoordinatorProc, TempDir};
use proxyfleet_tests::sim::Farm;
use serde_json::Value;

/// Runs `proxyfleet ARGS` with its temporary directory in `tmp` (where `run` and `demo` make
/// their data directories) and standard output into `stdout_file` when given, as `> FILE` does.
async fn proxyfleet_in(tmp: &Path, args: &[&str], stdout_file: Option<&Path>) -> CliOutput {
    let mut command = tokio::process::Command::new(harness::bin("proxyfleet"));
    command
        .args(args)
        .env("TMPDIR", tmp)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // `output()` would capture stdout whatever it was set to: spawn, then wait.
    command
        .stdout(match stdout_file {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("creating the file")),
            None => Stdio::piped(),
        })
        .stderr(Stdio::piped());
    let child = command.spawn().expect("running proxyfleet");
    let output = tokio::time::timeout(harness::WAIT_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("proxyfleet {args:?} did not end within the limit"))
        .expect("waiting for proxyfleet");
    CliOutput {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Whether `line` is one proxy as proxyfleet writes it: `scheme://[user:pass@]host:port`.
fn is_proxy(line: &str) -> bool {
    let Some((scheme, rest)) = line.split_once("://") else {
        return false;
    };
    let address = rest.rsplit_once('@').map_or(rest, |(_, address)| address);
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    scheme.parse::<Protocol>().is_ok()
        && !host.is_empty()
        && !host.contains(char::is_whitespace)
        && port.parse::<u16>().is_ok_and(|p| p > 0)
}

/// Everything left in `dir`.
fn left_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("reading the temporary directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Runs `proxyfleet COMMAND --coordinator URL ARGS...`: the coordinator options after the
/// command, where its help lists them.
async fn at(url: &str, args: &[&str]) -> CliOutput {
    let mut full = args.to_vec();
    full.splice(1..1, ["--coordinator", url]);
    harness::cli(&full).await
}

fn json(what: &str, text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what} printed no JSON ({e}): {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_into_a_file_leaves_only_the_usable_proxies_there() {
    let farm = Farm::spawn([127, 0, 0, 1].into(), 4, 1, 10).await.unwrap();
    let dir = TempDir::new("cli-run");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let list = dir.write("list.txt", farm.candidate_lines().join("\n"));
    let out_txt = dir.path().join("out.txt");
    let run = [
        "run",
        "--file",
        list.to_str().unwrap(),
        "--allow-private-targets",
        "--timeout",
        "1s",
    ];
    let out = proxyfleet_in(&tmp, &run, Some(&out_txt)).await;
    assert_eq!(out.code, 0, "{out:?}");
    let written = std::fs::read_to_string(&out_txt).unwrap();
    for line in written.lines() {
        assert!(
            is_proxy(line),
            "a line that is no proxy in out.txt: {line:?}"
        );
    }
    let got: BTreeSet<&str> = written.lines().collect();
    let working = farm.working_lines();
    assert_eq!(got, working.iter().map(String::as_str).collect());
    assert_eq!(
        written.lines().count(),
        working.len(),
        "each once: {written}"
    );
    // The rest went to stderr: the job, one summary line, where the data was.
    assert!(out.stderr.contains("job job-"), "{out:?}");
    let summaries: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("job job-") && l.contains("SUCCEEDED"))
        .collect();
    assert_eq!(summaries.len(), 1, "{out:?}");
    assert_eq!(
        summaries[0].matches("usable").count(),
        1,
        "the summary says it once: {}",
        summaries[0]
    );
    assert!(
        out.stderr.contains("data: "),
        "says where its data lives: {out:?}"
    );
    // A loopback-only run has no one to keep out: no warning about tokens.
    assert!(!out.stderr.contains("token"), "{out:?}");
    // Its data directory was its own, under the temporary directory, and is gone.
    assert_eq!(left_in(&tmp), Vec::<String>::new());

    // --json: the usable proxies as one JSON array, and nothing else on stdout.
    let out = proxyfleet_in(&tmp, &[&run[..], &["--json", "--quiet"]].concat(), None).await;
    assert_eq!(out.code, 0, "{out:?}");
    let rows = json("run --json", &out.stdout);
    let proxies: BTreeSet<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["proxy"].as_str().unwrap())
        .collect();
    assert_eq!(proxies, working.iter().map(String::as_str).collect());
    assert!(
        rows.as_array().unwrap().iter().all(|r| r["usable"] == true),
        "{rows}"
    );
    // --quiet: nothing on stderr but what went wrong (nothing did).
    assert_eq!(out.stderr.trim(), "", "{out:?}");
    assert_eq!(left_in(&tmp), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_leaves_no_directory_behind_unless_told_to_keep_it() {
    let dir = TempDir::new("cli-demo");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let demo = [
        "demo",
        "--working",
        "2",
        "--black-holes",
        "0",
        "--refused",
        "4",
    ];
    let out = proxyfleet_in(&tmp, &demo, None).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 2, "{out:?}");
    assert!(out.stdout.lines().all(is_proxy), "{out:?}");
    assert!(!out.stderr.contains("token"), "{out:?}");
    assert_eq!(left_in(&tmp), Vec::<String>::new(), "{out:?}");

    // --keep-data keeps it, and says where.
    let mut kept = demo.to_vec();
    kept.push("--keep-data");
    let out = proxyfleet_in(&tmp, &kept, None).await;
    assert_eq!(out.code, 0, "{out:?}");
    let left = left_in(&tmp);
    assert_eq!(left.len(), 1, "{left:?}");
    let data = tmp.join(&left[0]);
    assert!(
        out.stderr
            .contains(&format!("data kept in {}", data.display())),
        "{out:?}"
    );
    assert!(data.join("proxyfleet.db").exists(), "{left:?}");

    // So does an explicit --data-dir, which is used as it is.
    let named = dir.path().join("named");
    let mut explicit = demo.to_vec();
    explicit.extend(["--data-dir", named.to_str().unwrap()]);
    let out = proxyfleet_in(&tmp, &explicit, None).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(named.join("proxyfleet.db").exists(), "{out:?}");
    assert_eq!(
        left_in(&tmp).len(),
        1,
        "nothing new in the temporary directory"
    );

    // Interrupted mid-check, it still removes what it made.
    let fresh = dir.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let child = tokio::process::Command::new(harness::bin("proxyfleet"))
        .args([
            "demo",
            "--working",
            "1",
            "--black-holes",
            "4",
            "--refused",
            "1",
        ])
        .args(["--timeout", "60s"])
        .env("TMPDIR", &fresh)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Its coordinator's store exists once it runs: its checks are under way then (the black
    // holes hold them for a minute).
    harness::wait_for("the demo's store", harness::WAIT_LIMIT, || {
        let store = left_in(&fresh)
            .first()
            .is_some_and(|d| fresh.join(d).join("proxyfleet.db").exists());
        async move { store.then_some(()) }
    })
    .await;
    let pid = child.id().expect("running") as i32;
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let output = tokio::time::timeout(harness::WAIT_LIMIT, child.wait_with_output())
        .await
        .expect("the demo stops when interrupted")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(left_in(&fresh), Vec::<String>::new(), "{stderr}");

    // The demo's --json parses too.
    let mut as_json = demo.to_vec();
    as_json.push("--json");
    let out = proxyfleet_in(&tmp, &as_json, None).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        json("demo --json", &out.stdout).as_array().unwrap().len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_lists_only_what_applies_to_each_command() {
    let help = |command: &'static str| async move {
        let out = harness::cli(&[command, "--help"]).await;
        assert_eq!(out.code, 0, "{command} --help: {out:?}");
        out.stdout
    };
    for command in ["run", "demo", "farm"] {
        let text = help(command).await;
        for flag in [
            "--coordinator",
            "--token",
            "--token-file",
            "--ca ",
            "--client-cert",
            "--client-key",
        ] {
            assert!(
                !text.contains(flag),
                "{command} --help lists {flag}:\n{text}"
            );
        }
    }
    for command in [
        "submit", "refresh", "watch", "results", "jobs", "workers", "cancel", "pool", "pools",
        "health", "gateway",
    ] {
        let text = help(command).await;
        assert!(
            text.contains("--coordinator") && text.contains("PROXYFLEET_COORDINATOR"),
            "{command} --help:\n{text}"
        );
    }
    // One meaning per flag: `refresh` takes submit's check options, and waits with its own flag.
    let refresh = help("refresh").await;
    for flag in [
        "--wait-timeout",
        "--judge",
        "--target",
        "--max-latency",
        "--protocols",
    ] {
        assert!(
            refresh.contains(flag),
            "refresh --help lacks {flag}:\n{refresh}"
        );
    }
    // A client flag given to a command that talks to no coordinator is refused, naming it.
    let out = harness::cli(&["run", "--coordinator", "http://127.0.0.1:9", "--file", "-"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--coordinator"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_parses_and_errors_name_what_the_user_wrote() {
    let farm = Farm::spawn([127, 0, 0, 1].into(), 3, 1, 4).await.unwrap();
    let coordinator = CoordinatorProc::start(&[]).await;
    let _worker = coordinator.worker("w", &["--max-checks", "64"]);
    let url = coordinator.url.as_str();
    let list = coordinator
        .dir
        .write("list.txt", farm.candidate_lines().join("\n"));
    let list = list.to_str().unwrap();

    // submit: its job id alone on stdout, or {"job_id"} with --json.
    let out = at(
        url,
        &["submit", "--file", list, "--timeout", "1s", "--json"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let job_id = json("submit --json", &out.stdout)["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    // watch: nothing on stdout without --json; the job as it ended with it.
    let out = at(url, &["watch", &job_id]).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");
    assert!(out.stderr.contains("SUCCEEDED: 3 usable of 8"), "{out:?}");
    let out = at(url, &["watch", &job_id, "--json"]).await;
    let watched = json("watch --json", &out.stdout);
    assert_eq!(
        (watched["state"].as_str(), watched["exit_code"].as_i64()),
        (Some("SUCCEEDED"), Some(0)),
        "{watched}"
    );
    assert_eq!(watched["proxies_usable"], 3);
    // submit --wait --json: one object, the job as it ended.
    let out = at(
        url,
        &[
            "submit",
            "--file",
            list,
            "--timeout",
            "1s",
            "--wait",
            "--json",
            "--pool",
            "other",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        json("submit --wait --json", &out.stdout)["state"],
        "SUCCEEDED"
    );

    let out = at(url, &["results", &job_id, "--json"]).await;
    assert_eq!(
        json("results --json", &out.stdout)
            .as_array()
            .unwrap()
            .len(),
        8
    );
    for command in ["jobs", "workers", "pools"] {
        let out = at(url, &[command, "--json"]).await;
        assert_eq!(out.code, 0, "{command}: {out:?}");
        let rows = json(command, &out.stdout);
        assert!(!rows.as_array().unwrap().is_empty(), "{command}: {rows}");
    }
    let out = at(url, &["workers", "--json"]).await;
    let workers = json("workers --json", &out.stdout);
    assert_eq!(workers[0]["capacity"], 64, "check slots: {workers}");
    let table = at(url, &["workers"]).await.stdout;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    let capacity = header.iter().position(|h| *h == "CAPACITY").unwrap();
    assert_eq!(row[capacity], "64", "{table}");
    // pool --json: one object a line.
    let out = at(url, &["pool", "--json"]).await;
    let members: Vec<Value> = out.stdout.lines().map(|l| json("pool --json", l)).collect();
    assert_eq!(members.len(), 3, "{out:?}");
    let out = at(url, &["health", "--json"]).await;
    assert_eq!(json("health --json", &out.stdout)["serving"], true);
    // refresh: its own wait flag, submit's check options, JSON when asked.
    let sources = coordinator
        .dir
        .write("sources.toml", format!("[http]\nurls = [\"{list}\"]\n"));
    let out = at(
        url,
        &[
            "refresh",
            "--sources",
            sources.to_str().unwrap(),
            "--pool",
            "fresh",
            "--timeout",
            "1s",
            "--min-usable",
            "3",
            "--wait",
            "--wait-timeout",
            "1m",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let refreshed = json("refresh --json", &out.stdout);
    assert_eq!(refreshed["pool_files_usable"], 3, "{refreshed}");
    assert_eq!(refreshed["exit_code"], 0, "{refreshed}");

    // cancel: of an ended job, it says it cancelled nothing, exit 7...
    let out = at(url, &["cancel", &job_id]).await;
    assert_eq!(out.code, 7, "{out:?}");
    assert!(
        out.stderr.contains("nothing cancelled") && out.stderr.contains("SUCCEEDED"),
        "{out:?}"
    );
    let out = at(url, &["cancel", &job_id, "--json"]).await;
    assert_eq!(json("cancel --json", &out.stdout)["cancelled"], false);
    // ...and of a running one, that it cancelled it.
    let hole = coordinator
        .dir
        .write("hole.txt", farm.black_holes[0].candidate_line());
    let out = at(
        url,
        &[
            "submit",
            "--file",
            hole.to_str().unwrap(),
            "--timeout",
            "60s",
            "--pool",
            "slow",
        ],
    )
    .await;
    let slow = out.stdout.trim().to_string();
    let out = at(url, &["cancel", &slow, "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(json("cancel --json", &out.stdout)["cancelled"], true);
    assert!(
        out.stderr.contains(&format!("cancelled job {slow}")),
        "{out:?}"
    );

    // A verdict's detail says each thing once: a proxy that closes without answering.
    let closer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closer_addr = closer.local_addr().unwrap();
    let closing = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut conn, _)) = closer.accept().await {
            let mut request = [0u8; 512];
            let _ = conn.read(&mut request).await;
        }
    });
    let closes = coordinator
        .dir
        .write("closes.txt", format!("http://{closer_addr}\n"));
    let out = at(
        url,
        &[
            "submit",
            "--file",
            closes.to_str().unwrap(),
            "--timeout",
            "2s",
            "--pool",
            "closes",
            "--wait",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 3, "INSUFFICIENT: {out:?}");
    let closed = json("submit --wait --json", &out.stdout)["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = at(url, &["results", &closed, "--json"]).await;
    let detail = json("results --json", &out.stdout)[0]["detail"]
        .as_str()
        .unwrap()
        .to_string();
    closing.abort();
    assert_eq!(
        detail, "the proxy closed the connection without an answer",
        "{out:?}"
    );

    // Errors name the flag the user wrote, not the request's field.
    let out = at(
        url,
        &["submit", "--file", list, "--judge", "ftp://judge.test/"],
    )
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--judge"), "{out:?}");
    assert!(!out.stderr.contains("judge_urls"), "{out:?}");
    let out = at(url, &["submit", "--file", list, "--timeout", "6m"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--timeout"), "{out:?}");
    assert_eq!(out.stdout, "", "no job id for a refused job");
    // ...and a coordinator that cannot be reached is said once, each cause once.
    let out = harness::cli(&["jobs", "--coordinator", "http://127.0.0.1:9"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("cannot reach the coordinator"),
        "{out:?}"
    );
    assert!(
        !out.stderr.contains("tcp connect error: tcp connect error"),
        "{out:?}"
    );
}
