//! `bertctl`: the bertd client. Bulk `encode` / `classify` jobs stream a corpus of any size through
//! one or many servers (in order, retried, resumable); `tokenize`, `info` and `health` make one
//! call each. It links no libtorch: a client machine needs no PyTorch.
//!
//! The binary is `main.rs` calling [`run`]; the library exists so that tests can hand a job a
//! [`connect::Resolve`] of their own (a name whose addresses change mid-job cannot be made any
//! other way on a machine whose servers may bind only 127.0.0.1).
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bertd_proto::bert::v1 as pb;
use clap::{Args, Parser, Subcommand, ValueEnum};

pub mod connect;
mod input;
mod job;
mod outcome;
mod output;
mod progress;
mod unary;

use connect::{Connector, Resolve, ServerArgs, Target};
use input::{Fields, InputFormat, Reader};
use job::call::Call;
use job::retry::Backoff;
use job::{Job, JobError, Settings};
use output::errors::ErrorsFile;
use output::{OutputFormat, OutputSpec};
use progress::Progress;

/// Exit status of a job where every input succeeded, or of a health check that found all serving.
pub const EXIT_OK: u8 = 0;
/// Exit status of a health check that found an address not serving.
pub const EXIT_UNHEALTHY: u8 = 1;
/// Exit status when the job could not run or finish (bad input, no server, a refused key).
pub const EXIT_FATAL: u8 = 101;
/// Exit status for a command line that does not parse.
pub const EXIT_USAGE: u8 = 102;
/// Failed items are counted in the exit status up to this many.
const EXIT_MAX_FAILED: u64 = 100;

#[derive(Parser)]
#[command(
    name = "bertctl",
    version,
    about = "The bertd client: bulk encode/classify jobs, and single calls",
    after_help = "Exit status: 0 when everything succeeded; 1-100 the number of items that failed \
                  (100: that many or more; each is in the errors file); 101 when the job could not \
                  run or finish; 102 for a bad command line.\n\
                  API keys: --api-key-file FILE, or the BERTD_API_KEY variable."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embeddings for every input of a corpus, in input order.
    Encode {
        #[command(flatten)]
        job: BulkArgs,
        #[command(flatten)]
        options: EncodeArgs,
    },
    /// Labels with scores for every input of a corpus, in input order (JSON lines out).
    Classify {
        #[command(flatten)]
        job: BulkArgs,
        #[command(flatten)]
        options: ClassifyArgs,
    },
    /// Tokens of each TEXT, as the server's tokenizer cuts them (JSON lines).
    Tokenize {
        #[command(flatten)]
        server: ServerArgs,
        /// Cut to the model's maximum length, as encoding does.
        #[arg(long, value_name = "BOOL")]
        truncate: Option<bool>,
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// The served model, its defaults, the server's limits and counters (JSON).
    Info {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Health of every address of every --server; exit 0 only when all are SERVING.
    Health {
        #[command(flatten)]
        server: ServerArgs,
        /// A service's health instead of the server's (for example bert.v1.Encoder).
        #[arg(long, default_value = "")]
        service: String,
    },
}

/// What every bulk job (encode, classify) takes besides its call's options.
#[derive(Debug, Clone, Args)]
struct BulkArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    io: JobIo,
    #[command(flatten)]
    streams: StreamArgs,
}

