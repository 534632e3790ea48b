//! Exponential backoff with jitter.

use std::time::Duration;

use rand::Rng;

/// Delay before retry number `attempt` (1 for the first retry): `initial * 2^(attempt-1)`,
/// capped at `max`, then a random point in its upper half ("equal jitter"), so that many
/// nodes retrying after one outage do not arrive together, yet each waits at least half.
pub(crate) fn delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << exp).min(max);
    let half = base / 2;
    let jitter = rand::thread_rng().gen_range(0..=half.as_micros().min(u64::MAX as u128) as u64);
    half + Duration::from_micros(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_stays_within_bounds() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 1..40 {
            let base = initial.saturating_mul(1 << (attempt - 1).min(30)).min(max);
            let d = delay(attempt, initial, max);
            assert!(
                d >= base / 2 && d <= base,
                "attempt {attempt}: {d:?} vs {base:?}"
            );
        }
    }
}
