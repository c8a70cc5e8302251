//! The scheduler's rules, one test each.
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::engine::EmbedOptions;
use crate::model::Pooling;

fn config() -> SchedulerConfig {
    SchedulerConfig {
        max_batch_tokens: 1000,
        max_batch_size: 3,
        max_batch_delay: Duration::from_millis(5),
        queue_capacity: 8,
        stream_queue_capacity: 8,
    }
}

fn scheduler(config: SchedulerConfig) -> Scheduler {
    Scheduler::new(config, Arc::new(Stats::default()))
}

fn job(len: usize) -> NewJob {
    NewJob {
        tokens: Tokenized {
            ids: vec![1; len],
            type_ids: vec![0; len],
            original_length: len,
        },
        task: Task::Embed(EmbedOptions {
            pooling: Pooling::Mean,
            normalize: false,
            layer: 1,
            dimensions: None,
        }),
    }
}

fn lengths(batch: &[Job]) -> Vec<usize> {
    let mut l: Vec<usize> = batch.iter().map(|j| j.tokens.len()).collect();
    l.sort();
    l
}

#[tokio::test(start_paused = true)]
async fn a_batch_takes_inputs_of_similar_length_to_the_oldest() {
    let s = scheduler(config());
    let _rx = s
        .submit(
            vec![job(5), job(100), job(6), job(98), job(7)],
            Priority::Bulk,
            None,
        )
        .await
        .unwrap();
    assert_eq!(lengths(&s.next_batch().await.unwrap()), [5, 6, 7]);
    assert_eq!(lengths(&s.next_batch().await.unwrap()), [98, 100]);
}

#[tokio::test(start_paused = true)]
async fn a_batch_stays_within_the_padded_token_budget() {
    let s = scheduler(SchedulerConfig {
        max_batch_tokens: 25,
        ..config()
    });
    let _rx = s
        .submit(vec![job(10), job(10), job(12)], Priority::Bulk, None)
        .await
        .unwrap();
    // 3 x 12 padded tokens would exceed 25; 2 x 10 fit.
    assert_eq!(lengths(&s.next_batch().await.unwrap()), [10, 10]);
    assert_eq!(lengths(&s.next_batch().await.unwrap()), [12]);
}

#[tokio::test(start_paused = true)]
async fn unary_inputs_go_before_older_stream_inputs() {
    let s = scheduler(SchedulerConfig {
        max_batch_size: 1,
        ..config()
    });
    let _bulk = s
        .submit(vec![job(4), job(4)], Priority::Bulk, None)
        .await
        .unwrap();
    let _unary = s
        .submit(vec![job(50)], Priority::Interactive, None)
        .await
        .unwrap();
    assert_eq!(lengths(&s.next_batch().await.unwrap()), [50]);
    assert_eq!(lengths(&s.next_batch().await.unwrap()), [4]);
}

#[tokio::test(start_paused = true)]
async fn a_lone_input_waits_for_company_at_most_the_delay() {
    let s = scheduler(config());
    let start = Instant::now();
    let _rx = s
        .submit(vec![job(3)], Priority::Interactive, None)
        .await
        .unwrap();
    assert_eq!(s.next_batch().await.unwrap().len(), 1);
    assert_eq!(start.elapsed(), Duration::from_millis(5));
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_does_not_wait() {
    let s = scheduler(config());
    let start = Instant::now();
    let _rx = s
        .submit(vec![job(3), job(3), job(3)], Priority::Interactive, None)
        .await
        .unwrap();
    assert_eq!(s.next_batch().await.unwrap().len(), 3);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn inputs_of_callers_that_left_are_dropped_and_counted() {
    let s = scheduler(config());
    let gone = s
        .submit(vec![job(3), job(3)], Priority::Bulk, None)
        .await
        .unwrap();
    let _kept = s.submit(vec![job(9)], Priority::Bulk, None).await.unwrap();
    drop(gone);
    assert_eq!(lengths(&s.next_batch().await.unwrap()), [9]);
    assert_eq!(Stats::get(&s.stats().inputs_cancelled), 2);
    assert_eq!(s.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn inputs_past_their_deadline_fail_without_being_computed() {
    let s = scheduler(config());
    let deadline = Instant::now() + Duration::from_millis(1);
    let mut late = s
        .submit(vec![job(3)], Priority::Interactive, Some(deadline))
        .await
        .unwrap();
    let _on_time = s.submit(vec![job(4)], Priority::Bulk, None).await.unwrap();
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
    let _held = s
        .submit(
            (0..8).map(|_| job(2)).collect(),
            Priority::Interactive,
            None,
        )
        .await
        .unwrap();
    let refused = s.submit(vec![job(2)], Priority::Interactive, None).await;
    assert_eq!(refused.unwrap_err(), SubmitError::QueueFull { capacity: 8 });
    assert_eq!(Stats::get(&s.stats().requests_rejected), 1);

    let _bulk = s
        .submit((0..8).map(|_| job(2)).collect(), Priority::Bulk, None)
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let s = s.clone();
        async move {
            s.submit(vec![job(2)], Priority::Bulk, None)
                .await
                .map(|r| r.len())
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "a stream waits for room");
    // Handing out batches frees room.
    while s.queued() > 0 && !waiting.is_finished() {
        drop(s.next_batch().await);
        tokio::task::yield_now().await;
    }
    assert_eq!(waiting.await.unwrap(), Ok(1));
}

#[tokio::test(start_paused = true)]
async fn close_hands_out_what_is_queued_then_ends() {
    let s = scheduler(config());
    let _rx = s.submit(vec![job(3)], Priority::Bulk, None).await.unwrap();
    s.close();
    assert_eq!(
        s.submit(vec![job(3)], Priority::Interactive, None)
            .await
            .unwrap_err(),
        SubmitError::Closed
    );
    assert_eq!(s.next_batch().await.unwrap().len(), 1);
    assert!(s.next_batch().await.is_none());
}
