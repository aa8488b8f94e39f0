//! A simulated phone: sync-core replicas of its cases, and the two ways it syncs (Doorstep's
//! HTTP batch sync, and the automerge-repo WebSocket protocol, for every WebSocket server).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use doorstep_server::api::{SyncDocumentIn, SyncRequest, SyncResponse};
use doorstep_sync_core::Author;
use doorstep_sync_core::{ActorId, CaseFile, ChangeHash, PeerState};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::protocol::{self, Incoming};

/// How long an HTTP phone waits before polling again after a quiet exchange.
pub const HTTP_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How long a phone waits before retrying after an error (an HTTP 5xx, a closed connection).
pub const RETRY_AFTER: Duration = Duration::from_millis(200);

/// Errors (all phones of a phase together) after which a phase gives up.
pub const MAX_ERRORS: u64 = 500;

pub struct Phone {
    pub name: String,
    pub user_id: String,
    pub author: Author,
    pub actor: ActorId,
    /// Doorstep's access token (None for the other servers).
    pub token: Option<String>,
    /// By case id (`case-<uuid>`).
    pub docs: BTreeMap<String, CaseFile>,
    pub states: BTreeMap<String, PeerState>,
    /// The cases this phone syncs (over WebSocket it asks for exactly these).
    pub cases: Vec<String>,
}

impl Phone {
    pub fn new(
        name: String,
        user_id: String,
        device_id: String,
        actor: ActorId,
        cases: Vec<String>,
    ) -> Phone {
        Phone {
            author: Author {
                user_id: user_id.clone(),
                device_id,
            },
            name,
            user_id,
            actor,
            token: None,
            docs: BTreeMap::new(),
            states: BTreeMap::new(),
            cases,
        }
    }

    fn doc(&mut self, case_id: &str) -> &mut CaseFile {
        let (author, actor) = (self.author.clone(), self.actor.clone());
        self.docs
            .entry(case_id.to_string())
            .or_insert_with(|| CaseFile::empty(author, actor))
    }

    /// Documents whose sync state does not show the server holding all of this phone's changes.
    pub fn unacknowledged(&mut self) -> usize {
        self.unacknowledged_cases().len()
    }

    /// The cases whose sync state does not show the server holding all of this phone's changes.
    fn unacknowledged_cases(&mut self) -> Vec<String> {
        let mut cases = Vec::new();
        for (case_id, doc) in &mut self.docs {
            let shared = self
                .states
                .get(case_id)
                .map(|s| s.shared_heads())
                .unwrap_or(&[]);
            if !doc.heads().iter().all(|h| shared.contains(h)) {
                cases.push(case_id.clone());
            }
        }
        cases
    }

    /// A reconnect keeps what each side is known to have, and drops the rest (as a phone that
    /// stored its sync states would).
    pub fn reconnect(&mut self) {
        for state in self.states.values_mut() {
            *state = PeerState::decode(&state.encode()).unwrap_or_default();
        }
    }
}

/// What a phone must reach in a phase.
#[derive(Debug, Default, Clone)]
pub struct Goal {
    /// Changes it must hold, by case.
    pub hold: BTreeMap<String, Vec<ChangeHash>>,
    /// The server must be known to hold every change of the phone's documents.
    pub upload: bool,
}

impl Goal {
    /// True when reached; forgets the hashes already held.
    fn reached(&mut self, phone: &mut Phone) -> bool {
        match self.missing(phone) {
            None => true,
            Some(what) => {
                if std::env::var_os("INTEROP_BENCH_DEBUG").is_some() {
                    eprintln!("{}: {what}", phone.name);
                }
                false
            }
        }
    }

    /// What the phone still lacks, if anything.
    fn missing(&mut self, phone: &mut Phone) -> Option<String> {
        for (case_id, hashes) in &mut self.hold {
            let Some(doc) = phone.docs.get_mut(case_id) else {
                return Some(format!("no document {case_id}"));
            };
            // A lookup in the change graph: `get_change_by_hash` would rebuild each change, and
            // cost the load generator a seventh of its CPU (CPU the server under test needs).
            let missing = doc.doc_mut().get_missing_deps(hashes);
            hashes.retain(|hash| missing.contains(hash));
            if !hashes.is_empty() {
                return Some(format!("{} changes of {case_id}", hashes.len()));
            }
        }
        if self.upload
            && let Some(case_id) = phone.unacknowledged_cases().first()
        {
            return Some(format!("server not known to hold {case_id}"));
        }
        None
    }
}

