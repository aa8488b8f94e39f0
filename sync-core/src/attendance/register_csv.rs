//! Import of register marks from a school MIS export (CSV).

use std::collections::BTreeMap;
use std::fmt;

use chrono::NaiveDate;
use serde::Serialize;

use super::{AttendanceCode, Mark, Session};

/// The columns of a register export, in the order the header names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Column {
    PupilRef,
    Date,
    Session,
    Code,
}

impl Column {
    /// The columns in the expected header order: `pupil_ref,date,session,code`.
    pub const ALL: [Column; 4] = [Self::PupilRef, Self::Date, Self::Session, Self::Code];

    /// The column's name in the header line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PupilRef => "pupil_ref",
            Self::Date => "date",
            Self::Session => "session",
            Self::Code => "code",
        }
    }
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The header line a register export must start with.
pub const REGISTER_CSV_HEADER: &str = "pupil_ref,date,session,code";

/// One mark read from an export, with the school's reference for the pupil.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportedMark {
    pub pupil_ref: String,
    pub mark: Mark,
}

/// Why one line of an export was not imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum ImportErrorKind {
    /// The export is empty: no header line.
    #[error("missing header line (expected `{REGISTER_CSV_HEADER}`)")]
    MissingHeader,
    /// The first line is not the expected header; nothing else is read, as the columns
    /// cannot be trusted.
    #[error("unexpected header {found:?} (expected `{REGISTER_CSV_HEADER}`)")]
    BadHeader { found: String },
    #[error("expected {expected} columns, found {found}")]
    WrongColumnCount { expected: usize, found: usize },
    #[error("missing {field}")]
    MissingField { field: Column },
    #[error("unknown attendance code {code:?}")]
    UnknownCode { code: String },
    /// Neither `YYYY-MM-DD` nor `DD/MM/YYYY`, or no such day (`31/02/2025`).
    #[error("invalid date {text:?} (expected YYYY-MM-DD or DD/MM/YYYY)")]
    InvalidDate { text: String },
    #[error("invalid session {text:?} (expected AM or PM)")]
    InvalidSession { text: String },
    /// The CSV itself could not be read at this point.
    #[error("unreadable CSV: {detail}")]
    Malformed { detail: String },
}

/// A problem with one line of an export, by its line number (1-based, the header being line 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ImportError {
    pub line: u64,
    #[serde(flatten)]
    pub kind: ImportErrorKind,
}

/// The outcome of reading an export: the good lines' marks and every problem found. A bad line
/// does not stop the import; a line with several problems reports each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RegisterImport {
    /// Marks in file order. Several for the same pupil and session are all kept; as everywhere
    /// in this module, the last one wins when they are applied.
    pub marks: Vec<ImportedMark>,
    /// Problems in line order.
    pub errors: Vec<ImportError>,
}

impl RegisterImport {
    /// Whether every line was imported.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    /// The marks grouped by pupil reference, each pupil's in file order.
    pub fn marks_by_pupil(&self) -> BTreeMap<&str, Vec<Mark>> {
        let mut by_pupil: BTreeMap<&str, Vec<Mark>> = BTreeMap::new();
        for imported in &self.marks {
            by_pupil
                .entry(imported.pupil_ref.as_str())
                .or_default()
                .push(imported.mark);
        }
        by_pupil
    }
}

/// Reads a register export: a header line `pupil_ref,date,session,code`, then one mark per line.
///
/// Header names are matched ignoring case and surrounding whitespace, and a leading byte-order
/// mark (as spreadsheet exports write) is ignored. Dates are `YYYY-MM-DD` or the UK
/// `DD/MM/YYYY` (day first, one- or two-digit day and month); sessions `AM` or `PM` in any case;
/// codes exactly as the register writes them. Never panics: every problem is reported in
/// [`RegisterImport::errors`].
pub fn parse_register_csv(text: &str) -> RegisterImport {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let lines = LineIndex::new(text);
    let mut import = RegisterImport::default();
    let mut records = reader.records();

    match records.next() {
        None => {
            import.errors.push(ImportError {
                line: 1,
                kind: ImportErrorKind::MissingHeader,
            });
            return import;
        }
        Some(Err(e)) => {
            import.errors.push(csv_error(&e, &lines));
            return import;
        }
        Some(Ok(header)) => {
            let names: Vec<&str> = header.iter().collect();
            let expected = Column::ALL.map(Column::name);
            let matches = names.len() == expected.len()
                && names
                    .iter()
                    .zip(expected)
                    .all(|(found, want)| found.eq_ignore_ascii_case(want));
            if !matches {
                import.errors.push(ImportError {
                    line: lines.line_of(header.position()),
                    kind: ImportErrorKind::BadHeader {
                        found: names.join(","),
                    },
                });
                return import;
            }
        }
    }

    for record in records {
        match record {
            Ok(record) => {
                let line = lines.line_of(record.position());
                match parse_line(&record) {
                    Ok(mark) => import.marks.push(mark),
                    Err(kinds) => import
                        .errors
                        .extend(kinds.into_iter().map(|kind| ImportError { line, kind })),
                }
            }
            Err(e) => import.errors.push(csv_error(&e, &lines)),
        }
    }
    import
}

