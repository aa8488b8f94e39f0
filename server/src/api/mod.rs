//! HTTP routes, middleware and the JSON body extractor.

mod auth;
pub(crate) mod cases;
mod health;
mod sync;

use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::app::AppState;
use crate::error::ApiError;
use crate::evidence::api as evidence;

pub use auth::{MeResponse, RefreshRequest, SignInRequest, TokenResponse, UserView};
pub use cases::{
    CaseResponse, CaseSummary, CaseloadResponse, ChildAttendance, CreateCaseRequest, CreatedCase,
    ImportLineError, ImportReport, ResolveRequest,
};
pub use sync::{SyncDocumentIn, SyncDocumentOut, SyncRequest, SyncResponse, WireError};

/// Largest number of documents in one sync request.
pub const MAX_SYNC_DOCUMENTS: usize = 1000;

pub fn router(state: AppState) -> Router {
    // The sync has its own, longer time limit (see `Config::sync_timeout_secs`).
    let sync = Router::new().route("/api/v1/sync", post(sync::sync));
    let sync = with_common_layers(sync, &state, state.config.sync_timeout());
    let rest = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(crate::metrics::metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/auth/sign-in", post(auth::sign_in))
        .route("/api/v1/auth/refresh", post(auth::refresh))
        .route("/api/v1/me", get(auth::me))
        .route(
            "/api/v1/devices/{device_id}/revoke",
            post(auth::revoke_device),
        )
        .route("/api/v1/users/{user_id}/revoke", post(auth::revoke_user))
        .route("/api/v1/repo/ws", get(crate::repo_ws::upgrade))
        .route(
            "/api/v1/cases",
            get(cases::caseload).post(cases::create_case),
        )
        .route("/api/v1/cases/{case_id}", get(cases::read_case))
        .route(
            "/api/v1/cases/{case_id}/register-marks",
            post(cases::import_register_marks),
        )
        .route(
            "/api/v1/cases/{case_id}/conflicts/{conflict_id}/resolve",
            post(cases::resolve_conflict),
        )
        .route(
            "/api/v1/cases/{case_id}/allocations/{user_id}",
            put(cases::allocate).delete(cases::deallocate),
        )
        .route("/api/v1/evidence/limits", get(evidence::limits))
        .route("/api/v1/evidence/public-key", get(evidence::public_key))
        .route(
            "/api/v1/cases/{case_id}/evidence/uploads",
            post(evidence::start_upload),
        )
        .route(
            "/api/v1/cases/{case_id}/evidence/uploads/{upload_id}",
            get(evidence::upload_status).put(evidence::put_chunk),
        )
        .route(
            "/api/v1/cases/{case_id}/evidence/uploads/{upload_id}/complete",
            post(evidence::retry_completion),
        )
        .route(
            "/api/v1/cases/{case_id}/evidence/{sha256}",
            get(evidence::download),
        )
        .fallback(|| async { ApiError::NotFound });
    let rest = with_common_layers(rest, &state, state.config.request_timeout());
    rest.merge(sync).with_state(state)
}

/// What every API route gets: the body limit, panics caught, tracing, metrics and the time
/// limit `timeout`.
fn with_common_layers(
    routes: Router<AppState>,
    state: &AppState,
    timeout: Duration,
) -> Router<AppState> {
    routes
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(CatchPanicLayer::custom(|_| {
                    ApiError::Internal("a handler panicked".into()).into_response()
                }))
                // The path only: a query string may hold an access token (the WebSocket).
                .layer(
                    TraceLayer::new_for_http().make_span_with(|request: &Request| {
                        tracing::debug_span!(
                            "request",
                            method = %request.method(),
                            path = %request.uri().path(),
                        )
                    }),
                )
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    crate::metrics::track,
                ))
                .layer(HandleErrorLayer::new(timeout_error))
                .timeout(timeout),
        )
}

/// The OpenAPI document, written by hand beside the routes; a test keeps the two in step.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

async fn timeout_error(error: tower::BoxError) -> ApiError {
    if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::Timeout
    } else {
        ApiError::Internal(format!("middleware failed: {error}"))
    }
}

/// `axum::Json`, with every rejection turned into an [`ApiError`] (400 malformed, 413 too
/// large, 415 not JSON, 422 wrong shape).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(JsonBody(value))
    }
}

/// A query-string extractor whose rejection is the API's JSON error (`400 invalid_query`)
/// rather than axum's plain text.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(QueryParams(value))
    }
}

/// Milliseconds since the Unix epoch, the time unit of storage.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// (METHOD, path) of every route registered in `router`, read from this file's source.
    fn routes_in_source() -> BTreeSet<(String, String)> {
        let source = include_str!("mod.rs");
        let body = source
            .split("pub fn router(")
            .nth(1)
            .and_then(|rest| rest.split(".fallback(").next())
            .unwrap();
        let mut routes = BTreeSet::new();
        for chunk in body.split(".route(").skip(1) {
            let path = chunk.split('"').nth(1).unwrap().to_string();
            for method in ["get", "post", "put", "delete"] {
                let called = chunk
                    .match_indices(&format!("{method}("))
                    .any(|(i, _)| i == 0 || !chunk.as_bytes()[i - 1].is_ascii_alphanumeric());
                if called {
                    routes.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        routes
    }

    fn routes_in_openapi() -> BTreeSet<(String, String)> {
        let document: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let mut routes = BTreeSet::new();
        for (path, operations) in document["paths"].as_object().unwrap() {
            for method in operations.as_object().unwrap().keys() {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
        routes
    }

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let source = routes_in_source();
        assert!(source.len() >= 10, "{source:?}");
        assert_eq!(source, routes_in_openapi());
    }
}
