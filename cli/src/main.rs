//! `proxyfleet`: parses the command line (under it, the config file), sets up logs, runs one
//! command, exits with its code. Under the name `proxyfleet-coordinator` or `proxyfleet-worker`
//! it is that program instead.

use proxyfleet_common::config_file;

/// Many small allocations (candidates, verdicts, messages) come and go: mimalloc serves them with
/// less CPU and less fragmentation than the system allocator. It is built without transparent
/// huge pages, whose 2 MB first touches cost more time and memory here than they save.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    // One binary, three programs: started as `proxyfleet-coordinator` or `proxyfleet-worker` (a
    // link, as in the image), it is that program.
    let program = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let other = match program.as_deref() {
        Some("proxyfleet-coordinator") => Some(proxyfleet_coordinator::program::main().await),
        Some("proxyfleet-worker") => Some(proxyfleet_worker::program::main().await),
        _ => None,
    };
    if let Some(done) = other {
        if let Err(e) = done {
            eprintln!("Error: {e:?}");
            std::process::exit(1);
        }
        return;
    }
    let cli: proxyfleet_cli::args::Cli = config_file::parse(&proxyfleet_cli::config_programs());
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
