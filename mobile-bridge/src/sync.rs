//! The sync client: sign-in (which registers this phone's actor id as a device), token
//! refresh, and `POST /api/v1/sync` rounds until neither side has anything left to say.
//!
//! Wire format: the server's `api/sync.rs` (JSON; Automerge sync messages in standard base64).
//! After every round trip, each case's received changes, sync state and pending count are
//! committed together (one transaction per case) before the next request, so a sync cut off at
//! any point resumes from what is on disk: the persisted sync state is only the part that survives a lost reply
//! (`PeerState::encode`), exactly what the server asks a retrying client to start from.
//! Pending changes are computed from those states, which only the server's replies advance,
//! so nothing counts as synced before the server has said it holds it.
//!
//! The server's instructions are obeyed: a case in `drop` is deleted with its evidence files,
//! and `device_revoked` wipes the whole store.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use doorstep_sync_core::{CaseFile, PeerState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{DoorstepError, Result};
use crate::evidence::UploadPass;
use crate::phone::{Doorstep, LoadedCase, Local, case_errors, meta, pending_changes, persist};
use crate::store;
use crate::types::{Account, SyncPhase, SyncProgress, SyncReport, SyncStatus};

/// Round trips in one sync before it stops and leaves the rest for the next one.
const MAX_ROUNDS: u32 = 32;
/// An access token this close to expiry is refreshed first.
const REFRESH_MARGIN_SECS: i64 = 30;

/// Told how a sync is going; implemented by the host app (called from a background thread).
#[uniffi::export(with_foreign)]
pub trait SyncListener: Send + Sync {
    fn on_progress(&self, progress: SyncProgress);
    fn on_status(&self, status: SyncStatus);
}

/// How often and how patiently a failing sync is retried (network errors, 5xx, timeouts).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with up to 25% jitter, so that phones coming back into signal
    /// together do not retry in step.
    fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        let capped = exp.min(self.max_delay);
        let jitter = u32::from(uuid::Uuid::new_v4().as_bytes()[0]) * 25 / 255;
        capped + capped * jitter / 100
    }
}

// ---------------------------------------------------------------------------------------------
// Wire types (server/src/api/{auth,sync}.rs).

#[derive(Debug, Serialize)]
struct SignInRequest<'a> {
    username: &'a str,
    password: &'a str,
    device_name: &'a str,
    actor_id: &'a str,
}

#[derive(Debug, Serialize)]
struct RefreshRequest<'a> {
    refresh_token: &'a str,
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
    refresh_token: String,
    device_id: String,
    user: UserView,
}

#[derive(Debug, Deserialize)]
struct UserView {
    id: String,
    display_name: String,
}

#[derive(Debug, Serialize)]
struct SyncRequest {
    documents: Vec<SyncDocumentIn>,
}

