//! A model directory that is not a BERT we can serve is refused with an error naming the file and
//! what is wrong, never loaded half-way.
mod common;

use std::path::Path;
use std::sync::Arc;

use bertd::model::{LinearKernel, Model, ModelError, ModelSpec};
use bertd::tokenize::BertTokenizer;
use common::*;
use tch::{Device, Kind, Tensor};

fn load_error(dir: &Path) -> String {
    let result = ModelSpec::load(dir).and_then(|spec| {
        let spec = Arc::new(spec);
        BertTokenizer::load(&spec)?;
        Model::load(spec, Device::Cpu, Kind::Float, cpu_kernel())
    });
    match result {
        Ok(_) => panic!("{} loaded, but should have been refused", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(path, config.to_string()).unwrap();
}

fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&path).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, &path).unwrap();
}

#[test]
fn a_directory_that_does_not_exist() {
    let err = load_error(Path::new("/nonexistent/model"));
    assert!(
        err.contains("/nonexistent/model") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn a_directory_without_config() {
    let dir = copy_model("bert_tiny");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn an_unsupported_model_type() {
    let dir = copy_model("bert_tiny");
    edit_config(dir.path(), |c| c["model_type"] = "roberta".into());
    let err = load_error(dir.path());
    assert!(
        err.contains("config.json") && err.contains("unsupported model_type \"roberta\""),
        "{err}"
    );
}

#[test]
fn an_unsupported_architecture() {
    let dir = copy_model("bert_tiny");
    edit_config(dir.path(), |c| {
        c["architectures"] = serde_json::json!(["BertForQuestionAnswering"])
    });
    let err = load_error(dir.path());
    assert!(
        err.contains("unsupported architecture \"BertForQuestionAnswering\""),
        "{err}"
    );
}

#[test]
fn an_unsupported_activation() {
    let dir = copy_model("bert_tiny");
    edit_config(dir.path(), |c| c["hidden_act"] = "swish".into());
    let err = load_error(dir.path());
    assert!(err.contains("unsupported hidden_act \"swish\""), "{err}");
}

#[test]
fn missing_tensors_are_all_listed() {
    let dir = copy_model("bert_tiny");
    edit_weights(dir.path(), |t| {
        t.retain(|(name, _)| {
            name != "encoder.layer.1.attention.self.key.bias"
                && name != "embeddings.LayerNorm.weight"
        })
    });
    let err = load_error(dir.path());
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(err.contains("missing tensors"), "{err}");
    assert!(
        err.contains("encoder.layer.1.attention.self.key.bias"),
        "{err}"
    );
    assert!(err.contains("embeddings.LayerNorm.weight"), "{err}");
}

#[test]
fn unexpected_tensors_are_listed() {
    let dir = copy_model("bert_tiny");
    edit_weights(dir.path(), |t| {
        t.push((
            "encoder.layer.9.surprise".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ))
    });
    let err = load_error(dir.path());
    assert!(
        err.contains("unexpected tensors: encoder.layer.9.surprise"),
        "{err}"
    );
}

#[test]
fn a_shape_mismatch_names_both_shapes() {
    let dir = copy_model("bert_tiny");
    edit_weights(dir.path(), |t| {
        for (name, tensor) in t.iter_mut() {
            if name == "encoder.layer.0.intermediate.dense.weight" {
                *tensor = Tensor::zeros([40, 32], (Kind::Float, Device::Cpu));
            }
        }
    });
    let err = load_error(dir.path());
    assert!(
        err.contains(
            "encoder.layer.0.intermediate.dense.weight: expected [48, 32], found [40, 32]"
        ),
        "{err}"
    );
}

#[test]
fn an_unreadable_weights_file() {
    let dir = copy_model("bert_tiny");
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"this is not safetensors",
    )
    .unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains("model.safetensors") && err.contains("unreadable safetensors"),
        "{err}"
    );
}

#[test]
fn no_weights_at_all() {
    let dir = copy_model("bert_tiny");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("no weights"), "{err}");
}

#[test]
fn a_shard_named_in_the_index_but_absent() {
    let dir = copy_model("bert_tiny_sharded");
    std::fs::remove_file(dir.path().join("model-00002-of-00004.safetensors")).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("model-00002-of-00004.safetensors"), "{err}");
}

#[test]
fn a_missing_tokenizer() {
    let dir = copy_model("bert_tiny");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn a_classifier_without_labels() {
    let dir = copy_model("classifier_single");
    edit_config(dir.path(), |c| {
        c.as_object_mut().unwrap().remove("id2label");
    });
    let err = load_error(dir.path());
    assert!(err.contains("without id2label"), "{err}");
}

#[test]
fn bert_prefixed_checkpoint_keys_load_for_a_classifier() {
    // The classifier fixture is saved by BertForSequenceClassification: "bert."-prefixed keys.
    let names: Vec<String> =
        Tensor::read_safetensors(model_dir("classifier_single").join("model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
    assert!(names.iter().any(|n| n.starts_with("bert.encoder.")));
    let spec = Arc::new(ModelSpec::load(&model_dir("classifier_single")).unwrap());
    Model::load(spec, Device::Cpu, Kind::Float, cpu_kernel())
        .map_err(|e: ModelError| e.to_string())
        .unwrap();
}

#[test]
fn the_onednn_dense_kernel_is_refused_off_the_cpu() {
    let spec = Arc::new(ModelSpec::load(&model_dir("bert_tiny")).unwrap());
    let err = Model::load(spec, Device::Cuda(0), Kind::Float, LinearKernel::OneDnn)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("device cuda:0: the oneDNN dense kernel runs only on a CPU"),
        "{err}"
    );
}
