//! Reading a corpus: text lines, JSON lines or CSV/TSV, from a file or stdin, one `Item` at a time.
//!
//! Policy:
//! - Every item gets an index (its position among the items, from 0), the line it starts on (from
//!   1) and an id: the input's own (`--id-field`) or else that line number.
//! - An unreadable record is an error naming the file, the line and what is wrong; nothing is
//!   skipped silently. Blank lines are skipped in JSON lines (they hold no record) but are items
//!   in text input (an empty text is a valid input).
//! - Each item knows the byte offset where it ends, so progress and ETA follow the input's size.
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use clap::ValueEnum;
use serde_json::Value;

/// One input to encode or classify.
#[derive(Debug, Clone)]
pub struct Item {
    pub index: u64,
    pub line: u64,
    pub id: String,
    pub text: String,
    pub text_pair: Option<String>,
    /// Byte offset in the input just past this item.
    pub end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// One text per line.
    Text,
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated, with a header row.
    Csv,
    /// Tab-separated, with a header row.
    Tsv,
}

impl InputFormat {
    /// From the file's extension; stdin and unknown extensions are text.
    pub fn detect(path: &Path) -> InputFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "ndjson" | "json") => InputFormat::Jsonl,
            Some("csv") => InputFormat::Csv,
            Some("tsv" | "tab") => InputFormat::Tsv,
            _ => InputFormat::Text,
        }
    }
}

/// Where the fields are in JSON lines and CSV/TSV records.
#[derive(Debug, Clone)]
pub struct Fields {
    pub text: String,
    pub text_pair: Option<String>,
    pub id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("{path}:{line}: {message}")]
    Record {
        path: String,
        line: u64,
        message: String,
    },
}

/// A source of items, in order.
pub struct Reader {
    name: String,
    format: InputFormat,
    fields: Fields,
    lines: Option<BufReader<Box<dyn Read + Send>>>,
    csv: Option<CsvColumns>,
    line: u64,
    offset: u64,
    next_index: u64,
    buf: String,
}

struct CsvColumns {
    reader: csv::Reader<Box<dyn Read + Send>>,
    text: usize,
    text_pair: Option<usize>,
    id: Option<usize>,
    record: csv::StringRecord,
}

impl Reader {
    /// Opens `path` (`-` is stdin) and, for CSV/TSV, reads its header.
    pub fn open(path: &Path, format: InputFormat, fields: Fields) -> Result<Reader, InputError> {
        let name = path.display().to_string();
        let source: Box<dyn Read + Send> = if is_stdin(path) {
            Box::new(io::stdin())
        } else {
            Box::new(File::open(path).map_err(|source| InputError::Open {
                path: name.clone(),
                source,
            })?)
        };
        let mut reader = Reader {
            name,
            format,
            fields,
            lines: None,
            csv: None,
            line: 0,
            offset: 0,
            next_index: 0,
            buf: String::new(),
        };
        match format {
            InputFormat::Text | InputFormat::Jsonl => {
                reader.lines = Some(BufReader::with_capacity(1 << 16, source))
            }
            InputFormat::Csv | InputFormat::Tsv => reader.csv = Some(reader.csv_columns(source)?),
        }
        Ok(reader)
    }

