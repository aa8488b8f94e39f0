//! Errors of the case-file model. Every failure is a value, never a panic: a phone or the
//! server receives corrupted bytes and bad input from the outside world every day.

use std::fmt;

use crate::records::Collection;

/// Why one field failed validation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// A required field was absent.
    Missing,
    /// A required text was empty or only whitespace.
    Empty,
    /// The value had the wrong form (a date that does not exist, an unknown option, ...).
    Invalid { detail: String },
    /// A number outside the range the record allows.
    OutOfRange { min: i64, max: i64 },
    /// A text longer than the record allows.
    TooLong { max: usize },
}

/// One field that failed validation, named by its path (`attempts[2].at`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldError {
    pub field: String,
    #[serde(flatten)]
    pub problem: Problem,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Problem::Missing => write!(f, "`{}` is required", self.field),
            Problem::Empty => write!(f, "`{}` must not be empty", self.field),
            Problem::Invalid { detail } => write!(f, "`{}` is invalid: {detail}", self.field),
            Problem::OutOfRange { min, max } => {
                write!(f, "`{}` must be between {min} and {max}", self.field)
            }
            Problem::TooLong { max } => {
                write!(f, "`{}` must be at most {max} characters", self.field)
            }
        }
    }
}

/// The field errors found in one value; never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    pub fn push(&mut self, field: impl Into<String>, problem: Problem) {
        self.0.push(FieldError {
            field: field.into(),
            problem,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing was found, the errors otherwise.
    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    /// The first error's field, for callers that report one.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|e| e.field.as_str())
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for error in &self.0 {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Everything that can go wrong reading or writing a case file.
#[derive(Debug, thiserror::Error)]
pub enum CaseFileError {
    #[error("the document is corrupted or truncated: {0}")]
    Corrupt(String),
    #[error("the sync message is corrupted or truncated: {0}")]
    CorruptSyncMessage(String),
    #[error("the saved sync state is corrupted: {0}")]
    CorruptSyncState(String),
    #[error("the document is not a Doorstep case file: {0}")]
    NotACaseFile(String),
    #[error("invalid {what}: {errors}")]
    Validation {
        what: &'static str,
        errors: ValidationErrors,
    },
    #[error("no {collection} record with id {id}")]
    UnknownRecord { collection: Collection, id: String },
    #[error("a {collection} record with id {id} already exists")]
    DuplicateRecord { collection: Collection, id: String },
    #[error("{collection} record {id} is finalised: change it through an amendment")]
    Finalised { collection: Collection, id: String },
    #[error("{collection} records cannot be finalised")]
    NotFinalisable { collection: Collection },
    #[error("{collection} record {id} is not finalised: edit it directly")]
    NotFinalised { collection: Collection, id: String },
    #[error("field `{field}` of {collection} record {id} has an open conflict: resolve it first")]
    FieldInConflict {
        collection: Collection,
        id: String,
        field: String,
    },
    #[error("unknown field `{field}` for {collection} records")]
    UnknownField {
        collection: Collection,
        field: String,
    },
    #[error("an amendment needs a reason")]
    MissingReason,
    #[error("no open conflict with id {0}: it may have been resolved already")]
    UnknownConflict(String),
    #[error("the chosen value is not one of the conflicting values")]
    NotAConflictingValue,
    #[error("the document changed underneath this operation: {0}")]
    Automerge(#[from] automerge::AutomergeError),
}

impl CaseFileError {
    pub(crate) fn validation(what: &'static str, errors: ValidationErrors) -> Self {
        Self::Validation { what, errors }
    }
}

pub type Result<T, E = CaseFileError> = std::result::Result<T, E>;
