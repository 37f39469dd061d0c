//! Business hours: the SLA clock. Adds business hours to an instant and measures the
//! business time between two instants, in a team's time zone, skipping weekends and
//! configured holidays.

use std::collections::BTreeSet;

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};

/// A team's working calendar.
#[derive(Clone, Debug, PartialEq)]
pub struct BusinessCalendar {
    pub time_zone: TimeZone,
    pub day_start: Time,
    pub day_end: Time,
    /// Working weekdays.
    pub workdays: BTreeSet<WeekdayKey>,
    pub holidays: BTreeSet<Date>,
}

/// `jiff::civil::Weekday` in an ordered set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WeekdayKey(pub i8);

impl From<Weekday> for WeekdayKey {
    fn from(day: Weekday) -> Self {
        WeekdayKey(day.to_monday_one_offset())
    }
}

/// At most this many calendar days are walked: a calendar with no working day at all
/// would otherwise never end.
const MAX_DAYS: i32 = 3_660;

impl BusinessCalendar {
    /// Monday to Friday, 09:00 to 17:00, no holidays.
    pub fn nine_to_five(time_zone: TimeZone) -> Self {
        BusinessCalendar {
            time_zone,
            day_start: Time::constant(9, 0, 0, 0),
            day_end: Time::constant(17, 0, 0, 0),
            workdays: [
                Weekday::Monday,
                Weekday::Tuesday,
                Weekday::Wednesday,
                Weekday::Thursday,
                Weekday::Friday,
            ]
            .into_iter()
            .map(WeekdayKey::from)
            .collect(),
            holidays: BTreeSet::new(),
        }
    }

    fn is_workday(&self, date: Date) -> bool {
        self.workdays.contains(&date.weekday().into()) && !self.holidays.contains(&date)
    }

    fn at(&self, date: Date, time: Time) -> Zoned {
        date.to_datetime(time)
            .to_zoned(self.time_zone.clone())
            .expect("a civil time in the team's zone")
    }

    /// The working interval of `date`, if it is a working day.
    fn window(&self, date: Date) -> Option<(Timestamp, Timestamp)> {
        self.is_workday(date).then(|| {
            (
                self.at(date, self.day_start).timestamp(),
                self.at(date, self.day_end).timestamp(),
            )
        })
    }

    /// The instant `hours` business hours after `start`.
    pub fn add_business_hours(&self, start: Timestamp, hours: f64) -> Timestamp {
        let mut left = SignedDuration::from_secs_f64(hours.max(0.0) * 3600.0);
        let mut date = start.to_zoned(self.time_zone.clone()).date();
        for _ in 0..MAX_DAYS {
            if let Some((open, close)) = self.window(date) {
                let from = open.max(start);
                if from < close {
                    let available = close.duration_since(from);
                    if left <= available {
                        return from + left;
                    }
                    left -= available;
                }
            }
            date = date.tomorrow().expect("date in range");
        }
        start + SignedDuration::from_secs_f64(hours.max(0.0) * 3600.0)
    }

    /// Business time between two instants (zero when `end` is not after `start`).
    pub fn business_time_between(&self, start: Timestamp, end: Timestamp) -> SignedDuration {
        let mut total = SignedDuration::ZERO;
        if end <= start {
            return total;
        }
        let mut date = start.to_zoned(self.time_zone.clone()).date();
        for _ in 0..MAX_DAYS {
            if let Some((open, close)) = self.window(date) {
                if open >= end {
                    break;
                }
                let from = open.max(start);
                let to = close.min(end);
                if from < to {
                    total += to.duration_since(from);
                }
            } else if self.at(date, Time::midnight()).timestamp() >= end {
                break;
            }
            date = date.tomorrow().expect("date in range");
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn friday_afternoon_mql_is_due_monday_morning() {
        let cal = BusinessCalendar::nine_to_five(TimeZone::UTC);
        // Friday 2026-03-06 15:00: two hours left that day, two more on Monday.
        let due = cal.add_business_hours(ts("2026-03-06T15:00:00Z"), 4.0);
        assert_eq!(due, ts("2026-03-09T11:00:00Z"));
    }

    #[test]
    fn weekend_mql_starts_counting_on_monday() {
        let cal = BusinessCalendar::nine_to_five(TimeZone::UTC);
        let due = cal.add_business_hours(ts("2026-03-07T22:00:00Z"), 4.0);
        assert_eq!(due, ts("2026-03-09T13:00:00Z"));
    }

    #[test]
    fn holidays_do_not_count_and_the_team_zone_applies() {
        let mut cal = BusinessCalendar::nine_to_five(TimeZone::get("Europe/Berlin").unwrap());
        cal.holidays.insert(jiff::civil::date(2026, 12, 25));
        // Thursday 24 Dec 16:00 Berlin (15:00Z): one hour left, Friday is a holiday,
        // the weekend does not count: due Monday 28 Dec 12:00 Berlin.
        let due = cal.add_business_hours(ts("2026-12-24T15:00:00Z"), 4.0);
        assert_eq!(due, ts("2026-12-28T11:00:00Z"));
        assert_eq!(
            cal.business_time_between(ts("2026-12-24T15:00:00Z"), due),
            SignedDuration::from_hours(4)
        );
    }

    proptest! {
        #[test]
        fn business_time_of_added_hours_is_those_hours(
            start in 1_700_000_000i64..1_800_000_000i64,
            minutes in 0i64..(60 * 40),
        ) {
            let cal = BusinessCalendar::nine_to_five(TimeZone::get("America/New_York").unwrap());
            let start = Timestamp::from_second(start).unwrap();
            let due = cal.add_business_hours(start, minutes as f64 / 60.0);
            prop_assert!(due >= start);
            let measured = cal.business_time_between(start, due);
            prop_assert!((measured.as_secs_f64() - minutes as f64 * 60.0).abs() < 1.0,
                "{} min gave {measured:?}", minutes);
        }
    }
}