    /// The input's size in bytes, when it is a regular file.
    pub fn size(path: &Path) -> Option<u64> {
        (!is_stdin(path))
            .then(|| std::fs::metadata(path).ok())
            .flatten()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    fn error(&self, line: u64, message: impl Into<String>) -> InputError {
        InputError::Record {
            path: self.name.clone(),
            line,
            message: message.into(),
        }
    }

    fn csv_columns(&self, source: Box<dyn Read + Send>) -> Result<CsvColumns, InputError> {
        let delimiter = if self.format == InputFormat::Tsv {
            b'\t'
        } else {
            b','
        };
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(true)
            .from_reader(source);
        let headers = reader
            .headers()
            .map_err(|e| self.error(1, format!("cannot read the header row: {e}")))?
            .clone();
        let column = |name: &str| headers.iter().position(|h| h == name);
        let columns: Vec<&str> = headers.iter().collect();
        let require = |name: &str| {
            column(name).ok_or_else(|| {
                self.error(
                    1,
                    format!("no column `{name}` in the header (columns: {columns:?})"),
                )
            })
        };
        Ok(CsvColumns {
            text: require(&self.fields.text)?,
            text_pair: self.fields.text_pair.as_deref().map(require).transpose()?,
            id: self.fields.id.as_deref().map(require).transpose()?,
            record: csv::StringRecord::new(),
            reader,
        })
    }

    /// The next item, `None` at the end of the input.
    pub fn next_item(&mut self) -> Result<Option<Item>, InputError> {
        let item = match self.format {
            InputFormat::Text | InputFormat::Jsonl => self.next_line_item()?,
            InputFormat::Csv | InputFormat::Tsv => self.next_csv_item()?,
        };
        if item.is_some() {
            self.next_index += 1;
        }
        Ok(item)
    }

    fn next_line_item(&mut self) -> Result<Option<Item>, InputError> {
        loop {
            self.buf.clear();
            let lines = self.lines.as_mut().expect("a line reader for line formats");
            let read = lines.read_line(&mut self.buf);
            self.line += 1;
            let read = read.map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData => self.error(self.line, "not valid UTF-8"),
                _ => self.error(self.line, e.to_string()),
            })?;
            if read == 0 {
                return Ok(None);
            }
            self.offset += read as u64;
            let text = self.buf.trim_end_matches(['\n', '\r']);
            match self.format {
                InputFormat::Text => {
                    return Ok(Some(Item {
                        index: self.next_index,
                        line: self.line,
                        id: self.line.to_string(),
                        text: text.to_string(),
                        text_pair: None,
                        end: self.offset,
                    }));
                }
                _ if text.trim().is_empty() => continue,
                _ => {
                    let record: Value = serde_json::from_str(text)
                        .map_err(|e| self.error(self.line, format!("not a JSON value: {e}")))?;
                    return self.json_item(&record).map(Some);
                }
            }
        }
    }

    fn json_item(&self, record: &Value) -> Result<Item, InputError> {
        let Value::Object(fields) = record else {
            return Err(self.error(self.line, "not a JSON object"));
        };
        let string = |name: &str| -> Result<Option<String>, InputError> {
            match fields.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(self.error(
                    self.line,
                    format!("field `{name}` is not a string: {other}"),
                )),
            }
        };
        let text = string(&self.fields.text)?.ok_or_else(|| {
            self.error(self.line, format!("no string field `{}`", self.fields.text))
        })?;
        let text_pair = match &self.fields.text_pair {
            Some(name) => string(name)?,
            None => None,
        };
        let id = match &self.fields.id {
            Some(name) => match fields.get(name) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => {
                    return Err(self.error(
                        self.line,
                        format!("no string or number field `{name}` for the id"),
                    ));
                }
            },
            None => self.line.to_string(),
        };
        Ok(Item {
            index: self.next_index,
            line: self.line,
            id,
            text,
            text_pair,
            end: self.offset,
        })
    }

    fn next_csv_item(&mut self) -> Result<Option<Item>, InputError> {
        let columns = self.csv.as_mut().expect("a CSV reader for CSV formats");
        let read = columns.reader.read_record(&mut columns.record);
        let position = columns.reader.position().clone();
        let line = columns
            .record
            .position()
            .map_or(position.line(), |p| p.line());
        match read {
            Ok(false) => return Ok(None),
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(line, |p| p.line());
                return Err(self.error(line, format!("not a valid record: {e}")));
            }
        }
        let record = &columns.record;
        let field = |i: usize| record.get(i).map(str::to_string);
        let text = field(columns.text);
        let text_pair = columns.text_pair.and_then(field);
        let id = columns.id.and_then(field);
        let Some(text) = text else {
            return Err(self.error(line, format!("no `{}` value", self.fields.text)));
        };
        Ok(Some(Item {
            index: self.next_index,
            line,
            id: id.unwrap_or_else(|| line.to_string()),
            text,
            text_pair,
            end: position.byte(),
        }))
    }
}

/// Whether `path` names stdin.
pub fn is_stdin(path: &Path) -> bool {
    path == Path::new("-")
}
