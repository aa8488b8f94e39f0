//! What the WebSocket connections of one server process share: who has which document open
//! (with the sync state of each), and a way to reach each connection.
//!
//! Pushing is done by whoever commits a change, while it still holds the parsed document: it
//! generates the next sync message for every connection that has the document open and puts
//! it in that connection's outbox, then returns the document to the cache. No connection parses
//! the document again to learn what changed, and a message never carries a change that is not
//! yet committed. Every generation for one connection and document happens under the lock of
//! its sync state, in the order the messages are queued, so the state always matches what was
//! sent; and never from a version older than the last one it was generated from, since pushes
//! of successive versions may run out of order.
//!
//! A push waits while the client has not answered the last message that carried it changes:
//! the changes committed meanwhile go out together in the reply to its answer (or, should the
//! answer not come within the answer wait, `--ws-answer-wait-ms`, in one push then). Automerge
//! rewrites a document's columns for every message it applies, so a client applies one
//! message of many changes at a fraction of the cost of many small ones, and answers fewer
//! (on the interop benchmark's mass reconnect: half the messages to the phones, a fifth less
//! of their CPU). A push to a client with nothing in flight goes out at once.
//!
//! A push also waits while other WebSocket syncs wait for or hold a turn: the server is busy
//! (a mass reconnect), and what they commit would follow in pushes of their own. The client
//! gets it all in one message instead, once the last of them is done (or the answer wait
//! ends). On the interop benchmark's mass reconnect this cut the messages to the phones by a
//! quarter and their CPU by a sixth. With no other sync running a push goes out at once.
//!
//! For the same reason an answer, while other syncs run, goes out at once but without the
//! changes the client lacks: its heads, needs and bloom filter make the client send what it
//! has, and the changes wait as a push would, to go out with what the others commit (in a
//! mass reconnect a phone otherwise took each case whole twice: once in the answer to its
//! first message, once with the other phones' changes).
//!
//! Holding for other syncs ends early for a case once every connection that has it open has
//! given it all its changes (the heads its client last sent are all held): nothing more is
//! coming for that case, so its clients can take it while the uploads of other cases go on.
//!
//! This reaches the connections of this process. Changes committed through other instances on
//! the same database are announced by the database, and each instance reads the document and
//! calls [`RepoHub::document_changed`] ([`super::remote`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use doorstep_sync_core::{CaseFile, ChangeHash, PeerState};
use rand::RngCore;
use tokio::sync::{Notify, mpsc};

use super::protocol::{self, Message, SyncFields};
use crate::doc_cache::DocumentCache;
use crate::storage::heads_key;
use crate::sync::Replier;

/// What a connection's writer sends, in order.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Frame(Vec<u8>),
    /// A close frame with its code and reason, then nothing more.
    Close(u16, String),
}

/// The queue of one connection's outgoing frames. Bounded: a client that stops reading is
/// disconnected rather than left to fill the server's memory.
#[derive(Debug)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    /// The client's peer id: the `targetId` of everything sent to it.
    pub client_peer_id: String,
    overflowed: AtomicBool,
    /// Woken when a frame could not be queued.
    pub overflow: Notify,
}

impl Outbox {
    pub fn new(tx: mpsc::Sender<Outgoing>, client_peer_id: String) -> Outbox {
        Outbox {
            tx,
            client_peer_id,
            overflowed: AtomicBool::new(false),
            overflow: Notify::new(),
        }
    }

