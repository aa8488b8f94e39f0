//! The staff API for cases: the caseload, one merged case file, creating cases, allocating
//! them. Access is checked by [`crate::access`] on every call.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use doorstep_sync_core::attendance::{self, AttendanceSummary};
use doorstep_sync_core::records::CaseDetails;
use doorstep_sync_core::{ActorId, Author, CaseFile, CaseFileError, CaseView, Resolution};
use serde::{Deserialize, Serialize};

use super::{JsonBody, now_ms};
use crate::access::{self, Need};
use crate::app::AppState;
use crate::auth::Caller;
use crate::cases::{self, CaseError};
use crate::doc_cache::DocumentCache;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::storage::{Case, NewChange, StorageError, User, heads_key};

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
    /// Each child's attendance figures over all imported register marks.
    pub attendance: Vec<ChildAttendance>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildAttendance {
    pub child_id: String,
    /// Present or approved sessions over possible sessions; None with no possible session.
    pub attendance_percent: Option<f64>,
    pub persistent_absence: bool,
    pub severe_absence: bool,
    /// The counts behind the figures (possible, present, authorised, unauthorised, late...).
    pub sessions: serde_json::Value,
}

fn attendance_of(file: &CaseFile, case_id: &str) -> Result<Vec<ChildAttendance>, ApiError> {
    let internal = |e: CaseFileError| ApiError::Internal(format!("case {case_id}: {e}"));
    let mut figures = Vec::new();
    for child_id in file
        .record_ids(doorstep_sync_core::Collection::Children)
        .map_err(internal)?
    {
        let marks = file.marks(&child_id).map_err(internal)?;
        let summary = AttendanceSummary::from_marks(&marks);
        figures.push(ChildAttendance {
            child_id,
            attendance_percent: summary.attendance_percent(),
            persistent_absence: summary.is_persistent_absence(),
            severe_absence: summary.is_severe_absence(),
            sessions: serde_json::to_value(summary).unwrap_or_default(),
        });
    }
    Ok(figures)
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
pub(crate) async fn load(state: &AppState, case: &Case) -> Result<ReadCase, ApiError> {
    let stored = state
        .storage
        .document(&case.id)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("case {} has no document", case.id)))?;
    let documents = Arc::clone(&state.documents);
    let file = match documents.take(&case.id, &stored.heads) {
        Some(file) => {
            Metrics::add(&state.metrics.document_cache_hits, 1);
            file
        }
        None => {
            Metrics::add(&state.metrics.document_cache_misses, 1);
            let author = Author {
                user_id: "server".into(),
                device_id: cases::SERVER_DEVICE.into(),
            };
            let snapshot = stored.snapshot;
            let case_id = case.id.clone();
            // Parsing is CPU-bound (large case files take milliseconds): off the async workers.
            tokio::task::spawn_blocking(move || {
                CaseFile::load(&snapshot, author, ActorId::random())
                    .map_err(|e| ApiError::Internal(format!("case {case_id} does not load: {e}")))
            })
            .await
            .map_err(|e| ApiError::Internal(format!("load task failed: {e}")))??
        }
    };
    Ok(ReadCase {
        file: Some(file),
        case_id: case.id.clone(),
        heads: stored.heads,
        updated_at: stored.updated_at,
        documents,
    })
}

/// A stored case file read for one request. Dropping it returns it to the document cache at
/// the heads it was read at, so the next reader (a page, a caseload, a sync) skips the parse.
pub(crate) struct ReadCase {
    file: Option<CaseFile>,
    case_id: String,
    pub heads: String,
    pub updated_at: i64,
    documents: Arc<DocumentCache>,
}

