//! `server.tls` and `auth`: where the certificates and the API keys are, and what a key may do.
//! Only paths and names live here: the secrets themselves are read by `crate::security`, so
//! `bertd config` can print these settings whole.
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How long between two reads of the certificate and key files, and of the API-key file.
pub const DEFAULT_RELOAD_INTERVAL_MS: u64 = 2_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first. With `key`, the server speaks TLS only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate signed by one of these (mTLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// How often the files are read again; a change takes effect for new connections, and a
    /// change that does not load is logged and the previous certificate kept.
    pub reload_interval_ms: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            cert: None,
            key: None,
            client_ca: None,
            reload_interval_ms: DEFAULT_RELOAD_INTERVAL_MS,
        }
    }
}

/// Who may use gRPC reflection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReflectionAccess {
    /// Anyone who can connect.
    Open,
    /// Callers with a valid API key.
    Keyed,
    /// Nobody: the service is not served.
    Off,
}

/// What one API key may have the server do at once and over time. 0 means no limit.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KeyLimits {
    /// Inputs of the key's calls being worked on at once (queued, computing or unsent).
    pub max_inflight_inputs: usize,
    /// Inputs per second, on average (a token bucket).
    pub inputs_per_second: f64,
    /// Inputs the key may send at once above its rate; 0: one second's worth.
    pub burst_inputs: usize,
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits {
            max_inflight_inputs: 0,
            inputs_per_second: 0.0,
            burst_inputs: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// API keys, one `NAME KEY` a line, `#` comments; read again when it changes. With keys
    /// (from here or `api_keys_env`), every call needs `authorization: Bearer KEY`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys_file: Option<PathBuf>,
    /// The name of an environment variable holding more keys in the same form (entries may also
    /// be separated by `;`), e.g. "BERTD_API_KEYS". Read once, at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys_env: Option<String>,
    /// Health checks need no key, so that probes and load balancers can use them.
    pub health_open: bool,
    /// Reflection: open, keyed or off. Unset: open on a loopback address; elsewhere keyed when
    /// there are keys, else off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reflection: Option<ReflectionAccess>,
    /// How often `api_keys_file` is read again.
    pub reload_interval_ms: u64,
    /// The limits of every key that `limits` does not name.
    pub key_limits: KeyLimits,
    /// Limits by key name, replacing `key_limits` for that key.
    pub limits: BTreeMap<String, KeyLimits>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            api_keys_file: None,
            api_keys_env: None,
            health_open: true,
            reflection: None,
            reload_interval_ms: DEFAULT_RELOAD_INTERVAL_MS,
            key_limits: KeyLimits::default(),
            limits: BTreeMap::new(),
        }
    }
}

impl AuthSettings {
    /// The limits of key `name`, and the configuration key that sets them (for error messages).
    pub fn limits_of(&self, name: &str) -> (KeyLimits, String) {
        match self.limits.get(name) {
            Some(limits) => (*limits, format!("auth.limits.{name}")),
            None => (self.key_limits, "auth.key_limits".to_string()),
        }
    }
}

impl super::Settings {
    /// The TLS and API-key settings that cannot work, named.
    pub(super) fn validate_security(&self) -> Result<(), super::ConfigError> {
        use super::invalid;
        let tls = &self.server.tls;
        match (&tls.cert, &tls.key) {
            (Some(_), None) => {
                return Err(invalid("server.tls.key", "server.tls.cert needs its key"));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "server.tls.cert",
                    "server.tls.key needs its certificate",
                ));
            }
            _ => {}
        }
        if tls.client_ca.is_some() && tls.cert.is_none() {
            return Err(invalid(
                "server.tls.client_ca",
                "client certificates need TLS: set server.tls.cert and server.tls.key",
            ));
        }
        for (key, ms) in [
            ("server.tls.reload_interval_ms", tls.reload_interval_ms),
            ("auth.reload_interval_ms", self.auth.reload_interval_ms),
        ] {
            if ms == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if let Some(name) = &self.auth.api_keys_env
            && name.is_empty()
        {
            return Err(invalid("auth.api_keys_env", "names no variable"));
        }
        let named = self
            .auth
            .limits
            .iter()
            .map(|(n, l)| (format!("auth.limits.{n}"), l));
        for (key, limits) in
            std::iter::once(("auth.key_limits".to_string(), &self.auth.key_limits)).chain(named)
        {
            let rate = limits.inputs_per_second;
            if !rate.is_finite() || rate < 0.0 {
                return Err(invalid(
                    &format!("{key}.inputs_per_second"),
                    format!("{rate} is not a rate (0 for none)"),
                ));
            }
        }
        Ok(())
    }
}
