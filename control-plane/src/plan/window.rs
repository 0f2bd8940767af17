//! The weekly maintenance window: Amazon MQ's `maintenanceWindowStartTime` (day of week,
//! `HH:MM`, time zone) opens a window of two hours once a week.
//!
//! Two choices the API leaves open, made here once:
//! - The window lasts two *elapsed* hours from its start, whatever the wall clock does in
//!   between (a window that straddles a daylight-saving change still gets its two hours).
//! - A start that falls in a skipped hour (spring forward) is read with the offset in force
//!   just before the change, so `02:30` on the night Paris skips 02:00-03:00 starts at 03:30
//!   local (01:30 UTC), the same rule as `java.time` and RFC 5545. A start that falls in a
//!   repeated hour (fall back) is its first occurrence: the earlier instant, so the window
//!   never starts late.

use crate::model::DayOfWeek;
use chrono::{
    DateTime, Datelike, Days, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta,
    TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;

/// How long a maintenance window stays open (Amazon MQ: two hours).
pub const WINDOW_LENGTH: TimeDelta = TimeDelta::hours(2);

/// Why a `maintenanceWindowStartTime` is refused; the API answers BadRequestException.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("dayOfWeek {0:?} is not one of MONDAY..SUNDAY")]
    BadDay(String),
    #[error("timeOfDay {0:?} must be HH:MM in 24-hour format")]
    BadTime(String),
    #[error("timeZone {0:?} is neither an IANA time zone nor a UTC offset such as UTC+05:45")]
    UnknownZone(String),
}

/// The zone a window's start is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowZone {
    /// An IANA zone (`Europe/Paris`, `UTC`): its offset follows daylight saving.
    Named(Tz),
    /// A fixed offset from UTC (`UTC+05:45`, `-03:00`): never changes.
    Fixed(FixedOffset),
}

/// A validated weekly window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceWindow {
    pub day: DayOfWeek,
    /// Whole minutes (seconds are always zero).
    pub start: NaiveTime,
    pub zone: WindowZone,
}

/// Validates the three members as the API receives them.
pub fn parse_window(
    day_of_week: &str,
    time_of_day: &str,
    time_zone: &str,
) -> Result<MaintenanceWindow, WindowError> {
    let day =
        DayOfWeek::parse(day_of_week).ok_or_else(|| WindowError::BadDay(day_of_week.into()))?;
    MaintenanceWindow::new(day, time_of_day, time_zone)
}

impl MaintenanceWindow {
    /// From a broker's stored spec (the day is already typed there).
    pub fn new(day: DayOfWeek, time_of_day: &str, time_zone: &str) -> Result<Self, WindowError> {
        Ok(MaintenanceWindow {
            day,
            start: parse_time(time_of_day)?,
            zone: parse_zone(time_zone)?,
        })
    }
}

/// `HH:MM`, exactly five characters: Amazon MQ's format, and the only one it shows back.
fn parse_time(s: &str) -> Result<NaiveTime, WindowError> {
    let bad = || WindowError::BadTime(s.into());
    let b = s.as_bytes();
    if b.len() != 5
        || b[2] != b':'
        || !b
            .iter()
            .enumerate()
            .all(|(i, c)| i == 2 || c.is_ascii_digit())
    {
        return Err(bad());
    }
    let h: u32 = s[..2].parse().map_err(|_| bad())?;
    let m: u32 = s[3..].parse().map_err(|_| bad())?;
    NaiveTime::from_hms_opt(h, m, 0).ok_or_else(bad)
}

