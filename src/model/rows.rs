//! How many rows a batch's dense layers compute: its tokens (inputs × longest input), rounded up
//! to a bucket where oneDNN computes the products.
//!
//! Why buckets: oneDNN builds (compiles at run time) a kernel for each product shape and row
//! count at its first use, keeps up to 1,024 of them in its primitive cache, and each holds
//! about half a MiB to a MiB. With exact row counts, traffic whose batches take many shapes
//! (unary calls, one text each) builds kernels for nearly every count up to the token budget:
//! three shapes × 1,024 counts overflow the cache, kernels are evicted and built again (1 ms
//! each in fp32, 6-10 ms in bf16), and the memory the evicted ones freed stays in the
//! allocator's heap, so resident memory grows by gigabytes (BENCHMARKS.md, "Memory under many
//! unary calls"). Buckets bound the kernels, and so the memory, by the number of buckets.
//!
//! Policy (`Geometric`): a count's step is a sixteenth of the largest power of two at or below
//! it, and never less than `min_step`. So there are 16 buckets per doubling of the count, a
//! batch computes at most 1/16 (6.25%) more rows than it has tokens (1.5% on the realistic
//! corpus), and the CPU's 1,024-token budget has 112 buckets in fp32 (`min_step` 1) and 48 in
//! bf16 (`min_step` 16, an AMX tile's rows). Doubling the budget adds 16.
//!
//! Invariant: a bucket is its own bucket (`rows(rows(n)) == rows(n)`), so the counts that
//! [`RowBuckets::representatives`] lists build exactly the kernels traffic will use.

/// Buckets per doubling of the row count.
const BUCKETS_PER_DOUBLING: i64 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowBuckets {
    /// Every count computed as it is: cuBLAS and MKL build nothing per shape.
    Exact,
    /// Counts rounded up as the module's policy says, to a multiple of `min_step` at least.
    Geometric { min_step: i64 },
}

impl RowBuckets {
    /// The rows a batch of `tokens` tokens computes: `tokens` or more.
    pub fn rows(self, tokens: i64) -> i64 {
        match self {
            RowBuckets::Exact => tokens,
            RowBuckets::Geometric { min_step } => {
                if tokens <= 0 {
                    return tokens;
                }
                let power_of_two = 1i64 << (63 - tokens.leading_zeros());
                let step = (power_of_two / BUCKETS_PER_DOUBLING).max(min_step).max(1);
                (tokens + step - 1) / step * step
            }
        }
    }

    /// One token count per bucket that a batch of at most `max_tokens` tokens can fall in, in
    /// increasing order: each bucket itself, or `max_tokens` for the last bucket where that
    /// lies beyond the budget. Empty for `Exact`, which has no buckets.
    pub fn representatives(self, max_tokens: i64) -> Vec<i64> {
        if self == RowBuckets::Exact {
            return Vec::new();
        }
        let mut counts = Vec::new();
        let mut tokens = 1;
        while tokens <= max_tokens {
            let bucket = self.rows(tokens);
            counts.push(bucket.min(max_tokens));
            tokens = bucket + 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// The CPU's default token budget.
    const MAX_TOKENS: i64 = 1_024;
    /// An AMX tile's rows: bf16's least step.
    const TILE: i64 = 16;
    const FP32: RowBuckets = RowBuckets::Geometric { min_step: 1 };
    const BF16: RowBuckets = RowBuckets::Geometric { min_step: TILE };

    fn buckets_up_to(buckets: RowBuckets, max_tokens: i64) -> BTreeSet<i64> {
        (1..=max_tokens).map(|n| buckets.rows(n)).collect()
    }

    #[test]
    fn exact_rows_are_the_tokens_and_have_nothing_to_build_ahead() {
        assert_eq!(RowBuckets::Exact.rows(1_000), 1_000);
        assert!(RowBuckets::Exact.representatives(MAX_TOKENS).is_empty());
    }

    #[test]
    fn small_counts_are_exact_in_fp32_and_whole_tiles_in_bf16() {
        for n in 1..=BUCKETS_PER_DOUBLING * 2 - 1 {
            assert_eq!(FP32.rows(n), n);
            assert_eq!(BF16.rows(n), (n + TILE - 1) / TILE * TILE);
        }
    }

    #[test]
    fn the_step_is_a_sixteenth_of_the_counts_power_of_two() {
        assert_eq!(FP32.rows(33), 34);
        assert_eq!(FP32.rows(513), 544);
        assert_eq!(FP32.rows(1_000), 1_024);
        assert_eq!(BF16.rows(513), 544);
        assert_eq!(BF16.rows(257), 272);
    }

    #[test]
    fn the_cpu_budget_has_112_buckets_in_fp32_and_48_in_bf16() {
        assert_eq!(buckets_up_to(FP32, MAX_TOKENS).len(), 112);
        assert_eq!(buckets_up_to(BF16, MAX_TOKENS).len(), 48);
        assert_eq!(buckets_up_to(FP32, 2 * MAX_TOKENS).len(), 112 + 16);
    }

    #[test]
    fn representatives_fall_in_every_bucket_once_and_stay_within_the_budget() {
        for buckets in [FP32, BF16] {
            for max_tokens in [MAX_TOKENS, 1_000, 100, 1] {
                let counts = buckets.representatives(max_tokens);
                assert!(counts.iter().all(|&n| (1..=max_tokens).contains(&n)));
                let covered: Vec<i64> = counts.iter().map(|&n| buckets.rows(n)).collect();
                let every: Vec<i64> = buckets_up_to(buckets, max_tokens).into_iter().collect();
                assert_eq!(covered, every, "{buckets:?}, budget {max_tokens}");
            }
        }
    }

    proptest! {
        #[test]
        fn a_bucket_holds_its_tokens_pads_at_most_a_sixteenth_and_is_its_own_bucket(
            tokens in 1i64..1 << 40,
            min_step in prop::sample::select(vec![1i64, TILE]),
        ) {
            let buckets = RowBuckets::Geometric { min_step };
            let rows = buckets.rows(tokens);
            prop_assert!(rows >= tokens);
            prop_assert!(rows - tokens < (tokens / BUCKETS_PER_DOUBLING).max(min_step));
            prop_assert_eq!(rows % min_step, 0);
            prop_assert_eq!(buckets.rows(rows), rows);
        }
    }
}
