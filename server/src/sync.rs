//! The server's side of a sync request: many documents in, the server's messages out, every
//! write committed before the reply is built into a response (group by group on the
//! optimistic attempts, in one transaction on the last; see [`sync`]).
//!
//! For each document the phone sent, the server applies the message with
//! [`CaseFile::receive_sync_message_checked`], accepting only changes made by the actor bound
//! to the calling device and only if the document still validates; a refused document is left
//! exactly as stored (its snapshot, its changes and the device's sync state). For every
//! allocated case the phone did not mention but may lack (it never synced it, or the server
//! has heads it is not known to have), the server sends a message unasked, so that a phone
//! learns of new cases and new changes in one round trip.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use doorstep_sync_core::{
    ActorId, AppliedChange, Author, CaseFile, CaseFileError, ChangeGraph, GraphChange, PeerState,
    RefusedSync, Upload, brings_changes,
};

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::repo_ws::hub::Subscription;
use crate::storage::{
    DocumentWrite, LoadedDocument, NewChange, Provenance, StorageError, heads_key,
};
use crate::upload_queue::{Admission, TakenAlong, UploadPass};

/// One document in a sync request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingDocument {
    pub case_id: String,
    /// An Automerge sync message, already checked to decode; None asks only for the server's.
    pub message: Option<Vec<u8>>,
}

/// Why one document of a request was refused; the others go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentError {
    /// Unknown or not allocated to the caller: the same answer for both.
    NotFound,
    /// A change made by an actor not bound to the calling device (hex actor id).
    ForeignActor(String),
    /// The document would no longer be a valid case file.
    InvalidDocument(String),
    /// The message does not fit the document (it could not be applied).
    CorruptMessage(String),
    /// The stored document could not be read: a server fault, logged.
    Unavailable,
}

impl DocumentError {
    pub fn code(&self) -> &'static str {
        match self {
            DocumentError::NotFound => "not_found",
            DocumentError::ForeignActor(_) => "foreign_actor",
            DocumentError::InvalidDocument(_) => "invalid_document",
            DocumentError::CorruptMessage(_) => "corrupt_sync_message",
            DocumentError::Unavailable => "unavailable",
        }
    }

    pub fn message(&self) -> String {
        match self {
            DocumentError::NotFound => "no such case, or it is not allocated to you".into(),
            DocumentError::ForeignActor(actor) => format!(
                "refused: a change was made by actor {actor}, which is not bound to this device"
            ),
            DocumentError::InvalidDocument(detail) => format!("refused: {detail}"),
            DocumentError::CorruptMessage(detail) => format!("refused: {detail}"),
            DocumentError::Unavailable => "the case file is unavailable; try again later".into(),
        }
    }
}

/// An upload waiting in the upload queue (one document's message from an HTTP sync or a
/// WebSocket batch): what another upload of its case needs to receive and commit it with its
/// own (see [`crate::upload_queue::Admission`]).
#[derive(Debug)]
pub(crate) struct QueuedUpload {
    pub provenance: Provenance,
    pub sender: Author,
    pub rule: ActorRule,
    pub message: Vec<u8>,
    /// Over WebSocket, the connection's open document: its sync state is the one in memory,
    /// and its answer goes out through the hub once committed. None over HTTP: the sync state
    /// is the stored one, and the answer goes back in [`JoinedOutcome::Done`].
    pub subscription: Option<Arc<Subscription>>,
}

/// What became of an upload taken along by another.
#[derive(Debug)]
pub(crate) enum JoinedOutcome {
    /// Received and committed: its document's reply (over WebSocket without a message: the
    /// hub sent the answer), and the changes it applied.
    Done {
        reply: DocumentReply,
        applied: usize,
    },
    /// Not received: it goes through the queue on its own.
    Alone,
}

/// The server's answer for one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentReply {
    pub case_id: String,
    pub message: Option<Vec<u8>>,
    pub error: Option<DocumentError>,
}

/// The whole answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReply {
    pub documents: Vec<DocumentReply>,
    /// Every case allocated to the caller now.
    pub allocated: Vec<String>,
    /// Cases this device holds but may no longer see: it must delete them.
    pub drop: Vec<String>,
}

/// Attempts of a sync before the last one, which holds the write lock throughout.
pub(crate) const OPTIMISTIC_ATTEMPTS: u32 = 2;

/// Why one attempt of a sync did not complete.
enum AttemptError {
    /// A document it changes was written by someone else after it was read: try again.
    DocumentChanged,
    Failed(ApiError),
}

impl<E: Into<ApiError>> From<E> for AttemptError {
    fn from(error: E) -> Self {
        AttemptError::Failed(error.into())
    }
}

/// Runs one sync request for `caller` in its `turn` (see [`sync_turn`]). Returns only after
/// the transaction has committed.
///
/// Optimistic first: the documents are read, and the Automerge work (parse, checked receive,
/// validation, save) done, outside any write lock, so that syncs of many phones use every core
/// and the database's write lock is held only for the writes themselves. Each group of
/// documents commits only if none of its changed documents moved meanwhile; if one did, the
/// sync runs again (the groups already committed then find their changes stored). The last
/// attempt reads and writes everything under the lock in one transaction, so a sync always
/// completes. Committing by group took the interop bench's HTTP retries from 38 to 13-18 and
/// its server CPU from 53-55 s to 40-41 s: a retry used to redo all forty documents.
///
/// An optimistic attempt's uploads (documents whose message brings changes) are taken one at
/// a time, each in its place in the case order of all syncs' uploads (see
/// [`crate::upload_queue`]); the request gives its turn back while it waits for a place, and
/// takes one again for each upload. An upload's answer carries no changes: it would be held
/// in memory until the request's last upload (in a mass reconnect, the answers of all phones
/// at once: 180 MiB in the interop benchmark); the phone asks for them in its next request,
/// which is answered at once.
pub async fn sync(
    state: &AppState,
    caller: &Caller,
    incoming: Vec<IncomingDocument>,
    received_at: i64,
    turn: SyncTurn,
) -> Result<SyncReply, ApiError> {
    let metrics = &state.metrics;
    let mut turn = Some(turn);
    for attempt in 1.. {
        let optimistic = attempt <= OPTIMISTIC_ATTEMPTS;
        let attempt = sync_attempt(state, caller, &incoming, received_at, optimistic, &mut turn);
        match attempt.await {
            Ok(reply) => return Ok(reply),
            Err(AttemptError::DocumentChanged) if optimistic => {
                Metrics::add(&metrics.sync_retries, 1);
            }
            Err(AttemptError::DocumentChanged) => {
                return Err(ApiError::Internal(
                    "a document changed under the write lock".into(),
                ));
            }
            Err(AttemptError::Failed(error)) => return Err(error),
        }
    }
    unreachable!("the last attempt returns")
}

