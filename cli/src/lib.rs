//! The `proxyfleet` command-line client: submit, watch, results, jobs, workers, cancel, and the
//! embedded `run` and `demo`.

pub mod args;
pub mod client;
pub mod embedded;
pub mod gateway;
pub mod job;
pub mod progress;
pub mod retry;

use args::{Cli, Command};
use client::Failure;

impl Cli {
    /// The coordinator address, token and TLS settings from the global options.
    pub fn remote(&self) -> Result<client::Remote, Failure> {
        let bad = |what: String| Failure::new(client::EXIT_BAD_INPUT, format!("error: {what}"));
        let token =
            proxyfleet_common::auth::token_from(self.token.as_deref(), self.token_file.as_deref())
                .map_err(|e| bad(format!("--token-file: {e}")))?;
        let token = proxyfleet_common::auth::BearerToken::new(token.as_deref())
            .map_err(|e| bad(format!("--token: {e}")))?;
        let tls = proxyfleet_common::tls::client_config(
            self.ca.as_deref(),
            self.client_cert.as_deref().zip(self.client_key.as_deref()),
        )
        .map_err(bad)?;
        Ok(client::Remote {
            url: self.coordinator.clone(),
            token,
            tls,
        })
    }
}

/// Runs one command; returns the process exit code.
pub async fn main(cli: Cli) -> i32 {
    match dispatch(cli).await {
        Ok(code) => code,
        Err(Failure { code, message }) => {
            eprintln!("{message}");
            code
        }
    }
}

async fn dispatch(cli: Cli) -> Result<i32, Failure> {
    let url = cli.coordinator.clone();
    match cli.command {
        Command::Run(args) => return embedded::run(args).await,
        Command::Farm(args) => return embedded::farm(args).await,
        Command::Demo(args) => return embedded::demo(args).await,
        Command::Gateway(ref args) => return gateway::run(cli.remote()?, args.clone()).await,
        _ => {}
    }
    // Read the inputs before connecting so that bad input is reported even with no coordinator.
    let inputs = match &cli.command {
        Command::Submit(args) => Some(client::read_inputs(&args.job.source)?),
        Command::Refresh(args) => match &args.sources_file {
            Some(path) => Some(client::Inputs {
                sources: client::read_sources_file(path)?,
                ..client::Inputs::default()
            }),
            None => None,
        },
        _ => None,
    };
    let remote = cli.remote()?;
    let mut c = client::connect(&remote).await?;
    match cli.command {
        Command::Submit(args) => {
            let inputs = inputs.unwrap_or_default();
            let label = inputs.label.clone();
            let request = client::submit_request(&args.job, inputs)?;
            let job_id = client::submit(&mut c, &url, request, &label).await?;
            if args.wait {
                return client::submit_wait(&mut c, &url, &job_id).await;
            }
            Ok(0)
        }
        Command::Refresh(args) => client::refresh(&mut c, &url, &args, inputs).await,
        Command::Watch { job } => client::watch(&mut c, &url, &job).await,
        Command::Results {
            job,
            follow,
            format,
            usable_only,
        } => client::results(&mut c, &url, &job, format, usable_only, follow)
            .await
            .map(|_| 0),
        Command::Job(args) => job::run(&mut c, &url, &args).await,
        Command::Jobs => client::jobs(&mut c, &url).await.map(|_| 0),
        Command::Pool(args) => client::pool(&mut c, &url, &args).await.map(|_| 0),
        Command::Pools => client::pools(&mut c, &url).await.map(|_| 0),
        Command::Workers => client::workers(&mut c, &url).await.map(|_| 0),
        Command::Cancel { job } => client::cancel(&mut c, &url, &job).await.map(|_| 0),
        Command::Health => client::health(&remote).await,
        Command::Run(_) | Command::Demo(_) | Command::Farm(_) | Command::Gateway(_) => {
            unreachable!("handled above")
        }
    }
}