/// An IANA name, or `UTC`/`GMT` followed by an offset (`UTC+5`, `UTC+05:45`, `UTC-03:30`), or
/// a bare offset (`+05:45`). Amazon MQ documents "Country/City or UTC offset" without a
/// grammar, so the common spellings are accepted.
fn parse_zone(s: &str) -> Result<WindowZone, WindowError> {
    if let Ok(tz) = s.parse::<Tz>() {
        return Ok(WindowZone::Named(tz));
    }
    let unknown = || WindowError::UnknownZone(s.into());
    let rest = s
        .strip_prefix("UTC")
        .or_else(|| s.strip_prefix("GMT"))
        .unwrap_or(s);
    let (sign, digits) = match rest.as_bytes().first() {
        Some(b'+') => (1, &rest[1..]),
        Some(b'-') => (-1, &rest[1..]),
        _ => return Err(unknown()),
    };
    let (h, m) = match digits.split_once(':') {
        Some((h, m)) if m.len() == 2 => (h, m),
        Some(_) => return Err(unknown()),
        None => (digits, "00"),
    };
    if h.is_empty() || h.len() > 2 || !h.bytes().chain(m.bytes()).all(|c| c.is_ascii_digit()) {
        return Err(unknown());
    }
    let h: i32 = h.parse().map_err(|_| unknown())?;
    let m: i32 = m.parse().map_err(|_| unknown())?;
    // Real zones span -12:00..+14:00.
    if m >= 60 || h * 60 + m > 14 * 60 {
        return Err(unknown());
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
        .map(WindowZone::Fixed)
        .ok_or_else(unknown)
}

fn weekday(d: DayOfWeek) -> Weekday {
    match d {
        DayOfWeek::Monday => Weekday::Mon,
        DayOfWeek::Tuesday => Weekday::Tue,
        DayOfWeek::Wednesday => Weekday::Wed,
        DayOfWeek::Thursday => Weekday::Thu,
        DayOfWeek::Friday => Weekday::Fri,
        DayOfWeek::Saturday => Weekday::Sat,
        DayOfWeek::Sunday => Weekday::Sun,
    }
}

/// The UTC instant of a local wall-clock time, with the skipped/repeated-hour rules above.
fn resolve<Z: TimeZone>(zone: &Z, local: NaiveDateTime) -> DateTime<Utc> {
    use chrono::LocalResult;
    match zone.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(a, b) => a.with_timezone(&Utc).min(b.with_timezone(&Utc)),
        LocalResult::None => {
            // A gap: take the offset in force before it. Gaps are at most a day long (Samoa
            // skipped 30 December 2011), so a day earlier is outside it.
            let before = local
                .checked_sub_days(Days::new(1))
                .and_then(|d| zone.from_local_datetime(&d).earliest())
                .map_or_else(|| Utc.fix(), |t| t.offset().fix());
            (local - before).and_utc()
        }
    }
}

impl MaintenanceWindow {
    /// The start of the window in the week of local date `date` (`date` must be the
    /// window's weekday).
    fn start_on(&self, date: NaiveDate) -> DateTime<Utc> {
        let local = date.and_time(self.start);
        match self.zone {
            WindowZone::Named(tz) => resolve(&tz, local),
            WindowZone::Fixed(off) => resolve(&off, local),
        }
    }

    /// Window starts around `now`, in order: one from every local week from two weeks before
    /// to two weeks after, which always includes the one in progress and the next one.
    fn starts_around(&self, now: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let today = match self.zone {
            WindowZone::Named(tz) => now.with_timezone(&tz).date_naive(),
            WindowZone::Fixed(off) => now.with_timezone(&off).date_naive(),
        };
        let wanted = weekday(self.day).num_days_from_monday();
        let back = (7 + today.weekday().num_days_from_monday() - wanted) % 7;
        let this_week = today.checked_sub_days(Days::new(u64::from(back)));
        (-2i64..=2).filter_map(move |w| {
            let d = this_week?;
            let moved = if w < 0 {
                d.checked_sub_days(Days::new(w.unsigned_abs() * 7))
            } else {
                d.checked_add_days(Days::new(w.unsigned_abs() * 7))
            };
            moved.map(|d| self.start_on(d))
        })
    }
}

/// Whether the window is open at `now`: `start <= now < start + 2 h`.
pub fn is_open(window: &MaintenanceWindow, now: DateTime<Utc>) -> bool {
    window
        .starts_around(now)
        .any(|s| s <= now && now < s + WINDOW_LENGTH)
}

/// The first window start at or after `now`. A window in progress does not count: its start
/// is past (see [`schedule_at`] for "now if open").
pub fn next_start(window: &MaintenanceWindow, now: DateTime<Utc>) -> DateTime<Utc> {
    window
        .starts_around(now)
        .find(|s| *s >= now)
        // Unreachable for dates chrono can represent two weeks ahead; a week later is the
        // honest answer if it ever were.
        .unwrap_or(now + TimeDelta::weeks(1))
}

