//! Sync sessions over Automerge's sync protocol, sans-IO: bytes in, bytes out. The phone and
//! the server keep one [`PeerState`] per (device, document) so that a reconnect sends only
//! what the other side lacks.
//!
//! ```
//! use doorstep_sync_core::{Author, CaseFile, PeerState, testing};
//! let mut server = testing::new_case("case-1");
//! let mut phone = CaseFile::empty(testing::author("u1", "phone-1"), testing::actor(1));
//! let (mut at_server, mut at_phone) = (PeerState::new(), PeerState::new());
//! loop {
//!     let to_phone = server.generate_sync_message(&mut at_server);
//!     if let Some(message) = &to_phone {
//!         phone.receive_sync_message(&mut at_phone, message).unwrap();
//!     }
//!     let to_server = phone.generate_sync_message(&mut at_phone);
//!     if let Some(message) = &to_server {
//!         server.receive_sync_message(&mut at_server, message).unwrap();
//!     }
//!     if to_phone.is_none() && to_server.is_none() {
//!         break;
//!     }
//! }
//! assert_eq!(server.heads(), phone.heads());
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use automerge::{
    ActorId, AutoCommit, Automerge, AutomergeError, Change, ChangeHash, ObjId, PatchLog, ROOT,
    ReadDoc,
    sync::{ChunkList, Message, MessageVersion, State, SyncDoc},
};

use crate::case_file::{Author, CaseFile};
use crate::error::{CaseFileError, Problem, Result, ValidationErrors};
use crate::graph::{CHANGE_CHUNK, DOCUMENT_CHUNK, split_chunks, unheard};
use crate::records::Collection;
use crate::scope::Scope;
use crate::value::{map_at_version, str_at, str_at_version};

/// What one side knows of the other's document, kept between sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerState {
    pub(crate) state: State,
    /// Changes from the peer were applied since this side last sent a message: the next
    /// message must go, to tell the peer they arrived (see [`PeerState::received`]). Not
    /// persisted: a session that ends owes nothing.
    acknowledgement_owed: bool,
}

impl PeerState {
    pub fn new() -> Self {
        PeerState::default()
    }

    /// The persistent part of the state (what the peer is known to have).
    pub fn encode(&self) -> Vec<u8> {
        self.state.encode()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        State::decode(bytes)
            .map(|state| PeerState {
                state,
                acknowledgement_owed: false,
            })
            .map_err(|e| CaseFileError::CorruptSyncState(e.to_string()))
    }

    /// Call after each receive of one message (`last_sent_before`: the heads last sent, read
    /// before it), with whether it applied changes. Automerge takes a message without
    /// changes at this side's heads as the peer holding everything, and records those heads
    /// as sent, so that nothing more goes out. That holds when each message is answered
    /// before the next is read. Read several in a row (a batch of frames, an answer held
    /// back), a message with changes and then one without at the new heads would leave the
    /// peer never told that its changes arrived (its sync state keeps them in flight, and
    /// it waits): while an acknowledgement is owed, the heads last sent stay as they were, so
    /// that the next message goes.
    pub(crate) fn received(&mut self, last_sent_before: &[ChangeHash], applied_changes: bool) {
        if applied_changes {
            self.acknowledgement_owed = true;
        } else if self.acknowledgement_owed {
            self.state.last_sent_heads = last_sent_before.to_vec();
        }
    }

    /// Call when a message to the peer was generated: it carries this side's heads, which
    /// acknowledges whatever the peer sent before.
    pub(crate) fn sent(&mut self) {
        self.acknowledgement_owed = false;
    }

    /// Whether changes from the peer were applied since the last message to it.
    pub(crate) fn acknowledgement_owed(&self) -> bool {
        self.acknowledgement_owed
    }

    /// The heads the peer is known to have, as far as this side knows.
    pub fn shared_heads(&self) -> &[ChangeHash] {
        &self.state.shared_heads
    }

    /// The heads the peer last said it has (None before its first message).
    pub fn their_heads(&self) -> Option<&[ChangeHash]> {
        self.state.their_heads.as_deref()
    }

    /// The heads of the document this side last generated a message from.
    pub fn last_sent_heads(&self) -> &[ChangeHash] {
        &self.state.last_sent_heads
    }

    /// How many changes this side has sent that the peer has not yet been seen to hold: it
    /// grows exactly when a generated message carries changes.
    pub fn changes_in_flight(&self) -> usize {
        self.state.sent_hashes.len()
    }
}

impl CaseFile {
    /// Whether this document holds back changes it received without their dependencies
    /// (Automerge applies them when the dependencies arrive; a save leaves them out).
    pub fn holds_back_changes(&mut self) -> bool {
        holds_back(&self.doc)
    }

    /// Whether this document holds every one of `heads` (it is the same version as the one
    /// they came from, or a later one).
    pub fn contains_heads(&mut self, heads: &[ChangeHash]) -> bool {
        heads
            .iter()
            .all(|hash| self.doc.get_change_meta_by_hash(hash).is_some())
    }
}

/// A change that a checked receive applied: its hash, the actor that made it, and its bytes
/// (an Automerge change chunk, what storage keeps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedChange {
    pub hash: ChangeHash,
    pub actor: ActorId,
    pub deps: Vec<ChangeHash>,
    pub bytes: Vec<u8>,
}

