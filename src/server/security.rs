//! The server's side of `crate::security`: TLS and API keys loaded at start (a file that does not
//! load stops the start, naming it), kept reloaded while the server runs, and the policy of
//! which services need a key.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::auth::{Authenticate, OpenServices};
use crate::config::{ReflectionAccess, Settings};
use crate::security::KeyStore;
use crate::security::keys::{ApiKeys, KeysError};
use crate::security::tls::{Certificates, TlsError, TlsFiles};
use crate::security::watch::{self, Watched};
use crate::telemetry::metrics::RpcMetrics;

/// TLS and the keys, as loaded.
pub struct Security {
    pub keys: Arc<KeyStore>,
    /// `None`: plaintext.
    pub tls: Option<Tls>,
    settings: Settings,
}

pub struct Tls {
    files: TlsFiles,
    pub certificates: Arc<Certificates>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("auth.api_keys: {0}")]
    Keys(#[from] KeysError),
}

impl Security {
    pub fn load(settings: &Settings) -> Result<Security, SecurityError> {
        let auth = &settings.auth;
        let keys = ApiKeys::load(auth.api_keys_file.as_deref(), auth.api_keys_env.as_deref())?;
        let tls = match TlsFiles::from_settings(&settings.server.tls) {
            None => None,
            Some(files) => Some(Tls {
                certificates: Arc::new(Certificates::new(files.load()?)),
                files,
            }),
        };
        Ok(Security {
            keys: Arc::new(KeyStore::new(keys, auth.clone())),
            tls,
            settings: settings.clone(),
        })
    }

    /// Reads the files again when they change, until `stop`; counts each reload in `metrics`.
    pub fn keep_reloaded(&self, stop: &CancellationToken, metrics: &RpcMetrics) {
        if let Some(tls) = &self.tls {
            let files = tls.files.clone();
            let certificates = tls.certificates.clone();
            let watched = Watched {
                what: "server.tls",
                paths: files.paths(),
                every: Duration::from_millis(self.settings.server.tls.reload_interval_ms),
                load: move || files.load(),
                apply: move |config| certificates.replace(config),
            };
            watch::spawn(watched, metrics.reloads.clone(), stop.clone());
        }
        let auth = &self.settings.auth;
        if let Some(path) = &auth.api_keys_file {
            let (file, env) = (path.clone(), auth.api_keys_env.clone());
            let keys = self.keys.clone();
            let watched = Watched {
                what: "auth.api_keys_file",
                paths: vec![path.clone()],
                every: Duration::from_millis(auth.reload_interval_ms),
                load: move || ApiKeys::load(Some(&file), env.as_deref()),
                apply: move |loaded| keys.replace(loaded),
            };
            watch::spawn(watched, metrics.reloads.clone(), stop.clone());
        }
    }

    /// Who may use reflection on a server at `local`: as configured; else anyone on a loopback
    /// address, key holders elsewhere, and nobody where there are no keys to hold.
    pub fn reflection(&self, local: SocketAddr) -> ReflectionAccess {
        match self.settings.auth.reflection {
            Some(access) => access,
            None if local.ip().is_loopback() => ReflectionAccess::Open,
            None if self.keys.enabled() => ReflectionAccess::Keyed,
            None => ReflectionAccess::Off,
        }
    }

    /// The per-call check of keys, with reflection served as `reflection` says.
    pub fn authenticate(
        &self,
        reflection: ReflectionAccess,
        metrics: Arc<RpcMetrics>,
    ) -> Authenticate {
        let open = OpenServices {
            health: self.settings.auth.health_open,
            reflection: reflection == ReflectionAccess::Open,
        };
        Authenticate::new(self.keys.clone(), open, metrics)
    }

    /// Says what a server at `local` exposes in the clear.
    pub fn warn_if_exposed(&self, local: SocketAddr) {
        if self.tls.is_some() || local.ip().is_loopback() {
            return;
        }
        if self.keys.enabled() {
            tracing::warn!(%local, "API keys travel in plaintext to a non-loopback address; set server.tls.cert and server.tls.key");
        } else {
            tracing::warn!(%local, "serving plaintext without API keys on a non-loopback address: anyone who can reach it may call; see server.tls and auth");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn security(keys: bool, reflection: Option<ReflectionAccess>) -> (tempfile::TempDir, Security) {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::default();
        if keys {
            let file = dir.path().join("keys");
            std::fs::write(&file, "team-a a-key-of-sixteen-chars\n").unwrap();
            settings.auth.api_keys_file = Some(file);
        }
        settings.auth.reflection = reflection;
        (dir, Security::load(&settings).unwrap())
    }

    #[test]
    fn reflection_is_open_on_loopback_keyed_elsewhere_and_off_without_keys() {
        let loopback: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let public: SocketAddr = "10.1.2.3:50051".parse().unwrap();
        assert_eq!(
            security(false, None).1.reflection(loopback),
            ReflectionAccess::Open
        );
        assert_eq!(
            security(false, None).1.reflection(public),
            ReflectionAccess::Off
        );
        assert_eq!(
            security(true, None).1.reflection(public),
            ReflectionAccess::Keyed
        );
        let configured = Some(ReflectionAccess::Open);
        assert_eq!(
            security(true, configured).1.reflection(public),
            ReflectionAccess::Open
        );
    }

    /// Log lines written through `tracing` while `f` runs.
    fn logged(f: impl FnOnce()) -> String {
        use std::sync::Mutex;
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(lines.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn plaintext_on_a_non_loopback_address_is_warned_about() {
        let public: SocketAddr = "10.1.2.3:50051".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let log = logged(|| security(false, None).1.warn_if_exposed(public));
        assert!(
            log.contains("WARN") && log.contains("anyone who can reach it"),
            "{log}"
        );
        let log = logged(|| security(true, None).1.warn_if_exposed(public));
        assert!(log.contains("API keys travel in plaintext"), "{log}");
        assert_eq!(
            logged(|| security(true, None).1.warn_if_exposed(loopback)),
            ""
        );
    }
}
