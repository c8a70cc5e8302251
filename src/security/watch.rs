//! Files that change under a running server: certificates that Kubernetes rotates in a mounted
//! secret, a key file an operator edits. They are polled: their contents are read every
//! interval and compared, which sees every way a file can change, including the symlink swap by
//! which Kubernetes updates a mounted secret (which a watch on the path can miss).
//!
//! A change is applied whole or not at all: when what changed does not load, the error is
//! logged and the previous value stays in force, until the files change again.
use std::path::PathBuf;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::telemetry::metrics::ReloadLabels;

/// The digest of the files' contents, or `None` while one cannot be read.
async fn fingerprint(paths: &[PathBuf]) -> Option<[u8; 32]> {
    let mut hasher = Sha256::new();
    for path in paths {
        let bytes = tokio::fs::read(path).await.ok()?;
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Some(hasher.finalize().into())
}

/// What to watch and how to load it.
pub struct Watched<L, A> {
    /// The setting that names the files, for the log and the metrics.
    pub what: &'static str,
    pub paths: Vec<PathBuf>,
    pub every: Duration,
    pub load: L,
    pub apply: A,
}

/// Polls the files every `every` until `stop`; when their contents change, `load` runs and its
/// value goes to `apply`; each outcome is counted in `reloads`. The first read is taken as the
/// state already loaded.
pub fn spawn<T, E, L, A>(
    watched: Watched<L, A>,
    reloads: Family<ReloadLabels, Counter>,
    stop: CancellationToken,
) where
    L: Fn() -> Result<T, E> + Send + 'static,
    A: Fn(T) + Send + 'static,
    E: std::fmt::Display,
{
    let Watched {
        what,
        paths,
        every,
        load,
        apply,
    } = watched;
    let count = move |outcome| reloads.get_or_create(&ReloadLabels { what, outcome }).inc();
    tokio::spawn(async move {
        let mut seen = fingerprint(&paths).await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let now = fingerprint(&paths).await;
            // Unreadable (between the steps of a rotation, say): try again next time.
            if now.is_none() || now == seen {
                continue;
            }
            seen = now;
            match load() {
                Ok(value) => {
                    apply(value);
                    count("ok");
                    tracing::info!("{what}: reloaded");
                }
                Err(e) => {
                    count("failed");
                    tracing::warn!(error = %e, "{what}: changed but cannot be loaded; the previous one stays in force")
                }
            }
        }
    });
}
