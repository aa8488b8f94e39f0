//! Doorstep's phone core, behind UniFFI for Kotlin (Android), Swift (iOS) and Python (tests).
//!
//! A field worker on a doorstep with no signal records visits, pupil and parent voice,
//! evidence, contact-log entries and targets; each write goes through sync-core's `CaseFile`
//! under this phone's author (user + device) and Automerge actor, and is committed to an
//! encrypted SQLCipher store before the call returns. `sync_now` later exchanges Automerge
//! sync messages with the server; nothing counts as synced until the server has said it holds
//! it.
//!
//! Layers: [`phone`] (the exported `Doorstep` object: caseload, case view, writes),
//! [`sync`] (sign-in, token refresh, the sync rounds, the listener), `evidence` (resumable
//! uploads of evidence files and their verified receipts), [`store`] (SQLCipher),
//! [`types`] (the records and enums the host app sees), [`error`] (one flat error enum).
//!
//! This is the one crate without `#![forbid(unsafe_code)]`: UniFFI's generated scaffolding
//! is `extern "C"` code. None of the hand-written code here uses `unsafe`.

pub mod error;
mod evidence;
pub mod phone;
mod store;
pub mod sync;
pub mod types;

pub use error::DoorstepError;
pub use phone::{Doorstep, MAX_EVIDENCE_BYTES};
pub use sync::SyncListener;
pub use types::*;

uniffi::setup_scaffolding!();
