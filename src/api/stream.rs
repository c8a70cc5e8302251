//! Bidirectional streams with bounded memory and responses in request order.
//!
//! A reader takes request messages one by one. Before any work is done for a message it takes,
//! in order: its inputs from the stream's window (`batching.stream_window`), its cost in bytes
//! from the stream's byte window (`batching.stream_window_bytes`) and from the budget of all
//! streams (`limits.stream_inflight_bytes`), and room in the queue. Then it starts the request
//! as its own task (tokenizing and computing in parallel with the others). A writer awaits those
//! tasks in request order and sends each response; only once tonic has taken the response does
//! the request give back what it took. So a client that stops reading stops the reader too,
//! HTTP/2 flow control pushes back on it, and the server holds one window of it (and the one
//! response tonic is encoding), whatever the client does.
//!
//! A client that goes away aborts its pending tasks, which drops their queued inputs before they
//! are computed. When the server drains, the reader stops reading, the requests already taken are
//! answered, and the stream ends with UNAVAILABLE naming the last request answered in order
//! (in the message and in the `bertd-resume-after-bin` trailer), so the client knows where to
//! resume elsewhere.
//!
//! Tracing: the call's span covers the stream; each request message gets a `message` span under
//! it (the parent of its tokenizing and queueing), up to `telemetry.max_spans_per_stream`
//! messages, after which requests are traced through the call's span alone.
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status, Streaming};
use tracing::Instrument;

use crate::telemetry::metrics::MethodLabels;

use super::AppState;
use super::auth::{Charged, charge_waiting};
use super::error::ApiError;
use super::request::{Call, check, echoed_id, execute};
use crate::batch::budget::{ByteBudget, BytesHeld};
use crate::security::quota::Quota;

/// What a stream handler returns to tonic.
pub type ResponseStream<T> = ReceiverStream<Result<T, Status>>;

/// Responses computed and waiting for tonic to take them; they still count in the windows.
const SEND_BUFFER: usize = 1;

/// What a refused request holds while its error response waits its turn: its id and message.
const REFUSAL_BYTES: usize = 1024;

/// The trailer that names the last request answered before a drain ended the stream.
pub const RESUME_AFTER: &str = "bertd-resume-after-bin";

/// A spawned task that is aborted when dropped, so that abandoning a stream cancels its work.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one request holds until its response has been handed to the transport.
struct Held {
    _quota: Charged,
    _inputs: OwnedSemaphorePermit,
    _stream_bytes: BytesHeld,
    _all_streams_bytes: BytesHeld,
}

/// What the writer sends next, in request order.
enum Pending<Resp> {
    /// A request's task, or its response when it was refused before any work.
    Response {
        id: String,
        answer: Answer<Resp>,
        _held: Held,
    },
    /// The stream broke here.
    Broken(Status),
    /// The server is draining: the stream ends here.
    Drained,
}

enum Answer<Resp> {
    Running(AbortOnDrop<Resp>),
    Ready(Resp),
}

/// Runs each request of `inbound` and streams the responses back in order.
pub fn ordered<C: Call>(
    state: Arc<AppState>,
    quota: Option<Arc<Quota>>,
    inbound: Streaming<C::Request>,
    deadline: Option<Instant>,
) -> ResponseStream<C::Response> {
    let window = state.settings.batching.stream_window;
    let (out_tx, out_rx) = mpsc::channel::<Result<C::Response, Status>>(SEND_BUFFER);
    let (pending_tx, pending_rx) = mpsc::channel::<Pending<C::Response>>(window);
    let labels = MethodLabels {
        service: C::SERVICE.into(),
        method: C::STREAM_METHOD.into(),
    };
    let metrics = &state.metrics;
    let sent = metrics.messages_sent.get_or_create_owned(&labels);
    metrics.streams.inc();
    let open = OpenStream(metrics.streams.clone());
    tokio::spawn(
        read::<C>(state, quota, inbound, deadline, pending_tx, out_tx.clone()).in_current_span(),
    );
    tokio::spawn(
        async move {
            write::<C>(pending_rx, out_tx, sent).await;
            drop(open);
        }
        .in_current_span(),
    );
    ReceiverStream::new(out_rx)
}

