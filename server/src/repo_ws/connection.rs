//! One WebSocket connection: the handshake, then batches of sync messages run through the
//! server's sync path, pushes from the hub, and the reasons to close.
//!
//! Reading and writing are separate tasks: this one reads frames and does the work, a writer
//! drains the connection's [`Outbox`]. Frames that arrive together (a client opening forty
//! documents at once) are handled as one batch: one database transaction, one trip to the
//! blocking pool, one commit.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, close_code};
use doorstep_sync_core::{Author, CaseFile, ChangeGraph, brings_changes};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::document_id;
use super::hub::{Control, Outbox, Outgoing, RepoHub, Sending, Subscription, SyncingGuard};
use super::protocol::{self, Message, PROTOCOL_VERSION, PeerMetadata};
use crate::app::AppState;
use crate::auth::Caller;
use crate::metrics::Metrics;
use crate::storage::{DocumentWrite, LoadedDocument, Provenance, StorageError, heads_key};
use crate::sync::{
    self, ActorRule, DocumentError, GraphSource, QueuedUpload, SyncTurn, UploadAdmitted,
};
use crate::upload_queue::UploadPass;

/// Frames queued for one client before it counts as not reading.
const OUTBOX_CAPACITY: usize = 4096;
/// Most frames, and bytes, read into one batch.
const MAX_BATCH_FRAMES: usize = 256;
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// A connection must send `join` this soon.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long closing may wait for a client that does not read.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest peer id accepted (it is repeated in every message sent back).
const MAX_PEER_ID_BYTES: usize = 256;

/// Why a connection ends: an `error` message (unless the client is gone or not reading),
/// then a close frame with this code.
#[derive(Debug)]
struct Close {
    code: u16,
    /// What the client is told.
    message: String,
    /// What the server's log says: never the client's data. A refused document's message
    /// quotes the offending value (case-file content, possibly personal data), and other
    /// messages quote what the client sent, so only fixed text goes to the log.
    logged: Cow<'static, str>,
}

impl Close {
    /// A message written out in the code (`&'static str`) is logged as it is; one built at
    /// run time may quote the client and is logged only as its close code's meaning.
    fn new(code: u16, message: impl Into<Cow<'static, str>>) -> Close {
        let message = message.into();
        let logged = match &message {
            Cow::Borrowed(fixed) => Cow::Borrowed(*fixed),
            Cow::Owned(_) => Cow::Borrowed(code_meaning(code)),
        };
        Close {
            code,
            message: message.into_owned(),
            logged,
        }
    }

    /// A refused document: the client hears why; the log names the document and the kind of
    /// refusal only.
    fn refused(code: u16, document: &str, error: &DocumentError) -> Close {
        Close {
            code,
            message: format!(
                "document {document}: {} ({})",
                error.message(),
                error.code()
            ),
            logged: Cow::Owned(format!("document {document} refused ({})", error.code())),
        }
    }

    fn protocol(message: impl Into<Cow<'static, str>>) -> Close {
        Close::new(close_code::PROTOCOL, message)
    }

    fn invalid(message: impl Into<Cow<'static, str>>) -> Close {
        Close::new(close_code::INVALID, message)
    }

    fn server() -> Close {
        Close::new(
            close_code::ERROR,
            "the server could not complete the sync; reconnect to try again",
        )
    }

    fn revoked() -> Close {
        Close::new(
            close_code::POLICY,
            "this device has been revoked: wipe local data and sign in again",
        )
    }
}

impl From<crate::storage::StorageError> for Close {
    fn from(error: crate::storage::StorageError) -> Close {
        tracing::error!(error = %error, "websocket sync: storage failed");
        Close::server()
    }
}

/// One document's work in a batch.
struct DocumentWork {
    case_id: String,
    document_id: String,
    messages: Vec<Vec<u8>>,
}

/// A document of a batch that the caller may see: its subscription and the batch's messages
/// for it.
type OpenDocument = (Arc<Subscription>, Arc<[Vec<u8>]>);

/// What the blocking step made of one document.
struct Outcome {
    case_id: String,
    subscription: Arc<Subscription>,
    /// The parsed document, if a message brought changes; None too when it must not go back
    /// to the cache (refused or unreadable). Once computed, it goes to the cache at once and
    /// stays here only while it holds back changes (the reply is then made from it).
    file: Option<CaseFile>,
    /// The document's change graph as it now stands (None when refused or unreadable).
    graph: Option<Arc<ChangeGraph>>,
    /// The document's bytes as stored after this batch (what a whole-document send sends).
    /// None while a write holds them (new bytes): they move here after the commit.
    stored: Option<Vec<u8>>,
    write: Option<DocumentWrite>,
    /// Whether its write, now committed, stored changes (the other connections are pushed
    /// them).
    changed: bool,
    /// Whether the client sent messages for it (else it sends a held push).
    answers_client: bool,
    unclaimed_actors: BTreeSet<String>,
    refused: Option<DocumentError>,
}

struct Connection {
    state: AppState,
    hub: Arc<RepoHub>,
    id: u64,
    caller: Caller,
    /// Set by `join`.
    outbox: Option<Arc<Outbox>>,
    outbox_rx: Option<mpsc::Receiver<Outgoing>>,
    writer: Option<tokio::task::JoinHandle<()>>,
    sink: Option<SplitSink<WebSocket, WsMessage>>,
    /// Open documents by case id.
    subscriptions: HashMap<String, Arc<Subscription>>,
}

