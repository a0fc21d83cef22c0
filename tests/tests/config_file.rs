//! The config file (`--config`, `PROXYFLEET_CONFIG`) end to end: a job set up by the file ends as
//! the same job set up by flags (same usable proxies, same settings in the job and the pool, same
//! output files); flags and the environment override it; a bad key stops every program before it
//! does anything, naming the line; the repository's example loads in all three programs.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::CommandFactory;
use proxyfleet_common::config_file;
use proxyfleet_proto::v1 as pb;
use proxyfleet_tests::harness::{
    self, CliOutput, CoordinatorProc, TempDir, WAIT_LIMIT, run_program as run,
};
use proxyfleet_tests::sim::{Farm, ProxySpec, SimProxy};
use proxyfleet_tests::sites::Site;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The repository's annotated example.
fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .join("proxyfleet.example.toml")
}

/// The job id `submit` printed alone on its line.
fn job_id(out: &CliOutput) -> &str {
    out.stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("job-"))
        .unwrap_or_else(|| panic!("submit printed no job id: {out:?}"))
}

/// What a job ended with, as a user compares two runs.
#[derive(Debug, PartialEq)]
struct Outcome {
    state: i32,
    usable: BTreeSet<String>,
    settings: pb::JobSettings,
    pool_revalidate_every_ms: u64,
    pool_max_failures: u32,
    /// The pool's live_proxies.txt, line by line.
    files: BTreeSet<String>,
}

