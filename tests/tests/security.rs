//! A cluster that lets no one in: separate worker and client tokens, each refused on the other's
//! service; no open port off loopback without tokens; TLS, and mTLS for workers.

use std::time::Duration;

use proxyfleet_common::auth::BearerToken;
use proxyfleet_proto::v1 as pb;
use proxyfleet_proto::v1::coordinator_client::CoordinatorClient;
use proxyfleet_proto::v1::workers_client::WorkersClient;
use proxyfleet_tests::certs::TestCa;
use proxyfleet_tests::harness::{self, CoordinatorProc, TempDir, WAIT_LIMIT};
use proxyfleet_tests::sim::Farm;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

fn hello(name: &str) -> pb::WorkerMessage {
    pb::WorkerMessage {
        kind: Some(pb::worker_message::Kind::Hello(pb::Hello {
            worker_id: name.into(),
            name: name.into(),
            version: "test".into(),
            capacity: 1,
            max_checks: 1,
        })),
    }
}

/// The ids of the workers the coordinator holds sessions with.
async fn worker_ids<T>(client: &mut CoordinatorClient<T>) -> Vec<String>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let workers = client
        .list_workers(pb::ListWorkersRequest {})
        .await
        .unwrap()
        .into_inner()
        .workers;
    workers.into_iter().map(|w| w.worker_id).collect()
}