impl From<&mut Change> for AppliedChange {
    fn from(change: &mut Change) -> Self {
        AppliedChange {
            hash: change.hash(),
            actor: change.actor_id().clone(),
            deps: change.deps().to_vec(),
            bytes: change.bytes().to_vec(),
        }
    }
}

/// One device's message in uploads to one document received together (see
/// [`CaseFile::receive_uploads_checked`]): the device's peer state, its message, the device's
/// user and id, and which actors its changes may be made by.
pub struct Upload<'a> {
    pub peer: &'a mut PeerState,
    pub message: &'a [u8],
    pub sender: &'a Author,
    pub actor_allowed: &'a dyn Fn(&ActorId) -> bool,
}

impl std::fmt::Debug for Upload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("message_bytes", &self.message.len())
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

impl CaseFile {
    /// The next message for the peer, or None when there is nothing to send. As Automerge
    /// generates it, except that its changes go compressed, and that the first message of a
    /// session already carries the few changes made since the last one (see
    /// [`send_unasked`]).
    pub fn generate_sync_message(&mut self, peer: &mut PeerState) -> Option<Vec<u8>> {
        let unheard = unheard(&peer.state);
        let mut message = self.doc.sync().generate_sync_message(&mut peer.state)?;
        if unheard {
            send_unasked(&mut self.doc, &mut peer.state, &mut message);
        }
        peer.sent();
        compress_changes(&mut message.changes);
        Some(message.encode())
    }

    /// Applies a message from the peer. Corrupted or truncated bytes give an error and change
    /// nothing.
    pub fn receive_sync_message(&mut self, peer: &mut PeerState, message: &[u8]) -> Result<()> {
        let corrupt = |e: AutomergeError| CaseFileError::CorruptSyncMessage(e.to_string());
        let message = decode_message(message)?;
        let brings_document = starts_with_document(&message);
        let last_sent = peer.last_sent_heads().to_vec();
        let changes_before = self.doc.stats().num_changes;
        let message = if brings_document {
            match take_whole_document(&mut self.doc, &mut peer.state, message) {
                Ok(()) => {
                    // Loaded with changes applied after the save: see `take_whole_document`.
                    self.shrink_to_fit();
                    let applied = self.doc.stats().num_changes > changes_before;
                    peer.received(&last_sent, applied);
                    return Ok(());
                }
                Err(message) => message,
            }
        } else {
            message
        };
        receive_in_steps(&mut self.doc, &mut peer.state, message, false).map_err(corrupt)?;
        let changes_after = self.doc.stats().num_changes;
        peer.received(&last_sent, changes_after > changes_before);
        if (changes_after - changes_before) * SHRINK_AFTER_SHARE >= changes_after {
            self.shrink_to_fit();
        }
        hold_back_nothing_unasked(self, peer);
        Ok(())
    }

    /// Applies a message only if every change it brings was made by an actor that
    /// `actor_allowed` accepts, everything it adds is attributed to `sender` (see
    /// `check_attribution`) and the resulting document still validates; otherwise
    /// nothing changes, not even the peer state. This is what the server runs on a device's
    /// message, with the device's user and id as `sender`.
    pub fn receive_sync_message_checked(
        &mut self,
        peer: &mut PeerState,
        message: &[u8],
        sender: &Author,
        actor_allowed: impl Fn(&ActorId) -> bool,
    ) -> Result<Vec<AppliedChange>, RefusedSync> {
        let message = decode_message(message).map_err(RefusedSync::Invalid)?;
        let corrupt = |e: automerge::AutomergeError| {
            RefusedSync::Invalid(CaseFileError::CorruptSyncMessage(e.to_string()))
        };
        let mut trial_peer = peer.clone();
        let applied = if message.changes.is_empty() {
            // Heads, needs and haves only: the document cannot change.
            self.doc
                .sync()
                .receive_sync_message(&mut trial_peer.state, message)
                .map_err(corrupt)?;
            Vec::new()
        } else {
            // The changes are applied to the document itself and the checks look only at
            // what their operations touched; a refusal then rolls the document back. (A trial
            // copy would cost as much as the whole document on every message.)
            let before = self.doc.get_heads();
            let changes_before = self.doc.stats().num_changes;
            let received = receive_in_steps(&mut self.doc, &mut trial_peer.state, message, true)
                .map_err(corrupt);
            let outcome = received.and_then(|offered| {
                let applied = offered
                    .and_then(|offered| applied_from_offer(&self.doc, offered, changes_before));
                self.check_received(&before, applied, sender, &actor_allowed)
            });
            match outcome {
                Ok(applied) => applied,
                Err(refused) => {
                    self.roll_back(&before);
                    return Err(refused);
                }
            }
        };
        hold_back_nothing_unasked(self, &mut trial_peer);
        trial_peer.received(peer.last_sent_heads(), !applied.is_empty());
        *peer = trial_peer;
        Ok(applied)
    }

