//! The staff API for cases: the caseload, one merged case file, creating cases, allocating
//! them. Access is checked by [`crate::access`] on every call.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use doorstep_sync_core::records::CaseDetails;
use doorstep_sync_core::{ActorId, Author, CaseFile, CaseFileError, CaseView, Resolution};
use serde::{Deserialize, Serialize};

use super::{JsonBody, now_ms};
use crate::access::{self, Need};
use crate::app::AppState;
use crate::auth::Caller;
use crate::cases::{self, CaseError};
use crate::error::ApiError;
use crate::storage::{Case, NewChange, StorageError, heads_key};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseSummary {
    pub case_id: String,
    pub school_id: String,
    pub reference: String,
    pub stage: String,
    pub status: String,
    /// True when the case is allocated to the caller (it is on their phone).
    pub allocated_to_me: bool,
    /// Unix milliseconds of the last accepted change.
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseloadResponse {
    pub cases: Vec<CaseSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResponse {
    pub case_id: String,
    pub school_id: String,
    /// The document's heads (sorted hex, comma-separated): the version this view shows.
    pub heads: String,
    /// Every record with its author, device time, finalisation and amendment trail, the open
    /// conflicts and their resolutions.
    pub file: CaseView,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCaseRequest {
    pub details: CaseDetails,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedCase {
    pub case_id: String,
}

/// Loads the stored case file (read-only: the server's actor here never writes).
async fn load(state: &AppState, case: &Case) -> Result<(CaseFile, String, i64), ApiError> {
    let stored = state
        .storage
        .document(&case.id)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("case {} has no document", case.id)))?;
    let author = Author {
        user_id: "server".into(),
        device_id: cases::SERVER_DEVICE.into(),
    };
    let file = CaseFile::load(&stored.snapshot, author, ActorId::random())
        .map_err(|e| ApiError::Internal(format!("case {} does not load: {e}", case.id)))?;
    Ok((file, stored.heads, stored.updated_at))
}

/// `GET /api/v1/cases`: every case the caller may see.
pub async fn caseload(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<CaseloadResponse>, ApiError> {
    let visible = access::visible_cases(state.storage.as_ref(), &caller.user).await?;
    let mine = state.storage.allocated_case_ids(&caller.user.id).await?;
    let mut cases = Vec::with_capacity(visible.len());
    for case in visible {
        let (file, _, updated_at) = load(&state, &case).await?;
        let details = file
            .details()
            .map_err(|e| ApiError::Internal(format!("case {}: {e}", case.id)))?;
        let status = serde_json::to_value(details.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        cases.push(CaseSummary {
            allocated_to_me: mine.contains(&case.id),
            case_id: case.id,
            school_id: case.school_id,
            reference: details.reference,
            stage: details.stage,
            status,
            updated_at,
        });
    }
    Ok(Json(CaseloadResponse { cases }))
}

/// `GET /api/v1/cases/{case_id}`: the merged case file.
pub async fn read_case(
    State(state): State<AppState>,
    caller: Caller,
    Path(case_id): Path<String>,
) -> Result<Json<CaseResponse>, ApiError> {
    let case = access::case_for(state.storage.as_ref(), &caller.user, &case_id, Need::Read).await?;
    let (file, heads, _) = load(&state, &case).await?;
    let view = file
        .view()
        .map_err(|e| ApiError::Internal(format!("case {}: {e}", case.id)))?;
    tracing::info!(case = %case.id, user = %caller.user.id, "case read");
    Ok(Json(CaseResponse {
        case_id: case.id,
        school_id: case.school_id,
        heads,
        file: view,
    }))
}

/// `POST /api/v1/cases`: a new case for `details.school_id`.
pub async fn create_case(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateCaseRequest>,
) -> Result<(StatusCode, Json<CreatedCase>), ApiError> {
    let school_id = request.details.school_id.clone();
    if state.storage.school(&school_id).await?.is_none() {
        return Err(ApiError::InvalidBody(format!("no school {school_id}")));
    }
    if !access::can_manage_school(&caller.user, &school_id) {
        return Err(ApiError::Forbidden);
    }
    let case_id = format!("case-{}", uuid::Uuid::new_v4());
    let created = cases::create_case(
        state.storage.as_ref(),
        &case_id,
        &school_id,
        &request.details,
        &caller.user.id,
        Utc::now(),
        |_| Ok(()),
    )
    .await;
    match created {
        Ok(()) => {}
        Err(CaseError::CaseFile(e @ CaseFileError::Validation { .. })) => {
            return Err(ApiError::InvalidBody(e.to_string()));
        }
        Err(e) => return Err(ApiError::Internal(e.to_string())),
    }
    tracing::info!(case = %case_id, by = %caller.user.id, "case created");
    Ok((StatusCode::CREATED, Json(CreatedCase { case_id })))
}

/// `PUT /api/v1/cases/{case_id}/allocations/{user_id}`
pub async fn allocate(
    State(state): State<AppState>,
    caller: Caller,
    Path((case_id, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let case =
        access::case_for(state.storage.as_ref(), &caller.user, &case_id, Need::Manage).await?;
    let user = state
        .storage
        .user(&user_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    // Staff of another school may not be given this school's case; LA-wide staff may.
    if user
        .school_id
        .as_deref()
        .is_some_and(|school| school != case.school_id)
    {
        return Err(ApiError::InvalidBody(format!(
            "user {user_id} belongs to another school"
        )));
    }
    match state.storage.allocate(&case.id, &user.id, now_ms()).await {
        Ok(()) | Err(StorageError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(case = %case.id, user = %user.id, by = %caller.user.id, "case allocated");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/cases/{case_id}/allocations/{user_id}`: the user's phones are told to
/// drop the case at their next sync.
pub async fn deallocate(
    State(state): State<AppState>,
    caller: Caller,
    Path((case_id, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let case =
        access::case_for(state.storage.as_ref(), &caller.user, &case_id, Need::Manage).await?;
    state.storage.deallocate(&case.id, &user_id).await?;
    tracing::info!(case = %case.id, user = %user_id, by = %caller.user.id, "case deallocated");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// One of the conflicting values, exactly as the case view lists it.
    pub chosen: serde_json::Value,
}

/// `POST /api/v1/cases/{case_id}/conflicts/{conflict_id}/resolve`: a person chooses one of
/// the conflicting values. The resolution (chosen value, alternatives, who, when) is written
/// into the case file by the server under the caller's name, and reaches the phones by sync.
pub async fn resolve_conflict(
    State(state): State<AppState>,
    caller: Caller,
    Path((case_id, conflict_id)): Path<(String, String)>,
    JsonBody(request): JsonBody<ResolveRequest>,
) -> Result<Json<Resolution>, ApiError> {
    let case = access::case_for(state.storage.as_ref(), &caller.user, &case_id, Need::Read).await?;
    let mut tx = state.storage.begin_sync().await?;
    // Locks the document (PostgreSQL) so that a concurrent sync cannot be lost.
    let loaded = tx
        .load_documents("", std::slice::from_ref(&case.id))
        .await?
        .pop()
        .ok_or(ApiError::NotFound)?;
    let author = Author {
        user_id: caller.user.id.clone(),
        device_id: cases::SERVER_DEVICE.into(),
    };
    let at = Utc::now();
    let outcome = tokio::task::spawn_blocking(move || {
        // A fresh actor per server-side edit: server instances never share sequence numbers.
        let mut file = CaseFile::load(&loaded.snapshot, author, ActorId::random())?;
        let before = file.heads();
        let resolution = file.resolve_conflict(&conflict_id, &request.chosen, at)?;
        let changes: Vec<NewChange> = file
            .doc_mut()
            .get_changes(&before)
            .into_iter()
            .map(|mut change| NewChange {
                hash: change.hash().to_string(),
                actor_id: change.actor_id().to_hex_string(),
                bytes: change.bytes().to_vec(),
            })
            .collect();
        let heads = heads_key(&file.heads());
        Ok::<_, CaseFileError>((resolution, file.save(), heads, changes))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("resolve task failed: {e}")))?;
    let (resolution, snapshot, heads, changes) = match outcome {
        Ok(done) => done,
        Err(CaseFileError::UnknownConflict(_)) => return Err(ApiError::StaleConflict),
        Err(e @ CaseFileError::NotAConflictingValue) => {
            return Err(ApiError::InvalidBody(e.to_string()));
        }
        Err(e) => return Err(ApiError::Internal(format!("case {}: {e}", case.id))),
    };
    tx.write_server_change(
        &case.id,
        (&snapshot, &heads),
        &changes,
        &caller.user.id,
        at.timestamp_millis(),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(case = %case.id, by = %caller.user.id, "conflict resolved");
    Ok(Json(resolution))
}
