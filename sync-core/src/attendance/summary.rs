//! Attendance figures over a period: sessions, absences, late marks and the percentage.

use std::cmp::Ordering;
use std::fmt;

use chrono::NaiveDate;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use super::{AttendanceCode, CodeCategory, Mark, effective_marks};

/// Attendance at or below this percentage is persistent absence (missing 10% or more of
/// possible sessions).
pub const PERSISTENT_ABSENCE_PERCENT: u32 = 90;
/// Attendance at or below this percentage is severe absence (missing 50% or more).
pub const SEVERE_ABSENCE_PERCENT: u32 = 50;

/// Sessions attended out of possible sessions, kept as the exact fraction.
///
/// Thresholds are compared on the fraction, never on a rounded or floating-point percentage:
/// 9 of 10 is exactly 90% and therefore persistent absence, and 899 of 1000 is not "90.0%".
/// Equality and ordering compare the value of the fraction (1/2 == 2/4).
#[derive(Debug, Clone, Copy)]
pub struct AttendanceRate {
    attended: u32,
    possible: u32,
}

impl AttendanceRate {
    /// `None` when there are no possible sessions or more attended than possible.
    pub const fn new(attended: u32, possible: u32) -> Option<Self> {
        if possible == 0 || attended > possible {
            None
        } else {
            Some(Self { attended, possible })
        }
    }

    /// Sessions attended (present or at an approved educational activity): the numerator.
    pub const fn attended(self) -> u32 {
        self.attended
    }

    /// Possible sessions: the denominator, never zero.
    pub const fn possible(self) -> u32 {
        self.possible
    }

    /// Possible sessions missed.
    pub const fn missed(self) -> u32 {
        self.possible - self.attended
    }

    /// The percentage, within 0..=100. For display and charts; compare thresholds with
    /// [`AttendanceRate::is_at_or_below`].
    pub fn percent(self) -> f64 {
        f64::from(self.attended) * 100.0 / f64::from(self.possible)
    }

    /// Exactly whether attendance is `percent`% or lower.
    pub fn is_at_or_below(self, percent: u32) -> bool {
        u64::from(self.attended) * 100 <= u64::from(percent) * u64::from(self.possible)
    }

    /// The percentage in tenths, rounded half up on the exact fraction (875 for 87.5%).
    pub fn tenths_of_percent(self) -> u32 {
        let attended = u64::from(self.attended);
        let possible = u64::from(self.possible);
        let tenths = (attended * 2000 + possible) / (2 * possible);
        // At most 1000 because attended <= possible.
        u32::try_from(tenths).unwrap_or(1000)
    }

    /// The percentage rounded to one decimal place, as certificates quote it.
    pub fn percent_one_decimal(self) -> f64 {
        f64::from(self.tenths_of_percent()) / 10.0
    }
}

impl PartialEq for AttendanceRate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for AttendanceRate {}

impl PartialOrd for AttendanceRate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for AttendanceRate {
    fn cmp(&self, other: &Self) -> Ordering {
        let left = u64::from(self.attended) * u64::from(other.possible);
        let right = u64::from(other.attended) * u64::from(self.possible);
        left.cmp(&right)
    }
}

/// `87.5%`: one decimal place, rounded half up.
impl fmt::Display for AttendanceRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenths = self.tenths_of_percent();
        write!(f, "{}.{}%", tenths / 10, tenths % 10)
    }
}

/// `{"attended": 7, "possible": 8, "percent": 87.5}`, the percent rounded to one decimal.
impl Serialize for AttendanceRate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("AttendanceRate", 3)?;
        s.serialize_field("attended", &self.attended)?;
        s.serialize_field("possible", &self.possible)?;
        s.serialize_field("percent", &self.percent_one_decimal())?;
        s.end()
    }
}

/// A pupil's attendance figures over a set of marks.
///
/// Counts one mark per session (see [`effective_marks`] for duplicates). Possible sessions are
/// always present + authorised + unauthorised; marks that are not possible sessions (`D`, `X`,
/// `Q`, `Y1`-`Y7`, `Z`, `#`, ...) are left out of every figure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AttendanceSummary {
    possible: u32,
    present: u32,
    approved_activity: u32,
    authorised: u32,
    unauthorised: u32,
    late: u32,
    late_after_register_closed: u32,
}

impl AttendanceSummary {
    /// The figures over all the marks given.
    pub fn from_marks(marks: &[Mark]) -> Self {
        let mut summary = Self::default();
        for mark in effective_marks(marks) {
            summary.count(mark);
        }
        summary
    }

    /// The figures over the marks dated `from` to `to`, both inclusive. Empty when `from` is
    /// after `to`.
    pub fn from_marks_between(marks: &[Mark], from: NaiveDate, to: NaiveDate) -> Self {
        let mut summary = Self::default();
        for mark in effective_marks(marks) {
            if (from..=to).contains(&mark.date) {
                summary.count(mark);
            }
        }
        summary
    }