    /// Receives several devices' uploads to this document as [`receive_sync_message_checked`]
    /// receives each in turn, with the same checks, but with all their changes applied at
    /// once: Automerge applies one case's uploads from ten phones about three times faster in
    /// one apply than one at a time (one phone's new objects land between another's, so each
    /// upload splices its operations into the columns at many places; `cargo run --release
    /// -p doorstep-sync-core --example apply_batching`). Returns each upload's applied changes,
    /// with each peer state as its own receive leaves it; or None, with the document and every
    /// peer state untouched, where the uploads must be received one at a time: one would be
    /// refused (received alone, it says why) or leaves the document holding back changes, or
    /// receiving them together could leave a peer state other than receiving them in turn
    /// would.
    ///
    /// [`receive_sync_message_checked`]: CaseFile::receive_sync_message_checked
    pub fn receive_uploads_checked(
        &mut self,
        uploads: &mut [Upload<'_>],
    ) -> Option<Vec<Vec<AppliedChange>>> {
        let messages = uploads
            .iter()
            .map(|upload| decode_message(upload.message).ok())
            .collect::<Option<Vec<Message>>>()?;
        // Each upload's changes that the document lacks, each change once (a whole document,
        // what a phone sends in place of more than a third of the changes, read as the changes
        // of it that this one lacks).
        let before = self.doc.get_heads();
        let mut seen = BTreeSet::new();
        let mut brought: Vec<Vec<Change>> = Vec::with_capacity(messages.len());
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        for message in &messages {
            let lacked = Offer::read(&mut self.doc, &message.changes, true, true)?.lacked?;
            let changes: Vec<Change> = lacked
                .into_iter()
                .filter(|change| seen.insert(change.hash()))
                .collect();
            chunks.extend(changes.iter().map(|change| change.raw_bytes().to_vec()));
            brought.push(causal_order(changes));
        }
        let changes_before = self.doc.stats().num_changes;
        let outcome = self
            .apply_uploads(chunks, uploads, messages)
            .and_then(|peers| {
                let gained = self.doc.stats().num_changes - changes_before;
                let all = brought.iter().map(Vec::len).sum::<usize>() as u64;
                (gained == all && !holds_back(&self.doc)).then_some(peers)
            })
            .and_then(|peers| {
                self.check_uploads(&before, uploads, &mut brought)
                    .map(|applied| (peers, applied))
            });
        let Some((peers, applied)) = outcome else {
            self.roll_back(&before);
            return None;
        };
        for ((upload, mut peer), applied) in uploads.iter_mut().zip(peers).zip(&applied) {
            peer.received(upload.peer.last_sent_heads(), !applied.is_empty());
            *upload.peer = peer;
        }
        Some(applied)
    }

    /// The apply of [`CaseFile::receive_uploads_checked`]: every upload's new change `chunks`
    /// in one receive (in steps, as [`receive_in_steps`]), then each upload's message received
    /// by a copy of its peer state with its changes left out, since the document holds them
    /// now. Leaving them out changes what the receive does to the peer state only where the
    /// message's heads are not all known afterwards, or are the document's heads: then None.
    fn apply_uploads(
        &mut self,
        chunks: Vec<Vec<u8>>,
        uploads: &[Upload<'_>],
        messages: Vec<Message>,
    ) -> Option<Vec<PeerState>> {
        for step in chunks.chunks(CHANGES_PER_STEP) {
            let message = Message {
                heads: Vec::new(),
                need: Vec::new(),
                have: Vec::new(),
                changes: ChunkList::from(step.concat()),
                flags: None,
                version: MessageVersion::V1,
            };
            // A throwaway peer state: only the document's part of the receive is wanted.
            self.doc
                .sync()
                .receive_sync_message_log_patches(
                    &mut State::new(),
                    message,
                    &mut PatchLog::inactive(),
                )
                .ok()?;
        }
        let heads = self.doc.get_heads();
        let mut peers = Vec::with_capacity(uploads.len());
        for (upload, mut message) in uploads.iter().zip(messages) {
            if message.heads == heads || message.heads.iter().any(|h| lacks(&self.doc, h)) {
                return None;
            }
            message.changes = ChunkList::empty();
            let mut peer = upload.peer.clone();
            self.doc
                .sync()
                .receive_sync_message_log_patches(
                    &mut peer.state,
                    message,
                    &mut PatchLog::inactive(),
                )
                .ok()?;
            peers.push(peer);
        }
        Some(peers)
    }

    /// The checks of [`CaseFile::receive_uploads_checked`], on the document after it applied
    /// every upload's changes (`brought`, each upload's in causal order): those of a checked
    /// receive, with the parts any upload touched validated once, and each upload's changes
    /// made by actors it may use and attributed to its sender.
    fn check_uploads(
        &self,
        before: &[ChangeHash],
        uploads: &[Upload<'_>],
        brought: &mut [Vec<Change>],
    ) -> Option<Vec<Vec<AppliedChange>>> {
        let mut scopes = Vec::with_capacity(brought.len());
        let mut touched = Scope::default();
        for (upload, changes) in uploads.iter().zip(brought.iter()) {
            if !changes.iter().all(|c| (upload.actor_allowed)(c.actor_id())) {
                return None;
            }
            let scope = Scope::touched(self, changes.iter().map(Change::decode))?;
            touched.extend(&scope);
            scopes.push(scope);
        }
        self.validate_scope(&touched).ok()?;
        let earlier = self.records_at(before, &touched);
        self.check_none_removed(&earlier).ok()?;
        let actors: Vec<BTreeSet<&ActorId>> = brought
            .iter()
            .map(|changes| changes.iter().map(Change::actor_id).collect())
            .collect();
        for (i, (upload, scope)) in uploads.iter().zip(&scopes).enumerate() {
            let others: BTreeSet<&ActorId> = actors
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(_, set)| set.iter().copied())
                .collect();
            self.check_attribution(before, scope, &earlier, upload.sender, &actors[i], &others)
                .ok()?;
        }
        Some(
            brought
                .iter_mut()
                .map(|changes| changes.iter_mut().map(AppliedChange::from).collect())
                .collect(),
        )
    }

    /// The checks of a checked receive, on the document after it applied the changes made
    /// since `before` (`applied`, where the receive could tell them without the document).
    fn check_received(
        &mut self,
        before: &[ChangeHash],
        applied: Option<Vec<Change>>,
        sender: &Author,
        actor_allowed: &impl Fn(&ActorId) -> bool,
    ) -> Result<Vec<AppliedChange>, RefusedSync> {
        let mut changes = applied.unwrap_or_else(|| self.doc.get_changes(before));
        if let Some(foreign) = changes.iter().find(|c| !actor_allowed(c.actor_id())) {
            return Err(RefusedSync::ForeignActor(
                foreign.actor_id().to_hex_string(),
            ));
        }
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let applied: Vec<AppliedChange> = changes.iter_mut().map(AppliedChange::from).collect();
        let touched = Scope::touched(self, changes.iter().map(Change::decode));
        drop(changes);
        let scope = match touched {
            Some(scope) => scope,
            None => Scope::whole(self, Some(before)).map_err(RefusedSync::Invalid)?,
        };
        self.validate_scope(&scope).map_err(RefusedSync::Invalid)?;
        let earlier = self.records_at(before, &scope);
        self.check_none_removed(&earlier)
            .map_err(RefusedSync::Invalid)?;
        let actors: BTreeSet<&ActorId> = applied.iter().map(|c| &c.actor).collect();
        self.check_attribution(before, &scope, &earlier, sender, &actors, &BTreeSet::new())
            .map_err(RefusedSync::Misattributed)?;
        Ok(applied)
    }

    /// The records of `scope` that were there at the heads `before`, with their objects then:
    /// looked up once for both checks that need them, each collection's map once (reading an
    /// earlier version is the costly part).
    fn records_at<'s>(
        &self,
        before: &[ChangeHash],
        scope: &'s Scope,
    ) -> BTreeMap<&'s (Collection, String), ObjId> {
        let then = Some(before);
        let mut collections: BTreeMap<Collection, Option<ObjId>> = BTreeMap::new();
        let mut earlier = BTreeMap::new();
        for record in &scope.records {
            let (collection, id) = record;
            let records = collections
                .entry(*collection)
                .or_insert_with(|| map_at_version(&self.doc, &ROOT, collection.key(), then));
            if let Some(obj) = records
                .as_ref()
                .and_then(|records| map_at_version(&self.doc, records, id, then))
            {
                earlier.insert(record, obj);
            }
        }
        earlier
    }

