//! Writing results, strictly in input order, to JSON lines, `.npy` or Parquet, resumably.
//!
//! Invariants every format keeps, which `--resume` relies on:
//! - Row `i` of the output is input item `i`: a failed item still has its row (an `error` object
//!   in JSON lines, a NaN row in `.npy`, a null vector in Parquet) and a line in the errors file.
//! - What is on disk is always a prefix of the finished output, give or take one partly written
//!   row, which resuming cuts off. So the resume point is simply the number of whole rows, and a
//!   resumed run writes exactly the bytes an uninterrupted one would.
//! - An item's error line is flushed before its row is written, so the errors file on disk never
//!   lacks an error for a row that is there; resuming drops the error lines past the resume point.
use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::outcome::Done;

pub mod errors;
mod jsonl;
mod npy;
mod parquet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One JSON object per line: `id` and the vector (or labels, or `error`).
    Jsonl,
    /// A float32 matrix, one row per input (NumPy's `.npy`).
    Npy,
    /// `id` and a fixed-size list of float32 per input.
    Parquet,
}

impl OutputFormat {
    /// From the file's extension (stdout and unknown extensions are JSON lines).
    pub fn detect(path: &Path) -> OutputFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some("npy") => OutputFormat::Npy,
            Some("parquet" | "pq") => OutputFormat::Parquet,
            _ => OutputFormat::Jsonl,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parquet {
        path: PathBuf,
        source: ::parquet::errors::ParquetError,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path} already exists: pass --resume to continue it or --overwrite to start it again")]
    Exists { path: PathBuf },
    #[error(
        "the server returned a vector of {actual} dimensions for input {id}, but the output holds {expected}"
    )]
    Dimensions {
        id: String,
        expected: usize,
        actual: usize,
    },
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a job's output is opened.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub path: PathBuf,
    pub format: OutputFormat,
    /// Vector width, for the formats that fix it up front (`.npy`, Parquet).
    pub dimensions: usize,
    pub resume: bool,
    pub overwrite: bool,
}

/// A place that takes results in input order.
pub trait Sink: Send {
    /// Writes the next row. Rows arrive strictly in input order.
    fn write(&mut self, done: &Done) -> Result<(), OutputError>;
    /// Completes the output (headers, footers) once every row is written.
    fn finish(self: Box<Self>) -> Result<(), OutputError>;
}

/// An opened output and the number of rows already there (0 unless resuming).
pub struct Opened {
    pub sink: Box<dyn Sink>,
    pub done_rows: u64,
}

pub fn open(spec: &OutputSpec) -> Result<Opened, OutputError> {
    let stdout = spec.path == Path::new("-");
    if stdout {
        if spec.resume {
            return Err(OutputError::Invalid {
                path: spec.path.clone(),
                message: "--resume needs an output file, not stdout".into(),
            });
        }
        return Ok(Opened {
            sink: Box::new(jsonl::JsonLines::stdout()),
            done_rows: 0,
        });
    }
    if !spec.resume && !spec.overwrite && exists(spec) {
        return Err(OutputError::Exists {
            path: spec.path.clone(),
        });
    }
    match spec.format {
        OutputFormat::Jsonl => jsonl::JsonLines::open(&spec.path, spec.resume),
        OutputFormat::Npy => npy::Npy::open(&spec.path, spec.dimensions, spec.resume),
        OutputFormat::Parquet => parquet::Parquet::open(&spec.path, spec.dimensions, spec.resume),
    }
}

fn exists(spec: &OutputSpec) -> bool {
    spec.path.exists() || parquet::parts_dir(&spec.path).exists()
}
