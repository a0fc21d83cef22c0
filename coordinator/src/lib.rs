//! proxyfleet coordinator: takes refresh jobs, leases their chunks to workers over bidirectional
//! streams, takes chunks back from workers that vanish, and streams progress to clients.

mod candidate;
mod config;
mod convert;
mod dashboard;
mod error;
mod fetch;
mod first_request;
mod geo;
mod grpc;
mod http_api;
mod judge;
mod listener;
mod metrics;
mod output;
mod pools;
pub mod program;
mod scheduler;
mod sources;
mod state;
mod store;
mod submit;

use std::future::Future;

use listener::{GuardedListener, Plain, PortLimits};
use proxyfleet_common::auth::TokenCheck;
use proxyfleet_proto::v1::coordinator_server::CoordinatorServer;
use proxyfleet_proto::v1::workers_server::WorkersServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

pub use candidate::Protocol;
pub use config::{
    Cli, ConfigError, CoordinatorConfig, GeoIpFiles, check_exposure, default_judge_url,
    tokens_given,
};
pub use error::Error;
pub use fetch::{Location, locate};
pub use judge::tls_acceptor;
pub use scheduler::{Anonymity, JobState, Reason};
pub use sources::{Source, SourcesError, parse_sources_file};
use state::State;
pub use submit::pool_name_problem;

/// Conversions between the wire's enums and the coordinator's, and the JSON of a job's report,
/// for clients that show them.
pub mod wire {
    pub use crate::convert::{
        anonymity_from_proto, job_state_from_proto, protocol_from_proto, protocol_to_proto,
        reason_from_proto, report_json,
    };
}

