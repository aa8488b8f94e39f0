//! Doorstep's case-file core, shared by the server and the phone so that every rule is
//! written once: the case-file model on Automerge ([`CaseFile`]), its validation, finalisation
//! and amendments, conflicts and their resolution, the attendance rules ([`attendance`]) and
//! sync sessions ([`PeerState`]).
//!
//! Sans-IO: no async runtime, database, network or filesystem. Callers pass the time (`at`) of
//! every write, and bytes in and out for storage and sync.
#![forbid(unsafe_code)]

pub mod attendance;
mod case_file;
mod conflicts;
mod error;
mod graph;
pub mod readiness;
pub mod receipt;
pub mod records;
mod scope;
mod sync;
pub mod testing;
mod value;
mod view;

pub use automerge::{ActorId, ChangeHash};
pub use case_file::{
    Amendment, Author, CaseFile, Finalisation, RawRecord, Record, SCHEMA_VERSION, body_from_json,
    from_json_named, validate_raw_body,
};
pub use conflicts::{Conflict, ConflictKind, ConflictTarget, ConflictValue, Resolution};
pub use error::{CaseFileError, FieldError, Problem, Result, ValidationErrors};
pub use graph::{ChangeGraph, GraphChange, hashes_from_bytes};
pub use records::{Collection, RecordBody};
pub use sync::{AppliedChange, PeerState, RefusedSync, Upload, brings_changes, decode_message};
pub use view::CaseView;
