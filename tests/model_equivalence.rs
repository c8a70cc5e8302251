//! The engine computes what HuggingFace transformers and sentence-transformers compute: every
//! output of the tiny fixture models within 1e-5 of the references that
//! tests/fixtures/generate.py recorded, and the real all-MiniLM-L6-v2 at cosine >= 0.99999, with
//! either dense kernel (oneDNN, the CPU default, and libtorch's `linear`).
mod common;

use bertd::config::default_model_dir;
use bertd::engine::{ClassifyOptions, EmbedOptions, Engine, EngineInput, Output, Task};
use bertd::model::{LinearKernel, Pooling, ScoreActivation};
use bertd::tokenize::{BertTokenizer, TextInput, TokenizeError, Tokenized};
use common::*;
use serde_json::Value;

fn input_of(reference: &Value) -> TextInput {
    TextInput {
        text: reference["text"].as_str().unwrap().to_string(),
        text_pair: reference["text_pair"].as_str().map(str::to_string),
    }
}

fn tokenize_all(tokenizer: &BertTokenizer, refs: &[Value]) -> Vec<Tokenized> {
    refs.iter()
        .map(|r| tokenizer.encode(&input_of(r), true).unwrap())
        .collect()
}

fn embed(pooling: Pooling, normalize: bool, layer: usize, dimensions: Option<usize>) -> Task {
    Task::Embed(EmbedOptions {
        pooling,
        normalize,
        layer,
        dimensions,
    })
}

/// Runs every input in one padded batch, all with the same task.
fn run_batch(engine: &Engine, tokens: &[Tokenized], task: Task) -> Vec<Output> {
    let inputs: Vec<EngineInput> = tokens
        .iter()
        .map(|t| EngineInput {
            tokens: t,
            task: &task,
        })
        .collect();
    engine.run(&inputs).unwrap()
}

fn embedding(output: &Output) -> &[f32] {
    match output {
        Output::Embedding(v) => v,
        other => panic!("expected an embedding, got {other:?}"),
    }
}

#[test]
fn tokenizer_gives_the_ids_and_truncation_of_huggingface() {
    let refs = references("bert_tiny");
    let (tokenizer, _) = load(&model_dir("bert_tiny"));
    for r in &refs {
        let t = tokenizer.encode(&input_of(r), true).unwrap();
        let want: Vec<i64> = ints(&r["input_ids"]);
        let want_types: Vec<i64> = ints(&r["token_type_ids"]);
        assert_eq!(t.ids, want, "ids of {:?}", r["text"]);
        assert_eq!(t.type_ids, want_types, "type ids of {:?}", r["text"]);
        let original = r["original_length"].as_u64().unwrap() as usize;
        assert_eq!(t.truncated(), original > 48);
        // A long text is pre-cut before tokenizing: its count is then that of the part tokenized
        // (still over the maximum); the detailed path (the Tokenize call) counts the whole.
        if original <= 48 {
            assert_eq!(t.original_length, original);
        } else {
            assert!((49..=original).contains(&t.original_length));
        }
        let (detailed, _) = tokenizer.encode_detailed(&input_of(r), true).unwrap();
        assert_eq!(detailed.ids, want);
        assert_eq!(detailed.original_length, original);
    }
    assert!(
        refs.iter()
            .any(|r| r["original_length"].as_u64().unwrap() > 48),
        "a long input is covered"
    );
}

#[test]
fn over_long_input_is_refused_when_truncation_is_off() {
    let refs = references("bert_tiny");
    let (tokenizer, _) = load(&model_dir("bert_tiny"));
    let long = refs
        .iter()
        .find(|r| r["original_length"].as_u64().unwrap() > 48)
        .unwrap();
    let err = tokenizer.encode(&input_of(long), false).unwrap_err();
    assert_eq!(
        err,
        TokenizeError::TooLong {
            tokens: long["original_length"].as_u64().unwrap() as usize,
            max: 48,
            at_least: false,
        }
    );
    // Short input is unaffected by the flag.
    assert!(
        tokenizer
            .encode(&TextInput::single("Hello world!"), false)
            .is_ok()
    );
}