async fn sync_attempt(
    state: &AppState,
    caller: &Caller,
    incoming: &[IncomingDocument],
    received_at: i64,
    optimistic: bool,
    turn: &mut Option<SyncTurn>,
) -> Result<SyncReply, AttemptError> {
    let (storage, metrics) = (state.storage.as_ref(), state.metrics.as_ref());
    let device_id = caller.device.id.clone();
    if !optimistic && turn.is_none() {
        // The last attempt takes its turn before the write lock (an earlier attempt's uploads
        // gave theirs back): a sync holding the lock must never wait for a turn, since the
        // syncs holding the turns may be waiting for the lock to commit.
        *turn = Some(compute_turn(state).await.ok_or_else(limiter_closed)?);
    }
    let mut tx = if optimistic {
        storage.begin_sync_read().await?
    } else {
        storage.begin_sync().await?
    };
    let allocated = tx.allocated_documents(&caller.user.id, &device_id).await?;
    let allocated_ids: BTreeSet<&str> = allocated.iter().map(|a| a.case_id.as_str()).collect();
    let requested: BTreeSet<&str> = incoming.iter().map(|d| d.case_id.as_str()).collect();

    let drop: Vec<String> = tx
        .synced_cases(&device_id)
        .await?
        .into_iter()
        .filter(|case_id| !allocated_ids.contains(case_id.as_str()))
        .collect();
    // A device that no longer mentions a dropped case has deleted it: forget its state.
    let forgotten: Vec<String> = drop
        .iter()
        .filter(|case_id| !requested.contains(case_id.as_str()))
        .cloned()
        .collect();

    let unasked: Vec<String> = allocated
        .iter()
        .filter(|a| !requested.contains(a.case_id.as_str()))
        .filter(|a| a.peer_heads.as_deref() != Some(a.heads.as_str()))
        .map(|a| a.case_id.clone())
        .collect();
    // A document the phone has nothing to say about and is known to hold as stored needs no
    // work at all (the reply would be empty): an idle phone's poll parses nothing.
    let idle: BTreeSet<&str> = allocated
        .iter()
        .filter(|a| a.peer_heads.as_deref() == Some(a.heads.as_str()))
        .map(|a| a.case_id.as_str())
        .collect();
    let (to_load, settled): (Vec<&IncomingDocument>, Vec<&IncomingDocument>) = incoming
        .iter()
        .filter(|d| allocated_ids.contains(d.case_id.as_str()))
        .partition(|d| d.message.is_some() || !idle.contains(d.case_id.as_str()));
    let mut to_load: Vec<String> = to_load.into_iter().map(|d| d.case_id.clone()).collect();
    let settled: Vec<String> = settled.into_iter().map(|d| d.case_id.clone()).collect();
    to_load.extend(unasked);
    // Case-id order across the groups below too: on the last attempt, PostgreSQL locks each
    // document's row as a group reads it, and every sync must lock in one order.
    to_load.sort();
    // Only documents whose message brings changes need the parsed document; the rest are
    // answered from the change graph. Optimistic: those are uploads, each taken in its place
    // in the case order of all syncs' uploads (see `upload_queue`), after the rest. The last
    // attempt takes everything in its turn and its one write transaction: it waits for no one.
    let bringing_changes: BTreeSet<String> = incoming
        .iter()
        .filter(|d| d.message.as_deref().is_some_and(brings_changes))
        .map(|d| d.case_id.clone())
        .collect();
    let (uploads, quiet): (Vec<String>, Vec<String>) = if optimistic {
        to_load
            .into_iter()
            .partition(|case_id| bringing_changes.contains(case_id))
    } else {
        (Vec::new(), to_load)
    };
    let groups = quiet
        .chunks(DOCUMENTS_PER_GROUP)
        .map(|group| (group, false))
        .chain(uploads.chunks(1).map(|upload| (upload, true)));

    // Borrowed: the request's messages are held once, however many attempts it takes (many
    // requests hold theirs at once while their uploads wait for their places).
    let mut messages: BTreeMap<&str, Option<&[u8]>> = incoming
        .iter()
        .map(|d| (d.case_id.as_str(), d.message.as_deref()))
        .collect();
    let order: Vec<String> = incoming.iter().map(|d| d.case_id.clone()).collect();
    let provenance = Provenance {
        device_id: device_id.clone(),
        user_id: caller.user.id.clone(),
        received_at,
    };
    let rule = ActorRule::Bound(BTreeSet::from([caller.device.actor_id.clone()]));
    let sender = caller.author();
    let mut writes = Vec::new();
    let mut replies = BTreeMap::new();
    let mut to_push = Vec::new();
    let mut applied = 0;
    // A few documents at a time: read, then computed, so that a request holds the stored bytes
    // of one group, not of all its documents (40 cases' change rows were megabytes at once).
    // Optimistic: each group is read in a read transaction that ends (giving its connection
    // back) before the group's Automerge work, and the write lock is taken only for the
    // writes; otherwise all runs in the one write transaction.
    let mut tx = Some(tx);
    for (group, upload) in groups {
        let _place = if upload {
            // Waiting holds no turn and no open transaction.
            *turn = None;
            if let Some(read) = tx.take() {
                read.commit().await?;
            }
            let case_id = &group[0];
            let job = messages
                .get(case_id.as_str())
                .copied()
                .flatten()
                .map(|message| QueuedUpload {
                    provenance: provenance.clone(),
                    sender: sender.clone(),
                    rule: rule.clone(),
                    message: message.to_vec(),
                    subscription: None,
                });
            match enter_upload(state, case_id, job).await? {
                UploadAdmitted::Received {
                    reply,
                    applied: applied_here,
                } => {
                    messages.remove(case_id.as_str());
                    applied += applied_here;
                    replies.insert(case_id.clone(), reply);
                    continue;
                }
                UploadAdmitted::Alone(pass) => Some(pass),
            }
        } else {
            None
        };
        let computing = match turn {
            Some(held) => Arc::clone(held),
            None => {
                let taken = compute_turn(state).await.ok_or_else(limiter_closed)?;
                turn.insert(taken).clone()
            }
        };
        let mut reading = match tx.take() {
            Some(tx) => tx,
            None => storage.begin_sync_read().await?,
        };
        let mut loaded = Vec::with_capacity(group.len());
        for document in reading.load_documents(&device_id, group).await? {
            // Each document is loaded once: its message is taken out of the map.
            let message = messages.remove(document.case_id.as_str());
            // Unasked documents only send; their state is saved when the phone answers.
            let requested = message.is_some();
            let message = message.flatten().map(<[u8]>::to_vec);
            let needs_file = bringing_changes.contains(&document.case_id);
            let (cached, graph) = sources(state, reading.as_mut(), &document, needs_file).await?;
            loaded.push((document, cached, graph, message, requested));
        }
        if optimistic {
            reading.commit().await?;
        } else {
            tx = Some(reading);
        }
        let computed = compute_group(
            state,
            loaded,
            sender.clone(),
            rule.clone(),
            computing,
            upload,
        );
        let (group_writes, group_replies, group_push) = computed.await?;
        if !optimistic {
            writes.extend(group_writes);
            to_push.extend(group_push);
        } else if !group_writes.is_empty() {
            // Committed group by group: a document another sync moved meanwhile costs this
            // request its attempt from here, not the Automerge work of every group before
            // (run again, those find their changes stored and the parsed documents cached).
            // A group with nothing to write (only unasked documents) takes no write turn.
            let mut writing = storage.begin_sync().await?;
            match writing.write_documents(&provenance, &group_writes).await {
                Err(StorageError::DocumentChanged(_)) => return Err(AttemptError::DocumentChanged),
                other => other?,
            }
            writing.commit().await?;
            push_committed(state, group_push);
            applied += count_changes(&group_writes);
        }
        replies.extend(group_replies);
    }
    for case_id in settled {
        replies.insert(
            case_id.clone(),
            DocumentReply {
                case_id,
                message: None,
                error: None,
            },
        );
    }

    // The last attempt writes everything here, in its one transaction; an optimistic one has
    // committed its groups, and is left only with forgetting dropped cases.
    let tx = match tx {
        Some(tx) if !optimistic => Some(tx),
        read => {
            if let Some(read) = read {
                read.commit().await?;
            }
            if forgotten.is_empty() {
                None
            } else {
                Some(storage.begin_sync().await?)
            }
        }
    };
    if let Some(mut tx) = tx {
        match tx.write_documents(&provenance, &writes).await {
            Err(StorageError::DocumentChanged(_)) => return Err(AttemptError::DocumentChanged),
            other => other?,
        }
        tx.forget_sync_states(&device_id, &forgotten).await?;
        tx.commit().await?;
    }
    push_committed(state, to_push);
    applied += count_changes(&writes);
    let refused = replies.values().filter(|r| r.error.is_some()).count()
        + order.iter().filter(|id| !replies.contains_key(*id)).count();
    Metrics::add(&metrics.sync_requests, 1);
    Metrics::add(&metrics.sync_documents, order.len() as u64);
    Metrics::add(&metrics.sync_changes_applied, applied as u64);
    Metrics::add(&metrics.sync_documents_refused, refused as u64);
    tracing::info!(
        device = %device_id,
        documents = order.len(),
        changes_applied = applied,
        "sync committed"
    );

    // The reply: requested documents in request order, then the unasked ones.
    let mut documents = Vec::with_capacity(replies.len() + order.len());
    for case_id in order {
        documents.push(replies.remove(&case_id).unwrap_or(DocumentReply {
            case_id,
            message: None,
            error: Some(DocumentError::NotFound),
        }));
    }
    documents.extend(replies.into_values());
    Ok(SyncReply {
        documents,
        allocated: allocated.into_iter().map(|a| a.case_id).collect(),
        drop,
    })
}