/// Serves one upgraded connection until it closes. `expires_at` is the access token's expiry
/// (Unix seconds): the connection closes then.
pub(crate) async fn serve(socket: WebSocket, state: AppState, caller: Caller, expires_at: i64) {
    let hub = Arc::clone(&state.repo);
    let (id, mut control) = hub.register(&caller.device.id, &caller.user.id);
    Metrics::add(&state.metrics.ws_connections, 1);
    tracing::info!(connection = id, device = %caller.device.id, "websocket connected");
    let (sink, mut stream) = socket.split();
    let mut connection = Connection {
        state,
        hub: Arc::clone(&hub),
        id,
        caller,
        outbox: None,
        outbox_rx: None,
        writer: None,
        sink: Some(sink),
        subscriptions: HashMap::new(),
    };
    let close = connection.run(&mut stream, &mut control, expires_at).await;
    let reading = close.as_ref().is_some_and(|c| c.code != close_code::SIZE);
    connection.finish(close).await;
    if reading {
        // The closing handshake: read until the client's close frame, so that its unread
        // frames do not make the socket reset before it has read ours.
        let drained = async { while let Some(Ok(_)) = stream.next().await {} };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, drained).await;
    }
    hub.deregister(id);
}

impl Connection {
    async fn run(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
        control: &mut mpsc::UnboundedReceiver<Control>,
        expires_at: i64,
    ) -> Option<Close> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let left =
            u64::try_from(expires_at.saturating_mul(1000).saturating_sub(now_ms)).unwrap_or(0);
        let expiry = tokio::time::sleep(Duration::from_millis(left));
        tokio::pin!(expiry);
        let handshake = tokio::time::sleep(HANDSHAKE_TIMEOUT);
        tokio::pin!(handshake);
        // Another instance's revocations and deallocations reach this one only through the
        // database (its hub tells only its own connections).
        let every = Duration::from_secs(self.state.config.ws_recheck_secs.max(1));
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let overflow = async |outbox: Option<Arc<Outbox>>| match outbox {
            Some(outbox) if !outbox.overflowed() => outbox.overflow.notified().await,
            Some(_) => {}
            None => std::future::pending().await,
        };
        loop {
            tokio::select! {
                biased;
                command = control.recv() => {
                    // Nothing can reach this connection any more: it ends, quietly.
                    let command = command?;
                    if let Err(close) = self.act_on(command, control).await {
                        return Some(close);
                    }
                }
                () = overflow(self.outbox.clone()) => {
                    tracing::warn!(connection = self.id, "websocket client is not reading: closing");
                    // It is not reading: nothing more is sent, not even an error.
                    return None;
                }
                () = &mut expiry => {
                    return Some(Close::new(
                        close_code::POLICY,
                        "the access token has expired: reconnect with a fresh one",
                    ));
                }
                () = &mut handshake, if self.outbox.is_none() => {
                    return Some(Close::protocol("no join message within 30 seconds"));
                }
                _ = recheck.tick() => {
                    // The device first: a revoked one is told nothing more.
                    if let Err(close) = self.check_caller().await {
                        return Some(close);
                    }
                    if let Err(close) = self.recheck_allocations().await {
                        return Some(close);
                    }
                }
                frame = stream.next() => {
                    let first = match read_frame(frame) {
                        Frame::Data(bytes) => bytes,
                        Frame::Skip => continue,
                        Frame::End(close) => return close,
                    };
                    // Once joined, a batch waits for its sync turn before reading on: what the
                    // client sends meanwhile waits in the socket's kernel buffer, not in this
                    // process (fifty clients' frames held while they waited were megabytes),
                    // and arrives in this batch.
                    let turn = match self.outbox {
                        Some(_) => match wait_for_turn(&self.state, &self.hub).await {
                            Ok(turn) => Some(turn),
                            Err(close) => return Some(close),
                        },
                        None => None,
                    };
                    // Whatever else has already arrived joins the batch.
                    let mut total = first.len();
                    let mut frames = vec![first];
                    let mut after = None;
                    while frames.len() < MAX_BATCH_FRAMES && total < MAX_BATCH_BYTES {
                        let Some(next) = stream.next().now_or_never() else {
                            break;
                        };
                        match read_frame(next) {
                            Frame::Data(bytes) => {
                                total += bytes.len();
                                frames.push(bytes);
                            }
                            Frame::Skip => {}
                            // Handle the batch first, then the close or error.
                            Frame::End(close) => {
                                after = Some(close);
                                break;
                            }
                        }
                    }
                    let metrics = &self.state.metrics;
                    Metrics::add(&metrics.ws_frames_received, frames.len() as u64);
                    Metrics::add(&metrics.ws_bytes_received, total as u64);
                    if let Err(close) = self.handle_batch(frames, turn).await {
                        return Some(close);
                    }
                    if let Some(close) = after {
                        return close;
                    }
                }
            }
        }
    }

    /// Sends the error and the close frame (if the client can hear them), stops the writer
    /// and forgets the connection's documents.
    async fn finish(&mut self, close: Option<Close>) {
        for case_id in self.subscriptions.keys() {
            self.hub.unsubscribe(case_id, self.id);
        }
        self.subscriptions.clear();
        if let Some(close) = &close {
            Metrics::add(&self.state.metrics.ws_closed_with_error, 1);
            if matches!(
                close.code,
                close_code::PROTOCOL
                    | close_code::UNSUPPORTED
                    | close_code::INVALID
                    | close_code::SIZE
            ) {
                Metrics::add(&self.state.metrics.ws_protocol_errors, 1);
            }
            tracing::info!(connection = self.id, code = close.code, reason = %close.logged, "websocket closing");
        }
        let error = close.as_ref().map(|c| {
            protocol::encode(&Message::Error {
                message: &c.message,
            })
        });
        let frame = close.as_ref().map(|c| (c.code, close_reason(&c.message)));
        match (self.outbox.take(), self.writer.take()) {
            (Some(outbox), Some(mut writer)) => {
                let overflowed = outbox.overflowed();
                if !overflowed {
                    let queued = async {
                        if let Some(error) = error {
                            outbox.send(Outgoing::Frame(error)).await;
                        }
                        let (code, reason) = frame.unwrap_or((close_code::NORMAL, String::new()));
                        outbox.send(Outgoing::Close(code, reason)).await;
                    };
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, queued).await;
                }
                drop(outbox);
                if overflowed
                    || tokio::time::timeout(CLOSE_TIMEOUT, &mut writer)
                        .await
                        .is_err()
                {
                    writer.abort();
                }
            }
            _ => {
                // Before the handshake there is no writer: write directly.
                if let Some(mut sink) = self.sink.take() {
                    let send = async {
                        if let Some(error) = error {
                            sink.send(WsMessage::Binary(error.into())).await?;
                        }
                        let (code, reason) = frame.unwrap_or((close_code::NORMAL, String::new()));
                        sink.send(WsMessage::Close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        })))
                        .await
                    };
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, send).await;
                }
            }
        }
        self.outbox_rx = None;
        tracing::info!(connection = self.id, "websocket closed");
    }

    /// Handles a batch of frames; `turn` is the sync turn, if taken already.
    async fn handle_batch(
        &mut self,
        frames: Vec<bytes::Bytes>,
        turn: Option<Turn>,
    ) -> Result<(), Close> {
        let mut work: Vec<DocumentWork> = Vec::new();
        for frame in &frames {
            let message = protocol::decode(frame).map_err(|e| match e {
                protocol::ProtocolError::UnknownType(_) => Close::protocol(e.to_string()),
                _ => Close::invalid(format!("unreadable message: {e}")),
            })?;
            if self.outbox.is_none() {
                match message {
                    Message::Join {
                        sender_id,
                        supported_protocol_versions,
                        ..
                    } => {
                        self.join(sender_id, &supported_protocol_versions)?;
                        continue;
                    }
                    other => {
                        return Err(Close::protocol(format!(
                            "expected join before anything else, got {}",
                            other.kind()
                        )));
                    }
                }
            }
            match message {
                Message::Request(fields) | Message::Sync(fields) => {
                    let case_id = case_of(fields.document_id)?;
                    if let Err(e) = doorstep_sync_core::decode_message(fields.data) {
                        return Err(Close::invalid(format!(
                            "document {}: {e}",
                            fields.document_id
                        )));
                    }
                    match work.iter_mut().find(|w| w.case_id == case_id) {
                        Some(document) => document.messages.push(fields.data.to_vec()),
                        None => work.push(DocumentWork {
                            case_id,
                            document_id: fields.document_id.to_string(),
                            messages: vec![fields.data.to_vec()],
                        }),
                    }
                }
                Message::Ephemeral {
                    sender_id,
                    count,
                    session_id,
                    document_id,
                    data,
                    ..
                } => {
                    let case_id = case_of(document_id)?;
                    // Only among connections that may see the document, and have it open.
                    if self.subscriptions.contains_key(&case_id) {
                        self.hub
                            .relay_ephemeral(&case_id, self.id, sender_id, count, session_id, data);
                    }
                }
                Message::Join { .. } => return Err(Close::protocol("join sent twice")),
                Message::Peer { .. } => {
                    return Err(Close::protocol(
                        "peer is the server's message, not a client's",
                    ));
                }
                Message::Error { .. } => {
                    // The client is closing; its text is not logged (it could hold anything).
                    return Err(Close::new(
                        close_code::NORMAL,
                        "closing after the client's error",
                    ));
                }
                // Advisory, or gossip this server does not take part in.
                Message::Leave { .. }
                | Message::DocUnavailable { .. }
                | Message::RemoteSubscriptionChange
                | Message::RemoteHeadsChanged => {}
            }
        }
        // The work holds copies of what it needs.
        drop(frames);
        if work.is_empty() {
            return Ok(());
        }
        let turn = match turn {
            Some(turn) => turn,
            None => wait_for_turn(&self.state, &self.hub).await?,
        };
        self.sync_documents(work, turn).await
    }

    /// Acts on `first` and on whatever other controls are already queued: a revocation first
    /// (nothing more is sent), then allocation changes (which drop documents no longer
    /// allocated), then every held push at once, in one sync.
    async fn act_on(
        &mut self,
        first: Control,
        control: &mut mpsc::UnboundedReceiver<Control>,
    ) -> Result<(), Close> {
        let mut commands = vec![first];
        while let Ok(command) = control.try_recv() {
            commands.push(command);
        }
        if commands.contains(&Control::Revoked) {
            return Err(Close::revoked());
        }
        if commands.contains(&Control::AllocationsChanged) {
            self.recheck_allocations().await?;
        }
        let held: Vec<String> = commands
            .into_iter()
            .filter_map(|command| match command {
                Control::SendHeldBack { case_id } => Some(case_id),
                Control::Revoked | Control::AllocationsChanged => None,
            })
            .collect();
        self.send_held_back(held).await
    }

    /// Sends the pushes to `case_ids` that waited for the client's answer or for other syncs,
    /// as the answers to empty messages would be (through the sync path, which re-checks the
    /// caller and the allocation).
    async fn send_held_back(&mut self, mut case_ids: Vec<String>) -> Result<(), Close> {
        case_ids.sort();
        case_ids.dedup();
        let mut work = Vec::new();
        for case_id in case_ids {
            let Some(subscription) = self.subscriptions.get(&case_id) else {
                continue;
            };
            // Not holding back: the client answered meanwhile, and the answer's reply carried
            // it.
            if subscription.holds_back() {
                work.push(DocumentWork {
                    document_id: subscription.document_id.clone(),
                    case_id,
                    messages: Vec::new(),
                });
            }
        }
        if work.is_empty() {
            return Ok(());
        }
        Metrics::add(
            &self.state.metrics.ws_pushes_sent_after_wait,
            work.len() as u64,
        );
        let turn = wait_for_turn(&self.state, &self.hub).await?;
        self.sync_documents(work, turn).await
    }

    /// Answers `join` with `peer` and starts the writer.
    fn join(&mut self, client_peer_id: &str, versions: &[&str]) -> Result<(), Close> {
        if !versions.contains(&PROTOCOL_VERSION) {
            return Err(Close::protocol(format!(
                "unsupported protocol versions {versions:?}: this server speaks version 1"
            )));
        }
        if client_peer_id.is_empty() || client_peer_id.len() > MAX_PEER_ID_BYTES {
            return Err(Close::protocol(format!(
                "senderId must be 1 to {MAX_PEER_ID_BYTES} bytes"
            )));
        }
        let Some(sink) = self.sink.take() else {
            return Err(Close::server());
        };
        let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
        let outbox = Arc::new(Outbox::new(tx, client_peer_id.to_string()));
        outbox.push(protocol::encode(&Message::Peer {
            sender_id: self.hub.peer_id(),
            target_id: client_peer_id,
            selected_protocol_version: PROTOCOL_VERSION,
            metadata: Some(PeerMetadata {
                storage_id: Some(self.hub.storage_id().to_string()),
                is_ephemeral: false,
            }),
        }));
        self.writer = Some(tokio::spawn(write_frames(
            sink,
            rx,
            Arc::clone(&self.state.metrics),
        )));
        self.outbox = Some(outbox);
        Ok(())
    }

    fn outbox(&self) -> Result<&Arc<Outbox>, Close> {
        self.outbox.as_ref().ok_or_else(Close::server)
    }

    fn unavailable(&self, document_id: &str) -> Result<(), Close> {
        let outbox = self.outbox()?;
        outbox.push(protocol::encode(&Message::DocUnavailable {
            sender_id: self.hub.peer_id(),
            target_id: &outbox.client_peer_id,
            document_id,
        }));
        Ok(())
    }

    /// The device and its user as they stand now: revoked ones go no further.
    async fn check_caller(&mut self) -> Result<(), Close> {
        let storage = self.state.storage.as_ref();
        let device = storage.device(&self.caller.device.id).await?;
        let user = storage.user(&self.caller.user.id).await?;
        match (device, user) {
            (Some(device), Some(user))
                if device.revoked_at.is_none() && user.disabled_at.is_none() =>
            {
                self.caller = Caller { user, device };
                Ok(())
            }
            _ => Err(Close::revoked()),
        }
    }

    /// Drops documents no longer allocated to the user, telling the client.
    async fn recheck_allocations(&mut self) -> Result<(), Close> {
        let allocated: HashSet<String> = self
            .state
            .storage
            .allocated_case_ids(&self.caller.user.id)
            .await?
            .into_iter()
            .collect();
        let gone: Vec<String> = self
            .subscriptions
            .keys()
            .filter(|case_id| !allocated.contains(*case_id))
            .cloned()
            .collect();
        for case_id in gone {
            if let Some(subscription) = self.subscriptions.remove(&case_id) {
                self.hub.unsubscribe(&case_id, self.id);
                self.unavailable(&subscription.document_id)?;
            }
        }
        Ok(())
    }

    /// Runs a batch's sync messages through the server's sync path: checked receive,
    /// validation, storage with provenance, the device's sync state, the document cache; then
    /// the replies, and pushes to the other connections that have a changed document open.
    /// The documents whose messages bring no changes are synced in `turn`; each upload then
    /// waits for its place in the upload queue and a turn of its own (each turn also held by
    /// a group's computation while it runs, should the connection drop meanwhile), or is
    /// received with other uploads of its case (see [`Connection::upload_place`]). The batch
    /// counts as a sync running, for the hub's held pushes, until its last commit.
    async fn sync_documents(&mut self, work: Vec<DocumentWork>, turn: Turn) -> Result<(), Close> {
        self.check_caller().await?;
        let storage = Arc::clone(&self.state.storage);
        let allocated: HashSet<String> = storage
            .allocated_case_ids(&self.caller.user.id)
            .await?
            .into_iter()
            .collect();
        // Unknown and not allocated get the same answer.
        let mut open: Vec<OpenDocument> = Vec::new();
        for document in work {
            if !allocated.contains(&document.case_id) {
                if self.subscriptions.remove(&document.case_id).is_some() {
                    self.hub.unsubscribe(&document.case_id, self.id);
                }
                self.unavailable(&document.document_id)?;
                continue;
            }
            let subscription = match self.subscriptions.get(&document.case_id) {
                Some(subscription) => Arc::clone(subscription),
                None => {
                    // Open before the document is read, so that no commit in between is
                    // missed: a change committed before the read is in what is read, one
                    // committed after is pushed.
                    let subscription = Arc::new(Subscription::new(
                        self.id,
                        document.case_id.clone(),
                        document.document_id.clone(),
                        Arc::clone(self.outbox()?),
                    ));
                    self.hub.subscribe(Arc::clone(&subscription));
                    self.subscriptions
                        .insert(document.case_id.clone(), Arc::clone(&subscription));
                    subscription
                }
            };
            open.push((subscription, document.messages.into()));
        }
        if open.is_empty() {
            return Ok(());
        }

        let mut reading = storage.begin_sync_read().await?;
        let bound: BTreeSet<String> = reading
            .device_actors(&self.caller.device.id)
            .await?
            .into_iter()
            .collect();
        reading.commit().await?;
        let rule = ActorRule::BoundOrUnclaimed(bound);
        // A few documents at a time, each group committed before the next is read, so that a
        // batch holds the stored changes of one group, not of all its documents; in case-id
        // order, the order in which every sync locks documents (PostgreSQL locks each row as
        // a locked read reads it). Messages that bring no changes go first, in this turn:
        // they are answered from the change graph, and an answer that asks the client for its
        // changes lets its upload start. Uploads then go one document at a time, each in its
        // place in the case order of all syncs' uploads (see `upload_queue`).
        open.sort_by(|a, b| a.0.case_id.cmp(&b.0.case_id));
        let (uploads, quiet): (Vec<OpenDocument>, Vec<OpenDocument>) = open
            .into_iter()
            .partition(|(_, messages)| messages.iter().any(|m| brings_changes(m)));
        let Turn { permit, _syncing } = turn;
        let mut refused = None;
        for group in quiet.chunks(sync::DOCUMENTS_PER_GROUP) {
            self.sync_and_answer(group, false, &rule, &permit, &mut refused)
                .await?;
        }
        drop(permit);
        for upload in uploads.chunks(1) {
            let Some(_place) = self.upload_place(&upload[0], &rule).await? else {
                // Received and answered with other uploads of its case.
                continue;
            };
            let permit = compute_turn(&self.state).await?;
            self.sync_and_answer(upload, true, &rule, &permit, &mut refused)
                .await?;
        }

        if let Some((case_id, error)) = refused {
            let document = document_id::document_id(&case_id).unwrap_or(case_id);
            let code = match error {
                DocumentError::CorruptMessage(_) => close_code::INVALID,
                DocumentError::Unavailable => close_code::ERROR,
                _ => close_code::POLICY,
            };
            return Err(Close::refused(code, &document, &error));
        }
        Ok(())
    }

    /// Waits for an upload's place in the upload queue, where an upload of one message may
    /// be received with others of its case (see [`sync::enter_upload`]). None: received,
    /// committed and answered with them. Some: the place to receive it alone in.
    async fn upload_place(
        &self,
        (subscription, messages): &OpenDocument,
        rule: &ActorRule,
    ) -> Result<Option<UploadPass>, Close> {
        let state = &self.state;
        let case_id = subscription.case_id.as_str();
        let job = match &messages[..] {
            [message] => Some(QueuedUpload {
                provenance: Provenance {
                    device_id: self.caller.device.id.clone(),
                    user_id: self.caller.user.id.clone(),
                    received_at: chrono::Utc::now().timestamp_millis(),
                },
                sender: self.caller.author(),
                rule: rule.clone(),
                message: message.clone(),
                subscription: Some(Arc::clone(subscription)),
            }),
            _ => None,
        };
        let applied = match sync::enter_upload(state, case_id, job).await {
            Ok(UploadAdmitted::Received { applied, .. }) => applied,
            Ok(UploadAdmitted::Alone(pass)) => return Ok(Some(pass)),
            Err(error) => {
                tracing::error!(connection = self.id, error = %error, "uploads received together failed");
                return Err(Close::server());
            }
        };
        let metrics = &state.metrics;
        Metrics::add(&metrics.sync_documents, 1);
        Metrics::add(&metrics.sync_changes_applied, applied as u64);
        Ok(None)
    }

    /// Syncs one group of a batch's documents (an upload, or documents whose messages bring
    /// no changes) and answers; the first refusal is kept in `refused`.
    async fn sync_and_answer(
        &self,
        group: &[OpenDocument],
        upload: bool,
        rule: &ActorRule,
        permit: &SyncTurn,
        refused: &mut Option<(String, DocumentError)>,
    ) -> Result<(), Close> {
        let outcomes = self.sync_group(group, upload, rule, permit).await?;
        if refused.is_none() {
            *refused = outcomes
                .iter()
                .find_map(|o| o.refused.clone().map(|e| (o.case_id.clone(), e)));
        }
        self.answer_and_push(outcomes).await
    }

    /// Reads, computes and commits one group of a batch's documents. Optimistic first, as the
    /// HTTP sync is (see `sync::sync`): the documents are read and the Automerge work done
    /// outside the database's write lock, so that the syncs of many clients use every core
    /// (held throughout, the lock left the interop benchmark's mass reconnect on one core),
    /// and the group commits only if none of its changed documents moved meanwhile. If one
    /// did, the group is read and its messages received again: on the newer document the same
    /// messages leave the connection's sync state as one receive would (the changes it lacks
    /// are applied, the peer's heads and wishes set again). The last attempt reads, computes
    /// and writes under the lock, so a sync always completes. `upload`: the group is one
    /// document whose messages bring changes, which needs the parsed document.
    async fn sync_group(
        &self,
        group: &[OpenDocument],
        upload: bool,
        rule: &ActorRule,
        permit: &SyncTurn,
    ) -> Result<Vec<Outcome>, Close> {
        let storage = &self.state.storage;
        let device_id = &self.caller.device.id;
        let case_ids: Vec<String> = group.iter().map(|(s, _)| s.case_id.clone()).collect();
        for attempt in 1.. {
            let optimistic = attempt <= sync::OPTIMISTIC_ATTEMPTS;
            let mut tx = if optimistic {
                storage.begin_sync_read().await?
            } else {
                storage.begin_sync().await?
            };
            let mut loaded: HashMap<String, LoadedDocument> = tx
                .load_documents(device_id, &case_ids)
                .await?
                .into_iter()
                .map(|d| (d.case_id.clone(), d))
                .collect();
            let mut jobs = Vec::with_capacity(group.len());
            for (subscription, messages) in group {
                let Some(document) = loaded.remove(&subscription.case_id) else {
                    return Err(Close::server());
                };
                // Only an upload needs the parsed document; the rest are answered from the
                // change graph.
                let (cached, graph) =
                    sync::sources(&self.state, tx.as_mut(), &document, upload).await?;
                jobs.push(Job {
                    subscription: Arc::clone(subscription),
                    document,
                    cached,
                    graph,
                    messages: Arc::clone(messages),
                });
            }
            let mut tx = if optimistic {
                // The read ends before the Automerge work, giving its connection back.
                tx.commit().await?;
                None
            } else {
                Some(tx)
            };
            let mut outcomes = receive_group(
                jobs,
                self.caller.author(),
                rule.clone(),
                Arc::clone(&self.state.documents),
                Arc::clone(permit),
            )
            .await?;
            let mut tx = match tx.take() {
                Some(tx) => tx,
                None => storage.begin_sync().await?,
            };

            // Actors nobody has used become this device's; any that are someone else's
            // refuse their document.
            let unclaimed: Vec<String> = outcomes
                .iter()
                .flat_map(|o| o.unclaimed_actors.iter().cloned())
                .collect::<BTreeSet<String>>()
                .into_iter()
                .collect();
            let received_at = chrono::Utc::now().timestamp_millis();
            if !unclaimed.is_empty() {
                let foreign: BTreeSet<String> = tx
                    .claim_actors(device_id, &unclaimed, received_at)
                    .await?
                    .into_iter()
                    .collect();
                for outcome in &mut outcomes {
                    if let Some(actor) = outcome.unclaimed_actors.intersection(&foreign).next() {
                        outcome.refused = Some(DocumentError::ForeignActor(actor.clone()));
                        outcome.write = None;
                        outcome.file = None;
                        outcome.graph = None;
                    }
                }
            }
            let writes: Vec<DocumentWrite> =
                outcomes.iter_mut().filter_map(|o| o.write.take()).collect();
            let provenance = Provenance {
                device_id: device_id.clone(),
                user_id: self.caller.user.id.clone(),
                received_at,
            };
            match tx.write_documents(&provenance, &writes).await {
                Err(StorageError::DocumentChanged(_)) if optimistic => {
                    Metrics::add(&self.state.metrics.sync_retries, 1);
                    continue;
                }
                other => other?,
            }
            tx.commit().await?;

            let metrics = &self.state.metrics;
            let applied: usize = writes.iter().map(|w| w.changes.len()).sum();
            // Committed: each outcome learns whether it changed, and takes its new bytes.
            for write in writes {
                let Some(outcome) = outcomes.iter_mut().find(|o| o.case_id == write.case_id) else {
                    continue;
                };
                outcome.changed = !write.changes.is_empty();
                if let Some((bytes, _)) = write.snapshot {
                    outcome.stored = Some(bytes);
                }
            }
            Metrics::add(&metrics.sync_documents, outcomes.len() as u64);
            Metrics::add(&metrics.sync_changes_applied, applied as u64);
            Metrics::add(
                &metrics.sync_documents_refused,
                outcomes.iter().filter(|o| o.refused.is_some()).count() as u64,
            );
            tracing::debug!(
                connection = self.id,
                documents = outcomes.len(),
                changes_applied = applied,
                "websocket sync committed"
            );
            return Ok(outcomes);
        }
        unreachable!("the last attempt returns")
    }

    /// Committed: answers this client and pushes each changed document to the other
    /// connections that have it open, then returns the graphs to their cache.
    async fn answer_and_push(&self, outcomes: Vec<Outcome>) -> Result<(), Close> {
        let hub = Arc::clone(&self.hub);
        let graphs = Arc::clone(&self.state.graphs);
        let connection = self.id;
        tokio::task::spawn_blocking(move || {
            for mut outcome in outcomes {
                let Some(graph) = outcome.graph else {
                    continue;
                };
                // Every outcome with a graph has its bytes: unchanged, or moved in above.
                let stored = outcome.stored.as_deref().unwrap_or_default();
                let mut replier = sync::replier(&mut outcome.file, &graph, stored);
                if outcome.changed {
                    hub.fan_out(&outcome.case_id, &mut replier, &[connection]);
                } else {
                    // No messages: a push or answer that waited goes out.
                    let sending = if outcome.answers_client {
                        Sending::Answer {
                            brought_changes: false,
                        }
                    } else {
                        Sending::Release
                    };
                    let others_syncing = hub.others_syncing(1);
                    hub.send_sync(&outcome.subscription, &mut replier, sending, others_syncing);
                }
                graphs.put(outcome.case_id, heads_key(&graph.heads()), graph);
            }
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "websocket reply task failed");
            Close::server()
        })
    }
}

