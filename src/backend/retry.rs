//! The 429 policy (protocol.md §2.1): how long to wait before each retry and the wait itself.
//!
//! Invariants: a request is retried at most 5 times after a 429 ([`MAX_ATTEMPTS`] in all), always
//! with the same bytes (the caller resends its one prepared request); a Retry-After value is
//! honoured up to [`RETRY_AFTER_CAP`], never ignored for being large, and garbage falls back to
//! the exponential backoff; every wait ends at once with [`SinkError::Cancelled`] when the
//! shutdown token fires.

use std::time::{Duration, SystemTime};

use rand::Rng;
use reqwest::Method;
use tokio_util::sync::CancellationToken;

use crate::sink::SinkError;

/// One request plus at most 5 retries after a 429 (§2.1).
pub const MAX_ATTEMPTS: u32 = 6;
/// Retry-After values above this are capped, not ignored (§2.1).
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(600);
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// Parses a Retry-After value: non-negative decimal seconds, or an HTTP-date (IMF-fixdate, RFC 850
/// or asctime; one in the past counts as 0). Anything else is `None`.
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "a very long time"; the cap applies later.
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait before retry `n` (1-based) after a 429: `min(R, 600 s)` plus 0–1 s with a Retry-After
/// value R, else uniform in `[b/2, b]` with `b = min(60 s, 2^(n-1) s)`.
pub fn retry_delay(n: u32, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
    match retry_after {
        Some(r) => r.min(RETRY_AFTER_CAP) + rng.gen_range(Duration::ZERO..=Duration::from_secs(1)),
        None => {
            let exp = n.clamp(1, 7) - 1;
            let b = Duration::from_secs(1 << exp).min(BACKOFF_CAP);
            rng.gen_range(b / 2..=b)
        }
    }
}