/// Committed: the WebSocket clients that have a changed case open are sent its changes.
fn push_committed(state: &AppState, to_push: Vec<(String, CaseFile)>) {
    for (case_id, file) in to_push {
        let (hub, documents) = (Arc::clone(&state.repo), Arc::clone(&state.documents));
        tokio::spawn(async move { hub.document_changed(&documents, case_id, file).await });
    }
}

fn count_changes(writes: &[DocumentWrite]) -> usize {
    writes.iter().map(|w| w.changes.len()).sum()
}

/// Documents read and computed together in one sync request (see `sync_attempt`) or one
/// WebSocket batch.
pub(crate) const DOCUMENTS_PER_GROUP: usize = 8;

/// One group's stored document, cached parsed copy, graph source, message (if any) and whether
/// the phone asked about it.
type LoadedGroup = Vec<(
    LoadedDocument,
    Option<CaseFile>,
    GraphSource,
    Option<Vec<u8>>,
    bool,
)>;

/// What a group of documents computed: writes, replies, and parsed documents to push to
/// WebSocket subscribers once the writes commit.
type GroupOutcome = (
    Vec<DocumentWrite>,
    BTreeMap<String, DocumentReply>,
    Vec<(String, CaseFile)>,
);

/// The Automerge work of one group, on a blocking thread (it is CPU-bound). The work holds the
/// turn too, so that a request cut off meanwhile does not give it back while it still runs.
/// An upload's group (of one) answers without changes (see [`apply_one`]).
async fn compute_group(
    state: &AppState,
    loaded: LoadedGroup,
    sender: Author,
    rule: ActorRule,
    computing: SyncTurn,
    upload: bool,
) -> Result<GroupOutcome, AttemptError> {
    let cache = Arc::clone(&state.documents);
    let graphs = Arc::clone(&state.graphs);
    let pushing = Arc::clone(&state.repo);
    tokio::task::spawn_blocking(move || {
        let _computing = computing;
        let mut writes = Vec::new();
        let mut replies = BTreeMap::new();
        let mut to_push = Vec::new();
        for (document, cached, graph, message, requested) in loaded {
            let message = message.as_deref();
            let applied = apply_one(document, cached, graph, message, upload, &sender, &rule);
            let case_id = applied.reply.case_id.clone();
            if let Some(graph) = applied.graph {
                // Like the document below: keyed by its heads, so it is used only if they
                // are the ones committed.
                graphs.put(case_id.clone(), heads_key(&graph.heads()), graph);
            }
            let changed = applied
                .write
                .as_ref()
                .is_some_and(|w| !w.changes.is_empty());
            if let Some(mut file) = applied.file {
                if changed && pushing.has_subscribers(&case_id) {
                    // Pushed to the case's WebSocket clients once the writes commit.
                    to_push.push((case_id.clone(), file));
                } else {
                    // Into the cache at once, under the heads it now has, so that a request
                    // holds one parsed document at a time, not all of its documents. If the
                    // writes do not commit, the database keeps the old heads and the cache
                    // never serves this copy (every use checks the stored heads).
                    let heads = heads_key(&file.heads());
                    cache.put(case_id.clone(), heads, file);
                }
            }
            if let Some(write) = applied.write.filter(|_| requested) {
                writes.push(write);
            }
            replies.insert(case_id, applied.reply);
        }
        (writes, replies, to_push)
    })
    .await
    .map_err(|e| AttemptError::Failed(ApiError::Internal(format!("sync task failed: {e}"))))
}

/// How an upload went through the upload queue (see [`enter_upload`]).
pub(crate) enum UploadAdmitted {
    /// Received and committed with other uploads of its case: its reply (over WebSocket
    /// without a message: the hub sent the answer) and the changes it applied.
    Received {
        reply: DocumentReply,
        applied: usize,
    },
    /// To be received alone, in this place.
    Alone(UploadPass),
}

/// Waits for an upload's place in the upload queue, where one with a `job` may be taken
/// along by another upload of its case let through meanwhile, or take along the others of
/// its case waiting then ([`lead_uploads`]). Any that could not go together (one would be
/// refused, the document moved meanwhile, its leader gave up) is received alone, as any
/// upload.
pub(crate) async fn enter_upload(
    state: &AppState,
    case_id: &str,
    job: Option<QueuedUpload>,
) -> Result<UploadAdmitted, ApiError> {
    let received = |(reply, applied)| UploadAdmitted::Received { reply, applied };
    Ok(match state.uploads.enter_with(case_id, job).await {
        Admission::TakenAlong(outcome) => match outcome.await {
            Ok(JoinedOutcome::Done { reply, applied }) => received((reply, applied)),
            Ok(JoinedOutcome::Alone) | Err(_) => {
                UploadAdmitted::Alone(state.uploads.enter(case_id).await)
            }
        },
        Admission::Lead {
            pass,
            own: Some(own),
            taken_along,
        } if !taken_along.is_empty() => match lead_uploads(state, case_id, *own, taken_along).await
        {
            Ok(Some(together)) => received(together),
            Ok(None) | Err(AttemptError::DocumentChanged) => UploadAdmitted::Alone(pass),
            Err(AttemptError::Failed(error)) => return Err(error),
        },
        Admission::Lead { pass, .. } => UploadAdmitted::Alone(pass),
    })
}

