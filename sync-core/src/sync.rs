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

use std::collections::BTreeSet;

use automerge::{
    ActorId, ChangeHash,
    sync::{Message, State, SyncDoc},
};

use crate::case_file::{Author, CaseFile};
use crate::error::{CaseFileError, Result};
use crate::records::Collection;

/// What one side knows of the other's document, kept between sessions.
#[derive(Debug, Clone, Default)]
pub struct PeerState(State);

impl PeerState {
    pub fn new() -> Self {
        PeerState(State::new())
    }

    /// The persistent part of the state (what the peer is known to have).
    pub fn encode(&self) -> Vec<u8> {
        self.0.encode()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        State::decode(bytes)
            .map(PeerState)
            .map_err(|e| CaseFileError::CorruptSyncState(e.to_string()))
    }

    /// The heads the peer is known to have, as far as this side knows.
    pub fn shared_heads(&self) -> &[ChangeHash] {
        &self.0.shared_heads
    }

    /// The heads of the document this side last generated a message from.
    pub fn last_sent_heads(&self) -> &[ChangeHash] {
        &self.0.last_sent_heads
    }
}

impl CaseFile {
    /// Whether this document holds every one of `heads` (it is the same version as the one
    /// they came from, or a later one).
    pub fn contains_heads(&mut self, heads: &[ChangeHash]) -> bool {
        heads
            .iter()
            .all(|hash| self.doc.get_change_meta_by_hash(hash).is_some())
    }
}

/// A change that a checked receive applied: its hash and the actor that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedChange {
    pub hash: ChangeHash,
    pub actor: ActorId,
}

impl CaseFile {
    /// The next message for the peer, or None when there is nothing to send.
    pub fn generate_sync_message(&mut self, peer: &mut PeerState) -> Option<Vec<u8>> {
        self.doc
            .sync()
            .generate_sync_message(&mut peer.0)
            .map(Message::encode)
    }

    /// Applies a message from the peer. Corrupted or truncated bytes give an error and change
    /// nothing.
    pub fn receive_sync_message(&mut self, peer: &mut PeerState, message: &[u8]) -> Result<()> {
        let message = decode_message(message)?;
        self.doc
            .sync()
            .receive_sync_message(&mut peer.0, message)
            .map_err(|e| CaseFileError::CorruptSyncMessage(e.to_string()))
    }

    /// Applies a message only if every change it brings was made by an actor that
    /// `actor_allowed` accepts, everything it adds is attributed to `sender` (see
    /// [`CaseFile::check_attribution`]) and the resulting document still validates; otherwise
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
        if message.changes.is_empty() {
            // Heads, needs and haves only: the document cannot change, so no trial copy (a
            // fork costs as much as the whole document) is needed.
            let mut trial_peer = peer.clone();
            self.doc
                .sync()
                .receive_sync_message(&mut trial_peer.0, message)
                .map_err(|e| {
                    RefusedSync::Invalid(CaseFileError::CorruptSyncMessage(e.to_string()))
                })?;
            *peer = trial_peer;
            return Ok(Vec::new());
        }
        let before: BTreeSet<ChangeHash> = self.doc.get_heads().into_iter().collect();
        let before_heads: Vec<ChangeHash> = before.iter().copied().collect();
        let mut trial = CaseFile {
            doc: self.doc.fork(),
            author: self.author.clone(),
        };
        // `fork` gives a new actor; the trial document is never written to, only read.
        let mut trial_peer = peer.clone();
        trial
            .doc
            .sync()
            .receive_sync_message(&mut trial_peer.0, message)
            .map_err(|e| RefusedSync::Invalid(CaseFileError::CorruptSyncMessage(e.to_string())))?;
        let applied: Vec<AppliedChange> = trial
            .doc
            .get_changes(&before_heads)
            .iter()
            .map(|change| AppliedChange {
                hash: change.hash(),
                actor: change.actor_id().clone(),
            })
            .collect();
        if let Some(foreign) = applied.iter().find(|c| !actor_allowed(&c.actor)) {
            return Err(RefusedSync::ForeignActor(foreign.actor.to_hex_string()));
        }
        if !applied.is_empty() {
            trial.validate().map_err(RefusedSync::Invalid)?;
            let actors: BTreeSet<&ActorId> = applied.iter().map(|c| &c.actor).collect();
            self.check_attribution(&trial, sender, &actors)
                .map_err(RefusedSync::Misattributed)?;
        }
        let actor = self.doc.get_actor().clone();
        self.doc = trial.doc.with_actor(actor);
        *peer = trial_peer;
        Ok(applied)
    }
}

