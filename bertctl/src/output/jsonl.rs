//! JSON lines: `{"id": ..., "embedding": [...]}` (or `token_embeddings`, `labels`, `error`).
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Opened, OutputError, Sink, io};
use crate::outcome::{Done, Label, Value};

pub struct JsonLines {
    path: PathBuf,
    out: BufWriter<Box<dyn Write + Send>>,
}

#[derive(serde::Serialize)]
struct Row<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding: Option<&'a [f32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_embeddings: Option<&'a [Vec<f32>]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<&'a [Label]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<RowError>,
}

#[derive(serde::Serialize)]
struct RowError {
    code: String,
    message: String,
}

impl JsonLines {
    pub fn stdout() -> JsonLines {
        JsonLines {
            path: PathBuf::from("-"),
            out: BufWriter::with_capacity(1 << 16, Box::new(std::io::stdout())),
        }
    }

    /// Creates `path`, or when resuming, keeps its whole lines and appends after them.
    pub fn open(path: &Path, resume: bool) -> Result<Opened, OutputError> {
        let (file, done_rows) = if resume && path.exists() {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(io(path))?;
            let (rows, whole) = whole_lines(&mut file).map_err(io(path))?;
            file.set_len(whole).map_err(io(path))?;
            file.seek(SeekFrom::End(0)).map_err(io(path))?;
            (file, rows)
        } else {
            (File::create(path).map_err(io(path))?, 0)
        };
        Ok(Opened {
            sink: Box::new(JsonLines {
                path: path.to_path_buf(),
                out: BufWriter::with_capacity(1 << 16, Box::new(file)),
            }),
            done_rows,
        })
    }
}

/// The number of newline-terminated lines and the length they span.
fn whole_lines(file: &mut File) -> std::io::Result<(u64, u64)> {
    let mut buf = vec![0u8; 1 << 16];
    let (mut lines, mut whole, mut offset) = (0u64, 0u64, 0u64);
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((lines, whole));
        }
        for (i, byte) in buf[..n].iter().enumerate() {
            if *byte == b'\n' {
                lines += 1;
                whole = offset + i as u64 + 1;
            }
        }
        offset += n as u64;
    }
}

impl Sink for JsonLines {
    fn write(&mut self, done: &Done) -> Result<(), OutputError> {
        let mut row = Row {
            id: &done.id,
            embedding: None,
            token_embeddings: None,
            labels: None,
            error: None,
        };
        match &done.result {
            Ok(Value::Embedding(v)) => row.embedding = Some(v),
            Ok(Value::Tokens(t)) => row.token_embeddings = Some(t),
            Ok(Value::Labels(l)) => row.labels = Some(l),
            Err(failure) => {
                row.error = Some(RowError {
                    code: failure.code_name(),
                    message: failure.message.clone(),
                })
            }
        }
        let path = &self.path;
        serde_json::to_writer(&mut self.out, &row)
            .map_err(|e| io(path)(std::io::Error::other(e)))?;
        self.out.write_all(b"\n").map_err(io(path))
    }

    fn finish(mut self: Box<Self>) -> Result<(), OutputError> {
        self.out.flush().map_err(io(&self.path))
    }
}