/// Traffic seen by the load generator, for all phones of a phase.
#[derive(Debug, Default)]
pub struct Counters {
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// HTTP requests, or WebSocket frames sent.
    pub messages_up: AtomicU64,
    pub messages_down: AtomicU64,
    /// Failed requests and dropped connections, each followed by a retry.
    pub errors: AtomicU64,
}

/// The phones of a phase that have not reached their goal; `done` turns true when none is left.
pub struct Progress {
    pub remaining: AtomicUsize,
    pub done: watch::Sender<bool>,
    /// The first session that failed, which ends the phase.
    pub failed: std::sync::Mutex<Option<String>>,
}

impl Progress {
    pub fn new(phones: usize) -> Arc<Progress> {
        let (done, _) = watch::channel(phones == 0);
        Arc::new(Progress {
            remaining: AtomicUsize::new(phones),
            done,
            failed: std::sync::Mutex::new(None),
        })
    }

    /// A session failed: the phase ends at once.
    pub fn fail(&self, error: &anyhow::Error) {
        if let Ok(mut failed) = self.failed.lock() {
            failed.get_or_insert_with(|| format!("{error:#}"));
        }
        let _ = self.done.send(true);
    }

    fn reached(&self) {
        if self.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _ = self.done.send(true);
        }
    }
}

/// Syncs over HTTP until the goal is reached: one request carries every document.
pub async fn http_session(
    client: reqwest::Client,
    base: String,
    mut phone: Phone,
    mut goal: Goal,
    counters: Arc<Counters>,
    progress: Arc<Progress>,
) -> anyhow::Result<Phone> {
    let token = phone
        .token
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no token"))?;
    let url = format!("{base}/api/v1/sync");
    loop {
        if *progress.done.borrow() {
            // The phase gave up (timed out, or another session failed): say what is missing.
            let missing = goal.missing(&mut phone).unwrap_or_default();
            let detail = if std::env::var_os("INTEROP_BENCH_DEBUG").is_some() {
                diagnose(&client, &url, &token, &mut phone, &missing).await
            } else {
                String::new()
            };
            anyhow::bail!("{} stopped short: {missing}{detail}", phone.name);
        }
        let mut busy = false;
        let mut documents = Vec::new();
        let case_ids: Vec<String> = phone.docs.keys().cloned().collect();
        for case_id in case_ids {
            let mut state = phone.states.remove(&case_id).unwrap_or_default();
            let message = phone.doc(&case_id).generate_sync_message(&mut state);
            phone.states.insert(case_id.clone(), state);
            busy |= message.is_some();
            documents.push(SyncDocumentIn {
                case_id,
                message: message.map(|m| STANDARD.encode(m)),
            });
        }
        let body = serde_json::to_vec(&SyncRequest { documents })?;
        counters
            .bytes_up
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        counters.messages_up.fetch_add(1, Ordering::Relaxed);
        let response = client
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        if !response.status().is_success() {
            // As a phone would: the request changed nothing it can rely on, so forget what was
            // in flight, wait a little and try again.
            let errors = counters.errors.fetch_add(1, Ordering::Relaxed) + 1;
            let status = response.status();
            // A busy server says when to come back (`Retry-After`); a phone waits that long.
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .map_or(RETRY_AFTER, Duration::from_secs);
            let body = response.text().await.unwrap_or_default();
            if std::env::var_os("INTEROP_BENCH_DEBUG").is_some() {
                eprintln!("{}: sync answered {status}: {body}", phone.name);
            }
            anyhow::ensure!(
                errors < MAX_ERRORS,
                "sync by {}: {status} ({errors} errors in all)",
                phone.name
            );
            phone.reconnect();
            tokio::time::sleep(retry_after.max(RETRY_AFTER)).await;
            continue;
        }
        let bytes = response.bytes().await?;
        counters
            .bytes_down
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        counters.messages_down.fetch_add(1, Ordering::Relaxed);
        let reply: SyncResponse = serde_json::from_slice(&bytes)?;
        for document in reply.documents {
            if let Some(error) = &document.error {
                // A refused document is a benchmark failure: the workload writes only valid
                // visits, so the server refusing one is a bug to see, not to wait out.
                anyhow::bail!(
                    "sync by {}: {} refused: {} ({})",
                    phone.name,
                    document.case_id,
                    error.code,
                    error.message
                );
            }
            let Some(message) = document.message else {
                continue;
            };
            busy = true;
            let mut state = phone.states.remove(&document.case_id).unwrap_or_default();
            phone
                .doc(&document.case_id)
                .receive_sync_message(&mut state, &STANDARD.decode(message)?)?;
            phone.states.insert(document.case_id, state);
        }
        if goal.reached(&mut phone) && !busy {
            progress.reached();
            return Ok(phone);
        }
        if !busy {
            tokio::time::sleep(HTTP_POLL_INTERVAL).await;
        }
    }
}

