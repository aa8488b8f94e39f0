//! Register marks: one code for one pupil's morning or afternoon session.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::AttendanceCode;

/// The two registration sessions of a school day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Session {
    /// Morning.
    #[serde(rename = "AM", alias = "Am", alias = "am")]
    Am,
    /// Afternoon.
    #[serde(rename = "PM", alias = "Pm", alias = "pm")]
    Pm,
}

/// A session name that is neither `AM` nor `PM`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid session {text:?}: expected AM or PM")]
pub struct ParseSessionError {
    /// The text as given (trimmed).
    pub text: String,
}

impl Session {
    /// `AM` or `PM`, as registers and MIS exports write them.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Am => "AM",
            Self::Pm => "PM",
        }
    }
}

impl FromStr for Session {
    type Err = ParseSessionError;

    /// Accepts `AM` and `PM` in any case, ignoring surrounding whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if text.eq_ignore_ascii_case("AM") {
            Ok(Self::Am)
        } else if text.eq_ignore_ascii_case("PM") {
            Ok(Self::Pm)
        } else {
            Err(ParseSessionError {
                text: text.to_string(),
            })
        }
    }
}

impl fmt::Display for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One register entry: the code a pupil was given for one session.
///
/// Orders by date, then session, then code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mark {
    pub date: NaiveDate,
    pub session: Session,
    pub code: AttendanceCode,
}

impl Mark {
    pub const fn new(date: NaiveDate, session: Session, code: AttendanceCode) -> Self {
        Self {
            date,
            session,
            code,
        }
    }
}

/// The register as it stands: one mark per (date, session), in date and session order.
///
/// Where the input holds several marks for the same session, **the last one in input order
/// wins**. That is how an amended entry follows the original in a MIS export, and how
/// [`crate::CaseFile::record_marks`] stores them, so figures computed here match the case file.
/// Every figure in this module is computed over these marks.
pub fn effective_marks(marks: &[Mark]) -> Vec<Mark> {
    let by_session: BTreeMap<(NaiveDate, Session), AttendanceCode> = marks
        .iter()
        .map(|m| ((m.date, m.session), m.code))
        .collect();
    by_session
        .into_iter()
        .map(|((date, session), code)| Mark::new(date, session, code))
        .collect()
}
