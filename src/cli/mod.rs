//! `bertd encode` and `bertd classify`: the engine on stdin and stdout, one JSON line per input.
mod bench;
mod serve;

pub use bench::{BenchArgs, bench};
pub use serve::{ServeArgs, print_config, serve};

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use bertd::config::default_model_dir;
use bertd::engine::options::{ClassifyRequest, EmbedRequest, OptionError};
use bertd::engine::{
    CudaStreams, DType, DenseKernel, DeviceSpec, Engine, EngineInput, Output, Task, cuda,
};
use bertd::model::{Model, ModelSpec, Pooling, ScoreActivation};
use bertd::tokenize::{BertTokenizer, TextInput, Tokenized};

#[derive(clap::Args)]
pub struct ModelArgs {
    /// Model directory (HuggingFace layout); defaults to the installed all-MiniLM-L6-v2.
    #[arg(long)]
    model: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Precision: fp16 needs CUDA; bf16 needs CUDA or a CPU with AVX512-BF16 or AMX.
    #[arg(long, value_enum, default_value_t = DType::F32)]
    dtype: DType,
    /// What computes the dense layers: auto is oneDNN on a CPU, libtorch's linear on CUDA.
    #[arg(long, value_enum, default_value_t = DenseKernel::Auto)]
    dense_kernel: DenseKernel,
    /// On CUDA, compute on libtorch's default stream (shared) or on a stream of its own from
    /// libtorch's pool (per-worker), as each server worker does with engine.cuda_streams.
    #[arg(long, value_enum, default_value_t = CudaStreams::Shared)]
    cuda_streams: CudaStreams,
    /// Intra-op threads for libtorch (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// Inputs per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Read JSON lines {"text": ..., "text_pair": ...} instead of plain text lines.
    #[arg(long)]
    jsonl: bool,
    /// Refuse inputs longer than the model's maximum length instead of truncating them.
    #[arg(long)]
    no_truncate: bool,
}

#[derive(clap::Args)]
pub struct EncodeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// cls, mean, max or tokens (one vector per token); defaults to the model's own.
    #[arg(long)]
    pooling: Option<Pooling>,
    /// L2-normalise the embedding (true/false); defaults to the model's own.
    #[arg(long)]
    normalize: Option<bool>,
    /// Hidden state to take: 0 is the embedding output, -1 (default) the last layer.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    layer: i64,
    /// Keep only the leading dimensions of each embedding.
    #[arg(long)]
    dimensions: Option<u64>,
}

#[derive(clap::Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Only the best K labels.
    #[arg(long)]
    top_k: Option<u64>,
    /// softmax, sigmoid or none; defaults to the model's problem_type.
    #[arg(long)]
    activation: Option<ScoreActivation>,
}

struct Loaded {
    tokenizer: BertTokenizer,
    engine: Engine,
}

fn load(args: &ModelArgs) -> anyhow::Result<Loaded> {
    let dir = args.model.clone().unwrap_or_else(default_model_dir);
    args.device.check_available().map_err(anyhow::Error::msg)?;
    args.dtype
        .check_device(args.device)
        .map_err(anyhow::Error::msg)?;
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    args.cuda_streams
        .check_devices(&[args.device])
        .map_err(anyhow::Error::msg)?;
    cuda::choose_stream(args.cuda_streams, args.device.0)
        .map_err(|e| anyhow!("a stream of its own on {}: {e}", args.device))?;
    let spec = Arc::new(ModelSpec::load(&dir).context("loading the model")?);
    let tokenizer = BertTokenizer::load(&spec).context("loading the tokenizer")?;
    let kernel = args
        .dense_kernel
        .resolve(args.device)
        .map_err(anyhow::Error::msg)?;
    let model =
        Model::load(spec, args.device.0, args.dtype.kind(), kernel).context("loading the model")?;
    Ok(Loaded {
        tokenizer,
        engine: Engine::new(model),
    })
}

/// An option the model cannot honour, named as the flag that set it.
fn option_error(error: OptionError) -> anyhow::Error {
    match error {
        OptionError::NoClassifier { .. } => anyhow!("{error}"),
        _ => anyhow!("--{}: {error}", error.field()),
    }
}