/// For a phone left short of a case: its sync state for the case, what one more exchange (a
/// fresh message, and the server's answer) carries, and the server's heads from scratch.
async fn diagnose(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    phone: &mut Phone,
    missing: &str,
) -> String {
    use automerge::sync::Message;
    let Some(case_id) = missing.split_whitespace().last().map(str::to_string) else {
        return String::new();
    };
    let Some(doc) = phone.docs.get_mut(&case_id) else {
        return String::new();
    };
    let heads = doc.heads().len();
    let changes = doc.doc_mut().get_changes(&[]).len();
    let mut state = phone.states.remove(&case_id).unwrap_or_default();
    let shared = state.shared_heads().len();
    let message = doc.generate_sync_message(&mut state);
    let sent = message
        .as_deref()
        .and_then(|m| Message::decode(m).ok())
        .map(|m| {
            format!(
                "heads {} need {} changes {}",
                m.heads.len(),
                m.need.len(),
                m.changes.len()
            )
        });
    let answer = exchange_one(client, url, token, &case_id, message)
        .await
        .map(|reply| match reply {
            Ok(m) => format!(
                "heads {} need {} have {} changes {}",
                m.heads.len(),
                m.need.len(),
                m.have.len(),
                m.changes.len()
            ),
            Err(error) => format!("no message (error {error:?})"),
        });
    // From scratch: does the server hold heads this phone lacks?
    let first = doc.generate_sync_message(&mut doorstep_sync_core::PeerState::new());
    let server_heads = match exchange_one(client, url, token, &case_id, first).await {
        Some(Ok(m)) => {
            let known = m
                .heads
                .iter()
                .filter(|h| doc.doc_mut().get_change_by_hash(h).is_some())
                .count();
            Some(format!(
                "{} heads, {known} known to the phone",
                m.heads.len()
            ))
        }
        _ => None,
    };
    phone.states.insert(case_id, state);
    format!(
        " [phone: {changes} changes, {heads} heads, shared {shared}; sent {sent:?}; server answered {answer:?}; from scratch the server has {server_heads:?}]"
    )
}

/// One sync request for one case: the server's message (Err: its error code, if any, when it
/// sent none); None when the exchange itself failed.
async fn exchange_one(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    case_id: &str,
    message: Option<Vec<u8>>,
) -> Option<Result<automerge::sync::Message, Option<String>>> {
    let body = SyncRequest {
        documents: vec![SyncDocumentIn {
            case_id: case_id.to_string(),
            message: message.map(|m| STANDARD.encode(m)),
        }],
    };
    let reply: SyncResponse = client
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let document = reply.documents.into_iter().find(|d| d.case_id == case_id)?;
    let Some(message) = document.message else {
        return Some(Err(document.error.map(|e| e.code)));
    };
    let bytes = STANDARD.decode(message).ok()?;
    automerge::sync::Message::decode(&bytes).ok().map(Ok)
}

