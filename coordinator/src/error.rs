//! Why the coordinator could not start, or stopped: each names what to look at.

/// What stops the coordinator; [`crate::run`] returns it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the data dir {dir}: {source}; pass a writable --data-dir")]
    DataDir { dir: String, source: std::io::Error },
    /// The store cannot be opened, read or written; the message names the file.
    #[error("{0}")]
    Store(String),
    /// A certificate, key or CA file given by a flag is unusable.
    #[error("{flag} {path}: {reason}")]
    Tls {
        flag: &'static str,
        path: String,
        reason: String,
    },
    #[error("cannot set up TLS: {0}")]
    TlsSetup(#[from] rustls::Error),
    #[error("cannot build the gRPC reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A long-lived task ended on its own: the coordinator stops rather than limp on.
    #[error("{task} stopped: {detail}")]
    Stopped { task: &'static str, detail: String },
    #[error("the store failed: {0}")]
    StoreFailed(String),
    /// A GeoIP database given by --geoip (or Debian's) cannot be read.
    #[error("{0} (--geoip off runs without one)")]
    Geo(#[from] crate::geo::GeoError),
}

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Self {
        Error::Store(e.to_string())
    }
}

impl Error {
    /// A TLS file named by `flag` at `path` that cannot be used.
    pub(crate) fn tls(flag: &'static str, path: &std::path::Path, reason: impl ToString) -> Error {
        Error::Tls {
            flag,
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}
