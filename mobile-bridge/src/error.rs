//! The one error type the host app sees. Every failure of the bridge, whatever its source
//! (the case-file model, SQLCipher, the network, the server), is flattened into one of these
//! variants with plain string fields, so that Kotlin, Swift and Python get a catchable
//! exception with a stable variant to branch on. Nothing in the bridge panics on bad input.

use doorstep_sync_core::CaseFileError;

#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum DoorstepError {
    /// The key does not open the store (or the file is not a Doorstep store).
    #[error("the store key is wrong, or the file is not a Doorstep store")]
    WrongKey,
    /// `close_store()` was called; open the store again.
    #[error("the store is closed")]
    StoreClosed,
    /// Nobody is signed in on this store (never, or after sign-out).
    #[error("not signed in")]
    NotSignedIn,
    /// The server no longer accepts this sign-in (refresh token expired or reused): sign in
    /// again. Local data is kept and can still be edited.
    #[error("the session has expired: sign in again")]
    SessionExpired,
    /// The store holds another user's cases; wipe it before someone else signs in.
    #[error("this store belongs to another user: wipe it before signing in as someone else")]
    StoreOwnedByAnotherUser,
    #[error("unknown username or wrong password")]
    InvalidCredentials,
    /// The server revoked this device: every local case file has been wiped.
    #[error("this device has been revoked; its local data has been wiped")]
    DeviceRevoked,
    /// Bad input: a missing or empty field, an invalid date, a value too long, ... `fields`
    /// names each failing field (`visitors[0].name`, `started_at`).
    #[error("invalid input: {detail}")]
    InvalidInput { detail: String, fields: Vec<String> },
    /// A file or value larger than the bridge accepts.
    #[error("{what} is too large: at most {max_bytes} bytes")]
    TooLarge { what: String, max_bytes: u64 },
    /// No case, record, conflict or file with this id on this phone.
    #[error("no {what} with id {id}")]
    NotFound { what: String, id: String },
    /// The record is finalised: change it through an amendment.
    #[error("{detail}")]
    Finalised { detail: String },
    /// The record is a draft (edit it directly), or its kind cannot be finalised.
    #[error("{detail}")]
    NotFinalised { detail: String },
    /// The field has an open conflict: resolve it first.
    #[error("{detail}")]
    InConflict { detail: String },
    /// The conflict changed or was resolved since it was listed: list conflicts again.
    #[error("{detail}")]
    StaleConflict { detail: String },
    /// A sync is already running on this store.
    #[error("a sync is already running")]
    SyncInProgress,
    /// The server could not be reached (after retries); local changes stay pending.
    #[error("network: {detail}")]
    Network { detail: String },
    /// The server refused a request.
    #[error("server refused ({code}): {detail}")]
    Server { code: String, detail: String },
    /// The local store failed (disk full, I/O error) or holds unreadable data.
    #[error("local storage: {detail}")]
    Storage { detail: String },
}

pub type Result<T, E = DoorstepError> = std::result::Result<T, E>;

impl DoorstepError {
    pub(crate) fn invalid(field: &str, detail: impl Into<String>) -> Self {
        DoorstepError::InvalidInput {
            detail: detail.into(),
            fields: vec![field.to_string()],
        }
    }

    pub(crate) fn not_found(what: &str, id: &str) -> Self {
        DoorstepError::NotFound {
            what: what.to_string(),
            id: id.to_string(),
        }
    }

    pub(crate) fn storage(detail: impl std::fmt::Display) -> Self {
        DoorstepError::Storage {
            detail: detail.to_string(),
        }
    }
}

impl From<CaseFileError> for DoorstepError {
    fn from(error: CaseFileError) -> Self {
        let detail = error.to_string();
        match error {
            CaseFileError::Validation { errors, .. } => DoorstepError::InvalidInput {
                detail,
                fields: errors.fields().map(str::to_string).collect(),
            },
            CaseFileError::UnknownRecord { collection, id } => {
                DoorstepError::not_found(&format!("{collection} record"), &id)
            }
            CaseFileError::UnknownField { field, .. } => DoorstepError::InvalidInput {
                detail,
                fields: vec![field],
            },
            CaseFileError::MissingReason => DoorstepError::invalid("reason", detail),
            CaseFileError::NotAConflictingValue => DoorstepError::invalid("chosen", detail),
            CaseFileError::DuplicateRecord { .. } => DoorstepError::invalid("id", detail),
            CaseFileError::Finalised { .. } => DoorstepError::Finalised { detail },
            CaseFileError::NotFinalised { .. } | CaseFileError::NotFinalisable { .. } => {
                DoorstepError::NotFinalised { detail }
            }
            CaseFileError::FieldInConflict { .. } => DoorstepError::InConflict { detail },
            CaseFileError::UnknownConflict(_) => DoorstepError::StaleConflict { detail },
            CaseFileError::Corrupt(_)
            | CaseFileError::CorruptSyncMessage(_)
            | CaseFileError::CorruptSyncState(_)
            | CaseFileError::NotACaseFile(_)
            | CaseFileError::Automerge(_) => DoorstepError::Storage { detail },
        }
    }
}

impl From<rusqlite::Error> for DoorstepError {
    fn from(error: rusqlite::Error) -> Self {
        DoorstepError::storage(error)
    }
}

impl From<serde_json::Error> for DoorstepError {
    fn from(error: serde_json::Error) -> Self {
        DoorstepError::storage(format!("unreadable local data: {error}"))
    }
}
