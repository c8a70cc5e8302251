use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "bertd",
    version,
    about = "Serves BERT-family encoders: embeddings and classification"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the model over gRPC (Encoder, Classifier, Tokenizer, Model, health, reflection).
    Serve(cli::ServeArgs),
    /// Prints the effective configuration (defaults < file < BERTD_* environment < flags), secrets redacted.
    Config(cli::ServeArgs),
    /// Embeds one text per stdin line (or JSON lines with --jsonl); one JSON line out per input.
    Encode(cli::EncodeArgs),
    /// Classifies one text per stdin line (or JSON lines with --jsonl); one JSON line out per input.
    Classify(cli::ClassifyArgs),
    /// Drives a running server with a corpus and reports inputs/s, tokens/s, latency percentiles,
    /// the server's padding ratio and peak memory (see bench/compare.sh).
    Bench(cli::BenchArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Serve(a) => cli::serve(a),
        Command::Config(a) => cli::print_config(a),
        Command::Encode(a) => cli::encode(a),
        Command::Classify(a) => cli::classify(a),
        Command::Bench(a) => cli::bench(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bertd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
