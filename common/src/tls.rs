//! TLS settings of the gRPC port's callers (clients and workers), read from PEM files.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// The client side: a CA to trust and, for mTLS, a certificate and key. `None` without either.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<Option<ClientTlsConfig>, String> {
    if ca.is_none() && identity.is_none() {
        return Ok(None);
    }
    // Only the given CA is trusted: a coordinator's certificate comes from its operator.
    let mut config = ClientTlsConfig::new();
    if let Some(ca) = ca {
        config = config.ca_certificate(Certificate::from_pem(read(ca, "the CA certificate")?));
    }
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(
            read(cert, "the client certificate")?,
            read(key, "the client key")?,
        ));
    }
    Ok(Some(config))
}
