//! The `proxyfleet` command-line client: submit, watch, results, jobs, workers, cancel, and the
//! embedded `run` and `demo`.

pub mod args;
pub mod client;
pub mod embedded;
pub mod progress;

use args::{Cli, Command};
use client::Failure;

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
        Command::Demo(args) => return embedded::demo(args).await,
        _ => {}
    }
    // Read the list before connecting so that bad input is reported even with no coordinator.
    let list = match &cli.command {
        Command::Submit(args) => Some(client::read_list(&args.job)?),
        _ => None,
    };
    let mut c = client::connect(&url).await?;
    match cli.command {
        Command::Submit(args) => {
            let request = client::submit_request(&args.job, list.unwrap_or_default())?;
            let job_id =
                client::submit(&mut c, &url, request, &args.job.file.display().to_string()).await?;
            if args.wait {
                return client::watch(&mut c, &url, &job_id).await;
            }
            Ok(0)
        }
        Command::Watch { job } => client::watch(&mut c, &url, &job).await,
        Command::Results {
            job,
            format,
            usable_only,
        } => client::results(&mut c, &url, &job, format, usable_only)
            .await
            .map(|_| 0),
        Command::Jobs => client::jobs(&mut c, &url).await.map(|_| 0),
        Command::Workers => client::workers(&mut c, &url).await.map(|_| 0),
        Command::Cancel { job } => client::cancel(&mut c, &url, &job).await.map(|_| 0),
        Command::Run(_) | Command::Demo(_) => unreachable!("handled above"),
    }
}
