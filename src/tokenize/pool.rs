//! A bounded pool of threads that tokenize, off the async runtime and apart from the blocking
//! pool, so that tokenizing many long texts cannot starve the runtime or grow without bound.
//! Work waits for a place in a bounded queue; work whose caller has gone is skipped.
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

type Work = Box<dyn FnOnce() + Send>;

/// The pool; its threads end when it is dropped.
pub struct TokenizePool {
    queue: mpsc::Sender<Work>,
    threads: usize,
}

/// The work could not run: its thread panicked (a tokenizer bug), or the pool is gone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tokenization failed: {0}")]
pub struct PoolError(pub String);

impl TokenizePool {
    /// `threads` threads (at least 1) and room for `queue` waiting pieces of work.
    pub fn new(threads: usize, queue: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let (tx, rx) = mpsc::channel::<Work>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for index in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("bertd-tokenize-{index}"))
                .spawn(move || {
                    loop {
                        // One thread waits for work at a time; the others wait for the lock.
                        let work = rx.lock().unwrap_or_else(|e| e.into_inner()).blocking_recv();
                        match work {
                            Some(work) => work(),
                            None => return,
                        }
                    }
                })?;
        }
        Ok(TokenizePool { queue: tx, threads })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a pool thread, waiting for room in the queue.
    pub async fn run<R, F>(&self, f: F) -> Result<R, PoolError>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let work: Work = Box::new(move || {
            if tx.is_closed() {
                return; // the caller has gone
            }
            let result = catch_unwind(AssertUnwindSafe(f))
                .map_err(|panic| PoolError(crate::panic_message(panic.as_ref())));
            let _ = tx.send(result);
        });
        self.queue
            .send(work)
            .await
            .map_err(|_| PoolError("the tokenizer pool has stopped".into()))?;
        rx.await
            .map_err(|_| PoolError("the tokenizer pool has stopped".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_pool_and_a_panic_fails_only_its_own_call() {
        let pool = TokenizePool::new(2, 4).unwrap();
        let name = pool
            .run(|| std::thread::current().name().map(str::to_string))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("bertd-tokenize-"));
        let failed = pool.run(|| -> usize { panic!("bad tokenizer") }).await;
        assert_eq!(failed, Err(PoolError("bad tokenizer".into())));
        assert_eq!(pool.run(|| 41 + 1).await, Ok(42));
    }
}
