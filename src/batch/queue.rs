//! The queued inputs, by lane, and how a batch is cut out of them.
//!
//! - Unary calls share one FIFO lane; each stream has a FIFO of its own, and the streams take
//!   turns (round robin), so one huge stream cannot starve a small one.
//! - A batch grows around an anchor: the oldest unary input, or, for the configured share of
//!   batches while unary calls also wait, the oldest input of the stream whose turn it is.
//! - Around the anchor it takes the queued inputs nearest in length (padding is wasted work),
//!   within the batch limits, from a window of candidates: unary inputs only for a unary batch
//!   (so a short call never waits for a batch filled with stream inputs), every lane in turn for
//!   a stream's batch.
use std::collections::VecDeque;

use super::{Job, StreamId};

/// A stream's queued inputs.
pub struct StreamQueue {
    pub id: StreamId,
    pub jobs: VecDeque<Job>,
}

#[derive(Default)]
pub struct Queues {
    pub interactive: VecDeque<Job>,
    /// Streams with queued inputs; the front one has the next turn.
    pub streams: VecDeque<StreamQueue>,
    /// Batches owed to streams: grows by the stream share for each batch taken while both kinds
    /// wait, and a stream anchors the batch whenever it reaches one.
    stream_credit: f64,
}

/// Limits of one batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    /// Candidates looked at for length grouping.
    pub window: usize,
    pub stream_share: f64,
}

/// Where a candidate waits: 0 is the unary lane, k + 1 the k-th stream.
type Source = usize;

impl Queues {
    pub fn len(&self) -> usize {
        self.interactive.len() + self.streams.iter().map(|s| s.jobs.len()).sum::<usize>()
    }

    pub fn push(&mut self, job: Job) {
        match job.lane {
            super::Lane::Interactive => self.interactive.push_back(job),
            super::Lane::Stream(id) => self.stream_mut(id).jobs.push_back(job),
        }
    }

    /// Puts inputs back at the head of their lanes, ahead of everything queued.
    pub fn push_front(&mut self, jobs: Vec<Job>) {
        for job in jobs.into_iter().rev() {
            match job.lane {
                super::Lane::Interactive => self.interactive.push_front(job),
                super::Lane::Stream(id) => self.stream_mut(id).jobs.push_front(job),
            }
        }
    }

    fn stream_mut(&mut self, id: StreamId) -> &mut StreamQueue {
        let at = match self.streams.iter().position(|s| s.id == id) {
            Some(at) => at,
            None => {
                self.streams.push_back(StreamQueue {
                    id,
                    jobs: VecDeque::new(),
                });
                self.streams.len() - 1
            }
        };
        &mut self.streams[at]
    }

    pub fn all_jobs(&self) -> impl Iterator<Item = &Job> {
        self.interactive
            .iter()
            .chain(self.streams.iter().flat_map(|s| s.jobs.iter()))
    }

    /// Removes every job for which `drop` says so (it takes the job), keeping the others' order.
    pub fn retain(&mut self, mut keep: impl FnMut(&Job) -> bool, mut dropped: impl FnMut(Job)) {
        let lanes = std::iter::once(&mut self.interactive)
            .chain(self.streams.iter_mut().map(|s| &mut s.jobs));
        for lane in lanes {
            if lane.iter().all(&mut keep) {
                continue;
            }
            for job in std::mem::take(lane) {
                if keep(&job) {
                    lane.push_back(job);
                } else {
                    dropped(job);
                }
            }
        }
        self.streams.retain(|s| !s.jobs.is_empty());
    }

    /// When the input that would anchor the next batch arrived (the oldest at any lane's head).
    pub fn oldest_arrival(&self) -> Option<tokio::time::Instant> {
        std::iter::once(self.interactive.front())
            .chain(self.streams.iter().map(|s| s.jobs.front()))
            .flatten()
            .map(|j| j.enqueued)
            .min()
    }

