//! Evidence files: resumable, content-addressed uploads apart from document sync, signed
//! chain-of-custody receipts, and safe downloads.
//!
//! An upload goes: start (declared SHA-256, size, media type; refused up front when over the
//! limit or of a refused type) → chunks, each at the offset the server acknowledged last →
//! completion when the last byte lands (the whole file is hashed and a mismatch keeps
//! nothing) → a signed [`receipt::Receipt`]. A file the server already holds completes at
//! once (deduplicated by hash); starting the same file again returns the same upload or,
//! once complete, the same receipt, so every step is safe to retry.

pub mod api;
pub mod config;
pub mod receipt;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::blob_store::{BlobStore, BlobStoreError};
use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::storage::{EvidenceUpload, StoredReceipt};
pub use config::EvidenceConfig;
use receipt::{RECEIPT_FORMAT, Receipt, ReceiptSigner};

/// The blob store and the receipt key, shared by every request.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub store: BlobStore,
    pub signer: ReceiptSigner,
}

impl Evidence {
    pub fn new(store: BlobStore, signer: ReceiptSigner) -> Arc<Self> {
        Arc::new(Evidence { store, signer })
    }
}

/// The header that carries the acknowledged offset on every upload answer (as in tus).
pub const UPLOAD_OFFSET: &str = "upload-offset";

/// Evidence-specific refusals, each with its own status and stable code; anything else is an
/// [`ApiError`].
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("the file is larger than the server accepts ({max} bytes)")]
    FileTooLarge { max: u64 },
    #[error("the server does not accept this media type")]
    MediaTypeRefused,
    #[error("sha256 must be 64 hexadecimal digits")]
    InvalidSha256,
    #[error("a file of size 0 is not evidence")]
    EmptyFile,
    #[error("the chunk is larger than the server accepts ({max} bytes)")]
    ChunkTooLarge { max: u64 },
    #[error("the chunk starts after the acknowledged offset {acknowledged}: resume from there")]
    ChunkOutOfOrder { acknowledged: u64 },
    #[error(
        "the chunk overlaps bytes already acknowledged (up to {acknowledged}): resume from there"
    )]
    ChunkOverlaps { acknowledged: u64 },
    #[error("the chunk runs past the declared size of the file")]
    ChunkBeyondSize,
    #[error("the chunk was empty or cut short: resume from the acknowledged offset")]
    ChunkCut { acknowledged: u64 },
    #[error("the file's SHA-256 is not the declared one: nothing was kept; start again")]
    HashMismatch,
    #[error("this file is already held with a different size")]
    SizeMismatch,
    #[error("the upload is not complete: {acknowledged} bytes acknowledged")]
    Incomplete { acknowledged: u64 },
}

impl EvidenceError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            EvidenceError::Api(e) => e.status_code(),
            EvidenceError::FileTooLarge { .. } | EvidenceError::ChunkTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            EvidenceError::MediaTypeRefused => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            EvidenceError::InvalidSha256
            | EvidenceError::EmptyFile
            | EvidenceError::HashMismatch
            | EvidenceError::SizeMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            EvidenceError::ChunkOutOfOrder { .. } | EvidenceError::ChunkBeyondSize => {
                StatusCode::RANGE_NOT_SATISFIABLE
            }
            EvidenceError::ChunkOverlaps { .. } | EvidenceError::Incomplete { .. } => {
                StatusCode::CONFLICT
            }
            EvidenceError::ChunkCut { .. } => StatusCode::BAD_REQUEST,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            EvidenceError::Api(e) => e.code(),
            EvidenceError::FileTooLarge { .. } => "file_too_large",
            EvidenceError::MediaTypeRefused => "media_type_refused",
            EvidenceError::InvalidSha256 => "invalid_sha256",
            EvidenceError::EmptyFile => "empty_file",
            EvidenceError::ChunkTooLarge { .. } => "chunk_too_large",
            EvidenceError::ChunkOutOfOrder { .. } => "chunk_out_of_order",
            EvidenceError::ChunkOverlaps { .. } => "chunk_overlaps",
            EvidenceError::ChunkBeyondSize => "chunk_beyond_size",
            EvidenceError::ChunkCut { .. } => "chunk_cut_short",
            EvidenceError::HashMismatch => "hash_mismatch",
            EvidenceError::SizeMismatch => "size_mismatch",
            EvidenceError::Incomplete { .. } => "upload_incomplete",
        }
    }

    fn acknowledged(&self) -> Option<u64> {
        match self {
            EvidenceError::ChunkOutOfOrder { acknowledged }
            | EvidenceError::ChunkOverlaps { acknowledged }
            | EvidenceError::ChunkCut { acknowledged }
            | EvidenceError::Incomplete { acknowledged } => Some(*acknowledged),
            _ => None,
        }
    }
}

impl From<crate::storage::StorageError> for EvidenceError {
    fn from(error: crate::storage::StorageError) -> Self {
        EvidenceError::Api(error.into())
    }
}

impl From<BlobStoreError> for EvidenceError {
    fn from(error: BlobStoreError) -> Self {
        match error {
            BlobStoreError::HashMismatch => EvidenceError::HashMismatch,
            BlobStoreError::NotFound => EvidenceError::Api(ApiError::NotFound),
            other => EvidenceError::Api(ApiError::Internal(other.to_string())),
        }
    }
}