async fn outcome(coordinator: &CoordinatorProc, job_id: &str, output_dir: &Path) -> Outcome {
    let mut client = coordinator.client().await;
    let job = harness::wait_terminal(&mut client, job_id, WAIT_LIMIT).await;
    let usable = harness::results(&mut client, job_id)
        .await
        .into_iter()
        .filter(|r| r.usable)
        .map(|r| r.proxy)
        .collect();
    let pool = client
        .get_pool(pb::GetPoolRequest {
            pool: "shop".into(),
            ..Default::default()
        })
        .await
        .expect("GetPool")
        .into_inner();
    let txt = output_dir.join("shop").join("live_proxies.txt");
    let files = std::fs::read_to_string(&txt)
        .unwrap_or_else(|e| panic!("reading {}: {e}", txt.display()))
        .lines()
        .map(str::to_string)
        .collect();
    Outcome {
        state: job.state,
        usable,
        settings: job.settings.expect("a job has settings"),
        pool_revalidate_every_ms: pool.revalidate_every_ms,
        pool_max_failures: pool.max_failures,
        files,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_set_up_by_the_file_ends_as_the_same_job_set_up_by_flags() {
    let shop = Site::shop(LOCAL, Duration::from_secs(3)).await.unwrap();
    let farm = Farm::spawn(LOCAL, 4, 0, 3).await.unwrap();
    // Relays the judge but spoils the shop's page: the target setting decides it is not usable.
    let rewriting = SimProxy::spawn(
        LOCAL,
        ProxySpec::http().with_rewrite("Add to cart", "Buy elsewhere"),
    )
    .await
    .unwrap();
    let mut lines = farm.candidate_lines();
    lines.push(rewriting.candidate_line());
    let target = format!(
        "{};contains=Add to cart;max-latency=5s;name=shop",
        shop.url("/item")
    );

    // With flags.
    let by_flags_out = TempDir::new("config-flags-out");
    let by_flags = CoordinatorProc::start(&[
        "--max-failures",
        "5",
        "--output-dir",
        by_flags_out.path().to_str().unwrap(),
        "--http-listen",
        "off",
    ])
    .await;
    let _w1 = by_flags.worker("flags-worker", &["--max-checks", "8"]);
    let judge = by_flags.judge_url.clone();
    let list = by_flags.dir.write("list.txt", lines.join("\n"));
    let out = by_flags
        .cli(&[
            "submit",
            "--file",
            list.to_str().unwrap(),
            "--pool",
            "shop",
            "--judge",
            &judge,
            "--target",
            &target,
            "--timeout",
            "6s",
            "--chunk-size",
            "3",
            "--min-usable",
            "2",
            "--max-latency",
            "4s",
            "--min-anonymity",
            "transparent",
            "--revalidate-every",
            "7m",
            "--wait",
        ])
        .await;
    assert_eq!(out.code, 0, "submit with flags: {out:?}");
    let flags_outcome = outcome(&by_flags, job_id(&out), by_flags_out.path()).await;

    // With one file for the coordinator, the worker and the CLI; its relative paths are taken
    // from its directory, wherever the programs start.
    let dir = TempDir::new("config-file");
    let listen = harness::quiet_port();
    std::fs::write(dir.path().join("list.txt"), lines.join("\n")).unwrap();
    let config = dir.write(
        "proxyfleet.toml",
        format!(
            r#"# the same job as above
[coordinator]
listen = "{listen}"
judge-listen = "127.0.0.1:0"
http-listen = "off"
max-failures = 5
output-dir = "out"
allow_private_targets = true

[worker]
max-checks = 8

[client]
coordinator = "http://{listen}"

[submit]
pool = "shop"
file = "list.txt"
timeout = "6s"
chunk-size = 3
wait = true

[pools.shop]
judge = ["{judge}"]
target = ["{target}"]
min-usable = 2
max-latency = "4s"
min-anonymity = "transparent"
revalidate-every = "7m"
"#
        ),
    );
    let config = config.to_str().unwrap();
    let by_file = CoordinatorProc::start_on(&listen.to_string(), &["--config", config]).await;
    let _w2 = by_file.worker("file-worker", &["--config", config]);
    let out = run("proxyfleet", &["--config", config, "submit"], &[]).await;
    assert_eq!(out.code, 0, "submit with the file: {out:?}");
    let file_outcome = outcome(&by_file, job_id(&out), &dir.path().join("out")).await;

    assert_eq!(file_outcome, flags_outcome);
    assert_eq!(flags_outcome.state, pb::JobState::Succeeded as i32);
    assert_eq!(
        flags_outcome.usable.len(),
        4,
        "the farm's working proxies, not the one failing the target: {flags_outcome:?}"
    );
    assert_eq!(flags_outcome.files.len(), 4, "{flags_outcome:?}");
    assert_eq!(
        (
            flags_outcome.pool_max_failures,
            flags_outcome.pool_revalidate_every_ms,
            flags_outcome.settings.chunk_size,
            flags_outcome.settings.targets.len(),
        ),
        (5, 7 * 60 * 1000, 3, 1)
    );
    let workers = harness::workers(&mut by_file.client().await).await;
    assert_eq!(
        workers.iter().map(|w| w.max_checks).collect::<Vec<_>>(),
        [8]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_then_the_environment_then_the_file_then_the_defaults() {
    let dir = TempDir::new("config-precedence");
    let config = dir.write(
        "proxyfleet.toml",
        "[coordinator]\nmax-failures = 4\nrevalidate-every = \"9m\"\n\
         [worker]\nmax-checks = 16\n\
         [submit]\nchunk-size = 7\nmin-usable = 3\ntimeout = \"4s\"\nname = \"from-file\"\n",
    );
    let config = config.to_str().unwrap();
    // The coordinator: a flag beats the file, the file beats the default.
    let coordinator = CoordinatorProc::start(&[
        "--config",
        config,
        "--max-failures",
        "6",
        "--http-listen",
        "off",
    ])
    .await;
    // The worker: the environment beats the file.
    let mut worker = tokio::process::Command::new(harness::bin("proxyfleet-worker"));
    worker
        .args([
            "--config",
            config,
            "--coordinator",
            &coordinator.url,
            "--name",
            "w",
        ])
        .env("PROXYFLEET_MAX_CHECKS", "24")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let _worker = worker.spawn().expect("starting the worker");
    let mut client = coordinator.client().await;
    let workers = harness::wait_connected(&client).await;
    assert_eq!(workers[0].max_checks, 24, "the environment beats the file");

    // The CLI, with the file named by the environment: a flag beats the environment, which
    // beats the file, which beats the defaults.
    let proxy = SimProxy::spawn(LOCAL, ProxySpec::http()).await.unwrap();
    let list = dir.write("list.txt", proxy.candidate_line());
    let url = coordinator.url.as_str();
    let out = run(
        "proxyfleet",
        &[
            "--coordinator",
            url,
            "submit",
            "--file",
            list.to_str().unwrap(),
            "--min-usable",
            "5",
        ],
        &[
            ("PROXYFLEET_CONFIG", config),
            ("PROXYFLEET_CHUNK_SIZE", "9"),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let job = harness::job(&mut client, job_id(&out)).await;
    let settings = job.settings.unwrap();
    assert_eq!(
        (
            settings.min_usable,
            settings.chunk_size,
            settings.timeout_ms,
            job.name.as_str(),
            settings.deadline_ms
        ),
        (5, 9, 4000, "from-file", 3_600_000),
        "flag, environment, file, file, default"
    );
    harness::wait_terminal(&mut client, &job.job_id, WAIT_LIMIT).await;
    let pool = client
        .get_pool(pb::GetPoolRequest {
            pool: "default".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (pool.max_failures, pool.revalidate_every_ms),
        (6, 9 * 60 * 1000),
        "the flag beats the file; the file beats the default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_in_the_environment_beats_a_token_in_the_file() {
    let coordinator = CoordinatorProc::start(&[
        "--client-token",
        "client-secret",
        "--worker-token",
        "worker-secret",
        "--http-listen",
        "off",
    ])
    .await;
    let dir = TempDir::new("config-token-file");
    let token_file = dir.write("client.token", "client-secret\n");
    let config = dir.write("proxyfleet.toml", "[client]\ntoken = \"stale-secret\"\n");
    // --token-file declares its conflict with --token; the environment's token file still wins
    // over the file's token rather than clashing with it.
    let out = run(
        "proxyfleet",
        &[
            "--config",
            config.to_str().unwrap(),
            "--coordinator",
            &coordinator.url,
            "jobs",
        ],
        &[("PROXYFLEET_TOKEN_FILE", token_file.to_str().unwrap())],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn the_client_table_goes_only_to_commands_that_talk_to_a_coordinator() {
    let dir = TempDir::new("config-client-table");
    let config = dir.write(
        "proxyfleet.toml",
        "[client]\ncoordinator = \"http://file:1\"\ntoken = \"file-secret\"\n",
    );
    let parse = |argv: &[&str]| -> proxyfleet_cli::args::Cli {
        let mut full = vec!["proxyfleet", "--config", config.to_str().unwrap()];
        full.extend_from_slice(argv);
        config_file::try_parse_from(&proxyfleet_cli::config_programs(), full)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let cli = parse(&["run"]);
    assert!(
        matches!(cli.client(), Ok(None)),
        "an embedded run takes no coordinator from [client]"
    );
    let cli = parse(&["jobs"]);
    let client = cli
        .client()
        .ok()
        .flatten()
        .expect("jobs talks to a coordinator");
    assert_eq!(
        (client.coordinator.as_str(), client.token.as_deref()),
        ("http://file:1", Some("file-secret"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_stops_every_program_before_it_does_anything_naming_its_line() {
    let dir = TempDir::new("config-bad");
    let data = dir.path().join("data");
    let good = format!(
        "[coordinator]\nlisten = \"127.0.0.1:0\"\ndata-dir = \"{}\"\n",
        data.display()
    );
    for (program, table, key, args) in [
        (
            "proxyfleet-coordinator",
            "coordinator",
            "max-failure",
            vec![],
        ),
        ("proxyfleet-worker", "worker", "max-check", vec![]),
        (
            "proxyfleet",
            "submit",
            "min-usabel",
            vec!["submit", "--file", "-"],
        ),
    ] {
        let header = if table == "coordinator" {
            String::new()
        } else {
            format!("[{table}]\n")
        };
        let text = format!("{good}{header}# a comment\n{key} = 3\n");
        let config = dir.write("bad.toml", &text);
        let mut argv = vec!["--config", config.to_str().unwrap()];
        argv.extend(args);
        let out = run(program, &argv, &[]).await;
        assert_eq!(out.code, 2, "{program}: {out:?}");
        let line = text.lines().position(|l| l.starts_with(key)).unwrap() + 1;
        assert!(
            out.stderr.contains(&format!(
                "bad.toml:{line}:1: unknown key \"{key}\" in [{table}]"
            )),
            "{program}: {}",
            out.stderr
        );
        assert!(out.stderr.contains("did you mean"), "{}", out.stderr);
        assert!(out.stdout.is_empty(), "{program} did something: {out:?}");
        assert!(!data.exists(), "{program} created its data dir");
    }
    // A key of another program's table, a syntax error, a wrong type, a secret.
    for (text, expected) in [
        (
            "[worker]\nmax-failures = 3\n",
            "bad.toml:2:1: unknown key \"max-failures\" in [worker]; max-failures belongs in [coordinator]",
        ),
        ("[client]\ncoordinator = \"http://x\n", "bad.toml:2:"),
        (
            "[submit]\nmin-usable = [1, 2]\n",
            "bad.toml:2:14: [submit] min-usable: expected a string (MIN_USABLE), got an array",
        ),
        ("[client]\ntokn = \"s3cret\"\n", "did you mean token?"),
    ] {
        let config = dir.write("bad.toml", text);
        let out = run(
            "proxyfleet",
            &["--config", config.to_str().unwrap(), "jobs"],
            &[],
        )
        .await;
        assert_eq!(out.code, 2, "{text}: {out:?}");
        assert!(out.stderr.contains(expected), "{text}: {}", out.stderr);
        assert!(!out.stderr.contains("s3cret"), "{}", out.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_loads_in_all_three_programs() {
    let example = example();
    config_file::check_file(&example, &proxyfleet_cli::config_programs())
        .unwrap_or_else(|e| panic!("{e}"));
    let example = example.to_str().unwrap();
    // The coordinator and a worker with the example; flags move them to free ports.
    let coordinator = CoordinatorProc::start(&["--config", example, "--http-listen", "off"]).await;
    let _worker = coordinator.worker("example", &["--config", example]);
    let client = coordinator.client().await;
    let workers = harness::wait_connected(&client).await;
    assert_eq!(
        workers[0].max_checks, 256,
        "the example's [worker] max-checks"
    );
    // The CLI with the example, pointed at this coordinator by a flag.
    let out = run(
        "proxyfleet",
        &[
            "--config",
            example,
            "--coordinator",
            &coordinator.url,
            "pools",
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn every_cli_command_has_a_table_the_coordinator_and_workers_accept() {
    for sub in proxyfleet_cli::args::Cli::command().get_subcommands() {
        assert!(
            config_file::TABLES.contains(&sub.get_name()),
            "add {:?} to config_file::TABLES, so that coordinators and workers reading the same file accept its table",
            sub.get_name()
        );
    }
}
