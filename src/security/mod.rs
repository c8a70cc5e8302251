//! Who may call, and over what: TLS (and mTLS) on the listener, API keys with per-key quotas on
//! each call. `server` sets them up from the configuration; `api::auth` enforces them per call.
//!
//! Secrets never leave this module in a printable form: API keys are held as digests, private
//! keys inside rustls, and every error names a file and a line, never their content.
pub mod keys;
pub mod quota;
pub mod tls;
pub mod watch;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::AuthSettings;
use keys::ApiKeys;
use quota::{Quota, Quotas};

/// The keys in force and their quotas; the keys are replaced whole when their file changes.
#[derive(Debug)]
pub struct KeyStore {
    keys: ArcSwap<ApiKeys>,
    quotas: Quotas,
    settings: AuthSettings,
}

impl KeyStore {
    pub fn new(keys: ApiKeys, settings: AuthSettings) -> KeyStore {
        KeyStore {
            keys: ArcSwap::from_pointee(keys),
            quotas: Quotas::default(),
            settings,
        }
    }

    /// Whether calls need keys at all: with no keys configured, nobody could call.
    pub fn enabled(&self) -> bool {
        self.settings.api_keys_file.is_some() || self.settings.api_keys_env.is_some()
    }

    pub fn replace(&self, keys: ApiKeys) {
        self.keys.store(Arc::new(keys));
    }

    /// The quota of the key `presented`, if it is a key in force.
    pub fn check(&self, presented: &[u8]) -> Option<Arc<Quota>> {
        let name = self.keys.load().check(presented)?;
        Some(self.quotas.of(&name, &self.settings))
    }
}
