//! The staff web view: server-rendered pages (no front-end build, no script at all) over the
//! same rules as the staff API.
//!
//! - [`session`]: browser sign-in with the accounts' argon2 passwords, server-side sessions,
//!   CSRF tokens on every form.
//! - [`pages`]: sign-in, my caseload, the case page (timeline, attendance, evidence readiness,
//!   amendment trails, conflicts to resolve).
//! - [`pack`]: the evidence pack, as print-ready HTML and as PDF ([`pdf`]).
//! - [`provenance`]: which stored change made each record, so pages show when the server
//!   received it.
//!
//! Safe by default: a case the user may not see is a 404 like a missing one
//! ([`crate::access`]); templates are `maud`, which escapes every interpolated value; every
//! response carries a content security policy without script.

pub mod demo;
mod pack;
mod pages;
pub mod pdf;
mod provenance;
mod render;
pub mod session;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::app::AppState;
use crate::error::ApiError;
use crate::storage::StorageError;

/// No script anywhere; styles only from our own stylesheet; images only from here (evidence
/// thumbnails); forms only to here; never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLESHEET: &str = include_str!("style.css");

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/cases") }))
        .route("/static/style.css", get(stylesheet))
        // Browsers ask for it on every site; an empty answer keeps their consoles clean.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/sign-out", post(session::sign_out))
        .route("/cases", get(pages::caseload))
        .route("/cases/{case_id}", get(pages::case_page))
        .route(
            "/cases/{case_id}/conflicts/{conflict_id}/resolve",
            post(pages::resolve_conflict),
        )
        .route(
            "/cases/{case_id}/evidence/{sha256}",
            get(pages::evidence_file),
        )
        .route("/cases/{case_id}/evidence-pack", get(pack::pack_html))
        .route("/cases/{case_id}/evidence-pack.pdf", get(pack::pack_pdf))
        .layer(axum::middleware::map_response(security_headers))
        .layer(
            ServiceBuilder::new()
                .layer(CatchPanicLayer::custom(|_| {
                    WebError::Internal("a page handler panicked".into()).into_response()
                }))
                .layer(TraceLayer::new_for_http())
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    WebError::Internal("a page took too long or its middleware failed".into())
                }))
                .timeout(state.config.request_timeout()),
        )
        .with_state(state)
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        STYLESHEET,
    )
}

/// Headers on every page: the CSP, no MIME sniffing, no framing, no referrer (case ids are in
/// URLs), and no caching of pages that hold personal data.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    // An evidence file brings its own, stricter policy (sandboxed).
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// What a page can fail with; each is an HTML page (or a redirect to sign in).
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("sign in to continue")]
    SignInRequired,
    /// A missing case and a case the user may not see look the same.
    #[error("not found")]
    NotFound,
    #[error("you may not do this")]
    Forbidden,
    /// The form's CSRF token is missing or wrong: nothing was changed.
    #[error("this form has expired or did not come from Doorstep; nothing was changed")]
    CsrfRejected,
    #[error(
        "this conflict was already resolved by someone else, or has changed since you opened the \
         case; nothing was changed"
    )]
    StaleConflict { case_id: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("internal error")]
    Internal(String),
}

impl WebError {
    fn status(&self) -> StatusCode {
        match self {
            WebError::SignInRequired => StatusCode::SEE_OTHER,
            WebError::NotFound => StatusCode::NOT_FOUND,
            WebError::Forbidden | WebError::CsrfRejected => StatusCode::FORBIDDEN,
            WebError::StaleConflict { .. } => StatusCode::CONFLICT,
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        match &self {
            WebError::SignInRequired => return Redirect::to("/sign-in").into_response(),
            WebError::Internal(detail) => tracing::error!(%detail, "web view: internal error"),
            _ => {}
        }
        let back = match &self {
            WebError::StaleConflict { case_id } => format!("/cases/{case_id}#conflicts"),
            _ => "/cases".to_string(),
        };
        (self.status(), render::error_page(&self.to_string(), &back)).into_response()
    }
}

impl From<ApiError> for WebError {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::NotFound => WebError::NotFound,
            ApiError::Forbidden => WebError::Forbidden,
            ApiError::Internal(detail) => WebError::Internal(detail),
            other => WebError::Internal(other.to_string()),
        }
    }
}

impl From<StorageError> for WebError {
    fn from(error: StorageError) -> Self {
        WebError::from(ApiError::from(error))
    }
}
