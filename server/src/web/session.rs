//! Browser sessions and CSRF protection.
//!
//! Sign-in checks the username and password with the accounts' argon2 hashes (as the API
//! does, with the same constant-time answer for unknown users), then stores a server-side
//! session: the cookie holds a random 256-bit token, the database only its SHA-256, the user
//! and an expiry. Sign-out deletes the row, so a copied cookie stops working at once.
//!
//! The session cookie is `HttpOnly`, `SameSite=Strict`, and `Secure` unless the page was
//! asked for on localhost (where there is no TLS). Every form carries the session's
//! synchronizer token, checked on POST; the sign-in form, before any session exists, uses a
//! double-submit cookie instead.

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::header::{COOKIE, HOST, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{WebError, render};
use crate::app::AppState;
use crate::auth::sign_in::{SignInRefused, check_credentials};
use crate::storage::{User, WebSession};

pub const SESSION_COOKIE: &str = "doorstep_session";
pub const SIGN_IN_CSRF_COOKIE: &str = "doorstep_sign_in";
/// A working day: staff sign in again the next morning.
pub const SESSION_TTL_SECS: i64 = 8 * 3600;
const SIGN_IN_FORM_TTL_SECS: i64 = 3600;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// 256 random bits, URL-safe.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Equality that takes the same time wherever the strings differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

/// True when the browser reached us as localhost: the only place a cookie may go without TLS.
fn is_localhost(headers: &HeaderMap) -> bool {
    let host = headers
        .get(HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let name = if host.starts_with('[') {
        host.split(']')
            .next()
            .map(|h| format!("{h}]"))
            .unwrap_or_default()
    } else {
        host.split(':').next().unwrap_or_default().to_string()
    };
    matches!(name.as_str(), "localhost" | "127.0.0.1" | "[::1]")
}

fn set_cookie(headers: &HeaderMap, name: &str, value: &str, max_age_secs: i64) -> HeaderValue {
    let secure = if is_localhost(headers) {
        ""
    } else {
        "; Secure"
    };
    let text = format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}"
    );
    // Names and values are ours (URL-safe base64), so this cannot fail; an empty cookie is the
    // harmless fallback.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

/// A signed-in staff member and their session.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub user: User,
    pub session: WebSession,
}

impl SignedIn {
    /// Refuses a form whose token is not this session's.
    pub fn check_csrf(&self, presented: &str) -> Result<(), WebError> {
        if same_secret(&self.session.csrf_token, presented) {
            Ok(())
        } else {
            tracing::warn!(user = %self.user.id, "web form refused: wrong or missing CSRF token");
            Err(WebError::CsrfRejected)
        }
    }
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, WebError> {
        let token = cookie(&parts.headers, SESSION_COOKIE).ok_or(WebError::SignInRequired)?;
        let session = state
            .storage
            .web_session(&hash_token(&token), now_ms())
            .await?
            .ok_or(WebError::SignInRequired)?;
        let user = state
            .storage
            .user(&session.user_id)
            .await?
            .ok_or(WebError::SignInRequired)?;
        // A disabled account loses its browser sessions at once, as it loses its devices.
        if user.disabled_at.is_some() {
            return Err(WebError::SignInRequired);
        }
        Ok(SignedIn { user, session })
    }
}

/// `axum::Form`, with a rejection that is an HTML page rather than plain text.
#[derive(Debug)]
pub struct WebForm<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for WebForm<T> {
    type Rejection = WebError;

    async fn from_request(req: Request, state: &S) -> Result<Self, WebError> {
        let axum::Form(value) = axum::Form::<T>::from_request(req, state)
            .await
            .map_err(|e| WebError::BadRequest(e.body_text()))?;
        Ok(WebForm(value))
    }
}

/// `GET /sign-in`: the form, with a fresh double-submit token.
pub async fn sign_in_page(headers: HeaderMap) -> Response {
    sign_in_form(&headers, None, axum::http::StatusCode::OK)
}

fn sign_in_form(
    headers: &HeaderMap,
    message: Option<&str>,
    status: axum::http::StatusCode,
) -> Response {
    let token = random_token();
    let mut response = (status, render::sign_in_page(&token, message)).into_response();
    response.headers_mut().insert(
        SET_COOKIE,
        set_cookie(headers, SIGN_IN_CSRF_COOKIE, &token, SIGN_IN_FORM_TTL_SECS),
    );
    response
}