#[derive(Debug, Serialize)]
struct SyncDocumentIn {
    case_id: String,
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SyncResponse {
    documents: Vec<SyncDocumentOut>,
    #[serde(default)]
    drop: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct SyncDocumentOut {
    case_id: String,
    message: Option<String>,
    error: Option<WireError>,
}

#[derive(Debug, Deserialize)]
struct WireError {
    code: String,
    message: String,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: WireError,
}

/// Why one HTTP exchange failed.
#[derive(Debug)]
pub(crate) enum HttpFailure {
    /// No answer (connection refused, reset, timed out): worth retrying.
    Transport(String),
    /// An answer with an error status and the server's code.
    Status {
        status: u16,
        code: String,
        message: String,
        /// How long the server asked us to wait before trying again (`Retry-After`, seconds).
        retry_after: Option<u64>,
    },
}

impl HttpFailure {
    pub(crate) fn retryable(&self) -> bool {
        match self {
            HttpFailure::Transport(_) => true,
            HttpFailure::Status { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
        }
    }

    /// The least wait before a retry that the server asked for.
    fn wait_at_least(&self) -> Duration {
        match self {
            HttpFailure::Status {
                retry_after: Some(secs),
                ..
            } => Duration::from_secs((*secs).min(MAX_RETRY_AFTER_SECS)),
            _ => Duration::ZERO,
        }
    }

    pub(crate) fn into_error(self) -> DoorstepError {
        match self {
            HttpFailure::Transport(detail) => DoorstepError::Network { detail },
            HttpFailure::Status { code, message, .. } => DoorstepError::Server {
                code,
                detail: message,
            },
        }
    }
}

/// A sync attempt's failure: retry it (not before the wait the server asked for), or give up
/// with this error.
#[derive(Debug)]
pub(crate) enum Attempt {
    Retry(DoorstepError, Duration),
    Fail(DoorstepError),
}

/// A `Retry-After` longer than this is taken as this (a phone in the field should not go quiet
/// for long on one header).
const MAX_RETRY_AFTER_SECS: u64 = 300;

impl From<DoorstepError> for Attempt {
    fn from(error: DoorstepError) -> Self {
        Attempt::Fail(error)
    }
}

/// An HTTP answer read whole: status, the `Upload-Offset` header if any, and the body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub upload_offset: Option<u64>,
    /// `Retry-After` in seconds, when the server sent one.
    pub retry_after: Option<u64>,
    pub body: Vec<u8>,
}

impl Answer {
    async fn read(request: reqwest::RequestBuilder) -> std::result::Result<Answer, HttpFailure> {
        let response = request
            .send()
            .await
            .map_err(|e| HttpFailure::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        let header = |name: &str| -> Option<u64> {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
        };
        let (upload_offset, retry_after) = (header("upload-offset"), header("retry-after"));
        // Reading the body can fail midway too (the signal drops): that is a transport failure.
        let body = response
            .bytes()
            .await
            .map_err(|e| HttpFailure::Transport(e.to_string()))?
            .to_vec();
        Ok(Answer {
            status,
            upload_offset,
            retry_after,
            body,
        })
    }

    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The server's error code (`http_<status>` when the body is not the API's error JSON).
    pub(crate) fn error_code(&self) -> String {
        self.error().0
    }

    fn error(&self) -> (String, String) {
        match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(body) => (body.error.code, body.error.message),
            Err(_) => (
                format!("http_{}", self.status),
                format!("HTTP {}", self.status),
            ),
        }
    }

    /// This answer as a failure (for an error status).
    pub(crate) fn failure(&self) -> HttpFailure {
        let (code, message) = self.error();
        HttpFailure::Status {
            status: self.status,
            code,
            message,
            retry_after: self.retry_after,
        }
    }

    /// The JSON body of a successful answer.
    pub(crate) fn json<T: DeserializeOwned>(&self) -> std::result::Result<T, HttpFailure> {
        if !self.is_success() {
            return Err(self.failure());
        }
        serde_json::from_slice(&self.body).map_err(|e| HttpFailure::Status {
            status: self.status,
            code: "unexpected_response".into(),
            message: format!("the server's reply could not be read: {e}"),
            retry_after: None,
        })
    }
}

fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| DoorstepError::Network {
            detail: e.to_string(),
        })
}

async fn post_json<Req: Serialize, Resp: DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    body: &Req,
) -> std::result::Result<Resp, HttpFailure> {
    Answer::read(client.post(url).json(body)).await?.json()
}

fn normalise_server_url(url: &str) -> Result<String> {
    let url = url.trim().trim_end_matches('/');
    let valid = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() > "http://".len()
        && url.parse::<reqwest::Url>().is_ok();
    if !valid {
        return Err(DoorstepError::invalid(
            "server_url",
            "the server address must be an http(s) URL",
        ));
    }
    Ok(url.to_string())
}

