//! `.npy`: a little-endian float32 matrix, one row per input, failed inputs as NaN rows.
//!
//! The header has a fixed size (`HEADER_BYTES`), so the row count can be rewritten in place when
//! the job finishes; until then it says 0 rows. Rows go out as they come: the corpus is never held.
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Opened, OutputError, Sink, io};
use crate::outcome::{Done, Value};

/// Magic, version 1.0, header length, and the header padded to a multiple of 64 bytes: room for
/// any row count a u64 can hold.
const HEADER_BYTES: usize = 128;
const MAGIC: &[u8] = b"\x93NUMPY\x01\x00";

pub struct Npy {
    path: PathBuf,
    out: BufWriter<File>,
    dimensions: usize,
    rows: u64,
}

fn header(rows: u64, dimensions: usize) -> Vec<u8> {
    let dict =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dimensions}), }}");
    let mut bytes = MAGIC.to_vec();
    let text_len = HEADER_BYTES - MAGIC.len() - 2;
    bytes.extend_from_slice(&(text_len as u16).to_le_bytes());
    let mut text = dict.into_bytes();
    text.resize(text_len - 1, b' ');
    text.push(b'\n');
    bytes.extend_from_slice(&text);
    bytes
}

/// The width a header declares.
fn declared_dimensions(header: &[u8]) -> Option<usize> {
    if !header.starts_with(MAGIC) {
        return None;
    }
    let text = std::str::from_utf8(&header[MAGIC.len() + 2..]).ok()?;
    let shape = text.split("'shape': (").nth(1)?;
    let (_, rest) = shape.split_once(", ")?;
    rest.split(')').next()?.trim().parse().ok()
}

impl Npy {
    pub fn open(path: &Path, dimensions: usize, resume: bool) -> Result<Opened, OutputError> {
        let invalid = |message: String| OutputError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let (mut file, rows) = if resume && path.exists() {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(io(path))?;
            let mut head = vec![0u8; HEADER_BYTES];
            file.read_exact(&mut head)
                .map_err(|_| invalid("not an .npy file written by bertctl".into()))?;
            let declared = declared_dimensions(&head)
                .ok_or_else(|| invalid("not an .npy file written by bertctl".into()))?;
            if declared != dimensions {
                return Err(invalid(format!(
                    "holds rows of {declared} dimensions; this job makes {dimensions}"
                )));
            }
            let len = file.metadata().map_err(io(path))?.len();
            let row_bytes = (dimensions * 4) as u64;
            let rows = (len - HEADER_BYTES as u64) / row_bytes;
            file.set_len(HEADER_BYTES as u64 + rows * row_bytes)
                .map_err(io(path))?;
            (file, rows)
        } else {
            let mut file = File::create(path).map_err(io(path))?;
            file.write_all(&header(0, dimensions)).map_err(io(path))?;
            (file, 0)
        };
        file.seek(SeekFrom::End(0)).map_err(io(path))?;
        Ok(Opened {
            sink: Box::new(Npy {
                path: path.to_path_buf(),
                out: BufWriter::with_capacity(1 << 20, file),
                dimensions,
                rows,
            }),
            done_rows: rows,
        })
    }
}

impl Sink for Npy {
    fn write(&mut self, done: &Done) -> Result<(), OutputError> {
        let row = match &done.result {
            Ok(Value::Embedding(v)) => v.as_slice(),
            Ok(_) => unreachable!("jobs check that .npy output holds pooled embeddings"),
            Err(_) => &[],
        };
        if !row.is_empty() && row.len() != self.dimensions {
            return Err(OutputError::Dimensions {
                id: done.id.clone(),
                expected: self.dimensions,
                actual: row.len(),
            });
        }
        let mut bytes = Vec::with_capacity(self.dimensions * 4);
        if row.is_empty() {
            for _ in 0..self.dimensions {
                bytes.extend_from_slice(&f32::NAN.to_le_bytes());
            }
        } else {
            for x in row {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
        }
        self.out.write_all(&bytes).map_err(io(&self.path))?;
        self.rows += 1;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<(), OutputError> {
        let path = self.path;
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| io(&path)(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io(&path))?;
        file.write_all(&header(self.rows, self.dimensions))
            .map_err(io(&path))?;
        file.sync_all().map_err(io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_fixed_size_and_declares_its_shape() {
        for rows in [0, 7, u64::MAX] {
            let bytes = header(rows, 384);
            assert_eq!(bytes.len(), HEADER_BYTES);
            assert_eq!(*bytes.last().unwrap(), b'\n');
            assert_eq!(declared_dimensions(&bytes), Some(384));
            let text = String::from_utf8_lossy(&bytes);
            assert!(text.contains(&format!("({rows}, 384)")), "{text}");
        }
    }
}
