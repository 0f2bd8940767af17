//! The control plane's notion of "now" for schedules (maintenance windows).
//!
//! Production uses the system clock. Tests of weekly windows cannot wait a week, so
//! `mooring serve --clock-offset-file <path>` (hidden, **test-only**) adds an offset read
//! from that file to the system clock: the file holds a signed number of seconds (`3600`,
//! `-86400.5`); a missing or empty file means no offset. The file is re-read on every
//! reading of the clock, so a test moves time by rewriting it. Only schedules read this
//! clock: heartbeats, leases and timestamps the store writes keep the real time.

use std::path::PathBuf;

use chrono::{DateTime, TimeDelta, Utc};

/// A source of the current instant.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The system clock plus the offset in a file (see the module doc). Test-only.
#[derive(Debug, Clone)]
pub struct OffsetFileClock {
    path: PathBuf,
}

impl OffsetFileClock {
    pub fn new(path: PathBuf) -> Self {
        OffsetFileClock { path }
    }

    /// The offset the file holds now. An unreadable or malformed file is logged and
    /// counts as no offset, so a half-written file never moves time backwards by garbage.
    pub fn offset(&self) -> TimeDelta {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return TimeDelta::zero(),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "reading the clock offset file: {e}");
                return TimeDelta::zero();
            }
        };
        parse_offset(&text).unwrap_or_else(|| {
            tracing::warn!(path = %self.path.display(), content = %text.trim(), "the clock offset file does not hold a number of seconds; ignoring it");
            TimeDelta::zero()
        })
    }
}

impl Clock for OffsetFileClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset()
    }
}

/// Seconds, possibly fractional and signed; empty means zero.
fn parse_offset(text: &str) -> Option<TimeDelta> {
    let t = text.trim();
    if t.is_empty() {
        return Some(TimeDelta::zero());
    }
    let secs: f64 = t.parse().ok()?;
    // More than a century either way is a mistake, not a test.
    if !secs.is_finite() || secs.abs() > 100.0 * 366.0 * 86_400.0 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)]
    let millis = (secs * 1000.0).round() as i64;
    Some(TimeDelta::milliseconds(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        let cases: &[(&str, Option<i64>)] = &[
            ("", Some(0)),
            ("  \n", Some(0)),
            ("3600", Some(3_600_000)),
            ("-86400.5\n", Some(-86_400_500)),
            ("1e3", Some(1_000_000)),
            ("soon", None),
            ("NaN", None),
            ("1e12", None),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse_offset(text).map(|d| d.num_milliseconds()),
                *want,
                "{text:?}"
            );
        }
    }

    #[test]
    fn file_moves_time_and_garbage_does_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("offset");
        let clock = OffsetFileClock::new(path.clone());
        assert_eq!(clock.offset(), TimeDelta::zero(), "missing file");
        std::fs::write(&path, "7200").expect("write");
        let ahead = clock.now() - Utc::now();
        assert!(
            ahead > TimeDelta::minutes(119) && ahead <= TimeDelta::hours(2),
            "{ahead}"
        );
        std::fs::write(&path, "two hours").expect("write");
        assert_eq!(clock.offset(), TimeDelta::zero());
    }
}