/// What each service answers a token: Ok, or the status code.
async fn answers(channel: &Channel, token: Option<&str>) -> (Result<(), Code>, Result<(), Code>) {
    let token = BearerToken::new(token).unwrap();
    let mut client = CoordinatorClient::with_interceptor(channel.clone(), token.clone());
    let as_client = client
        .list_jobs(pb::ListJobsRequest {})
        .await
        .map(|_| ())
        .map_err(|s| s.code());
    let mut workers = WorkersClient::with_interceptor(channel.clone(), token);
    let as_worker = match workers
        .session(tokio_stream::iter(vec![hello("probe")]))
        .await
    {
        Ok(response) => {
            let first = response.into_inner().message().await;
            match first {
                Ok(Some(pb::CoordinatorMessage {
                    kind: Some(pb::coordinator_message::Kind::Welcome(_)),
                })) => Ok(()),
                other => panic!("a session without a welcome: {other:?}"),
            }
        }
        Err(status) => Err(status.code()),
    };
    (as_client, as_worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_needs_its_own_token_on_its_own_service() {
    let coordinator = CoordinatorProc::start(&[
        "--worker-token",
        "worker-secret",
        "--client-token",
        "client-secret",
    ])
    .await;
    let channel = Channel::from_shared(coordinator.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let cases = [
        (None, Err(Code::Unauthenticated), Err(Code::Unauthenticated)),
        (
            Some("guess"),
            Err(Code::Unauthenticated),
            Err(Code::Unauthenticated),
        ),
        (Some("worker-secret"), Err(Code::PermissionDenied), Ok(())),
        (Some("client-secret"), Ok(()), Err(Code::PermissionDenied)),
    ];
    for (token, client, worker) in cases {
        assert_eq!(
            answers(&channel, token).await,
            (client, worker),
            "token {token:?}"
        );
    }

    // The real programs with the right tokens run a job; the CLI without one is told why.
    let out = coordinator.cli(&["jobs"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("client token is required"), "{out:?}");
    let out = coordinator.cli(&["--token", "worker-secret", "jobs"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("not a client token"), "{out:?}");
    let token_file = coordinator.dir.write("client.token", "client-secret\n");
    let _worker = coordinator.worker("w", &["--token", "worker-secret", "--max-checks", "8"]);
    let farm = Farm::spawn([127, 0, 0, 1].into(), 2, 0, 3).await.unwrap();
    let list = coordinator
        .dir
        .write("list.txt", farm.candidate_lines().join("\n"));
    let out = coordinator
        .cli(&[
            "--token-file",
            token_file.to_str().unwrap(),
            "submit",
            "--file",
            list.to_str().unwrap(),
            "--wait",
            "--timeout",
            "2s",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("SUCCEEDED: 2 usable of 5"), "{out:?}");
    // A worker with a wrong token is refused and keeps trying; it never joins.
    let _intruder = coordinator.worker("intruder", &["--token", "client-secret"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut client = CoordinatorClient::with_interceptor(
        channel.clone(),
        BearerToken::new(Some("client-secret")).unwrap(),
    );
    assert_eq!(worker_ids(&mut client).await, ["w"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_the_port_stays_on_loopback() {
    let dir = TempDir::new("exposed");
    let data = dir.path().join("data");
    let stderr = harness::coordinator_refuses(&[
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .await;
    assert!(
        stderr
            .contains("refusing to listen on 0.0.0.0:0 without --worker-token and --client-token"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_for_everyone_and_client_certificates_for_workers() {
    let dir = TempDir::new("mtls");
    let ca = TestCa::new(&dir, "fleet-ca");
    let server = ca.sign(&dir, "coordinator");
    let worker_cert = ca.sign(&dir, "worker");
    let rogue = TestCa::new(&dir, "rogue-ca").sign(&dir, "rogue");
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let coordinator = CoordinatorProc::start(&[
        "--tls-cert",
        &path(&server.cert),
        "--tls-key",
        &path(&server.key),
        "--tls-client-ca",
        &path(&ca.pem),
    ])
    .await;
    let url = format!("https://{}", coordinator.grpc);
    let ca_pem = path(&ca.pem);

    // Clients need only the CA; without it they cannot trust the coordinator.
    let out = harness::cli(&["--coordinator", &url, "--ca", &ca_pem, "jobs"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = harness::cli(&["--coordinator", &url, "jobs"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    let out = harness::cli(&["--coordinator", &coordinator.url, "jobs"]).await;
    assert_ne!(out.code, 0, "plain text to a TLS port: {out:?}");

    let cert_args = [
        "--ca",
        &ca_pem,
        "--client-cert",
        &path(&worker_cert.cert),
        "--client-key",
        &path(&worker_cert.key),
    ];
    let _good = harness::worker(&url, "good", &cert_args, dir.path());
    let _no_cert = harness::worker(&url, "no-cert", &["--ca", &ca_pem], dir.path());
    let rogue_args = [
        "--ca",
        &ca_pem,
        "--client-cert",
        &path(&rogue.cert),
        "--client-key",
        &path(&rogue.key),
    ];
    let _rogue = harness::worker(&url, "rogue", &rogue_args, dir.path());

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&ca.pem).unwrap()));
    let channel = Channel::from_shared(url.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = CoordinatorClient::new(channel);
    harness::wait_for("the worker with a certificate to join", WAIT_LIMIT, || {
        let mut client = client.clone();
        async move {
            let workers = client
                .list_workers(pb::ListWorkersRequest {})
                .await
                .ok()?
                .into_inner()
                .workers;
            workers.iter().any(|w| w.worker_id == "good").then_some(())
        }
    })
    .await;
    // The others keep being refused; give them several attempts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(worker_ids(&mut client).await, ["good"]);
    let no_cert_log = std::fs::read_to_string(dir.path().join("no-cert.log")).unwrap();
    assert!(no_cert_log.contains("client certificate"), "{no_cert_log}");

    // And the cluster works over TLS end to end.
    let farm = Farm::spawn([127, 0, 0, 1].into(), 2, 0, 2).await.unwrap();
    let list = dir.write("list.txt", farm.candidate_lines().join("\n"));
    let out = harness::cli(&[
        "--coordinator",
        &url,
        "--ca",
        &ca_pem,
        "submit",
        "--file",
        list.to_str().unwrap(),
        "--wait",
        "--timeout",
        "2s",
    ])
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("SUCCEEDED: 2 usable of 4"), "{out:?}");
}
