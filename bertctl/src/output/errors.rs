//! The errors file: one JSON line per failed input (`index`, `line`, `id`, `code`, `message`),
//! in input order, created only when something fails.
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::{OutputError, io};
use crate::outcome::{Done, Failure};

#[derive(serde::Serialize, serde::Deserialize)]
struct ErrorLine {
    index: u64,
    line: u64,
    id: String,
    code: String,
    message: String,
}

pub struct ErrorsFile {
    path: PathBuf,
    file: Option<File>,
    count: u64,
}

impl ErrorsFile {
    /// Opens the errors file for a job whose output already has `done_rows` rows: a fresh job
    /// removes an old errors file; a resumed one keeps the lines of those rows and drops the rest.
    pub fn open(path: &Path, done_rows: u64) -> Result<ErrorsFile, OutputError> {
        let mut errors = ErrorsFile {
            path: path.to_path_buf(),
            file: None,
            count: 0,
        };
        if !path.exists() {
            return Ok(errors);
        }
        if done_rows == 0 {
            std::fs::remove_file(path).map_err(io(path))?;
            return Ok(errors);
        }
        let mut kept = Vec::new();
        for line in BufReader::new(File::open(path).map_err(io(path))?).lines() {
            let line = line.map_err(io(path))?;
            // A line cut short by a crash belongs to a row past the resume point.
            let Ok(error) = serde_json::from_str::<ErrorLine>(&line) else {
                break;
            };
            if error.index >= done_rows {
                break;
            }
            kept.push(line);
        }
        let mut file = File::create(path).map_err(io(path))?;
        for line in &kept {
            writeln!(file, "{line}").map_err(io(path))?;
        }
        file.flush().map_err(io(path))?;
        errors.count = kept.len() as u64;
        errors.file = Some(file);
        Ok(errors)
    }

    /// Records a failed input, on disk before this returns.
    pub fn record(&mut self, done: &Done, failure: &Failure) -> Result<(), OutputError> {
        let path = &self.path;
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(io(path))?;
            self.file = Some(file);
        }
        let line = serde_json::to_string(&ErrorLine {
            index: done.index,
            line: done.line,
            id: done.id.clone(),
            code: failure.code_name(),
            message: failure.message.clone(),
        })
        .expect("an error line serializes");
        let file = self.file.as_mut().expect("opened above");
        // One write per line: a crash leaves whole lines and at most one cut line at the end.
        file.write_all(format!("{line}\n").as_bytes())
            .map_err(io(path))?;
        file.flush().map_err(io(path))?;
        self.count += 1;
        Ok(())
    }

    /// Failed inputs recorded, including those kept from before a resume.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
