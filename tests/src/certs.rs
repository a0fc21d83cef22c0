//! Test certificates: a CA and certificates it signs, written as PEM files.

use std::path::PathBuf;

use crate::harness::TempDir;

/// A certificate authority that signs certificates for tests.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// The CA certificate as a PEM file.
    pub pem: PathBuf,
}

/// A certificate and its key, as PEM files.
pub struct Signed {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &TempDir, name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("generating a key");
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("ca parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("self-signing the ca");
        let pem = dir.write(&format!("{name}.pem"), issuer.pem());
        TestCa { issuer, pem }
    }

    /// A certificate for 127.0.0.1 and localhost (server or client), signed by this CA.
    pub fn sign(&self, dir: &TempDir, name: &str) -> Signed {
        let key = rcgen::KeyPair::generate().expect("generating a key");
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
                .expect("parameters");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).expect("signing");
        Signed {
            cert: dir.write(&format!("{name}.pem"), cert.pem()),
            key: dir.write(&format!("{name}.key"), key.serialize_pem()),
        }
    }
}