/// A WebSocket sync's turn, and its place in the hub's count of syncs (which holds pushes back
/// while others run). The permit is given back first.
struct Turn {
    permit: SyncTurn,
    _syncing: SyncingGuard,
}

/// Waits for a turn to sync, bounded like the HTTP sync (one per core; a WebSocket client is
/// not told busy, it waits). Taken before the write lock, so that no sync ever holds the lock
/// while it waits for its turn to compute.
async fn wait_for_turn(state: &AppState, hub: &Arc<RepoHub>) -> Result<Turn, Close> {
    let syncing = hub.syncing();
    Ok(Turn {
        permit: compute_turn(state).await?,
        _syncing: syncing,
    })
}

/// Waits for one of the per-core turns to compute, shared with HTTP syncs.
async fn compute_turn(state: &AppState) -> Result<SyncTurn, Close> {
    sync::compute_turn(state).await.ok_or_else(Close::server)
}

/// One document of a group: its subscription, stored state, cached sources and messages.
struct Job {
    subscription: Arc<Subscription>,
    document: LoadedDocument,
    cached: Option<CaseFile>,
    graph: GraphSource,
    /// Shared with the batch: an attempt that must run again receives them again.
    messages: Arc<[Vec<u8>]>,
}

/// The Automerge work of one group, on a blocking thread (it is CPU-bound); the work holds
/// the turn too.
async fn receive_group(
    jobs: Vec<Job>,
    sender: Author,
    rule: ActorRule,
    cache: Arc<crate::doc_cache::DocumentCache>,
    computing: SyncTurn,
) -> Result<Vec<Outcome>, Close> {
    tokio::task::spawn_blocking(move || {
        let _computing = computing;
        jobs.into_iter()
            .map(|job| {
                let mut outcome = receive_one(job, &sender, &rule);
                // As over HTTP: into the cache at once, under the heads it now has, so that a
                // batch holds one parsed document at a time, not all of them until the
                // commit (the replies come from the change graph). Until the commit the
                // stored heads differ, so the cache never serves it early. Only a document
                // holding back changes stays, to answer for them.
                if let Some(mut file) = outcome.file.take() {
                    if file.holds_back_changes() {
                        outcome.file = Some(file);
                    } else {
                        let heads = heads_key(&file.heads());
                        cache.put(outcome.case_id.clone(), heads, file);
                    }
                }
                outcome
            })
            .collect()
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "websocket sync task failed");
        Close::server()
    })
}

