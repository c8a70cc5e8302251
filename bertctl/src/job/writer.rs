//! The writer thread: puts answered items back in input order and writes them out.
use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

use super::{JobError, ToWriter, Totals};
use crate::outcome::Done;
use crate::output::Sink;
use crate::output::errors::ErrorsFile;
use crate::progress::Progress;

/// Writes items `start..` as they become next in order, until the input's end is written.
pub(super) fn write(
    mut incoming: mpsc::Receiver<ToWriter>,
    mut sink: Box<dyn Sink>,
    mut errors: ErrorsFile,
    start: u64,
    permits: &Arc<Semaphore>,
    progress: &Progress,
) -> Result<Totals, JobError> {
    let mut waiting: BTreeMap<u64, Done> = BTreeMap::new();
    let mut next = start;
    let mut end = None;
    let mut totals = Totals::default();
    while end != Some(next) {
        let Some(message) = incoming.blocking_recv() else {
            return Err(JobError::Server(
                "the job stopped before every item was answered".into(),
            ));
        };
        match message {
            ToWriter::End(count) if count < start => {
                return Err(JobError::Resume(format!(
                    "the output already has {start} rows but the input has only {count} items: \
                     is it the same input?"
                )));
            }
            ToWriter::End(count) => end = Some(count),
            ToWriter::Done(done) => {
                for done in done {
                    waiting.insert(done.index, done);
                }
            }
        }
        let mut written = 0;
        while let Some(done) = waiting.remove(&next) {
            if let Err(failure) = &done.result {
                // On disk before the row is: see `output`.
                errors.record(&done, failure)?;
                totals.failed += 1;
            }
            sink.write(&done)?;
            totals.items += 1;
            totals.tokens += u64::from(done.tokens);
            progress.advance(&done, &totals);
            next += 1;
            written += 1;
        }
        permits.add_permits(written);
    }
    sink.finish()?;
    totals.failed_in_output = errors.count();
    progress.set_errors(errors.count(), errors.path());
    Ok(totals)
}