/// When a pending action found at `now` is due: at once if the window is open, else at the
/// next start. This is the time DescribeBroker shows for it.
pub fn schedule_at(window: &MaintenanceWindow, now: DateTime<Utc>) -> DateTime<Utc> {
    if is_open(window, now) {
        now
    } else {
        next_start(window, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("valid test instant")
            .with_timezone(&Utc)
    }

    fn w(day: &str, time: &str, zone: &str) -> MaintenanceWindow {
        parse_window(day, time, zone).expect("valid test window")
    }

    #[test]
    fn parsing() {
        let cases: &[(&str, &str, &str, Result<(), WindowError>)] = &[
            ("MONDAY", "02:00", "UTC", Ok(())),
            ("SUNDAY", "23:59", "Europe/Paris", Ok(())),
            ("FRIDAY", "00:00", "Asia/Kathmandu", Ok(())),
            ("FRIDAY", "00:00", "UTC+05:45", Ok(())),
            ("FRIDAY", "00:00", "UTC-3", Ok(())),
            ("FRIDAY", "00:00", "+14:00", Ok(())),
            (
                "monday",
                "02:00",
                "UTC",
                Err(WindowError::BadDay("monday".into())),
            ),
            (
                "FUNDAY",
                "02:00",
                "UTC",
                Err(WindowError::BadDay("FUNDAY".into())),
            ),
            (
                "MONDAY",
                "24:00",
                "UTC",
                Err(WindowError::BadTime("24:00".into())),
            ),
            (
                "MONDAY",
                "12:60",
                "UTC",
                Err(WindowError::BadTime("12:60".into())),
            ),
            (
                "MONDAY",
                "2:00",
                "UTC",
                Err(WindowError::BadTime("2:00".into())),
            ),
            (
                "MONDAY",
                "+1:00",
                "UTC",
                Err(WindowError::BadTime("+1:00".into())),
            ),
            (
                "MONDAY",
                "02-00",
                "UTC",
                Err(WindowError::BadTime("02-00".into())),
            ),
            (
                "MONDAY",
                "02:00",
                "Mars/Olympus",
                Err(WindowError::UnknownZone("Mars/Olympus".into())),
            ),
            (
                "MONDAY",
                "02:00",
                "UTC+15",
                Err(WindowError::UnknownZone("UTC+15".into())),
            ),
            (
                "MONDAY",
                "02:00",
                "UTC+05:7",
                Err(WindowError::UnknownZone("UTC+05:7".into())),
            ),
            (
                "MONDAY",
                "02:00",
                "UTC+",
                Err(WindowError::UnknownZone("UTC+".into())),
            ),
            (
                "MONDAY",
                "02:00",
                "",
                Err(WindowError::UnknownZone("".into())),
            ),
        ];
        for (day, time, zone, want) in cases {
            assert_eq!(
                parse_window(day, time, zone).map(|_| ()),
                *want,
                "{day} {time} {zone}"
            );
        }
        assert_eq!(
            w("FRIDAY", "00:00", "UTC+05:45").zone,
            WindowZone::Fixed(FixedOffset::east_opt(5 * 3600 + 45 * 60).expect("valid"))
        );
        assert_eq!(
            w("FRIDAY", "00:00", "GMT-03:30").zone,
            WindowZone::Fixed(FixedOffset::west_opt(3 * 3600 + 30 * 60).expect("valid"))
        );
    }

    /// (why, window, now, open at now, next start at or after now). Calendar anchors: 2026-01-05
    /// is a Monday; Europe/Paris springs forward on Sunday 2026-03-29 at 02:00 CET (01:00 UTC)
    /// and falls back on Sunday 2026-10-25 at 03:00 CEST (01:00 UTC); New York springs forward
    /// on Sunday 2026-03-08 at 02:00 EST (07:00 UTC) and falls back on Sunday 2026-11-01 at
    /// 02:00 EDT (06:00 UTC).
    #[test]
    fn windows() {
        let cases = [
            (
                "UTC, an hour before",
                w("MONDAY", "02:00", "UTC"),
                "2026-01-05T01:00:00Z",
                false,
                "2026-01-05T02:00:00Z",
            ),
            (
                "UTC, at the start: open, and the next start is this one",
                w("MONDAY", "02:00", "UTC"),
                "2026-01-05T02:00:00Z",
                true,
                "2026-01-05T02:00:00Z",
            ),
            (
                "UTC, in the last second",
                w("MONDAY", "02:00", "UTC"),
                "2026-01-05T03:59:59Z",
                true,
                "2026-01-12T02:00:00Z",
            ),
            (
                "UTC, at the end: closed (half-open window)",
                w("MONDAY", "02:00", "UTC"),
                "2026-01-05T04:00:00Z",
                false,
                "2026-01-12T02:00:00Z",
            ),
            (
                "UTC, the day after: next week",
                w("MONDAY", "02:00", "UTC"),
                "2026-01-06T02:30:00Z",
                false,
                "2026-01-12T02:00:00Z",
            ),
            (
                "crossing midnight: Saturday 23:00 is still open at Sunday 00:30",
                w("SATURDAY", "23:00", "UTC"),
                "2026-01-11T00:30:00Z",
                true,
                "2026-01-17T23:00:00Z",
            ),
            (
                "crossing the week: Sunday 23:00 is open on Monday 00:59",
                w("SUNDAY", "23:00", "UTC"),
                "2026-01-05T00:59:00Z",
                true,
                "2026-01-11T23:00:00Z",
            ),
            (
                "crossing the week: closed on Monday 01:00",
                w("SUNDAY", "23:00", "UTC"),
                "2026-01-05T01:00:00Z",
                false,
                "2026-01-11T23:00:00Z",
            ),
            (
                "Kathmandu (+05:45): Monday 01:00 local is Sunday 19:15 UTC, a day earlier",
                w("MONDAY", "01:00", "Asia/Kathmandu"),
                "2026-01-04T19:14:00Z",
                false,
                "2026-01-04T19:15:00Z",
            ),
            (
                "Kathmandu: open until Sunday 21:15 UTC",
                w("MONDAY", "01:00", "Asia/Kathmandu"),
                "2026-01-04T21:14:59Z",
                true,
                "2026-01-11T19:15:00Z",
            ),
            (
                "a fixed offset behaves the same: UTC+05:45",
                w("MONDAY", "01:00", "UTC+05:45"),
                "2026-01-04T21:15:00Z",
                false,
                "2026-01-11T19:15:00Z",
            ),
            (
                "Tokyo (+09:00) Monday 05:00 is Sunday 20:00 UTC",
                w("MONDAY", "05:00", "Asia/Tokyo"),
                "2026-01-04T12:00:00Z",
                false,
                "2026-01-04T20:00:00Z",
            ),
            (
                "Honolulu (-10:00) Sunday 20:00 is Monday 06:00 UTC",
                w("SUNDAY", "20:00", "Pacific/Honolulu"),
                "2026-01-05T05:00:00Z",
                false,
                "2026-01-05T06:00:00Z",
            ),
            (
                "Marquesas (-09:30): Sunday 23:30 local is Monday 09:00 UTC, the next UTC week",
                w("SUNDAY", "23:30", "Pacific/Marquesas"),
                "2026-01-05T10:59:59Z",
                true,
                "2026-01-12T09:00:00Z",
            ),
            (
                "Paris in winter: Sunday 02:30 CET (+01) is 01:30 UTC",
                w("SUNDAY", "02:30", "Europe/Paris"),
                "2026-03-22T00:00:00Z",
                false,
                "2026-03-22T01:30:00Z",
            ),
            (
                "Paris, spring forward: 02:30 does not exist on 29 March; read with the offset \
                 before the gap (+01): 01:30 UTC, i.e. 03:30 CEST",
                w("SUNDAY", "02:30", "Europe/Paris"),
                "2026-03-23T00:00:00Z",
                false,
                "2026-03-29T01:30:00Z",
            ),
            (
                "Paris, spring forward: open two elapsed hours, until 03:30 UTC (05:30 CEST)",
                w("SUNDAY", "02:30", "Europe/Paris"),
                "2026-03-29T03:29:00Z",
                true,
                "2026-04-05T00:30:00Z",
            ),
            (
                "Paris, the Sunday after: 02:30 CEST (+02) is 00:30 UTC",
                w("SUNDAY", "02:30", "Europe/Paris"),
                "2026-04-05T00:29:00Z",
                false,
                "2026-04-05T00:30:00Z",
            ),
            (
                "Paris, a window straddling spring forward: Sunday 01:30 CET is 00:30 UTC; \
                 two elapsed hours end at 02:30 UTC although the wall clock moved 3 hours",
                w("SUNDAY", "01:30", "Europe/Paris"),
                "2026-03-29T02:29:00Z",
                true,
                "2026-04-04T23:30:00Z",
            ),
            (
                "Paris, fall back: 02:30 happens twice on 25 October; the first (CEST, +02) is \
                 00:30 UTC",
                w("SUNDAY", "02:30", "Europe/Paris"),
                "2026-10-25T00:00:00Z",
                false,
                "2026-10-25T00:30:00Z",
            ),
            (
                "Paris, fall back: the window is two elapsed hours from the first 02:30, closed \
                 at 02:30 UTC (the second 03:30 CET)",
                w("SUNDAY", "02:30", "Europe/Paris"),
                "2026-10-25T02:30:00Z",
                false,
                "2026-11-01T01:30:00Z",
            ),
            (
                "New York, spring forward: Sunday 02:00 is skipped on 8 March; EST (-05) \
                 before the gap gives 07:00 UTC (03:00 EDT)",
                w("SUNDAY", "02:00", "America/New_York"),
                "2026-03-08T06:59:00Z",
                false,
                "2026-03-08T07:00:00Z",
            ),
            (
                "New York, fall back: Sunday 01:30 happens twice on 1 November; the first (EDT, \
                 -04) is 05:30 UTC",
                w("SUNDAY", "01:30", "America/New_York"),
                "2026-11-01T05:00:00Z",
                false,
                "2026-11-01T05:30:00Z",
            ),
            (
                "New York, fall back: open at 06:45 UTC (the second 01:45, EST)",
                w("SUNDAY", "01:30", "America/New_York"),
                "2026-11-01T06:45:00Z",
                true,
                "2026-11-08T06:30:00Z",
            ),
            (
                "Lord Howe moves by 30 minutes: Sunday 5 April 2026 02:00 (+11, DST) becomes \
                 01:30 (+10:30); 01:45 is repeated, the first is +11: 14:45 UTC on Saturday",
                w("SUNDAY", "01:45", "Australia/Lord_Howe"),
                "2026-04-04T14:00:00Z",
                false,
                "2026-04-04T14:45:00Z",
            ),
            (
                "Samoa skipped Friday 30 December 2011 entirely (-10 to +14 at midnight): Friday \
                 02:00 is read at -10, 12:00 UTC (Saturday 02:00 local)",
                w("FRIDAY", "02:00", "Pacific/Apia"),
                "2011-12-29T00:00:00Z",
                false,
                "2011-12-30T12:00:00Z",
            ),
        ];
        for (why, window, now, open, next) in cases {
            let now = t(now);
            assert_eq!(is_open(&window, now), open, "open: {why}");
            assert_eq!(next_start(&window, now), t(next), "next: {why}");
            let due = if open { now } else { t(next) };
            assert_eq!(schedule_at(&window, now), due, "schedule: {why}");
        }
    }

    const ZONES: &[&str] = &[
        "UTC",
        "Europe/Paris",
        "America/New_York",
        "Asia/Kathmandu",
        "Australia/Lord_Howe",
        "Pacific/Apia",
        "Pacific/Chatham",
        "America/St_Johns",
        "UTC-09:30",
    ];

    proptest! {
        /// For any window and instant (1990-2060): the next start is ahead, at most a week and
        /// an hour away (a daylight-saving change can stretch one week by an hour), open, and
        /// the instant just before it is closed (windows never touch).
        #[test]
        fn next_start_is_ahead_and_open(
            day in 0usize..7,
            hour in 0u32..24,
            minute in 0u32..60,
            zone in 0usize..ZONES.len(),
            secs in 631_152_000i64..2_840_140_800,
        ) {
            let window = MaintenanceWindow::new(
                DayOfWeek::ALL[day],
                &format!("{hour:02}:{minute:02}"),
                ZONES[zone],
            ).expect("valid window");
            let now = DateTime::from_timestamp(secs, 0).expect("in range");
            let next = next_start(&window, now);
            prop_assert!(next >= now);
            prop_assert!(next - now <= TimeDelta::weeks(1) + TimeDelta::hours(1) + TimeDelta::minutes(30));
            prop_assert!(is_open(&window, next));
            prop_assert!(!is_open(&window, next - TimeDelta::seconds(1)));
            prop_assert!(schedule_at(&window, now) >= now && is_open(&window, schedule_at(&window, now)));
        }
    }
}
