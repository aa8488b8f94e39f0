//! `GET /api/v1/repo/ws`: case files over the automerge-repo network protocol v1, so that web
//! and desktop clients built on automerge-repo (`@automerge/automerge-repo` with
//! `@automerge/automerge-repo-network-websocket`) sync Doorstep case files directly.
//!
//! # Authentication
//!
//! The same access tokens as the HTTP API, as `Authorization: Bearer <token>` or, because
//! browser and Node WebSocket clients cannot set headers, as the query parameter
//! `?access_token=<token>` (the server never logs query strings). A missing, invalid,
//! expired or revoked token is refused before the upgrade with the HTTP API's 401 and JSON
//! error (`unauthenticated`, `token_expired`, `device_revoked`); a plain request without the
//! upgrade gets 426 `websocket_upgrade_required`. The connection closes when the token
//! expires (an `error` message, then close code 1008): the client reconnects with a fresh
//! token. Revoking the device or its user closes its connections at once (1008), and every
//! batch of sync messages re-checks both in the database.
//!
//! # Documents
//!
//! A case `case-<uuid>` is the document whose id is the base58check of the UUID's 16 bytes
//! ([`document_id`]); `repo.find("<uuid>")` in automerge-repo names the same document. Need-to-know
//! is as for HTTP sync: a device syncs the cases allocated to its user. A `request` or `sync`
//! for a document that does not exist or is not allocated gets `doc-unavailable` (one answer
//! for both); so does a document the user loses while it is open. The server announces no
//! documents: a client asks for the cases it wants (their ids come from `GET /api/v1/cases`).
//! Clients cannot create documents: only the server creates case files.
//!
//! # Sync
//!
//! Each `request`/`sync` goes through the server's sync path ([`crate::sync`]): the checked
//! receive, case-file validation, storage of every change with device, user and received-at,
//! the per-(device, document) sync state (so a reconnect sends only what is missing) and the
//! bounded document cache. The answer is sent only after the changes are committed. When a
//! document changes (over WebSocket, HTTP sync or a staff edit, through this instance or, on
//! PostgreSQL, another: [`remote`]), every connection of this process that has it open gets
//! a `sync` at once ([`hub`]), or, while the client has not yet
//! answered the last one that brought it changes, with the reply to that answer (all that
//! changed meanwhile in one message).
//!
//! # Actors
//!
//! HTTP phones register one actor at sign-in and may write only with it. An automerge-repo
//! client cannot choose its actors (each document handle gets a random one), so here a change
//! may also be made by an actor nobody has used: the first device to deliver it is bound to
//! it (`device_actors`), in the transaction that stores the change. An actor bound to another
//! device, or one that already wrote for another device or for the server, is refused. So
//! every actor still belongs to exactly one device, and every change to one device and user.
//!
//! # Errors
//!
//! Anything that is not the protocol closes the connection after an `error` message
//! (`{type: "error", message}`), touching no stored document:
//!
//! | input | close code |
//! |---|---|
//! | a text frame | 1003 |
//! | a frame that is not CBOR, not a map, or lacks a field its type needs | 1007 |
//! | a document id that is not base58check of 16 bytes | 1007 |
//! | sync message bytes that do not decode, or do not apply | 1007 |
//! | a frame over the size limit (`--max-body-bytes`, 8 MiB by default) | 1009 |
//! | an unknown message type, anything before `join`, a second `join`, no `1` among the versions | 1002 |
//! | a change by an actor of another device; a change that leaves an invalid case file | 1008 |
//! | an expired token, a revoked device | 1008 |
//!
//! A refused document leaves the stored document exactly as it was; the other documents of
//! the same batch are stored. The client is told exactly why (a refused value is quoted); the
//! server's log names only the close code, the document and the kind of refusal, never what
//! the client sent, since a refused value is case-file content. `leave`, `doc-unavailable`
//! and the remote-heads gossip messages are accepted and ignored; `ephemeral` messages are
//! relayed to the other connections that have the document open.

pub(crate) mod connection;
pub mod document_id;
pub mod hub;
pub mod protocol;
pub(crate) mod remote;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

pub use hub::RepoHub;

use crate::app::AppState;
use crate::auth;
use crate::error::ApiError;

#[derive(Debug, Default, Deserialize)]
pub struct TokenQuery {
    access_token: Option<String>,
}

/// What a connection reads into at first (tungstenite's default is 128 KiB). Its buffer
/// grows to hold a larger frame, so a small start costs only more, smaller reads; with fifty
/// clients connected the default held 16 MB of the server's peak heap.
pub const WEBSOCKET_READ_BUFFER_BYTES: usize = 16 * 1024;

/// What a connection gathers of outgoing frames before it writes them to the socket
/// (tungstenite's default is 128 KiB). The buffer keeps the largest size it reached for as
/// long as the connection lasts.
pub const WEBSOCKET_WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// The upgrade: authenticate, then hand the socket to a connection task.
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<TokenQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let from_query = query.ok().and_then(|Query(q)| q.access_token);
    let token = auth::bearer_token(&headers)
        .map(str::to_string)
        .or(from_query)
        .ok_or(ApiError::Unauthenticated)?;
    let (caller, claims) = auth::authenticate(&state, &token).await?;
    // The verifier allows a few seconds of clock skew; a connection is not opened only to be
    // closed at once.
    if claims.exp.saturating_mul(1000) <= chrono::Utc::now().timestamp_millis() {
        return Err(ApiError::TokenExpired);
    }
    let upgrade = upgrade.map_err(|_| ApiError::WebSocketUpgradeRequired)?;
    let limit = state.config.max_body_bytes;
    Ok(upgrade
        .read_buffer_size(WEBSOCKET_READ_BUFFER_BYTES)
        .write_buffer_size(WEBSOCKET_WRITE_BUFFER_BYTES)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| connection::serve(socket, state, caller, claims.exp)))
}