impl std::ops::Deref for ReadCase {
    type Target = CaseFile;
    fn deref(&self) -> &CaseFile {
        self.file
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl std::ops::DerefMut for ReadCase {
    fn deref_mut(&mut self) -> &mut CaseFile {
        self.file
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl Drop for ReadCase {
    fn drop(&mut self) {
        if let Some(mut file) = self.file.take()
            // Only a document still exactly as stored may serve the next reader.
            && heads_key(&file.heads()) == self.heads
        {
            self.documents
                .put(std::mem::take(&mut self.case_id), self.heads.clone(), file);
        }
    }
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
        let file = load(&state, &case).await?;
        let updated_at = file.updated_at;
        let details = file
            .details()
            .map_err(|e| ApiError::Internal(format!("case {}: {e}", case.id)))?;
        let status = serde_json::to_value(details.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let attendance = attendance_of(&file, &case.id)?;
        cases.push(CaseSummary {
            attendance,
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
    let file = load(&state, &case).await?;
    let view = file
        .view()
        .map_err(|e| ApiError::Internal(format!("case {}: {e}", case.id)))?;
    let heads = file.heads.clone();
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
    state.repo.allocations_changed(&user_id);
    tracing::info!(case = %case.id, user = %user_id, by = %caller.user.id, "case deallocated");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// One of the conflicting values, exactly as the case view lists it.
    pub chosen: serde_json::Value,
}

/// Why a server-side edit failed.
pub(crate) enum EditError {
    CaseFile(CaseFileError),
    Api(ApiError),
}

impl From<ApiError> for EditError {
    fn from(error: ApiError) -> Self {
        EditError::Api(error)
    }
}

impl From<StorageError> for EditError {
    fn from(error: StorageError) -> Self {
        EditError::Api(error.into())
    }
}

/// Runs `edit` on the stored case file as `caller` and stores the changes it made, in one
/// transaction with the document locked (on PostgreSQL) so that a concurrent sync cannot be
/// lost. Each edit writes with a fresh actor: server instances never share sequence numbers.
pub(crate) async fn server_edit<T: Send + 'static>(
    state: &AppState,
    user: &User,
    case: &Case,
    edit: impl FnOnce(&mut CaseFile, chrono::DateTime<Utc>) -> Result<T, CaseFileError> + Send + 'static,
) -> Result<T, EditError> {
    let mut tx = state.storage.begin_sync().await?;
    let loaded = tx
        .load_documents("", std::slice::from_ref(&case.id))
        .await?
        .pop()
        .ok_or(ApiError::NotFound)?;
    let author = Author {
        user_id: user.id.clone(),
        device_id: cases::SERVER_DEVICE.into(),
    };
    let at = Utc::now();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut file = CaseFile::load(&loaded.snapshot, author, ActorId::random())?;
        let before = file.heads();
        let value = edit(&mut file, at)?;
        let changes: Vec<NewChange> = file
            .doc_mut()
            .get_changes(&before)
            .into_iter()
            .map(|mut change| NewChange::from_change(&mut change))
            .collect();
        let heads = heads_key(&file.heads());
        Ok::<_, CaseFileError>((value, file.save(), heads, changes, file))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("edit task failed: {e}")))?;
    let (value, snapshot, heads, changes, file) = outcome.map_err(EditError::CaseFile)?;
    tx.write_server_change(
        &case.id,
        (&snapshot, &heads),
        &changes,
        &user.id,
        at.timestamp_millis(),
    )
    .await?;
    tx.commit().await?;
    if !changes.is_empty() {
        // WebSocket clients that have the case open get the edit now.
        state
            .repo
            .document_changed(&state.documents, case.id.clone(), file)
            .await;
    }
    Ok(value)
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
    let outcome = server_edit(&state, &caller.user, &case, move |file, at| {
        file.resolve_conflict(&conflict_id, &request.chosen, at)
    })
    .await;
    let resolution = match outcome {
        Ok(resolution) => resolution,
        Err(EditError::Api(e)) => return Err(e),
        Err(EditError::CaseFile(CaseFileError::UnknownConflict(_))) => {
            return Err(ApiError::StaleConflict);
        }
        Err(EditError::CaseFile(e @ CaseFileError::NotAConflictingValue)) => {
            return Err(ApiError::InvalidBody(e.to_string()));
        }
        Err(EditError::CaseFile(e)) => {
            return Err(ApiError::Internal(format!("case {}: {e}", case.id)));
        }
    };
    tracing::info!(case = %case.id, by = %caller.user.id, "conflict resolved");
    Ok(Json(resolution))
}

/// One problem in a register import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportLineError {
    /// 1-based line of the CSV (the header is line 1); None for a problem not tied to a line.
    pub line: Option<u64>,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    pub imported: usize,
    pub errors: Vec<ImportLineError>,
}

/// `POST /api/v1/cases/{case_id}/register-marks` (`Content-Type: text/csv`): register marks
/// from a school MIS export, `pupil_ref,date,session,code`, where `pupil_ref` is the id of a
/// child record of this case. All or nothing: any bad line gives 422 with a per-line report
/// and nothing is written.
pub async fn import_register_marks(
    State(state): State<AppState>,
    caller: Caller,
    Path(case_id): Path<String>,
    headers: axum::http::HeaderMap,
    body: String,
) -> Result<(StatusCode, Json<ImportReport>), ApiError> {
    let is_csv = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/csv"));
    if !is_csv {
        return Err(ApiError::UnsupportedMediaType);
    }
    let case =
        access::case_for(state.storage.as_ref(), &caller.user, &case_id, Need::Manage).await?;
    let import = attendance::parse_register_csv(&body);
    let mut errors: Vec<ImportLineError> = import
        .errors
        .iter()
        .map(|e| ImportLineError {
            line: Some(e.line),
            reason: serde_json::to_value(&e.kind)
                .ok()
                .and_then(|v| v["reason"].as_str().map(str::to_string))
                .unwrap_or_else(|| "invalid".into()),
            message: e.kind.to_string(),
        })
        .collect();
    let children = load(&state, &case)
        .await?
        .record_ids(doorstep_sync_core::Collection::Children)
        .map_err(|e| ApiError::Internal(format!("case {}: {e}", case.id)))?;
    let by_pupil: Vec<(String, Vec<attendance::Mark>)> = import
        .marks_by_pupil()
        .into_iter()
        .map(|(pupil, marks)| (pupil.to_string(), marks))
        .collect();
    for (pupil, _) in &by_pupil {
        if !children.contains(pupil) {
            errors.push(ImportLineError {
                line: None,
                reason: "unknown_pupil".into(),
                message: format!("pupil_ref {pupil:?} is not a child of this case"),
            });
        }
    }
    if !errors.is_empty() {
        return Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(ImportReport {
                imported: 0,
                errors,
            }),
        ));
    }
    let outcome = server_edit(&state, &caller.user, &case, move |file, at| {
        let mut imported = 0;
        for (pupil, marks) in &by_pupil {
            file.record_marks(pupil, marks, at)?;
            imported += marks.len();
        }
        Ok(imported)
    })
    .await;
    let imported = match outcome {
        Ok(imported) => imported,
        Err(EditError::Api(e)) => return Err(e),
        Err(EditError::CaseFile(e)) => return Err(ApiError::InvalidBody(e.to_string())),
    };
    tracing::info!(case = %case.id, by = %caller.user.id, imported, "register marks imported");
    Ok((
        StatusCode::OK,
        Json(ImportReport {
            imported,
            errors: Vec::new(),
        }),
    ))
}