impl CaseFile {
    /// Checks that what `after` adds to this document is attributed to `sender`, the device
    /// that sent it: a new record's author, a new finalisation, amendment or resolution's
    /// `by`, and a new or changed entry in `actors` (which must also name one of the `actors`
    /// that made the changes). An existing record's author may not change. So a record can
    /// only ever name the person whose device wrote it.
    pub fn check_attribution(
        &self,
        after: &CaseFile,
        sender: &Author,
        actors: &BTreeSet<&ActorId>,
    ) -> Result<(), String> {
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
        let known_actors = self.actors();
        for (actor, author) in after.actors() {
            if known_actors.get(&actor) == Some(&author) {
                continue;
            }
            named(&format!("actor {actor}"), &author)?;
            if !actors.iter().any(|a| a.to_hex_string() == actor) {
                return Err(format!(
                    "actor {actor} is registered by a change it did not make"
                ));
            }
        }
        for collection in Collection::ALL {
            let before: BTreeSet<String> = self
                .record_ids(collection)
                .map_err(|e| e.to_string())?
                .into_iter()
                .collect();
            for id in after.record_ids(collection).map_err(|e| e.to_string())? {
                let what = format!("{collection}/{id}");
                let new_obj = after
                    .record_obj(collection, &id)
                    .map_err(|e| e.to_string())?;
                let Some(new) = after.record_stamp(&new_obj) else {
                    continue; // no meta: the validation refuses it
                };
                let old = if before.contains(&id) {
                    let old_obj = self
                        .record_obj(collection, &id)
                        .map_err(|e| e.to_string())?;
                    self.record_stamp(&old_obj)
                } else {
                    None
                };
                if old.as_ref() == Some(&new) {
                    continue; // untouched as far as attribution goes (the common case)
                }
                let author = Author {
                    user_id: new.user_id.clone().unwrap_or_default(),
                    device_id: new.device_id.clone().unwrap_or_default(),
                };
                match &old {
                    Some(old)
                        if (&old.user_id, &old.device_id) != (&new.user_id, &new.device_id) =>
                    {
                        return Err(format!("{what}: its author was changed"));
                    }
                    Some(_) => {}
                    None => named(&what, &author)?,
                }
                if new.finalised != old.as_ref().and_then(|o| o.finalised.clone())
                    && let Some(finalised) = after.stored_finalisation(&new_obj)
                {
                    named(&format!("the finalisation of {what}"), &finalised.by)?;
                }
                let old_amendments = old.map(|o| o.amendments).unwrap_or_default();
                if new.amendments != old_amendments {
                    for amendment in after.amendments(&new_obj) {
                        if !old_amendments.contains(&amendment.id) {
                            named(
                                &format!("amendment {} of {what}", amendment.id),
                                &amendment.by,
                            )?;
                        }
                    }
                }
            }
        }
        let old_resolutions: BTreeSet<String> = self
            .resolutions()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|r| r.id)
            .collect();
        for resolution in after.resolutions().map_err(|e| e.to_string())? {
            if !old_resolutions.contains(&resolution.id) {
                named(&format!("resolution {}", resolution.id), &resolution.by)?;
            }
        }
        Ok(())
    }
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

/// Decodes a sync message; bad bytes are an error, never a panic.
pub fn decode_message(bytes: &[u8]) -> Result<Message> {
    Message::decode(bytes).map_err(|e| CaseFileError::CorruptSyncMessage(e.to_string()))
}
