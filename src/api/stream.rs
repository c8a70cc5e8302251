//! Bidirectional streams with bounded memory and responses in request order.
//!
//! A reader takes request messages while the stream's window has room for their inputs, and
//! starts each one as its own task (tokenizing and computing in parallel with the others). A
//! writer awaits those tasks in request order and sends each response. The window's permits are
//! returned only when a response has been handed to the transport, so a client that stops
//! reading stops the reader too, and HTTP/2 flow control pushes back on it: the server holds at
//! most `stream_window` inputs of one stream, whatever the client does. A client that goes away
//! aborts its pending tasks, which drops their queued inputs before they are computed.
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

/// What a stream handler returns to tonic.
pub type ResponseStream<T> = ReceiverStream<Result<T, Status>>;

/// Responses computed but not yet taken by the transport; the window bounds the rest.
const SEND_BUFFER: usize = 4;

/// A spawned task that is aborted when dropped, so that abandoning a stream cancels its work.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the writer sends next, in request order.
enum Pending<Resp> {
    /// A request's task, and its share of the window until its response is sent.
    Response(AbortOnDrop<Resp>, OwnedSemaphorePermit),
    /// The stream broke here.
    End(Status),
}

/// Runs `handle` for each message of `inbound` and streams its responses back in order.
/// `inputs_of` says how much of the window a message takes (its number of inputs, at least 1).
pub fn ordered<Req, Resp, F, Fut>(
    mut inbound: Streaming<Req>,
    window: usize,
    inputs_of: fn(&Req) -> usize,
    handle: F,
) -> ResponseStream<Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Req) -> Fut + Send + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let (out_tx, out_rx) = mpsc::channel::<Result<Resp, Status>>(SEND_BUFFER);
    let (pending_tx, mut pending_rx) = mpsc::channel::<Pending<Resp>>(window);
    let window_permits = Arc::new(Semaphore::new(window));

    // Reader: admits messages as the window allows.
    let reader_out = out_tx.clone();
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                m = inbound.message() => m,
                _ = reader_out.closed() => return,
            };
            let request = match message {
                Ok(Some(request)) => request,
                Ok(None) => return, // the client finished sending
                Err(status) => {
                    // The stream as a whole is broken (a transport error or an oversized message):
                    // it ends with this status, after the responses to the requests before it.
                    let _ = pending_tx.send(Pending::End(stream_error(status))).await;
                    return;
                }
            };
            let weight = inputs_of(&request).clamp(1, window) as u32;
            let permit = tokio::select! {
                p = window_permits.clone().acquire_many_owned(weight) => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = reader_out.closed() => return,
            };
            let task = AbortOnDrop(tokio::spawn(handle(request)));
            if pending_tx
                .send(Pending::Response(task, permit))
                .await
                .is_err()
            {
                return;
            }
        }
    });

    // Writer: responses in request order.
    tokio::spawn(async move {
        while let Some(pending) = pending_rx.recv().await {
            let (mut task, permit) = match pending {
                Pending::Response(task, permit) => (task, permit),
                Pending::End(status) => {
                    let _ = out_tx.send(Err(status)).await;
                    return;
                }
            };
            let result = tokio::select! {
                r = &mut task.0 => r,
                _ = out_tx.closed() => return,
            };
            let message = result.map_err(|_| Status::internal("a stream request's task failed"));
            let failed = message.is_err();
            if out_tx.send(message).await.is_err() || failed {
                return;
            }
            drop(permit);
        }
    });

    ReceiverStream::new(out_rx)
}

/// An oversized message is the client's to fix, not a range error: RESOURCE_EXHAUSTED, as gRPC's
/// specification asks.
pub fn stream_error(status: Status) -> Status {
    if status.code() == Code::OutOfRange && status.message().contains("message length too large") {
        Status::resource_exhausted(format!("{} (server.max_message_bytes)", status.message()))
    } else {
        status
    }
}