/// The blocking part for one document: set up the connection's sync state from the saved one
/// on first use, and apply the messages: those that bring no changes to the change graph,
/// those that do with the checked receive on the parsed document (from the cache if it had
/// it).
fn receive_one(job: Job, sender: &Author, rule: &ActorRule) -> Outcome {
    let Job {
        subscription,
        document,
        mut cached,
        graph,
        messages,
    } = job;
    let case_id = document.case_id.clone();
    let answers_client = !messages.is_empty();
    let refused = |subscription, error| Outcome {
        case_id: case_id.clone(),
        subscription,
        file: None,
        graph: None,
        stored: None,
        write: None,
        changed: false,
        answers_client,
        unclaimed_actors: BTreeSet::new(),
        refused: Some(error),
    };
    let mut graph = match graph.graph(&document) {
        Ok(graph) => graph,
        Err(error) => return refused(subscription, error),
    };
    let mut guard = subscription.peer();
    if !messages.is_empty() {
        subscription.client_spoke();
    }
    let peer = guard.get_or_insert_with(|| sync::saved_peer_state(&document));
    let mut file: Option<CaseFile> = None;
    let mut received = sync::Received::default();
    for message in messages.iter() {
        match graph.receive_sync_message(peer, message) {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                drop(guard);
                return refused(subscription, DocumentError::CorruptMessage(e.to_string()));
            }
        }
        let parsed = match file.take() {
            Some(parsed) => Ok(parsed),
            None => sync::parse_document(&document, cached.take()),
        };
        let mut parsed = match parsed {
            Ok(parsed) => parsed,
            Err(error) => {
                drop(guard);
                return refused(subscription, error);
            }
        };
        let (more, error) = sync::receive_messages(
            &mut parsed,
            peer,
            Some(message.as_slice()),
            sender,
            rule,
            Some(Arc::make_mut(&mut graph)),
        );
        if let Some(error) = error {
            // The connection closes: nothing of this document is stored or cached.
            drop(guard);
            return refused(subscription, error);
        }
        received.changes.extend(more.changes);
        received.unclaimed_actors.extend(more.unclaimed_actors);
        file = Some(parsed);
    }
    let sync_state = (peer.encode(), heads_key(peer.shared_heads()));
    drop(guard);
    let heads = heads_key(&graph.heads());
    let (snapshot, appended_changes) =
        sync::stored_bytes(&document, &received.changes, heads, graph.len(), || {
            file.as_mut().map(CaseFile::save).unwrap_or_default()
        });
    // New bytes are the write's until the commit; the old ones are only this outcome's.
    let stored = snapshot.is_none().then_some(document.snapshot);
    Outcome {
        write: Some(DocumentWrite {
            case_id: case_id.clone(),
            loaded_heads: document.heads,
            appended_changes,
            snapshot,
            changes: received.changes,
            sync_state,
        }),
        case_id,
        subscription,
        file,
        graph: Some(graph),
        stored,
        changed: false,
        answers_client,
        unclaimed_actors: received.unclaimed_actors,
        refused: None,
    }
}

