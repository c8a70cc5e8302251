//! bertd: serves BERT-family encoders over gRPC.
//!
//! A request flows `api` (gRPC handlers, validation) → `batch` (queue and scheduler) → `engine`
//! (worker pool, one model replica per worker) → `model` (BERT on libtorch); `tokenize` turns text
//! into ids on the way in and `config` holds what the operator chose.
pub mod api;
pub mod batch;
pub mod config;
pub mod engine;
pub mod model;
pub mod tokenize;
