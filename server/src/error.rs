//! The one HTTP error type. Every failure becomes a status and a JSON body
//! `{"error": {"code": "stable_code", "message": "..."}}`; internal detail goes to the log,
//! never into a body.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or is cut short, or a field's bytes do not decode.
    #[error("the request body is malformed: {0}")]
    MalformedBody(String),
    /// The body is JSON of the wrong shape.
    #[error("the request body is invalid: {0}")]
    InvalidBody(String),
    /// A query-string parameter is missing or not of its type.
    #[error("the query string is invalid: {0}")]
    InvalidQuery(String),
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the request body is too large")]
    PayloadTooLarge,
    #[error("a sync message could not be decoded (document {case_id}): {detail}")]
    CorruptSyncMessage { case_id: String, detail: String },
    #[error("missing or invalid access token")]
    Unauthenticated,
    #[error("the access token has expired: refresh it")]
    TokenExpired,
    #[error("unknown username or wrong password")]
    InvalidCredentials,
    /// Too many failed sign-ins for the username lately (answered with `Retry-After`).
    #[error("too many failed sign-ins for this username: try again in {retry_after_secs} s")]
    TooManySignIns { retry_after_secs: u64 },
    #[error("the refresh token is unknown, revoked or expired: sign in again")]
    InvalidRefreshToken,
    #[error("this refresh token was already used: every token of this sign-in is now revoked")]
    RefreshTokenReused,
    /// The device or its user was revoked: the phone must wipe its local data.
    #[error("this device has been revoked: wipe local data and sign in again")]
    DeviceRevoked,
    #[error("this account is disabled")]
    AccountDisabled,
    #[error("you may not do this")]
    Forbidden,
    /// Unknown and forbidden look the same, so that ids cannot be probed.
    #[error("not found")]
    NotFound,
    #[error("this Automerge actor id is already bound to another device")]
    ActorInUse,
    /// The conflict was resolved by someone else, or changed, since the caller saw it.
    #[error("no such open conflict: it was resolved or has changed; reload the case")]
    StaleConflict,
    /// A plain request to an endpoint that speaks only WebSocket.
    #[error("this endpoint speaks WebSocket: send an upgrade request")]
    WebSocketUpgradeRequired,
    #[error("the server took too long to answer")]
    Timeout,
    /// Too many syncs are waiting for their turn: nothing was done (answered with
    /// `Retry-After`).
    #[error("the server is busy: try again in {retry_after_secs} s")]
    Busy { retry_after_secs: u64 },
    #[error("the server is not ready")]
    NotReady,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedBody(_)
            | ApiError::InvalidQuery(_)
            | ApiError::CorruptSyncMessage { .. } => StatusCode::BAD_REQUEST,
            ApiError::InvalidBody(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthenticated
            | ApiError::TokenExpired
            | ApiError::InvalidCredentials
            | ApiError::InvalidRefreshToken
            | ApiError::RefreshTokenReused
            | ApiError::DeviceRevoked => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::AccountDisabled => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::ActorInUse | ApiError::StaleConflict => StatusCode::CONFLICT,
            ApiError::WebSocketUpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ApiError::TooManySignIns { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout | ApiError::NotReady | ApiError::Busy { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable, machine-readable code: clients branch on this, never on the message.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedBody(_) => "malformed_body",
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge => "body_too_large",
            ApiError::CorruptSyncMessage { .. } => "corrupt_sync_message",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::TokenExpired => "token_expired",
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::TooManySignIns { .. } => "too_many_sign_ins",
            ApiError::InvalidRefreshToken => "invalid_refresh_token",
            ApiError::RefreshTokenReused => "refresh_token_reused",
            ApiError::DeviceRevoked => "device_revoked",
            ApiError::Forbidden => "forbidden",
            ApiError::AccountDisabled => "account_disabled",
            ApiError::NotFound => "not_found",
            ApiError::ActorInUse => "actor_in_use",
            ApiError::StaleConflict => "stale_conflict",
            ApiError::WebSocketUpgradeRequired => "websocket_upgrade_required",
            ApiError::Timeout => "timeout",
            ApiError::Busy { .. } => "busy",
            ApiError::NotReady => "not_ready",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The message for the body: the display text, except for internal errors.
    fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    pub code: &'static str,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.public_message(),
            },
        };
        let mut response = (self.status_code(), Json(body)).into_response();
        if let ApiError::TooManySignIns { retry_after_secs } | ApiError::Busy { retry_after_secs } =
            self
        {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry_after_secs),
            );
        }
        response
    }
}

impl From<crate::auth::sign_in::SignInRefused> for ApiError {
    fn from(refused: crate::auth::sign_in::SignInRefused) -> Self {
        use crate::auth::sign_in::SignInRefused;
        match refused {
            SignInRefused::InvalidCredentials => ApiError::InvalidCredentials,
            SignInRefused::Throttled { retry_after_secs } => {
                ApiError::TooManySignIns { retry_after_secs }
            }
            SignInRefused::Storage(e) => e.into(),
            SignInRefused::Internal(detail) => ApiError::Internal(detail),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::NotFound => ApiError::NotFound,
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => ApiError::InvalidBody(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => ApiError::MalformedBody(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            other => ApiError::MalformedBody(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::InvalidQuery(rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_detail_stays_out_of_the_body() {
        let error = ApiError::Internal("connection refused to 10.0.0.5".into());
        assert_eq!(error.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error.public_message(), "internal error");
    }
}
