//! The evidence routes.
//!
//! - `GET  /api/v1/evidence/limits`: largest file and chunk, accepted media types.
//! - `GET  /api/v1/evidence/public-key`: the key that signs receipts.
//! - `POST /api/v1/cases/{case}/evidence/uploads` `{sha256, size, media_type}`: starts (or
//!   resumes, or at once completes) an upload.
//! - `GET  /api/v1/cases/{case}/evidence/uploads/{id}`: the acknowledged offset.
//! - `PUT  /api/v1/cases/{case}/evidence/uploads/{id}?offset=N`: one chunk (raw bytes).
//! - `POST /api/v1/cases/{case}/evidence/uploads/{id}/complete`: retries a completion.
//! - `GET  /api/v1/cases/{case}/evidence/{sha256}`: the file.
//!
//! Every upload answer carries the acknowledged offset in `Upload-Offset`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::receipt::Receipt;
use super::{EvidenceError, UPLOAD_OFFSET, complete_upload, issue_receipt, receipt_of, to_u64};
use crate::access::{Need, case_for};
use crate::api::{JsonBody, QueryParams, now_ms};
use crate::app::AppState;
use crate::auth::Caller;
use crate::blob_store::BlobStore;
use crate::error::ApiError;
use crate::storage::{EvidenceChunk, EvidenceUpload, StorageError, User};

/// What phones check before uploading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceLimits {
    pub max_file_bytes: u64,
    pub max_chunk_bytes: u64,
    pub media_types: Vec<String>,
    pub upload_expiry_days: u64,
}

