//! Sign-in (which registers the device), token refresh, and revocation.
//!
//! A phone signs in with a username and password and names its Automerge actor id; the server
//! binds that actor to a new device and answers with a short-lived access token (JWT, EdDSA)
//! and a refresh token bound to the device. Each refresh returns a new refresh token and
//! retires the old one; presenting a retired token again revokes every token of that sign-in.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{JsonBody, now_ms};
use crate::app::AppState;
use crate::auth::sign_in::check_credentials;
use crate::auth::{self, Caller};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::storage::{Device, Role, Rotation, StorageError, User};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SignInRequest {
    pub username: String,
    pub password: String,
    /// A name the user recognises ("Sam's work phone").
    pub device_name: String,
    /// The device's Automerge actor id, hex (1 to 32 bytes).
    pub actor_id: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub school_id: Option<String>,
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        UserView {
            id: user.id.clone(),
            username: user.username.clone(),
            display_name: user.display_name.clone(),
            role: user.role,
            school_id: user.school_id.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub refresh_token: String,
    pub device_id: String,
    pub user: UserView,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MeResponse {
    pub user: UserView,
    pub device_id: String,
    pub device_name: String,
    pub actor_id: String,
}

/// `POST /api/v1/auth/sign-in`
pub async fn sign_in(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<SignInRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let actor_id = normalise_actor(&request.actor_id)?;
    let device_name = request.device_name.trim();
    if device_name.is_empty() || device_name.chars().count() > 100 {
        return Err(ApiError::InvalidBody(
            "device_name must be 1 to 100 characters".into(),
        ));
    }
    let user = check_credentials(&state, &request.username, request.password).await?;
    if user.disabled_at.is_some() {
        return Err(ApiError::AccountDisabled);
    }
    let now = now_ms();
    let device = match state.storage.device_by_actor(&actor_id).await? {
        // The same phone signing in again (its session ran out): same device, new tokens.
        Some(device) if device.user_id == user.id && device.revoked_at.is_none() => device,
        Some(_) => return Err(ApiError::ActorInUse),
        None => {
            let device = Device {
                id: uuid::Uuid::new_v4().to_string(),
                user_id: user.id.clone(),
                actor_id,
                name: device_name.to_string(),
                created_at: now,
                revoked_at: None,
            };
            match state.storage.create_device(&device).await {
                Ok(()) => device,
                Err(StorageError::Conflict(_)) => return Err(ApiError::ActorInUse),
                Err(e) => return Err(e.into()),
            }
        }
    };
    let family = uuid::Uuid::new_v4().to_string();
    let (refresh_token, stored) = auth::new_refresh_token(&state, &device.id, &family, now);
    state.storage.insert_refresh_token(&stored).await?;
    Metrics::add(&state.metrics.sign_ins, 1);
    tracing::info!(user = %user.id, device = %device.id, "signed in");
    Ok(Json(token_response(
        &state,
        &user,
        &device,
        refresh_token,
        now,
    )?))
}

/// `POST /api/v1/auth/refresh`
pub async fn refresh(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let now = now_ms();
    let presented = auth::hash_refresh_token(request.refresh_token.trim());
    // Device and family are taken from the presented token by the storage.
    let (refresh_token, replacement) = auth::new_refresh_token(&state, "", "", now);
    let rotation = state
        .storage
        .rotate_refresh_token(&presented, &replacement, now)
        .await?;
    let (device_id, reused) = match rotation {
        Rotation::Rotated { device_id } => (device_id, false),
        Rotation::Reused { device_id } => (device_id, true),
        Rotation::Expired | Rotation::Unknown => return Err(ApiError::InvalidRefreshToken),
    };
    let device = state
        .storage
        .device(&device_id)
        .await?
        .ok_or(ApiError::InvalidRefreshToken)?;
    let user = state
        .storage
        .user(&device.user_id)
        .await?
        .ok_or(ApiError::InvalidRefreshToken)?;
    if device.revoked_at.is_some() || user.disabled_at.is_some() {
        return Err(ApiError::DeviceRevoked);
    }
    if reused {
        tracing::warn!(device = %device.id, "refresh token reused: its family is revoked");
        return Err(ApiError::RefreshTokenReused);
    }
    Ok(Json(token_response(
        &state,
        &user,
        &device,
        refresh_token,
        now,
    )?))
}

/// `GET /api/v1/me`
pub async fn me(caller: Caller) -> Json<MeResponse> {
    Json(MeResponse {
        user: UserView::from(&caller.user),
        device_id: caller.device.id,
        device_name: caller.device.name,
        actor_id: caller.device.actor_id,
    })
}

/// `POST /api/v1/devices/{device_id}/revoke`: by the device's owner or an admin. Its tokens
/// fail at once; the phone is told to wipe its data when it next connects.
pub async fn revoke_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(device_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let device = state
        .storage
        .device(&device_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    // Someone else's device is "not found", not "forbidden": ids cannot be probed.
    if device.user_id != caller.user.id && caller.user.role != Role::Admin {
        return Err(ApiError::NotFound);
    }
    state.storage.revoke_device(&device.id, now_ms()).await?;
    state.repo.device_revoked(&device.id);
    tracing::info!(device = %device.id, by = %caller.user.id, "device revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/users/{user_id}/revoke`: admins only. Every device of the user stops at once.
pub async fn revoke_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(user_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if caller.user.role != Role::Admin {
        return Err(ApiError::Forbidden);
    }
    state.storage.disable_user(&user_id, now_ms()).await?;
    state.repo.user_revoked(&user_id);
    tracing::info!(user = %user_id, by = %caller.user.id, "user revoked");
    Ok(StatusCode::NO_CONTENT)
}

fn token_response(
    state: &AppState,
    user: &User,
    device: &Device,
    refresh_token: String,
    now: i64,
) -> Result<TokenResponse, ApiError> {
    Ok(TokenResponse {
        access_token: auth::access_token(state, user, device, now)?,
        token_type: "Bearer".into(),
        expires_in: state.config.access_token_ttl_secs,
        refresh_token,
        device_id: device.id.clone(),
        user: UserView::from(user),
    })
}

/// Lower-case hex of 1 to 32 bytes.
fn normalise_actor(actor: &str) -> Result<String, ApiError> {
    let actor = actor.trim().to_ascii_lowercase();
    match hex::decode(&actor) {
        Ok(bytes) if (1..=32).contains(&bytes.len()) => Ok(actor),
        _ => Err(ApiError::InvalidBody(
            "actor_id must be 1 to 32 bytes of hex".into(),
        )),
    }
}