/// Counts a stream as open until dropped.
struct OpenStream(prometheus_client::metrics::gauge::Gauge);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Reader: takes messages as the windows, the budget and the queue allow.
async fn read<C: Call>(
    state: Arc<AppState>,
    quota: Option<Arc<Quota>>,
    mut inbound: Streaming<C::Request>,
    deadline: Option<Instant>,
    pending: mpsc::Sender<Pending<C::Response>>,
    out: mpsc::Sender<Result<C::Response, Status>>,
) {
    let settings = &state.settings;
    let window = settings.batching.stream_window;
    let inputs_window = Arc::new(Semaphore::new(window));
    let bytes_window = ByteBudget::new(
        "batching.stream_window_bytes",
        settings.batching.stream_window_bytes,
    );
    let lane = state.scheduler.stream_lane();
    let draining = state.draining.clone();
    let received = state
        .metrics
        .messages_received
        .get_or_create_owned(&MethodLabels {
            service: C::SERVICE.into(),
            method: C::STREAM_METHOD.into(),
        });
    let max_spans = settings.telemetry.max_spans_per_stream;
    let mut index: usize = 0;
    loop {
        let message = tokio::select! {
            biased;
            _ = draining.cancelled() => break,
            _ = out.closed() => return,
            m = inbound.message() => m,
        };
        let request = match message {
            Ok(Some(request)) => request,
            Ok(None) => return, // the client finished sending
            Err(status) => {
                // The stream as a whole is broken (a transport error or an oversized message):
                // it ends with this status, after the responses to the requests before it.
                let _ = pending.send(Pending::Broken(stream_error(status))).await;
                return;
            }
        };
        received.inc();
        let span = if index < max_spans {
            tracing::info_span!("message", bertd.message = index)
        } else {
            tracing::Span::current()
        };
        index += 1;
        let id = echoed_id(C::id(&request), settings.limits.max_id_bytes);
        let checked = span.in_scope(|| check::<C>(&state, request));
        let (inputs, bytes) = match &checked {
            Ok(c) => (c.inputs(), c.cost),
            Err(_) => (1, REFUSAL_BYTES),
        };
        let take = async {
            // The key's quota first: a stream over its key's rate waits here, holding nothing.
            let charged = match &checked {
                Ok(c) => charge_waiting(quota.as_ref(), c.inputs(), &state.metrics).await,
                Err(_) => Ok(None),
            };
            let inputs = inputs_window
                .clone()
                .acquire_many_owned(inputs.clamp(1, window) as u32)
                .await
                .expect("the window is never closed");
            let stream_bytes = bytes_window.take(bytes).await;
            let all_streams_bytes = state.budgets.streams.take(bytes).await;
            let (quota, refused) = match charged {
                Ok(quota) => (quota, None),
                Err(refused) => (None, Some(refused)),
            };
            let held = Held {
                _quota: quota,
                _inputs: inputs,
                _stream_bytes: stream_bytes,
                _all_streams_bytes: all_streams_bytes,
            };
            (held, refused)
        };
        let (held, refused) = tokio::select! {
            biased;
            _ = draining.cancelled() => break,
            _ = out.closed() => return,
            taken = take => taken,
        };
        let checked = match refused {
            Some(refused) => Err(refused),
            None => checked,
        };
        let answer = match checked {
            Err(error) => Answer::Ready(C::failed(id.clone(), error.to_rpc_status())),
            Ok(checked) => {
                let admitted = tokio::select! {
                    biased;
                    _ = draining.cancelled() => break,
                    _ = out.closed() => return,
                    admitted = state.scheduler.admit(lane, checked.inputs()) => admitted,
                };
                match admitted {
                    Err(refused) => Answer::Ready(C::failed(
                        id.clone(),
                        ApiError::from(refused).to_rpc_status(),
                    )),
                    Ok(admission) => {
                        let state = state.clone();
                        let task_id = id.clone();
                        Answer::Running(AbortOnDrop(tokio::spawn(
                            async move {
                                execute(state, checked, admission, deadline)
                                    .await
                                    .unwrap_or_else(|e| C::failed(task_id, e.to_rpc_status()))
                            }
                            .instrument(span),
                        )))
                    }
                }
            }
        };
        let next = Pending::Response {
            id,
            answer,
            _held: held,
        };
        if pending.send(next).await.is_err() {
            return;
        }
    }
    let _ = pending.send(Pending::Drained).await;
}

/// Writer: responses in request order. A request gives back what it holds only once tonic has
/// taken its response for sending: the channel to tonic holds one response, so the writer sends
/// into it and then waits for room again, which comes when tonic has taken that response.
async fn write<C: Call>(
    mut pending: mpsc::Receiver<Pending<C::Response>>,
    out: mpsc::Sender<Result<C::Response, Status>>,
    sent: prometheus_client::metrics::counter::Counter,
) {
    // The last request answered with nothing left to retry before it (in request order).
    let mut resume_after: Option<String> = None;
    let mut in_order = true;
    let Ok(mut room) = out.reserve().await else {
        return;
    };
    while let Some(next) = pending.recv().await {
        let (id, answer, held) = match next {
            Pending::Response { id, answer, _held } => (id, answer, _held),
            Pending::Broken(status) => {
                room.send(Err(status));
                return;
            }
            Pending::Drained => {
                room.send(Err(drained(resume_after.as_deref())));
                return;
            }
        };
        let response = match answer {
            Answer::Ready(response) => response,
            Answer::Running(mut task) => {
                let joined = tokio::select! {
                    r = &mut task.0 => r,
                    _ = out.closed() => return,
                };
                joined.unwrap_or_else(|_| {
                    C::failed(
                        id.clone(),
                        ApiError::internal("this request's task failed").to_rpc_status(),
                    )
                })
            }
        };
        let retry = C::error(&response).is_some_and(|e| e.code == Code::Unavailable as i32);
        in_order &= !retry;
        if in_order {
            resume_after = Some(id);
        }
        room.send(Ok(response));
        sent.inc();
        room = match out.reserve().await {
            Ok(room) => room,
            Err(_) => return,
        };
        drop(held);
    }
}

/// The status that ends a stream when the server drains.
fn drained(resume_after: Option<&str>) -> Status {
    let mut trailers = MetadataMap::new();
    let message = match resume_after {
        Some(id) => {
            trailers.insert_bin(RESUME_AFTER, MetadataValue::from_bytes(id.as_bytes()));
            format!(
                "the server is shutting down: every request up to id {id:?} was answered; send the ones after it to another server"
            )
        }
        None => "the server is shutting down: no request of this stream was answered; send them to another server".to_string(),
    };
    Status::with_metadata(Code::Unavailable, message, trailers)
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