/// Receives an upload to `case_id` (`own`: this request's, or this WebSocket batch's)
/// together with the uploads of other syncs to it that waited in the upload queue
/// (`taken_along`), in one apply ([`CaseFile::receive_uploads_checked`]), and commits them in
/// one transaction, each with its own device's sync state and provenance; then answers each:
/// an HTTP upload through its outcome, a WebSocket one through the hub (answered as its own
/// sync would answer it, the other connections that have the case open pushed the document).
/// In a mass reconnect a case's phones' uploads wait together, and one apply of all of them
/// costs Automerge a third of one apply per upload (see the `apply_batching` example).
/// Ok(None) (each taken along told to go alone) where they must be received one at a time:
/// one would be refused (a change by another device's actor among them), or the stored
/// document could not be read; the caller then receives its own upload as any other.
/// Err(DocumentChanged) if the document moved before the commit (the others go alone, and so
/// does the caller's, on the newer document).
async fn lead_uploads(
    state: &AppState,
    case_id: &str,
    own: QueuedUpload,
    taken_along: Vec<TakenAlong>,
) -> Result<Option<(DocumentReply, usize)>, AttemptError> {
    let storage = state.storage.as_ref();
    let (mut members, answers): (Vec<QueuedUpload>, Vec<_>) = taken_along
        .into_iter()
        .map(|taken| (taken.job, taken.outcome))
        .unzip();
    members.insert(0, own);
    let go_alone = |answers: Vec<tokio::sync::oneshot::Sender<JoinedOutcome>>| {
        Metrics::add(&state.metrics.upload_batches_declined, 1);
        for answer in answers {
            drop(answer.send(JoinedOutcome::Alone));
        }
    };
    // Held until the commit, as any upload's turn: the parsed document and the writes stay
    // in memory until then.
    let computing = compute_turn(state).await.ok_or_else(limiter_closed)?;
    let holding = Arc::clone(&computing);
    let mut reading = storage.begin_sync_read().await?;
    let case_ids = [case_id.to_string()];
    let mut documents = Vec::with_capacity(members.len());
    for member in &members {
        let loaded = reading
            .load_documents(&member.provenance.device_id, &case_ids)
            .await?;
        match loaded.into_iter().next() {
            // Only the first keeps its bytes: the rest are read for their device's sync state.
            Some(mut document) if !documents.is_empty() => {
                document.snapshot = Vec::new();
                documents.push(document);
            }
            Some(document) => documents.push(document),
            None => {
                go_alone(answers);
                return Ok(None);
            }
        }
    }
    let (cached, graph) = sources(state, reading.as_mut(), &documents[0], true).await?;
    reading.commit().await?;

    let (cache, graphs) = (Arc::clone(&state.documents), Arc::clone(&state.graphs));
    let together = tokio::task::spawn_blocking(move || {
        let _computing = computing;
        let stored_heads = documents[0].heads.clone();
        let case_id = documents[0].case_id.clone();
        match receive_together(&documents, cached, graph, &members) {
            Ok(together) => {
                graphs.put(
                    case_id.clone(),
                    heads_key(&together.graph.heads()),
                    Arc::clone(&together.graph),
                );
                let stored = std::mem::take(&mut documents[0].snapshot);
                Some((together, members, stored))
            }
            Err(taken) => {
                let TakenFromCaches { file, graph } = *taken;
                // Back into the caches as stored, for the upload received alone next.
                if let Some(graph) = graph {
                    graphs.put(case_id.clone(), stored_heads.clone(), graph);
                }
                if let Some(file) = file {
                    cache.put(case_id, stored_heads, file);
                }
                None
            }
        }
    })
    .await
    .map_err(|e| AttemptError::Failed(ApiError::Internal(format!("sync task failed: {e}"))))?;
    let Some((together, members, stored)) = together else {
        go_alone(answers);
        return Ok(None);
    };
    let Together {
        mut writes,
        mut replies,
        file,
        graph,
    } = together;

    let mut writing = storage.begin_sync().await?;
    for (member, write) in members.iter().zip(&writes) {
        // As one WebSocket upload would: actors nobody has used become its device's.
        let unclaimed: Vec<String> = unclaimed_actors(&member.rule, &write.changes)
            .into_iter()
            .collect();
        if !unclaimed.is_empty() {
            let foreign = writing
                .claim_actors(
                    &member.provenance.device_id,
                    &unclaimed,
                    member.provenance.received_at,
                )
                .await?;
            if !foreign.is_empty() {
                // Someone else's: received alone, that upload is refused (the transaction
                // rolls back as it is dropped).
                drop(writing);
                go_alone(answers);
                return Ok(None);
            }
        }
        match writing
            .write_documents(&member.provenance, std::slice::from_ref(write))
            .await
        {
            Err(StorageError::DocumentChanged(_)) => return Err(AttemptError::DocumentChanged),
            other => other?,
        }
    }
    writing.commit().await?;
    drop(holding);
    let answering: Vec<u64> = members
        .iter()
        .filter_map(|member| member.subscription.as_ref().map(|s| s.connection))
        .collect();
    let mut file = file;
    if answering.is_empty() {
        let heads = heads_key(&file.heads());
        if state.repo.has_subscribers(case_id) {
            push_committed(state, vec![(case_id.to_string(), file)]);
        } else {
            state.documents.put(case_id.to_string(), heads, file);
        }
    } else {
        // The WebSocket members' answers go out before they are told they are done, as their
        // own sync's would (from the change graph; the stored bytes are the last write's).
        let (hub, cache, case) = (
            Arc::clone(&state.repo),
            Arc::clone(&state.documents),
            case_id.to_string(),
        );
        let stored = writes
            .last_mut()
            .and_then(|write| write.snapshot.take())
            .map_or(stored, |(bytes, _)| bytes);
        tokio::task::spawn_blocking(move || {
            let mut replier = Replier::Graph {
                graph: &graph,
                stored: &stored,
            };
            hub.fan_out(&case, &mut replier, &answering);
            let heads = heads_key(&file.heads());
            cache.put(case, heads, file);
        })
        .await
        .map_err(|e| AttemptError::Failed(ApiError::Internal(format!("sync task failed: {e}"))))?;
    }
    Metrics::add(&state.metrics.uploads_taken_along, answers.len() as u64);
    let mut applied: Vec<usize> = writes.iter().map(|w| w.changes.len()).collect();
    for (answer, (reply, applied)) in answers
        .into_iter()
        .zip(replies.drain(1..).zip(applied.drain(1..)))
    {
        drop(answer.send(JoinedOutcome::Done { reply, applied }));
    }
    Ok(replies.pop().zip(applied.pop()))
}