    /// Records are never removed (the document's history would keep them, but every reader
    /// would lose them): refuses changes that removed one of the `earlier` records (those of
    /// the scope that were there before the changes).
    fn check_none_removed(
        &self,
        earlier: &BTreeMap<&(Collection, String), ObjId>,
    ) -> crate::Result<()> {
        let mut errors = ValidationErrors::default();
        for (collection, id) in earlier.keys() {
            if self.record_obj(*collection, id).is_err() {
                errors.push(
                    format!("{collection}.{id}"),
                    Problem::Invalid {
                        detail: "a record cannot be removed".into(),
                    },
                );
            }
        }
        errors
            .into_result()
            .map_err(|e| CaseFileError::validation("case file", e))
    }

    /// Puts the document back as it was at `before` (its own heads then), keeping its actor.
    fn roll_back(&mut self, before: &[ChangeHash]) {
        if self.doc.get_heads() == before {
            return;
        }
        let actor = self.doc.get_actor().clone();
        match self.doc.fork_at(before) {
            Ok(doc) => self.doc = doc.with_actor(actor),
            // Unreachable: `before` were this document's own heads.
            Err(e) => unreachable!("a document lost its own heads: {e}"),
        }
    }
}

impl CaseFile {
    /// Checks that what changed since `before` (in the parts of `scope`) is attributed to
    /// `sender`, the device that sent it: a new record's author, a new finalisation, amendment
    /// or resolution's `by`, and a new or changed entry in `actors` (which must also name one
    /// of the `actors` that made the changes). An existing record's author may not change. So
    /// a record can only ever name the person whose device wrote it. Entries in `actors` for
    /// the actors of other uploads received with these changes (`others`, not among `actors`)
    /// are left to those uploads' own checks.
    pub(crate) fn check_attribution(
        &self,
        before: &[ChangeHash],
        scope: &Scope,
        earlier: &BTreeMap<&(Collection, String), ObjId>,
        sender: &Author,
        actors: &BTreeSet<&ActorId>,
        others: &BTreeSet<&ActorId>,
    ) -> Result<(), String> {
        let doc = &self.doc;
        let then = Some(before);
        let named = |what: &str, by: &Author| {
            if by == sender {
                Ok(())
            } else {
                Err(format!(
                    "{what} names {}/{}, not the sending device's user and device",
                    by.user_id, by.device_id
                ))
            }
        };
        let author_of = |json: Option<String>| -> Option<Author> {
            json.and_then(|s| serde_json::from_str(&s).ok())
        };
        if scope.actors {
            let now = self.root_map("actors").map_err(|e| e.to_string())?;
            let old = map_at_version(doc, &ROOT, "actors", then);
            let hex = |set: &BTreeSet<&ActorId>| -> BTreeSet<String> {
                set.iter().map(|a| a.to_hex_string()).collect()
            };
            let (own, others) = (hex(actors), hex(others));
            for actor in doc.keys(&now) {
                if others.contains(&actor) && !own.contains(&actor) {
                    continue;
                }
                let Some(author) = author_of(str_at(doc, &now, &actor)) else {
                    continue;
                };
                let known = old
                    .as_ref()
                    .and_then(|old| author_of(str_at_version(doc, old, &actor, then)));
                if known.as_ref() == Some(&author) {
                    continue;
                }
                named(&format!("actor {actor}"), &author)?;
                if !own.contains(&actor) {
                    return Err(format!(
                        "actor {actor} is registered by a change it did not make"
                    ));
                }
            }
        }
        for record in &scope.records {
            let (collection, id) = record;
            let what = format!("{collection}/{id}");
            let Ok(new_obj) = self.record_obj(*collection, id) else {
                continue; // removed
            };
            let Some(new) = self.record_stamp(&new_obj, None) else {
                continue; // no meta: the validation refuses it
            };
            let old = earlier
                .get(record)
                .and_then(|old_obj| self.record_stamp(old_obj, then));
            if old.as_ref() == Some(&new) {
                continue; // untouched as far as attribution goes (an edit of the body)
            }
            let author = Author {
                user_id: new.user_id.clone().unwrap_or_default(),
                device_id: new.device_id.clone().unwrap_or_default(),
            };
            match &old {
                Some(old) if (&old.user_id, &old.device_id) != (&new.user_id, &new.device_id) => {
                    return Err(format!("{what}: its author was changed"));
                }
                Some(_) => {}
                None => named(&what, &author)?,
            }
            if new.finalised != old.as_ref().and_then(|o| o.finalised.clone())
                && let Some(finalised) = self.stored_finalisation(&new_obj)
            {
                named(&format!("the finalisation of {what}"), &finalised.by)?;
            }
            let old_amendments = old.map(|o| o.amendments).unwrap_or_default();
            if new.amendments != old_amendments {
                for amendment in self.amendments(&new_obj) {
                    if !old_amendments.contains(&amendment.id) {
                        named(
                            &format!("amendment {} of {what}", amendment.id),
                            &amendment.by,
                        )?;
                    }
                }
            }
        }
        if scope.resolutions {
            let old: BTreeSet<String> = match map_at_version(doc, &ROOT, "resolutions", then) {
                Some(obj) => doc.keys_at(&obj, before).collect(),
                None => BTreeSet::new(),
            };
            for resolution in self.resolutions().map_err(|e| e.to_string())? {
                if !old.contains(&resolution.id) {
                    named(&format!("resolution {}", resolution.id), &resolution.by)?;
                }
            }
        }
        Ok(())
    }
}

