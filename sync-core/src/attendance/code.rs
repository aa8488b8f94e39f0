//! The national attendance codes: what each one means and how it counts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One register code, as written in a school's attendance register.
///
/// Holds every code of the School Attendance (Pupil Registration) (England) Regulations 2024
/// (in force from 19 August 2024) and the older codes still found in exports covering earlier
/// years, so that a pupil's history can be imported whole. Each variant's documentation starts
/// with the code itself; [`AttendanceCode::as_str`] and [`FromStr`] convert between the two.
///
/// Serialises as the code string (`"/"`, `"C1"`, `"#"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttendanceCode {
    // Present.
    /// `/`: present at morning registration.
    PresentAm,
    /// `\`: present at afternoon registration.
    PresentPm,
    /// `L`: late, arrived before the register closed.
    Late,

    // Attending a place other than the school.
    /// `K`: attending education provision arranged by the local authority.
    LocalAuthorityProvision,
    /// `V`: attending an educational visit or trip.
    EducationalVisit,
    /// `P`: participating in a supervised sporting activity.
    SportingActivity,
    /// `W`: attending work experience.
    WorkExperience,
    /// `B`: attending any other approved educational activity.
    OtherApprovedActivity,
    /// `D`: dual registered, attending a session at the other setting where they are registered.
    /// Not a possible session here: the other setting counts it.
    DualRegistered,

    // Absent: leave of absence.
    /// `C1`: participating in a regulated performance or regulated employment abroad.
    RegulatedPerformance,
    /// `M`: medical or dental appointment.
    MedicalAppointment,
    /// `J1`: interview with a prospective employer or educational establishment.
    Interview,
    /// `S`: study leave for a public examination.
    StudyLeave,
    /// `X`: of non-compulsory school age and not required to attend. Not a possible session.
    NotRequired,
    /// `C2`: not in school because of a part-time timetable.
    PartTimeTimetable,
    /// `C`: leave of absence in exceptional circumstances.
    ExceptionalCircumstances,

    // Absent: other authorised reasons.
    /// `T`: travelling with a parent who travels for occupational purposes.
    ParentTravelling,
    /// `R`: religious observance.
    ReligiousObservance,
    /// `I`: illness (not a medical or dental appointment).
    Illness,
    /// `E`: suspended or excluded, with no alternative provision made.
    Suspended,

    // Absent: unable to attend because of an unavoidable cause (none is a possible session).
    /// `Q`: the local authority failed to make access arrangements.
    NoAccessArrangements,
    /// `Y1`: the transport normally provided is not available.
    TransportNotAvailable,
    /// `Y2`: widespread disruption to travel caused by an emergency.
    TravelDisruption,
    /// `Y3`: the part of the premises the pupil would use is closed.
    PartOfPremisesClosed,
    /// `Y4`: the whole school site is unexpectedly closed.
    SchoolSiteClosed,
    /// `Y5`: in police detention, remanded or serving a sentence of detention.
    CriminalJusticeDetention,
    /// `Y6`: attendance prohibited under public health guidance or law.
    PublicHealth,
    /// `Y7`: any other unavoidable cause.
    OtherUnavoidableCause,

    // Absent: unauthorised.
    /// `G`: holiday not granted by the school.
    UnauthorisedHoliday,
    /// `N`: reason for absence not yet established. The school must replace it with a final code
    /// within 5 school days, so it never counts towards the penalty-notice threshold.
    ReasonNotYetEstablished,
    /// `O`: absent in other or unknown circumstances.
    UnauthorisedOther,
    /// `U`: arrived after the register closed.
    LateAfterRegisterClosed,

    // Administrative.
    /// `Z`: prospective pupil, not yet on the admission register.
    ProspectivePupil,
    /// `#`: planned whole-school closure, school holidays included.
    PlannedClosure,

    // Codes withdrawn before the 2024 regulations, still found in older exports.
    /// `H` (until August 2024): holiday authorised by the school in exceptional circumstances.
    AuthorisedHoliday,
    /// `F` (withdrawn September 2013): agreed extended family holiday. The school census folds
    /// it into `H`, so it counts the same way.
    AgreedExtendedHoliday,
    /// `J` (until August 2024): interview. Then an approved educational activity, counted as
    /// present; its successor `J1` is a leave of absence.
    InterviewPre2024,
    /// `Y` (until August 2024): unable to attend due to exceptional circumstances (site closed,
    /// travel disrupted, in custody), split into `Y1`-`Y7` in 2024. Not a possible session.
    UnableToAttendPre2024,
}

