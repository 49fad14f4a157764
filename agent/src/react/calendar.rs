//! Local time for rules: day numbers, minutes of the day, `HH:MM-HH:MM` ranges and `MM-DD` /
//! `YYYY-MM-DD` dates. The store's time zone (`[react] timezone`, an IANA name resolved with the
//! system tz database, or a fixed `timezone_offset_min`) gives the UTC offset in force at each
//! moment, so local hours follow daylight saving time. [`ZoneClock`] keeps the offset until the
//! zone's next transition: occasions ask for local time often, the offset changes twice a year.

use jiff::{Timestamp, tz::TimeZone};

const DAY_MS: i64 = 86_400_000;

/// A moment in the store's local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    /// Days since 1970-01-01 (local).
    pub day: i64,
    /// Minutes since local midnight, 0..1440.
    pub minute: u32,
}

impl LocalTime {
    /// `offset_s`: the store's UTC offset at that moment, in seconds.
    pub fn from_wall(wall_ms: i64, offset_s: i32) -> Self {
        let local = wall_ms.saturating_add(i64::from(offset_s) * 1000);
        Self {
            day: local.div_euclid(DAY_MS),
            minute: (local.rem_euclid(DAY_MS) / 60_000) as u32,
        }
    }
}

/// Wall clock → store-local time through a time zone, remembering the offset in force and the
/// span it holds for (from the last lookup to the zone's next transition), so most calls are two
/// comparisons rather than a search of the zone's transitions.
#[derive(Debug, Clone)]
pub struct ZoneClock {
    tz: TimeZone,
    /// Wall ms [from, until) where `offset_s` applies.
    from_ms: i64,
    until_ms: i64,
    offset_s: i32,
}

impl ZoneClock {
    pub fn new(tz: TimeZone) -> Self {
        Self {
            tz,
            from_ms: 0,
            until_ms: 0,
            offset_s: 0,
        }
    }

    pub fn zone(&self) -> &TimeZone {
        &self.tz
    }

    pub fn local(&mut self, wall_ms: i64) -> LocalTime {
        if !(self.from_ms..self.until_ms).contains(&wall_ms) {
            self.refresh(wall_ms);
        }
        LocalTime::from_wall(wall_ms, self.offset_s)
    }

    fn refresh(&mut self, wall_ms: i64) {
        let Ok(ts) = Timestamp::from_millisecond(wall_ms) else {
            // Outside jiff's range (years beyond ±9999): no zone rules there, keep UTC.
            self.offset_s = 0;
            self.from_ms = wall_ms;
            self.until_ms = wall_ms.saturating_add(1);
            return;
        };
        self.offset_s = self.tz.to_offset(ts).seconds();
        self.from_ms = wall_ms;
        self.until_ms = self
            .tz
            .following(ts)
            .next()
            .map_or(i64::MAX, |t| t.timestamp().as_millisecond());
    }
}

/// Rules' and quiet hours' `HH:MM-HH:MM` (shared with head office's checks).
pub use instore_protocol::rules::HoursRange;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The year of a day number.
pub fn year_of(day: i64) -> i64 {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(m <= 2)
}

fn leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// `YYYY-MM-DD` → day number.
pub fn parse_date(s: &str) -> Option<i64> {
    let mut it = s.splitn(3, '-');
    let y = it.next()?.parse::<i64>().ok()?;
    let m = it.next()?.parse::<u32>().ok()?;
    let d = it.next()?.parse::<u32>().ok()?;
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then(|| days_from_civil(y, m, d))
}