/// Where `message` brings a whole document (its changes start with one), takes that document
/// in place of `doc`, with the few changes of `doc` it lacks applied to it, and leaves the peer
/// state as Automerge's receive would; otherwise gives the message back untouched. Automerge
/// merges a whole document into a non-empty one by rebuilding each of its changes and
/// applying those the document lacks, several times the cost of loading it: a phone's receive
/// of its case sent whole after a day offline, 22.4-23.5 ms -> 11.7-12.8 ms (`cargo bench -p
/// doorstep-sync-core --bench case_file -- "sent whole"`). The server sends a phone its whole
/// case when the phone lacks more than a third of it, as after a day offline. The caller then
/// copies the document (`CaseFile::shrink_to_fit`): the server sends its stored bytes, a save
/// followed by the changes synced since, and Automerge's load applies those changes at once
/// into columns that keep the room they grew (a 200-visit case: 2.75 MB taken so, 0.4 MB
/// copied; `tests/memory.rs`). The interop bench's 50 phones grew to 8 GB without the copy.
fn take_whole_document(
    doc: &mut AutoCommit,
    peer: &mut State,
    mut message: Message,
) -> std::result::Result<(), Message> {
    // An empty document already loads what it receives; one that holds changes back would
    // lose them; a read-only side applies nothing.
    if doc.is_empty() || holds_back(doc) || peer.read_only {
        return Err(message);
    }
    // A version 2 message carries its chunks as one run of bytes: loaded where they lie.
    let loaded = match message.changes.len() {
        1 => message.changes.iter().next().map(AutoCommit::load),
        _ => Some(AutoCommit::load(
            &message.changes.iter().collect::<Vec<_>>().concat(),
        )),
    };
    let Some(Ok(whole)) = loaded else {
        return Err(message);
    };
    if holds_back(&whole) || message.heads.iter().any(|hash| lacks(&whole, hash)) {
        return Err(message);
    }
    let mut whole = whole.with_actor(doc.get_actor().clone());
    // The changes of `doc` that the whole document lacks (typically a phone's own, made
    // offline, which its first message of a session does not carry when they are many) are
    // applied to it, while they are at most half as many as the changes it brings (beyond
    // that, merging it into `doc` costs less).
    let known: Vec<ChangeHash> = whole
        .get_heads()
        .into_iter()
        .filter(|hash| !lacks(doc, hash))
        .collect();
    let ours: Vec<ChangeHash> = doc
        .get_changes_meta(&known)
        .into_iter()
        .map(|change| change.hash)
        .filter(|hash| lacks(&whole, hash))
        .collect();
    let held_by_both = doc.stats().num_changes - ours.len() as u64;
    let brought = whole.stats().num_changes.saturating_sub(held_by_both);
    if ours.len() as u64 * 2 > brought {
        return Err(message);
    }
    if !ours.is_empty() {
        // Applied as a receive is (see `receive_in_steps`), with a state of its own.
        let ours = Message {
            heads: Vec::new(),
            need: Vec::new(),
            have: Vec::new(),
            changes: ChunkList::from(
                ours.iter()
                    .filter_map(|hash| doc.get_change_by_hash(hash))
                    .map(|mut change| change.bytes().into_owned())
                    .collect::<Vec<_>>(),
            ),
            flags: None,
            version: MessageVersion::V1,
        };
        if receive_in_steps(&mut whole, &mut State::new(), ours, false).is_err() {
            return Err(message);
        }
    }
    // What is left of the receive is Automerge's own, on the document that now holds every
    // change and head the message names: it leaves the peer state as the receive of the
    // changes would, except that a message without changes at the document's heads also
    // records them as the heads last sent, which a message with changes does not.
    let changes = std::mem::replace(&mut message.changes, ChunkList::empty());
    let mut trial_peer = peer.clone();
    let read = whole.sync().receive_sync_message_log_patches(
        &mut trial_peer,
        message.clone(),
        &mut PatchLog::inactive(),
    );
    if read.is_err() {
        message.changes = changes;
        return Err(message);
    }
    trial_peer.last_sent_heads = std::mem::take(&mut peer.last_sent_heads);
    *peer = trial_peer;
    *doc = whole;
    Ok(())
}