#[test]
fn bert_model_outputs_equal_transformers_in_one_padded_batch_with_either_dense_kernel() {
    for kernel in cpu_kernels() {
        bert_tiny_equals_transformers(kernel);
    }
}

fn bert_tiny_equals_transformers(kernel: LinearKernel) {
    let refs = references("bert_tiny");
    let (tokenizer, engine) = load_with(&model_dir("bert_tiny"), kernel);
    let tokens = tokenize_all(&tokenizer, &refs);
    let last = 3;
    let cases: [(&str, Task); 7] = [
        ("cls", embed(Pooling::Cls, false, last, None)),
        ("mean", embed(Pooling::Mean, false, last, None)),
        ("max", embed(Pooling::Max, false, last, None)),
        ("mean_normalized", embed(Pooling::Mean, true, last, None)),
        (
            "mean_first8_normalized",
            embed(Pooling::Mean, true, last, Some(8)),
        ),
        ("layer1_mean", embed(Pooling::Mean, false, 1, None)),
        ("layer0_cls", embed(Pooling::Cls, false, 0, None)),
    ];
    for (key, task) in cases {
        let outputs = run_batch(&engine, &tokens, task);
        for (r, out) in refs.iter().zip(&outputs) {
            assert_close(
                &format!("{kernel:?}: {key} of {:?}", r["text"]),
                embedding(out),
                &floats(&r[key]),
            );
        }
    }
    let outputs = run_batch(&engine, &tokens, embed(Pooling::Tokens, false, last, None));
    for (r, out) in refs.iter().zip(&outputs) {
        let Output::TokenEmbeddings { dim, values } = out else {
            panic!("token embeddings")
        };
        assert_eq!(*dim, 32);
        assert_close(
            &format!("{kernel:?}: tokens of {:?}", r["text"]),
            values,
            &flat_floats(&r["token_embeddings"]),
        );
    }
}

#[test]
fn results_do_not_depend_on_batch_company() {
    let refs = references("bert_tiny");
    let (tokenizer, engine) = load(&model_dir("bert_tiny"));
    let tokens = tokenize_all(&tokenizer, &refs);
    let task = embed(Pooling::Mean, false, 3, None);
    for (r, t) in refs.iter().zip(&tokens) {
        let alone = run_batch(&engine, std::slice::from_ref(t), task);
        assert_close("mean alone", embedding(&alone[0]), &floats(&r["mean"]));
    }
    // Different tasks in one batch: each input gets its own.
    let tasks = [
        embed(Pooling::Cls, false, 3, None),
        embed(Pooling::Mean, false, 1, None),
        embed(Pooling::Max, false, 3, None),
    ];
    let inputs: Vec<EngineInput> = tokens
        .iter()
        .zip(tasks.iter().cycle())
        .map(|(t, task)| EngineInput { tokens: t, task })
        .collect();
    let outputs = engine.run(&inputs).unwrap();
    for (i, (r, out)) in refs.iter().zip(&outputs).enumerate() {
        let key = ["cls", "layer1_mean", "max"][i % 3];
        assert_close(key, embedding(out), &floats(&r[key]));
    }
}

#[test]
fn sharded_checkpoint_loads_to_the_same_model() {
    let refs = references("bert_tiny");
    assert!(
        model_dir("bert_tiny_sharded")
            .join("model.safetensors.index.json")
            .exists()
    );
    let (tokenizer, engine) = load(&model_dir("bert_tiny_sharded"));
    let tokens = tokenize_all(&tokenizer, &refs);
    let outputs = run_batch(&engine, &tokens, embed(Pooling::Mean, false, 3, None));
    for (r, out) in refs.iter().zip(&outputs) {
        assert_close("mean (sharded)", embedding(out), &floats(&r["mean"]));
    }
}

fn scores_by_index(output: &Output, labels: usize) -> Vec<f32> {
    let Output::Scores(scores) = output else {
        panic!("expected scores")
    };
    assert_eq!(scores.len(), labels);
    assert!(
        scores.windows(2).all(|w| w[0].score >= w[1].score),
        "sorted by score"
    );
    let mut by_index = vec![f32::NAN; labels];
    for s in scores {
        by_index[s.index] = s.score;
    }
    by_index
}

