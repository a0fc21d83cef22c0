//! Log setup shared by the coordinator and the workers: `RUST_LOG` filters, text or JSON lines
//! on stderr.

/// Installs the global subscriber; `format` is "json" or anything else for text.
pub fn init(format: &str, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
}