/// A WebSocket session: join, then a `request` (document not held yet) or `sync` for every
/// case of the phone, then answer every message until every phone of the phase has reached its
/// goal. `settled` is told once a first answer has come for every document.
#[allow(clippy::too_many_arguments, reason = "one phone's whole session")]
pub async fn ws_session(
    url: String,
    peer_id: String,
    mut phone: Phone,
    mut goal: Goal,
    counters: Arc<Counters>,
    progress: Arc<Progress>,
    settled: Option<tokio::sync::oneshot::Sender<()>>,
) -> anyhow::Result<Phone> {
    let mut settled = settled;
    let mut reached = false;
    let mut connection = 0;
    loop {
        let peer = format!("{peer_id}-{connection}");
        match ws_connection(
            &url,
            &peer,
            &mut phone,
            &mut goal,
            &counters,
            &progress,
            &mut settled,
            &mut reached,
        )
        .await
        {
            Ok(()) => return Ok(phone),
            Err(e) => {
                // As an automerge-repo client would: reconnect and carry on.
                let errors = counters.errors.fetch_add(1, Ordering::Relaxed) + 1;
                if std::env::var_os("INTEROP_BENCH_DEBUG").is_some() {
                    eprintln!("{}: connection lost: {e:#}", phone.name);
                }
                if errors >= MAX_ERRORS {
                    return Err(e.context(format!("{errors} errors in all")));
                }
                phone.reconnect();
                connection += 1;
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "one connection of a phone's session"
)]
async fn ws_connection(
    url: &str,
    peer_id: &str,
    phone: &mut Phone,
    goal: &mut Goal,
    counters: &Counters,
    progress: &Progress,
    settled: &mut Option<tokio::sync::oneshot::Sender<()>>,
    reached: &mut bool,
) -> anyhow::Result<()> {
    let mut done = progress.done.subscribe();
    let send = |frame: Vec<u8>| {
        counters
            .bytes_up
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        counters.messages_up.fetch_add(1, Ordering::Relaxed);
        WsMessage::Binary(frame.into())
    };
    // A server that has just started may accept connections before its protocol handler is
    // ready (the npm server): retry the handshake a few times.
    let mut attempt = 0;
    let (mut ws, server_id) = loop {
        attempt += 1;
        let handshake = async {
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
            ws.send(send(protocol::join(peer_id))).await?;
            loop {
                let frame = ws
                    .next()
                    .await
                    .ok_or_else(|| anyhow::anyhow!("closed before peer"))??;
                if let WsMessage::Binary(data) = frame {
                    counters
                        .bytes_down
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    counters.messages_down.fetch_add(1, Ordering::Relaxed);
                    match protocol::decode(&data)? {
                        Incoming::Peer { sender_id } => break anyhow::Ok((ws, sender_id)),
                        other => anyhow::bail!("expected peer, got {other:?}"),
                    }
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), handshake).await {
            Ok(Ok(connected)) => break connected,
            Ok(Err(e)) if attempt >= 5 => {
                return Err(e.context(format!("{}: handshake", phone.name)));
            }
            Err(_) if attempt >= 5 => anyhow::bail!("{}: no peer message in 5 s", phone.name),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let by_document: BTreeMap<String, String> = phone
        .cases
        .iter()
        .map(|case_id| (protocol::document_id(case_id), case_id.clone()))
        .collect();
    let mut unanswered: std::collections::BTreeSet<String> = by_document.keys().cloned().collect();
    let cases = phone.cases.clone();
    for case_id in &cases {
        let mut state = phone.states.remove(case_id).unwrap_or_default();
        let doc = phone.doc(case_id);
        let kind = if doc.heads().is_empty() {
            "request"
        } else {
            "sync"
        };
        let message = doc.generate_sync_message(&mut state);
        phone.states.insert(case_id.clone(), state);
        if let Some(message) = message {
            let frame = protocol::sync(
                kind,
                peer_id,
                &server_id,
                &protocol::document_id(case_id),
                &message,
            );
            ws.feed(send(frame)).await?;
        }
    }
    ws.flush().await?;
    if !*reached && goal.reached(phone) {
        *reached = true;
        progress.reached();
    }
    loop {
        let frame = tokio::select! {
            frame = ws.next() => frame,
            _ = done.wait_for(|d| *d) => break,
        };
        let Some(frame) = frame else {
            anyhow::bail!("{}: the server closed the connection", phone.name)
        };
        let data = match frame? {
            WsMessage::Binary(data) => data,
            WsMessage::Close(close) => {
                anyhow::bail!("{}: closed by the server: {close:?}", phone.name)
            }
            _ => continue,
        };
        counters
            .bytes_down
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        counters.messages_down.fetch_add(1, Ordering::Relaxed);
        match protocol::decode(&data)? {
            Incoming::Sync { document_id, data } => {
                let Some(case_id) = by_document.get(&document_id) else {
                    continue;
                };
                let mut state = phone.states.remove(case_id).unwrap_or_default();
                let doc = phone.doc(case_id);
                doc.receive_sync_message(&mut state, &data)?;
                let reply = doc.generate_sync_message(&mut state);
                phone.states.insert(case_id.clone(), state);
                if let Some(reply) = reply {
                    ws.send(send(protocol::sync(
                        "sync",
                        peer_id,
                        &server_id,
                        &document_id,
                        &reply,
                    )))
                    .await?;
                }
                unanswered.remove(&document_id);
                if unanswered.is_empty()
                    && let Some(settled) = settled.take()
                {
                    let _ = settled.send(());
                }
                if !*reached && goal.reached(phone) {
                    *reached = true;
                    progress.reached();
                }
            }
            Incoming::DocUnavailable { document_id } => {
                anyhow::bail!("{}: document {document_id} unavailable", phone.name)
            }
            Incoming::Error { message } => anyhow::bail!("{}: server error {message}", phone.name),
            Incoming::Peer { .. } | Incoming::Other => {}
        }
    }
    if !*reached && let Some(what) = goal.missing(phone) {
        eprintln!("{} ended short of its goal: {what}", phone.name);
    }
    let _ = ws.close(None).await;
    Ok(())
}
