//! The queued inputs, by lane, and how a batch is cut out of them.
//!
//! - Unary calls share one FIFO lane; each stream has a FIFO of its own, and the streams take
//!   turns (round robin), so one huge stream cannot starve a small one.
//! - A batch is cut around an anchor: the oldest unary input, or, for the configured share of
//!   batches while unary calls also wait, the oldest input of the stream whose turn it is.
//! - The batch is the anchor's share of the cheapest cut of a window of candidates into batches
//!   (`cheapest_cut`): unary inputs only for a unary batch (so a short call never waits for a
//!   batch filled with stream inputs), every lane in turn for a stream's batch. A batch costs
//!   its padded tokens (inputs x the longest) plus a fixed cost per forward pass, so inputs of
//!   similar length go together and one long input is not padded onto many short ones unless
//!   a forward pass of its own would cost more. The rest stay queued, and are cut again with
//!   whatever arrives meanwhile.
use std::collections::VecDeque;
use std::ops::Range;

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
    /// What one forward pass costs besides its padded tokens, counted in padded tokens: the
    /// padding worth adding to a batch rather than computing its inputs in a batch of their own.
    pub forward_cost_tokens: usize,
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

        // The anchor's batch reaches fewer than `max_batch_size` candidates to either side of
        // it, and a cut further away barely moves it: the cut looks at twice that to either
        // side, which bounds its work when the limits are large.
        let reach = limits.max_batch_size.saturating_mul(2);
        let end = at
            .saturating_add(reach)
            .saturating_add(1)
            .min(candidates.len());
        let near = at.saturating_sub(reach)..end;
        let lengths: Vec<usize> = candidates[near.clone()].iter().map(|c| c.2).collect();
        let run = cheapest_cut(&lengths, &limits)
            .into_iter()
            .map(|run| run.start + near.start..run.end + near.start)
            .find(|run| run.contains(&at))
            .expect("the cut covers every candidate");

        let mut chosen: Vec<Vec<bool>> = lanes.iter().map(|_| Vec::new()).collect();
        for &(source, pos, _) in &candidates[run.clone()] {
            let marks = &mut chosen[source];
            if marks.len() <= pos {
                marks.resize(pos + 1, false);
            }
            marks[pos] = true;
        }
        let mut batch = Vec::with_capacity(run.len());
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

