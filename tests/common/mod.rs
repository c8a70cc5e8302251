//! Shared by the integration tests: fixture paths, references, loading an engine.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tch::{Device, Kind};

use bertd::engine::Engine;
use bertd::model::{Model, ModelSpec};
use bertd::tokenize::BertTokenizer;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub fn references(name: &str) -> Vec<Value> {
    let path = fixtures().join("references").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn load(dir: &Path) -> (BertTokenizer, Engine) {
    let spec = Arc::new(ModelSpec::load(dir).unwrap());
    let tokenizer = BertTokenizer::load(&spec).unwrap();
    let model = Model::load(spec, Device::Cpu, Kind::Float).unwrap();
    (tokenizer, Engine::new(model))
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Row-major floats of a nested array ([[...], ...]).
pub fn flat_floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().flat_map(floats).collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn assert_close(what: &str, actual: &[f32], expected: &[f32]) {
    let diff = max_abs_diff(actual, expected);
    assert!(diff <= 1e-5, "{what}: max abs difference {diff} > 1e-5");
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// A writable copy of a fixture model, for tests that damage it.
pub fn copy_model(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&model_dir(name), dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
