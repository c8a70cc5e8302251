//! A slot: one stream at a time to one server address, carrying chunks until the job ends.
//!
//! The slot keeps up to `window` requests in flight; the server answers a stream's requests in
//! order, so each reply belongs to the oldest unanswered request. If the stream breaks, stalls
//! past the timeout, or answers out of order, every unanswered chunk goes back for another slot
//! (the job's retry path) and this slot reconnects after a backoff that grows while it keeps
//! failing, so a dead server costs the job little.
use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::call::{Outgoing, inputs};
use super::{Chunk, Shared};
use crate::outcome::Failure;

/// One address of a server.
pub(super) struct Backend {
    pub name: String,
    pub channel: Channel,
}

struct InFlight {
    id: String,
    chunk: Chunk,
    sent: Instant,
}

pub(super) async fn run(
    shared: Arc<Shared>,
    backend: Arc<Backend>,
    mut retired: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        if failures > 0 {
            tokio::select! {
                _ = tokio::time::sleep(shared.settings.backoff.delay(failures)) => {}
                _ = retired.changed() => {}
            }
        }
        if *retired.borrow() {
            return;
        }
        let first = tokio::select! {
            biased;
            _ = retired.changed() => None,
            chunk = shared.next_chunk() => chunk,
        };
        let Some(first) = first else { return };
        match stream(&shared, &backend, first, &mut retired).await {
            Ok(()) => failures = 0,
            Err(failure) => {
                failures += 1;
                if failures == 1 {
                    shared.progress.warn(&format!(
                        "{}: {} ({}); its unanswered inputs go to other streams",
                        backend.name,
                        failure.message,
                        failure.code_name()
                    ));
                }
            }
        }
    }
}

/// Carries chunks on one stream until it ends; `Err` with why when it broke.
async fn stream(
    shared: &Arc<Shared>,
    backend: &Backend,
    first: Chunk,
    retired: &mut watch::Receiver<bool>,
) -> Result<(), Failure> {
    let window = shared.settings.window;
    let timeout = shared.connector.timeout;
    let (tx, rx) = mpsc::channel::<Outgoing>(window);
    let mut sender = Some(tx);
    let mut inflight: VecDeque<InFlight> = VecDeque::with_capacity(window);
    let lose_all = |inflight: &mut VecDeque<InFlight>, failure: &Failure| {
        for lost in inflight.drain(..) {
            shared.lost(lost.chunk, failure);
        }
    };
    send(&mut sender, &mut inflight, first).await;

    let open = shared
        .call
        .open(backend.channel.clone(), shared.connector.auth.clone(), rx);
    let opened = tokio::time::timeout(shared.connector.connect_timeout + timeout, open).await;
    let mut replies = match opened {
        Ok(Ok(replies)) => replies,
        Ok(Err(status)) => {
            let failure = Failure::from_status(&status);
            lose_all(&mut inflight, &failure);
            return Err(failure);
        }
        Err(_) => {
            let failure = Failure {
                code: tonic::Code::DeadlineExceeded,
                message: format!("no answer to opening a stream within {timeout:?}"),
            };
            lose_all(&mut inflight, &failure);
            return Err(failure);
        }
    };

    loop {
        let deadline = inflight.front().map(|f| f.sent + timeout);
        let taking = sender.is_some() && inflight.len() < window;
        tokio::select! {
            biased;
            reply = replies.next() => match reply {
                Some(Ok(reply)) => match inflight.pop_front() {
                    Some(front) if front.id == reply.id => shared.answer(front.chunk, reply).await,
                    front => {
                        let failure = Failure {
                            code: tonic::Code::Internal,
                            message: format!(
                                "the server answered request {} when {} was next",
                                reply.id,
                                front.as_ref().map_or("none", |f| f.id.as_str())
                            ),
                        };
                        inflight.extend(front);
                        lose_all(&mut inflight, &failure);
                        return Err(failure);
                    }
                },
                Some(Err(status)) => {
                    let failure = Failure::from_status(&status);
                    lose_all(&mut inflight, &failure);
                    return Err(failure);
                }
                None if inflight.is_empty() => return Ok(()),
                None => {
                    let failure = Failure {
                        code: tonic::Code::Unavailable,
                        message: format!(
                            "the stream ended with {} requests unanswered",
                            inflight.len()
                        ),
                    };
                    lose_all(&mut inflight, &failure);
                    return Err(failure);
                }
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                let failure = Failure {
                    code: tonic::Code::DeadlineExceeded,
                    message: format!("no answer within {timeout:?}"),
                };
                lose_all(&mut inflight, &failure);
                return Err(failure);
            }
            // Before taking work: a retired slot takes none, even when some is waiting.
            _ = retired.changed(), if sender.is_some() => sender = None,
            chunk = shared.next_chunk(), if taking => match chunk {
                Some(chunk) => send(&mut sender, &mut inflight, chunk).await,
                // Nothing more to send: closing our side ends the stream once it is answered.
                None => sender = None,
            },
        }
    }
}

/// Puts `chunk` on the stream; if the stream is already gone it is still recorded as in flight,
/// and goes back with the others when the stream's failure is seen.
async fn send(
    sender: &mut Option<mpsc::Sender<Outgoing>>,
    inflight: &mut VecDeque<InFlight>,
    chunk: Chunk,
) {
    let id = chunk.id();
    if let Some(tx) = sender {
        let _ = tx.send((id.clone(), inputs(&chunk.items))).await;
    }
    inflight.push_back(InFlight {
        id,
        chunk,
        sent: Instant::now(),
    });
}