/// Waits before retry `attempt` after a 429 (with the answer's Retry-After value, if any).
pub(super) async fn wait_for_retry(
    method: &Method,
    path: &str,
    attempt: u32,
    retry_after: Option<&str>,
    cancel: &CancellationToken,
) -> Result<(), SinkError> {
    let hint = retry_after.and_then(|v| parse_retry_after(v, SystemTime::now()));
    let delay = retry_delay(attempt, hint, &mut rand::thread_rng());
    tracing::info!(
        "{method} {path} rate limited (429); retry {attempt} of {} in {:.1} s",
        MAX_ATTEMPTS - 1,
        delay.as_secs_f64()
    );
    tokio::select! {
        _ = cancel.cancelled() => Err(SinkError::Cancelled),
        _ = tokio::time::sleep(delay) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use tokio::time::Instant;

    use super::super::test_server::*;
    use super::super::HttpSink;
    use super::*;

    fn gaps(seen: &[Seen]) -> Vec<Duration> {
        seen.windows(2).map(|w| w[1].at - w[0].at).collect()
    }

    fn within(d: Duration, lo_ms: u64, hi_ms: u64) -> bool {
        d >= Duration::from_millis(lo_ms) && d <= Duration::from_millis(hi_ms)
    }

    #[tokio::test(start_paused = true)]
    async fn g4_429_429_200_takes_three_attempts_with_same_bytes() {
        let srv = serve(|i, _| if i < 2 { rate_limited() } else { ack(1) }).await;
        let s = sink(&srv.url());
        let body = json_of_len(4000);
        assert_eq!(send_chunk(&s, &body).await, Ok(1));
        let seen = srv.seen();
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|r| r.body == seen[0].body));
        assert_eq!(zstd::decode_all(&seen[2].body[..]).unwrap(), body);
    }

    #[tokio::test(start_paused = true)]
    async fn g5_429_forever_gives_six_attempts_then_rate_limited_with_backoff() {
        let srv = serve(|_, _| rate_limited()).await;
        let s = sink(&srv.url());
        assert_eq!(send_chunk(&s, b"{}").await, Err(SinkError::RateLimited));
        let seen = srv.seen();
        assert_eq!(seen.len(), 6);
        // No Retry-After: [0.5,1], [1,2], [2,4], [4,8], [8,16] s.
        let bounds = [
            (500, 1000),
            (1000, 2000),
            (2000, 4000),
            (4000, 8000),
            (8000, 16000),
        ];
        for (g, (lo, hi)) in gaps(&seen).into_iter().zip(bounds) {
            assert!(within(g, lo, hi + 50), "{g:?} not in [{lo},{hi}] ms");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn x23_retry_after_seconds_date_cap_and_garbage() {
        let srv = serve(|i, _| match i {
            0 => with_header(rate_limited(), "retry-after", "3"),
            1 => {
                let at = SystemTime::now() + Duration::from_secs(2);
                with_header(rate_limited(), "retry-after", &httpdate::fmt_http_date(at))
            }
            2 => with_header(rate_limited(), "retry-after", "86400"),
            3 => with_header(rate_limited(), "retry-after", "soon"),
            4 => with_header(rate_limited(), "retry-after", "-5"),
            _ => ack(1),
        })
        .await;
        let s = sink(&srv.url());
        assert_eq!(send_chunk(&s, b"{}").await, Ok(1));
        let g = gaps(&srv.seen());
        assert_eq!(g.len(), 5);
        assert!(within(g[0], 3000, 4050), "Retry-After 3: {:?}", g[0]);
        assert!(within(g[1], 1000, 3050), "date 2 s ahead: {:?}", g[1]);
        assert!(within(g[2], 600_000, 601_050), "capped: {:?}", g[2]);
        // Garbage is ignored: plain backoff for retries 4 and 5.
        assert!(within(g[3], 4000, 8050), "garbage: {:?}", g[3]);
        assert!(within(g[4], 8000, 16050), "negative: {:?}", g[4]);
    }

    #[tokio::test(start_paused = true)]
    async fn x18_cancel_during_retry_after_wait_returns_at_once() {
        let srv = serve(|_, _| with_header(rate_limited(), "retry-after", "30")).await;
        let cancel = CancellationToken::new();
        let s = HttpSink::new(&srv.url(), KEY, Duration::from_secs(30), cancel.clone()).unwrap();
        let start = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cancel.cancel();
        });
        assert_eq!(send_chunk(&s, b"{}").await, Err(SinkError::Cancelled));
        assert!(
            start.elapsed() < Duration::from_millis(1100),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(srv.seen().len(), 1, "nothing is resent after a cancel");
    }

    #[test]
    fn parse_retry_after_forms() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let p = |v: &str| parse_retry_after(v, now);
        assert_eq!(p("0"), Some(Duration::ZERO));
        assert_eq!(p(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(p("86400"), Some(Duration::from_secs(86400)));
        assert!(p("99999999999999999999999").unwrap() > RETRY_AFTER_CAP);
        let two = Some(Duration::from_secs(2));
        assert_eq!(p("Sun, 06 Nov 1994 08:49:39 GMT"), two, "IMF-fixdate");
        assert_eq!(p("Sunday, 06-Nov-94 08:49:39 GMT"), two, "RFC 850");
        assert_eq!(p("Sun Nov  6 08:49:39 1994"), two, "asctime");
        assert_eq!(
            p("Sun, 06 Nov 1994 08:00:00 GMT"),
            Some(Duration::ZERO),
            "past"
        );
        for bad in ["", "-1", "1.5", "soon", "3s", "+3", "Sun, 06 Nov 1994"] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_delay_bounds() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            for n in 1..=5u32 {
                let b = Duration::from_secs(1 << (n - 1));
                let d = retry_delay(n, None, &mut rng);
                assert!(d >= b / 2 && d <= b, "n={n}: {d:?}");
            }
            let d = retry_delay(9, None, &mut rng);
            assert!(d >= Duration::from_secs(30) && d <= Duration::from_secs(60));
            let d = retry_delay(1, Some(Duration::from_secs(3)), &mut rng);
            assert!(within(d, 3000, 4000), "{d:?}");
            let d = retry_delay(1, Some(Duration::from_secs(86400)), &mut rng);
            assert!(within(d, 600_000, 601_000), "{d:?}");
            let d = retry_delay(2, Some(Duration::ZERO), &mut rng);
            assert!(d <= Duration::from_secs(1));
        }
    }
}