fn csv_error(error: &csv::Error, lines: &LineIndex<'_>) -> ImportError {
    ImportError {
        line: lines.line_of(error.position()),
        kind: ImportErrorKind::Malformed {
            detail: error.to_string(),
        },
    }
}

/// Line numbers as an editor shows them. The `csv` crate's own line count skips blank lines
/// and counts `\r\n` oddly, so lines are found here from the record's byte offset.
struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset of the start of each line; a line ends at `\n`, `\r\n` or a lone `\r`.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let bytes = text.as_bytes();
        let mut starts = vec![0];
        for (i, &b) in bytes.iter().enumerate() {
            let ends_line = b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n'));
            if ends_line {
                starts.push(i + 1);
            }
        }
        Self { text, starts }
    }

    /// The line on which the record at `position` starts. A record's offset may point at the
    /// blank lines skipped before it, so those are skipped here too.
    fn line_of(&self, position: Option<&csv::Position>) -> u64 {
        let Some(position) = position else {
            return 1;
        };
        let offset = usize::try_from(position.byte()).unwrap_or(usize::MAX);
        let skipped = self.text.as_bytes().get(offset..).map_or(0, |rest| {
            rest.iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count()
        });
        let start = offset.saturating_add(skipped).min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= start);
        u64::try_from(line).unwrap_or(u64::MAX)
    }
}

/// One data line, or every problem with it.
fn parse_line(record: &csv::StringRecord) -> Result<ImportedMark, Vec<ImportErrorKind>> {
    if record.len() != Column::ALL.len() {
        return Err(vec![ImportErrorKind::WrongColumnCount {
            expected: Column::ALL.len(),
            found: record.len(),
        }]);
    }
    let mut problems = Vec::new();
    let mut field = |column: Column| {
        let value = record.get(column as usize).unwrap_or_default();
        if value.is_empty() {
            problems.push(ImportErrorKind::MissingField { field: column });
            None
        } else {
            Some(value)
        }
    };
    let pupil_ref = field(Column::PupilRef);
    let date = field(Column::Date);
    let session = field(Column::Session);
    let code = field(Column::Code);

    let date = date.and_then(|text| {
        let parsed = parse_date(text);
        if parsed.is_none() {
            problems.push(ImportErrorKind::InvalidDate {
                text: text.to_string(),
            });
        }
        parsed
    });
    let session = session.and_then(|text| {
        text.parse::<Session>()
            .map_err(|e| problems.push(ImportErrorKind::InvalidSession { text: e.text }))
            .ok()
    });
    let code = code.and_then(|text| {
        AttendanceCode::parse(text)
            .map_err(|e| problems.push(ImportErrorKind::UnknownCode { code: e.code }))
            .ok()
    });

    match (pupil_ref, date, session, code) {
        (Some(pupil_ref), Some(date), Some(session), Some(code)) if problems.is_empty() => {
            Ok(ImportedMark {
                pupil_ref: pupil_ref.to_string(),
                mark: Mark::new(date, session, code),
            })
        }
        _ => Err(problems),
    }
}

/// `YYYY-MM-DD`, or `DD/MM/YYYY` with a one- or two-digit day and month. Strict about digits so
/// that nothing is guessed (no signs, no two-digit years); `None` for a day that does not exist.
fn parse_date(text: &str) -> Option<NaiveDate> {
    let (year, month, day) = if let Some((year, rest)) = text.split_once('-') {
        let (month, day) = rest.split_once('-')?;
        (
            digits(year, 4..=4)?,
            digits(month, 2..=2)?,
            digits(day, 2..=2)?,
        )
    } else {
        let (day, rest) = text.split_once('/')?;
        let (month, year) = rest.split_once('/')?;
        (
            digits(year, 4..=4)?,
            digits(month, 1..=2)?,
            digits(day, 1..=2)?,
        )
    };
    NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)
}

fn digits(text: &str, len: std::ops::RangeInclusive<usize>) -> Option<u32> {
    if len.contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let d = |y, m, d| NaiveDate::from_ymd_opt(y, m, d);
        assert_eq!(parse_date("2025-01-06"), d(2025, 1, 6));
        assert_eq!(parse_date("06/01/2025"), d(2025, 1, 6));
        assert_eq!(parse_date("6/1/2025"), d(2025, 1, 6));
        for bad in [
            "31/02/2025",
            "2025-1-6",
            "+2025-01-06",
            "06/01/25",
            "2025/01/06",
            "06-01-2025",
            "2025-01-06-",
            "",
            "٠٦/٠١/٢٠٢٥",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }
}
