//! Case files on the server side: creating them and turning their changes into storage rows.

use chrono::{DateTime, Utc};
use doorstep_sync_core::records::CaseDetails;
use doorstep_sync_core::{ActorId, Author, CaseFile, CaseFileError};

use crate::storage::{Case, NewChange, Storage, StorageError, heads_key};

#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error(transparent)]
    CaseFile(#[from] CaseFileError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The device id the server writes under (case creation, staff edits made on the server).
pub const SERVER_DEVICE: &str = "server";

/// Creates a case file for `school_id`, lets `populate` add first records, and stores it with
/// the changes that made it. Each creation writes with a fresh actor, so that several server
/// instances never share an actor's sequence numbers.
pub async fn create_case(
    storage: &dyn Storage,
    case_id: &str,
    school_id: &str,
    details: &CaseDetails,
    created_by: &str,
    at: DateTime<Utc>,
    populate: impl FnOnce(&mut CaseFile) -> Result<(), CaseFileError>,
) -> Result<(), CaseError> {
    let author = Author {
        user_id: created_by.to_string(),
        device_id: SERVER_DEVICE.to_string(),
    };
    let mut file = CaseFile::create(case_id, details, author, ActorId::random(), at)?;
    populate(&mut file)?;
    let changes = all_changes(&mut file);
    let snapshot = file.save();
    let heads = heads_key(&file.heads());
    let case = Case {
        id: case_id.to_string(),
        school_id: school_id.to_string(),
        created_at: at.timestamp_millis(),
    };
    storage
        .create_case(&case, &snapshot, &heads, &changes, Some(created_by))
        .await?;
    Ok(())
}

/// Every change of the document, in storage form.
fn all_changes(file: &mut CaseFile) -> Vec<NewChange> {
    file.doc_mut()
        .get_changes(&[])
        .into_iter()
        .map(|mut change| NewChange::from_change(&mut change))
        .collect()
}
