//! The batch layer's rules, one test each: the scheduler's (admission, length grouping, fairness,
//! deadlines), the worker loop's failure isolation against a fake engine, and the pool's
//! supervision.
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::pool::{LoadReplica, PoolConfig, WorkerPool};
use super::worker::run_batch;
use super::*;
use crate::engine::{Compute, EmbedOptions, EngineInput};
use crate::model::Pooling;

fn config() -> SchedulerConfig {
    SchedulerConfig {
        max_batch_tokens: 1000,
        max_batch_size: 3,
        forward_cost_tokens: 32,
        max_batch_delay: Duration::from_millis(5),
        queue_capacity: 8,
        stream_queue_capacity: 8,
        stream_share: 0.25,
    }
}

fn scheduler(config: SchedulerConfig) -> Scheduler {
    Scheduler::new(config, Arc::new(Stats::default()))
}

const TASK: Task = Task::Embed(EmbedOptions {
    pooling: Pooling::Mean,
    normalize: false,
    layer: 1,
    dimensions: None,
});

/// An input of `len` tokens whose first id is `tag`, so that results can be traced to it.
fn tagged(len: usize, tag: i64) -> NewJob {
    let mut ids = vec![1; len];
    ids[0] = tag;
    NewJob {
        tokens: Tokenized {
            ids,
            type_ids: vec![0; len],
            original_length: len,
        },
        task: TASK,
    }
}

fn job(len: usize) -> NewJob {
    tagged(len, 1)
}

fn lengths(batch: &[Job]) -> Vec<usize> {
    let mut l: Vec<usize> = batch.iter().map(|j| j.tokens.len()).collect();
    l.sort();
    l
}

/// Admits and queues `jobs` on `lane`, waiting for room if it is a stream's.
async fn submit(
    s: &Scheduler,
    lane: Lane,
    jobs: Vec<NewJob>,
    deadline: Option<Instant>,
) -> Result<Vec<oneshot::Receiver<JobResult>>, SubmitError> {
    let admission = match lane {
        Lane::Interactive => s.try_admit(jobs.len())?,
        Lane::Stream(_) => s.admit(lane, jobs.len()).await?,
    };
    s.submit(admission, jobs, deadline)
}

#[tokio::test(start_paused = true)]
async fn a_batch_takes_inputs_of_similar_length_to_the_oldest() {
    let s = scheduler(config());
    let lane = s.stream_lane();
    let jobs = vec![job(5), job(100), job(6), job(98), job(7)];
    let _rx = submit(&s, lane, jobs, None).await.unwrap();
    assert_eq!(lengths(&s.next_batch().await.unwrap()), [5, 6, 7]);
    assert_eq!(lengths(&s.next_batch().await.unwrap()), [98, 100]);
}

#[tokio::test(start_paused = true)]
async fn a_batch_stays_within_the_padded_token_budget() {
    let s = scheduler(SchedulerConfig {
        max_batch_tokens: 25,
        ..config()
    });
    let lane = s.stream_lane();
    let _rx = submit(&s, lane, vec![job(10), job(10), job(12)], None)
        .await
        .unwrap();
    // 3 x 12 padded tokens would exceed 25; 2 x 10 fit.
    assert_eq!(lengths(&s.next_batch().await.unwrap()), [10, 10]);
    assert_eq!(lengths(&s.next_batch().await.unwrap()), [12]);
}

#[tokio::test(start_paused = true)]
async fn a_long_input_is_not_padded_onto_the_short_ones_queued_with_it() {
    // One batch would be 4 x 100 padded tokens; three of 10 and one of 100 apart cost two
    // forward passes (2 x 32 tokens' worth) and 130 tokens.
    let s = scheduler(SchedulerConfig {
        max_batch_size: 8,
        ..config()
    });
    let jobs = vec![job(10), job(100), job(10), job(10)];
    let _rx = submit(&s, Lane::Interactive, jobs, None).await.unwrap();
    assert_eq!(lengths(&s.next_batch().await.unwrap()), [10, 10, 10]);
    assert_eq!(lengths(&s.next_batch().await.unwrap()), [100]);
}

#[tokio::test(start_paused = true)]
async fn unary_inputs_go_before_older_stream_inputs() {
    let s = scheduler(SchedulerConfig {
        max_batch_size: 1,
        stream_share: 0.0,
        ..config()
    });
    let lane = s.stream_lane();
    let _bulk = submit(&s, lane, vec![job(4), job(4)], None).await.unwrap();
    let _unary = submit(&s, Lane::Interactive, vec![job(50)], None)
        .await
        .unwrap();
    assert_eq!(lengths(&s.next_batch().await.unwrap()), [50]);
    assert_eq!(lengths(&s.next_batch().await.unwrap()), [4]);
}