/// How a session with a given code counts in attendance figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeCategory {
    /// In school (`/`, `\`, `L`).
    Present,
    /// At an approved educational activity away from the school; counts as present.
    ApprovedEducationalActivity,
    /// Absent with the school's authority.
    AuthorisedAbsence,
    /// Absent without it (`G`, `N`, `O`, `U`).
    UnauthorisedAbsence,
    /// Not a possible session: dual registered elsewhere (`D`), not required to attend (`X`),
    /// unable to attend through an unavoidable cause (`Q`, `Y1`-`Y7`, `Y`) or administrative
    /// (`Z`, `#`). Left out of every figure.
    NotPossible,
}

/// The heading a code sits under in the DfE table. Differs from [`CodeCategory`] where a code's
/// heading and its counting part company: `D` is attending elsewhere yet not a possible session,
/// `X` is a leave of absence yet not a possible session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterGroup {
    Present,
    AttendingElsewhere,
    LeaveOfAbsence,
    OtherAuthorised,
    UnableToAttend,
    Unauthorised,
    Administrative,
}

/// A register code this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown attendance code {code:?}")]
pub struct ParseCodeError {
    /// The code as given (trimmed).
    pub code: String,
}

impl AttendanceCode {
    /// Every code, 2024 codes first in the DfE table's order, then the pre-2024 ones.
    pub const ALL: [AttendanceCode; 38] = [
        Self::PresentAm,
        Self::PresentPm,
        Self::Late,
        Self::LocalAuthorityProvision,
        Self::EducationalVisit,
        Self::SportingActivity,
        Self::WorkExperience,
        Self::OtherApprovedActivity,
        Self::DualRegistered,
        Self::RegulatedPerformance,
        Self::MedicalAppointment,
        Self::Interview,
        Self::StudyLeave,
        Self::NotRequired,
        Self::PartTimeTimetable,
        Self::ExceptionalCircumstances,
        Self::ParentTravelling,
        Self::ReligiousObservance,
        Self::Illness,
        Self::Suspended,
        Self::NoAccessArrangements,
        Self::TransportNotAvailable,
        Self::TravelDisruption,
        Self::PartOfPremisesClosed,
        Self::SchoolSiteClosed,
        Self::CriminalJusticeDetention,
        Self::PublicHealth,
        Self::OtherUnavoidableCause,
        Self::UnauthorisedHoliday,
        Self::ReasonNotYetEstablished,
        Self::UnauthorisedOther,
        Self::LateAfterRegisterClosed,
        Self::ProspectivePupil,
        Self::PlannedClosure,
        Self::AuthorisedHoliday,
        Self::AgreedExtendedHoliday,
        Self::InterviewPre2024,
        Self::UnableToAttendPre2024,
    ];

