//! Local time for rules: day numbers, minutes of the day, `HH:MM-HH:MM` ranges and `MM-DD` /
//! `YYYY-MM-DD` dates, with no time-zone database. The store's offset from UTC comes from the
//! agent config (`[react] timezone_offset_min`); daylight saving time is the operator's job
//! (change the offset twice a year, or run the gateway on UTC and write rules in UTC).

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
    pub fn from_wall(wall_ms: i64, offset_min: i32) -> Self {
        let local = wall_ms + i64::from(offset_min) * 60_000;
        Self {
            day: local.div_euclid(DAY_MS),
            minute: (local.rem_euclid(DAY_MS) / 60_000) as u32,
        }
    }
}

/// `HH:MM-HH:MM`, start inclusive, end exclusive; a range whose end is before its start wraps
/// past midnight (`22:00-07:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoursRange {
    start: u32,
    end: u32,
}

impl HoursRange {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a time range like \"10:00-18:00\"");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let minute = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
            (h <= 24 && m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
        };
        let (start, end) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
        if start == end {
            return Err(format!("{s:?} is an empty time range"));
        }
        Ok(Self { start, end })
    }

    pub fn contains(&self, minute: u32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

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
        let t = LocalTime::from_wall(wall, 60);
        assert_eq!((t.day, t.minute), (days_from_civil(2026, 3, 2), 30));
        let t = LocalTime::from_wall(wall, -300);
        assert_eq!(t.minute, 18 * 60 + 30);
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