#[derive(Debug, Clone, Args)]
struct JobIo {
    /// Text lines, JSON lines (.jsonl) or CSV/TSV (.csv/.tsv, with a header); `-` for stdin.
    #[arg(long, short, value_name = "FILE")]
    input: PathBuf,
    /// The input's format, when its extension does not say (stdin is text).
    #[arg(long, value_name = "FORMAT")]
    input_format: Option<InputFormat>,
    /// The field (JSON lines) or column (CSV/TSV) holding the text.
    #[arg(long, default_value = "text", value_name = "NAME")]
    text_field: String,
    /// The field or column holding the second text of a pair, if any.
    #[arg(long, value_name = "NAME")]
    pair_field: Option<String>,
    /// The field or column holding each input's id (default: its line number).
    #[arg(long, value_name = "NAME")]
    id_field: Option<String>,
    /// .jsonl, .npy or .parquet; `-` for JSON lines on stdout.
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
    /// The output's format, when its extension does not say.
    #[arg(long, value_name = "FORMAT")]
    format: Option<OutputFormat>,
    /// Where failed inputs are listed (default: OUTPUT.errors.jsonl).
    #[arg(long, value_name = "FILE")]
    errors: Option<PathBuf>,
    /// Continue a partly written output, skipping the inputs it already has.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Replace an existing output.
    #[arg(long)]
    overwrite: bool,
    /// No progress bar, even on a terminal.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, Clone, Args)]
struct StreamArgs {
    /// Concurrent streams per server address.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    streams: u32,
    /// Inputs per request message.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: u32,
    /// Requests in flight per stream. The server sorts what it holds by length before batching,
    /// so a deeper window pads less (measured in BENCHMARKS.md).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    window: u32,
    /// Inputs read but not yet written, at most (bounds memory, whatever the input's size).
    /// Default: twice what every stream carries at once (addresses x streams x window x batch),
    /// and at least 8192; raised when DNS adds addresses mid-job (the most seen at once count).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_pending: Option<u32>,
    /// Tries after the first for a request that fails for a passing reason.
    #[arg(long, default_value_t = 8)]
    retries: u32,
    /// Seconds before the first retry (doubling per try, with jitter).
    #[arg(long, default_value_t = 0.1, value_name = "SECS")]
    retry_delay: f64,
    /// Seconds between retries, at most.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    max_retry_delay: f64,
    /// Seconds between DNS resolutions of the servers' host names.
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    resolve_every: f64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Pooling {
    Cls,
    Mean,
    Max,
    /// One vector per token (JSON lines only).
    Tokens,
}

#[derive(Debug, Clone, Args)]
struct EncodeArgs {
    /// Pooling (default: the model's).
    #[arg(long)]
    pooling: Option<Pooling>,
    /// L2-normalize (default: the model's).
    #[arg(long, value_name = "BOOL")]
    normalize: Option<bool>,
    /// Cut inputs longer than the model's maximum (default true; false fails them instead).
    #[arg(long, value_name = "BOOL")]
    truncate: Option<bool>,
    /// The hidden state to pool: 0 the embeddings, -1 the last layer.
    #[arg(long, allow_hyphen_values = true)]
    layer: Option<i32>,
    /// Keep only the leading dimensions.
    #[arg(long)]
    dimensions: Option<u32>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Activation {
    Auto,
    Softmax,
    Sigmoid,
    None,
}

#[derive(Debug, Clone, Args)]
struct ClassifyArgs {
    /// Cut inputs longer than the model's maximum (default true).
    #[arg(long, value_name = "BOOL")]
    truncate: Option<bool>,
    /// Labels per input, best first (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    #[arg(long, default_value = "auto")]
    activation: Activation,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Connect(#[from] connect::ConnectError),
    #[error(transparent)]
    Input(#[from] input::InputError),
    #[error(transparent)]
    Output(#[from] output::OutputError),
    #[error("{0}")]
    Call(String),
}

/// Runs the command line `args` (program name first), resolving host names with `resolver`;
/// returns the exit status.
pub fn run<I, T>(args: I, resolver: Arc<dyn Resolve>) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bertctl: cannot start: {e}");
            return EXIT_FATAL;
        }
    };
    let outcome = runtime.block_on(command(cli.command, resolver));
    // A job that stopped early may leave its reader thread blocked on a full queue: do not wait.
    runtime.shutdown_background();
    match outcome {
        Ok(code) => code,
        Err(CliError::Usage(message)) => {
            eprintln!("bertctl: {message}");
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("bertctl: {e}");
            EXIT_FATAL
        }
    }
}

async fn command(command: Command, resolver: Arc<dyn Resolve>) -> Result<u8, CliError> {
    match command {
        Command::Encode { job, options } => {
            let call = Call::Encode(pb::EncodeOptions {
                pooling: options.pooling.map_or(pb::Pooling::Default, |p| match p {
                    Pooling::Cls => pb::Pooling::Cls,
                    Pooling::Mean => pb::Pooling::Mean,
                    Pooling::Max => pb::Pooling::Max,
                    Pooling::Tokens => pb::Pooling::Tokens,
                }) as i32,
                normalize: options.normalize,
                truncate: options.truncate,
                layer: options.layer,
                dimensions: options.dimensions,
            });
            bulk("encoded", call, &job, resolver).await
        }
        Command::Classify { job, options } => {
            let call = Call::Classify(pb::ClassifyOptions {
                truncate: options.truncate,
                top_k: options.top_k,
                activation: match options.activation {
                    Activation::Auto => pb::Activation::Auto,
                    Activation::Softmax => pb::Activation::Softmax,
                    Activation::Sigmoid => pb::Activation::Sigmoid,
                    Activation::None => pb::Activation::None,
                } as i32,
            });
            bulk("classified", call, &job, resolver).await
        }
        Command::Tokenize {
            server,
            truncate,
            texts,
        } => {
            unary::tokenize(
                &Connector::new(&server, resolver)?,
                &server,
                truncate,
                texts,
            )
            .await
        }
        Command::Info { server } => unary::info(&Connector::new(&server, resolver)?, &server).await,
        Command::Health { server, service } => {
            unary::health(&Connector::new(&server, resolver)?, &server, service).await
        }
    }
}

fn seconds(flag: &str, value: f64) -> Result<Duration, CliError> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| CliError::Usage(format!("{flag} {value}: not a positive number of seconds")))
}

async fn bulk(
    verb: &'static str,
    call: Call,
    job: &BulkArgs,
    resolver: Arc<dyn Resolve>,
) -> Result<u8, CliError> {
    let BulkArgs {
        server,
        io,
        streams,
    } = job;
    let format = io
        .format
        .unwrap_or_else(|| OutputFormat::detect(&io.output));
    let vectors_only = match &call {
        Call::Encode(options) => options.pooling != pb::Pooling::Tokens as i32,
        Call::Classify(_) => false,
    };
    if format != OutputFormat::Jsonl && !vectors_only {
        return Err(CliError::Usage(format!(
            "{} output holds one vector per input; {} writes JSON lines (-o FILE.jsonl)",
            format
                .to_possible_value()
                .expect("no skipped variants")
                .get_name(),
            match call {
                Call::Encode(_) => "--pooling tokens",
                Call::Classify(_) => "classify",
            }
        )));
    }
    let targets = server
        .servers
        .iter()
        .map(|url| Target::parse(url))
        .collect::<Result<Vec<_>, _>>()?;
    let connector = Connector::new(server, resolver)?;
    let settings = Settings {
        streams: streams.streams as usize,
        batch: streams.batch as usize,
        window: streams.window as usize,
        max_pending: streams.max_pending.map(|n| n as usize),
        retries: streams.retries,
        backoff: Backoff {
            base: seconds("--retry-delay", streams.retry_delay)?,
            max: seconds("--max-retry-delay", streams.max_retry_delay)?,
        },
        resolve_every: seconds("--resolve-every", streams.resolve_every)?,
    };
    let dimensions = if format == OutputFormat::Jsonl {
        0
    } else {
        unary::dimensions(&connector, server, &call).await?
    };
    let opened = output::open(&OutputSpec {
        path: io.output.clone(),
        format,
        dimensions,
        resume: io.resume,
        overwrite: io.overwrite,
    })?;
    let errors_path = io.errors.clone().unwrap_or_else(|| {
        if io.output.as_os_str() == "-" {
            PathBuf::from("bertctl-errors.jsonl")
        } else {
            let mut name = io.output.as_os_str().to_owned();
            name.push(".errors.jsonl");
            PathBuf::from(name)
        }
    });
    let errors = ErrorsFile::open(&errors_path, opened.done_rows)?;
    let input_format = io.input_format.unwrap_or_else(|| {
        if input::is_stdin(&io.input) {
            InputFormat::Text
        } else {
            InputFormat::detect(&io.input)
        }
    });
    let reader = Reader::open(
        &io.input,
        input_format,
        Fields {
            text: io.text_field.clone(),
            text_pair: io.pair_field.clone(),
            id: io.id_field.clone(),
        },
    )?;
    let progress = Progress::new(
        verb,
        Reader::size(&io.input),
        opened.done_rows,
        !io.no_progress,
    );
    let totals = job::run(Job {
        call,
        connector,
        targets,
        settings,
        reader,
        sink: opened.sink,
        errors,
        done_rows: opened.done_rows,
        progress,
    })
    .await?;
    Ok(totals.failed_in_output.min(EXIT_MAX_FAILED) as u8)
}
