//! Worker faults against the real server on loopback, injected by wrapping the real engine (the
//! hook is the `Replicas` seam of `server::start_with`; the faulty wrapper exists only here):
//! a batch that fails is split so only the failing input fails; out-of-memory on large batches is
//! survived; a broken replica is replaced and its inputs answered; with no worker able to run,
//! health turns NOT_SERVING and calls fail fast, until a worker is back; a worker thread that
//! dies is restarted.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bertd::api::proto::bert::v1 as pb;
use bertd::batch::pool::LoadReplica;
use bertd::engine::replica::ReplicaPlan;
use bertd::engine::{Compute, Engine, EngineError, EngineInput, Output};
use bertd::server::Replicas;
use common::grpc::*;
use common::*;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The text that triggers injected faults.
const POISON: &str = "a poisoned input";
/// Long enough for anything here to happen, short enough for a failing test to end.
const PATIENCE: Duration = Duration::from_secs(20);

/// What the injected replicas do; shared by every replica of a server.
#[derive(Default)]
struct Faults {
    /// The token ids of `POISON`.
    poison: Vec<i64>,
    /// A batch holding the poison panics inside the engine.
    panic_on_poison: AtomicBool,
    /// Checking the poison panics in the worker loop itself, killing the worker thread.
    kill_on_poison: AtomicBool,
    /// Batches larger than this fail as CUDA's out-of-memory does (0: no limit).
    memory_for_inputs: AtomicUsize,
    /// The next replica loaded breaks on its first batch.
    break_next_replica: AtomicBool,
    /// Loading a replica fails.
    refuse_loads: AtomicBool,
    loads: AtomicUsize,
}

struct Injected {
    engine: Engine,
    faults: Arc<Faults>,
    breaks: AtomicBool,
}

impl Injected {
    fn poisoned(&self, input: &EngineInput) -> bool {
        input.tokens.ids == self.faults.poison
    }
}

impl Compute for Injected {
    fn check(&self, index: usize, input: &EngineInput) -> Result<(), EngineError> {
        if self.faults.kill_on_poison.load(Ordering::SeqCst) && self.poisoned(input) {
            panic!("injected: the worker thread dies");
        }
        self.engine.check(index, input)
    }

    fn run(&self, batch: &[EngineInput]) -> Result<Vec<Output>, EngineError> {
        if self.breaks.swap(false, Ordering::SeqCst) {
            return Err(EngineError::Broken("injected: device lost".into()));
        }
        if self.faults.panic_on_poison.load(Ordering::SeqCst)
            && batch.iter().any(|i| self.poisoned(i))
        {
            panic!("injected: libtorch failed on this input");
        }
        let memory = self.faults.memory_for_inputs.load(Ordering::SeqCst);
        if memory > 0 && batch.len() > memory {
            return Err(EngineError::Compute(
                "injected: CUDA out of memory. Tried to allocate 2.00 GiB".into(),
            ));
        }
        self.engine.run(batch)
    }
}

fn injected(faults: &Arc<Faults>) -> Replicas {
    let faults = faults.clone();
    Box::new(move |plan: ReplicaPlan| -> LoadReplica {
        Arc::new(move |index| {
            faults.loads.fetch_add(1, Ordering::SeqCst);
            if faults.refuse_loads.load(Ordering::SeqCst) {
                return Err("injected: no device".to_string());
            }
            let engine = plan.load(index).map_err(|e| e.to_string())?;
            Ok(Box::new(Injected {
                engine,
                faults: faults.clone(),
                breaks: AtomicBool::new(faults.break_next_replica.swap(false, Ordering::SeqCst)),
            }) as Box<dyn Compute>)
        })
    })
}

fn faults() -> Arc<Faults> {
    let (tokenizer, _) = load(&model_dir("bert_tiny"));
    let poison = tokenizer
        .encode(&bertd::tokenize::TextInput::single(POISON), true)
        .unwrap()
        .ids;
    Arc::new(Faults {
        poison,
        ..Default::default()
    })
}