/// Clears the `syncing` flag however a sync ends.
struct SyncingGuard<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for SyncingGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl Doorstep {
    /// Signs in and registers this phone as a device, binding its Automerge actor id. Needs
    /// the network once; afterwards everything but `sync_now` works offline.
    pub async fn sign_in(
        &self,
        server_url: String,
        username: String,
        password: String,
        device_name: String,
    ) -> Result<Account> {
        let server_url = normalise_server_url(&server_url)?;
        if username.trim().is_empty() {
            return Err(DoorstepError::invalid(
                "username",
                "`username` must not be empty",
            ));
        }
        if password.is_empty() {
            return Err(DoorstepError::invalid(
                "password",
                "`password` must not be empty",
            ));
        }
        let actor_hex = self.with_local(|local| Ok(local.actor.to_hex_string()))?;
        let client = http_client()?;
        let body = SignInRequest {
            username: username.trim(),
            password: &password,
            device_name: device_name.trim(),
            actor_id: &actor_hex,
        };
        let url = format!("{server_url}/api/v1/auth/sign-in");
        let tokens: TokenResponse = match post_json(&client, &url, &body).await {
            Ok(tokens) => tokens,
            Err(HttpFailure::Status { code, .. }) if code == "invalid_credentials" => {
                return Err(DoorstepError::InvalidCredentials);
            }
            Err(HttpFailure::Status { code, .. }) if code == "actor_in_use" => {
                return Err(DoorstepError::StoreOwnedByAnotherUser);
            }
            Err(HttpFailure::Status { code, message, .. }) if code == "invalid_body" => {
                return Err(DoorstepError::InvalidInput {
                    detail: message,
                    fields: vec![],
                });
            }
            Err(failure) => return Err(failure.into_error()),
        };
        self.with_local(|local| {
            let owner = local.store.meta(meta::USER_ID)?;
            if owner
                .as_deref()
                .is_some_and(|owner| owner != tokens.user.id)
            {
                return Err(DoorstepError::StoreOwnedByAnotherUser);
            }
            let expires_at = expiry(tokens.expires_in);
            local.store.set_meta(&[
                (meta::SIGNED_IN, Some("1")),
                (meta::USER_ID, Some(&tokens.user.id)),
                (meta::DISPLAY_NAME, Some(&tokens.user.display_name)),
                (meta::DEVICE_ID, Some(&tokens.device_id)),
                (meta::SERVER_URL, Some(&server_url)),
                (meta::ACCESS_TOKEN, Some(&tokens.access_token)),
                (meta::ACCESS_EXPIRES_AT, Some(&expires_at)),
                (meta::REFRESH_TOKEN, Some(&tokens.refresh_token)),
            ])?;
            // Handles made before sign-in carry no author: reload under the new one.
            local.cases.clear();
            local.account()?.ok_or(DoorstepError::NotSignedIn)
        })
    }

    /// Syncs every case with the server now: sends what the server lacks, receives what this
    /// phone lacks, deletes cases the server says to drop, and wipes the store if the device
    /// was revoked. Retries network failures with backoff; progress and the final status go
    /// to the listener.
    pub async fn sync_now(&self) -> Result<SyncReport> {
        self.with_local(|local| local.require_signed_in().map(drop))?;
        if self.syncing.swap(true, Ordering::SeqCst) {
            return Err(DoorstepError::SyncInProgress);
        }
        let _guard = SyncingGuard(&self.syncing);
        let now = Utc::now().to_rfc3339();
        self.with_local(|local| local.store.set_meta(&[(meta::LAST_ATTEMPT, Some(&now))]))?;
        let policy = self.retry.lock().map(|p| *p).unwrap_or_default();
        let client = http_client()?;
        let mut report = SyncReport {
            rounds: 0,
            attempts: 0,
            cases_received: 0,
            cases_dropped: Vec::new(),
            pending_changes: 0,
            case_errors: Vec::new(),
            evidence_uploaded: 0,
            evidence_pending: 0,
        };
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            report.attempts = attempt;
            match self.sync_attempt(&client, attempt, &mut report).await {
                Ok(()) => break Ok(()),
                Err(Attempt::Retry(error, wait)) if attempt < policy.max_attempts.max(1) => {
                    self.record_error(&error);
                    self.notify_status();
                    tokio::time::sleep(policy.delay(attempt).max(wait)).await;
                }
                Err(Attempt::Retry(error, _) | Attempt::Fail(error)) => break Err(error),
            }
        };
        // Evidence files go once the case files are through, with their own retries: a file
        // that does not make it stays pending (with the reason) and does not fail the sync.
        if outcome.is_ok() {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut pass = UploadPass::default();
                let result = self.upload_evidence(&client, attempt, &mut pass).await;
                report.evidence_uploaded += pass.uploaded;
                report.evidence_pending = pass.pending;
                match result {
                    Ok(()) => break,
                    Err(Attempt::Retry(error, wait)) if attempt < policy.max_attempts.max(1) => {
                        self.record_error(&error);
                        tokio::time::sleep(policy.delay(attempt).max(wait)).await;
                    }
                    Err(Attempt::Retry(error, _) | Attempt::Fail(error)) => {
                        self.record_error(&error);
                        break;
                    }
                }
            }
        }
        let result = match outcome {
            Ok(()) => {
                let done = Utc::now().to_rfc3339();
                self.with_local(|local| {
                    local
                        .store
                        .set_meta(&[(meta::LAST_SUCCESS, Some(&done)), (meta::LAST_ERROR, None)])?;
                    let rows = local.store.case_rows()?;
                    report.pending_changes = rows.iter().map(|r| r.pending).sum();
                    report.case_errors = case_errors(&rows);
                    Ok(())
                })
                .map(|()| report)
            }
            Err(error) => {
                self.record_error(&error);
                Err(error)
            }
        };
        drop(_guard);
        self.notify_status();
        result
    }
}