/// The actors of `changes` that `rule` lets a sync claim for its device (under
/// [`ActorRule::BoundOrUnclaimed`], those not bound to it yet), each once.
fn unclaimed_actors(rule: &ActorRule, changes: &[NewChange]) -> BTreeSet<String> {
    let ActorRule::BoundOrUnclaimed(bound) = rule else {
        return BTreeSet::new();
    };
    changes
        .iter()
        .map(|change| &change.actor_id)
        .filter(|actor| !bound.contains(*actor))
        .cloned()
        .collect()
}

/// What [`receive_together`] gives back when the uploads must go one at a time: the parsed
/// document and change graph as stored, where they were read, for the caches.
struct TakenFromCaches {
    file: Option<CaseFile>,
    graph: Option<Arc<ChangeGraph>>,
}

/// What uploads received together computed: a write and a reply for each, in order, and the
/// document and its change graph as they now stand.
struct Together {
    writes: Vec<DocumentWrite>,
    replies: Vec<DocumentReply>,
    file: CaseFile,
    graph: Arc<ChangeGraph>,
}

/// A member's sync state while its upload is received: the stored one (HTTP), or the
/// WebSocket connection's, locked as one upload's receive locks it.
enum MemberPeer<'a> {
    Stored(PeerState),
    Open(std::sync::MutexGuard<'a, Option<PeerState>>),
}

impl MemberPeer<'_> {
    fn of<'a>(member: &'a QueuedUpload, document: &LoadedDocument) -> MemberPeer<'a> {
        match &member.subscription {
            None => MemberPeer::Stored(saved_peer_state(document)),
            Some(subscription) => {
                let mut peer = subscription.peer();
                peer.get_or_insert_with(|| saved_peer_state(document));
                subscription.client_spoke();
                MemberPeer::Open(peer)
            }
        }
    }

    fn state(&mut self) -> &mut PeerState {
        match self {
            MemberPeer::Stored(peer) => peer,
            // Set in `of`.
            MemberPeer::Open(peer) => peer.get_or_insert_with(PeerState::new),
        }
    }
}

/// The blocking part of [`lead_uploads`]: every member's upload received together into the
/// stored document (`documents`: as each member's device loaded it, the first with its
/// bytes), each member's write chained on the one before (its changes appended after theirs;
/// the last compacts if the whole would) and, over HTTP, its reply without changes, as an
/// upload's. A WebSocket member's sync state is locked throughout, as one upload's is. On
/// Err, the parsed document and graph as stored, for the caches, if they were read.
fn receive_together(
    documents: &[LoadedDocument],
    cached: Option<CaseFile>,
    graph: GraphSource,
    members: &[QueuedUpload],
) -> Result<Together, Box<TakenFromCaches>> {
    let nothing = || {
        Box::new(TakenFromCaches {
            file: None,
            graph: None,
        })
    };
    let stored = &documents[0];
    let mut graph = graph.graph(stored).map_err(|_| nothing())?;
    let mut file = parse_document(stored, cached).map_err(|_| {
        Box::new(TakenFromCaches {
            file: None,
            graph: Some(Arc::clone(&graph)),
        })
    })?;
    let mut peers: Vec<MemberPeer<'_>> = members
        .iter()
        .zip(documents)
        .map(|(member, document)| MemberPeer::of(member, document))
        .collect();
    let allowed: Vec<_> = members
        .iter()
        .map(|member| |actor: &ActorId| member.rule.allows(actor))
        .collect();
    let mut uploads: Vec<Upload<'_>> = members
        .iter()
        .zip(peers.iter_mut())
        .zip(&allowed)
        .map(|((member, peer), allowed)| Upload {
            peer: peer.state(),
            message: &member.message,
            sender: &member.sender,
            actor_allowed: allowed,
        })
        .collect();
    let Some(applied) = file.receive_uploads_checked(&mut uploads) else {
        drop(uploads);
        return Err(Box::new(TakenFromCaches {
            file: Some(file),
            graph: Some(graph),
        }));
    };
    drop(uploads);
    // Each member's changes into the graph, and its write chained on the one before.
    let graph_mut = Arc::make_mut(&mut graph);
    let mut changes: Vec<Vec<NewChange>> = Vec::with_capacity(applied.len());
    let mut heads = Vec::with_capacity(applied.len());
    for member_applied in applied {
        let new = member_applied
            .into_iter()
            .map(|change| add_to_graph(graph_mut, change))
            .collect::<Option<Vec<NewChange>>>()
            .ok_or_else(nothing)?;
        changes.push(new);
        heads.push(heads_key(&graph_mut.heads()));
    }
    let all: Vec<&NewChange> = changes.iter().flatten().collect();
    let last_heads = heads
        .last()
        .cloned()
        .unwrap_or_else(|| stored.heads.clone());
    let (snapshot, appended_total) =
        stored_bytes(stored, &all, last_heads, graph.len(), || file.save());
    drop(all);
    // HTTP uploads are answered without changes (the phone asks for them next), from the
    // graph: nothing is held back after a receive together. WebSocket ones are answered
    // through the hub once committed.
    let bytes = snapshot
        .as_ref()
        .map_or(stored.snapshot.as_slice(), |(bytes, _)| bytes.as_slice());
    let mut replier = Replier::Graph {
        graph: &graph,
        stored: bytes,
    };
    let replies: Vec<DocumentReply> = peers
        .iter_mut()
        .map(|peer| DocumentReply {
            case_id: stored.case_id.clone(),
            message: match peer {
                MemberPeer::Stored(peer) => replier.generate_without_changes(peer),
                MemberPeer::Open(_) => None,
            },
            error: None,
        })
        .collect();
    let mut snapshot = snapshot;
    let mut writes = Vec::with_capacity(members.len());
    let (mut loaded_heads, mut appended) = (stored.heads.clone(), stored.appended_changes);
    let last = members.len() - 1;
    for (i, ((peer, member_changes), member_heads)) in
        peers.iter_mut().zip(changes).zip(heads).enumerate()
    {
        let peer = peer.state();
        appended += member_changes.len() as i64;
        // Each write but the last appends its changes' hashes after those before it (the
        // bytes it would append are in the last write's); the last stores the whole as
        // `stored_bytes` chose: appended, or compacted into a full save.
        let (snapshot, appended_changes) = if i == last {
            (snapshot.take(), appended_total)
        } else if member_changes.is_empty() {
            // Nothing of its own (another member brought the same): its sync state only.
            (None, appended)
        } else {
            (Some((Vec::new(), member_heads.clone())), appended)
        };
        writes.push(DocumentWrite {
            case_id: stored.case_id.clone(),
            loaded_heads: std::mem::replace(&mut loaded_heads, member_heads),
            appended_changes,
            snapshot,
            changes: member_changes,
            sync_state: (peer.encode(), heads_key(peer.shared_heads())),
        });
    }
    Ok(Together {
        writes,
        replies,
        file,
        graph,
    })
}

