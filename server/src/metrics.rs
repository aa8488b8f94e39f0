//! Prometheus metrics, kept in the app state (no global registry) and rendered in the text
//! exposition format at `GET /metrics`. Counters only carry counts, never ids or personal data.

use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;

#[derive(Debug, Default)]
pub struct Metrics {
    /// HTTP responses by status class (1xx..5xx).
    responses: [AtomicU64; 5],
    request_micros_total: AtomicU64,
    pub sync_requests: AtomicU64,
    pub sync_documents: AtomicU64,
    pub sync_changes_applied: AtomicU64,
    pub sync_documents_refused: AtomicU64,
    pub sync_retries: AtomicU64,
    /// Uploads (HTTP or WebSocket) received and committed by another upload of their case,
    /// together.
    pub uploads_taken_along: AtomicU64,
    /// Batches of uploads to be received together that went one at a time instead (one would
    /// be refused, or the stored document could not be read).
    pub upload_batches_declined: AtomicU64,
    pub sync_busy: AtomicU64,
    pub sign_ins: AtomicU64,
    pub sign_in_failures: AtomicU64,
    pub document_cache_hits: AtomicU64,
    pub document_cache_misses: AtomicU64,
    pub graph_cache_hits: AtomicU64,
    pub graph_cache_misses: AtomicU64,
    pub ws_connections: AtomicU64,
    pub ws_frames_received: AtomicU64,
    pub ws_frames_sent: AtomicU64,
    pub ws_bytes_received: AtomicU64,
    pub ws_bytes_sent: AtomicU64,
    pub ws_protocol_errors: AtomicU64,
    pub ws_closed_with_error: AtomicU64,
    /// Held pushes that went out on their own, not in the reply to a client's message: after
    /// the whole answer wait (`--ws-answer-wait-ms`), or when the other syncs they waited for
    /// ended.
    pub ws_pushes_sent_after_wait: AtomicU64,
    /// HTTP syncs' waits for a turn: the sum, and the longest (microseconds).
    sync_turn_wait_micros_total: AtomicU64,
    sync_turn_wait_micros_max: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// One HTTP sync's wait for its turn (whether it got one or was told busy).
    pub fn record_turn_wait(&self, waited: std::time::Duration) {
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.sync_turn_wait_micros_total
            .fetch_add(micros, Ordering::Relaxed);
        self.sync_turn_wait_micros_max
            .fetch_max(micros, Ordering::Relaxed);
    }

    fn record_response(&self, status: u16, micros: u64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        if let Some(counter) = self.responses.get(class) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.request_micros_total
            .fetch_add(micros, Ordering::Relaxed);
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP doorstep_http_responses_total HTTP responses by status class."
        );
        let _ = writeln!(out, "# TYPE doorstep_http_responses_total counter");
        let mut total = 0;
        for (i, counter) in self.responses.iter().enumerate() {
            total += load(counter);
            let _ = writeln!(
                out,
                "doorstep_http_responses_total{{class=\"{}xx\"}} {}",
                i + 1,
                load(counter)
            );
        }
        let _ = writeln!(
            out,
            "# HELP doorstep_http_request_duration_seconds Time spent handling requests."
        );
        let _ = writeln!(out, "# TYPE doorstep_http_request_duration_seconds summary");
        let _ = writeln!(
            out,
            "doorstep_http_request_duration_seconds_sum {}",
            load(&self.request_micros_total) as f64 / 1e6
        );
        let _ = writeln!(out, "doorstep_http_request_duration_seconds_count {total}");
        let seconds = |micros: &AtomicU64| load(micros) as f64 / 1e6;
        write_metric(
            &mut out,
            "doorstep_sync_turn_wait_seconds_total",
            "counter",
            "Time HTTP syncs waited for a turn to run.",
            seconds(&self.sync_turn_wait_micros_total),
        );
        write_metric(
            &mut out,
            "doorstep_sync_turn_wait_seconds_max",
            "gauge",
            "The longest an HTTP sync waited for a turn since the server started.",
            seconds(&self.sync_turn_wait_micros_max),
        );
        for (name, help, counter) in [
            (
                "doorstep_sync_requests_total",
                "Sync requests committed.",
                &self.sync_requests,
            ),
            (
                "doorstep_sync_documents_total",
                "Documents in committed sync requests.",
                &self.sync_documents,
            ),
            (
                "doorstep_sync_changes_applied_total",
                "Changes accepted from phones.",
                &self.sync_changes_applied,
            ),
            (
                "doorstep_sync_documents_refused_total",
                "Documents refused (not found, foreign actor, invalid).",
                &self.sync_documents_refused,
            ),
            (
                "doorstep_sync_retries_total",
                "Sync attempts run again because a document changed after it was read.",
                &self.sync_retries,
            ),
            (
                "doorstep_sync_uploads_taken_along_total",
                "Uploads received and committed together with another upload of their case.",
                &self.uploads_taken_along,
            ),
            (
                "doorstep_sync_upload_batches_declined_total",
                "Batches of uploads to be received together that went one at a time instead (one would be refused, or the document was unreadable).",
                &self.upload_batches_declined,
            ),
            (
                "doorstep_sync_busy_total",
                "Syncs answered 503 busy, before any work, because they waited too long for a turn.",
                &self.sync_busy,
            ),
            (
                "doorstep_sign_ins_total",
                "Successful sign-ins.",
                &self.sign_ins,
            ),
            (
                "doorstep_sign_in_failures_total",
                "Failed sign-ins.",
                &self.sign_in_failures,
            ),
            (
                "doorstep_document_cache_hits_total",
                "Sync documents served from the parsed-document cache.",
                &self.document_cache_hits,
            ),
            (
                "doorstep_document_cache_misses_total",
                "Sync documents parsed from the database.",
                &self.document_cache_misses,
            ),
            (
                "doorstep_graph_cache_hits_total",
                "Sync documents answered from a cached change graph.",
                &self.graph_cache_hits,
            ),
            (
                "doorstep_graph_cache_misses_total",
                "Change graphs built from the stored changes.",
                &self.graph_cache_misses,
            ),
            (
                "doorstep_ws_connections_total",
                "automerge-repo WebSocket connections accepted.",
                &self.ws_connections,
            ),
            (
                "doorstep_ws_frames_received_total",
                "WebSocket frames received.",
                &self.ws_frames_received,
            ),
            (
                "doorstep_ws_frames_sent_total",
                "WebSocket frames sent.",
                &self.ws_frames_sent,
            ),
            (
                "doorstep_ws_bytes_received_total",
                "WebSocket payload bytes received.",
                &self.ws_bytes_received,
            ),
            (
                "doorstep_ws_bytes_sent_total",
                "WebSocket payload bytes sent.",
                &self.ws_bytes_sent,
            ),
            (
                "doorstep_ws_protocol_errors_total",
                "WebSocket connections closed for input that is not the protocol.",
                &self.ws_protocol_errors,
            ),
            (
                "doorstep_ws_closed_with_error_total",
                "WebSocket connections the server closed with an error.",
                &self.ws_closed_with_error,
            ),
            (
                "doorstep_ws_pushes_sent_after_wait_total",
                "Held WebSocket pushes sent on their own (after the answer wait, or when the syncs they waited for ended).",
                &self.ws_pushes_sent_after_wait,
            ),
        ] {
            write_metric(&mut out, name, "counter", help, load(counter));
        }
        out
    }
}

/// One metric with one value, in the Prometheus text format.
fn write_metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl Display) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// Counts every response and its handling time.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    state
        .metrics
        .record_response(response.status().as_u16(), micros);
    response
}

/// `GET /metrics`
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
