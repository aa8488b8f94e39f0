//! Evidence uploads: after the case files, `sync_now` uploads every evidence file the server
//! has not yet given a receipt for, apart from document sync, with the server's evidence API
//! (`server/src/evidence/api.rs`).
//!
//! - The server's limits (`GET /api/v1/evidence/limits`) are checked first: a file over the
//!   size limit or of a refused media type stays pending with the reason, and is not sent.
//! - The file is checked against its recorded SHA-256 before a byte leaves the phone.
//! - Starting an upload is idempotent: the server answers with the upload it already has for
//!   this device and file, and the offset it acknowledged, so a sync cut off anywhere resumes
//!   from the server's offset, never from a guess. Chunks are read from the store one at a
//!   time (never the whole file in memory), each at the acknowledged offset; an answer that
//!   says the offset moved (`chunk_overlaps`, `chunk_out_of_order`, `chunk_cut_short`) is
//!   followed. The acknowledged offset is stored after each chunk, for progress.
//! - The receipt the server signs on completion is verified with its Ed25519 key before it is
//!   recorded against the file: the key is fetched on the first upload and pinned in the
//!   store, so a receipt signed by any other key is refused.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use doorstep_sync_core::receipt::{Receipt, VerifyingKey, public_key_from_base64, verify_receipt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{DoorstepError, Result};
use crate::phone::{Doorstep, meta};
use crate::store::{PendingUpload, StoredUpload};
use crate::sync::{Attempt, HttpFailure};
use crate::types::{EvidenceReceipt, EvidenceUpload, SyncPhase, SyncProgress, UploadState};

/// Largest chunk the phone sends, whatever the server allows: a cut costs at most this much.
const MAX_CHUNK_BYTES: u64 = 1024 * 1024;

// Wire types (server/src/evidence/api.rs).

#[derive(Debug, Deserialize)]
struct Limits {
    max_file_bytes: u64,
    max_chunk_bytes: u64,
    media_types: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct PublicKey {
    public_key: String,
}

#[derive(Debug, Serialize)]
struct StartUpload<'a> {
    sha256: &'a str,
    size: u64,
    media_type: &'a str,
}

#[derive(Debug, Deserialize)]
struct UploadStatus {
    upload_id: Option<String>,
    offset: u64,
    receipt: Option<Receipt>,
}

/// What one upload pass did.
#[derive(Debug, Default)]
pub(crate) struct UploadPass {
    pub uploaded: u64,
    pub pending: u64,
}

/// Progress over the files of one pass.
struct Progress {
    attempt: u32,
    files_left: u64,
    acknowledged: HashMap<(String, String), u64>,
    total: u64,
}

impl Doorstep {
    /// Uploads every pending evidence file; returns how many were uploaded and how many are
    /// left. A refused file (over a limit, not found on the server) is skipped with its reason
    /// recorded; a network failure stops the pass (to be retried).
    pub(crate) async fn upload_evidence(
        &self,
        client: &reqwest::Client,
        attempt: u32,
        pass: &mut UploadPass,
    ) -> std::result::Result<(), Attempt> {
        let pending = self.with_local(|local| local.store.pending_uploads())?;
        pass.pending = pending.len() as u64;
        if pending.is_empty() {
            return Ok(());
        }
        let limits: Limits = self
            .authed_send(client, |url, token| {
                client
                    .get(format!("{url}/api/v1/evidence/limits"))
                    .bearer_auth(token)
            })
            .await?
            .json()
            .map_err(|failure| self.classify(failure))?;
        let key = self.receipt_key(client).await?;
        let mut progress = Progress {
            attempt,
            files_left: pending.len() as u64,
            acknowledged: pending
                .iter()
                .map(|f| ((f.case_id.clone(), f.sha256.clone()), f.uploaded_bytes))
                .collect(),
            total: pending.iter().map(|f| f.size).sum(),
        };
        for file in pending {
            let refusal = if file.size > limits.max_file_bytes {
                Some(format!(
                    "file_too_large: the server accepts files up to {} bytes",
                    limits.max_file_bytes
                ))
            } else if !limits.media_types.contains(&file.media_type) {
                Some(format!(
                    "media_type_refused: the server does not accept {}",
                    file.media_type
                ))
            } else {
                None
            };
            if let Some(reason) = refusal {
                self.record_progress(
                    &file,
                    file.upload_id.as_deref(),
                    file.uploaded_bytes,
                    Some(&reason),
                )?;
                progress.files_left -= 1;
                continue;
            }
            let chunk = limits.max_chunk_bytes.clamp(1, MAX_CHUNK_BYTES);
            match self
                .upload_one(client, &file, chunk, &key, &mut progress)
                .await
            {
                Ok(true) => {
                    pass.uploaded += 1;
                    pass.pending -= 1;
                }
                Ok(false) => {}
                Err(attempt) => {
                    let (Attempt::Retry(error, _) | Attempt::Fail(error)) = &attempt;
                    let note = match error {
                        DoorstepError::Server { code, detail } => format!("{code}: {detail}"),
                        other => other.to_string(),
                    };
                    // Best effort: the store may have been wiped (a revoked device).
                    let _ = self.with_local(|local| {
                        local
                            .store
                            .set_upload_note(&file.case_id, &file.sha256, &note)
                    });
                    return Err(attempt);
                }
            }
            progress.files_left -= 1;
        }
        Ok(())
    }

