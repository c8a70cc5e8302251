//! bertd: serves BERT-family encoders over gRPC.
//!
//! A request flows one way: `api` (the gRPC edge: handlers, validation, status codes) → `batch`
//! (admission, the queue and its scheduler, the workers' loop that runs batches and replies) →
//! `engine` (compute only: a batch in, outputs out) → `model` (BERT on libtorch). `server` wires
//! them together and owns the server's life; `tokenize` (text to ids), `config` (what the
//! operator chose), `security` (TLS, API keys and their quotas) and `telemetry` (logs, traces,
//! metrics) stand beside, and `shim` under `model` and `engine` (how their C++ calls into
//! libtorch, for what tch does not bind, report failures). A lower layer never imports a higher
//! one.
pub mod api;
pub mod batch;
pub mod config;
pub mod engine;
pub mod model;
pub mod security;
pub mod server;
mod shim;
pub mod telemetry;
pub mod tokenize;

/// A panic's message, for an error that says what happened.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown failure".into())
}