#[uniffi::export]
impl Doorstep {
    /// Sets (or with None, removes) the listener told of sync progress and status.
    pub fn set_sync_listener(&self, listener: Option<Arc<dyn SyncListener>>) {
        if let Ok(mut slot) = self.listener.lock() {
            *slot = listener;
        }
    }

    /// How a failing sync is retried: attempts in all, and the backoff's first and largest
    /// delay (doubling from one to the other).
    pub fn set_retry_policy(&self, max_attempts: u32, base_delay_ms: u64, max_delay_ms: u64) {
        if let Ok(mut policy) = self.retry.lock() {
            *policy = RetryPolicy {
                max_attempts: max_attempts.max(1),
                base_delay: Duration::from_millis(base_delay_ms),
                max_delay: Duration::from_millis(max_delay_ms.max(base_delay_ms)),
            };
        }
    }
}

fn expiry(expires_in: u64) -> String {
    let secs = i64::try_from(expires_in).unwrap_or(i64::MAX / 2_000);
    (Utc::now().timestamp() + secs).to_string()
}

impl Doorstep {
    pub(crate) fn listener(&self) -> Option<Arc<dyn SyncListener>> {
        self.listener.lock().ok().and_then(|l| l.clone())
    }

    fn notify_status(&self) {
        if let Some(listener) = self.listener()
            && let Ok(status) = self.sync_status()
        {
            listener.on_status(status);
        }
    }

    fn record_error(&self, error: &DoorstepError) {
        let text = error.to_string();
        // A wiped or closed store has nowhere to keep it, and needs no record.
        let _ = self.with_local(|local| {
            local.require_signed_in()?;
            local.store.set_meta(&[(meta::LAST_ERROR, Some(&text))])
        });
    }

    /// One attempt: rounds of request and reply until both sides are done.
    async fn sync_attempt(
        &self,
        client: &reqwest::Client,
        attempt: u32,
        report: &mut SyncReport,
    ) -> std::result::Result<(), Attempt> {
        // Start from what is on disk: after an interruption this is the resumable state.
        let mut states: HashMap<String, PeerState> = self.with_local(|local| {
            local
                .store
                .sync_states()?
                .into_iter()
                .map(|(id, bytes)| {
                    let state = match bytes {
                        Some(bytes) => PeerState::decode(&bytes).unwrap_or_default(),
                        None => PeerState::new(),
                    };
                    Ok((id, state))
                })
                .collect()
        })?;
        let mut replied_with_messages = true;
        for round in 1..=MAX_ROUNDS {
            let request = self.with_local(|local| build_request(local, &mut states))?;
            let sending = request.documents.iter().any(|d| d.message.is_some());
            if round > 1 && !sending && !replied_with_messages {
                break;
            }
            let reply: SyncResponse = self.authed_post(client, "/api/v1/sync", &request).await?;
            replied_with_messages = reply.documents.iter().any(|d| d.message.is_some());
            let received = reply
                .documents
                .iter()
                .filter(|d| d.message.is_some())
                .count();
            let pending =
                self.with_local(|local| apply_reply(local, &mut states, reply, report))?;
            report.rounds += 1;
            if let Some(listener) = self.listener() {
                listener.on_progress(SyncProgress {
                    phase: SyncPhase::Documents,
                    round,
                    attempt,
                    documents_sent: request
                        .documents
                        .iter()
                        .filter(|d| d.message.is_some())
                        .count() as u64,
                    documents_received: received as u64,
                    pending_changes: pending,
                    evidence_files_left: 0,
                    evidence_bytes_acknowledged: 0,
                    evidence_bytes_total: 0,
                });
            }
        }
        Ok(())
    }

