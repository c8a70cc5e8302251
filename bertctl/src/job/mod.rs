//! A bulk job: items read from the input go out in chunks over many streams to many servers,
//! come back in any order, and are written strictly in input order.
//!
//! ```text
//! reader thread ──chunks──▶ fresh ─┐
//!                                  ├─▶ slots (streams × addresses) ──Done──▶ writer thread
//!           retry (after backoff) ─┘        ▲ failed chunks                  (reorders, writes,
//!                                           └─ backends: DNS, re-resolved     returns permits)
//! ```
//!
//! Invariants:
//! - Memory is bounded by the pending limit (`Settings::pending_limit`) in items: the reader
//!   takes a permit per item and the writer gives it back once the item is written, so a slow
//!   chunk stalls reading, never grows a buffer. The default limit follows the most addresses
//!   DNS has given (`Room`), so that pods added mid-job get full windows too.
//! - Every item is answered exactly once: a chunk is owned by one slot at a time; when its stream
//!   fails, the chunk goes back (with backoff, counting attempts) and another slot takes it.
//! - A chunk the server refuses is split until the refusal names a single item, so one bad input
//!   never fails its neighbours.
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use crate::connect::{Connector, Target};
use crate::input::{InputError, Item, Reader};
use crate::outcome::{Done, Failure};
use crate::output::errors::ErrorsFile;
use crate::output::{OutputError, Sink};
use crate::progress::Progress;

mod backends;
pub mod call;
pub mod retry;
mod slot;
mod writer;

use call::{Call, Reply};
use retry::Backoff;

/// How a job spreads its work.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Concurrent streams per server address.
    pub streams: usize,
    /// Inputs per request message.
    pub batch: usize,
    /// Requests in flight per stream.
    pub window: usize,
    /// Items read but not yet written, at most; `None` for `pending_limit`'s default.
    pub max_pending: Option<usize>,
    /// Tries after the first, per chunk, for transient failures.
    pub retries: u32,
    pub backoff: Backoff,
    /// How often server host names are resolved again.
    pub resolve_every: Duration,
}

/// The permits for items read but not yet written. With the default limit, DNS adding addresses
/// mid-job raises it, so that their streams are fed as fully as the first ones (a job started
/// on two pods that an autoscaler grows to ten would otherwise spread two pods' worth of room
/// over ten). It never falls: an address that leaves finishes what it carries, and the bound
/// stays that of the most addresses seen at once.
pub(crate) struct Room {
    permits: Arc<Semaphore>,
    granted: usize,
}

impl Room {
    fn new(settings: &Settings, addresses: usize) -> Room {
        let granted = settings.pending_limit(addresses);
        Room {
            permits: Arc::new(Semaphore::new(granted)),
            granted,
        }
    }

    /// Raises the limit to what `addresses` addresses need (`pending_limit`: a given limit stays).
    fn follow(&mut self, settings: &Settings, addresses: usize) {
        let limit = settings.pending_limit(addresses);
        if limit > self.granted {
            self.permits.add_permits(limit - self.granted);
            self.granted = limit;
        }
    }
}

/// The least the default pending limit is: with few streams, reordering still has room.
pub const MIN_DEFAULT_PENDING: usize = 8192;

impl Settings {
    /// Items read but not yet written, at most, with `addresses` server addresses: the given
    /// limit, or twice what all their streams carry at once, so that one slow chunk (which holds
    /// back the writing of everything after it) does not leave the other streams idle. Never
    /// below one message, or no message could be filled.
    pub fn pending_limit(&self, addresses: usize) -> usize {
        let limit = self.max_pending.unwrap_or_else(|| {
            (2 * addresses * self.streams * self.window * self.batch).max(MIN_DEFAULT_PENDING)
        });
        limit.max(self.batch)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("{0}")]
    Server(String),
    #[error("cannot resume: {0}")]
    Resume(String),
}

/// What a finished job did.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Items written by this run (not counting those resumed past).
    pub items: u64,
    /// Items of this run that failed.
    pub failed: u64,
    pub tokens: u64,
    /// Failed items in the whole output, including those written before a resume.
    pub failed_in_output: u64,
}

/// A chunk of consecutive items (or, after a split, one item) and its tries so far.
#[derive(Debug)]
pub(crate) struct Chunk {
    items: Vec<Item>,
    attempt: u32,
}

impl Chunk {
    fn id(&self) -> String {
        format!("{}+{}", self.items[0].index, self.items.len())
    }
}

pub(crate) enum ToWriter {
    Done(Vec<Done>),
    /// The input ended after this many items.
    End(u64),
}

/// What every slot shares.
pub(crate) struct Shared {
    call: Call,
    connector: Connector,
    settings: Settings,
    fresh: async_channel::Receiver<Chunk>,
    retry_tx: async_channel::Sender<Chunk>,
    retry_rx: async_channel::Receiver<Chunk>,
    writer: mpsc::Sender<ToWriter>,
    fatal: mpsc::Sender<JobError>,
    progress: Progress,
}

