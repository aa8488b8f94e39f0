//! Rolling periods of school weeks: the national penalty-notice threshold and local
//! persistent-lateness thresholds.

use std::collections::BTreeMap;

use chrono::{Datelike, Days, NaiveDate};
use serde::Serialize;

use super::{AttendanceCode, Mark, effective_marks};

/// National threshold for considering a penalty notice: this many sessions of unauthorised
/// absence (`G`, `O`, `U`) ...
pub const PENALTY_NOTICE_SESSIONS: u32 = 10;
/// ... within a rolling period of this many school weeks.
pub const ROLLING_PERIOD_SCHOOL_WEEKS: usize = 10;

/// A rolling period of school weeks in which a threshold is met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThresholdWindow {
    /// The Monday of the window's first school week.
    pub first_day: NaiveDate,
    /// The Sunday of its last school week.
    pub last_day: NaiveDate,
    /// School weeks in the window: [`ROLLING_PERIOD_SCHOOL_WEEKS`], or fewer when the record
    /// holds fewer school weeks than that.
    pub school_weeks: u32,
    /// The qualifying marks, in date and session order.
    pub marks: Vec<Mark>,
}

impl ThresholdWindow {
    /// How many qualifying marks the window holds.
    pub fn count(&self) -> u32 {
        u32::try_from(self.marks.len()).unwrap_or(u32::MAX)
    }

    /// Whether `date` lies within the window (non-school weeks inside it included).
    pub fn contains(&self, date: NaiveDate) -> bool {
        (self.first_day..=self.last_day).contains(&date)
    }
}

/// The Monday starting the ISO week (Monday to Sunday) that holds `date`.
pub fn week_start(date: NaiveDate) -> NaiveDate {
    let since_monday = Days::new(date.weekday().num_days_from_monday().into());
    // Only the first days chrono can represent have no Monday before them.
    date.checked_sub_days(since_monday)
        .unwrap_or(NaiveDate::MIN)
}

fn week_end(monday: NaiveDate) -> NaiveDate {
    monday
        .checked_add_days(Days::new(6))
        .unwrap_or(NaiveDate::MAX)
}

/// The pupil's school weeks, each named by its Monday, in order.
///
/// A school week is an ISO week (Monday to Sunday) holding at least one possible session in the
/// marks. Weeks with no marks, or only marks that are not possible sessions (a half-term coded
/// `#`, a pupil dual registered elsewhere all week), are not school weeks and so do not use up
/// any of a rolling period. Only the marks given are seen: weeks the pupil spent at another
/// school count only if their marks are included.
pub fn school_weeks(marks: &[Mark]) -> Vec<NaiveDate> {
    let mut weeks: Vec<NaiveDate> = effective_marks(marks)
        .into_iter()
        .filter(|m| m.code.is_possible_session())
        .map(|m| week_start(m.date))
        .collect();
    weeks.dedup();
    weeks
}

/// Every rolling period of 10 school weeks holding 10 or more sessions of unauthorised absence
/// coded `G`, `O` or `U`: the national threshold for considering a penalty notice. `N` marks do
/// not count until the school resolves them.
///
/// The windows are every run of [`ROLLING_PERIOD_SCHOOL_WEEKS`] consecutive school weeks (see
/// [`school_weeks`]), so they may span holidays, terms and school years. When the record holds
/// fewer than 10 school weeks there is a single window covering all of them: any 10-week period
/// containing those weeks would hold the same marks. Overlapping windows are each reported, in
/// order; an empty result means the threshold is not met.
pub fn penalty_notice_windows(marks: &[Mark]) -> Vec<ThresholdWindow> {
    windows_meeting(
        marks,
        PENALTY_NOTICE_SESSIONS,
        AttendanceCode::counts_toward_penalty_threshold,
    )
}

/// Every rolling period of 10 school weeks holding `threshold_marks` or more late marks after
/// the register closed (`U`): local codes of conduct set such thresholds, for example 14 within
/// 10 school weeks. Windows are as in [`penalty_notice_windows`]. A threshold of 0 is treated as
/// 1: a window without any late mark is never reported.
pub fn persistent_lateness_windows(marks: &[Mark], threshold_marks: u32) -> Vec<ThresholdWindow> {
    windows_meeting(marks, threshold_marks, |code| {
        code == AttendanceCode::LateAfterRegisterClosed
    })
}

fn windows_meeting(
    marks: &[Mark],
    threshold: u32,
    qualifies: impl Fn(AttendanceCode) -> bool,
) -> Vec<ThresholdWindow> {
    let threshold = usize::try_from(threshold.max(1)).unwrap_or(usize::MAX);
    let weeks = school_weeks(marks);
    // Qualifying codes are all possible sessions, so each of these weeks is a school week.
    let mut qualifying: BTreeMap<NaiveDate, Vec<Mark>> = BTreeMap::new();
    for mark in effective_marks(marks) {
        if qualifies(mark.code) && mark.code.is_possible_session() {
            qualifying
                .entry(week_start(mark.date))
                .or_default()
                .push(mark);
        }
    }
    let per_week: Vec<&[Mark]> = weeks
        .iter()
        .map(|week| qualifying.get(week).map_or(&[][..], Vec::as_slice))
        .collect();

    let span = weeks.len().min(ROLLING_PERIOD_SCHOOL_WEEKS);
    if span == 0 {
        return Vec::new();
    }
    weeks
        .windows(span)
        .zip(per_week.windows(span))
        .filter(|(_, week_marks)| week_marks.iter().map(|m| m.len()).sum::<usize>() >= threshold)
        .map(|(window_weeks, week_marks)| ThresholdWindow {
            first_day: window_weeks[0],
            last_day: week_end(window_weeks[span - 1]),
            school_weeks: u32::try_from(span).unwrap_or(u32::MAX),
            marks: week_marks.concat(),
        })
        .collect()
}