/// What one sync needs of a loaded document: the parsed document from the cache, only if a
/// message brings changes (the rest are answered from the change graph), and where its
/// change graph comes from (the cache, or the stored changes read in `tx`).
pub(crate) async fn sources(
    state: &AppState,
    tx: &mut dyn crate::storage::SyncTransaction,
    document: &LoadedDocument,
    needs_file: bool,
) -> Result<(Option<CaseFile>, GraphSource), StorageError> {
    let metrics = &state.metrics;
    let cached = needs_file
        .then(|| state.documents.take(&document.case_id, &document.heads))
        .flatten();
    if needs_file {
        let counter = if cached.is_some() {
            &metrics.document_cache_hits
        } else {
            &metrics.document_cache_misses
        };
        Metrics::add(counter, 1);
    }
    // A sync that will add changes takes the graph out, so that it is changed in place.
    let cached_graph = if needs_file {
        state.graphs.take(&document.case_id, &document.heads)
    } else {
        state.graphs.get(&document.case_id, &document.heads)
    };
    let graph = match cached_graph {
        Some(graph) => {
            Metrics::add(&metrics.graph_cache_hits, 1);
            GraphSource::Cached(graph)
        }
        None => {
            Metrics::add(&metrics.graph_cache_misses, 1);
            GraphSource::Stored(tx.graph_changes(&document.case_id).await?)
        }
    };
    Ok((cached, graph))
}

/// A turn to run a sync: shared by the request and the blocking task that computes for it,
/// and given back when both are done.
pub type SyncTurn = Arc<tokio::sync::OwnedSemaphorePermit>;

/// Waits for one of the per-core turns to compute (HTTP and WebSocket syncs share them).
/// None only if the limiter was closed, which nothing does.
pub(crate) async fn compute_turn(state: &AppState) -> Option<SyncTurn> {
    let permit = Arc::clone(&state.sync_compute).acquire_owned().await;
    permit.ok().map(Arc::new)
}

fn limiter_closed() -> ApiError {
    ApiError::Internal("the sync limiter is closed".into())
}

/// Waits for a turn to run a sync, and reads the request's body with `read_body`. Parsed case
/// files take megabytes each: only as many syncs run (read the request, compute, write) at
/// once as there are cores, so memory stays bounded however many phones reconnect together;
/// a turn is held until the writes commit, except while an upload waits for its place in the
/// upload queue (see [`sync`]): a request waiting so holds its body, not parsed documents.
/// The body is read once the turn comes, so that waiting phones hold none in memory, or after
/// the sync has waited `Config::sync_body_unread` (a client gives up on a send the server
/// leaves untaken for long; the place in the queue is kept meanwhile). A phone that has waited
/// past [`turn_wait_budget`] of the sync time limit without a turn is told that the server is
/// busy (503 with `Retry-After`) before any work is done, so that under a burst no request is
/// cut off by the time limit after the work was done for it. (One cut off while its uploads
/// wait for their places keeps the uploads it committed; its phone sends the rest again.)
pub async fn sync_turn<T>(
    state: &AppState,
    read_body: impl Future<Output = Result<T, ApiError>>,
) -> Result<(SyncTurn, T), ApiError> {
    let started = std::time::Instant::now();
    let budget = turn_wait_budget(state.config.sync_timeout());
    let mut turn = std::pin::pin!(Arc::clone(&state.sync_compute).acquire_owned());
    let mut read_body = std::pin::pin!(read_body);
    let (waited, body) =
        match tokio::time::timeout(state.config.sync_body_unread().min(budget), &mut turn).await {
            Ok(waited) => (Ok(waited), None),
            Err(_) => {
                let body = read_body.as_mut().await?;
                let left = budget.saturating_sub(started.elapsed());
                (tokio::time::timeout(left, &mut turn).await, Some(body))
            }
        };
    state.metrics.record_turn_wait(started.elapsed());
    let turn = match waited {
        Ok(Ok(permit)) => Arc::new(permit),
        Ok(Err(_)) => return Err(limiter_closed()),
        Err(_) => {
            Metrics::add(&state.metrics.sync_busy, 1);
            return Err(ApiError::Busy {
                retry_after_secs: BUSY_RETRY_AFTER_SECS,
            });
        }
    };
    let body = match body {
        Some(body) => body,
        None => read_body.as_mut().await?,
    };
    Ok((turn, body))
}

/// What a sync that got its turn keeps of its time limit for its own work.
pub const SYNC_WORK_RESERVE: Duration = Duration::from_secs(15);

/// How long a sync may wait for its turn within its time limit: all of it but
/// [`SYNC_WORK_RESERVE`], and at least half. Waiting is cheap for both sides; a busy answer
/// is not: the phone sends everything again, and a burst takes longer (the interop bench's
/// 50 phones reconnecting at once, each with 40 cases: with a 15 s wait, 16-17 busy answers,
/// 52.6 s to converge and 48.5 s of server CPU; with no busy answer, 43.8 s and 40.2 s).
pub fn turn_wait_budget(limit: Duration) -> Duration {
    limit.saturating_sub(SYNC_WORK_RESERVE).max(limit / 2)
}

/// How long a phone told that the server is busy should wait before it syncs again.
pub const BUSY_RETRY_AFTER_SECS: u64 = 5;

/// Which actors' changes a sync may bring.
#[derive(Debug, Clone)]
pub enum ActorRule {
    /// Only these actors (hex): the actors bound to the sending device. What phones syncing
    /// over HTTP get: the one actor they registered at sign-in.
    Bound(BTreeSet<String>),
    /// These, and actors not yet bound to anyone, which the caller must then claim for the
    /// device ([`crate::storage::SyncTransaction::claim_actors`]) before it stores the changes.
    /// What automerge-repo clients get: they cannot choose their actors.
    BoundOrUnclaimed(BTreeSet<String>),
}

impl ActorRule {
    fn bound(&self) -> &BTreeSet<String> {
        match self {
            ActorRule::Bound(bound) | ActorRule::BoundOrUnclaimed(bound) => bound,
        }
    }

    /// Whether a checked receive may take changes by `actor`. Under
    /// [`ActorRule::BoundOrUnclaimed`] any actor passes here only to be claimed in storage,
    /// which refuses one that is bound to, or wrote for, anyone else.
    fn allows(&self, actor: &ActorId) -> bool {
        matches!(self, ActorRule::BoundOrUnclaimed(_))
            || self.bound().contains(&actor.to_hex_string())
    }
}

impl From<AppliedChange> for NewChange {
    fn from(change: AppliedChange) -> Self {
        NewChange {
            hash: change.hash.to_string(),
            actor_id: change.actor.to_hex_string(),
            deps: change.deps,
            bytes: change.bytes,
        }
    }
}

/// An applied change added to the document's change graph, in storage form; None (logged)
/// if it does not fit the graph, which cannot happen: the document applied it, so it has its
/// dependencies.
fn add_to_graph(graph: &mut ChangeGraph, change: AppliedChange) -> Option<NewChange> {
    if let Err(e) = graph.add(change.hash, &change.deps, change.bytes.clone()) {
        tracing::error!(error = %e, "an applied change does not fit the change graph");
        return None;
    }
    Some(change.into())
}

