//! The attendance rules: worked examples with hand-computed figures, then properties.
//!
//! Fixtures are invented: pupil references such as `P001` and dates in made-up terms.
#![allow(clippy::unwrap_used, reason = "a test fails loudly on purpose")]

use chrono::{Datelike, Days, NaiveDate, Weekday};
use doorstep_sync_core::attendance::{
    AttendanceCode, AttendanceRate, AttendanceSummary, CertificateFigures, CodeCategory, Column,
    ImportErrorKind, ImportedMark, Mark, RegisterGroup, Session, ThresholdWindow,
    days_left_to_prosecute, earliest_unauthorised_absence, effective_marks, parse_register_csv,
    penalty_notice_windows, persistent_lateness_windows, prosecution_deadline, school_weeks,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Helpers.

fn d(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).unwrap()
}

fn code(text: &str) -> AttendanceCode {
    text.parse().unwrap()
}

fn mark(date: NaiveDate, session: Session, text: &str) -> Mark {
    Mark::new(date, session, code(text))
}

/// A Monday-to-Friday week of marks: `codes` are Monday AM, Monday PM, Tuesday AM, ...
fn week(monday: NaiveDate, codes: [&str; 10]) -> Vec<Mark> {
    assert_eq!(monday.weekday(), Weekday::Mon);
    codes
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let date = monday + Days::new(i as u64 / 2);
            let session = if i % 2 == 0 { Session::Am } else { Session::Pm };
            mark(date, session, text)
        })
        .collect()
}

const FULL_WEEK: [&str; 10] = ["/", "\\", "/", "\\", "/", "\\", "/", "\\", "/", "\\"];
const CLOSED_WEEK: [&str; 10] = ["#"; 10];

/// A full week present, except that the first `absences` sessions (up to 10) get `absence`.
fn week_with(monday: NaiveDate, absence: &str, absences: usize) -> Vec<Mark> {
    let mut codes = FULL_WEEK;
    for slot in codes.iter_mut().take(absences) {
        *slot = absence;
    }
    week(monday, codes)
}

/// The Monday `n` weeks after 6 January 2025 (itself a Monday).
fn monday(n: u64) -> NaiveDate {
    d(2025, 1, 6) + Days::new(7 * n)
}

// ---------------------------------------------------------------------------------------------
// Codes.

#[test]
fn every_2024_code_and_the_older_ones_parse() {
    let codes_2024 = [
        "/", "\\", "L", "K", "V", "P", "W", "B", "D", "C1", "M", "J1", "S", "X", "C2", "C", "T",
        "R", "I", "E", "Q", "Y1", "Y2", "Y3", "Y4", "Y5", "Y6", "Y7", "G", "N", "O", "U", "Z", "#",
    ];
    for text in codes_2024 {
        let parsed = code(text);
        assert_eq!(parsed.as_str(), text);
        assert_eq!(parsed.to_string(), text);
        assert!(!parsed.is_pre_2024(), "{text}");
    }
    for text in ["H", "F", "J", "Y"] {
        assert!(code(text).is_pre_2024(), "{text}");
    }
    assert_eq!(AttendanceCode::ALL.len(), codes_2024.len() + 4);
}

#[test]
fn parsing_trims_but_keeps_case_and_names_the_bad_code() {
    assert_eq!(code(" G\t"), AttendanceCode::UnauthorisedHoliday);
    let err = "g".parse::<AttendanceCode>().unwrap_err();
    assert_eq!(err.code, "g");
    assert_eq!(err.to_string(), "unknown attendance code \"g\"");
    assert_eq!(AttendanceCode::parse(" Y8 ").unwrap_err().code, "Y8");
    assert!(AttendanceCode::parse("").is_err());
    assert!(AttendanceCode::parse("C 1").is_err());
}

#[test]
fn how_codes_count() {
    use CodeCategory::*;
    let expected = [
        ("/", Present),
        ("\\", Present),
        ("L", Present),
        ("K", ApprovedEducationalActivity),
        ("V", ApprovedEducationalActivity),
        ("P", ApprovedEducationalActivity),
        ("W", ApprovedEducationalActivity),
        ("B", ApprovedEducationalActivity),
        ("D", NotPossible),
        ("C1", AuthorisedAbsence),
        ("M", AuthorisedAbsence),
        ("J1", AuthorisedAbsence),
        ("S", AuthorisedAbsence),
        ("X", NotPossible),
        ("C2", AuthorisedAbsence),
        ("C", AuthorisedAbsence),
        ("T", AuthorisedAbsence),
        ("R", AuthorisedAbsence),
        ("I", AuthorisedAbsence),
        ("E", AuthorisedAbsence),
        ("Q", NotPossible),
        ("Y1", NotPossible),
        ("Y4", NotPossible),
        ("Y7", NotPossible),
        ("G", UnauthorisedAbsence),
        ("N", UnauthorisedAbsence),
        ("O", UnauthorisedAbsence),
        ("U", UnauthorisedAbsence),
        ("Z", NotPossible),
        ("#", NotPossible),
        ("H", AuthorisedAbsence),
        ("F", AuthorisedAbsence),
        ("J", ApprovedEducationalActivity),
        ("Y", NotPossible),
    ];
    for (text, category) in expected {
        assert_eq!(code(text).category(), category, "{text}");
    }
    // D sits under "attending a place other than the school" but is not counted here.
    assert_eq!(code("D").group(), RegisterGroup::AttendingElsewhere);
    assert!(!code("D").is_possible_session() && !code("D").counts_as_present());
    assert_eq!(code("X").group(), RegisterGroup::LeaveOfAbsence);
    assert!(!code("X").is_possible_session());

    let where_true = |test: fn(AttendanceCode) -> bool| -> Vec<&str> {
        AttendanceCode::ALL
            .into_iter()
            .filter(|c| test(*c))
            .map(AttendanceCode::as_str)
            .collect()
    };
    assert_eq!(
        where_true(AttendanceCode::counts_toward_penalty_threshold),
        ["G", "O", "U"]
    );
    assert_eq!(where_true(AttendanceCode::is_late), ["L", "U"]);
    assert_eq!(
        where_true(AttendanceCode::is_pre_2024),
        ["H", "F", "J", "Y"]
    );
    assert_eq!(
        where_true(AttendanceCode::counts_as_present),
        ["/", "\\", "L", "K", "V", "P", "W", "B", "J"]
    );
}