/// Whether the changes of `message` start with a whole document.
fn starts_with_document(message: &Message) -> bool {
    message
        .changes
        .iter()
        .next()
        .and_then(split_chunks)
        .and_then(|chunks| chunks.first().map(|chunk| chunk[8] == DOCUMENT_CHUNK))
        .unwrap_or(false)
}

/// Whether `doc` holds back changes it received without their dependencies (Automerge applies
/// them when the dependencies arrive; a save leaves them out).
fn holds_back(doc: &impl ReadDoc) -> bool {
    !doc.get_missing_deps(&[]).is_empty()
}

/// A phone's receive that grew its document by at least this share of its changes (1/8) is
/// followed by a copy that gives back the spare room the apply left (see
/// `CaseFile::shrink_to_fit`): up to as much again as the columns hold, depending on where
/// their growth last doubled. A copy costs about 1 % of a load, a small part of such an apply.
const SHRINK_AFTER_SHARE: u64 = 8;

/// Changes applied at once by a receive. Automerge's apply holds working memory, and in 0.12
/// patches even for a log that is not active, in proportion to the changes applied together:
/// a 2,000-visit message took about 26 MB at once on the server.
const CHANGES_PER_STEP: usize = 256;

/// A whole document smaller than this is left to Automerge's receive: its changes are few
/// enough to apply at once, and reading it as changes costs no less, even where the checked
/// receive then rebuilds them from the document (`cargo bench -p doorstep-sync-core --bench
/// case_file -- "whole document"`).
const DOCUMENT_BYTES_TO_EXPAND: usize = 64 * 1024;

/// Receives `message` as Automerge does, applying its changes [`CHANGES_PER_STEP`] at a time:
/// each step is the same message with a share of the changes, in their order. Heads, needs and
/// haves are read the same way every step, and a change whose dependencies come in a later step
/// waits in the document's queue until they do, so the document and the peer state end as one
/// receive leaves them. A large whole document sent in place of changes is applied as the
/// changes of it that `doc` lacks (see [`Offer`]).
///
/// With `keep_offered`, returns the changes the message offered that `doc` lacked, parsed
/// (None where the message could not be read as changes, or brought a small whole document),
/// so that a checked receive need not rebuild them from the document.
///
/// A log of our own is given to Automerge and dropped: Automerge 0.12 logs the patches of every
/// applied change into the log it is given, active or not, and `AutoCommit`'s own log is never
/// emptied unless someone asks it for patches (a document that kept receiving grew without
/// bound: about 2 MiB after 200 visits, against 0.4 MiB loaded).
fn receive_in_steps(
    doc: &mut AutoCommit,
    peer: &mut State,
    mut message: Message,
    keep_offered: bool,
) -> std::result::Result<Option<Vec<Change>>, AutomergeError> {
    let sent = std::mem::replace(&mut message.changes, ChunkList::empty());
    let Some(offer) = Offer::read(doc, &sent, keep_offered, false) else {
        message.changes = sent;
        doc.sync()
            .receive_sync_message_log_patches(peer, message, &mut PatchLog::inactive())?;
        return Ok(None);
    };
    let Offer {
        chunks,
        expanded,
        lacked,
    } = offer;
    // Few changes as sent, or a document that brings nothing new (Automerge then loads it
    // again, rare): one receive of the message as sent.
    if chunks.is_empty() || (!expanded && chunks.len() <= CHANGES_PER_STEP) {
        drop(chunks);
        message.changes = sent;
        doc.sync()
            .receive_sync_message_log_patches(peer, message, &mut PatchLog::inactive())?;
        return Ok(lacked);
    }
    for changes in chunks.chunks(CHANGES_PER_STEP) {
        let mut step = message.clone();
        step.changes = ChunkList::from(changes.concat());
        doc.sync()
            .receive_sync_message_log_patches(peer, step, &mut PatchLog::inactive())?;
    }
    Ok(lacked)
}