/// What a checked receive accepted into one document.
#[derive(Debug, Default)]
pub(crate) struct Received {
    /// The new changes, in storage form.
    pub changes: Vec<NewChange>,
    /// Actors of those changes not yet bound to the device (only under
    /// [`ActorRule::BoundOrUnclaimed`]).
    pub unclaimed_actors: BTreeSet<String>,
}

/// Parses a stored document, unless the cache had it at the stored heads.
pub(crate) fn parse_document(
    document: &LoadedDocument,
    cached: Option<CaseFile>,
) -> Result<CaseFile, DocumentError> {
    if let Some(file) = cached {
        return Ok(file);
    }
    CaseFile::load(&document.snapshot, server_reader(), ActorId::random()).map_err(|e| {
        tracing::error!(case = %document.case_id, error = %e, "stored case file does not load");
        DocumentError::Unavailable
    })
}

/// The author of a document the server loads only to read and send: never written.
pub(crate) fn server_reader() -> Author {
    Author {
        user_id: "server".into(),
        device_id: crate::cases::SERVER_DEVICE.into(),
    }
}

/// The device's saved sync state for a document (a fresh one if it has none or it does not
/// decode: losing it costs only a longer exchange).
pub(crate) fn saved_peer_state(document: &LoadedDocument) -> PeerState {
    match document.sync_state.as_deref().map(PeerState::decode) {
        Some(Ok(peer)) => peer,
        Some(Err(e)) => {
            tracing::warn!(case = %document.case_id, error = %e, "discarding unreadable sync state");
            PeerState::new()
        }
        None => PeerState::new(),
    }
}

/// Applies one device's messages to one document, in order, each with the checked receive,
/// adding what each applies to `graph` (the document's change graph) too. A refused message
/// leaves the document, the graph and `peer` as the messages before it left them, and the
/// messages after it are not applied.
pub(crate) fn receive_messages<'m>(
    file: &mut CaseFile,
    peer: &mut PeerState,
    messages: impl IntoIterator<Item = &'m [u8]>,
    sender: &Author,
    rule: &ActorRule,
    mut graph: Option<&mut ChangeGraph>,
) -> (Received, Option<DocumentError>) {
    let mut received = Received::default();
    for message in messages {
        let allowed = |actor: &ActorId| rule.allows(actor);
        let applied = match file.receive_sync_message_checked(peer, message, sender, allowed) {
            Ok(applied) => applied,
            Err(RefusedSync::ForeignActor(actor)) => {
                return (received, Some(DocumentError::ForeignActor(actor)));
            }
            Err(RefusedSync::Misattributed(detail)) => {
                return (
                    received,
                    Some(DocumentError::InvalidDocument(format!(
                        "misattributed: {detail}"
                    ))),
                );
            }
            Err(RefusedSync::Invalid(CaseFileError::CorruptSyncMessage(detail))) => {
                return (received, Some(DocumentError::CorruptMessage(detail)));
            }
            Err(RefusedSync::Invalid(e)) => {
                return (
                    received,
                    Some(DocumentError::InvalidDocument(e.to_string())),
                );
            }
        };
        for change in applied {
            let new = match graph.as_deref_mut() {
                Some(graph) => match add_to_graph(graph, change) {
                    Some(new) => new,
                    None => return (received, Some(DocumentError::Unavailable)),
                },
                None => NewChange::from(change),
            };
            received.changes.push(new);
        }
    }
    received.unclaimed_actors = unclaimed_actors(rule, &received.changes);
    (received, None)
}

/// Appended changes after which the stored bytes are compacted into one full save, so that
/// loading stays fast.
pub const COMPACT_AFTER_CHANGES: i64 = 64;

/// Also compacted once appended changes are this share of all the document's changes
/// (1/8): raw change chunks take about twice their size in a full save, and the stored bytes
/// are what a peer lacking most of the document is sent, so they stay close to a full save's
/// size.
pub const COMPACT_SHARE: i64 = 8;

/// The bytes to store for a document that received `changes` (none: nothing to store) and
/// now has `heads` and `total_changes`, and the count of changes appended since its last full
/// save. Usually the stored bytes with the new raw changes appended (Automerge loads the
/// concatenation), which costs no save of the whole document; after [`COMPACT_AFTER_CHANGES`]
/// changes, or once they are a [`COMPACT_SHARE`] of the document, a full save (`full_save`)
/// instead.
pub(crate) fn stored_bytes<C: Borrow<NewChange>>(
    document: &LoadedDocument,
    changes: &[C],
    heads: String,
    total_changes: usize,
    full_save: impl FnOnce() -> Vec<u8>,
) -> (Option<(Vec<u8>, String)>, i64) {
    if changes.is_empty() {
        return (None, document.appended_changes);
    }
    let appended = document.appended_changes + changes.len() as i64;
    if appended >= COMPACT_AFTER_CHANGES || appended * COMPACT_SHARE >= total_changes as i64 {
        return (Some((full_save(), heads)), 0);
    }
    let size = document.snapshot.len()
        + changes
            .iter()
            .map(|c| c.borrow().bytes.len())
            .sum::<usize>();
    let mut bytes = Vec::with_capacity(size);
    bytes.extend_from_slice(&document.snapshot);
    for change in changes {
        bytes.extend_from_slice(&change.borrow().bytes);
    }
    (Some((bytes, heads)), appended)
}

/// Where a document's change graph comes from.
pub(crate) enum GraphSource {
    /// The cache had it at the stored heads.
    Cached(Arc<ChangeGraph>),
    /// Every stored change, to build it from.
    Stored(Vec<GraphChange>),
}

impl GraphSource {
    /// The graph, checked to stand at the document's stored heads.
    pub(crate) fn graph(
        self,
        document: &LoadedDocument,
    ) -> Result<Arc<ChangeGraph>, DocumentError> {
        let graph = match self {
            GraphSource::Cached(graph) => return Ok(graph),
            GraphSource::Stored(changes) => ChangeGraph::from_graph_changes(changes),
        };
        match graph {
            Ok(graph) if heads_key(&graph.heads()) == document.heads => Ok(Arc::new(graph)),
            Ok(_) => {
                tracing::error!(case = %document.case_id, "stored changes do not match the stored document's heads");
                Err(DocumentError::Unavailable)
            }
            Err(e) => {
                tracing::error!(case = %document.case_id, error = %e, "stored changes do not make a change graph");
                Err(DocumentError::Unavailable)
            }
        }
    }
}

/// What generates the server's next sync message for a document: its change graph with its
/// stored bytes (what a whole-document send sends), or the parsed document where the graph
/// cannot (it holds back changes received without their dependencies, and asks for those).
pub(crate) enum Replier<'a> {
    Graph {
        graph: &'a ChangeGraph,
        stored: &'a [u8],
    },
    Document(&'a mut CaseFile),
}

