//! The attendance rules: register codes, attendance figures, the penalty-notice and lateness
//! thresholds, the prosecution time limit, and import of register exports.
//!
//! Codes and how they count follow the School Attendance (Pupil Registration) (England)
//! Regulations 2024 and the DfE code table; older exports' codes (`H`, `F`, `J`, `Y`) are
//! understood too. See DOMAIN.md, "Rules the software must know".
//!
//! Every function here works over a slice of [`Mark`]s and first resolves them with
//! [`effective_marks`]: one mark per session, **the last one in input order winning**. Nothing
//! here reads a clock: callers pass "today" where it matters.

mod code;
mod mark;
mod register_csv;
mod summary;
mod time_limits;
mod windows;

pub use code::{AttendanceCode, CodeCategory, ParseCodeError, RegisterGroup};
pub use mark::{Mark, ParseSessionError, Session, effective_marks};
pub use register_csv::{
    Column, ImportError, ImportErrorKind, ImportedMark, REGISTER_CSV_HEADER, RegisterImport,
    parse_register_csv,
};
pub use summary::{
    AttendanceRate, AttendanceSummary, CertificateFigures, PERSISTENT_ABSENCE_PERCENT,
    SEVERE_ABSENCE_PERCENT,
};
pub use time_limits::{
    PROSECUTION_TIME_LIMIT_MONTHS, days_left_to_prosecute, earliest_unauthorised_absence,
    prosecution_deadline,
};
pub use windows::{
    PENALTY_NOTICE_SESSIONS, ROLLING_PERIOD_SCHOOL_WEEKS, ThresholdWindow, penalty_notice_windows,
    persistent_lateness_windows, school_weeks, week_start,
};