    fn count(&mut self, mark: Mark) {
        let code = mark.code;
        let counter = match code.category() {
            CodeCategory::NotPossible => return,
            CodeCategory::Present => &mut self.present,
            CodeCategory::ApprovedEducationalActivity => {
                self.approved_activity = self.approved_activity.saturating_add(1);
                &mut self.present
            }
            CodeCategory::AuthorisedAbsence => &mut self.authorised,
            CodeCategory::UnauthorisedAbsence => &mut self.unauthorised,
        };
        *counter = counter.saturating_add(1);
        self.possible = self.possible.saturating_add(1);
        match code {
            AttendanceCode::Late => self.late = self.late.saturating_add(1),
            AttendanceCode::LateAfterRegisterClosed => {
                self.late_after_register_closed = self.late_after_register_closed.saturating_add(1);
            }
            _ => {}
        }
    }

    /// Sessions the pupil could have attended.
    pub const fn possible_sessions(&self) -> u32 {
        self.possible
    }

    /// Sessions attended: present in school (`/`, `\`, `L`) or at an approved educational
    /// activity.
    pub const fn present_sessions(&self) -> u32 {
        self.present
    }

    /// Of the present sessions, those at an approved educational activity away from school.
    pub const fn approved_activity_sessions(&self) -> u32 {
        self.approved_activity
    }

    /// Authorised absences.
    pub const fn authorised_absences(&self) -> u32 {
        self.authorised
    }

    /// Unauthorised absences (`G`, `N`, `O`, `U`).
    pub const fn unauthorised_absences(&self) -> u32 {
        self.unauthorised
    }

    /// Late before the register closed (`L`, counted present).
    pub const fn late_marks(&self) -> u32 {
        self.late
    }

    /// Late after the register closed (`U`, counted as unauthorised absence).
    pub const fn late_after_register_closed(&self) -> u32 {
        self.late_after_register_closed
    }

    /// Attended out of possible sessions; `None` when there were no possible sessions.
    pub const fn attendance(&self) -> Option<AttendanceRate> {
        AttendanceRate::new(self.present, self.possible)
    }

    /// The attendance percentage within 0..=100; `None` when there were no possible sessions.
    pub fn attendance_percent(&self) -> Option<f64> {
        self.attendance().map(AttendanceRate::percent)
    }

    /// Missing 10% or more of possible sessions: attendance of 90% or below, exactly.
    pub fn is_persistent_absence(&self) -> bool {
        self.attendance()
            .is_some_and(|rate| rate.is_at_or_below(PERSISTENT_ABSENCE_PERCENT))
    }

    /// Missing 50% or more of possible sessions: attendance of 50% or below, exactly.
    pub fn is_severe_absence(&self) -> bool {
        self.attendance()
            .is_some_and(|rate| rate.is_at_or_below(SEVERE_ABSENCE_PERCENT))
    }
}

/// The figures a registration certificate or a parenting contract quotes for a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CertificateFigures {
    /// First day of the period.
    pub from: NaiveDate,
    /// Last day of the period (inclusive).
    pub to: NaiveDate,
    pub possible_sessions: u32,
    /// Present or at an approved educational activity.
    pub sessions_attended: u32,
    pub authorised_absences: u32,
    pub unauthorised_absences: u32,
    /// `L` marks: late before the register closed.
    pub late_before_register_closed: u32,
    /// `U` marks: late after the register closed (also counted as unauthorised absences).
    pub late_after_register_closed: u32,
    /// The exact rate; `None` when there were no possible sessions.
    pub attendance: Option<AttendanceRate>,
}

impl CertificateFigures {
    /// The figures over the marks dated `from` to `to` inclusive. A period whose `from` is after
    /// its `to` has no sessions.
    pub fn for_period(marks: &[Mark], from: NaiveDate, to: NaiveDate) -> Self {
        let summary = AttendanceSummary::from_marks_between(marks, from, to);
        Self {
            from,
            to,
            possible_sessions: summary.possible_sessions(),
            sessions_attended: summary.present_sessions(),
            authorised_absences: summary.authorised_absences(),
            unauthorised_absences: summary.unauthorised_absences(),
            late_before_register_closed: summary.late_marks(),
            late_after_register_closed: summary.late_after_register_closed(),
            attendance: summary.attendance(),
        }
    }

    /// The attendance as printed: `87.5%`, or `no possible sessions`.
    pub fn attendance_display(&self) -> String {
        match self.attendance {
            Some(rate) => rate.to_string(),
            None => "no possible sessions".to_string(),
        }
    }
}
