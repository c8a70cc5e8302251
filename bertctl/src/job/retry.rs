//! When to try again: exponential backoff with jitter, per chunk of items (not per job).
//!
//! The n-th retry waits a random time in [d/2, d], d = min(max, base · 2^(n-1)): retries of many
//! clients after one server's death spread out instead of arriving together.
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1 << exponent).min(self.max);
        full.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

/// Whether a request the server answered with this status is worth sending again, here or
/// elsewhere: the server was going away or full, or the answer came too late. Any other status
/// in a reply is the input's own (INVALID_ARGUMENT, a server's INTERNAL for an input that failed
/// alone) and would come back the same.
pub fn transient(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unavailable | ResourceExhausted | Aborted | DeadlineExceeded
    )
}

/// Whether a status means the job cannot succeed anywhere (a wrong key, a server without the
/// service): every item would fail the same way, so the job stops.
pub fn fatal(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, Unauthenticated | PermissionDenied | Unimplemented)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };

    #[test]
    fn delays_double_per_attempt_with_jitter_and_stop_at_the_maximum() {
        for _ in 0..100 {
            let first = BACKOFF.delay(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = BACKOFF.delay(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = BACKOFF.delay(40);
            assert!(late >= Duration::from_millis(2500) && late <= Duration::from_secs(5));
        }
    }
}