impl IntoResponse for EvidenceError {
    fn into_response(self) -> Response {
        if let EvidenceError::Api(api) = self {
            return api.into_response();
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
            },
        };
        let mut response = (self.status_code(), axum::Json(body)).into_response();
        if let Some(offset) = self.acknowledged() {
            response
                .headers_mut()
                .insert(UPLOAD_OFFSET, HeaderValue::from(offset));
        }
        response
    }
}

/// A non-negative stored integer as u64 (the schema never stores a negative one).
fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Converts the stored receipt into the one returned and verified.
pub fn receipt_of(stored: &StoredReceipt) -> Receipt {
    Receipt {
        format: RECEIPT_FORMAT.into(),
        receipt_id: stored.id.clone(),
        case_id: stored.case_id.clone(),
        sha256: stored.sha256.clone(),
        size: to_u64(stored.size),
        media_type: stored.media_type.clone(),
        uploader_user_id: stored.user_id.clone(),
        uploader_device_id: stored.device_id.clone(),
        received_at: stored.received_at,
        signature: stored.signature.clone(),
    }
}

/// Signs and stores the receipt for a file now held by the blob store; on a retry returns
/// the receipt that already stands.
pub(crate) async fn issue_receipt(
    state: &AppState,
    upload: &EvidenceUpload,
    now: i64,
) -> Result<Receipt, EvidenceError> {
    let mut receipt = Receipt {
        format: RECEIPT_FORMAT.into(),
        receipt_id: uuid::Uuid::new_v4().to_string(),
        case_id: upload.case_id.clone(),
        sha256: upload.sha256.clone(),
        size: to_u64(upload.size),
        media_type: upload.media_type.clone(),
        uploader_user_id: upload.user_id.clone(),
        uploader_device_id: upload.device_id.clone(),
        received_at: now,
        signature: String::new(),
    };
    state
        .evidence
        .signer
        .sign(&mut receipt)
        .map_err(|e| ApiError::Internal(format!("cannot sign a receipt: {e}")))?;
    let stored = state
        .storage
        .store_evidence_receipt(&StoredReceipt {
            id: receipt.receipt_id.clone(),
            case_id: receipt.case_id.clone(),
            sha256: receipt.sha256.clone(),
            size: upload.size,
            media_type: receipt.media_type.clone(),
            user_id: receipt.uploader_user_id.clone(),
            device_id: receipt.uploader_device_id.clone(),
            received_at: receipt.received_at,
            signature: receipt.signature.clone(),
        })
        .await?;
    Ok(receipt_of(&stored))
}

/// Assembles a fully received upload into its content-addressed file, verifying the hash,
/// then issues the receipt and forgets the upload. A mismatch deletes every chunk.
pub(crate) async fn complete_upload(
    state: &AppState,
    upload: &EvidenceUpload,
    now: i64,
) -> Result<Receipt, EvidenceError> {
    let chunks = state.storage.evidence_chunks(&upload.id).await?;
    let keys: Vec<String> = chunks.iter().map(|c| c.object_key.clone()).collect();
    let assembled = state
        .evidence
        .store
        .assemble(&keys, &upload.sha256, to_u64(upload.size))
        .await;
    match assembled {
        Ok(_) => {
            let receipt = issue_receipt(state, upload, now).await?;
            discard_upload(state, upload).await?;
            tracing::info!(upload = %upload.id, size = upload.size, "evidence file accepted");
            Ok(receipt)
        }
        Err(BlobStoreError::HashMismatch) => {
            discard_upload(state, upload).await?;
            tracing::warn!(upload = %upload.id, "evidence upload refused: hash mismatch");
            Err(EvidenceError::HashMismatch)
        }
        Err(other) => Err(other.into()),
    }
}

/// Deletes an upload's chunk objects and rows. Every object under the upload's prefix goes,
/// including any stored by a request that died before recording its chunk.
async fn discard_upload(state: &AppState, upload: &EvidenceUpload) -> Result<(), EvidenceError> {
    let store = &state.evidence.store;
    for key in store.keys(&BlobStore::upload_prefix(&upload.id)).await? {
        store.delete(&key).await?;
    }
    state.storage.delete_evidence_upload(&upload.id).await?;
    Ok(())
}

/// Deletes uploads idle for longer than the configured expiry at `now` (Unix ms), with their
/// chunks. Returns how many were deleted. Called periodically, and by tests.
pub async fn clean_abandoned_uploads(state: &AppState, now: i64) -> Result<usize, EvidenceError> {
    let expiry_ms = i64::try_from(state.config.evidence.upload_expiry_days)
        .unwrap_or(i64::MAX / 86_400_000)
        .saturating_mul(86_400_000);
    let stale = state
        .storage
        .stale_evidence_uploads(now.saturating_sub(expiry_ms))
        .await?;
    for upload in &stale {
        discard_upload(state, upload).await?;
    }
    if !stale.is_empty() {
        tracing::info!(count = stale.len(), "abandoned evidence uploads deleted");
    }
    Ok(stale.len())
}

/// How often the server looks for abandoned uploads.
const CLEANUP_INTERVAL: Duration = Duration::from_secs(3600);

/// Runs [`clean_abandoned_uploads`] every hour until the returned task is aborted.
pub fn spawn_cleanup(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(CLEANUP_INTERVAL);
        loop {
            interval.tick().await;
            if let Err(error) = clean_abandoned_uploads(&state, crate::api::now_ms()).await {
                tracing::warn!(%error, "cleaning abandoned evidence uploads failed");
            }
        }
    })
}
