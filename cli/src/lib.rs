//! The `proxyfleet` command-line client: submit, refresh, watch, results, jobs, workers, pools,
//! cancel, health, gateway, and the embedded `run` and `demo`.

pub mod args;
pub mod client;
pub mod embedded;
pub mod gateway;
pub(crate) mod job;
pub mod progress;
pub mod retry;

use args::{Cli, ClientArgs, Command, Format};
use client::Failure;
use progress::Say;

/// How the config file holds the CLI's flags: `[client]` the connection flags every command
/// shares, a table per command, `[pools.NAME]` for commands naming the pool. The coordinator's and
/// the worker's tables are checked too, so that one file serving all three is checked whole.
pub fn config_programs() -> [proxyfleet_common::config_file::Program; 3] {
    use clap::CommandFactory;
    use proxyfleet_common::config_file::Program;
    [
        Program::new("client", Cli::command()).sharing(&[
            "coordinator",
            "token",
            "token-file",
            "ca",
            "client-cert",
            "client-key",
        ]),
        Program::new("coordinator", proxyfleet_coordinator::Cli::command()),
        Program::new("worker", proxyfleet_worker::Cli::command()),
    ]
}

impl ClientArgs {
    /// The coordinator address, token and TLS settings.
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

impl Cli {
    /// The command's coordinator options, with any written before the command over them; a
    /// command that talks to no coordinator refuses those.
    pub fn client(&self) -> Result<Option<ClientArgs>, Failure> {
        match (self.command.client(), self.before.first_given()) {
            (Some(args), _) => Ok(Some(self.before.over(args))),
            (None, None) => Ok(None),
            (None, Some(flag)) => Err(Failure::new(
                client::EXIT_BAD_INPUT,
                format!(
                    "error: {flag} is for commands that talk to a coordinator; `proxyfleet {}` runs its own",
                    self.command.name()
                ),
            )),
        }
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
    let say = Say { quiet: cli.quiet };
    let Some(client_args) = cli.client()? else {
        return match cli.command {
            Command::Run(args) => embedded::run(args, say).await,
            Command::Farm(args) => embedded::farm(args, say).await,
            Command::Demo(args) => embedded::demo(args, say).await,
            _ => unreachable!("every other command talks to a coordinator"),
        };
    };
    let remote = client_args.remote()?;
    let url = remote.url.clone();
    match cli.command {
        Command::Gateway(args) => return gateway::run(remote, args).await,
        Command::Health(args) => return client::health(&remote, args.json).await,
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
    let mut c = client::connect(&remote).await?;
    match cli.command {
        Command::Submit(args) => {
            let inputs = inputs.unwrap_or_default();
            let label = inputs.label.clone();
            let request = client::submit_request(&args.job, inputs)?;
            client::submit_command(&mut c, &url, request, &label, &args, say).await
        }
        Command::Refresh(args) => client::refresh(&mut c, &url, &args, inputs, say).await,
        Command::Watch(args) => client::watch(&mut c, &url, &args.job, say, args.json).await,
        Command::Results(args) => {
            let format = if args.json { Format::Json } else { args.format };
            client::results(
                &mut c,
                &url,
                &args.job,
                format,
                args.usable_only,
                args.follow,
            )
            .await
            .map(|_| 0)
        }
        Command::Job(args) => job::run(&mut c, &url, &args).await,
        Command::Jobs(args) => client::jobs(&mut c, &url, args.json).await.map(|_| 0),
        Command::Pool(args) => client::pool(&mut c, &url, &args).await.map(|_| 0),
        Command::Pools(args) => client::pools(&mut c, &url, args.json).await.map(|_| 0),
        Command::Workers(args) => client::workers(&mut c, &url, args.json).await.map(|_| 0),
        Command::Cancel(args) => client::cancel(&mut c, &url, &args.job, say, args.json).await,
        Command::Run(_)
        | Command::Demo(_)
        | Command::Farm(_)
        | Command::Gateway(_)
        | Command::Health(_) => {
            unreachable!("handled above")
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    fn parse(line: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("proxyfleet").chain(line.iter().copied()))
            .unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn only_commands_that_talk_to_a_coordinator_take_its_options() {
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            let takes = sub.get_arguments().any(|a| a.get_id() == "coordinator");
            let embedded = ["run", "demo", "farm"].contains(&sub.get_name());
            assert_eq!(takes, !embedded, "{}", sub.get_name());
        }
        let err =
            Cli::try_parse_from(["proxyfleet", "run", "--coordinator", "http://c:1"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn coordinator_options_before_the_command_still_work() {
        let cli = parse(&["--coordinator", "http://early:1", "jobs"]);
        assert_eq!(cli.client().unwrap().unwrap().coordinator, "http://early:1");
        let cli = parse(&["jobs", "--coordinator", "http://late:1"]);
        assert_eq!(cli.client().unwrap().unwrap().coordinator, "http://late:1");
        let cli = parse(&["--token", "t", "demo"]);
        let refused = cli.client().unwrap_err();
        assert_eq!(refused.code, client::EXIT_BAD_INPUT);
        assert!(refused.message.contains("--token"), "{}", refused.message);
    }

    #[test]
    fn timeout_means_one_check_everywhere() {
        let Command::Refresh(refresh) = parse(&["refresh", "--timeout", "3s"]).command else {
            panic!("refresh");
        };
        assert_eq!(refresh.check.timeout, std::time::Duration::from_secs(3));
        let Command::Refresh(refresh) = parse(&["refresh", "--wait-timeout", "2m"]).command else {
            panic!("refresh");
        };
        assert_eq!(refresh.wait_timeout, std::time::Duration::from_secs(120));
        let Command::Submit(submit) = parse(&["submit", "--timeout", "3s"]).command else {
            panic!("submit");
        };
        assert_eq!(submit.job.check.timeout, std::time::Duration::from_secs(3));
    }
}
