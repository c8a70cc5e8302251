//! Memory budgets in bytes. What a client controls the size of (its messages, the tokens they
//! become, the responses they ask for) is counted against a budget before any work is done, and
//! given back when the response has been handed to the transport. The counts are predictions
//! made from the request (`api` predicts), so they bound memory without measuring it.
//!
//! Budgets are counted in KiB inside (a semaphore's permits), so one request can take up to
//! 4 TiB and a budget can be as large as memory.
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

const UNIT: usize = 1024;

/// A budget of bytes, shared by the holders it hands out.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    /// The configuration key that sets it, for messages.
    key: &'static str,
    bytes: usize,
    permits: Arc<Semaphore>,
}

/// Bytes taken from a budget; they go back when this is dropped.
#[derive(Debug)]
pub struct BytesHeld {
    _permit: Option<OwnedSemaphorePermit>,
}

impl BytesHeld {
    /// Holds nothing (for tests and requests with no budget).
    pub fn none() -> Self {
        BytesHeld { _permit: None }
    }
}

/// The budget was exhausted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{wanted} bytes in flight would exceed the {key} budget of {bytes} bytes; retry later")]
pub struct OverBudget {
    pub key: &'static str,
    pub bytes: usize,
    pub wanted: usize,
}

impl ByteBudget {
    pub fn new(key: &'static str, bytes: usize) -> Self {
        ByteBudget {
            key,
            bytes,
            permits: Arc::new(Semaphore::new(bytes.div_ceil(UNIT).max(1))),
        }
    }

    pub fn key(&self) -> &'static str {
        self.key
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Permits for `bytes`, never more than the whole budget (a request larger than the budget
    /// takes all of it, and so runs alone rather than never).
    fn units(&self, bytes: usize) -> u32 {
        let whole = self.bytes.div_ceil(UNIT).max(1);
        bytes.div_ceil(UNIT).clamp(1, whole).min(u32::MAX as usize) as u32
    }

    /// Bytes in use now.
    pub fn in_use(&self) -> usize {
        let whole = self.bytes.div_ceil(UNIT).max(1);
        (whole - self.permits.available_permits()) * UNIT
    }

    /// Takes `bytes` now or fails.
    pub fn try_take(&self, bytes: usize) -> Result<BytesHeld, OverBudget> {
        match self
            .permits
            .clone()
            .try_acquire_many_owned(self.units(bytes))
        {
            Ok(permit) => Ok(BytesHeld {
                _permit: Some(permit),
            }),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => Err(OverBudget {
                key: self.key,
                bytes: self.bytes,
                wanted: bytes + self.in_use(),
            }),
        }
    }

    /// Takes `bytes`, waiting until they are free.
    pub async fn take(&self, bytes: usize) -> BytesHeld {
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(self.units(bytes))
            .await
            .expect("a byte budget is never closed");
        BytesHeld {
            _permit: Some(permit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: usize = 1024;

    #[test]
    fn bytes_taken_come_back_when_the_holder_is_dropped() {
        let budget = ByteBudget::new("limits.test", 10 * KIB);
        let held = budget.try_take(6 * KIB).unwrap();
        assert_eq!(budget.in_use(), 6 * KIB);
        let refused = budget.try_take(5 * KIB).unwrap_err();
        assert_eq!(refused.key, "limits.test");
        assert_eq!(refused.wanted, 11 * KIB);
        assert!(refused.to_string().contains("budget of 10240 bytes"));
        drop(held);
        assert_eq!(budget.in_use(), 0);
        assert!(budget.try_take(5 * KIB).is_ok());
    }

    #[test]
    fn a_request_larger_than_the_budget_takes_all_of_it_rather_than_never_running() {
        let budget = ByteBudget::new("limits.test", 4 * KIB);
        let held = budget.try_take(100 * KIB).unwrap();
        assert_eq!(budget.in_use(), 4 * KIB);
        assert!(budget.try_take(1).is_err());
        drop(held);
    }

    #[tokio::test]
    async fn a_waiting_taker_gets_its_bytes_when_they_are_given_back() {
        let budget = ByteBudget::new("limits.test", 2 * KIB);
        let held = budget.take(2 * KIB).await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.take(KIB).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(held);
        let _second = waiting.await.unwrap();
        assert_eq!(budget.in_use(), KIB);
    }
}
