//! Accounts and devices: passwords, access tokens, rotating refresh tokens, and the extractor
//! that authenticates every API request against the database.

pub mod jwt;
pub mod password;
pub mod sign_in;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::error::ApiError;
use crate::storage::{Device, RefreshToken, User};
use jwt::{AUDIENCE, Claims, ISSUER, TokenError};

/// The caller of an authenticated request: a live user on a live device. Checked against the
/// database on every request, so that revoking a device or a user takes effect at once.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    pub device: Device,
}

impl Caller {
    /// Who the caller's writes must name as their author: this user on this device.
    pub fn author(&self) -> doorstep_sync_core::Author {
        doorstep_sync_core::Author {
            user_id: self.user.id.clone(),
            device_id: self.device.id.clone(),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(&parts.headers).ok_or(ApiError::Unauthenticated)?;
        let (caller, _) = authenticate(state, token).await?;
        Ok(caller)
    }
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|header| header.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Checks an access token, then its device and user in the database (so that revoking either
/// takes effect at once). Returns the caller and what the token says (its expiry, for a
/// connection that outlives one request).
pub async fn authenticate(state: &AppState, token: &str) -> Result<(Caller, Claims), ApiError> {
    let claims = state.keys.verify(token.trim()).map_err(|e| match e {
        TokenError::Expired => ApiError::TokenExpired,
        TokenError::Invalid => ApiError::Unauthenticated,
    })?;
    let device = state
        .storage
        .device(&claims.did)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let user = state
        .storage
        .user(&claims.sub)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    if device.user_id != user.id {
        return Err(ApiError::Unauthenticated);
    }
    if device.revoked_at.is_some() || user.disabled_at.is_some() {
        return Err(ApiError::DeviceRevoked);
    }
    Ok((Caller { user, device }, claims))
}

/// A new access token and a new refresh token for a device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IssuedTokens {
    pub access_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub refresh_token: String,
}

/// The access token for `user` on `device`.
pub fn access_token(
    state: &AppState,
    user: &User,
    device: &Device,
    now_ms: i64,
) -> Result<String, ApiError> {
    let now = now_ms / 1000;
    let ttl = i64::try_from(state.config.access_token_ttl_secs).unwrap_or(i64::MAX / 4);
    let claims = Claims {
        sub: user.id.clone(),
        did: device.id.clone(),
        role: user.role,
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        iat: now,
        exp: now.saturating_add(ttl),
    };
    state
        .keys
        .sign(&claims)
        .map_err(|_| ApiError::Internal("signing an access token failed".into()))
}

/// A fresh refresh token (returned once to the client) and its stored form.
pub fn new_refresh_token(
    state: &AppState,
    device_id: &str,
    family_id: &str,
    now_ms: i64,
) -> (String, RefreshToken) {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let token = format!("dsr_{}", URL_SAFE_NO_PAD.encode(secret));
    let ttl_ms = i64::try_from(state.config.refresh_token_ttl_secs)
        .unwrap_or(i64::MAX / 4_000)
        .saturating_mul(1000);
    let stored = RefreshToken {
        id: uuid::Uuid::new_v4().to_string(),
        device_id: device_id.to_string(),
        family_id: family_id.to_string(),
        token_hash: hash_refresh_token(&token),
        created_at: now_ms,
        expires_at: now_ms.saturating_add(ttl_ms),
        used_at: None,
        revoked_at: None,
    };
    (token, stored)
}

/// Refresh tokens are stored as their SHA-256: they are random and long, so no salt or slow
/// hash is needed, and a leaked table gives nothing usable.
pub fn hash_refresh_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