/// What a message's changes offer a document.
struct Offer<'m> {
    /// The change chunks to apply, in the message's order: as sent, with each large whole
    /// document replaced by the changes of it that the document lacks.
    chunks: Vec<Cow<'m, [u8]>>,
    /// Whether a whole document was read as changes.
    expanded: bool,
    /// The offered changes the document lacked, parsed, each once, in the message's order
    /// (gathered only when asked for: a phone's receive does not need them); None where a
    /// whole document is left to Automerge's receive.
    lacked: Option<Vec<Change>>,
}

impl<'m> Offer<'m> {
    /// None when the bytes are not whole chunks, or a chunk does not parse or load (the
    /// receive of the message as sent then says what is wrong). A whole document is read as
    /// the changes it brings if it is large, or if `expand_every_document`.
    fn read(
        doc: &mut AutoCommit,
        changes: &'m ChunkList,
        keep_lacked: bool,
        expand_every_document: bool,
    ) -> Option<Self> {
        let sent: Vec<&[u8]> = changes
            .iter()
            .map(split_chunks)
            .collect::<Option<Vec<_>>>()?
            .concat();
        let mut offer = Offer {
            chunks: Vec::with_capacity(sent.len()),
            expanded: false,
            lacked: keep_lacked.then(Vec::new),
        };
        let mut seen = BTreeSet::new();
        for chunk in sent {
            if chunk[8] == DOCUMENT_CHUNK
                && chunk.len() <= DOCUMENT_BYTES_TO_EXPAND
                && !expand_every_document
            {
                offer.chunks.push(Cow::Borrowed(chunk));
                offer.lacked = None;
                continue;
            }
            if chunk[8] != DOCUMENT_CHUNK {
                offer.chunks.push(Cow::Borrowed(chunk));
                if let Some(lacked) = offer.lacked.as_mut() {
                    // Parsed as Automerge will parse it (a change keeps the compressed form
                    // it came in, which is what storage keeps).
                    let change = Change::try_from(chunk).ok()?;
                    if lacks(doc, &change.hash()) && seen.insert(change.hash()) {
                        lacked.push(change);
                    }
                }
                continue;
            }
            // Automerge would load it too; its changes are then applied as any others.
            offer.expanded = true;
            let document = Automerge::load(chunk).ok()?;
            let known: Vec<ChangeHash> = doc
                .get_heads()
                .into_iter()
                .filter(|hash| !lacks(&document, hash))
                .collect();
            for change in document.get_changes(&known) {
                if lacks(doc, &change.hash()) && seen.insert(change.hash()) {
                    offer.chunks.push(Cow::Owned(change.raw_bytes().to_vec()));
                    if let Some(lacked) = offer.lacked.as_mut() {
                        lacked.push(change);
                    }
                }
            }
        }
        Some(offer)
    }
}

/// Whether `doc` has neither applied nor held back the change `hash` (cheap: rebuilding the
/// change, as `get_change_by_hash` does, costs as much as the change's operations).
fn lacks(doc: &impl ReadDoc, hash: &ChangeHash) -> bool {
    doc.get_missing_deps(&[*hash]).contains(hash)
}

/// The changes a receive applied, taken from those the message offered (`offered`, which the
/// document lacked before) without rebuilding them from the document, in an order in which
/// each comes after its dependencies. None unless they account for every change the document
/// gained (`changes_before` it had before; one held back by an earlier message and applied now
/// was not offered), or if the document now holds changes back (it would not say which of the
/// offered ones).
fn applied_from_offer(
    doc: &AutoCommit,
    offered: Vec<Change>,
    changes_before: u64,
) -> Option<Vec<Change>> {
    if holds_back(doc) {
        return None;
    }
    let gained = doc.stats().num_changes.checked_sub(changes_before)?;
    let applied: Vec<Change> = offered
        .into_iter()
        .filter(|change| !lacks(doc, &change.hash()))
        .collect();
    (applied.len() as u64 == gained).then(|| causal_order(applied))
}