/// The cheapest cut of `lengths` (sorted, shortest first) into batches of neighbours, a batch
/// costing its padded tokens (count x longest) plus `forward_cost_tokens`: the batches' index
/// ranges, in order. Each batch stays within the limits, except that one input alone always
/// makes a batch. At equal cost it prefers longer batches (fewer forward passes).
///
/// Cutting the sorted list into runs is enough: some cheapest grouping of the inputs always
/// groups them in length order (tested against every grouping). The search (dynamic programming
/// over where the last batch starts) looks at most `max_batch_size` starts for each of the
/// window's candidates: tens of thousands of steps, microseconds against a forward pass of
/// milliseconds. Costs are counted in `u128`: a forward cost of `usize::MAX` (batches cut only by
/// the limits) stays exact.
fn cheapest_cut(lengths: &[usize], limits: &BatchLimits) -> Vec<Range<usize>> {
    let n = lengths.len();
    // cost[k]: the least cost of the first k candidates; start[k]: where its last batch starts.
    let mut cost = vec![u128::MAX; n + 1];
    let mut start = vec![0; n + 1];
    cost[0] = 0;
    for last in 0..n {
        for first in (0..=last).rev() {
            let count = last - first + 1;
            let padded = lengths[last] * count;
            if count > 1 && (count > limits.max_batch_size || padded > limits.max_batch_tokens) {
                break;
            }
            let total = cost[first] + limits.forward_cost_tokens as u128 + padded as u128;
            if total <= cost[last + 1] {
                cost[last + 1] = total;
                start[last + 1] = first;
            }
        }
    }
    let mut runs = Vec::new();
    let mut end = n;
    while end > 0 {
        runs.push(start[end]..end);
        end = start[end];
    }
    runs.reverse();
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Not what the server defaults to: round numbers that make the arithmetic below plain.
    const FORWARD_COST: usize = 30;

    fn limits(max_batch_size: usize, max_batch_tokens: usize) -> BatchLimits {
        BatchLimits {
            max_batch_size,
            max_batch_tokens,
            window: 64,
            forward_cost_tokens: FORWARD_COST,
            stream_share: 0.0,
        }
    }

    /// The lengths in each batch of the cheapest cut.
    fn cut(lengths: &[usize], limits: &BatchLimits) -> Vec<Vec<usize>> {
        cheapest_cut(lengths, limits)
            .into_iter()
            .map(|run| lengths[run].to_vec())
            .collect()
    }

    fn cost(lengths: &[usize], batches: &[Vec<usize>]) -> usize {
        batches
            .iter()
            .map(|b| FORWARD_COST + b.len() * b.iter().map(|&i| lengths[i]).max().unwrap())
            .sum()
    }

    /// Every way to group `0..n` into batches within the limits (any grouping, not only runs).
    fn every_grouping(lengths: &[usize], l: &BatchLimits) -> Vec<Vec<Vec<usize>>> {
        let mut all = vec![Vec::<Vec<usize>>::new()];
        for i in 0..lengths.len() {
            let mut next = Vec::new();
            for grouping in &all {
                for b in 0..=grouping.len() {
                    let mut g = grouping.clone();
                    if b == g.len() {
                        g.push(vec![i]);
                    } else {
                        g[b].push(i);
                    }
                    let batch = &g[b];
                    let longest = batch.iter().map(|&j| lengths[j]).max().unwrap();
                    if batch.len() <= l.max_batch_size
                        && batch.len() * longest <= l.max_batch_tokens
                    {
                        next.push(g);
                    }
                }
            }
            all = next;
        }
        all
    }

    #[test]
    fn one_long_input_is_not_padded_onto_short_ones() {
        // Together: 30 + 4 x 100 = 430 padded tokens' worth; apart: 30 + 3 x 10 + 30 + 100 = 190.
        assert_eq!(
            cut(&[10, 10, 10, 100], &limits(8, 1_000)),
            [vec![10, 10, 10], vec![100]]
        );
    }

    #[test]
    fn inputs_go_together_while_their_padding_costs_less_than_a_forward_pass() {
        // Together: 30 + 2 x 25 = 80; apart: 30 + 10 + 30 + 25 = 95.
        assert_eq!(cut(&[10, 25], &limits(8, 1_000)), [vec![10, 25]]);
        // Together: 30 + 2 x 60 = 150; apart: 30 + 10 + 30 + 60 = 130.
        assert_eq!(cut(&[10, 60], &limits(8, 1_000)), [vec![10], vec![60]]);
    }

    #[test]
    fn at_equal_cost_fewer_forward_passes_are_taken() {
        let free = BatchLimits {
            forward_cost_tokens: 0,
            ..limits(8, 1_000)
        };
        assert_eq!(cut(&[7, 7, 7], &free), [vec![7, 7, 7]]);
    }

    #[test]
    fn a_forward_cost_past_any_padding_cuts_only_at_the_limits_and_does_not_overflow() {
        let dear = BatchLimits {
            forward_cost_tokens: usize::MAX,
            ..limits(2, 1_000)
        };
        assert_eq!(
            cut(&[1, 2, 500, 900], &dear),
            [vec![1, 2], vec![500], vec![900]]
        );
    }

    #[test]
    fn one_input_past_the_token_budget_still_makes_a_batch() {
        assert_eq!(cut(&[5, 50], &limits(8, 20)), [vec![5], vec![50]]);
    }

    proptest! {
        #[test]
        fn the_cut_costs_no_more_than_any_grouping_of_the_inputs(
            mut lengths in proptest::collection::vec(1usize..120, 1..8),
            max_batch_size in 1usize..5,
        ) {
            lengths.sort_unstable();
            let l = limits(max_batch_size, 256);
            let cut = cheapest_cut(&lengths, &l);
            let runs: Vec<Vec<usize>> = cut.iter().map(|r| r.clone().collect()).collect();
            prop_assert_eq!(runs.concat(), (0..lengths.len()).collect::<Vec<_>>());
            for run in &runs {
                prop_assert!(run.len() <= max_batch_size);
                prop_assert!(run.len() * lengths[*run.last().unwrap()] <= 256);
            }
            let best = every_grouping(&lengths, &l).iter().map(|g| cost(&lengths, g)).min().unwrap();
            prop_assert_eq!(cost(&lengths, &runs), best);
        }
    }
}