/// Days between `today` and the nearest anniversary of an `MM-DD` birthday (0 on the day). A
/// 29 February birthday falls on 28 February in other years.
pub fn days_to_birthday(birthday: &str, today: i64) -> Option<u32> {
    let (m, d) = birthday.split_once('-')?;
    let (m, d) = (m.parse::<u32>().ok()?, d.parse::<u32>().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let year = year_of(today);
    (year - 1..=year + 1)
        .map(|y| {
            let d = if m == 2 && d == 29 && !leap(y) { 28 } else { d };
            (days_from_civil(y, m, d) - today).unsigned_abs() as u32
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_time_applies_the_offset_and_wraps_the_day() {
        // 2026-03-01 23:30 UTC is 00:30 on 2 March at UTC+1.
        let wall = days_from_civil(2026, 3, 1) * DAY_MS + (23 * 60 + 30) * 60_000;
        let t = LocalTime::from_wall(wall, 3600);
        assert_eq!((t.day, t.minute), (days_from_civil(2026, 3, 2), 30));
        let t = LocalTime::from_wall(wall, -5 * 3600);
        assert_eq!(t.minute, 18 * 60 + 30);
    }

    /// Unix ms of a Berlin wall-clock time, from the tz database (not the machine's zone).
    fn berlin(y: i16, mo: i8, d: i8, h: i8, mi: i8) -> i64 {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        jiff::civil::date(y, mo, d)
            .at(h, mi, 0, 0)
            .to_zoned(tz)
            .unwrap()
            .timestamp()
            .as_millisecond()
    }

    #[test]
    fn the_zone_clock_follows_daylight_saving_time_both_ways_and_backwards() {
        let mut c = ZoneClock::new(TimeZone::get("Europe/Berlin").unwrap());
        // 2026-03-29 02:00 CET → 03:00 CEST; 2026-10-25 03:00 CEST → 02:00 CET.
        for (wall_h, mo, d) in [(9, 3, 28), (9, 3, 30), (9, 10, 24), (9, 10, 26), (1, 3, 29)] {
            let t = c.local(berlin(2026, mo, d, wall_h, 30));
            assert_eq!(
                (t.day, t.minute),
                (
                    days_from_civil(2026, mo as u32, d as u32),
                    wall_h as u32 * 60 + 30
                ),
                "{mo}-{d}"
            );
        }
        // The UTC minutes either side of the spring change: 00:59 UTC is 01:59 CET, 01:00 UTC
        // is 03:00 CEST.
        let change = days_from_civil(2026, 3, 29) * DAY_MS + 3_600_000;
        assert_eq!(c.local(change - 60_000).minute, 60 + 59);
        assert_eq!(c.local(change).minute, 3 * 60);
        // The autumn change: 00:59 UTC is 02:59 CEST, 01:00 UTC is 02:00 CET again.
        let change = days_from_civil(2026, 10, 25) * DAY_MS + 3_600_000;
        assert_eq!(c.local(change - 60_000).minute, 2 * 60 + 59);
        assert_eq!(c.local(change).minute, 2 * 60);
        assert_eq!(c.local(change - 60_000).minute, 2 * 60 + 59);
    }

    #[test]
    fn hour_ranges_include_the_start_exclude_the_end_and_wrap_midnight() {
        let day = HoursRange::parse("10:00-18:00").unwrap();
        assert!(day.contains(600) && day.contains(1079) && !day.contains(1080) && !day.contains(0));
        let night = HoursRange::parse("22:00-07:00").unwrap();
        assert!(night.contains(1320) && night.contains(0) && night.contains(419));
        assert!(!night.contains(420) && !night.contains(720));
        assert!(HoursRange::parse("25:00-07:00").is_err());
        assert!(HoursRange::parse("10:00").is_err());
        assert!(HoursRange::parse("10:00-10:00").is_err());
    }

    #[test]
    fn dates_round_trip_through_day_numbers() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(parse_date("2000-03-01"), Some(11_017));
        for day in [-1000, 0, 11_016, 20_000, 20_513] {
            let y = year_of(day);
            assert!(days_from_civil(y, 1, 1) <= day && day < days_from_civil(y + 1, 1, 1));
        }
        assert_eq!(parse_date("2026-13-01"), None);
    }

    #[test]
    fn the_nearest_birthday_is_found_across_new_year_and_leap_days() {
        let today = days_from_civil(2026, 12, 30);
        assert_eq!(days_to_birthday("01-02", today), Some(3));
        assert_eq!(days_to_birthday("12-25", today), Some(5));
        let feb = days_from_civil(2027, 2, 27);
        assert_eq!(days_to_birthday("02-29", feb), Some(1));
        assert_eq!(days_to_birthday("2-x", feb), None);
    }
}
