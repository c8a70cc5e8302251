//! Parquet: `id` (string) and `embedding` (fixed-size list of float32, null for a failed input).
//!
//! A Parquet file is only readable once its footer is written, so a job cannot append to one it
//! was killed in. Rows therefore go to numbered part files in `OUTPUT.parts/`, each a complete
//! Parquet file of `PART_ROWS` rows (written under a temporary name, then renamed: a part that
//! exists is whole). Its name says how many rows it holds, which is the resume point. When every
//! row is written the parts are copied, one row group each, into OUTPUT and removed, so a resumed
//! job and an uninterrupted one write the same bytes.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, StringBuilder};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::{Opened, OutputError, Sink, io};
use crate::outcome::{Done, Value};

/// Rows per part file and per row group of the output (6 MiB of 384-wide vectors).
const PART_ROWS: usize = 4096;

pub fn parts_dir(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".parts");
    PathBuf::from(name)
}

fn part_name(number: usize, rows: usize) -> String {
    format!("part-{number:06}-{rows}.parquet")
}

/// (number, rows) of a part file's name.
fn parse_part_name(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let (number, rows) = rest.split_once('-')?;
    Some((number.parse().ok()?, rows.parse().ok()?))
}

pub struct Parquet {
    path: PathBuf,
    parts: PathBuf,
    schema: SchemaRef,
    dimensions: usize,
    ids: StringBuilder,
    vectors: FixedSizeListBuilder<Float32Builder>,
    pending: usize,
    next_part: usize,
}

fn parquet_error(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> OutputError + '_ {
    move |source| OutputError::Parquet {
        path: path.to_path_buf(),
        source,
    }
}

fn properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_max_row_group_size(PART_ROWS)
        .build()
}

impl Parquet {
    pub fn open(path: &Path, dimensions: usize, resume: bool) -> Result<Opened, OutputError> {
        let parts = parts_dir(path);
        let mut done_rows = 0u64;
        let mut next_part = 0;
        if resume && parts.exists() {
            for entry in std::fs::read_dir(&parts).map_err(io(&parts))? {
                let entry = entry.map_err(io(&parts))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                match parse_part_name(&name) {
                    Some((number, rows)) => {
                        done_rows += rows as u64;
                        next_part = next_part.max(number + 1);
                    }
                    // A part being written when the job stopped.
                    None => std::fs::remove_file(entry.path()).map_err(io(&parts))?,
                }
            }
        } else if resume && path.exists() {
            return Err(OutputError::Invalid {
                path: path.to_path_buf(),
                message: "is complete: there is nothing to resume".into(),
            });
        } else {
            if parts.exists() {
                std::fs::remove_dir_all(&parts).map_err(io(&parts))?;
            }
            std::fs::create_dir_all(&parts).map_err(io(&parts))?;
        }
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new(
                "embedding",
                DataType::FixedSizeList(item.clone(), dimensions as i32),
                true,
            ),
        ]));
        Ok(Opened {
            sink: Box::new(Parquet {
                path: path.to_path_buf(),
                parts,
                schema,
                dimensions,
                ids: StringBuilder::new(),
                vectors: FixedSizeListBuilder::new(Float32Builder::new(), dimensions as i32)
                    .with_field(item),
                pending: 0,
                next_part,
            }),
            done_rows,
        })
    }

    fn write_part(&mut self) -> Result<(), OutputError> {
        if self.pending == 0 {
            return Ok(());
        }
        let batch = RecordBatch::try_new(
            self.schema.clone(),
            vec![Arc::new(self.ids.finish()), Arc::new(self.vectors.finish())],
        )
        .map_err(|e| parquet_error(&self.path)(e.into()))?;
        let name = part_name(self.next_part, self.pending);
        let temporary = self.parts.join(format!("{name}.tmp"));
        let file = File::create(&temporary).map_err(io(&temporary))?;
        let mut writer = ArrowWriter::try_new(file, self.schema.clone(), Some(properties()))
            .map_err(parquet_error(&temporary))?;
        writer.write(&batch).map_err(parquet_error(&temporary))?;
        writer
            .into_inner()
            .map_err(parquet_error(&temporary))?
            .sync_all()
            .map_err(io(&temporary))?;
        std::fs::rename(&temporary, self.parts.join(&name)).map_err(io(&temporary))?;
        self.pending = 0;
        self.next_part += 1;
        Ok(())
    }
}

impl Sink for Parquet {
    fn write(&mut self, done: &Done) -> Result<(), OutputError> {
        match &done.result {
            Ok(Value::Embedding(v)) => {
                if v.len() != self.dimensions {
                    return Err(OutputError::Dimensions {
                        id: done.id.clone(),
                        expected: self.dimensions,
                        actual: v.len(),
                    });
                }
                self.vectors.values().append_slice(v);
                self.vectors.append(true);
            }
            Ok(_) => unreachable!("jobs check that Parquet output holds pooled embeddings"),
            Err(_) => {
                // A null list still takes its width in the child array.
                self.vectors
                    .values()
                    .append_slice(&vec![0.0; self.dimensions]);
                self.vectors.append(false);
            }
        }
        self.ids.append_value(&done.id);
        self.pending += 1;
        if self.pending == PART_ROWS {
            self.write_part()?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), OutputError> {
        self.write_part()?;
        let mut parts: Vec<(usize, PathBuf)> = std::fs::read_dir(&self.parts)
            .map_err(io(&self.parts))?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let name = entry.file_name().to_string_lossy().into_owned();
                parse_part_name(&name).map(|(number, _)| (number, entry.path()))
            })
            .collect();
        parts.sort();
        let mut temporary = self.path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let file = File::create(&temporary).map_err(io(&temporary))?;
        let mut writer = ArrowWriter::try_new(file, self.schema.clone(), Some(properties()))
            .map_err(parquet_error(&temporary))?;
        for (_, part) in &parts {
            let file = File::open(part).map_err(io(part))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(parquet_error(part))?
                .with_batch_size(PART_ROWS)
                .build()
                .map_err(parquet_error(part))?;
            for batch in reader {
                let batch = batch.map_err(|e| parquet_error(part)(e.into()))?;
                writer.write(&batch).map_err(parquet_error(&temporary))?;
            }
            // One row group per part, whatever the reader's batches.
            writer.flush().map_err(parquet_error(&temporary))?;
        }
        writer
            .into_inner()
            .map_err(parquet_error(&temporary))?
            .sync_all()
            .map_err(io(&temporary))?;
        std::fs::rename(&temporary, &self.path).map_err(io(&temporary))?;
        std::fs::remove_dir_all(&self.parts).map_err(io(&self.parts))
    }
}
