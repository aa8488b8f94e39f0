//! `POST /api/v1/sync`: many documents per request, the server's messages in the reply.
//!
//! Wire format (JSON, `Content-Type: application/json`; messages are Automerge sync messages
//! in standard base64 with padding):
//!
//! ```text
//! request:  {"documents": [{"case_id": "case-1", "message": "<base64>"}, ...]}
//!           `message` may be null or absent: "send me what you have".
//! response: {"documents": [{"case_id": "case-1", "message": "<base64>" | null,
//!                           "error": null | {"code": "...", "message": "..."}}, ...],
//!            "allocated": ["case-1", ...],   every case the user may hold now
//!            "drop": ["case-9", ...]}        cases this device holds and must delete
//! ```
//!
//! The phone lists every document it holds (with a message, or null when it has nothing to
//! say) and repeats the exchange until neither side has a message left. After a request that
//! failed or whose reply was lost, it resets each sync state to its persistent part
//! (`PeerState::decode(&state.encode())`) so that it does not wait for an answer that never
//! came; resending the same request is always safe. The reply lists the
//! requested documents in request order, then documents the server sends unasked (allocated
//! cases the phone lacks or is behind on). Per-document `error.code`: `not_found` (unknown or
//! not allocated: one answer for both), `foreign_actor` (a change by an actor not bound to this
//! device), `invalid_document` (it would fail case-file validation), `corrupt_sync_message`,
//! `unavailable`. A refused document is left unchanged; the others in the request go on.
//!
//! Request-level errors change nothing: 400 `malformed_body` (not JSON, cut short, bad base64),
//! 400 `corrupt_sync_message` (a message that does not decode), 413 `body_too_large`,
//! 415 `unsupported_media_type`, 422 `invalid_body` (wrong shape, duplicate case ids, more than
//! 1000 documents), 401 `device_revoked` (wipe local data).

use axum::extract::FromRequest;
use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::{JsonBody, MAX_SYNC_DOCUMENTS, now_ms};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::sync::{self, IncomingDocument};

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    pub documents: Vec<SyncDocumentIn>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyncDocumentIn {
    pub case_id: String,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct SyncResponse {
    pub documents: Vec<SyncDocumentOut>,
    pub allocated: Vec<String>,
    pub drop: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct SyncDocumentOut {
    pub case_id: String,
    pub message: Option<String>,
    pub error: Option<WireError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct WireError {
    pub code: String,
    pub message: String,
}

pub async fn sync(
    State(state): State<AppState>,
    caller: Caller,
    request: axum::extract::Request,
) -> Result<Json<SyncResponse>, ApiError> {
    // The turn first, then the body (see `sync_turn`): phones waiting for a turn hold no
    // request body (an upload after a day offline is megabytes per phone, and they reconnect
    // together).
    let read_body = async {
        let JsonBody(request) = JsonBody::<SyncRequest>::from_request(request, &state).await?;
        Ok(request)
    };
    let (turn, request) = sync::sync_turn(&state, read_body).await?;
    let incoming = check_request(request)?;
    let reply = sync::sync(&state, &caller, incoming, now_ms(), turn).await?;
    Ok(Json(SyncResponse {
        documents: reply
            .documents
            .into_iter()
            .map(|d| SyncDocumentOut {
                case_id: d.case_id,
                message: d.message.map(|m| STANDARD.encode(m)),
                error: d.error.map(|e| WireError {
                    code: e.code().into(),
                    message: e.message(),
                }),
            })
            .collect(),
        allocated: reply.allocated,
        drop: reply.drop,
    }))
}

/// Structural checks, before anything is read or written: the whole request or nothing.
fn check_request(request: SyncRequest) -> Result<Vec<IncomingDocument>, ApiError> {
    if request.documents.len() > MAX_SYNC_DOCUMENTS {
        return Err(ApiError::InvalidBody(format!(
            "at most {MAX_SYNC_DOCUMENTS} documents per request"
        )));
    }
    let mut seen = BTreeSet::new();
    let mut incoming = Vec::with_capacity(request.documents.len());
    for document in request.documents {
        if document.case_id.is_empty() || document.case_id.len() > 200 {
            return Err(ApiError::InvalidBody(
                "case_id must be 1 to 200 characters".into(),
            ));
        }
        if !seen.insert(document.case_id.clone()) {
            return Err(ApiError::InvalidBody(format!(
                "document {} appears twice",
                document.case_id
            )));
        }
        let message = match document.message {
            None => None,
            Some(text) => {
                let bytes = STANDARD.decode(text.as_bytes()).map_err(|_| {
                    ApiError::MalformedBody(format!(
                        "document {}: message is not valid base64",
                        document.case_id
                    ))
                })?;
                doorstep_sync_core::decode_message(&bytes).map_err(|e| {
                    ApiError::CorruptSyncMessage {
                        case_id: document.case_id.clone(),
                        detail: e.to_string(),
                    }
                })?;
                Some(bytes)
            }
        };
        incoming.push(IncomingDocument {
            case_id: document.case_id,
            message,
        });
    }
    Ok(incoming)
}