/// Runs the coordinator on `grpc` (clients and workers), `judge` (the built-in judge) and, when
/// given, `http` (the pools' HTTP API) and `metrics`, until `shutdown` completes, then closes
/// every session and stream and returns.
pub async fn run(
    grpc: TcpListener,
    judge: TcpListener,
    judge_tls: Option<tokio_rustls::TlsAcceptor>,
    http: Option<TcpListener>,
    metrics: Option<TcpListener>,
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::DataDir {
        dir: config.data_dir.display().to_string(),
        source,
    })?;
    let state = State::new(config.clone())?;
    let (stop_tx, stop_rx) = watch::channel(false);

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CoordinatorServer<grpc::CoordinatorService>>()
        .await;
    health_reporter
        .set_serving::<WorkersServer<grpc::WorkersService>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proxyfleet_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proxyfleet_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let coordinator = CoordinatorServer::new(grpc::CoordinatorService {
        state: state.clone(),
        shutdown: stop_rx.clone(),
        watchers: grpc::WatcherLimit::new(config.max_watchers),
    })
    .max_decoding_message_size(config.max_message_bytes)
    .max_encoding_message_size(config.max_message_bytes.max(16 * 1024 * 1024));
    let workers = WorkersServer::new(grpc::WorkersService {
        state: state.clone(),
        shutdown: stop_rx.clone(),
        require_client_cert: config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
    })
    .max_decoding_message_size(16 * 1024 * 1024);
    // Each service takes its own role's token; the other role's is recognized and refused.
    let coordinator = tonic::service::interceptor::InterceptedService::new(
        coordinator,
        TokenCheck {
            role: "client",
            expected: config.client_token.clone(),
            other: config.worker_token.clone(),
        },
    );
    let workers = tonic::service::interceptor::InterceptedService::new(
        workers,
        TokenCheck {
            role: "worker",
            expected: config.worker_token.clone(),
            other: config.client_token.clone(),
        },
    );
    // On loopback only this machine reaches the port: no one to keep out (embedded runs, labs).
    if (config.worker_token.is_none() || config.client_token.is_none())
        && !grpc.local_addr()?.ip().is_loopback()
    {
        tracing::warn!(
            worker_token = config.worker_token.is_some(),
            client_token = config.client_token.is_some(),
            "a role has no token: anyone who reaches the port may act in it (keep the port on loopback or set --worker-token and --client-token)"
        );
    }

    info!(grpc = %grpc.local_addr()?, judge = %judge.local_addr()?, judge_urls = ?config.judge_urls, lease_ttl = ?config.lease_ttl, max_connections = config.max_connections, judge_max_connections = config.judge_max_connections, first_request_timeout = ?config.first_request_timeout, "coordinator listening");

    // Delivers what waited for the store, writes output files, shows jobs' ends.
    let mut publisher = tokio::spawn(state.clone().publisher());
    let mut ticker = {
        let state = state.clone();
        let mut stop = stop_rx.clone();
        let every = config.tick;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => state.tick(),
                    _ = stop.changed() => return,
                }
            }
        })
    };
    let mut refresher = {
        let state = state.clone();
        let mut stop = stop_rx.clone();
        let every = config.refresh.as_ref().map(|r| r.every);
        tokio::spawn(async move {
            let Some(every) = every else {
                let _ = stop.changed().await;
                return;
            };
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = interval.tick() => state.scheduled_refresh(),
                    _ = stop.changed() => return,
                }
            }
        })
    };
    let mut metrics_task = {
        let mut stop = stop_rx.clone();
        let listener = metrics;
        let state = state.clone();
        tokio::spawn(async move {
            match listener {
                Some(listener) => {
                    let page = move || metrics::render(&state.metrics(), &state.pools());
                    proxyfleet_common::metrics::serve(listener, page, async move {
                        let _ = stop.changed().await;
                    })
                    .await
                }
                None => {
                    let _ = stop.changed().await;
                    Ok(())
                }
            }
        })
    };
    let mut http_task = {
        let mut stop = stop_rx.clone();
        let limits = PortLimits {
            max_connections: config.judge_max_connections,
            first_request_timeout: config.first_request_timeout,
        };
        let tokens = TokenCheck {
            role: "client",
            expected: config.client_token.clone(),
            other: config.worker_token.clone(),
        };
        let state = state.clone();
        tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.changed().await;
            };
            match http {
                Some(listener) => http_api::serve(listener, state, tokens, limits, stopped).await,
                None => {
                    stopped.await;
                    Ok(())
                }
            }
        })
    };
    let mut judge_task = {
        let mut stop = stop_rx.clone();
        let limits = PortLimits {
            max_connections: config.judge_max_connections,
            first_request_timeout: config.first_request_timeout,
        };
        tokio::spawn(judge::serve(judge, judge_tls, limits, async move {
            let _ = stop.changed().await;
        }))
    };

    let server_stop = {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.changed().await;
        }
    };
    // TLS is the port's own (not tonic's), so that a handshake runs beside the accept loop and
    // counts within the first-request deadline, and the deadline can watch the HTTP/2 frames.
    let grpc_tls = match &config.tls {
        Some(tls) => Some(listener::grpc_tls(
            &tls.cert,
            &tls.key,
            tls.client_ca.as_deref(),
        )?),
        None => None,
    };
    let grpc_limits = PortLimits {
        max_connections: config.max_connections,
        first_request_timeout: config.first_request_timeout,
    };
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(coordinator)
        .add_service(workers);
    let server = async move {
        match grpc_tls {
            None => {
                let incoming = GuardedListener::<_, first_request::H2Scan>::new(
                    grpc,
                    Plain,
                    "grpc",
                    grpc_limits,
                );
                router
                    .serve_with_incoming_shutdown(incoming, server_stop)
                    .await
            }
            Some(acceptor) => {
                let incoming = GuardedListener::<_, first_request::H2Scan>::new(
                    grpc,
                    acceptor,
                    "grpc",
                    grpc_limits,
                );
                router
                    .serve_with_incoming_shutdown(incoming, server_stop)
                    .await
            }
        }
    };
    let mut server = tokio::spawn(server);

    // Supervise: a shutdown request stops everything; any long-lived task ending on its own is a
    // failure that stops the others too, loudly.
    let mut server_done = false;
    let stopped = |task: &'static str, detail: String| Err(Error::Stopped { task, detail });
    let outcome: Result<(), Error> = tokio::select! {
        _ = shutdown => {
            info!("coordinator shutting down");
            Ok(())
        }
        served = &mut server => {
            server_done = true;
            match served {
                Ok(Ok(())) => stopped("the gRPC server", "unexpectedly".into()),
                Ok(Err(e)) => stopped("the gRPC server", format!("it failed: {e}")),
                Err(e) => stopped("the gRPC server", format!("its task failed: {e}")),
            }
        }
        judged = &mut judge_task => stopped("the judge endpoint", format!("{judged:?}")),
        served = &mut http_task => stopped("the HTTP API", format!("{served:?}")),
        ticked = &mut ticker => stopped("the lease ticker", format!("{ticked:?}")),
        published = &mut publisher => stopped("the publisher", format!("{published:?}")),
        refreshed = &mut refresher => stopped("the refresh scheduler", format!("{refreshed:?}")),
        served = &mut metrics_task => stopped("the metrics endpoint", format!("{served:?}")),
        failure = state.store_failed() => Err(Error::StoreFailed(failure)),
    };
    // Sessions end in the scheduler before any task hears of the stop: a session handler that
    // ended first would read as its worker vanishing and charge its chunks an attempt.
    state.close_all_sessions();
    let _ = stop_tx.send(true);
    if !server_done
        && tokio::time::timeout(std::time::Duration::from_secs(10), &mut server)
            .await
            .is_err()
    {
        tracing::warn!("the gRPC server did not stop within 10s; closing it");
        server.abort();
    }
    ticker.abort();
    refresher.abort();
    metrics_task.abort();
    judge_task.abort();
    http_task.abort();
    // Everything acknowledged is already durable; this flushes what is still in flight.
    state.close_store();
    // Then the publisher writes out and shows what those last writes ended.
    state.stop_publisher();
    if !publisher.is_finished()
        && tokio::time::timeout(std::time::Duration::from_secs(10), &mut publisher)
            .await
            .is_err()
    {
        tracing::warn!("the publisher did not finish within 10s; stopping it");
        publisher.abort();
    }
    match &outcome {
        Ok(()) => info!("coordinator stopped"),
        Err(e) => tracing::error!(error = %e, "coordinator stopped on a failure"),
    }
    outcome
}
