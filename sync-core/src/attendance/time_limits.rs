//! The time limit for prosecuting a parent for a child's irregular attendance.

use chrono::{Months, NaiveDate};

use super::{Mark, effective_marks};

/// A prosecution must start within this many calendar months of the first unauthorised absence
/// it relies on (a summary offence: Magistrates' Courts Act 1980, s. 127; the Leeds prosecution
/// checklist applies it from the date of the first unauthorised absence).
pub const PROSECUTION_TIME_LIMIT_MONTHS: u32 = 6;

/// The last day on which a prosecution relying on an absence on `first_unauthorised_absence`
/// can start: the same day of the month six calendar months later.
///
/// Where that month is shorter, the limit falls on its last day: an absence on 31 August gives
/// 28 February (29 in a leap year), one on 31 March gives 30 September. Dates beyond chrono's
/// range saturate at [`NaiveDate::MAX`].
pub fn prosecution_deadline(first_unauthorised_absence: NaiveDate) -> NaiveDate {
    first_unauthorised_absence
        .checked_add_months(Months::new(PROSECUTION_TIME_LIMIT_MONTHS))
        .unwrap_or(NaiveDate::MAX)
}

/// The date of the earliest unauthorised absence (`G`, `N`, `O` or `U`) in the marks, which
/// starts the prosecution clock.
///
/// `N` counts: until the school resolves it the absence is unauthorised, and counting it errs
/// towards the earlier deadline. An `N` later amended (a later mark for the same session) does
/// not count, as duplicates resolve to the last mark.
pub fn earliest_unauthorised_absence(marks: &[Mark]) -> Option<NaiveDate> {
    effective_marks(marks)
        .into_iter()
        .find(|m| m.code.is_unauthorised())
        .map(|m| m.date)
}

/// Days from `today` until the prosecution deadline: 0 on the last day, negative once it has
/// passed.
pub fn days_left_to_prosecute(first_unauthorised_absence: NaiveDate, today: NaiveDate) -> i64 {
    prosecution_deadline(first_unauthorised_absence)
        .signed_duration_since(today)
        .num_days()
}