pub async fn limits(State(state): State<AppState>) -> axum::Json<EvidenceLimits> {
    let config = &state.config.evidence;
    axum::Json(EvidenceLimits {
        max_file_bytes: config.max_file_bytes,
        max_chunk_bytes: config.max_chunk_bytes,
        media_types: config.media_types.clone(),
        upload_expiry_days: config.upload_expiry_days,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyResponse {
    pub algorithm: String,
    /// The raw 32-byte Ed25519 public key, standard base64.
    pub public_key: String,
    /// The same key as SubjectPublicKeyInfo PEM, for `openssl`.
    pub public_key_pem: String,
    pub receipt_format: String,
}

pub async fn public_key(State(state): State<AppState>) -> axum::Json<PublicKeyResponse> {
    use base64::Engine;
    let signer = &state.evidence.signer;
    axum::Json(PublicKeyResponse {
        algorithm: "Ed25519".into(),
        public_key: base64::engine::general_purpose::STANDARD
            .encode(signer.public_key().as_bytes()),
        public_key_pem: signer.public_key_pem(),
        receipt_format: super::receipt::RECEIPT_FORMAT.into(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartUpload {
    pub sha256: String,
    pub size: u64,
    pub media_type: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadState {
    InProgress,
    Complete,
}

/// Where an upload stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadStatus {
    /// None once complete.
    pub upload_id: Option<String>,
    pub state: UploadState,
    /// Bytes acknowledged: the next chunk starts here.
    pub offset: u64,
    pub size: u64,
    /// The signed receipt, once complete.
    pub receipt: Option<Receipt>,
}

impl UploadStatus {
    fn in_progress(upload: &EvidenceUpload) -> Self {
        UploadStatus {
            upload_id: Some(upload.id.clone()),
            state: UploadState::InProgress,
            offset: to_u64(upload.received_bytes),
            size: to_u64(upload.size),
            receipt: None,
        }
    }

    fn complete(receipt: Receipt) -> Self {
        UploadStatus {
            upload_id: None,
            state: UploadState::Complete,
            offset: receipt.size,
            size: receipt.size,
            receipt: Some(receipt),
        }
    }

    fn into_response(self, status: StatusCode) -> Response {
        let offset = self.offset;
        let mut response = (status, axum::Json(self)).into_response();
        response
            .headers_mut()
            .insert(UPLOAD_OFFSET, HeaderValue::from(offset));
        response
    }
}

fn parse_sha256(value: &str) -> Result<String, EvidenceError> {
    let lower = value.to_ascii_lowercase();
    if lower.len() == 64 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(lower)
    } else {
        Err(EvidenceError::InvalidSha256)
    }
}

pub async fn start_upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(case_id): Path<String>,
    JsonBody(request): JsonBody<StartUpload>,
) -> Result<Response, EvidenceError> {
    let case = case_for(state.storage.as_ref(), &caller.user, &case_id, Need::Read).await?;
    let config = &state.config.evidence;
    let sha256 = parse_sha256(&request.sha256)?;
    let media_type = request.media_type.trim().to_ascii_lowercase();
    if request.size == 0 {
        return Err(EvidenceError::EmptyFile);
    }
    if request.size > config.max_file_bytes {
        return Err(EvidenceError::FileTooLarge {
            max: config.max_file_bytes,
        });
    }
    if !config.accepts_media_type(&media_type) {
        return Err(EvidenceError::MediaTypeRefused);
    }
    let size = i64::try_from(request.size).map_err(|_| EvidenceError::FileTooLarge {
        max: config.max_file_bytes,
    })?;
    let storage = state.storage.as_ref();
    // Already received from this device: the same receipt again (a retry after a lost answer).
    if let Some(stored) = storage
        .evidence_receipt(&case.id, &sha256, &caller.device.id)
        .await?
    {
        if stored.size != size {
            return Err(EvidenceError::SizeMismatch);
        }
        return Ok(UploadStatus::complete(receipt_of(&stored)).into_response(StatusCode::OK));
    }
    let now = now_ms();
    let upload = EvidenceUpload {
        id: uuid::Uuid::new_v4().to_string(),
        case_id: case.id.clone(),
        user_id: caller.user.id.clone(),
        device_id: caller.device.id.clone(),
        sha256: sha256.clone(),
        size,
        media_type,
        received_bytes: 0,
        created_at: now,
        updated_at: now,
    };
    // Already held (from any case or device): deduplicated, no bytes needed.
    if let Some(held) = storage.evidence_blob_size(&sha256).await? {
        if held != size {
            return Err(EvidenceError::SizeMismatch);
        }
        if state.evidence.store.contains(&sha256).await? {
            let receipt = issue_receipt(&state, &upload, now).await?;
            return Ok(UploadStatus::complete(receipt).into_response(StatusCode::OK));
        }
    }
    if let Some(existing) = storage
        .evidence_upload_for(&caller.device.id, &case.id, &sha256)
        .await?
    {
        return resume_existing(&existing, &upload);
    }
    match storage.create_evidence_upload(&upload).await {
        Ok(()) => Ok(UploadStatus::in_progress(&upload).into_response(StatusCode::CREATED)),
        // A concurrent start of the same file from the same device won: resume that one.
        Err(StorageError::Conflict(_)) => {
            let existing = storage
                .evidence_upload_for(&caller.device.id, &case.id, &sha256)
                .await?
                .ok_or(ApiError::NotFound)?;
            resume_existing(&existing, &upload)
        }
        Err(other) => Err(other.into()),
    }
}

fn resume_existing(
    existing: &EvidenceUpload,
    requested: &EvidenceUpload,
) -> Result<Response, EvidenceError> {
    if existing.size != requested.size {
        return Err(EvidenceError::SizeMismatch);
    }
    Ok(UploadStatus::in_progress(existing).into_response(StatusCode::OK))
}

/// The caller's own upload in this case; anything else is not found.
async fn own_upload(
    state: &AppState,
    caller: &Caller,
    case_id: &str,
    upload_id: &str,
) -> Result<EvidenceUpload, EvidenceError> {
    let case = case_for(state.storage.as_ref(), &caller.user, case_id, Need::Read).await?;
    match state.storage.evidence_upload(upload_id).await? {
        Some(upload) if upload.case_id == case.id && upload.device_id == caller.device.id => {
            Ok(upload)
        }
        _ => Err(ApiError::NotFound.into()),
    }
}

pub async fn upload_status(
    State(state): State<AppState>,
    caller: Caller,
    Path((case_id, upload_id)): Path<(String, String)>,
) -> Result<Response, EvidenceError> {
    let upload = own_upload(&state, &caller, &case_id, &upload_id).await?;
    Ok(UploadStatus::in_progress(&upload).into_response(StatusCode::OK))
}

#[derive(Debug, Deserialize)]
pub struct ChunkQuery {
    pub offset: u64,
}

pub async fn put_chunk(
    State(state): State<AppState>,
    caller: Caller,
    Path((case_id, upload_id)): Path<(String, String)>,
    QueryParams(query): QueryParams<ChunkQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, EvidenceError> {
    let upload = own_upload(&state, &caller, &case_id, &upload_id).await?;
    let max_chunk = state.config.evidence.max_chunk_bytes;
    let acknowledged = to_u64(upload.received_bytes);
    let size = to_u64(upload.size);
    // Refuse what cannot fit before reading a byte of it.
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|len| len > max_chunk) {
        return Err(EvidenceError::ChunkTooLarge { max: max_chunk });
    }
    check_offset(query.offset, acknowledged)?;
    if declared_length.is_some_and(|len| query.offset.saturating_add(len) > size) {
        return Err(EvidenceError::ChunkBeyondSize);
    }
    let bytes = read_chunk(body, max_chunk, acknowledged).await?;
    let length = bytes.len() as u64;
    if length == 0 {
        return Err(EvidenceError::ChunkCut { acknowledged });
    }
    if query.offset + length > size {
        return Err(EvidenceError::ChunkBeyondSize);
    }
    let key = BlobStore::chunk_key(&upload.id, query.offset);
    state.evidence.store.put_chunk(&key, bytes.freeze()).await?;
    let chunk = EvidenceChunk {
        start_offset: upload.received_bytes,
        length: i64::try_from(length)
            .map_err(|_| EvidenceError::ChunkTooLarge { max: max_chunk })?,
        object_key: key.clone(),
    };
    let now = now_ms();
    if !state
        .storage
        .append_evidence_chunk(&upload.id, &chunk, now)
        .await?
    {
        // Another request for this offset landed first: ours is not recorded, drop its bytes.
        state.evidence.store.delete(&key).await?;
        let current = state
            .storage
            .evidence_upload(&upload.id)
            .await?
            .ok_or(ApiError::NotFound)?;
        let acknowledged = to_u64(current.received_bytes);
        check_offset(query.offset, acknowledged)?;
        return Err(EvidenceError::ChunkOverlaps { acknowledged });
    }
    let upload = EvidenceUpload {
        received_bytes: upload.received_bytes + chunk.length,
        updated_at: now,
        ..upload
    };
    if upload.received_bytes == upload.size {
        let receipt = complete_upload(&state, &upload, now).await?;
        return Ok(UploadStatus::complete(receipt).into_response(StatusCode::OK));
    }
    Ok(UploadStatus::in_progress(&upload).into_response(StatusCode::OK))
}

fn check_offset(offset: u64, acknowledged: u64) -> Result<(), EvidenceError> {
    if offset > acknowledged {
        Err(EvidenceError::ChunkOutOfOrder { acknowledged })
    } else if offset < acknowledged {
        Err(EvidenceError::ChunkOverlaps { acknowledged })
    } else {
        Ok(())
    }
}

/// Reads the whole chunk. A body cut short (the connection dropped) is refused whole: only
/// complete chunks are acknowledged, so a resume starts at a clean offset.
async fn read_chunk(body: Body, max: u64, acknowledged: u64) -> Result<BytesMut, EvidenceError> {
    let mut stream = body.into_data_stream();
    let mut bytes = BytesMut::new();
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(|_| EvidenceError::ChunkCut { acknowledged })?;
        if (bytes.len() + frame.len()) as u64 > max {
            return Err(EvidenceError::ChunkTooLarge { max });
        }
        bytes.extend_from_slice(&frame);
    }
    Ok(bytes)
}

pub async fn retry_completion(
    State(state): State<AppState>,
    caller: Caller,
    Path((case_id, upload_id)): Path<(String, String)>,
) -> Result<Response, EvidenceError> {
    let upload = own_upload(&state, &caller, &case_id, &upload_id).await?;
    if upload.received_bytes != upload.size {
        return Err(EvidenceError::Incomplete {
            acknowledged: to_u64(upload.received_bytes),
        });
    }
    let receipt = complete_upload(&state, &upload, now_ms()).await?;
    Ok(UploadStatus::complete(receipt).into_response(StatusCode::OK))
}

/// Image types a browser may show inline. Never SVG (it runs scripts) nor anything else.
pub const INLINE_IMAGE_TYPES: [&str; 5] = [
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "image/heic",
];

pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path((case_id, sha256)): Path<(String, String)>,
) -> Result<Response, EvidenceError> {
    serve_file(&state, &caller.user, &case_id, &sha256).await
}

/// A case's evidence file for someone who may read the case (the API's download and the web
/// view's thumbnails): anything else is the same not-found as a missing file. Images a browser
/// may show are served inline, everything else as an attachment; never as a page.
pub async fn serve_file(
    state: &AppState,
    user: &User,
    case_id: &str,
    sha256: &str,
) -> Result<Response, EvidenceError> {
    let case = case_for(state.storage.as_ref(), user, case_id, Need::Read).await?;
    // A malformed hash is answered like a missing file.
    let sha256 = parse_sha256(sha256).map_err(|_| ApiError::NotFound)?;
    let receipt = state
        .storage
        .evidence_in_case(&case.id, &sha256)
        .await?
        .ok_or(ApiError::NotFound)?;
    let (size, stream) = state.evidence.store.get(&sha256).await?;
    let (content_type, disposition) = if INLINE_IMAGE_TYPES.contains(&receipt.media_type.as_str()) {
        (receipt.media_type.as_str(), "inline")
    } else {
        ("application/octet-stream", "attachment")
    };
    let filename = format!("evidence-{}", &sha256[..16]);
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    let value = |v: &str| HeaderValue::from_str(v).map_err(|e| ApiError::Internal(e.to_string()));
    headers.insert(header::CONTENT_TYPE, value(content_type)?);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    headers.insert(
        header::CONTENT_DISPOSITION,
        value(&format!("{disposition}; filename=\"{filename}\""))?,
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; img-src 'self'; sandbox"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    headers.insert(header::ETAG, value(&format!("\"{sha256}\""))?);
    Ok(response)
}