#[test]
fn single_label_classifier_equals_transformers_with_softmax_by_default() {
    for kernel in cpu_kernels() {
        single_label_classifier_equals_transformers(kernel);
    }
}

fn single_label_classifier_equals_transformers(kernel: LinearKernel) {
    let refs = references("classifier_single");
    let (tokenizer, engine) = load_with(&model_dir("classifier_single"), kernel);
    let spec = engine.model().spec();
    let classifier = spec.classifier.as_ref().unwrap();
    assert_eq!(classifier.labels, ["negative", "neutral", "positive"]);
    assert_eq!(classifier.activation, ScoreActivation::Softmax);
    let tokens = tokenize_all(&tokenizer, &refs);
    for (activation, key) in [
        (ScoreActivation::Softmax, "softmax"),
        (ScoreActivation::Sigmoid, "sigmoid"),
        (ScoreActivation::None, "logits"),
    ] {
        let task = Task::Classify(ClassifyOptions {
            activation,
            top_k: None,
        });
        for (r, out) in refs.iter().zip(run_batch(&engine, &tokens, task)) {
            let what = format!("{kernel:?}: {key}");
            assert_close(&what, &scores_by_index(&out, 3), &floats(&r[key]));
        }
    }
}

#[test]
fn top_k_keeps_the_best_labels_with_their_names() {
    let refs = references("classifier_single");
    let (tokenizer, engine) = load(&model_dir("classifier_single"));
    let tokens = tokenize_all(&tokenizer, &refs[..1]);
    let task = Task::Classify(ClassifyOptions {
        activation: ScoreActivation::Softmax,
        top_k: Some(2),
    });
    let out = run_batch(&engine, &tokens, task);
    let Output::Scores(scores) = &out[0] else {
        panic!()
    };
    let want = floats(&refs[0]["softmax"]);
    let best = (0..3).max_by(|&a, &b| want[a].total_cmp(&want[b])).unwrap();
    assert_eq!(scores.len(), 2);
    assert_eq!(scores[0].index, best);
    assert_eq!(scores[0].label, ["negative", "neutral", "positive"][best]);
}

#[test]
fn multi_label_classifier_uses_sigmoid_from_problem_type() {
    for kernel in cpu_kernels() {
        multi_label_classifier_equals_transformers(kernel);
    }
}

fn multi_label_classifier_equals_transformers(kernel: LinearKernel) {
    let refs = references("classifier_multi");
    let (tokenizer, engine) = load_with(&model_dir("classifier_multi"), kernel);
    let classifier = engine.model().spec().classifier.clone().unwrap();
    assert_eq!(classifier.activation, ScoreActivation::Sigmoid);
    assert_eq!(classifier.labels, ["sports", "politics", "science", "art"]);
    let tokens = tokenize_all(&tokenizer, &refs);
    let task = Task::Classify(ClassifyOptions {
        activation: classifier.activation,
        top_k: None,
    });
    for (r, out) in refs.iter().zip(run_batch(&engine, &tokens, task)) {
        let what = format!("{kernel:?}: sigmoid");
        assert_close(&what, &scores_by_index(&out, 4), &floats(&r["sigmoid"]));
    }
}

#[test]
fn sentence_transformers_layout_gives_its_embeddings_with_its_defaults() {
    let refs = references("sentence_transformers");
    let (tokenizer, engine) = load(&model_dir("sentence_transformers"));
    let spec = engine.model().spec();
    assert_eq!(
        (
            spec.default_pooling,
            spec.default_normalize,
            spec.max_length
        ),
        (Pooling::Mean, true, 24)
    );
    let tokens = tokenize_all(&tokenizer, &refs);
    for (r, t) in refs.iter().zip(&tokens) {
        let want: Vec<i64> = ints(&r["input_ids"]);
        assert_eq!(t.ids, want);
    }
    let task = embed(
        spec.default_pooling,
        spec.default_normalize,
        spec.num_layers(),
        None,
    );
    for (r, out) in refs.iter().zip(run_batch(&engine, &tokens, task)) {
        assert_close(
            &format!("{:?}", r["text"]),
            embedding(&out),
            &floats(&r["embedding"]),
        );
    }
}