    /// Queues a frame without waiting. False when the queue is full (the connection is then
    /// closed) or already closed.
    pub fn push(&self, frame: Vec<u8>) -> bool {
        match self.tx.try_send(Outgoing::Frame(frame)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflowed.store(true, Ordering::Relaxed);
                self.overflow.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Queues a frame, waiting for room (for the few frames a connection sends when closing).
    pub async fn send(&self, item: Outgoing) -> bool {
        self.tx.send(item).await.is_ok()
    }
}

/// One connection's interest in one document.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub connection: u64,
    pub case_id: String,
    pub document_id: String,
    /// None until the connection's first message for the document has been read with the
    /// document; only then does the server know what the client has.
    pub peer: Mutex<Option<PeerState>>,
    pub outbox: Arc<Outbox>,
    /// A push carrying changes went out and the client has not spoken of the document since.
    /// Further pushes wait for its answer, and then go out as one message: a client applies
    /// one message of many changes at a fraction of the cost of many small ones (Automerge
    /// rewrites the document's columns for each), and answers fewer. Changed only under the
    /// `peer` lock.
    awaiting_answer: AtomicBool,
    held_back: Mutex<HeldBack>,
}

/// A push that waits for the client's answer.
#[derive(Debug, Default)]
struct HeldBack {
    /// The heads of the newest version whose push waits; None when none waits.
    heads: Option<Vec<ChangeHash>>,
    /// Counts the waits, so that the timer of one that ended does not cut a later one short.
    wait: u64,
}

impl Subscription {
    pub fn new(
        connection: u64,
        case_id: String,
        document_id: String,
        outbox: Arc<Outbox>,
    ) -> Subscription {
        Subscription {
            connection,
            case_id,
            document_id,
            peer: Mutex::new(None),
            outbox,
            awaiting_answer: AtomicBool::new(false),
            held_back: Mutex::new(HeldBack::default()),
        }
    }

    pub fn peer(&self) -> MutexGuard<'_, Option<PeerState>> {
        self.peer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The client sent a message for the document (call under the `peer` lock): the reply to
    /// it carries whatever waited.
    pub fn client_spoke(&self) {
        self.awaiting_answer.store(false, Ordering::Relaxed);
    }

    /// Whether a push waits.
    pub fn holds_back(&self) -> bool {
        lock(&self.held_back).heads.is_some()
    }

    /// Whether a push waits for other syncs only (the client answered the last one).
    fn holds_back_for_syncs(&self) -> bool {
        !self.awaiting_answer.load(Ordering::Relaxed) && self.holds_back()
    }
}

/// What a message [`RepoHub::send_sync`] generates is to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sending {
    /// Another client's changes, committed.
    Push,
    /// The answer to the client's messages for the document, and whether they brought
    /// changes.
    Answer { brought_changes: bool },
    /// A push or answer that waited, going out now: it never waits again.
    Release,
}

/// Something a connection must act on that did not come from its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    /// The device or its user was revoked: close.
    Revoked,
    /// The user's allocations changed: drop documents no longer allocated.
    AllocationsChanged,
    /// A push to this case waited the longest for the client's answer, or the syncs running
    /// alongside it have ended: send it now.
    SendHeldBack { case_id: String },
}

#[derive(Debug)]
struct ConnectionEntry {
    device_id: String,
    user_id: String,
    control: mpsc::UnboundedSender<Control>,
}

/// Shared by every WebSocket connection of this process (in the app state).
#[derive(Debug)]
pub struct RepoHub {
    peer_id: String,
    storage_id: String,
    subscriptions: Mutex<HashMap<String, Vec<Arc<Subscription>>>>,
    connections: Mutex<HashMap<u64, ConnectionEntry>>,
    next_connection: AtomicU64,
    /// How long pushes wait for a client's answer to the last push that carried changes
    /// before they go out anyway (should the answer never come: a client that already held
    /// those changes has nothing to say).
    answer_wait: Duration,
    /// WebSocket syncs waiting for or holding a turn (see [`SyncingGuard`]).
    syncing: AtomicUsize,
}

/// Counts one WebSocket sync from before it waits for its turn until it has committed and
/// pushed; the last one to end sends the pushes that waited for the syncs.
#[derive(Debug)]
pub(crate) struct SyncingGuard(Arc<RepoHub>);

impl Drop for SyncingGuard {
    fn drop(&mut self) {
        if self.0.syncing.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.send_held_for_syncs();
        }
    }
}

/// A new peer id for this process: it travels in every message to and from each client, so it
/// is kept short (`doorstep-` and 64 random bits in base58, 20 characters at most).
fn new_peer_id() -> String {
    let mut random = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut random);
    format!("doorstep-{}", bs58::encode(random).into_string())
}