    /// Uploads one file to the end; false when the server refused it (reason recorded).
    async fn upload_one(
        &self,
        client: &reqwest::Client,
        file: &PendingUpload,
        chunk: u64,
        key: &VerifyingKey,
        progress: &mut Progress,
    ) -> std::result::Result<bool, Attempt> {
        // Never send bytes that are not the recorded file.
        let intact = self.with_local(|local| {
            let bytes = local.store.evidence_file(&file.case_id, &file.sha256)?;
            Ok(bytes.is_some_and(|b| hex::encode(Sha256::digest(&b)) == file.sha256))
        })?;
        if !intact {
            let reason = "corrupt_on_phone: the stored file no longer matches its recorded hash";
            self.record_progress(file, None, 0, Some(reason))?;
            return Ok(false);
        }
        let uploads = format!("/api/v1/cases/{}/evidence/uploads", file.case_id);
        let start = StartUpload {
            sha256: &file.sha256,
            size: file.size,
            media_type: &file.media_type,
        };
        let mut status = self.start_upload(client, file, &uploads, &start).await?;
        loop {
            let Some(status_ok) = status else {
                return Ok(false);
            };
            if let Some(receipt) = status_ok.receipt {
                self.record_receipt(file, receipt, key)?;
                progress
                    .acknowledged
                    .insert((file.case_id.clone(), file.sha256.clone()), file.size);
                self.report_progress(progress);
                return Ok(true);
            }
            let Some(upload_id) = status_ok.upload_id else {
                return Err(Attempt::Fail(unexpected("an upload without an id")));
            };
            let offset = status_ok.offset.min(file.size);
            self.record_progress(file, Some(&upload_id), offset, None)?;
            progress
                .acknowledged
                .insert((file.case_id.clone(), file.sha256.clone()), offset);
            self.report_progress(progress);
            let length = chunk.min(file.size - offset);
            let bytes = self.with_local(|local| {
                local
                    .store
                    .evidence_bytes(&file.case_id, &file.sha256, offset, length)
            })?;
            let answer = self
                .authed_send(client, |url, token| {
                    client
                        .put(format!("{url}{uploads}/{upload_id}?offset={offset}"))
                        .bearer_auth(token)
                        .header("content-type", "application/octet-stream")
                        .body(bytes.clone())
                })
                .await?;
            status = match (answer.status, answer.error_code().as_str()) {
                (200..=299, _) => Some(answer.json().map_err(|f| self.classify(f))?),
                // The server's offset moved (an earlier chunk landed after all, or this one was
                // cut short): carry on from where it says.
                (409 | 416 | 400, "chunk_overlaps" | "chunk_out_of_order" | "chunk_cut_short") => {
                    let acknowledged = answer
                        .upload_offset
                        .ok_or_else(|| Attempt::Fail(unexpected("no Upload-Offset")))?;
                    Some(UploadStatus {
                        upload_id: Some(upload_id.clone()),
                        offset: acknowledged,
                        receipt: None,
                    })
                }
                // The upload was abandoned and cleaned up, or finished elsewhere: start again
                // (the server resumes or completes what it can).
                (404, _) => self.start_upload(client, file, &uploads, &start).await?,
                _ => return Err(self.classify(answer.failure())),
            };
        }
    }

    /// Starts (or resumes) an upload. None when the server refuses the file for good: its
    /// reason is recorded and the next sync tries again.
    async fn start_upload(
        &self,
        client: &reqwest::Client,
        file: &PendingUpload,
        path: &str,
        start: &StartUpload<'_>,
    ) -> std::result::Result<Option<UploadStatus>, Attempt> {
        let answer = self
            .authed_send(client, |url, token| {
                client
                    .post(format!("{url}{path}"))
                    .bearer_auth(token)
                    .json(start)
            })
            .await?;
        if answer.is_success() {
            return answer.json().map(Some).map_err(|f| self.classify(f));
        }
        let failure = answer.failure();
        if failure.retryable() {
            return Err(self.classify(failure));
        }
        // 404 (the case is not on the server or no longer this user's), 413, 415, 422.
        let HttpFailure::Status { code, message, .. } = failure else {
            return Err(self.classify(failure));
        };
        self.record_progress(file, None, 0, Some(&format!("{code}: {message}")))?;
        Ok(None)
    }