    /// POSTs JSON with the access token and reads a JSON answer.
    async fn authed_post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: &Req,
    ) -> std::result::Result<Resp, Attempt> {
        let answer = self
            .authed_send(client, |url, token| {
                client
                    .post(format!("{url}{path}"))
                    .bearer_auth(token)
                    .json(body)
            })
            .await?;
        answer.json().map_err(|failure| self.classify(failure))
    }

    /// Sends a request built by `build` (from the server's address and an access token),
    /// refreshing the token first when it is about to expire and once more if the server says
    /// it has. Any other answer, success or not, is the caller's to read.
    pub(crate) async fn authed_send(
        &self,
        client: &reqwest::Client,
        build: impl Fn(&str, &str) -> reqwest::RequestBuilder,
    ) -> std::result::Result<Answer, Attempt> {
        let (server_url, token) = self.access_token(client, false).await?;
        let answer = Answer::read(build(&server_url, &token))
            .await
            .map_err(|failure| self.classify(failure))?;
        if answer.status == 401
            && matches!(
                answer.error_code().as_str(),
                "token_expired" | "unauthenticated"
            )
        {
            let (_, token) = self.access_token(client, true).await?;
            let answer = Answer::read(build(&server_url, &token))
                .await
                .map_err(|failure| self.classify(failure))?;
            if answer.status == 401 {
                return Err(self.classify(answer.failure()));
            }
            return Ok(answer);
        }
        if answer.status == 401 || answer.error_code() == "device_revoked" {
            return Err(self.classify(answer.failure()));
        }
        Ok(answer)
    }

    /// Turns an HTTP failure into what the sync does next; a revoked device is wiped here.
    pub(crate) fn classify(&self, failure: HttpFailure) -> Attempt {
        match &failure {
            HttpFailure::Status { code, .. } if code == "device_revoked" => {
                let wiped = self.with_local(|local| local.wipe());
                Attempt::Fail(match wiped {
                    Ok(()) => DoorstepError::DeviceRevoked,
                    Err(e) => e,
                })
            }
            HttpFailure::Status { status: 401, .. } => {
                self.drop_tokens();
                Attempt::Fail(DoorstepError::SessionExpired)
            }
            _ if failure.retryable() => {
                let wait = failure.wait_at_least();
                Attempt::Retry(failure.into_error(), wait)
            }
            _ => Attempt::Fail(failure.into_error()),
        }
    }

    fn drop_tokens(&self) {
        let _ = self.with_local(|local| {
            local.store.set_meta(&[
                (meta::ACCESS_TOKEN, None),
                (meta::ACCESS_EXPIRES_AT, None),
                (meta::REFRESH_TOKEN, None),
            ])
        });
    }

    /// A usable access token (and the server's address), refreshed when needed.
    async fn access_token(
        &self,
        client: &reqwest::Client,
        force_refresh: bool,
    ) -> std::result::Result<(String, String), Attempt> {
        let (server_url, access, expires_at, refresh) = self.with_local(|local| {
            local.require_signed_in()?;
            Ok((
                local.store.meta(meta::SERVER_URL)?.unwrap_or_default(),
                local.store.meta(meta::ACCESS_TOKEN)?,
                local
                    .store
                    .meta(meta::ACCESS_EXPIRES_AT)?
                    .and_then(|t| t.parse::<i64>().ok())
                    .unwrap_or(0),
                local.store.meta(meta::REFRESH_TOKEN)?,
            ))
        })?;
        if let Some(access) = access
            && !force_refresh
            && expires_at - REFRESH_MARGIN_SECS > Utc::now().timestamp()
        {
            return Ok((server_url, access));
        }
        let refresh = refresh.ok_or(Attempt::Fail(DoorstepError::SessionExpired))?;
        let url = format!("{server_url}/api/v1/auth/refresh");
        let body = RefreshRequest {
            refresh_token: &refresh,
        };
        let tokens: TokenResponse = post_json(client, &url, &body)
            .await
            .map_err(|failure| self.classify(failure))?;
        let expires_at = expiry(tokens.expires_in);
        self.with_local(|local| {
            local.store.set_meta(&[
                (meta::ACCESS_TOKEN, Some(&tokens.access_token)),
                (meta::ACCESS_EXPIRES_AT, Some(&expires_at)),
                (meta::REFRESH_TOKEN, Some(&tokens.refresh_token)),
            ])
        })?;
        Ok((server_url, tokens.access_token))
    }
}

/// Every case this phone holds, with the next message for each (None: nothing to say).
fn build_request(
    local: &mut Local,
    states: &mut HashMap<String, PeerState>,
) -> Result<SyncRequest> {
    let mut ids: BTreeSet<String> = local.store.case_ids()?.into_iter().collect();
    // Cases whose first message arrived but which hold nothing yet live only in memory.
    ids.extend(local.cases.keys().cloned());
    let mut documents = Vec::with_capacity(ids.len());
    for case_id in ids {
        let state = states.entry(case_id.clone()).or_default();
        let loaded = local.case(&case_id)?;
        let message = loaded.file.generate_sync_message(state);
        documents.push(SyncDocumentIn {
            case_id,
            message: message.map(|m| STANDARD.encode(m)),
        });
    }
    Ok(SyncRequest { documents })
}