impl Shared {
    /// The next chunk to send: retries first (they hold the writer back), then fresh ones.
    /// `None` once the job needs nothing more.
    async fn next_chunk(&self) -> Option<Chunk> {
        tokio::select! {
            biased;
            Ok(chunk) = self.retry_rx.recv() => Some(chunk),
            Ok(chunk) = self.fresh.recv() => Some(chunk),
            else => None,
        }
    }

    /// A reply to `chunk` arrived.
    async fn answer(self: &Arc<Self>, chunk: Chunk, reply: Reply) {
        match reply.outcome {
            Ok(values) if values.len() == chunk.items.len() => {
                let done = chunk
                    .items
                    .iter()
                    .zip(values)
                    .map(|(item, (tokens, value))| Done::new(item, tokens, Ok(value)))
                    .collect();
                let _ = self.writer.send(ToWriter::Done(done)).await;
            }
            Ok(values) => {
                let failure = Failure {
                    code: tonic::Code::Internal,
                    message: format!(
                        "the server answered request {} with {} results for {} inputs",
                        chunk.id(),
                        values.len(),
                        chunk.items.len()
                    ),
                };
                self.retry(chunk, failure);
            }
            Err(failure) => self.refused(chunk, failure).await,
        }
    }

    /// The server answered `chunk` with an error of its own.
    async fn refused(self: &Arc<Self>, chunk: Chunk, failure: Failure) {
        let code = failure.code;
        if retry::fatal(code) {
            self.stop(&failure);
        } else if code == tonic::Code::ResourceExhausted && chunk.items.len() > 1 {
            // Too big to answer (or the queue is full): halves are cheaper to take.
            let half = chunk.items.len().div_ceil(2);
            self.split(chunk, half).await;
        } else if retry::transient(code) {
            self.retry(chunk, failure);
        } else if chunk.items.len() > 1 {
            // Find out which input it was: each alone.
            self.split(chunk, 1).await;
        } else {
            self.fail(chunk, failure).await;
        }
    }

    /// The stream carrying `chunk` broke before answering it.
    fn lost(self: &Arc<Self>, chunk: Chunk, failure: &Failure) {
        if retry::fatal(failure.code) {
            self.stop(failure);
        } else {
            self.retry(chunk, failure.clone());
        }
    }

    fn stop(&self, failure: &Failure) {
        let _ = self.fatal.try_send(JobError::Server(format!(
            "the server refused the job: {} ({})",
            failure.message,
            failure.code_name()
        )));
    }

    async fn split(&self, chunk: Chunk, size: usize) {
        let attempt = chunk.attempt;
        let mut items = chunk.items.into_iter().peekable();
        while items.peek().is_some() {
            let part = Chunk {
                items: items.by_ref().take(size).collect(),
                attempt,
            };
            // Room is certain: there are never more chunks than items pending.
            let _ = self.retry_tx.send(part).await;
        }
    }

    /// Sends `chunk` again after a backoff, or fails it when its tries are used up.
    fn retry(self: &Arc<Self>, mut chunk: Chunk, failure: Failure) {
        chunk.attempt += 1;
        let shared = self.clone();
        tokio::spawn(async move {
            if chunk.attempt > shared.settings.retries {
                let failure = Failure {
                    message: format!("{} (after {} tries)", failure.message, chunk.attempt),
                    ..failure
                };
                shared.fail(chunk, failure).await;
                return;
            }
            tokio::time::sleep(shared.settings.backoff.delay(chunk.attempt)).await;
            let _ = shared.retry_tx.send(chunk).await;
        });
    }

    async fn fail(&self, chunk: Chunk, failure: Failure) {
        let done = chunk
            .items
            .iter()
            .map(|item| Done::new(item, 0, Err(failure.clone())))
            .collect();
        let _ = self.writer.send(ToWriter::Done(done)).await;
    }
}

/// Everything a job needs, opened and checked.
pub struct Job {
    pub call: Call,
    pub connector: Connector,
    pub targets: Vec<Target>,
    pub settings: Settings,
    pub reader: Reader,
    pub sink: Box<dyn Sink>,
    pub errors: ErrorsFile,
    /// Items already in the output (resuming).
    pub done_rows: u64,
    pub progress: Progress,
}