/// Whether each of `subscribers` is known to have given the document (`replier`) every change
/// it has: the heads its client last sent are all held.
fn all_changes_given(subscribers: &[Arc<Subscription>], replier: &mut Replier<'_>) -> bool {
    subscribers.iter().all(|subscription| {
        let heads = subscription
            .peer()
            .as_ref()
            .and_then(|peer| peer.their_heads().map(<[ChangeHash]>::to_vec));
        heads.is_some_and(|heads| replier.contains_heads(&heads))
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the maps whole: a panic elsewhere cannot tear them.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RepoHub {
    /// `storage_id` names the server's storage: the same for every instance on one database,
    /// so that a client that keeps sync states reuses them whichever instance it reaches.
    pub fn new(storage_id: String, answer_wait: Duration) -> RepoHub {
        RepoHub {
            peer_id: new_peer_id(),
            storage_id,
            subscriptions: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(1),
            answer_wait,
            syncing: AtomicUsize::new(0),
        }
    }

    /// This process's peer id in the protocol (it changes on every start, as peer ids do).
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    pub fn storage_id(&self) -> &str {
        &self.storage_id
    }

    /// Connections open now.
    pub fn connection_count(&self) -> usize {
        lock(&self.connections).len()
    }

    /// (connection, document) pairs open now.
    pub fn subscription_count(&self) -> usize {
        lock(&self.subscriptions).values().map(Vec::len).sum()
    }

    pub(crate) fn register(
        &self,
        device_id: &str,
        user_id: &str,
    ) -> (u64, mpsc::UnboundedReceiver<Control>) {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.connections).insert(
            id,
            ConnectionEntry {
                device_id: device_id.to_string(),
                user_id: user_id.to_string(),
                control: tx,
            },
        );
        (id, rx)
    }

    pub(crate) fn deregister(&self, connection: u64) {
        lock(&self.connections).remove(&connection);
    }

    fn tell(&self, control: Control, matches: impl Fn(&ConnectionEntry) -> bool) {
        for entry in lock(&self.connections).values().filter(|e| matches(e)) {
            let _ = entry.control.send(control.clone());
        }
    }

    /// Closes the connections of a revoked device.
    pub fn device_revoked(&self, device_id: &str) {
        self.tell(Control::Revoked, |e| e.device_id == device_id);
    }

    /// Closes the connections of every device of a revoked user.
    pub fn user_revoked(&self, user_id: &str) {
        self.tell(Control::Revoked, |e| e.user_id == user_id);
    }

    /// Makes the user's connections drop documents no longer allocated to them.
    pub fn allocations_changed(&self, user_id: &str) {
        self.tell(Control::AllocationsChanged, |e| e.user_id == user_id);
    }

    /// A WebSocket sync is about to wait for its turn: counted until the guard drops.
    pub(crate) fn syncing(self: &Arc<Self>) -> SyncingGuard {
        self.syncing.fetch_add(1, Ordering::SeqCst);
        SyncingGuard(Arc::clone(self))
    }

    /// Tells each connection whose push waited only for other syncs (its client answered the
    /// last one) to send it.
    fn send_held_for_syncs(&self) {
        let held: Vec<(u64, String)> = lock(&self.subscriptions)
            .values()
            .flatten()
            .filter(|s| s.holds_back_for_syncs())
            .map(|s| (s.connection, s.case_id.clone()))
            .collect();
        if held.is_empty() {
            return;
        }
        let connections = lock(&self.connections);
        for (connection, case_id) in held {
            if let Some(entry) = connections.get(&connection) {
                let _ = entry.control.send(Control::SendHeldBack { case_id });
            }
        }
    }

    pub(crate) fn subscribe(&self, subscription: Arc<Subscription>) {
        lock(&self.subscriptions)
            .entry(subscription.case_id.clone())
            .or_default()
            .push(subscription);
    }

    pub(crate) fn unsubscribe(&self, case_id: &str, connection: u64) {
        let mut subscriptions = lock(&self.subscriptions);
        if let Some(list) = subscriptions.get_mut(case_id) {
            list.retain(|s| s.connection != connection);
            if list.is_empty() {
                subscriptions.remove(case_id);
            }
        }
    }

    fn subscribers(&self, case_id: &str) -> Vec<Arc<Subscription>> {
        lock(&self.subscriptions)
            .get(case_id)
            .cloned()
            .unwrap_or_default()
    }

    pub fn has_subscribers(&self, case_id: &str) -> bool {
        lock(&self.subscriptions).contains_key(case_id)
    }

    /// The cases some connection has open.
    pub fn open_cases(&self) -> Vec<String> {
        lock(&self.subscriptions).keys().cloned().collect()
    }

    /// Generates and queues the next sync message of `subscription` from `replier`
    /// (committed state only). While `others_syncing`, a push waits, and so does an answer to
    /// messages that brought changes (the client has sent what it had, and waits); an answer
    /// to a client that has changes this server lacks goes out at once without the changes
    /// the client lacks, which then wait likewise. A push also waits while the client has not
    /// answered the last push that carried changes. CPU work: call it off the async workers.
    pub(crate) fn send_sync(
        self: &Arc<Self>,
        subscription: &Arc<Subscription>,
        replier: &mut Replier<'_>,
        sending: Sending,
        others_syncing: bool,
    ) {
        let mut peer = subscription.peer();
        let Some(peer) = peer.as_mut() else {
            // Not yet read with the document: its first exchange will send what is current.
            return;
        };
        // Committed versions of a document form one line (each write checks the heads it
        // read), but their pushes run concurrently and may arrive here out of order. A sync
        // state must only ever see its document move forward: a version older than the one
        // this connection was last sent from is skipped (the newer one has been, or will be,
        // pushed).
        if !replier.contains_heads(peer.last_sent_heads()) {
            return;
        }
        let mut held_back = lock(&subscription.held_back);
        let waits = match sending {
            Sending::Push => others_syncing || subscription.awaiting_answer.load(Ordering::Relaxed),
            Sending::Answer { brought_changes } => others_syncing && brought_changes,
            Sending::Release => false,
        };
        if waits {
            self.hold_back(subscription, &mut held_back, replier);
            return;
        }
        // An answer read from a version older than the one held back (its document was read
        // before that commit) does not carry it: it stays held, and goes out when the wait
        // ends.
        if held_back
            .heads
            .as_ref()
            .is_some_and(|heads| replier.contains_heads(heads))
        {
            held_back.heads = None;
        }
        let in_flight = peer.changes_in_flight();
        let (data, held) = if others_syncing && matches!(sending, Sending::Answer { .. }) {
            replier.generate_asking_first(peer)
        } else {
            (replier.generate(peer), false)
        };
        if held {
            self.hold_back(subscription, &mut held_back, replier);
        }
        drop(held_back);
        if let Some(data) = data {
            if peer.changes_in_flight() > in_flight {
                subscription.awaiting_answer.store(true, Ordering::Relaxed);
            }
            let frame = protocol::encode(&Message::Sync(SyncFields {
                sender_id: &self.peer_id,
                target_id: &subscription.outbox.client_peer_id,
                document_id: &subscription.document_id,
                data: &data,
            }));
            subscription.outbox.push(frame);
        }
    }

    /// Holds back what `replier` would send the subscription until the client answers, the
    /// syncs running alongside end, or the answer wait ends.
    fn hold_back(
        self: &Arc<Self>,
        subscription: &Arc<Subscription>,
        held_back: &mut HeldBack,
        replier: &mut Replier<'_>,
    ) {
        match held_back.heads.as_ref() {
            None => {
                held_back.heads = Some(replier.heads());
                held_back.wait += 1;
                self.send_held_back_later(subscription, held_back.wait);
            }
            // Pushes may arrive out of order: only a newer version replaces the one held.
            Some(heads) if replier.contains_heads(heads) => {
                held_back.heads = Some(replier.heads());
            }
            Some(_) => {}
        }
    }

    /// Whether WebSocket syncs other than the caller's `own` (those whose messages it
    /// answers) wait for or hold a turn.
    pub(crate) fn others_syncing(&self, own: usize) -> bool {
        self.syncing.load(Ordering::SeqCst) > own
    }

    /// Sends the committed document (`replier`) to every connection that has it open: the
    /// answer to the messages of the `answering` connections (WebSocket syncs, each holding a
    /// turn or waiting for one, and counted), pushes to the others. CPU work: call it off the
    /// async workers.
    pub(crate) fn fan_out(
        self: &Arc<Self>,
        case_id: &str,
        replier: &mut Replier<'_>,
        answering: &[u64],
    ) {
        let subscribers = self.subscribers(case_id);
        // Once every connection that has the case open has given it all its changes, nothing
        // more is coming for it from the syncs that run: it goes out now.
        let others_syncing =
            self.others_syncing(answering.len()) && !all_changes_given(&subscribers, replier);
        for subscription in subscribers {
            let sending = if answering.contains(&subscription.connection) {
                Sending::Answer {
                    brought_changes: true,
                }
            } else {
                Sending::Push
            };
            self.send_sync(&subscription, replier, sending, others_syncing);
        }
    }

    /// After the answer wait, tells the connection to send the push held back in `wait`, if
    /// it still waits.
    fn send_held_back_later(self: &Arc<Self>, subscription: &Arc<Subscription>, wait: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Outside the runtime (never in the server): send at the next push or answer.
            return;
        };
        let hub = Arc::downgrade(self);
        let subscription = Arc::downgrade(subscription);
        let answer_wait = self.answer_wait;
        runtime.spawn(async move {
            tokio::time::sleep(answer_wait).await;
            let (Some(hub), Some(subscription)) = (hub.upgrade(), subscription.upgrade()) else {
                return;
            };
            let still = {
                let held_back = lock(&subscription.held_back);
                held_back.wait == wait && held_back.heads.is_some()
            };
            if still {
                let control = Control::SendHeldBack {
                    case_id: subscription.case_id.clone(),
                };
                if let Some(entry) = lock(&hub.connections).get(&subscription.connection) {
                    let _ = entry.control.send(control);
                }
            }
        });
    }

    /// A document changed and `file` holds it as committed: pushes it to the connections that
    /// have it open, then returns it to the cache. Used by the HTTP sync and staff edits.
    pub async fn document_changed(
        self: &Arc<Self>,
        documents: &Arc<DocumentCache>,
        case_id: String,
        mut file: CaseFile,
    ) {
        if !self.has_subscribers(&case_id) {
            let heads = heads_key(&file.heads());
            documents.put(case_id, heads, file);
            return;
        }
        let hub = Arc::clone(self);
        let documents = Arc::clone(documents);
        let pushed = tokio::task::spawn_blocking(move || {
            hub.fan_out(&case_id, &mut Replier::Document(&mut file), &[]);
            let heads = heads_key(&file.heads());
            documents.put(case_id, heads, file);
        })
        .await;
        if let Err(e) = pushed {
            tracing::error!(error = %e, "pushing a changed document failed");
        }
    }

    /// Relays an ephemeral message to the other connections that have the document open.
    pub(crate) fn relay_ephemeral(
        &self,
        case_id: &str,
        from: u64,
        sender_id: &str,
        count: u64,
        session_id: &str,
        data: &[u8],
    ) {
        for subscription in self.subscribers(case_id) {
            if subscription.connection == from {
                continue;
            }
            let frame = protocol::encode(&Message::Ephemeral {
                sender_id,
                target_id: &subscription.outbox.client_peer_id,
                count,
                session_id,
                document_id: &subscription.document_id,
                data,
            });
            subscription.outbox.push(frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use doorstep_sync_core::testing;

    use super::*;

    /// A hub with one connection that has `case_id` open, as a client that has said nothing
    /// yet: its outbox, and the connection's controls.
    fn one_subscriber(
        case_id: &str,
    ) -> (
        Arc<RepoHub>,
        mpsc::Receiver<Outgoing>,
        mpsc::UnboundedReceiver<Control>,
    ) {
        let hub = Arc::new(RepoHub::new("storage".into(), Duration::from_secs(3600)));
        let (subscription, outbox, controls) = subscriber(&hub, case_id, 1);
        *subscription.peer() = Some(PeerState::new());
        (hub, outbox, controls)
    }

    /// Connection `n` of `hub`, with `case_id` open and not yet read with the document: its
    /// subscription, outbox and controls.
    fn subscriber(
        hub: &Arc<RepoHub>,
        case_id: &str,
        n: u32,
    ) -> (
        Arc<Subscription>,
        mpsc::Receiver<Outgoing>,
        mpsc::UnboundedReceiver<Control>,
    ) {
        let (connection, controls) = hub.register(&format!("device-{n}"), &format!("user-{n}"));
        let (tx, outbox) = mpsc::channel(16);
        let subscription = Arc::new(Subscription::new(
            connection,
            case_id.into(),
            "document-1".into(),
            Arc::new(Outbox::new(tx, format!("client-{n}"))),
        ));
        hub.subscribe(Arc::clone(&subscription));
        (subscription, outbox, controls)
    }

    /// The change graph of `file` as stored.
    fn graph_of(file: &mut CaseFile) -> doorstep_sync_core::ChangeGraph {
        doorstep_sync_core::ChangeGraph::from_changes(
            file.doc_mut()
                .get_changes(&[])
                .into_iter()
                .map(|mut c| c.bytes().to_vec()),
        )
        .expect("a whole document")
    }

    #[tokio::test]
    async fn a_push_waits_for_the_syncs_running_alongside_and_is_released_by_the_last() {
        let case_id = "case-held-for-syncs";
        let mut file = testing::new_case(case_id);
        let (hub, mut outbox, mut controls) = one_subscriber(case_id);

        let first = hub.syncing();
        let second = hub.syncing();
        hub.fan_out(case_id, &mut Replier::Document(&mut file), &[]);
        assert!(outbox.try_recv().is_err(), "pushed while other syncs ran");

        drop(first);
        assert!(
            controls.try_recv().is_err(),
            "released while a sync still ran"
        );
        drop(second);
        assert_eq!(
            controls.try_recv().ok(),
            Some(Control::SendHeldBack {
                case_id: case_id.into()
            })
        );

        // With nothing else running, a push goes out at once (and carries what waited).
        hub.fan_out(case_id, &mut Replier::Document(&mut file), &[]);
        assert!(matches!(outbox.try_recv(), Ok(Outgoing::Frame(_))));
        assert!(controls.try_recv().is_err());
    }

    #[tokio::test]
    async fn the_sync_that_pushes_does_not_hold_back_its_own_pushes() {
        let case_id = "case-own-sync";
        let mut file = testing::new_case(case_id);
        let (hub, mut outbox, _controls) = one_subscriber(case_id);

        // The committing WebSocket sync is counted; it answers connection 999 (not this one).
        let own = hub.syncing();
        hub.fan_out(case_id, &mut Replier::Document(&mut file), &[999]);
        assert!(matches!(outbox.try_recv(), Ok(Outgoing::Frame(_))));
        drop(own);
    }

    /// While other syncs run, a case goes out as soon as every connection that has it open
    /// has given it all its changes: nothing more is coming for it.
    #[tokio::test]
    async fn a_case_goes_out_while_others_sync_once_all_who_have_it_open_gave_their_changes() {
        let case_id = "case-all-given";
        // A client's first message names its changes in a bloom filter, which matches a change
        // it lacks about once in a hundred (record ids are random); the server then takes the
        // visit for one the client holds and leaves it out. Such a case is set up again.
        let (mut file, hellos) = (0..5)
            .find_map(|_| {
                let mut file = testing::new_case(case_id);
                let mut clients: Vec<CaseFile> = (1..=2)
                    .map(|n| {
                        let author = testing::author(&format!("u{n}"), &format!("d{n}"));
                        testing::replica(&mut file, author, testing::actor(n)).unwrap()
                    })
                    .collect();
                let at = testing::at(1);
                file.add(&testing::visit("s", at, 40), at).unwrap();
                let visit = file.heads()[0];
                let hellos: Vec<Vec<u8>> = clients
                    .iter_mut()
                    .map(|client| client.generate_sync_message(&mut PeerState::new()).unwrap())
                    .collect();
                let matched = hellos.iter().any(|hello| {
                    let hello = automerge::sync::Message::decode(hello).unwrap();
                    hello
                        .have
                        .iter()
                        .any(|have| have.bloom.contains_hash(&visit))
                });
                (!matched).then_some((file, hellos))
            })
            .expect("five bloom filter false positives in a row");
        let graph = graph_of(&mut file);
        let stored = file.save();
        let (hub, mut outbox, _controls) = one_subscriber(case_id);
        let first = Arc::clone(&hub.subscribers(case_id)[0]);
        let (second, _second_outbox, _) = subscriber(&hub, case_id, 2);
        let _other = hub.syncing();
        let hello = |subscription: &Subscription, message: &[u8]| {
            let mut peer = subscription.peer();
            let peer = peer.get_or_insert_with(PeerState::new);
            assert!(graph.receive_sync_message(peer, message).unwrap());
        };
        let mut replier = Replier::Graph {
            graph: &graph,
            stored: &stored,
        };

        // The first has said what it holds; the second has not spoken: the push waits.
        hello(&first, &hellos[0]);
        hub.fan_out(case_id, &mut replier, &[]);
        assert!(outbox.try_recv().is_err(), "pushed before all had given");

        // Both have: it goes out though another sync still runs.
        hello(&second, &hellos[1]);
        hub.fan_out(case_id, &mut replier, &[]);
        let pushed = sync_data(outbox.try_recv().expect("pushed once all had given"));
        assert!(doorstep_sync_core::brings_changes(&pushed));
    }

    /// The data of the sync message in an outgoing frame.
    fn sync_data(outgoing: Outgoing) -> Vec<u8> {
        let Outgoing::Frame(frame) = outgoing else {
            panic!("a close, not a frame");
        };
        match protocol::decode(&frame).expect("a protocol message") {
            Message::Sync(fields) => fields.data.to_vec(),
            other => panic!("expected sync, got {}", other.kind()),
        }
    }

    /// A mass reconnect: a phone that recorded visits offline says hello while other syncs
    /// run. It is asked for its visits at once, without the case's new changes; the answer to
    /// its visits waits; the syncs end, and one message brings it everything.
    #[tokio::test]
    async fn while_others_sync_a_phone_is_asked_first_and_answered_when_they_end() {
        let case_id = "case-answer-held";
        let mut file = testing::new_case(case_id);
        let mut client =
            testing::replica(&mut file, testing::author("u", "d"), testing::actor(5)).unwrap();
        let at = testing::at(1);
        file.add(&testing::visit("s", at, 40), at).unwrap();
        client.add(&testing::visit("u", at, 40), at).unwrap();
        let mut graph = graph_of(&mut file);
        let mut stored = file.save();
        let (hub, mut outbox, mut controls) = one_subscriber(case_id);
        let subscription = Arc::clone(&hub.subscribers(case_id)[0]);
        // Another phone has the case open and has not given its changes yet.
        let _silent = subscriber(&hub, case_id, 2);
        let mut client_state = PeerState::new();
        let other = hub.syncing();

        // Hello: asked for its visit, at once, with nothing of the server's.
        let own = hub.syncing();
        let hello = client.generate_sync_message(&mut client_state).unwrap();
        let peer = || subscription.peer();
        assert!(
            graph
                .receive_sync_message(peer().as_mut().unwrap(), &hello)
                .unwrap()
        );
        let mut replier = Replier::Graph {
            graph: &graph,
            stored: &stored,
        };
        let answer = Sending::Answer {
            brought_changes: false,
        };
        hub.send_sync(&subscription, &mut replier, answer, hub.others_syncing(1));
        let asked = sync_data(outbox.try_recv().expect("answered at once"));
        assert!(!doorstep_sync_core::brings_changes(&asked), "changes sent");
        drop(own);

        // Its visit arrives; the answer waits while the other sync runs.
        let own = hub.syncing();
        client
            .receive_sync_message(&mut client_state, &asked)
            .unwrap();
        let visit = client.generate_sync_message(&mut client_state).unwrap();
        let applied = file
            .receive_sync_message_checked(
                peer().as_mut().unwrap(),
                &visit,
                &testing::author("u", "d"),
                |_| true,
            )
            .unwrap();
        assert_eq!(applied.len(), 1);
        for change in applied {
            stored.extend_from_slice(&change.bytes);
            graph.add(change.hash, &change.deps, change.bytes).unwrap();
        }
        let mut replier = Replier::Graph {
            graph: &graph,
            stored: &stored,
        };
        hub.fan_out(case_id, &mut replier, &[subscription.connection]);
        assert!(outbox.try_recv().is_err(), "answered while a sync ran");
        drop(own);
        assert!(controls.try_recv().is_err(), "released while a sync ran");
        drop(other);
        assert_eq!(
            controls.try_recv().ok(),
            Some(Control::SendHeldBack {
                case_id: case_id.into()
            })
        );

        // Released: one message brings the server's visit.
        hub.send_sync(&subscription, &mut replier, Sending::Release, false);
        let everything = sync_data(outbox.try_recv().expect("the held answer"));
        client
            .receive_sync_message(&mut client_state, &everything)
            .unwrap();
        assert_eq!(client.heads(), file.heads());
    }

    #[test]
    fn each_hub_has_its_own_short_peer_id() {
        let ids: Vec<String> = (0..50)
            .map(|_| {
                RepoHub::new("storage".into(), Duration::from_secs(1))
                    .peer_id()
                    .into()
            })
            .collect();
        for id in &ids {
            assert!(id.starts_with("doorstep-"), "{id}");
            assert!(id.len() <= 20, "{id} is {} bytes", id.len());
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