/// Applies the server's reply and persists each case in its own transaction. Returns the
/// pending changes left over all cases.
fn apply_reply(
    local: &mut Local,
    states: &mut HashMap<String, PeerState>,
    reply: SyncResponse,
    report: &mut SyncReport,
) -> Result<u64> {
    let author = local.require_signed_in()?;
    let actor = local.actor.clone();
    for document in reply.documents {
        let case_id = document.case_id;
        let held = local.store.has_case(&case_id)?;
        if let Some(error) = document.error {
            if held {
                let tx = local.store.transaction()?;
                store::set_case_error(&tx, &case_id, Some((&error.code, &error.message)))?;
                tx.commit()?;
            }
            continue;
        }
        let Some(message) = document.message else {
            continue;
        };
        let Ok(bytes) = STANDARD.decode(message.as_bytes()) else {
            record_case_error(local, &case_id, held, "corrupt_sync_message", "not base64")?;
            continue;
        };
        if !local.cases.contains_key(&case_id) {
            let loaded = if held {
                // Loaded through the usual path so that its acknowledged heads come too.
                local.case(&case_id).map(drop)?;
                None
            } else {
                Some(LoadedCase {
                    file: CaseFile::empty(author.clone(), actor.clone()),
                    acked: Vec::new(),
                })
            };
            if let Some(loaded) = loaded {
                local.cases.insert(case_id.clone(), loaded);
            }
        }
        let state = states.entry(case_id.clone()).or_default();
        let Some(loaded) = local.cases.get_mut(&case_id) else {
            continue;
        };
        let before = loaded.file.heads();
        if let Err(e) = loaded.file.receive_sync_message(state, &bytes) {
            record_case_error(
                local,
                &case_id,
                held,
                "corrupt_sync_message",
                &e.to_string(),
            )?;
            continue;
        }
        loaded.acked = state.shared_heads().to_vec();
        // A case is kept once something of it has arrived; before that it has nothing to lose.
        if !held && loaded.file.heads().is_empty() {
            continue;
        }
        let now = Utc::now();
        let encoded = state.encode();
        let outcome = persist(
            &mut local.store,
            &case_id,
            loaded,
            &before,
            &actor,
            Some(encoded),
            &now,
            |tx| store::set_case_error(tx, &case_id, None),
        );
        if let Err(e) = outcome {
            local.cases.remove(&case_id);
            return Err(e);
        }
        if !held {
            report.cases_received += 1;
        }
    }
    for case_id in reply.drop {
        let tx = local.store.transaction()?;
        store::delete_case(&tx, &case_id)?;
        tx.commit()?;
        local.cases.remove(&case_id);
        states.remove(&case_id);
        if !report.cases_dropped.contains(&case_id) {
            report.cases_dropped.push(case_id);
        }
    }
    let mut pending = 0;
    for loaded in local.cases.values_mut() {
        pending += pending_changes(&mut loaded.file, &loaded.acked, &actor);
    }
    Ok(pending)
}

fn record_case_error(
    local: &mut Local,
    case_id: &str,
    held: bool,
    code: &str,
    detail: &str,
) -> Result<()> {
    if held {
        let tx = local.store.transaction()?;
        store::set_case_error(&tx, case_id, Some((code, detail)))?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(retry_after: Option<u64>) -> HttpFailure {
        HttpFailure::Status {
            status: 503,
            code: "busy".into(),
            message: "the server is busy".into(),
            retry_after,
        }
    }

    #[test]
    fn a_retry_waits_at_least_as_long_as_the_server_asked_within_a_cap() {
        assert!(busy(Some(5)).retryable());
        assert_eq!(busy(Some(5)).wait_at_least(), Duration::from_secs(5));
        assert_eq!(busy(None).wait_at_least(), Duration::ZERO);
        assert_eq!(
            busy(Some(86_400)).wait_at_least(),
            Duration::from_secs(MAX_RETRY_AFTER_SECS)
        );
        assert_eq!(
            HttpFailure::Transport("reset".into()).wait_at_least(),
            Duration::ZERO
        );
    }
}
