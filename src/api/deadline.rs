//! A call's deadline from its `grpc-timeout` header: gRPC's "an integer of at most 8 digits and a
//! unit". The value comes from any client, so it is parsed with checked arithmetic: a malformed
//! header is ignored (as gRPC's own servers do), and a timeout too long to represent, or longer
//! than `server.max_deadline_ms`, is cut to that cap.
use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;

/// The timeout a `grpc-timeout` value asks for, `None` when malformed; saturates rather than
/// overflowing.
pub fn parse_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // More digits than a u64 holds is simply "very long".
    let amount: u64 = digits.parse().unwrap_or(u64::MAX);
    let per_unit_nanos: u64 = match unit {
        'H' => 3_600_000_000_000,
        'M' => 60_000_000_000,
        'S' => 1_000_000_000,
        'm' => 1_000_000,
        'u' => 1_000,
        'n' => 1,
        _ => return None,
    };
    let nanos = u128::from(amount) * u128::from(per_unit_nanos);
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// When the call must be answered by, if it said; never later than `cap` from now.
pub fn deadline(metadata: &MetadataMap, cap: Duration) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_timeout(value)?.min(cap);
    let now = Instant::now();
    Some(now.checked_add(timeout).unwrap_or(now + cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_of_the_grpc_spec_is_understood() {
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7_200)));
        assert_eq!(parse_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout("4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse_timeout("5m"), Some(Duration::from_millis(5)));
        assert_eq!(parse_timeout("6u"), Some(Duration::from_micros(6)));
        assert_eq!(parse_timeout("7n"), Some(Duration::from_nanos(7)));
    }

    #[test]
    fn malformed_values_are_ignored() {
        for bad in ["", "S", "10", "10x", "-5S", "1.5S", "١S", "5é"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn huge_values_saturate_instead_of_overflowing() {
        let huge = parse_timeout("18446744073709551615H").unwrap();
        assert!(huge >= Duration::from_secs(u64::MAX / 2));
        let longer = parse_timeout("99999999999999999999999999S").unwrap();
        assert!(longer >= Duration::from_secs(u64::MAX / 2));
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "18446744073709551615S".parse().unwrap());
        let cap = Duration::from_secs(60);
        let deadline = deadline(&metadata, cap).unwrap();
        assert!(deadline <= Instant::now() + cap);
    }
}