    /// The code as written in the register.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PresentAm => "/",
            Self::PresentPm => "\\",
            Self::Late => "L",
            Self::LocalAuthorityProvision => "K",
            Self::EducationalVisit => "V",
            Self::SportingActivity => "P",
            Self::WorkExperience => "W",
            Self::OtherApprovedActivity => "B",
            Self::DualRegistered => "D",
            Self::RegulatedPerformance => "C1",
            Self::MedicalAppointment => "M",
            Self::Interview => "J1",
            Self::StudyLeave => "S",
            Self::NotRequired => "X",
            Self::PartTimeTimetable => "C2",
            Self::ExceptionalCircumstances => "C",
            Self::ParentTravelling => "T",
            Self::ReligiousObservance => "R",
            Self::Illness => "I",
            Self::Suspended => "E",
            Self::NoAccessArrangements => "Q",
            Self::TransportNotAvailable => "Y1",
            Self::TravelDisruption => "Y2",
            Self::PartOfPremisesClosed => "Y3",
            Self::SchoolSiteClosed => "Y4",
            Self::CriminalJusticeDetention => "Y5",
            Self::PublicHealth => "Y6",
            Self::OtherUnavoidableCause => "Y7",
            Self::UnauthorisedHoliday => "G",
            Self::ReasonNotYetEstablished => "N",
            Self::UnauthorisedOther => "O",
            Self::LateAfterRegisterClosed => "U",
            Self::ProspectivePupil => "Z",
            Self::PlannedClosure => "#",
            Self::AuthorisedHoliday => "H",
            Self::AgreedExtendedHoliday => "F",
            Self::InterviewPre2024 => "J",
            Self::UnableToAttendPre2024 => "Y",
        }
    }

    /// Parses a code as the registers write it: surrounding whitespace is ignored, case is not
    /// (`g` is not a code; guessing would hide a corrupted export).
    pub fn parse(text: &str) -> Result<Self, ParseCodeError> {
        let code = text.trim();
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == code)
            .ok_or_else(|| ParseCodeError {
                code: code.to_string(),
            })
    }

    /// The code's short meaning, for screens and reports.
    pub const fn description(self) -> &'static str {
        match self {
            Self::PresentAm => "Present (am)",
            Self::PresentPm => "Present (pm)",
            Self::Late => "Late arrival before the register closed",
            Self::LocalAuthorityProvision => {
                "Attending education provision arranged by the local authority"
            }
            Self::EducationalVisit => "Attending an educational visit or trip",
            Self::SportingActivity => "Participating in a sporting activity",
            Self::WorkExperience => "Attending work experience",
            Self::OtherApprovedActivity => "Attending any other approved educational activity",
            Self::DualRegistered => "Dual registered (attending the other setting)",
            Self::RegulatedPerformance => {
                "Participating in a regulated performance or regulated employment abroad"
            }
            Self::MedicalAppointment => "Medical or dental appointment",
            Self::Interview => "Interview",
            Self::StudyLeave => "Study leave",
            Self::NotRequired => "Not required to be in school",
            Self::PartTimeTimetable => "Part-time timetable",
            Self::ExceptionalCircumstances => "Leave of absence in exceptional circumstances",
            Self::ParentTravelling => "Parent travelling for occupational purposes",
            Self::ReligiousObservance => "Religious observance",
            Self::Illness => "Illness (not medical or dental appointment)",
            Self::Suspended => "Suspended or excluded",
            Self::NoAccessArrangements => "Lack of access arrangements",
            Self::TransportNotAvailable => "Transport not available",
            Self::TravelDisruption => "Widespread disruption to travel",
            Self::PartOfPremisesClosed => "Part of school premises closed",
            Self::SchoolSiteClosed => "Whole school site unexpectedly closed",
            Self::CriminalJusticeDetention => "Criminal justice detention",
            Self::PublicHealth => "Public health guidance or law",
            Self::OtherUnavoidableCause => "Any other unavoidable cause",
            Self::UnauthorisedHoliday => "Holiday not granted by the school",
            Self::ReasonNotYetEstablished => "Reason for absence not yet established",
            Self::UnauthorisedOther => "Absent in other or unknown circumstances",
            Self::LateAfterRegisterClosed => "Arrived after the register closed",
            Self::ProspectivePupil => "Prospective pupil not on admission register",
            Self::PlannedClosure => "Planned whole-school closure",
            Self::AuthorisedHoliday => "Authorised holiday (pre-2024 code)",
            Self::AgreedExtendedHoliday => "Agreed extended family holiday (pre-2013 code)",
            Self::InterviewPre2024 => "Interview (pre-2024 code)",
            Self::UnableToAttendPre2024 => {
                "Unable to attend due to exceptional circumstances (pre-2024 code)"
            }
        }
    }

    /// How a session with this code counts.
    pub const fn category(self) -> CodeCategory {
        use CodeCategory::*;
        match self {
            Self::PresentAm | Self::PresentPm | Self::Late => Present,
            Self::LocalAuthorityProvision
            | Self::EducationalVisit
            | Self::SportingActivity
            | Self::WorkExperience
            | Self::OtherApprovedActivity
            | Self::InterviewPre2024 => ApprovedEducationalActivity,
            Self::RegulatedPerformance
            | Self::MedicalAppointment
            | Self::Interview
            | Self::StudyLeave
            | Self::PartTimeTimetable
            | Self::ExceptionalCircumstances
            | Self::ParentTravelling
            | Self::ReligiousObservance
            | Self::Illness
            | Self::Suspended
            | Self::AuthorisedHoliday
            | Self::AgreedExtendedHoliday => AuthorisedAbsence,
            Self::UnauthorisedHoliday
            | Self::ReasonNotYetEstablished
            | Self::UnauthorisedOther
            | Self::LateAfterRegisterClosed => UnauthorisedAbsence,
            Self::DualRegistered
            | Self::NotRequired
            | Self::NoAccessArrangements
            | Self::TransportNotAvailable
            | Self::TravelDisruption
            | Self::PartOfPremisesClosed
            | Self::SchoolSiteClosed
            | Self::CriminalJusticeDetention
            | Self::PublicHealth
            | Self::OtherUnavoidableCause
            | Self::UnableToAttendPre2024
            | Self::ProspectivePupil
            | Self::PlannedClosure => NotPossible,
        }
    }

    /// The heading the code sits under in the DfE table.
    pub const fn group(self) -> RegisterGroup {
        use RegisterGroup::*;
        match self {
            Self::PresentAm | Self::PresentPm | Self::Late => Present,
            Self::LocalAuthorityProvision
            | Self::EducationalVisit
            | Self::SportingActivity
            | Self::WorkExperience
            | Self::OtherApprovedActivity
            | Self::DualRegistered
            | Self::InterviewPre2024 => AttendingElsewhere,
            Self::RegulatedPerformance
            | Self::MedicalAppointment
            | Self::Interview
            | Self::StudyLeave
            | Self::NotRequired
            | Self::PartTimeTimetable
            | Self::ExceptionalCircumstances
            | Self::AuthorisedHoliday
            | Self::AgreedExtendedHoliday => LeaveOfAbsence,
            Self::ParentTravelling
            | Self::ReligiousObservance
            | Self::Illness
            | Self::Suspended => OtherAuthorised,
            Self::NoAccessArrangements
            | Self::TransportNotAvailable
            | Self::TravelDisruption
            | Self::PartOfPremisesClosed
            | Self::SchoolSiteClosed
            | Self::CriminalJusticeDetention
            | Self::PublicHealth
            | Self::OtherUnavoidableCause
            | Self::UnableToAttendPre2024 => UnableToAttend,
            Self::UnauthorisedHoliday
            | Self::ReasonNotYetEstablished
            | Self::UnauthorisedOther
            | Self::LateAfterRegisterClosed => Unauthorised,
            Self::ProspectivePupil | Self::PlannedClosure => Administrative,
        }
    }

    /// Whether the session counts in the pupil's possible sessions here (the denominator of
    /// the attendance percentage).
    pub const fn is_possible_session(self) -> bool {
        !matches!(self.category(), CodeCategory::NotPossible)
    }

    /// Whether the session counts as attended: present, or at an approved educational
    /// activity. `D` does not: the other setting counts it.
    pub const fn counts_as_present(self) -> bool {
        matches!(
            self.category(),
            CodeCategory::Present | CodeCategory::ApprovedEducationalActivity
        )
    }

    /// Whether the session is an absence, authorised or not.
    pub const fn is_absence(self) -> bool {
        matches!(
            self.category(),
            CodeCategory::AuthorisedAbsence | CodeCategory::UnauthorisedAbsence
        )
    }

    /// Whether the session is an unauthorised absence (`G`, `N`, `O`, `U`).
    pub const fn is_unauthorised(self) -> bool {
        matches!(self.category(), CodeCategory::UnauthorisedAbsence)
    }

    /// Late marks: `L` (before the register closed, present) and `U` (after, unauthorised).
    pub const fn is_late(self) -> bool {
        matches!(self, Self::Late | Self::LateAfterRegisterClosed)
    }

    /// Whether the session counts towards the national penalty-notice threshold: `G`, `O` and
    /// `U` only. `N` does not: it is a placeholder the school must resolve within 5 school days.
    pub const fn counts_toward_penalty_threshold(self) -> bool {
        matches!(
            self,
            Self::UnauthorisedHoliday | Self::UnauthorisedOther | Self::LateAfterRegisterClosed
        )
    }

    /// Whether the code was withdrawn before the 2024 regulations (`H`, `F`, `J`, `Y`). Codes
    /// that survived with a changed wording (`B`, `C`, `T`, `X`) are not.
    pub const fn is_pre_2024(self) -> bool {
        matches!(
            self,
            Self::AuthorisedHoliday
                | Self::AgreedExtendedHoliday
                | Self::InterviewPre2024
                | Self::UnableToAttendPre2024
        )
    }
}

impl FromStr for AttendanceCode {
    type Err = ParseCodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for AttendanceCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for AttendanceCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AttendanceCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CodeVisitor;

        impl serde::de::Visitor<'_> for CodeVisitor {
            type Value = AttendanceCode;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an attendance code such as \"/\", \"C1\" or \"#\"")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                AttendanceCode::parse(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(CodeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in AttendanceCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert_eq!(code.as_str().parse::<AttendanceCode>(), Ok(code));
        }
    }

    #[test]
    fn possible_sessions_are_exactly_the_counted_categories() {
        for code in AttendanceCode::ALL {
            let counted = code.counts_as_present() || code.is_absence();
            assert_eq!(code.is_possible_session(), counted, "{code}");
        }
    }
}