#[test]
fn serde_uses_the_register_spelling() {
    let m = mark(d(2025, 1, 6), Session::Pm, "\\");
    let json = serde_json::to_string(&m).unwrap();
    assert_eq!(json, r#"{"date":"2025-01-06","session":"PM","code":"\\"}"#);
    assert_eq!(serde_json::from_str::<Mark>(&json).unwrap(), m);
    for c in AttendanceCode::ALL {
        let json = serde_json::to_value(c).unwrap();
        assert_eq!(json, serde_json::Value::String(c.as_str().into()));
        assert_eq!(serde_json::from_value::<AttendanceCode>(json).unwrap(), c);
    }
    assert!(serde_json::from_str::<AttendanceCode>(r#""Q9""#).is_err());
    assert!(serde_json::from_str::<AttendanceCode>("7").is_err());
}

#[test]
fn sessions_parse_in_any_case() {
    assert_eq!(" am ".parse::<Session>().unwrap(), Session::Am);
    assert_eq!("Pm".parse::<Session>().unwrap(), Session::Pm);
    assert_eq!("noon".parse::<Session>().unwrap_err().text, "noon");
    assert_eq!(Session::Am.to_string(), "AM");
}

// ---------------------------------------------------------------------------------------------
// Figures.

/// Two weeks from Monday 6 January 2025, computed by hand:
///
/// | week | Mon   | Tue   | Wed   | Thu   | Fri   |
/// |------|-------|-------|-------|-------|-------|
/// | 1    | / \   | L \   | G G   | O U   | C \   |
/// | 2    | X X   | D D   | Y1 Y1 | # #   | V I   |
///
/// Not possible: X X D D Y1 Y1 # # (8 of 20), so 12 possible sessions.
/// Present: / \ L \ \ V = 6 (V an approved educational activity).
/// Authorised: C I = 2. Unauthorised: G G O U = 4. Late: L = 1, U = 1.
fn fortnight() -> Vec<Mark> {
    let mut marks = week(
        monday(0),
        ["/", "\\", "L", "\\", "G", "G", "O", "U", "C", "\\"],
    );
    marks.extend(week(
        monday(1),
        ["X", "X", "D", "D", "Y1", "Y1", "#", "#", "V", "I"],
    ));
    marks
}

#[test]
fn a_fortnight_of_marks() {
    let summary = AttendanceSummary::from_marks(&fortnight());
    assert_eq!(summary.possible_sessions(), 12);
    assert_eq!(summary.present_sessions(), 6);
    assert_eq!(summary.approved_activity_sessions(), 1);
    assert_eq!(summary.authorised_absences(), 2);
    assert_eq!(summary.unauthorised_absences(), 4);
    assert_eq!(summary.late_marks(), 1);
    assert_eq!(summary.late_after_register_closed(), 1);
    let rate = summary.attendance().unwrap();
    assert_eq!(
        (rate.attended(), rate.possible(), rate.missed()),
        (6, 12, 6)
    );
    assert_eq!(summary.attendance_percent(), Some(50.0));
    // 50% exactly is severe (and so persistent) absence.
    assert!(summary.is_severe_absence());
    assert!(summary.is_persistent_absence());

    // Four unauthorised sessions: nowhere near the penalty threshold.
    assert!(penalty_notice_windows(&fortnight()).is_empty());
    assert_eq!(
        earliest_unauthorised_absence(&fortnight()),
        Some(d(2025, 1, 8))
    );
}

#[test]
fn a_fortnight_week_by_week() {
    let first = AttendanceSummary::from_marks_between(&fortnight(), d(2025, 1, 6), d(2025, 1, 12));
    assert_eq!(first.possible_sessions(), 10);
    assert_eq!(first.present_sessions(), 5);
    assert_eq!(first.authorised_absences(), 1);
    assert_eq!(first.unauthorised_absences(), 4);

    let second =
        AttendanceSummary::from_marks_between(&fortnight(), d(2025, 1, 13), d(2025, 1, 17));
    assert_eq!(second.possible_sessions(), 2);
    assert_eq!(second.present_sessions(), 1);
    assert_eq!(second.authorised_absences(), 1);

    // Both ends are inclusive: Friday 17th alone holds V and I.
    let friday =
        AttendanceSummary::from_marks_between(&fortnight(), d(2025, 1, 17), d(2025, 1, 17));
    assert_eq!(friday.possible_sessions(), 2);

    // A reversed period and a period without marks have no possible sessions.
    let reversed =
        AttendanceSummary::from_marks_between(&fortnight(), d(2025, 1, 17), d(2025, 1, 6));
    assert_eq!(reversed, AttendanceSummary::default());
    let empty = AttendanceSummary::from_marks(&[]);
    assert_eq!(empty.attendance(), None);
    assert_eq!(empty.attendance_percent(), None);
    assert!(!empty.is_persistent_absence() && !empty.is_severe_absence());
}

#[test]
fn ninety_percent_exactly_is_persistent_absence() {
    // 20 sessions, 2 of them O: 18/20 = 90%.
    let mut marks = week(monday(0), FULL_WEEK);
    marks.extend(week_with(monday(1), "O", 2));
    let summary = AttendanceSummary::from_marks(&marks);
    assert_eq!(summary.attendance_percent(), Some(90.0));
    assert!(summary.is_persistent_absence());
    assert!(!summary.is_severe_absence());

    // 19/20 = 95% is not.
    let mut marks = week(monday(0), FULL_WEEK);
    marks.extend(week_with(monday(1), "I", 1));
    let summary = AttendanceSummary::from_marks(&marks);
    assert_eq!(summary.attendance_percent(), Some(95.0));
    assert!(!summary.is_persistent_absence());

    // 11/20 = 55% is persistent but not severe; 10/20 is severe.
    let mut marks = week(monday(0), FULL_WEEK);
    marks.extend(week_with(monday(1), "G", 9));
    assert!(!AttendanceSummary::from_marks(&marks).is_severe_absence());
    marks.extend(week_with(monday(1), "G", 10));
    assert!(AttendanceSummary::from_marks(&marks).is_severe_absence());
}

#[test]
fn rates_compare_exactly_and_round_half_up_for_display() {
    let rate = |a, p| AttendanceRate::new(a, p).unwrap();
    assert_eq!(rate(9, 10), rate(18, 20));
    assert!(rate(2, 3) > rate(66, 100));
    assert_eq!(rate(2, 3).to_string(), "66.7%");
    assert_eq!(rate(1, 3).to_string(), "33.3%");
    assert_eq!(rate(1, 16).to_string(), "6.3%"); // 6.25
    assert_eq!(rate(7, 8).to_string(), "87.5%");
    assert_eq!(rate(0, 5).to_string(), "0.0%");
    assert_eq!(rate(5, 5).to_string(), "100.0%");
    // 89.99% shows as 90.0% yet is persistent absence; 90.01% shows the same and is not.
    assert_eq!(rate(8999, 10_000).to_string(), "90.0%");
    assert!(rate(8999, 10_000).is_at_or_below(90));
    assert_eq!(rate(9001, 10_000).to_string(), "90.0%");
    assert!(!rate(9001, 10_000).is_at_or_below(90));
    assert_eq!(AttendanceRate::new(1, 0), None);
    assert_eq!(AttendanceRate::new(3, 2), None);
    assert_eq!(
        serde_json::to_value(rate(7, 8)).unwrap(),
        serde_json::json!({"attended": 7, "possible": 8, "percent": 87.5})
    );
}

#[test]
fn duplicate_marks_for_a_session_resolve_to_the_last() {
    let monday = d(2025, 1, 6);
    let original = mark(monday, Session::Am, "N");
    let amended = mark(monday, Session::Am, "I");
    let afternoon = mark(monday, Session::Pm, "\\");

    let summary = AttendanceSummary::from_marks(&[original, afternoon, amended]);
    assert_eq!(summary.possible_sessions(), 2);
    assert_eq!(summary.authorised_absences(), 1);
    assert_eq!(summary.unauthorised_absences(), 0);
    assert_eq!(
        effective_marks(&[original, afternoon, amended]),
        [amended, afternoon]
    );
    assert_eq!(earliest_unauthorised_absence(&[original, amended]), None);

    // In the other order the N stands.
    let summary = AttendanceSummary::from_marks(&[amended, afternoon, original]);
    assert_eq!(summary.unauthorised_absences(), 1);
    assert_eq!(
        earliest_unauthorised_absence(&[amended, original]),
        Some(monday)
    );
}

#[test]
fn certificate_figures_for_a_period() {
    let figures = CertificateFigures::for_period(&fortnight(), d(2025, 1, 6), d(2025, 1, 10));
    assert_eq!(
        figures,
        CertificateFigures {
            from: d(2025, 1, 6),
            to: d(2025, 1, 10),
            possible_sessions: 10,
            sessions_attended: 5,
            authorised_absences: 1,
            unauthorised_absences: 4,
            late_before_register_closed: 1,
            late_after_register_closed: 1,
            attendance: AttendanceRate::new(5, 10),
        }
    );
    assert_eq!(figures.attendance_display(), "50.0%");

    let whole = CertificateFigures::for_period(&fortnight(), d(2024, 9, 1), d(2025, 7, 31));
    assert_eq!(whole.possible_sessions, 12);
    assert_eq!(whole.attendance.map(|r| r.tenths_of_percent()), Some(500));

    let none = CertificateFigures::for_period(&fortnight(), d(2025, 2, 1), d(2025, 2, 28));
    assert_eq!(none.possible_sessions, 0);
    assert_eq!(none.attendance_display(), "no possible sessions");
}

// ---------------------------------------------------------------------------------------------
// Penalty-notice and lateness thresholds.

/// Ten consecutive school weeks from 6 January 2025, the first `n` of them each holding one
/// session coded `absence` (Monday morning).
fn ten_weeks_with(absence: &str, n: u64) -> Vec<Mark> {
    (0..10)
        .flat_map(|w| week_with(monday(w), absence, usize::from(w < n)))
        .collect()
}

#[test]
fn ten_unauthorised_sessions_in_ten_school_weeks_meet_the_threshold() {
    let windows = penalty_notice_windows(&ten_weeks_with("G", 10));
    assert_eq!(windows.len(), 1);
    let window = &windows[0];
    assert_eq!(window.first_day, d(2025, 1, 6));
    assert_eq!(window.last_day, d(2025, 3, 16)); // the Sunday of the tenth week
    assert_eq!(window.school_weeks, 10);
    assert_eq!(window.count(), 10);
    let expected: Vec<Mark> = (0..10).map(|w| mark(monday(w), Session::Am, "G")).collect();
    assert_eq!(window.marks, expected);
}

#[test]
fn nine_do_not_and_n_does_not_count() {
    assert!(penalty_notice_windows(&ten_weeks_with("O", 9)).is_empty());

    // Nine G and an N: still not met, the N awaiting a final code.
    let mut marks = ten_weeks_with("G", 9);
    marks.push(mark(monday(9), Session::Pm, "N"));
    assert!(penalty_notice_windows(&marks).is_empty());

    // Once the N is resolved to O, the threshold is met.
    marks.push(mark(monday(9), Session::Pm, "O"));
    let windows = penalty_notice_windows(&marks);
    assert_eq!(windows.len(), 1);
    assert_eq!(windows[0].count(), 10);

    // G, O and U mix.
    let mut mixed = ten_weeks_with("U", 4);
    mixed.extend(week_with(monday(5), "G", 4));
    mixed.extend(week_with(monday(6), "O", 2));
    assert_eq!(penalty_notice_windows(&mixed)[0].count(), 10);
    // L and authorised absences never count.
    let mut other = ten_weeks_with("L", 10);
    other.extend(week_with(monday(3), "I", 10));
    assert!(penalty_notice_windows(&other).is_empty());
}

#[test]
fn a_closure_week_is_not_a_school_week() {
    // Five school weeks, a half-term coded #, five more. 5 U in the first school week and 5 G
    // in the tenth: 11 calendar weeks apart but within 10 school weeks.
    let mut marks = week_with(monday(0), "U", 5);
    for w in 1..5 {
        marks.extend(week(monday(w), FULL_WEEK));
    }
    marks.extend(week(monday(5), CLOSED_WEEK));
    for w in 6..10 {
        marks.extend(week(monday(w), FULL_WEEK));
    }
    marks.extend(week_with(monday(10), "G", 5));

    assert_eq!(school_weeks(&marks).len(), 10);
    assert!(!school_weeks(&marks).contains(&monday(5)));
    let windows = penalty_notice_windows(&marks);
    assert_eq!(windows.len(), 1);
    assert_eq!(windows[0].first_day, monday(0));
    assert_eq!(windows[0].last_day, d(2025, 3, 23));
    assert_eq!(windows[0].school_weeks, 10);
    assert_eq!(windows[0].count(), 10);

    // Had the school been open that week, the marks would lie 11 school weeks apart.
    let open: Vec<Mark> = marks
        .iter()
        .map(|m| match m.code {
            AttendanceCode::PlannedClosure => mark(m.date, m.session, "/"),
            _ => *m,
        })
        .collect();
    assert_eq!(school_weeks(&open).len(), 11);
    assert!(penalty_notice_windows(&open).is_empty());

    // A week without any marks is skipped the same way.
    let gap: Vec<Mark> = marks
        .iter()
        .copied()
        .filter(|m| m.code != AttendanceCode::PlannedClosure)
        .collect();
    assert_eq!(penalty_notice_windows(&gap), windows);
}

#[test]
fn fewer_than_ten_school_weeks_form_one_window() {
    let mut marks = week_with(monday(0), "G", 10);
    marks.extend(week(monday(1), FULL_WEEK));
    let windows = penalty_notice_windows(&marks);
    assert_eq!(
        windows,
        [ThresholdWindow {
            first_day: monday(0),
            last_day: d(2025, 1, 19),
            school_weeks: 2,
            marks: week_with(monday(0), "G", 10),
        }]
    );
}

#[test]
fn every_window_meeting_the_threshold_is_reported() {
    // Eleven school weeks, ten G in the second: both windows holding it are reported.
    let mut marks = week(monday(0), FULL_WEEK);
    marks.extend(week_with(monday(1), "G", 10));
    for w in 2..11 {
        marks.extend(week(monday(w), FULL_WEEK));
    }
    let windows = penalty_notice_windows(&marks);
    assert_eq!(windows.len(), 2);
    assert_eq!(windows[0].first_day, monday(0));
    assert_eq!(windows[1].first_day, monday(1));
    assert!(
        windows
            .iter()
            .all(|w| w.count() == 10 && w.school_weeks == 10)
    );
}

#[test]
fn persistent_lateness_counts_u_marks() {
    // 14 U over 10 school weeks: two in each of the first four weeks, one in the next six.
    let marks: Vec<Mark> = (0..10)
        .flat_map(|w| week_with(monday(w), "U", if w < 4 { 2 } else { 1 }))
        .collect();
    let windows = persistent_lateness_windows(&marks, 14);
    assert_eq!(windows.len(), 1);
    assert_eq!(windows[0].count(), 14);
    assert!(persistent_lateness_windows(&marks, 15).is_empty());
    // L marks are late but not after the register closed.
    let late: Vec<Mark> = (0..10).flat_map(|w| week_with(monday(w), "L", 2)).collect();
    assert!(persistent_lateness_windows(&late, 14).is_empty());
    // A threshold of 0 behaves as 1.
    assert!(persistent_lateness_windows(&late, 0).is_empty());
    assert!(persistent_lateness_windows(&[], 14).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Prosecution time limit.

#[test]
fn prosecution_deadlines() {
    assert_eq!(prosecution_deadline(d(2025, 1, 15)), d(2025, 7, 15));
    assert_eq!(prosecution_deadline(d(2025, 9, 3)), d(2026, 3, 3));
    // Month ends: the limit falls on the last day of the shorter month.
    assert_eq!(prosecution_deadline(d(2025, 8, 31)), d(2026, 2, 28));
    assert_eq!(prosecution_deadline(d(2023, 8, 31)), d(2024, 2, 29));
    assert_eq!(prosecution_deadline(d(2025, 3, 31)), d(2025, 9, 30));
    assert_eq!(prosecution_deadline(d(2025, 8, 30)), d(2026, 2, 28));
    assert_eq!(prosecution_deadline(NaiveDate::MAX), NaiveDate::MAX);

    let first = d(2025, 1, 15);
    assert_eq!(days_left_to_prosecute(first, first), 181);
    assert_eq!(days_left_to_prosecute(first, d(2025, 7, 14)), 1);
    assert_eq!(days_left_to_prosecute(first, d(2025, 7, 15)), 0);
    assert_eq!(days_left_to_prosecute(first, d(2025, 7, 20)), -5);
}

#[test]
fn the_clock_starts_at_the_earliest_unauthorised_absence() {
    let marks = [
        mark(d(2025, 3, 3), Session::Am, "O"),
        mark(d(2025, 2, 3), Session::Pm, "I"),
        mark(d(2025, 2, 10), Session::Am, "U"),
        mark(d(2025, 2, 4), Session::Am, "/"),
    ];
    assert_eq!(earliest_unauthorised_absence(&marks), Some(d(2025, 2, 10)));
    assert_eq!(earliest_unauthorised_absence(&marks[1..2]), None);
    assert_eq!(earliest_unauthorised_absence(&[]), None);
}

// ---------------------------------------------------------------------------------------------
// Register CSV import.

#[test]
fn register_csv_reports_each_bad_line_and_keeps_the_good_ones() {
    let text = "pupil_ref,date,session,code\n\
                P001,2025-01-06,AM,/\n\
                P001,06/01/2025,pm,\\\n\
                P001,2025-01-07,AM,Q9\n\
                P002,31/02/2025,AM,G\n\
                P002,2025-01-07,XX,G\n\
                P002,2025-01-07,AM\n\
                ,2025-01-07,AM,O\n\
                P003,2025-01-08,PM,C1\n";
    let import = parse_register_csv(text);
    assert_eq!(
        import.marks,
        [
            ImportedMark {
                pupil_ref: "P001".into(),
                mark: mark(d(2025, 1, 6), Session::Am, "/"),
            },
            ImportedMark {
                pupil_ref: "P001".into(),
                mark: mark(d(2025, 1, 6), Session::Pm, "\\"),
            },
            ImportedMark {
                pupil_ref: "P003".into(),
                mark: mark(d(2025, 1, 8), Session::Pm, "C1"),
            },
        ]
    );
    let errors: Vec<(u64, ImportErrorKind)> = import
        .errors
        .iter()
        .map(|e| (e.line, e.kind.clone()))
        .collect();
    assert_eq!(
        errors,
        [
            (4, ImportErrorKind::UnknownCode { code: "Q9".into() }),
            (
                5,
                ImportErrorKind::InvalidDate {
                    text: "31/02/2025".into()
                }
            ),
            (6, ImportErrorKind::InvalidSession { text: "XX".into() }),
            (
                7,
                ImportErrorKind::WrongColumnCount {
                    expected: 4,
                    found: 3
                }
            ),
            (
                8,
                ImportErrorKind::MissingField {
                    field: Column::PupilRef
                }
            ),
        ]
    );
    assert_eq!(
        import.errors[0].to_string(),
        "line 4: unknown attendance code \"Q9\""
    );
    assert_eq!(
        serde_json::to_value(&import.errors[0]).unwrap(),
        serde_json::json!({"line": 4, "reason": "unknown_code", "code": "Q9"})
    );
    assert_eq!(
        serde_json::to_value(&import.errors[4]).unwrap(),
        serde_json::json!({"line": 8, "reason": "missing_field", "field": "pupil_ref"})
    );
    assert!(!import.is_clean());
    let by_pupil = import.marks_by_pupil();
    assert_eq!(by_pupil["P001"].len(), 2);
    assert_eq!(by_pupil["P003"].len(), 1);
}

#[test]
fn register_csv_reports_every_problem_on_a_line() {
    let import = parse_register_csv("pupil_ref,date,session,code\nP001,2025-13-01,,g\n");
    let kinds: Vec<ImportErrorKind> = import.errors.into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            ImportErrorKind::MissingField {
                field: Column::Session
            },
            ImportErrorKind::InvalidDate {
                text: "2025-13-01".into()
            },
            ImportErrorKind::UnknownCode { code: "g".into() },
        ]
    );
    assert!(import.marks.is_empty());
}

#[test]
fn register_csv_header() {
    let missing = parse_register_csv("");
    assert!(missing.marks.is_empty());
    assert_eq!(missing.errors.len(), 1);
    assert_eq!(missing.errors[0].line, 1);
    assert_eq!(missing.errors[0].kind, ImportErrorKind::MissingHeader);

    // Without the header the first line is data, which cannot be trusted: nothing is imported.
    let headless = parse_register_csv("P001,2025-01-06,AM,/\nP001,2025-01-06,PM,\\\n");
    assert!(headless.marks.is_empty());
    assert_eq!(
        headless.errors[0].kind,
        ImportErrorKind::BadHeader {
            found: "P001,2025-01-06,AM,/".into()
        }
    );
    let reordered = parse_register_csv("date,pupil_ref,session,code\n2025-01-06,P001,AM,/\n");
    assert!(matches!(
        reordered.errors[..],
        [ref e] if matches!(e.kind, ImportErrorKind::BadHeader { .. })
    ));

    // Case, spaces, a byte-order mark, CRLF line ends and quoting are all fine.
    let text = "\u{feff}Pupil_Ref, Date ,SESSION,code\r\n\"P 0,01\",2025-01-06,AM,#\r\n";
    let import = parse_register_csv(text);
    assert!(import.is_clean(), "{:?}", import.errors);
    assert_eq!(import.marks[0].pupil_ref, "P 0,01");
    assert_eq!(import.marks[0].mark.code, AttendanceCode::PlannedClosure);
}

#[test]
fn register_csv_line_numbers_are_the_lines_an_editor_shows() {
    let header = "pupil_ref,date,session,code";
    let bad = "P001,2025-01-06,AM,Q9";
    let good = "P001,2025-01-06,PM,/";
    for (text, line) in [
        (format!("{header}\n\n{bad}\n"), 3),
        (format!("{header}\r\n\r\n{good}\r\n\r\n{bad}\r\n"), 5),
        (format!("{header}\r{good}\r\r{bad}"), 4),
        (
            format!("\n{header}\n\"P\n001\",2025-01-06,AM,/\n{bad}\n"),
            5,
        ),
    ] {
        let import = parse_register_csv(&text);
        let lines: Vec<u64> = import.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [line], "{text:?}");
    }
}

#[test]
fn register_csv_dates() {
    let import = parse_register_csv(
        "pupil_ref,date,session,code\n\
         P001,06/01/2025,AM,/\n\
         P001,6/1/2025,PM,\\\n\
         P001,31/02/2025,AM,G\n\
         P001,01/13/2025,AM,G\n\
         P001,2025-02-29,AM,G\n\
         P001,2024-02-29,AM,G\n",
    );
    let dates: Vec<NaiveDate> = import.marks.iter().map(|m| m.mark.date).collect();
    assert_eq!(dates, [d(2025, 1, 6), d(2025, 1, 6), d(2024, 2, 29)]);
    let bad: Vec<u64> = import.errors.iter().map(|e| e.line).collect();
    assert_eq!(bad, [4, 5, 6]);
    assert!(
        import
            .errors
            .iter()
            .all(|e| matches!(e.kind, ImportErrorKind::InvalidDate { .. }))
    );
}

// ---------------------------------------------------------------------------------------------
// Properties.

fn term_start() -> NaiveDate {
    d(2024, 9, 2)
}

fn any_code() -> impl Strategy<Value = AttendanceCode> {
    proptest::sample::select(AttendanceCode::ALL.to_vec())
}

fn not_possible_code() -> impl Strategy<Value = AttendanceCode> {
    let codes: Vec<AttendanceCode> = AttendanceCode::ALL
        .into_iter()
        .filter(|c| !c.is_possible_session())
        .collect();
    proptest::sample::select(codes)
}

/// Codes weighted towards unauthorised absence, so that thresholds are sometimes met.
fn absence_heavy_code() -> impl Strategy<Value = AttendanceCode> {
    prop_oneof![
        3 => proptest::sample::select(vec![
            AttendanceCode::UnauthorisedHoliday,
            AttendanceCode::UnauthorisedOther,
            AttendanceCode::LateAfterRegisterClosed,
        ]),
        1 => Just(AttendanceCode::ReasonNotYetEstablished),
        4 => any_code(),
    ]
}

fn any_session() -> impl Strategy<Value = Session> {
    prop_oneof![Just(Session::Am), Just(Session::Pm)]
}

fn date_within(days: u64) -> impl Strategy<Value = NaiveDate> {
    (0..days).prop_map(|n| term_start() + Days::new(n))
}

/// Marks with at most one per session, in date order.
fn unique_marks(
    days: u64,
    max: usize,
    code: impl Strategy<Value = AttendanceCode>,
) -> impl Strategy<Value = Vec<Mark>> {
    proptest::collection::btree_map((date_within(days), any_session()), code, 0..max).prop_map(
        |map| {
            map.into_iter()
                .map(|((date, session), code)| Mark::new(date, session, code))
                .collect()
        },
    )
}

fn rate_of(marks: &[Mark]) -> Option<AttendanceRate> {
    AttendanceSummary::from_marks(marks).attendance()
}

/// The penalty threshold worked out the slow way: school weeks by scanning every Monday,
/// then every run of ten of them.
fn oracle_threshold_windows(marks: &[Mark]) -> usize {
    let monday_of =
        |date: NaiveDate| date - Days::new(date.weekday().num_days_from_monday().into());
    let mut mondays: Vec<NaiveDate> = marks
        .iter()
        .filter(|m| m.code.is_possible_session())
        .map(|m| monday_of(m.date))
        .collect();
    mondays.sort();
    mondays.dedup();
    let per_week: Vec<usize> = mondays
        .iter()
        .map(|monday| {
            marks
                .iter()
                .filter(|m| monday_of(m.date) == *monday)
                .filter(|m| matches!(m.code.as_str(), "G" | "O" | "U"))
                .count()
        })
        .collect();
    if per_week.is_empty() {
        return 0;
    }
    per_week
        .windows(per_week.len().min(10))
        .filter(|w| w.iter().sum::<usize>() >= 10)
        .count()
}

proptest! {
    #[test]
    fn figures_add_up_and_stay_in_range(marks in unique_marks(200, 120, any_code())) {
        let summary = AttendanceSummary::from_marks(&marks);
        prop_assert_eq!(
            summary.possible_sessions(),
            summary.present_sessions() + summary.authorised_absences()
                + summary.unauthorised_absences()
        );
        prop_assert_eq!(
            summary.possible_sessions() as usize,
            marks.iter().filter(|m| m.code.is_possible_session()).count()
        );
        prop_assert!(summary.approved_activity_sessions() <= summary.present_sessions());
        prop_assert!(summary.late_marks() <= summary.present_sessions());
        prop_assert!(summary.late_after_register_closed() <= summary.unauthorised_absences());
        match summary.attendance_percent() {
            Some(percent) => prop_assert!((0.0..=100.0).contains(&percent)),
            None => prop_assert_eq!(summary.possible_sessions(), 0),
        }
        if summary.is_severe_absence() {
            prop_assert!(summary.is_persistent_absence());
        }
    }

    #[test]
    fn being_present_instead_never_lowers_attendance(
        marks in unique_marks(200, 120, any_code()),
        index in any::<proptest::sample::Index>(),
    ) {
        prop_assume!(!marks.is_empty());
        let i = index.index(marks.len());
        let mut better = marks.clone();
        if better[i].code.is_absence() {
            better[i].code = AttendanceCode::PresentAm;
            prop_assert!(rate_of(&better) >= rate_of(&marks));
            prop_assert!(rate_of(&better).unwrap().attended() > rate_of(&marks).unwrap().attended());
        }
    }

    #[test]
    fn a_session_that_is_not_possible_changes_nothing(
        marks in unique_marks(200, 120, any_code()),
        date in date_within(200),
        session in any_session(),
        code in not_possible_code(),
    ) {
        prop_assume!(!marks.iter().any(|m| m.date == date && m.session == session));
        let mut more = marks.clone();
        more.push(Mark::new(date, session, code));
        prop_assert_eq!(AttendanceSummary::from_marks(&more), AttendanceSummary::from_marks(&marks));
    }

    #[test]
    fn order_of_the_marks_does_not_matter(
        (marks, shuffled) in unique_marks(140, 200, absence_heavy_code())
            .prop_flat_map(|marks| (Just(marks.clone()), Just(marks).prop_shuffle())),
    ) {
        prop_assert_eq!(AttendanceSummary::from_marks(&shuffled), AttendanceSummary::from_marks(&marks));
        prop_assert_eq!(penalty_notice_windows(&shuffled), penalty_notice_windows(&marks));
        prop_assert_eq!(
            earliest_unauthorised_absence(&shuffled),
            earliest_unauthorised_absence(&marks)
        );
    }

    #[test]
    fn duplicates_resolve_to_the_last_mark(
        marks in proptest::collection::vec(
            (date_within(10), any_session(), any_code())
                .prop_map(|(date, session, code)| Mark::new(date, session, code)),
            0..60,
        ),
    ) {
        let effective = effective_marks(&marks);
        for m in &effective {
            let last = marks.iter().rev().find(|x| x.date == m.date && x.session == m.session);
            prop_assert_eq!(last, Some(m));
        }
        prop_assert!(effective.windows(2).all(|w| (w[0].date, w[0].session) < (w[1].date, w[1].session)));
        prop_assert_eq!(AttendanceSummary::from_marks(&marks), AttendanceSummary::from_marks(&effective));
    }

    #[test]
    fn a_period_is_the_marks_within_it(
        marks in unique_marks(200, 120, any_code()),
        from in date_within(220),
        to in date_within(220),
    ) {
        let inside: Vec<Mark> = marks.iter().copied().filter(|m| m.date >= from && m.date <= to).collect();
        prop_assert_eq!(
            AttendanceSummary::from_marks_between(&marks, from, to),
            AttendanceSummary::from_marks(&inside)
        );
    }

    #[test]
    fn penalty_windows_hold_what_they_claim(marks in unique_marks(140, 200, absence_heavy_code())) {
        let windows = penalty_notice_windows(&marks);
        for window in &windows {
            prop_assert!(window.count() >= 10);
            prop_assert!((1..=10).contains(&window.school_weeks));
            prop_assert_eq!(window.first_day.weekday(), Weekday::Mon);
            prop_assert_eq!(window.last_day.weekday(), Weekday::Sun);
            for m in &window.marks {
                prop_assert!(m.code.counts_toward_penalty_threshold());
                prop_assert!(window.contains(m.date));
                prop_assert!(marks.contains(m));
            }
            // Every qualifying mark inside the window is listed.
            let inside = marks
                .iter()
                .filter(|m| m.code.counts_toward_penalty_threshold() && window.contains(m.date))
                .count();
            prop_assert_eq!(inside, window.marks.len());
            let weeks = school_weeks(&marks);
            let in_window = weeks.iter().filter(|w| window.contains(**w)).count();
            prop_assert_eq!(in_window, window.school_weeks as usize);
        }
        prop_assert_eq!(windows.len(), oracle_threshold_windows(&marks));
    }

    #[test]
    fn lateness_windows_hold_what_they_claim(
        marks in unique_marks(140, 200, absence_heavy_code()),
        threshold in 1u32..20,
    ) {
        for window in persistent_lateness_windows(&marks, threshold) {
            prop_assert!(window.count() >= threshold);
            prop_assert!(window.marks.iter().all(|m| m.code == AttendanceCode::LateAfterRegisterClosed && window.contains(m.date)));
        }
    }

    #[test]
    fn prosecution_deadline_is_six_calendar_months_on(
        first in (0u64..20_000).prop_map(|n| d(2000, 1, 1) + Days::new(n)),
        today_offset in -400i64..400,
    ) {
        let deadline = prosecution_deadline(first);
        let days = (deadline - first).num_days();
        prop_assert!((181..=184).contains(&days), "{first} -> {deadline}");
        let month_gap = (deadline.year() - first.year()) * 12 + deadline.month() as i32 - first.month() as i32;
        prop_assert_eq!(month_gap, 6);
        // Same day of the month, or the last day of a shorter month.
        let next_day = deadline + Days::new(1);
        prop_assert!(deadline.day() == first.day() || (next_day.day() == 1 && deadline.day() < first.day()));
        let today = first + chrono::TimeDelta::days(today_offset);
        prop_assert_eq!(days_left_to_prosecute(first, today), (deadline - today).num_days());
    }

    #[test]
    fn register_csv_round_trips(
        rows in proptest::collection::vec(
            (
                "[A-Z0-9]([A-Za-z0-9 ,\"'/-]{0,10}[A-Za-z0-9])?",
                date_within(400),
                any_session(),
                any_code(),
                any::<bool>(),
                any::<bool>(),
            ),
            0..40,
        ),
    ) {
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(["pupil_ref", "date", "session", "code"]).unwrap();
        let mut expected = Vec::new();
        for (pupil_ref, date, session, code, uk_date, lower) in rows {
            let date_text = if uk_date { date.format("%d/%m/%Y").to_string() } else { date.to_string() };
            let session_text = if lower { session.as_str().to_lowercase() } else { session.to_string() };
            writer.write_record([pupil_ref.as_str(), &date_text, &session_text, code.as_str()]).unwrap();
            expected.push(ImportedMark { pupil_ref, mark: Mark::new(date, session, code) });
        }
        let text = String::from_utf8(writer.into_inner().unwrap()).unwrap();
        let import = parse_register_csv(&text);
        prop_assert!(import.is_clean(), "{:?}", import.errors);
        prop_assert_eq!(import.marks, expected);
    }

    #[test]
    fn register_csv_accounts_for_every_line(
        lines in proptest::collection::vec(
            proptest::collection::vec(
                proptest::sample::select(vec![
                    "P001", "", " ", "2025-01-06", "06/01/2025", "31/02/2025", "2025-1-6",
                    "AM", "pm", "noon", "/", "\\", "G", "C1", "Q9", "#", "\"", "x y",
                ]),
                0..6,
            ),
            0..30,
        ),
    ) {
        // Each line's fields joined by commas; a field of a lone quote may swallow later lines,
        // so only check that nothing panics and every reported line exists.
        let mut text = String::from("pupil_ref,date,session,code\n");
        for fields in &lines {
            text.push_str(&fields.join(","));
            text.push('\n');
        }
        let line_count = text.lines().count() as u64;
        let import = parse_register_csv(&text);
        for error in &import.errors {
            prop_assert!(error.line >= 2 && error.line <= line_count, "{error}");
        }
        if !text.contains('"') {
            // Without quoting, every non-empty line is either a mark or at least one error.
            let data_lines = lines.iter().filter(|f| !f.is_empty() && !f.join(",").is_empty()).count();
            let mut bad: Vec<u64> = import.errors.iter().map(|e| e.line).collect();
            bad.dedup();
            prop_assert_eq!(import.marks.len() + bad.len(), data_lines);
        }
    }

    #[test]
    fn register_csv_never_panics(text in any::<String>()) {
        let import = parse_register_csv(&text);
        prop_assert!(import.errors.iter().all(|e| e.line >= 1));
    }
}