/// The case a document id names; an id that is not base58check ends the connection.
fn case_of(document_id: &str) -> Result<String, Close> {
    document_id::case_id(document_id).map_err(|e| Close::invalid(e.to_string()))
}

/// What one read from the socket gave.
enum Frame {
    Data(bytes::Bytes),
    /// Ping or pong: answered by the WebSocket layer itself.
    Skip,
    /// The client closed (None) or must be told why it is closed.
    End(Option<Close>),
}

fn read_frame(frame: Option<Result<WsMessage, axum::Error>>) -> Frame {
    match frame {
        None | Some(Ok(WsMessage::Close(_))) => Frame::End(None),
        Some(Ok(WsMessage::Binary(bytes))) => Frame::Data(bytes),
        Some(Ok(WsMessage::Text(_))) => Frame::End(Some(Close::new(
            close_code::UNSUPPORTED,
            "text frames are not part of the protocol: send CBOR in binary frames",
        ))),
        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => Frame::Skip,
        Some(Err(error)) => {
            let inner = error.into_inner();
            Frame::End(match inner.downcast_ref::<tungstenite::Error>() {
                Some(tungstenite::Error::Capacity(e)) => Some(Close::new(
                    close_code::SIZE,
                    format!("frame too large: {e}"),
                )),
                Some(tungstenite::Error::Protocol(e)) => {
                    Some(Close::protocol(format!("WebSocket protocol error: {e}")))
                }
                // The connection is gone: nobody to tell.
                _ => None,
            })
        }
    }
}

