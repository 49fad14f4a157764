//! Civil dates as day numbers (days since 1970-01-01), so the rules do plain integer arithmetic.
//!
//! In: `jiff::civil::Date`s. Out: `i64` day numbers and back. Infallible one way, `None` only for
//! a day number outside jiff's range (years -9999..=9999); never panics.

use jiff::civil::Date;

/// Days since 1970-01-01 (negative before). Howard Hinnant's `days_from_civil`.
pub fn number(date: Date) -> i64 {
    let (y, m, d) = (
        i64::from(date.year()),
        i64::from(date.month()),
        i64::from(date.day()),
    );
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number, `None` outside jiff's range. Hinnant's `civil_from_days`.
pub fn date(number: i64) -> Option<Date> {
    let z = number.checked_add(719_468)?;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    Date::new(
        i16::try_from(y).ok()?,
        i8::try_from(m).ok()?,
        i8::try_from(d).ok()?,
    )
    .ok()
}

/// `later - earlier` in days (negative when `later` is before `earlier`).
pub fn between(earlier: Date, later: Date) -> i64 {
    number(later) - number(earlier)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use jiff::civil::date as d;

    #[test]
    fn the_epoch_is_day_zero() {
        assert_eq!(number(d(1970, 1, 1)), 0);
        assert_eq!(number(d(1969, 12, 31)), -1);
        assert_eq!(number(d(2000, 3, 1)), 11_017);
    }

    #[test]
    fn day_numbers_agree_with_jiff_across_leap_years_and_centuries() {
        let start = d(1899, 12, 25);
        let mut day = start;
        for n in 0..80_000 {
            assert_eq!(number(day), number(start) + n);
            assert_eq!(date(number(day)), Some(day));
            day = day.tomorrow().unwrap();
        }
        assert_eq!(
            between(d(2024, 2, 28), d(2024, 3, 1)),
            d(2024, 2, 28).until(d(2024, 3, 1)).unwrap().get_days() as i64
        );
    }

    #[test]
    fn a_day_number_outside_the_calendar_is_none() {
        assert_eq!(date(i64::MAX), None);
        assert_eq!(date(100_000_000), None);
        assert_eq!(date(number(d(9999, 12, 31))), Some(d(9999, 12, 31)));
    }
}