pub fn encode(args: EncodeArgs) -> anyhow::Result<ExitCode> {
    let loaded = load(&args.model)?;
    let task = EmbedRequest {
        pooling: args.pooling,
        normalize: args.normalize,
        layer: Some(args.layer),
        dimensions: args.dimensions,
    }
    .resolve(loaded.engine.model().spec())
    .map_err(option_error)?;
    run(&loaded, &args.model, task)
}

pub fn classify(args: ClassifyArgs) -> anyhow::Result<ExitCode> {
    let loaded = load(&args.model)?;
    let task = ClassifyRequest {
        activation: args.activation,
        top_k: args.top_k,
    }
    .resolve(loaded.engine.model().spec())
    .map_err(option_error)?;
    run(&loaded, &args.model, task)
}

#[derive(Deserialize)]
struct JsonInput {
    text: String,
    text_pair: Option<String>,
}

/// Lines read per round: many batches, so that sorting by length can cut padding.
const WINDOW_BATCHES: usize = 16;

fn run(loaded: &Loaded, args: &ModelArgs, task: Task) -> anyhow::Result<ExitCode> {
    let stdin = std::io::stdin().lock();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut lines = stdin.lines();
    let mut failures = 0usize;
    let mut line_no = 0usize;
    loop {
        let window: Vec<String> = lines
            .by_ref()
            .take(args.batch_size * WINDOW_BATCHES)
            .collect::<Result<_, _>>()
            .context("reading stdin")?;
        if window.is_empty() {
            break;
        }
        let results = process_window(loaded, args, &task, &window, line_no);
        for result in results {
            if result.get("error").is_some() {
                failures += 1;
            }
            serde_json::to_writer(&mut out, &result)?;
            out.write_all(b"\n")?;
        }
        line_no += window.len();
        out.flush()?;
    }
    if failures > 0 {
        eprintln!("bertd: {failures} input(s) failed; see the \"error\" lines");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_line(line: &str, jsonl: bool) -> Result<TextInput, String> {
    if !jsonl {
        return Ok(TextInput::single(line));
    }
    let parsed: JsonInput =
        serde_json::from_str(line).map_err(|e| format!("invalid JSON line: {e}"))?;
    Ok(TextInput {
        text: parsed.text,
        text_pair: parsed.text_pair,
    })
}

/// Results of one window in input order; an input that fails gets an error line of its own.
fn process_window(
    loaded: &Loaded,
    args: &ModelArgs,
    task: &Task,
    window: &[String],
    first_line: usize,
) -> Vec<Value> {
    let mut results: Vec<Option<Value>> = vec![None; window.len()];
    let mut ready: Vec<(usize, Tokenized)> = Vec::new();
    for (i, line) in window.iter().enumerate() {
        let tokenized = parse_line(line, args.jsonl).and_then(|input| {
            loaded
                .tokenizer
                .encode(&input, !args.no_truncate)
                .map_err(|e| e.to_string())
        });
        match tokenized {
            Ok(t) => ready.push((i, t)),
            Err(e) => results[i] = Some(json!({"line": first_line + i + 1, "error": e})),
        }
    }
    // Similar lengths together: padding is computed and wasted otherwise.
    ready.sort_by_key(|(_, t)| t.len());
    for chunk in ready.chunks(args.batch_size) {
        let inputs: Vec<EngineInput> = chunk
            .iter()
            .map(|(_, t)| EngineInput { tokens: t, task })
            .collect();
        match loaded.engine.run(&inputs) {
            Ok(outputs) => {
                for ((i, tokens), output) in chunk.iter().zip(outputs) {
                    results[*i] = Some(render(output, tokens));
                }
            }
            Err(e) => {
                for (i, _) in chunk {
                    results[*i] = Some(json!({"line": first_line + i + 1, "error": e.to_string()}));
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every line has a result"))
        .collect()
}

fn render(output: Output, tokens: &Tokenized) -> Value {
    let mut value = match output {
        Output::Embedding(v) => json!({ "embedding": v }),
        Output::TokenEmbeddings { dim, values } => {
            json!({ "token_embeddings": values.chunks(dim).collect::<Vec<_>>() })
        }
        Output::Scores(scores) => json!({
            "labels": scores
                .iter()
                .map(|s| json!({"label": s.label, "score": s.score}))
                .collect::<Vec<_>>()
        }),
    };
    value["tokens"] = json!(tokens.len());
    value["truncated"] = json!(tokens.truncated());
    value
}