/// The references of single texts (no pairs): seven of them.
fn singles() -> Vec<serde_json::Value> {
    references("bert_tiny")
        .into_iter()
        .filter(|r| r["text_pair"].is_null())
        .collect()
}

fn texts_of(refs: &[serde_json::Value]) -> Vec<String> {
    refs.iter()
        .map(|r| r["text"].as_str().unwrap().to_string())
        .collect()
}

/// The seven single texts, and the poison fifth.
fn texts() -> Vec<String> {
    let mut texts = texts_of(&singles());
    texts.insert(4, POISON.to_string());
    texts
}

/// Sends each text as its own request of one stream, all in one batch, and returns the responses.
async fn stream_texts(
    channel: &tonic::transport::Channel,
    texts: &[String],
) -> Vec<pb::EncodeResponse> {
    let requests: Vec<pb::EncodeRequest> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| encode_request(i.to_string(), vec![input(t)], pb::Pooling::Mean))
        .collect();
    let responses = EncoderClient::new(channel.clone())
        .encode_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap())
        .collect::<Vec<_>>();
    tokio::time::timeout(PATIENCE, responses).await.unwrap()
}

/// Settings that put the texts of one stream in one batch: they wait for each other, and a forward
/// pass costs more than any padding, so texts of different lengths are not cut apart.
fn one_batch() -> bertd::config::Settings {
    let mut s = settings(&model_dir("bert_tiny"));
    s.batching.max_batch_delay_ms = 300;
    s.batching.max_batch_size = Some(8);
    s.batching.forward_cost_tokens = Some(usize::MAX);
    s.engine.restart_backoff_ms = 10;
    s.engine.max_restart_backoff_ms = 100;
    s
}

