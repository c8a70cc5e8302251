//! The server's TLS configuration from PEM files (`server.tls.*`), held so that a reload can
//! replace it under running connections: each new connection takes the configuration current at
//! its handshake, and connections already open keep theirs.
//!
//! With `client_ca`, a client must present a certificate that chains to one of its CAs (mTLS);
//! its subject is then known to the layers above (`client_subject`).
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::TlsSettings;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {}: {message}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("server.tls: {0}")]
    Config(String),
}

/// The files of a TLS configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files `settings` name; `None` for plaintext.
    pub fn from_settings(settings: &TlsSettings) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: settings.cert.clone()?,
            key: settings.key.clone()?,
            client_ca: settings.client_ca.clone(),
        })
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// A server configuration from the files as they are now, checked whole: the key must be
    /// the certificate's.
    pub fn load(&self) -> Result<ServerConfig, TlsError> {
        let certs = certificates("server.tls.cert", &self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| TlsError::File {
            what: "server.tls.key",
            path: self.key.clone(),
            message: pem_problem(e),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates("server.tls.client_ca", path)? {
                    roots.add(cert).map_err(|e| TlsError::File {
                        what: "server.tls.client_ca",
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::Config(format!("client_ca: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(format!("cert and key: {e}")))?;
        // gRPC runs over HTTP/2 only.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |message: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(pem_problem(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(pem_problem(e)))?;
    if certs.is_empty() {
        return Err(error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// What went wrong reading a PEM file; the file's content (a private key) is never shown.
fn pem_problem(error: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match error {
        Error::Io(e) => e.to_string(),
        Error::NoItemsFound => "no PEM private key in it".into(),
        _ => "not a valid PEM file".into(),
    }
}

/// The configuration new connections get; replaced whole by a reload.
pub struct Certificates {
    current: ArcSwap<ServerConfig>,
}

impl Certificates {
    pub fn new(config: ServerConfig) -> Certificates {
        Certificates {
            current: ArcSwap::from_pointee(config),
        }
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    pub fn replace(&self, config: ServerConfig) {
        self.current.store(Arc::new(config));
    }
}

/// The subject of a client's certificate (its first, the leaf), e.g. "CN=batch-jobs, O=search".
pub fn client_subject(leaf: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.subject().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `name` and its key, PEM.
    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    /// The files, in a directory of their own under `dir`.
    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        let dir = tempfile::tempdir_in(dir).unwrap().keep();
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
        }
    }

    #[test]
    fn a_certificate_and_its_key_load_and_the_subject_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed("batch-jobs");
        let config = files(dir.path(), &cert, &key).load().unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(client_subject(&der).as_deref(), Some("CN=batch-jobs"));
    }

    #[test]
    fn files_that_do_not_load_are_named_and_the_key_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed("localhost");
        let (_, other_key) = self_signed("localhost");
        let key_line = key.lines().nth(1).unwrap().to_string();
        let cases = [
            (
                files(dir.path(), "not a certificate", &key),
                "server.tls.cert",
            ),
            (files(dir.path(), &cert, "not a key"), "server.tls.key"),
            (
                files(dir.path(), &cert, &other_key),
                "server.tls: cert and key",
            ),
        ];
        for (files, expected) in cases {
            let error = files.load().unwrap_err().to_string();
            assert!(error.starts_with(expected), "{error}");
            assert!(!error.contains(&key_line), "{error}");
        }
        let missing = TlsFiles {
            cert: dir.path().join("missing.pem"),
            ..files(dir.path(), &cert, &key)
        };
        let error = missing.load().unwrap_err().to_string();
        assert!(error.contains("missing.pem"), "{error}");
    }
}