#[tokio::test(start_paused = true)]
async fn a_unary_batch_is_not_filled_with_stream_inputs_but_a_stream_batch_takes_unary_ones() {
    let s = scheduler(SchedulerConfig {
        max_batch_size: 8,
        stream_share: 0.5,
        stream_queue_capacity: 16,
        ..config()
    });
    let lane = s.stream_lane();
    let _bulk = submit(&s, lane, (0..6).map(|_| job(4)).collect(), None)
        .await
        .unwrap();
    let _unary = submit(&s, Lane::Interactive, vec![job(4), job(4), job(4)], None)
        .await
        .unwrap();
    let unary_batch = s.next_batch().await.unwrap();
    assert!(unary_batch.iter().all(|j| j.lane == Lane::Interactive));
    assert_eq!(unary_batch.len(), 3);
    let _more_unary = submit(&s, Lane::Interactive, vec![job(4)], None)
        .await
        .unwrap();
    let stream_batch = s.next_batch().await.unwrap();
    assert_eq!(stream_batch.len(), 7, "six stream inputs and the unary one");
}

#[tokio::test(start_paused = true)]
async fn streams_anchor_their_share_of_batches_while_unary_calls_wait() {
    const BATCHES: usize = 8;
    let share = 0.25;
    let s = scheduler(SchedulerConfig {
        max_batch_size: 1,
        queue_capacity: 16,
        stream_queue_capacity: 16,
        stream_share: share,
        ..config()
    });
    let lane = s.stream_lane();
    let _bulk = submit(&s, lane, (0..BATCHES).map(|_| job(4)).collect(), None)
        .await
        .unwrap();
    let _unary = submit(
        &s,
        Lane::Interactive,
        (0..BATCHES).map(|_| job(4)).collect(),
        None,
    )
    .await
    .unwrap();
    let mut from_streams = 0;
    for _ in 0..BATCHES {
        let batch = s.next_batch().await.unwrap();
        from_streams += batch.iter().filter(|j| j.lane == lane).count();
    }
    assert_eq!(from_streams, (BATCHES as f64 * share) as usize);
}

#[tokio::test(start_paused = true)]
async fn streams_take_turns_so_a_large_stream_does_not_starve_a_small_one() {
    let s = scheduler(SchedulerConfig {
        max_batch_size: 1,
        stream_queue_capacity: 64,
        ..config()
    });
    let (large, small) = (s.stream_lane(), s.stream_lane());
    let _large = submit(&s, large, (0..50).map(|_| job(4)).collect(), None)
        .await
        .unwrap();
    let _small = submit(&s, small, vec![job(4), job(4)], None).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(s.next_batch().await.unwrap()[0].lane);
    }
    assert_eq!(order, [large, small, large, small]);
}

