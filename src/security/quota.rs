//! Per-key limits, so that one tenant cannot take the whole server: inputs in flight (a
//! semaphore) and inputs per second (a token bucket).
//!
//! Policy:
//! - Unary calls are refused at once over either limit (RESOURCE_EXHAUSTED, naming the key's
//!   name and the limit); a stream's message waits instead, so a bulk job runs at its key's rate.
//! - The bucket may go into debt: a request larger than the burst is let through when the bucket
//!   is full, and the debt delays what follows, so the average stays at the rate.
//! - A request with more inputs than the key may have in flight can never run and is refused.
//! - Quotas live as long as the key's name: a reload of the key file keeps the counts of the
//!   names it keeps.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{AuthSettings, KeyLimits};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuotaError {
    #[error(
        "API key {key}: {inputs} inputs in one request exceed the {limit} it may have in flight ({field}.max_inflight_inputs)"
    )]
    TooLarge {
        key: Arc<str>,
        inputs: usize,
        limit: usize,
        field: String,
    },
    #[error(
        "API key {key}: {limit} inputs in flight at most ({field}.max_inflight_inputs); retry when earlier calls finish"
    )]
    InFlight {
        key: Arc<str>,
        limit: usize,
        field: String,
    },
    #[error(
        "API key {key}: {rate} inputs per second at most ({field}.inputs_per_second); retry in {retry_ms} ms"
    )]
    Rate {
        key: Arc<str>,
        rate: f64,
        field: String,
        retry_ms: u64,
    },
}

/// A token bucket of inputs.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One key's limits and what it uses of them now.
#[derive(Debug)]
pub struct Quota {
    name: Arc<str>,
    /// The configuration key of the limits, for messages.
    field: String,
    limits: KeyLimits,
    inflight: Option<Arc<Semaphore>>,
    bucket: Option<Mutex<Bucket>>,
}

/// What a request holds of its key's quota until it is answered.
#[derive(Debug)]
pub struct QuotaHeld {
    _inflight: Option<OwnedSemaphorePermit>,
}

impl Quota {
    pub fn new(name: Arc<str>, limits: KeyLimits, field: String) -> Quota {
        let inflight = (limits.max_inflight_inputs > 0)
            .then(|| Arc::new(Semaphore::new(limits.max_inflight_inputs)));
        let bucket = (limits.inputs_per_second > 0.0).then(|| {
            Mutex::new(Bucket {
                tokens: Self::burst(&limits),
                at: Instant::now(),
            })
        });
        Quota {
            name,
            field,
            limits,
            inflight,
            bucket,
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn burst(limits: &KeyLimits) -> f64 {
        match limits.burst_inputs {
            0 => limits.inputs_per_second.max(1.0),
            n => n as f64,
        }
    }

    fn too_large(&self, inputs: usize) -> Result<(), QuotaError> {
        let limit = self.limits.max_inflight_inputs;
        if limit > 0 && inputs > limit {
            return Err(QuotaError::TooLarge {
                key: self.name.clone(),
                inputs,
                limit,
                field: self.field.clone(),
            });
        }
        Ok(())
    }

    /// Takes `inputs` from the bucket if it has them (or is full); else how long until it will.
    fn spend(&self, inputs: usize) -> Result<(), Duration> {
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        let rate = self.limits.inputs_per_second;
        let burst = Self::burst(&self.limits);
        let mut bucket = bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        let needed = (inputs as f64).min(burst);
        if bucket.tokens >= needed {
            bucket.tokens -= inputs as f64;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((needed - bucket.tokens) / rate))
        }
    }

    /// For a unary call: the quota for `inputs` now, or why not.
    pub fn try_take(&self, inputs: usize) -> Result<QuotaHeld, QuotaError> {
        self.too_large(inputs)?;
        let inflight = match &self.inflight {
            None => None,
            Some(semaphore) => Some(
                semaphore
                    .clone()
                    .try_acquire_many_owned(inputs as u32)
                    .map_err(|_| QuotaError::InFlight {
                        key: self.name.clone(),
                        limit: self.limits.max_inflight_inputs,
                        field: self.field.clone(),
                    })?,
            ),
        };
        self.spend(inputs).map_err(|wait| QuotaError::Rate {
            key: self.name.clone(),
            rate: self.limits.inputs_per_second,
            field: self.field.clone(),
            retry_ms: wait.as_millis().max(1) as u64,
        })?;
        Ok(QuotaHeld {
            _inflight: inflight,
        })
    }

    /// For a stream's message: the quota for `inputs`, waiting for it; refused only when the
    /// request could never fit.
    pub async fn take(&self, inputs: usize) -> Result<QuotaHeld, QuotaError> {
        self.too_large(inputs)?;
        let inflight = match &self.inflight {
            None => None,
            Some(semaphore) => Some(
                semaphore
                    .clone()
                    .acquire_many_owned(inputs as u32)
                    .await
                    .expect("quota semaphores are never closed"),
            ),
        };
        while let Err(wait) = self.spend(inputs) {
            tokio::time::sleep(wait).await;
        }
        Ok(QuotaHeld {
            _inflight: inflight,
        })
    }
}

/// The quotas of the keys by name, kept across reloads of the keys.
#[derive(Debug, Default)]
pub struct Quotas {
    by_name: Mutex<HashMap<Arc<str>, Arc<Quota>>>,
}

impl Quotas {
    /// The quota of key `name`, made on first use from `settings`.
    pub fn of(&self, name: &Arc<str>, settings: &AuthSettings) -> Arc<Quota> {
        let mut by_name = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        by_name
            .entry(name.clone())
            .or_insert_with(|| {
                let (limits, field) = settings.limits_of(name);
                Arc::new(Quota::new(name.clone(), limits, field))
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(max_inflight_inputs: usize, inputs_per_second: f64, burst_inputs: usize) -> Quota {
        let limits = KeyLimits {
            max_inflight_inputs,
            inputs_per_second,
            burst_inputs,
        };
        Quota::new("team-a".into(), limits, "auth.limits.team-a".into())
    }

    #[test]
    fn inputs_in_flight_are_given_back_when_the_request_ends() {
        let q = quota(4, 0.0, 0);
        let held = q.try_take(3).unwrap();
        let err = q.try_take(2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "API key team-a: 4 inputs in flight at most (auth.limits.team-a.max_inflight_inputs); retry when earlier calls finish"
        );
        drop(held);
        q.try_take(4).unwrap();
    }

    #[test]
    fn a_request_larger_than_the_inflight_limit_is_refused_for_good() {
        let q = quota(4, 0.0, 0);
        let err = q.try_take(5).unwrap_err();
        assert!(
            matches!(
                err,
                QuotaError::TooLarge {
                    inputs: 5,
                    limit: 4,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_refills_with_time_and_a_burst_may_go_into_debt() {
        const RATE: f64 = 10.0;
        let q = quota(0, RATE, 5);
        q.try_take(5).unwrap();
        let err = q.try_take(1).unwrap_err();
        assert!(
            matches!(err, QuotaError::Rate { retry_ms: 100, .. }),
            "{err}"
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        q.try_take(1).unwrap();
        // Full again after half a second; 8 inputs (over the burst of 5) pass and leave a debt
        // of 3, paid back before the next input: 0.4 s.
        tokio::time::advance(Duration::from_millis(500)).await;
        q.try_take(8).unwrap();
        let start = Instant::now();
        q.take(1).await.unwrap();
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(400) && waited < Duration::from_millis(401),
            "{waited:?}"
        );
    }
}