#[test]
fn classify_on_an_encoder_without_head_is_refused_per_input() {
    let (tokenizer, engine) = load(&model_dir("bert_tiny"));
    let t = tokenizer.encode(&TextInput::single("hi"), true).unwrap();
    let task = Task::Classify(ClassifyOptions {
        activation: ScoreActivation::Softmax,
        top_k: None,
    });
    let err = engine
        .run(&[EngineInput {
            tokens: &t,
            task: &task,
        }])
        .unwrap_err();
    assert!(err.to_string().contains("no classification head"), "{err}");
}

#[test]
fn all_minilm_l6_v2_equals_sentence_transformers_with_either_dense_kernel() {
    for kernel in cpu_kernels() {
        all_minilm_l6_v2_equals_sentence_transformers(kernel);
    }
}

fn all_minilm_l6_v2_equals_sentence_transformers(kernel: LinearKernel) {
    let refs = references("all_minilm_l6_v2");
    assert!(refs.len() >= 50);
    let dir = default_model_dir();
    assert!(
        dir.join("model.safetensors").exists(),
        "the default model is installed by make setup: {}",
        dir.display()
    );
    let (tokenizer, engine) = load_with(&dir, kernel);
    let spec = engine.model().spec();
    let task = embed(
        spec.default_pooling,
        spec.default_normalize,
        spec.num_layers(),
        None,
    );
    let inputs: Vec<TextInput> = refs
        .iter()
        .map(|r| TextInput::single(r["text"].as_str().unwrap()))
        .collect();
    let tokens: Vec<Tokenized> = inputs
        .iter()
        .map(|i| tokenizer.encode(i, true).unwrap())
        .collect();
    for chunk in tokens.chunks(16).zip(refs.chunks(16)) {
        let (tokens, refs) = chunk;
        for (r, out) in refs.iter().zip(run_batch(&engine, tokens, task)) {
            let c = cosine(embedding(&out), &floats(&r["embedding"]));
            assert!(c >= 0.99999, "{kernel:?}: cosine {c} for {:?}", r["text"]);
        }
    }
}

/// bf16 against fp32, per embedding.
const BF16_MIN_COSINE: f64 = 0.998;

#[test]
fn bf16_on_a_cpu_that_has_it_equals_fp32_within_the_bound_and_is_refused_elsewhere() {
    use bertd::engine::{DType, DeviceSpec};
    use bertd::model::Model;
    use std::sync::Arc;
    let cpu = DeviceSpec(tch::Device::Cpu);
    if let Err(refused) = DType::Bf16.check_device(cpu) {
        assert!(!bertd::engine::cpu_has_bf16());
        assert!(refused.contains("AVX512-BF16"), "{refused}");
        return;
    }
    let (tokenizer, fp32) = load(&default_model_dir());
    let spec = fp32.model().spec();
    let bf16 = Engine::new(
        Model::load(
            Arc::new(spec.clone()),
            tch::Device::Cpu,
            DType::Bf16.kind(),
            cpu_kernel(),
        )
        .unwrap(),
    );
    let task = embed(
        spec.default_pooling,
        spec.default_normalize,
        spec.num_layers(),
        None,
    );
    // The fixture's sentences, and long inputs up to the model's maximum length.
    let mut tokens = tokenize_all(&tokenizer, &references("all_minilm_l6_v2"));
    const LONG_WORDS: [usize; 3] = [40, 90, 200];
    for words in LONG_WORDS {
        let text = vec!["the server computes embeddings quickly for many"; words / 7 + 1].join(" ");
        tokens.push(
            tokenizer
                .encode(&TextInput::single(text.as_str()), true)
                .unwrap(),
        );
    }
    for chunk in tokens.chunks(16) {
        for (full, half) in run_batch(&fp32, chunk, task)
            .iter()
            .zip(run_batch(&bf16, chunk, task))
        {
            let c = cosine(embedding(full), embedding(&half));
            assert!(c >= BF16_MIN_COSINE, "cosine {c}");
        }
    }
}