/// Runs the job to its end: every item written, or the first fatal error.
pub async fn run(job: Job) -> Result<Totals, JobError> {
    let started = Instant::now();
    let settings = job.settings.clone();

    // Every address known before anything is read: a job that cannot reach any server stops here.
    let mut addresses = Vec::new();
    for target in &job.targets {
        let addrs = job
            .connector
            .resolve(target)
            .await
            .map_err(|e| JobError::Server(e.to_string()))?;
        if addrs.is_empty() {
            return Err(JobError::Server(format!(
                "--server {}: the host has no address",
                target.url
            )));
        }
        addresses.push(addrs);
    }
    let room = Room::new(&settings, addresses.iter().map(Vec::len).sum());
    let permits = room.permits.clone();
    let (fresh_tx, fresh_rx) = async_channel::bounded(room.granted.div_ceil(settings.batch));
    // Not bounded by its own capacity but by the permits: it never holds more chunks than there
    // are items pending, and the pending limit may rise while the job runs.
    let (retry_tx, retry_rx) = async_channel::unbounded();
    let (writer_tx, writer_rx) = mpsc::channel(1024);
    let (fatal_tx, mut fatal_rx) = mpsc::channel(1);

    let shared = Arc::new(Shared {
        call: job.call,
        connector: job.connector,
        settings: settings.clone(),
        fresh: fresh_rx,
        retry_tx: retry_tx.clone(),
        retry_rx,
        writer: writer_tx.clone(),
        fatal: fatal_tx,
        progress: job.progress.clone(),
    });
    let handle = tokio::runtime::Handle::current();
    let mut reader = {
        let permits = permits.clone();
        let (reader, skip, batch) = (job.reader, job.done_rows, settings.batch);
        tokio::task::spawn_blocking(move || {
            read(
                reader, skip, batch, &fresh_tx, &permits, &writer_tx, &handle,
            )
        })
    };
    let mut writer = {
        let progress = job.progress.clone();
        let (sink, errors, start) = (job.sink, job.errors, job.done_rows);
        tokio::task::spawn_blocking(move || {
            writer::write(writer_rx, sink, errors, start, &permits, &progress)
        })
    };
    let manager = tokio::spawn(backends::manage(
        shared.clone(),
        job.targets,
        addresses,
        room,
    ));

    let mut reading = true;
    let outcome = loop {
        tokio::select! {
            read = &mut reader, if reading => {
                reading = false;
                if let Err(e) = read.expect("the reader thread does not panic") {
                    break Err(e.into());
                }
            }
            written = &mut writer => break written.expect("the writer thread does not panic"),
            Some(error) = fatal_rx.recv() => break Err(error),
        }
    };
    manager.abort();
    retry_tx.close();
    let totals = outcome?;
    job.progress.finish(&totals, started.elapsed());
    Ok(totals)
}

/// The reader thread: items into chunks of `batch`, one permit per item.
fn read(
    mut reader: Reader,
    skip: u64,
    batch: usize,
    fresh: &async_channel::Sender<Chunk>,
    permits: &Arc<Semaphore>,
    writer: &mpsc::Sender<ToWriter>,
    handle: &tokio::runtime::Handle,
) -> Result<(), InputError> {
    let mut items = Vec::with_capacity(batch);
    let mut count = 0u64;
    let send = |items: &mut Vec<Item>| {
        if !items.is_empty() {
            let chunk = Chunk {
                items: std::mem::replace(items, Vec::with_capacity(batch)),
                attempt: 0,
            };
            // Closed only when the job is over.
            let _ = fresh.send_blocking(chunk);
        }
    };
    while let Some(item) = reader.next_item()? {
        count += 1;
        if item.index < skip {
            continue;
        }
        match permits.clone().try_acquire_owned() {
            Ok(permit) => permit.forget(),
            Err(_) => {
                // Out of room: what is gathered must go out, or it could never be written.
                send(&mut items);
                match handle.block_on(permits.clone().acquire_owned()) {
                    Ok(permit) => permit.forget(),
                    Err(_) => return Ok(()),
                }
            }
        }
        items.push(item);
        if items.len() == batch {
            send(&mut items);
        }
    }
    send(&mut items);
    let _ = writer.blocking_send(ToWriter::End(count));
    fresh.close();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_pending: Option<usize>) -> Settings {
        Settings {
            streams: 2,
            batch: 32,
            window: 16,
            max_pending,
            retries: 0,
            backoff: Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(1),
            },
            resolve_every: Duration::from_secs(30),
        }
    }

    #[test]
    fn the_default_pending_limit_holds_every_window_twice_and_at_least_the_floor() {
        // One address carries 2 streams x 16 messages x 32 inputs = 1,024 inputs at once.
        assert_eq!(settings(None).pending_limit(1), MIN_DEFAULT_PENDING);
        assert_eq!(settings(None).pending_limit(4), MIN_DEFAULT_PENDING);
        assert_eq!(settings(None).pending_limit(10), 2 * 10 * 1024);
    }

    #[test]
    fn a_given_pending_limit_is_kept_but_never_below_one_message() {
        assert_eq!(settings(Some(100)).pending_limit(10), 100);
        assert_eq!(settings(Some(5)).pending_limit(1), 32);
    }

    #[test]
    fn the_default_room_grows_with_the_addresses_dns_adds_and_never_falls() {
        let default = settings(None);
        let mut room = Room::new(&default, 1);
        assert_eq!(room.permits.available_permits(), MIN_DEFAULT_PENDING);
        room.follow(&default, 10);
        assert_eq!(room.permits.available_permits(), default.pending_limit(10));
        room.follow(&default, 1);
        assert_eq!(
            room.permits.available_permits(),
            default.pending_limit(10),
            "an address leaving finishes what it carries"
        );
        room.follow(&default, 12);
        assert_eq!(room.permits.available_permits(), default.pending_limit(12));
    }

    #[test]
    fn a_given_room_stays_whatever_dns_adds() {
        let given = settings(Some(100));
        let mut room = Room::new(&given, 1);
        room.follow(&given, 10);
        assert_eq!(room.permits.available_permits(), 100);
    }
}