/// What a close code means, for the log.
fn code_meaning(code: u16) -> &'static str {
    match code {
        close_code::NORMAL => "normal closure",
        close_code::PROTOCOL => "protocol error",
        close_code::UNSUPPORTED => "unsupported data",
        close_code::INVALID => "invalid data",
        close_code::POLICY => "policy violation",
        close_code::SIZE => "message too big",
        close_code::ERROR => "server error",
        _ => "closed",
    }
}

/// A close frame's reason is at most 123 bytes.
fn close_reason(message: &str) -> String {
    let mut reason = String::new();
    for c in message.chars() {
        if reason.len() + c.len_utf8() > 123 {
            break;
        }
        reason.push(c);
    }
    reason
}

/// Writes queued frames to the socket, flushing when the queue runs dry.
async fn write_frames(
    mut sink: SplitSink<WebSocket, WsMessage>,
    mut rx: mpsc::Receiver<Outgoing>,
    metrics: Arc<Metrics>,
) {
    while let Some(item) = rx.recv().await {
        match item {
            Outgoing::Frame(frame) => {
                Metrics::add(&metrics.ws_frames_sent, 1);
                Metrics::add(&metrics.ws_bytes_sent, frame.len() as u64);
                if sink.feed(WsMessage::Binary(frame.into())).await.is_err() {
                    return;
                }
                if rx.is_empty() && sink.flush().await.is_err() {
                    return;
                }
            }
            Outgoing::Close(code, reason) => {
                let _ = sink
                    .send(WsMessage::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    })))
                    .await;
                return;
            }
        }
    }
    let _ = sink.close().await;
}
