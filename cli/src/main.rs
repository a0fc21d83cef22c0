//! `proxyfleet`: parses the command line, sets up logs, runs one command, exits with its code.

use clap::Parser;

/// Many small allocations (candidates, verdicts, messages) come and go: mimalloc serves them with
/// less CPU and less fragmentation than the system allocator. It is built without transparent
/// huge pages, whose 2 MB first touches cost more time and memory here than they save.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli = proxyfleet_cli::args::Cli::parse();
    // Embedded runs log warnings only, so the progress bar stays readable; RUST_LOG overrides.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let code = proxyfleet_cli::main(cli).await;
    std::process::exit(code);
}