    /// The server's receipt key: pinned in the store the first time it is fetched.
    async fn receipt_key(
        &self,
        client: &reqwest::Client,
    ) -> std::result::Result<VerifyingKey, Attempt> {
        let pinned = self.with_local(|local| local.store.meta(meta::RECEIPT_PUBLIC_KEY))?;
        let text = match pinned {
            Some(text) => text,
            None => {
                let fetched: PublicKey = self
                    .authed_send(client, |url, token| {
                        client
                            .get(format!("{url}/api/v1/evidence/public-key"))
                            .bearer_auth(token)
                    })
                    .await?
                    .json()
                    .map_err(|f| self.classify(f))?;
                self.with_local(|local| {
                    local
                        .store
                        .set_meta(&[(meta::RECEIPT_PUBLIC_KEY, Some(&fetched.public_key))])
                })?;
                fetched.public_key
            }
        };
        public_key_from_base64(&text)
            .map_err(|e| Attempt::Fail(unexpected(&format!("the server's receipt key: {e}"))))
    }

    /// Verifies a receipt and records it against the file; a receipt that does not verify,
    /// or is not for this file and device, is refused and the file stays pending.
    fn record_receipt(
        &self,
        file: &PendingUpload,
        receipt: Receipt,
        key: &VerifyingKey,
    ) -> std::result::Result<(), Attempt> {
        let device = self.with_local(|local| local.store.meta(meta::DEVICE_ID))?;
        let matches = receipt.case_id == file.case_id
            && receipt.sha256 == file.sha256
            && receipt.size == file.size
            && Some(&receipt.uploader_device_id) == device.as_ref();
        let verified = verify_receipt(&receipt, key);
        if !matches || verified.is_err() {
            let reason = match verified {
                Err(e) => e.to_string(),
                Ok(()) => "the receipt is for another file or device".into(),
            };
            // Recorded as not uploaded: the phone holds no receipt it can stand behind.
            self.record_progress(file, None, 0, None)?;
            return Err(Attempt::Fail(DoorstepError::Server {
                code: "receipt_refused".into(),
                detail: reason,
            }));
        }
        let json = serde_json::to_string(&receipt).map_err(DoorstepError::from)?;
        self.with_local(|local| local.store.set_receipt(&file.case_id, &file.sha256, &json))?;
        Ok(())
    }

    fn record_progress(
        &self,
        file: &PendingUpload,
        upload_id: Option<&str>,
        uploaded: u64,
        error: Option<&str>,
    ) -> Result<()> {
        self.with_local(|local| {
            local
                .store
                .set_upload_progress(&file.case_id, &file.sha256, upload_id, uploaded, error)
        })
    }

    fn report_progress(&self, progress: &Progress) {
        if let Some(listener) = self.listener() {
            listener.on_progress(SyncProgress {
                phase: SyncPhase::Evidence,
                round: 0,
                attempt: progress.attempt,
                documents_sent: 0,
                documents_received: 0,
                pending_changes: 0,
                evidence_files_left: progress.files_left,
                evidence_bytes_acknowledged: progress.acknowledged.values().sum(),
                evidence_bytes_total: progress.total,
            });
        }
    }
}

fn unexpected(detail: &str) -> DoorstepError {
    DoorstepError::Server {
        code: "unexpected_response".into(),
        detail: detail.to_string(),
    }
}

/// The upload as the app sees it, from what the store holds for the file (None: the file is
/// not on this phone).
pub(crate) fn upload_view(stored: Option<&StoredUpload>, size: u64) -> EvidenceUpload {
    let Some(stored) = stored else {
        return EvidenceUpload {
            state: UploadState::NotOnDevice,
            uploaded_bytes: 0,
            size_bytes: size,
            receipt: None,
            last_error: None,
        };
    };
    let receipt = stored
        .receipt
        .as_deref()
        .and_then(|json| serde_json::from_str::<Receipt>(json).ok())
        .map(receipt_view);
    let state = match (&receipt, stored.uploaded_bytes) {
        (Some(_), _) => UploadState::Uploaded,
        (None, 0) => UploadState::Pending,
        (None, _) => UploadState::Uploading,
    };
    EvidenceUpload {
        state,
        uploaded_bytes: stored.uploaded_bytes,
        size_bytes: stored.size,
        receipt,
        last_error: stored.error.clone(),
    }
}

fn receipt_view(receipt: Receipt) -> EvidenceReceipt {
    let received_at = DateTime::<Utc>::from_timestamp_millis(receipt.received_at)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    EvidenceReceipt {
        receipt_id: receipt.receipt_id,
        case_id: receipt.case_id,
        sha256: receipt.sha256,
        size_bytes: receipt.size,
        media_type: receipt.media_type,
        uploader_user_id: receipt.uploader_user_id,
        uploader_device_id: receipt.uploader_device_id,
        received_at,
        received_at_ms: receipt.received_at,
        signature: receipt.signature,
    }
}