/// `changes` reordered, as little as needed, so that each comes after those of its
/// dependencies that are among them.
fn causal_order(changes: Vec<Change>) -> Vec<Change> {
    let index: BTreeMap<ChangeHash, usize> = changes
        .iter()
        .enumerate()
        .map(|(i, change)| (change.hash(), i))
        .collect();
    let mut placed = vec![false; changes.len()];
    let mut order = Vec::with_capacity(changes.len());
    for start in 0..changes.len() {
        // Depth first, without recursion: a chain of thousands of visits is thousands deep.
        let mut stack = vec![(start, 0)];
        while let Some((at, next_dep)) = stack.pop() {
            if placed[at] {
                continue;
            }
            let deps = changes[at].deps();
            match deps[next_dep..]
                .iter()
                .position(|dep| index.get(dep).is_some_and(|&d| !placed[d]))
            {
                Some(offset) => {
                    let dep = index[&deps[next_dep + offset]];
                    stack.push((at, next_dep + offset + 1));
                    stack.push((dep, 0));
                }
                None => {
                    placed[at] = true;
                    order.push(at);
                }
            }
        }
    }
    let mut slots: Vec<Option<Change>> = changes.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// When a message brought changes whose dependencies this side lacks, Automerge holds them
/// back in the document's memory until the dependencies arrive, and the sender counts them as
/// sent. But a document is saved without them: a server that loads each case per request (and
/// a phone that restarts) loses them, and the sender would never send them again (it is asked
/// for the missing dependency, never for what it thinks it sent). So the next message asks the
/// sender to forget what it sent (Automerge's sync reset) and send whatever is still missing.
fn hold_back_nothing_unasked(file: &mut CaseFile, peer: &mut PeerState) {
    if file.holds_back_changes() {
        peer.state.needs_reset = true;
    }
}

/// Puts into a message sent before the peer has said anything this session the changes made
/// since the heads the last session left shared. Automerge sends only heads and a summary
/// then, and the changes follow once the peer has answered: a phone reconnecting on a weak
/// signal pays that round trip for every case it changed. A peer that holds them already
/// ignores them; one that lacks their dependencies asks for those. Only as many as Automerge
/// would send as changes (a third of the document's): more go as a whole document, which
/// waits until the peer has said it reads that format.
///
/// The server's [`crate::ChangeGraph`] answers by the same rule.
fn send_unasked(doc: &mut AutoCommit, state: &mut State, message: &mut Message) {
    if state.shared_heads.is_empty() || state.peer_read_only || !message.changes.is_empty() {
        return;
    }
    let unsent = |hash: &ChangeHash| !state.sent_hashes.contains(hash);
    let new = doc
        .get_changes_meta(&state.shared_heads)
        .iter()
        .filter(|change| unsent(&change.hash))
        .count();
    if new == 0 || new as u64 > doc.stats().num_changes / 3 {
        return;
    }
    let mut changes = doc.get_changes(&state.shared_heads);
    changes.retain(|change| unsent(&change.hash()));
    let chunks: Vec<Vec<u8>> = changes
        .iter_mut()
        .map(|change| change.bytes().into_owned())
        .collect();
    state.sent_hashes.extend(changes.iter().map(Change::hash));
    message.changes = match message.version {
        // A version 2 message carries its changes as one chunk.
        MessageVersion::V2 => ChunkList::from(chunks.concat()),
        MessageVersion::V1 => ChunkList::from(chunks),
    };
}

/// Compresses the change chunks of an outgoing message. Automerge sends changes as they are
/// held, uncompressed (one chunk each in a version 1 message, one after another in a version 2
/// one), and a phone's upload is what a weak signal must carry: a visit with a 500-character
/// note is 1,241 bytes raw and 715 compressed. A chunk keeps its hash (that is taken of the
/// uncompressed change) and every Automerge reads it; chunks too small to gain, whole
/// documents (already compressed) and bytes that are not whole changes go as they are.
fn compress_changes(changes: &mut ChunkList) {
    let is_raw_change = |chunk: &[u8]| chunk.len() > 8 && chunk[8] == CHANGE_CHUNK;
    let compress = |chunk: &[u8]| -> Vec<u8> {
        if !is_raw_change(chunk) {
            return chunk.to_vec();
        }
        Change::try_from(chunk).map_or_else(|_| chunk.to_vec(), |mut c| c.bytes().into_owned())
    };
    let raw = |item: &[u8]| {
        split_chunks(item).is_some_and(|chunks| chunks.into_iter().any(is_raw_change))
    };
    if !changes.iter().any(raw) {
        return;
    }
    let compressed: Vec<Vec<u8>> = changes
        .iter()
        .map(|item| match split_chunks(item) {
            Some(chunks) => chunks.into_iter().flat_map(compress).collect(),
            None => item.to_vec(),
        })
        .collect();
    *changes = ChunkList::from(compressed);
}

/// Why a checked receive refused a message.
#[derive(Debug, thiserror::Error)]
pub enum RefusedSync {
    #[error("change made by actor {0}, which is not bound to this device")]
    ForeignActor(String),
    /// Something the changes add names another person or device as its author.
    #[error("misattributed: {0}")]
    Misattributed(String),
    #[error(transparent)]
    Invalid(CaseFileError),
}

/// Whether a sync message brings changes to apply (then the receiver needs the document;
/// otherwise its [`crate::ChangeGraph`] can take it). Bytes that do not decode count as
/// bringing changes, so that the document's receive reports them.
pub fn brings_changes(message: &[u8]) -> bool {
    decode_message(message).map_or(true, |m| !m.changes.is_empty())
}

/// Decodes a sync message; bad bytes are an error, never a panic.
pub fn decode_message(bytes: &[u8]) -> Result<Message> {
    Message::decode(bytes).map_err(|e| CaseFileError::CorruptSyncMessage(e.to_string()))
}