/// The sign-in form; its `Debug` shows only the username.
#[derive(Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

impl std::fmt::Debug for SignInForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInForm")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// `POST /sign-in`
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    WebForm(form): WebForm<SignInForm>,
) -> Result<Response, WebError> {
    // Login CSRF: the form's token must match the cookie set with the form.
    let expected = cookie(&headers, SIGN_IN_CSRF_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same_secret(&expected, &form.csrf) {
        return Err(WebError::CsrfRejected);
    }
    let refused = |message: &str, status| Ok(sign_in_form(&headers, Some(message), status));
    let user = match check_credentials(&state, &form.username, form.password).await {
        Ok(user) if user.disabled_at.is_none() => user,
        Ok(_) | Err(SignInRefused::InvalidCredentials) => {
            return refused(
                "Unknown username or wrong password.",
                axum::http::StatusCode::UNAUTHORIZED,
            );
        }
        Err(SignInRefused::Throttled { retry_after_secs }) => {
            let minutes = retry_after_secs.div_ceil(60);
            let mut response = sign_in_form(
                &headers,
                Some(&format!(
                    "Too many failed sign-ins for this username. Try again in {minutes} minute{}.",
                    if minutes == 1 { "" } else { "s" }
                )),
                axum::http::StatusCode::TOO_MANY_REQUESTS,
            );
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry_after_secs),
            );
            return Ok(response);
        }
        Err(SignInRefused::Storage(e)) => return Err(e.into()),
        Err(SignInRefused::Internal(detail)) => return Err(WebError::Internal(detail)),
    };
    let token = random_token();
    let now = now_ms();
    state
        .storage
        .create_web_session(&WebSession {
            token_hash: hash_token(&token),
            user_id: user.id.clone(),
            csrf_token: random_token(),
            created_at: now,
            expires_at: now + SESSION_TTL_SECS * 1000,
        })
        .await?;
    tracing::info!(user = %user.id, "web sign-in");
    let mut response = Redirect::to("/cases").into_response();
    let headers_out = response.headers_mut();
    headers_out.append(
        SET_COOKIE,
        set_cookie(&headers, SESSION_COOKIE, &token, SESSION_TTL_SECS),
    );
    headers_out.append(SET_COOKIE, set_cookie(&headers, SIGN_IN_CSRF_COOKIE, "", 0));
    Ok(response)
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

impl std::fmt::Debug for CsrfOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsrfOnly").finish_non_exhaustive()
    }
}

/// `POST /sign-out`: the session row is deleted, the cookie cleared.
pub async fn sign_out(
    State(state): State<AppState>,
    signed_in: SignedIn,
    headers: HeaderMap,
    WebForm(form): WebForm<CsrfOnly>,
) -> Result<Response, WebError> {
    signed_in.check_csrf(&form.csrf)?;
    state
        .storage
        .delete_web_session(&signed_in.session.token_hash, now_ms())
        .await?;
    let mut response = Redirect::to("/sign-in").into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, set_cookie(&headers, SESSION_COOKIE, "", 0));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; doorstep_session=xyz; b=2"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie(&headers, "doorstep"), None);
    }

    #[test]
    fn cookies_are_secure_except_on_localhost() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("127.0.0.1:8080"));
        let local = set_cookie(&headers, SESSION_COOKIE, "t", 60);
        assert!(!local.to_str().unwrap().contains("Secure"));
        headers.insert(HOST, HeaderValue::from_static("doorstep.example.org"));
        let remote = set_cookie(&headers, SESSION_COOKIE, "t", 60);
        let remote = remote.to_str().unwrap();
        assert!(remote.contains("; Secure"), "{remote}");
        assert!(remote.contains("HttpOnly") && remote.contains("SameSite=Strict"));
        headers.insert(HOST, HeaderValue::from_static("localhost.evil.example"));
        assert!(
            set_cookie(&headers, "x", "t", 60)
                .to_str()
                .unwrap()
                .contains("Secure")
        );
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", "x"));
    }
}