    fn anchor_is_stream(&mut self, share: f64) -> bool {
        match (self.interactive.is_empty(), self.streams.is_empty()) {
            (false, true) => false,
            (true, false) => true,
            _ => {
                self.stream_credit += share;
                if self.stream_credit >= 1.0 {
                    self.stream_credit -= 1.0;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Takes the next batch; the queues must not be empty.
    pub fn take_batch(&mut self, limits: BatchLimits) -> Vec<Job> {
        let stream_anchor = self.anchor_is_stream(limits.stream_share);
        let anchor_source: Source = if stream_anchor { 1 } else { 0 };

        // Candidates (source, position, length), drawn from every lane in turn.
        let lanes: Vec<&VecDeque<Job>> = std::iter::once(&self.interactive)
            .chain(self.streams.iter().map(|s| &s.jobs))
            .collect();
        let mut candidates: Vec<(Source, usize, usize)> = Vec::new();
        let mut depth = 0;
        // A unary batch holds unary inputs only: on a CPU a batch costs about its tokens, and a
        // short call should not wait for a batch filled up with a stream's inputs. A stream's
        // batch takes unary inputs of similar length too: they are served sooner.
        let sources = if stream_anchor { lanes.len() } else { 1 };
        while candidates.len() < limits.window {
            let before = candidates.len();
            for (source, lane) in lanes.iter().enumerate().take(sources) {
                if let Some(job) = lane.get(depth)
                    && candidates.len() < limits.window
                {
                    candidates.push((source, depth, job.tokens.len()));
                }
            }
            if candidates.len() == before {
                break;
            }
            depth += 1;
        }
        let anchor = (
            anchor_source,
            0,
            lanes[anchor_source]
                .front()
                .expect("the anchor lane has inputs")
                .tokens
                .len(),
        );
        // Nearest lengths first; at equal lengths unary inputs, then the older.
        candidates.sort_by_key(|&(source, pos, len)| (len, source, pos));
        let at = candidates
            .iter()
            .position(|c| *c == anchor)
            .expect("the anchor is a candidate");

        // Grow a run of the sorted candidates around the anchor, nearest length first.
        let (mut lo, mut hi) = (at, at);
        let fits = |lo: usize, hi: usize| {
            let count = hi - lo + 1;
            count <= limits.max_batch_size && candidates[hi].2 * count <= limits.max_batch_tokens
        };
        loop {
            let left = (lo > 0 && fits(lo - 1, hi)).then(|| anchor.2 - candidates[lo - 1].2);
            let right = (hi + 1 < candidates.len() && fits(lo, hi + 1))
                .then(|| candidates[hi + 1].2 - anchor.2);
            match (left, right) {
                (Some(l), Some(r)) if l <= r => lo -= 1,
                (Some(_), None) => lo -= 1,
                (_, Some(_)) => hi += 1,
                (None, None) => break,
            }
        }

        let mut chosen: Vec<Vec<bool>> = lanes.iter().map(|_| Vec::new()).collect();
        for &(source, pos, _) in &candidates[lo..=hi] {
            let marks = &mut chosen[source];
            if marks.len() <= pos {
                marks.resize(pos + 1, false);
            }
            marks[pos] = true;
        }
        let mut batch = Vec::with_capacity(hi - lo + 1);
        take_chosen(&mut self.interactive, &chosen[0], &mut batch);
        for (stream, marks) in self.streams.iter_mut().zip(&chosen[1..]) {
            take_chosen(&mut stream.jobs, marks, &mut batch);
        }
        // The anchoring stream has had its turn: it goes to the back of the line.
        if stream_anchor && let Some(front) = self.streams.pop_front() {
            self.streams.push_back(front);
        }
        self.streams.retain(|s| !s.jobs.is_empty());
        batch
    }
}

/// Moves the chosen jobs among the first `chosen.len()` of `queue` into `batch`, keeping the
/// order of the rest.
fn take_chosen(queue: &mut VecDeque<Job>, chosen: &[bool], batch: &mut Vec<Job>) {
    if !chosen.contains(&true) {
        return;
    }
    let head: Vec<Job> = queue.drain(..chosen.len()).collect();
    let mut kept = Vec::new();
    for (job, &take) in head.into_iter().zip(chosen) {
        if take {
            batch.push(job);
        } else {
            kept.push(job);
        }
    }
    for job in kept.into_iter().rev() {
        queue.push_front(job);
    }
}