/// Every response but the poison's equals the reference; returns the poison's error.
fn check_all_but_poison(
    responses: &[pb::EncodeResponse],
) -> &bertd::api::proto::google::rpc::Status {
    let refs = singles();
    let mut reference = refs.iter();
    let mut poisoned = None;
    for (i, response) in responses.iter().enumerate() {
        assert_eq!(response.id, i.to_string());
        if i == 4 {
            poisoned = response.error.as_ref();
            continue;
        }
        assert!(response.error.is_none(), "{i}: {:?}", response.error);
        let r = reference.next().unwrap();
        assert_close("mean", &response.results[0].embedding, &floats(&r["mean"]));
    }
    poisoned.expect("the poisoned request failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_that_fails_the_model_alone_gets_internal_and_its_batch_is_computed() {
    let faults = faults();
    faults.panic_on_poison.store(true, Ordering::SeqCst);
    let server = serve_with(one_batch(), injected(&faults)).await;
    let channel = channel(&server).await;
    let responses = stream_texts(&channel, &texts()).await;
    let error = check_all_but_poison(&responses);
    assert_eq!(error.code, Code::Internal as i32);
    assert!(
        error
            .message
            .contains("inputs[0]: the model failed: injected: libtorch failed"),
        "{}",
        error.message
    );
    let now = stats(&channel).await;
    assert_eq!(now.inputs_failed, 1, "{now:?}");
    assert_eq!(now.inputs_computed, 7, "{now:?}");
    assert!(
        now.batches_split >= 3,
        "8 inputs are split down to one: {now:?}"
    );
    assert_eq!(
        now.worker_restarts, 0,
        "a failing batch does not cost the worker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_on_a_large_batch_is_survived_by_computing_it_in_parts() {
    let faults = faults();
    faults.memory_for_inputs.store(2, Ordering::SeqCst);
    let server = serve_with(one_batch(), injected(&faults)).await;
    let channel = channel(&server).await;
    let refs = singles();
    let responses = stream_texts(&channel, &texts_of(&refs)).await;
    for (response, r) in responses.iter().zip(&refs) {
        assert!(response.error.is_none(), "{:?}", response.error);
        assert_close("mean", &response.results[0].embedding, &floats(&r["mean"]));
    }
    let now = stats(&channel).await;
    assert_eq!((now.inputs_failed, now.inputs_computed), (0, 7), "{now:?}");
    assert!(now.batches_split > 0, "{now:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_replica_is_replaced_and_its_inputs_are_answered() {
    let faults = faults();
    faults.break_next_replica.store(true, Ordering::SeqCst);
    let server = serve_with(one_batch(), injected(&faults)).await;
    let channel = channel(&server).await;
    let refs = singles();
    let responses = stream_texts(&channel, &texts_of(&refs)).await;
    for (response, r) in responses.iter().zip(&refs) {
        assert!(response.error.is_none(), "{:?}", response.error);
        assert_close("mean", &response.results[0].embedding, &floats(&r["mean"]));
    }
    let now = stats(&channel).await;
    assert_eq!(now.worker_restarts, 1, "{now:?}");
    assert_eq!(now.workers_running, 1, "{now:?}");
    assert_eq!(faults.loads.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_thread_that_dies_is_restarted_and_only_its_batch_is_lost() {
    let faults = faults();
    faults.kill_on_poison.store(true, Ordering::SeqCst);
    let server = serve_with(one_batch(), injected(&faults)).await;
    let channel = channel(&server).await;
    let responses = stream_texts(&channel, &texts()).await;
    // The batch died with the thread: each of its inputs is told so, none hangs.
    for response in &responses {
        let error = response.error.as_ref().expect("the batch was lost");
        assert_eq!(error.code, Code::Internal as i32, "{error:?}");
        assert!(
            error.message.contains("the worker computing it stopped"),
            "{error:?}"
        );
    }
    // The worker is back and serves the next calls.
    let refs = references("bert_tiny");
    let after = EncoderClient::new(channel.clone())
        .encode(encode_request(
            "after",
            vec![input(refs[0]["text"].as_str().unwrap())],
            pb::Pooling::Mean,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_close(
        "mean",
        &after.results[0].embedding,
        &floats(&refs[0]["mean"]),
    );
    let now = stats(&channel).await;
    assert_eq!(
        (now.worker_restarts, now.workers_running),
        (1, 1),
        "{now:?}"
    );
}

async fn next_health(
    watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) -> ServingStatus {
    let update = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .unwrap();
    ServingStatus::try_from(update.unwrap().unwrap().status).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_worker_able_to_run_health_is_not_serving_and_calls_fail_fast_until_one_is_back() {
    let faults = faults();
    faults.break_next_replica.store(true, Ordering::SeqCst);
    let server = serve_with(one_batch(), injected(&faults)).await;
    let channel = channel(&server).await;
    let mut health = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: "bert.v1.Encoder".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_health(&mut health).await, ServingStatus::Serving);

    // The replica breaks on this call's batch, and no replica can be loaded again.
    faults.refuse_loads.store(true, Ordering::SeqCst);
    let call = || async {
        EncoderClient::new(channel.clone())
            .encode(encode_request("x", vec![input("hello")], pb::Pooling::Mean))
            .await
    };
    let lost = tokio::time::timeout(PATIENCE, call())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(lost.code(), Code::Unavailable, "{lost:?}");
    assert!(lost.message().contains("injected: no device"), "{lost:?}");
    assert_eq!(next_health(&mut health).await, ServingStatus::NotServing);

    // Meanwhile calls are refused at once rather than queued.
    let refused = tokio::time::timeout(Duration::from_secs(1), call())
        .await
        .expect("answered at once")
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(stats(&channel).await.workers_running, 0);

    // A restart succeeds: serving again.
    faults.refuse_loads.store(false, Ordering::SeqCst);
    assert_eq!(next_health(&mut health).await, ServingStatus::Serving);
    assert!(call().await.is_ok());
}
