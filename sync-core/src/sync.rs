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

use crate::case_file::CaseFile;
use crate::error::{CaseFileError, Result};

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
    /// `actor_allowed` accepts and the resulting document still validates; otherwise nothing
    /// changes, not even the peer state. This is what the server runs on a phone's message.
    pub fn receive_sync_message_checked(
        &mut self,
        peer: &mut PeerState,
        message: &[u8],
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
        }
        let actor = self.doc.get_actor().clone();
        self.doc = trial.doc.with_actor(actor);
        *peer = trial_peer;
        Ok(applied)
    }
}

/// Why a checked receive refused a message.
#[derive(Debug, thiserror::Error)]
pub enum RefusedSync {
    #[error("change made by actor {0}, which is not bound to this device")]
    ForeignActor(String),
    #[error(transparent)]
    Invalid(CaseFileError),
}

/// Decodes a sync message; bad bytes are an error, never a panic.
pub fn decode_message(bytes: &[u8]) -> Result<Message> {
    Message::decode(bytes).map_err(|e| CaseFileError::CorruptSyncMessage(e.to_string()))
}