impl Replier<'_> {
    pub(crate) fn generate(&mut self, peer: &mut PeerState) -> Option<Vec<u8>> {
        match self {
            Replier::Graph { graph, stored } => {
                read_from_stored(graph.generate_sync_message(peer, stored)).flatten()
            }
            Replier::Document(file) => file.generate_sync_message(peer),
        }
    }

    /// The next message, without the changes it would carry while the peer has changes this
    /// side lacks, and whether changes were held back (see
    /// [`ChangeGraph::generate_sync_message_asking_first`]). A parsed document (one holding
    /// back changes it received, rare) sends them as usual.
    pub(crate) fn generate_asking_first(
        &mut self,
        peer: &mut PeerState,
    ) -> (Option<Vec<u8>>, bool) {
        match self {
            Replier::Graph { graph, stored } => {
                read_from_stored(graph.generate_sync_message_asking_first(peer, stored))
                    .unwrap_or((None, false))
            }
            Replier::Document(file) => (file.generate_sync_message(peer), false),
        }
    }

    /// The next message, without the changes it would carry (see
    /// [`ChangeGraph::generate_sync_message_without_changes`]). A parsed document (one holding
    /// back changes it received, rare) sends them as usual.
    pub(crate) fn generate_without_changes(&mut self, peer: &mut PeerState) -> Option<Vec<u8>> {
        match self {
            Replier::Graph { graph, stored } => {
                read_from_stored(graph.generate_sync_message_without_changes(peer, stored))
                    .and_then(|(message, _)| message)
            }
            Replier::Document(file) => file.generate_sync_message(peer),
        }
    }

    /// The heads of the version it replies from.
    pub(crate) fn heads(&mut self) -> Vec<doorstep_sync_core::ChangeHash> {
        match self {
            Replier::Graph { graph, .. } => graph.heads(),
            Replier::Document(file) => file.heads(),
        }
    }

    /// Whether the document holds every one of `heads`.
    pub(crate) fn contains_heads(&mut self, heads: &[doorstep_sync_core::ChangeHash]) -> bool {
        match self {
            Replier::Graph { graph, .. } => graph.contains_heads(heads),
            Replier::Document(file) => file.contains_heads(heads),
        }
    }
}

/// A graph's message, or None (the peer's state unchanged) if the stored document lacks a
/// change the graph names: the stored bytes and the change rows disagree, which only damage
/// to the database can cause. Logged; the peer asks again and gets the same.
fn read_from_stored<T>(generated: Result<T, CaseFileError>) -> Option<T> {
    generated
        .inspect_err(|e| {
            tracing::error!(error = %e, "a stored document lacks changes its change graph names");
        })
        .ok()
}

/// The graph, unless the parsed document holds back changes (their dependencies missing:
/// rare, a lost message or a bloom filter's false positive), which only it knows of.
pub(crate) fn replier<'a>(
    file: &'a mut Option<CaseFile>,
    graph: &'a ChangeGraph,
    stored: &'a [u8],
) -> Replier<'a> {
    let holding_back = file.as_mut().is_some_and(CaseFile::holds_back_changes);
    match file {
        Some(file) if holding_back => Replier::Document(file),
        _ => Replier::Graph { graph, stored },
    }
}

/// What applying one message to one document led to.
struct Applied {
    /// What to write; None when nothing may change.
    write: Option<DocumentWrite>,
    reply: DocumentReply,
    /// The parsed document, if the message brought changes, for the cache.
    file: Option<CaseFile>,
    /// The document's change graph as it now stands, for the cache.
    graph: Option<Arc<ChangeGraph>>,
}

/// Applies one message to one stored document and builds the server's next message. A
/// message that brings no changes (most of them) is answered from the change graph alone; one
/// that does is applied to the parsed document (from the cache if it had it at the stored
/// heads) with the checked receive. An upload's answer (see `sync_attempt`) carries no
/// changes: the phone asks for them in its next request.
fn apply_one(
    document: LoadedDocument,
    cached: Option<CaseFile>,
    graph: GraphSource,
    message: Option<&[u8]>,
    upload: bool,
    sender: &Author,
    rule: &ActorRule,
) -> Applied {
    let case_id = document.case_id.clone();
    let refused = |error: DocumentError, file: Option<CaseFile>| Applied {
        write: None,
        reply: DocumentReply {
            case_id: case_id.clone(),
            message: None,
            error: Some(error),
        },
        file,
        graph: None,
    };
    let mut graph = match graph.graph(&document) {
        Ok(graph) => graph,
        Err(error) => return refused(error, None),
    };
    let mut peer = saved_peer_state(&document);
    let mut file = None;
    let mut changes = Vec::new();
    if let Some(message) = message {
        match graph.receive_sync_message(&mut peer, message) {
            Ok(true) => {}
            Ok(false) => {
                let mut parsed = match parse_document(&document, cached) {
                    Ok(parsed) => parsed,
                    Err(error) => return refused(error, None),
                };
                let (received, error) = receive_messages(
                    &mut parsed,
                    &mut peer,
                    Some(message),
                    sender,
                    rule,
                    Some(Arc::make_mut(&mut graph)),
                );
                if let Some(error) = error {
                    // A refusal leaves the document as stored (the checked receive changes
                    // nothing); a document whose state is uncertain is not cached.
                    let keep = error != DocumentError::Unavailable;
                    return refused(error, keep.then_some(parsed));
                }
                changes = received.changes;
                file = Some(parsed);
            }
            Err(e) => return refused(DocumentError::CorruptMessage(e.to_string()), None),
        }
    }
    // Without a message from the phone, speak only if it may lack something: the saved state
    // keeps only what the phone is known to have, so a fresh generate would always send.
    if message.is_none() && heads_key(peer.shared_heads()) == document.heads {
        let reply = DocumentReply {
            case_id,
            message: None,
            error: None,
        };
        return Applied {
            write: None,
            reply,
            file,
            graph: Some(graph),
        };
    }
    let heads = heads_key(&graph.heads());
    let total = graph.len();
    let (snapshot, appended_changes) = stored_bytes(&document, &changes, heads, total, || {
        file.as_mut().map(CaseFile::save).unwrap_or_default()
    });
    let stored = snapshot
        .as_ref()
        .map_or(&document.snapshot, |(bytes, _)| bytes);
    let mut replier = replier(&mut file, &graph, stored);
    let reply = if upload {
        replier.generate_without_changes(&mut peer)
    } else {
        replier.generate(&mut peer)
    };
    let write = DocumentWrite {
        case_id: case_id.clone(),
        loaded_heads: document.heads.clone(),
        appended_changes,
        snapshot,
        changes,
        sync_state: (peer.encode(), heads_key(peer.shared_heads())),
    };
    let reply = DocumentReply {
        case_id,
        message: reply,
        error: None,
    };
    Applied {
        write: Some(write),
        reply,
        file,
        graph: Some(graph),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_may_wait_all_of_its_limit_but_the_work_reserve_and_at_least_half() {
        let secs = Duration::from_secs;
        assert_eq!(turn_wait_budget(secs(55)), secs(40));
        assert_eq!(turn_wait_budget(secs(30)), secs(15));
        assert_eq!(turn_wait_budget(secs(20)), secs(10));
        assert_eq!(turn_wait_budget(secs(2)), secs(1));
        assert_eq!(turn_wait_budget(secs(0)), secs(0));
    }
}