#[tokio::test(start_paused = true)]
async fn a_lone_input_waits_for_company_at_most_the_delay() {
    let s = scheduler(config());
    let start = Instant::now();
    let _rx = submit(&s, Lane::Interactive, vec![job(3)], None)
        .await
        .unwrap();
    assert_eq!(s.next_batch().await.unwrap().len(), 1);
    assert_eq!(start.elapsed(), Duration::from_millis(5));
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_does_not_wait() {
    let s = scheduler(config());
    let start = Instant::now();
    let _rx = submit(&s, Lane::Interactive, vec![job(3), job(3), job(3)], None)
        .await
        .unwrap();
    assert_eq!(s.next_batch().await.unwrap().len(), 3);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn inputs_of_callers_that_left_are_dropped_and_counted() {
    let s = scheduler(config());
    let lane = s.stream_lane();
    let gone = submit(&s, lane, vec![job(3), job(3)], None).await.unwrap();
    let _kept = submit(&s, lane, vec![job(9)], None).await.unwrap();
    drop(gone);
    assert_eq!(lengths(&s.next_batch().await.unwrap()), [9]);
    assert_eq!(Stats::get(&s.stats().inputs_cancelled), 2);
    assert_eq!(s.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn inputs_past_their_deadline_fail_without_being_computed() {
    let s = scheduler(config());
    let deadline = Instant::now() + Duration::from_millis(1);
    let mut late = submit(&s, Lane::Interactive, vec![job(3)], Some(deadline))
        .await
        .unwrap();
    let lane = s.stream_lane();
    let _on_time = submit(&s, lane, vec![job(4)], None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(lengths(&s.next_batch().await.unwrap()), [4]);
    assert_eq!(
        late.remove(0).await.unwrap(),
        Err(JobError::DeadlineExceeded)
    );
    assert_eq!(Stats::get(&s.stats().inputs_expired), 1);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_unary_calls_at_once_and_makes_streams_wait() {
    let s = Arc::new(scheduler(config()));
    let _held = submit(
        &s,
        Lane::Interactive,
        (0..8).map(|_| job(2)).collect(),
        None,
    )
    .await
    .unwrap();
    let refused = s.try_admit(1).err();
    assert_eq!(refused, Some(SubmitError::QueueFull { capacity: 8 }));
    assert_eq!(Stats::get(&s.stats().requests_rejected), 1);

    let lane = s.stream_lane();
    let _bulk = submit(&s, lane, (0..8).map(|_| job(2)).collect(), None)
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let s = s.clone();
        async move { s.admit(lane, 1).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "a stream waits for room");
    // Handing out batches frees room.
    while s.queued() > 0 && !waiting.is_finished() {
        drop(s.next_batch().await);
        tokio::task::yield_now().await;
    }
    assert_eq!(waiting.await.unwrap(), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn close_hands_out_what_is_queued_then_ends() {
    let s = scheduler(config());
    let lane = s.stream_lane();
    let _rx = submit(&s, lane, vec![job(3)], None).await.unwrap();
    s.close();
    assert_eq!(s.try_admit(1).err(), Some(SubmitError::Closed));
    assert_eq!(s.next_batch().await.unwrap().len(), 1);
    assert!(s.next_batch().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn while_no_worker_can_run_queued_inputs_fail_at_once_and_new_ones_are_refused() {
    let s = scheduler(config());
    let mut queued = submit(&s, Lane::Interactive, vec![job(3)], None)
        .await
        .unwrap();
    s.set_unavailable("device lost".into());
    assert_eq!(
        queued.remove(0).await.unwrap(),
        Err(JobError::Unavailable("device lost".into()))
    );
    assert_eq!(s.queued(), 0);
    assert_eq!(
        s.try_admit(1).err(),
        Some(SubmitError::Unavailable("device lost".into()))
    );
    s.set_available();
    assert!(
        submit(&s, Lane::Interactive, vec![job(3)], None)
            .await
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn inputs_given_back_go_first_and_fail_if_given_back_twice() {
    let s = scheduler(config());
    let mut first = submit(&s, Lane::Interactive, vec![job(3)], None)
        .await
        .unwrap();
    let batch = s.next_batch().await.unwrap();
    let _later = submit(&s, Lane::Interactive, vec![job(3)], None)
        .await
        .unwrap();
    s.requeue(batch, "replica lost");
    let again = s.next_batch().await.unwrap();
    assert!(again[0].requeued, "the given-back input comes first");
    assert!(!again[1].requeued);
    s.requeue(again, "replica lost");
    assert!(matches!(
        first.remove(0).await.unwrap(),
        Err(JobError::Engine(EngineError::Compute(m))) if m.contains("two model replicas broke")
    ));
}

/// A model replica that computes whatever `behave` says; its output is each input's tag.
struct Fake<F>(F);

impl<F> Compute for Fake<F>
where
    F: Fn(&[EngineInput]) -> Result<Vec<Output>, EngineError>,
{
    fn check(&self, _: usize, _: &EngineInput) -> Result<(), EngineError> {
        Ok(())
    }

    fn run(&self, batch: &[EngineInput]) -> Result<Vec<Output>, EngineError> {
        (self.0)(batch)
    }
}

fn tags(batch: &[EngineInput]) -> Vec<Output> {
    batch
        .iter()
        .map(|i| Output::Embedding(vec![i.tokens.ids[0] as f32]))
        .collect()
}

const POISON: i64 = 666;

fn has_poison(batch: &[EngineInput]) -> bool {
    batch.iter().any(|i| i.tokens.ids[0] == POISON)
}

/// Queues inputs tagged 0..n (and `POISON` at `poison`), takes them as one batch and runs it.
async fn run_tagged(
    s: &Scheduler,
    compute: &dyn Compute,
    n: usize,
    poison: Option<usize>,
) -> (Result<(), String>, Vec<JobResult>) {
    let jobs = (0..n)
        .map(|i| tagged(3, if Some(i) == poison { POISON } else { i as i64 }))
        .collect();
    let receivers = submit(s, Lane::Interactive, jobs, None).await.unwrap();
    let batch = s.next_batch().await.unwrap();
    assert_eq!(batch.len(), n);
    let outcome = run_batch(compute, s, batch, "cpu");
    let mut results = Vec::new();
    for rx in receivers {
        results.push(match rx.await {
            Ok(result) => result,
            Err(_) => Err(JobError::Unavailable("no reply".into())),
        });
    }
    (outcome, results)
}

fn big() -> SchedulerConfig {
    SchedulerConfig {
        max_batch_size: 8,
        ..config()
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_batch_is_split_until_only_the_failing_input_fails() {
    let s = scheduler(big());
    let engine = Fake(|b: &[EngineInput]| {
        if has_poison(b) {
            Err(EngineError::Compute("bad input".into()))
        } else {
            Ok(tags(b))
        }
    });
    let (outcome, results) = run_tagged(&s, &engine, 8, Some(5)).await;
    assert_eq!(outcome, Ok(()));
    for (i, result) in results.iter().enumerate() {
        if i == 5 {
            assert_eq!(
                result,
                &Err(JobError::Engine(EngineError::Compute("bad input".into())))
            );
        } else {
            assert_eq!(result, &Ok(Output::Embedding(vec![i as f32])), "input {i}");
        }
    }
    assert_eq!(Stats::get(&s.stats().inputs_failed), 1);
    assert_eq!(Stats::get(&s.stats().inputs_computed), 7);
    // 8 → 4 + 4 → 2 + 2 → 1 + 1: three splits on the way down to the poison.
    assert_eq!(Stats::get(&s.stats().batches_split), 3);
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_the_engine_fails_only_the_input_that_causes_it() {
    let s = scheduler(big());
    let engine = Fake(|b: &[EngineInput]| {
        if has_poison(b) {
            panic!("libtorch exploded");
        }
        Ok(tags(b))
    });
    let (outcome, results) = run_tagged(&s, &engine, 4, Some(0)).await;
    assert_eq!(outcome, Ok(()));
    assert!(matches!(
        &results[0],
        Err(JobError::Engine(EngineError::Compute(m))) if m == "libtorch exploded"
    ));
    assert!(results[1..].iter().all(Result::is_ok));
}

#[tokio::test(start_paused = true)]
async fn a_batch_too_large_for_memory_is_computed_in_smaller_parts() {
    let s = scheduler(big());
    let engine = Fake(|b: &[EngineInput]| {
        if b.len() > 2 {
            Err(EngineError::Compute("CUDA out of memory".into()))
        } else {
            Ok(tags(b))
        }
    });
    let (outcome, results) = run_tagged(&s, &engine, 8, None).await;
    assert_eq!(outcome, Ok(()));
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result, &Ok(Output::Embedding(vec![i as f32])));
    }
    assert_eq!(Stats::get(&s.stats().inputs_failed), 0);
}

#[tokio::test(start_paused = true)]
async fn an_engine_that_loses_outputs_fails_the_inputs_not_the_thread() {
    let s = scheduler(big());
    let engine = Fake(|_: &[EngineInput]| Ok(Vec::new()));
    let (outcome, results) = run_tagged(&s, &engine, 2, None).await;
    assert_eq!(outcome, Ok(()));
    for result in results {
        assert!(matches!(
            result,
            Err(JobError::Engine(EngineError::Compute(m))) if m.contains("returned 0 outputs for 1 inputs")
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn a_broken_replica_gives_its_inputs_back_and_stops_its_worker() {
    let s = scheduler(big());
    let engine = Fake(|_: &[EngineInput]| Err(EngineError::Broken("device lost".into())));
    let receivers = submit(&s, Lane::Interactive, vec![job(3), job(3)], None)
        .await
        .unwrap();
    let batch = s.next_batch().await.unwrap();
    assert_eq!(
        run_batch(&engine, &s, batch, "cpu"),
        Err("device lost".to_string())
    );
    assert_eq!(s.queued(), 2, "both inputs wait for another worker");
    drop(receivers);
}

/// Replicas that do what the test says, and count how often they were loaded.
struct Replicas {
    loads: AtomicUsize,
    /// Replicas loaded while this is true break on their first batch.
    break_next: AtomicBool,
    /// Loads fail while this is true.
    refuse_loads: AtomicBool,
}

impl Replicas {
    fn new() -> Arc<Self> {
        Arc::new(Replicas {
            loads: AtomicUsize::new(0),
            break_next: AtomicBool::new(false),
            refuse_loads: AtomicBool::new(false),
        })
    }

    fn loader(self: &Arc<Self>) -> LoadReplica {
        let replicas = self.clone();
        Arc::new(move |_| {
            replicas.loads.fetch_add(1, Ordering::SeqCst);
            if replicas.refuse_loads.load(Ordering::SeqCst) {
                return Err("no device".to_string());
            }
            let breaks = Mutex::new(replicas.break_next.swap(false, Ordering::SeqCst));
            Ok(Box::new(Fake(move |b: &[EngineInput]| {
                if std::mem::take(&mut *breaks.lock().unwrap()) {
                    Err(EngineError::Broken("device lost".into()))
                } else {
                    Ok(tags(b))
                }
            })) as Box<dyn Compute>)
        })
    }
}

const SUPERVISION_TIMEOUT: Duration = Duration::from_secs(10);

fn pool_config() -> PoolConfig {
    PoolConfig {
        devices: vec!["cpu".into()],
        restart_backoff: Duration::from_millis(10),
        max_restart_backoff: Duration::from_millis(50),
    }
}

fn start_pool(s: &Arc<Scheduler>, replicas: &Arc<Replicas>) -> WorkerPool {
    WorkerPool::start(
        pool_config(),
        replicas.loader(),
        s.clone(),
        tokio::runtime::Handle::current(),
    )
}

/// Closes the scheduler and checks that the pool ends.
async fn close(s: &Scheduler, pool: WorkerPool) {
    s.close();
    let joined = tokio::task::spawn_blocking(move || pool.join(SUPERVISION_TIMEOUT));
    assert!(
        joined.await.unwrap(),
        "the pool ends once the scheduler is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_replica_breaks_is_restarted_and_its_inputs_answered() {
    let s = Arc::new(scheduler(big()));
    let replicas = Replicas::new();
    replicas.break_next.store(true, Ordering::SeqCst);
    let mut pool = start_pool(&s, &replicas);
    pool.ready().await.unwrap();
    let receivers = submit(
        &s,
        Lane::Interactive,
        vec![tagged(3, 7), tagged(3, 8)],
        None,
    )
    .await
    .unwrap();
    for (rx, tag) in receivers.into_iter().zip([7.0, 8.0]) {
        let result = tokio::time::timeout(SUPERVISION_TIMEOUT, rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(result, Ok(Output::Embedding(vec![tag])));
    }
    assert_eq!(Stats::get(&s.stats().worker_restarts), 1);
    assert_eq!(replicas.loads.load(Ordering::SeqCst), 2);
    close(&s, pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_worker_running_inputs_fail_fast_until_a_worker_is_back() {
    let s = Arc::new(scheduler(big()));
    let replicas = Replicas::new();
    replicas.break_next.store(true, Ordering::SeqCst);
    let mut pool = start_pool(&s, &replicas);
    pool.ready().await.unwrap();
    let mut status = pool.status();
    replicas.refuse_loads.store(true, Ordering::SeqCst);
    // The replica breaks on this input; it is given back, and fails once the worker cannot be
    // started again.
    let mut lost = submit(&s, Lane::Interactive, vec![job(3)], None)
        .await
        .unwrap();
    let result = tokio::time::timeout(SUPERVISION_TIMEOUT, lost.remove(0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result, Err(JobError::Unavailable("no device".into())));
    tokio::time::timeout(SUPERVISION_TIMEOUT, status.wait_for(|s| s.unavailable))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.borrow().running, 0);
    assert!(matches!(s.try_admit(1), Err(SubmitError::Unavailable(_))));
    // Restarts keep being tried; once one succeeds the pool serves again.
    replicas.refuse_loads.store(false, Ordering::SeqCst);
    tokio::time::timeout(SUPERVISION_TIMEOUT, status.wait_for(|s| !s.unavailable))
        .await
        .unwrap()
        .unwrap();
    let mut back = submit(&s, Lane::Interactive, vec![tagged(3, 9)], None)
        .await
        .unwrap();
    assert_eq!(
        back.remove(0).await.unwrap(),
        Ok(Output::Embedding(vec![9.0]))
    );
    assert!(replicas.loads.load(Ordering::SeqCst) >= 3);
    close(&s, pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_fails_with_the_first_worker_that_cannot_load() {
    let s = Arc::new(scheduler(big()));
    let replicas = Replicas::new();
    replicas.refuse_loads.store(true, Ordering::SeqCst);
    let mut pool = start_pool(&s, &replicas);
    assert_eq!(pool.ready().await, Err("no device".to_string()));
    assert_eq!(replicas.loads.load(Ordering::SeqCst), 1, "not retried");
    assert!(s.is_closed());
}
