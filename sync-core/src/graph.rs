//! A case file's change graph without its contents: each change's hash and dependencies.
//! That is all Automerge's sync protocol looks at, except when a message brings changes to
//! apply, so a server can answer most sync messages (heads, needs, bloom filters) from a
//! [`ChangeGraph`] instead of a parsed document, which takes about twelve times its saved size
//! in memory and milliseconds to load. The bytes of the changes a message sends come from the
//! document's stored bytes (see [`ChangeGraph::generate_sync_message`]), so a graph kept in a
//! cache holds none of them: about 136 bytes a change.
//!
//! [`ChangeGraph::generate_sync_message`] and [`ChangeGraph::receive_sync_message`] follow
//! Automerge's own `generate_sync_message` and `receive_sync_message` (automerge 0.12) step by
//! step and leave a [`PeerState`] exactly as they would, with the one addition that
//! `CaseFile::generate_sync_message` makes (a first message carries the few changes made since
//! the last sync unasked); the tests check this message by message against a `CaseFile`.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};

use automerge::{
    Automerge, ChangeHash, ReadDoc,
    sync::{
        BloomFilter, Capability, ChunkList, Have, Message, MessageFlags, MessageVersion, State,
    },
};
use sha2::{Digest, Sha256};

use crate::error::{CaseFileError, Result};
use crate::sync::{PeerState, decode_message};

/// Every change of a document: hashes and dependencies, in an order where each change comes
/// after its dependencies; and the bytes of the changes added with them, until
/// [`ChangeGraph::forget_change_bytes`].
#[derive(Debug, Clone, Default)]
pub struct ChangeGraph {
    nodes: Vec<Node>,
    index: HashMap<ChangeHash, usize>,
    heads: BTreeSet<ChangeHash>,
    /// The bytes of the change chunks held.
    bytes: usize,
}

#[derive(Debug, Clone)]
struct Node {
    hash: ChangeHash,
    deps: Vec<usize>,
    /// The change chunk, as Automerge's `load_incremental` reads it, while held.
    bytes: Option<Vec<u8>>,
}

/// Roughly the memory one change takes in a graph holding no bytes: its node, its dependency
/// and its index entry, with the room they grow into.
const NODE_MEMORY: usize = 136;

impl ChangeGraph {
    pub fn new() -> Self {
        Self::default()
    }

    /// The graph of the given change chunks, in any order, holding their bytes. Each is
    /// parsed and its hash checked; a change whose dependencies are not among them is an
    /// error (the set is not a whole document).
    pub fn from_changes(changes: impl IntoIterator<Item = Vec<u8>>) -> Result<Self> {
        let mut inflater = Inflater::default();
        let pending = changes
            .into_iter()
            .map(|bytes| {
                let (hash, deps) = change_hash_and_deps(&bytes, &mut inflater)?;
                Ok((hash, deps, Some(bytes)))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_pending(pending)
    }

    /// The graph of a document's stored changes, in any order, holding no bytes. Each
    /// change's hash and dependencies come from beside it where they were stored
    /// ([`GraphChange::Known`]): a compressed change would have to be inflated and hashed
    /// whole (a sixth of a server's CPU during a mass reconnect, rebuilding graphs the cache
    /// no longer held).
    pub fn from_graph_changes(changes: impl IntoIterator<Item = GraphChange>) -> Result<Self> {
        let mut inflater = Inflater::default();
        let pending = changes
            .into_iter()
            .map(|change| {
                let (hash, deps) = match change {
                    GraphChange::Known { hash, deps } => (hash, deps),
                    GraphChange::Chunk(bytes) => change_hash_and_deps(&bytes, &mut inflater)?,
                };
                Ok((hash, deps, None))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_pending(pending)
    }

    fn from_pending(
        mut pending: Vec<(ChangeHash, Vec<ChangeHash>, Option<Vec<u8>>)>,
    ) -> Result<Self> {
        // Exactly the room the changes take: a graph built from storage goes to the cache as
        // built, and its budget counts no room to grow (`NODE_MEMORY`).
        let mut graph = ChangeGraph {
            nodes: Vec::with_capacity(pending.len()),
            index: HashMap::with_capacity(pending.len()),
            ..ChangeGraph::default()
        };
        // Adds every change whose dependencies are in, until none is left or none can be.
        while !pending.is_empty() {
            let before = pending.len();
            let mut waiting = Vec::new();
            for (hash, deps, bytes) in pending {
                if deps.iter().all(|dep| graph.contains(dep)) {
                    graph.insert(hash, &deps, bytes)?;
                } else {
                    waiting.push((hash, deps, bytes));
                }
            }
            if waiting.len() == before {
                return Err(CaseFileError::Corrupt(format!(
                    "{} stored changes depend on changes that are not stored",
                    waiting.len()
                )));
            }
            pending = waiting;
        }
        Ok(graph)
    }

    /// Adds one change whose dependencies are all in the graph, holding its bytes (a change
    /// already in it is left alone).
    pub fn add(&mut self, hash: ChangeHash, deps: &[ChangeHash], bytes: Vec<u8>) -> Result<()> {
        self.insert(hash, deps, Some(bytes))
    }

    fn insert(
        &mut self,
        hash: ChangeHash,
        deps: &[ChangeHash],
        bytes: Option<Vec<u8>>,
    ) -> Result<()> {
        if self.index.contains_key(&hash) {
            return Ok(());
        }
        let deps = deps
            .iter()
            .map(|dep| {
                self.index.get(dep).copied().ok_or_else(|| {
                    CaseFileError::Corrupt(format!("change {hash} depends on unknown {dep}"))
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        for dep in &deps {
            self.heads.remove(&self.nodes[*dep].hash);
        }
        self.heads.insert(hash);
        self.index.insert(hash, self.nodes.len());
        self.bytes += bytes.as_ref().map_or(0, Vec::len);
        self.nodes.push(Node { hash, deps, bytes });
        Ok(())
    }

    /// Drops the bytes of the changes held, and any room to grow, for a graph to be kept: a
    /// message reads the bytes it sends from the stored document instead.
    pub fn forget_change_bytes(&mut self) {
        for node in &mut self.nodes {
            node.bytes = None;
        }
        self.bytes = 0;
        self.nodes.shrink_to_fit();
        self.index.shrink_to_fit();
    }

    /// Whether the graph holds the bytes of any change.
    pub fn holds_change_bytes(&self) -> bool {
        self.bytes > 0
    }

    /// The heads, sorted (as Automerge gives them).
    pub fn heads(&self) -> Vec<ChangeHash> {
        self.heads.iter().copied().collect()
    }

    pub fn contains(&self, hash: &ChangeHash) -> bool {
        self.index.contains_key(hash)
    }

    /// Whether the graph holds every one of `heads`.
    pub fn contains_heads(&self, heads: &[ChangeHash]) -> bool {
        heads.iter().all(|hash| self.contains(hash))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Roughly the memory the graph takes, for a cache's budget.
    pub fn memory_size(&self) -> usize {
        self.bytes + self.nodes.len() * NODE_MEMORY
    }

    /// Marks the known changes among `heads` and all their ancestors.
    fn ancestors(&self, heads: &[ChangeHash]) -> Vec<bool> {
        let mut seen = vec![false; self.nodes.len()];
        let mut stack: Vec<usize> = heads
            .iter()
            .filter_map(|h| self.index.get(h).copied())
            .collect();
        while let Some(node) = stack.pop() {
            if !std::mem::replace(&mut seen[node], true) {
                stack.extend(&self.nodes[node].deps);
            }
        }
        seen
    }

    /// The changes that are not ancestors of `since` (all of them for none), in graph order.
    fn changes_since(&self, since: &[ChangeHash]) -> Vec<usize> {
        if since.is_empty() {
            return (0..self.nodes.len()).collect();
        }
        let seen = self.ancestors(since);
        (0..self.nodes.len()).filter(|n| !seen[*n]).collect()
    }

    /// The changes a message to a peer not heard from this session carries unasked: those made
    /// since the shared heads and not sent yet, if they are at most a third of the document
    /// (as `CaseFile::generate_sync_message` decides).
    fn unasked(&self, state: &State) -> Vec<usize> {
        if state.shared_heads.is_empty() || !unheard(state) {
            return Vec::new();
        }
        let mut chosen = self.changes_since(&state.shared_heads);
        chosen.retain(|n| !state.sent_hashes.contains(&self.nodes[*n].hash));
        if chosen.len() > self.nodes.len() / 3 {
            chosen.clear();
        }
        chosen
    }

    /// Automerge's choice of changes for a peer that has `have` and asked for `need`.
    fn changes_to_send(&self, have: &[Have], need: &[ChangeHash]) -> Vec<usize> {
        let need: Vec<usize> = need
            .iter()
            .filter_map(|h| self.index.get(h).copied())
            .collect();
        if have.is_empty() {
            return need;
        }
        let last_sync: Vec<ChangeHash> = have
            .iter()
            .flat_map(|h| h.last_sync.iter().copied())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let candidates = self.changes_since(&last_sync);
        let mut dependents: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut to_send = HashSet::new();
        for &node in &candidates {
            for &dep in &self.nodes[node].deps {
                dependents.entry(dep).or_default().push(node);
            }
            let hash = &self.nodes[node].hash;
            if have.iter().all(|h| !h.bloom.contains_hash(hash)) {
                to_send.insert(node);
            }
        }
        // A change the peer lacks means it lacks everything built on it too (the bloom
        // filter's false positives aside).
        let mut stack: Vec<usize> = to_send.iter().copied().collect();
        while let Some(node) = stack.pop() {
            for &dependent in dependents.get(&node).into_iter().flatten() {
                if to_send.insert(dependent) {
                    stack.push(dependent);
                }
            }
        }
        let mut chosen: Vec<usize> = need.into_iter().filter(|n| !to_send.contains(n)).collect();
        chosen.extend(candidates.into_iter().filter(|n| to_send.contains(n)));
        chosen
    }

    /// Applies a message from the peer that brings no changes, exactly as
    /// [`crate::CaseFile::receive_sync_message_checked`] would (Automerge's receive, keeping
    /// an acknowledgement owed: see `PeerState::received`). Returns false, changing nothing,
    /// for a message that brings changes: those need the document. Corrupted bytes give an
    /// error and change nothing.
    pub fn receive_sync_message(&self, peer: &mut PeerState, message: &[u8]) -> Result<bool> {
        let message = decode_message(message)?;
        if !message.changes.is_empty() {
            return Ok(false);
        }
        let acknowledgement_owed = peer.acknowledgement_owed();
        let state = &mut peer.state;
        state.in_flight = false;
        let Message {
            heads,
            need,
            have,
            flags,
            ..
        } = message;
        if let Some(flags) = flags {
            let mut capabilities = vec![Capability::MessageV2];
            if flags.contains(MessageFlags::SUPPORTS_SYNC_RESET) {
                capabilities.push(Capability::SyncReset);
            }
            state.their_capabilities = Some(capabilities);
            if flags.contains(MessageFlags::SYNC_RESET) {
                state.sent_hashes.clear();
            }
            state.peer_read_only = flags.contains(MessageFlags::READ_ONLY);
        }
        // What the peer now has need not be remembered as sent.
        let has = self.ancestors(&heads);
        state
            .sent_hashes
            .retain(|hash| !self.index.get(hash).is_some_and(|n| has[*n]));
        let our_heads = self.heads();
        if heads == our_heads && !acknowledgement_owed {
            state.last_sent_heads.clone_from(&heads);
        }
        let known: Vec<ChangeHash> = heads.iter().filter(|h| self.contains(h)).copied().collect();
        if known.len() == heads.len() {
            state.shared_heads.clone_from(&heads);
            if heads.is_empty() {
                // The peer has lost everything: start over.
                state.last_sent_heads = Vec::new();
                state.sent_hashes = BTreeSet::new();
            }
        } else {
            let shared: BTreeSet<ChangeHash> =
                state.shared_heads.iter().chain(&known).copied().collect();
            state.shared_heads = shared.into_iter().collect();
        }
        state.their_have = Some(have);
        state.their_heads = Some(heads);
        state.their_need = Some(need);
        Ok(true)
    }

    /// The next message for the peer, or None when there is nothing to send, exactly as
    /// `CaseFile::generate_sync_message` would decide it (Automerge's, and the unasked changes
    /// of a first message). `stored` is the document as stored: a save followed by any change
    /// chunks appended since, holding exactly this graph's changes. Where Automerge would
    /// send the whole document, it is sent; the changes whose bytes the graph does not hold
    /// are read from it (see [`stored_change_chunks`]). An error, changing nothing, only if
    /// `stored` does not hold a change the graph names.
    pub fn generate_sync_message(
        &self,
        peer: &mut PeerState,
        stored: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        Ok(self.generate(peer, stored, Hold::Never)?.0)
    }

    /// The next message for the peer as [`Self::generate_sync_message`] decides it, but when
    /// the peer has changes this side lacks, without the changes it would carry: the heads,
    /// needs and bloom filter go, so that the peer sends its changes, and what it lacks waits
    /// for a later message (which sends it as if this one had not been sent). True with the
    /// message when changes were held back. A peer with nothing to send gets them at once, so
    /// that asking never goes back and forth.
    pub fn generate_sync_message_asking_first(
        &self,
        peer: &mut PeerState,
        stored: &[u8],
    ) -> Result<(Option<Vec<u8>>, bool)> {
        self.generate(peer, stored, Hold::WhilePeerHasMore)
    }

    /// The next message for the peer as [`Self::generate_sync_message`] decides it, but
    /// without the changes it would carry: the heads, needs and bloom filter go, so that the
    /// peer asks for what it lacks in its next message (which sends it as if this one had not
    /// been sent). True with the message when changes were held back. For an answer that waits
    /// while others are computed: it holds no changes in memory meanwhile.
    pub fn generate_sync_message_without_changes(
        &self,
        peer: &mut PeerState,
        stored: &[u8],
    ) -> Result<(Option<Vec<u8>>, bool)> {
        self.generate(peer, stored, Hold::Always)
    }

    fn generate(
        &self,
        peer: &mut PeerState,
        stored: &[u8],
        hold: Hold,
    ) -> Result<(Option<Vec<u8>>, bool)> {
        let generated = self.generate_message(peer, stored, hold)?;
        if generated.0.is_some() {
            peer.sent();
        }
        Ok(generated)
    }

    fn generate_message(
        &self,
        peer: &mut PeerState,
        stored: &[u8],
        hold: Hold,
    ) -> Result<(Option<Vec<u8>>, bool)> {
        let state = &mut peer.state;
        let our_heads = self.heads();
        let their_heads: Vec<ChangeHash> = state.their_heads.clone().unwrap_or_default();
        let our_need: Vec<ChangeHash> = if state.read_only {
            Vec::new()
        } else {
            let missing: BTreeSet<ChangeHash> = their_heads
                .iter()
                .filter(|h| !self.contains(h))
                .copied()
                .collect();
            missing.into_iter().collect()
        };
        let our_have = if our_need.iter().all(|h| their_heads.contains(h)) {
            let since = self.changes_since(&state.shared_heads);
            vec![Have {
                last_sync: state.shared_heads.clone(),
                bloom: BloomFilter::from_hashes(since.iter().map(|n| self.nodes[*n].hash)),
            }]
        } else {
            Vec::new()
        };
        if let Some(first) = state.their_have.as_ref().and_then(|have| have.first())
            && !first.last_sync.iter().all(|h| self.contains(h))
        {
            // The peer's last sync names changes this side does not have: ask it to start
            // over.
            let mut flags = MessageFlags::new();
            flags.set(MessageFlags::SUPPORTS_SYNC_RESET);
            let reset = Message {
                heads: our_heads,
                need: Vec::new(),
                have: vec![Have::default()],
                changes: ChunkList::empty(),
                flags: Some(flags),
                version: MessageVersion::V1,
            };
            return Ok((Some(reset.encode()), false));
        }

        let capable = |capability: Capability| {
            state
                .their_capabilities
                .as_ref()
                .is_some_and(|caps| caps.contains(&capability))
        };
        let v2 = capable(Capability::MessageV2);
        let plan = if state.peer_read_only {
            Plan::Nothing
        } else if let (Some(have), Some(need)) = (&state.their_have, &state.their_need) {
            if state.their_heads.as_deref() == Some(&[]) && v2 {
                Plan::Whole
            } else {
                let chosen: Vec<usize> = self
                    .changes_to_send(have, need)
                    .into_iter()
                    .filter(|n| !state.sent_hashes.contains(&self.nodes[*n].hash))
                    .collect();
                if chosen.len() > self.nodes.len() / 3 && v2 {
                    // More than a third of the document: the whole of it is smaller.
                    Plan::Whole
                } else {
                    Plan::Changes(chosen)
                }
            }
        } else {
            Plan::Changes(self.unasked(state))
        };
        let held = match hold {
            Hold::Never => false,
            Hold::WhilePeerHasMore => !our_need.is_empty(),
            Hold::Always => true,
        } && match &plan {
            Plan::Nothing => false,
            Plan::Whole => !self.nodes.is_empty(),
            Plan::Changes(chosen) => !chosen.is_empty(),
        };
        let outgoing = match plan {
            _ if held => Outgoing::none(v2),
            Plan::Nothing => Outgoing::none(v2),
            Plan::Whole => Outgoing::whole(self, stored),
            Plan::Changes(chosen) => Outgoing::changes(self, &chosen, v2, stored)?,
        };

        let heads_unchanged = state.last_sent_heads == our_heads;
        let heads_equal = state.their_heads.as_ref() == Some(&our_heads);
        if heads_unchanged && state.have_responded {
            if (heads_equal || state.read_only) && outgoing.hashes.is_empty() {
                return Ok((None, false));
            }
            if state.in_flight {
                return Ok((None, false));
            }
        }
        state.have_responded = true;
        state.last_sent_heads.clone_from(&our_heads);
        state.sent_hashes.extend(outgoing.hashes.iter().copied());

        let mut flags = MessageFlags::new();
        flags.set(MessageFlags::SUPPORTS_SYNC_RESET);
        if state.read_only {
            flags.set(MessageFlags::READ_ONLY);
        }
        let heads = if state.needs_reset {
            state.needs_reset = false;
            if capable(Capability::SyncReset) {
                flags.set(MessageFlags::SYNC_RESET);
                our_heads
            } else {
                // An older peer forgets what it sent when it sees empty heads.
                Vec::new()
            }
        } else {
            our_heads
        };
        state.in_flight = true;
        let message = Message {
            heads,
            need: our_need,
            have: our_have,
            changes: outgoing.chunks,
            flags: Some(flags),
            version: outgoing.version,
        };
        Ok((Some(message.encode()), held))
    }
}

/// When a message holds back the changes it would carry.
#[derive(Debug, Clone, Copy)]
enum Hold {
    Never,
    /// While the peer has changes this side lacks.
    WhilePeerHasMore,
    Always,
}

/// One stored change, as a graph is built from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphChange {
    /// Its hash and dependencies, stored beside it (trusted: whoever stored them took them
    /// from the change).
    Known {
        hash: ChangeHash,
        deps: Vec<ChangeHash>,
    },
    /// Its chunk alone (stored before its hash and dependencies were): read for them.
    Chunk(Vec<u8>),
}

/// The chunks of the `wanted` changes in a document's stored bytes: its save, then the change
/// chunks appended since. An appended change is sliced out, found by the checksum in its
/// header (the first bytes of its hash) and then hashed to be sure. A change inside the save
/// needs the document loaded (milliseconds for a large case): only a peer lacking changes
/// from before the last full save, but too few of them for the whole document to be sent
/// instead, meets that. An error if `stored` is not a document or lacks a wanted change.
fn stored_change_chunks(
    stored: &[u8],
    wanted: &[ChangeHash],
) -> Result<HashMap<ChangeHash, Vec<u8>>> {
    let corrupt = |what: String| CaseFileError::Corrupt(format!("the stored document: {what}"));
    let chunks = split_chunks(stored).ok_or_else(|| corrupt("not whole chunks".into()))?;
    let wanted_set: HashSet<&ChangeHash> = wanted.iter().collect();
    let mut found = HashMap::with_capacity(wanted.len());
    let mut inflater = Inflater::default();
    // The newest first: a peer most often lacks the latest changes.
    for chunk in chunks.iter().rev() {
        if found.len() == wanted.len() {
            break;
        }
        let is_change = matches!(chunk[8], CHANGE_CHUNK | COMPRESSED_CHANGE_CHUNK);
        if !is_change || !wanted.iter().any(|hash| hash.0[..4] == chunk[4..8]) {
            continue;
        }
        let (hash, _) = change_hash_and_deps(chunk, &mut inflater)?;
        if wanted_set.contains(&hash) {
            found.insert(hash, chunk.to_vec());
        }
    }
    if found.len() < wanted.len() {
        let document = Automerge::load(stored).map_err(|e| corrupt(e.to_string()))?;
        for hash in wanted {
            if found.contains_key(hash) {
                continue;
            }
            let mut change = document
                .get_change_by_hash(hash)
                .ok_or_else(|| corrupt(format!("change {hash} is not in it")))?;
            found.insert(*hash, change.bytes().to_vec());
        }
    }
    Ok(found)
}

/// The first bytes of every Automerge chunk.
const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// Chunk types: a change, and a change whose data is DEFLATE-compressed (how Automerge encodes
/// a change for storage once it is large enough).
pub(crate) const CHANGE_CHUNK: u8 = 1;
const COMPRESSED_CHANGE_CHUNK: u8 = 2;
/// And a whole document, which a sync message may carry in place of its changes.
pub(crate) const DOCUMENT_CHUNK: u8 = 0;
/// A compressed change that inflates past this is refused (no change a sync accepts is near).
const MAX_CHANGE_BYTES: u64 = 256 * 1024 * 1024;

/// The hash and dependencies of one change chunk, read from its header: the checksum is
/// checked and the hash computed as Automerge does (SHA-256 of the uncompressed chunk's type,
/// length and data), but the operations are not decoded. A graph is rebuilt from every stored
/// change of a case each time the cache does not hold it, and decoding each change in full
/// cost several times as much (`cargo bench -p doorstep-sync-core --bench case_file -- graph`);
/// the stored changes were decoded and applied when the server accepted them.
fn change_hash_and_deps(
    bytes: &[u8],
    inflater: &mut Inflater,
) -> Result<(ChangeHash, Vec<ChangeHash>)> {
    let corrupt = |what: &str| CaseFileError::Corrupt(format!("a stored change: {what}"));
    if bytes.len() < 9 || bytes[..4] != CHUNK_MAGIC {
        return Err(corrupt("not an Automerge chunk"));
    }
    let (length, data_start) = read_uleb(bytes, 9).ok_or_else(|| corrupt("bad length"))?;
    let data = usize::try_from(length)
        .ok()
        .filter(|length| data_start.checked_add(*length) == Some(bytes.len()))
        .map(|_| &bytes[data_start..])
        .ok_or_else(|| corrupt("its length does not match its bytes"))?;
    let (hash, data) = match bytes[8] {
        CHANGE_CHUNK => (ChangeHash(Sha256::digest(&bytes[8..]).into()), data),
        COMPRESSED_CHANGE_CHUNK => {
            let body = inflater
                .inflate(data)
                .ok_or_else(|| corrupt("bad compression"))?;
            let mut hasher = Sha256::new();
            hasher.update([CHANGE_CHUNK]);
            let (length, length_bytes) = write_uleb(body.len() as u64);
            hasher.update(&length[..length_bytes]);
            hasher.update(body);
            (ChangeHash(hasher.finalize().into()), body)
        }
        _ => return Err(corrupt("not a change")),
    };
    if bytes[4..8] != hash.0[..4] {
        return Err(corrupt("bad checksum"));
    }
    // The data starts with the dependencies: a count, then that many 32-byte hashes.
    let (count, at) = read_uleb(data, 0).ok_or_else(|| corrupt("bad dependencies"))?;
    let deps = usize::try_from(count)
        .ok()
        .and_then(|count| data[at..].get(..count.checked_mul(32)?))
        .ok_or_else(|| corrupt("bad dependencies"))?;
    let deps = hashes_from_bytes(deps).ok_or_else(|| corrupt("bad dependencies"))?;
    Ok((hash, deps))
}

/// Hashes written one after another, 32 bytes each (as a change lists its dependencies, and as
/// the server stores them beside a change); None if the bytes are not whole hashes.
pub fn hashes_from_bytes(bytes: &[u8]) -> Option<Vec<ChangeHash>> {
    if !bytes.len().is_multiple_of(32) {
        return None;
    }
    bytes
        .chunks_exact(32)
        .map(|hash| hash.try_into().ok().map(ChangeHash))
        .collect()
}

/// Whether nothing has been heard from the peer since the state was loaded: Automerge then
/// knows neither what the peer has nor what it needs, and sends no changes of its own accord.
pub(crate) fn unheard(state: &State) -> bool {
    state.their_have.is_none() || state.their_need.is_none()
}

/// The chunks (changes, or a whole document) that `bytes` holds one after another, as a sync
/// message's changes do; None if the bytes are not whole chunks (Automerge then reports what
/// is wrong when it loads them).
pub(crate) fn split_chunks(bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut chunks = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < 9 || rest[..4] != CHUNK_MAGIC {
            return None;
        }
        let (length, data_start) = read_uleb(rest, 9)?;
        let end = usize::try_from(length).ok()?.checked_add(data_start)?;
        let (chunk, after) = rest.split_at_checked(end)?;
        chunks.push(chunk);
        rest = after;
    }
    Some(chunks)
}

/// One DEFLATE decoder and output buffer for all the changes of a graph (a decoder's state is
/// tens of kilobytes, more than most changes).
struct Inflater {
    decoder: flate2::Decompress,
    out: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            decoder: flate2::Decompress::new(false),
            out: Vec::new(),
        }
    }
}

impl Inflater {
    /// The raw DEFLATE stream `data` inflated, or None if it is not one, is cut short or
    /// inflates past [`MAX_CHANGE_BYTES`].
    fn inflate(&mut self, data: &[u8]) -> Option<&[u8]> {
        self.decoder.reset(false);
        self.out.clear();
        loop {
            if self.out.len() as u64 > MAX_CHANGE_BYTES {
                return None;
            }
            // Always room for more output, so that a stall (BufError: no progress possible)
            // can only mean missing input. (With `Finish`, a full output buffer would be a
            // BufError too.)
            self.out.reserve(data.len().saturating_mul(4).max(4096));
            let read = usize::try_from(self.decoder.total_in()).ok()?;
            let status = self
                .decoder
                .decompress_vec(&data[read..], &mut self.out, flate2::FlushDecompress::None)
                .ok()?;
            match status {
                flate2::Status::StreamEnd => return Some(&self.out),
                flate2::Status::BufError => return None,
                flate2::Status::Ok => {}
            }
        }
    }
}

/// `value` as unsigned LEB128, in the first bytes of the array (how many: the second value).
fn write_uleb(mut value: u64) -> ([u8; 10], usize) {
    let mut out = [0; 10];
    for (written, slot) in out.iter_mut().enumerate() {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            *slot = byte;
            return (out, written + 1);
        }
        *slot = byte | 0x80;
    }
    unreachable!("a u64 takes at most ten LEB128 bytes")
}

/// An unsigned LEB128 number at `at`, and where the bytes after it start (None if it runs past
/// the end or past 64 bits).
fn read_uleb(bytes: &[u8], mut at: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(at)?;
        at += 1;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some((value, at));
        }
    }
    None
}

/// What a message would carry of the changes.
enum Plan {
    Nothing,
    Whole,
    Changes(Vec<usize>),
}

/// The changes part of an outgoing message.
struct Outgoing {
    chunks: ChunkList,
    hashes: Vec<ChangeHash>,
    version: MessageVersion,
}

impl Outgoing {
    fn none(v2: bool) -> Self {
        Outgoing {
            chunks: ChunkList::empty(),
            hashes: Vec::new(),
            version: if v2 {
                MessageVersion::V2
            } else {
                MessageVersion::V1
            },
        }
    }

    fn whole(graph: &ChangeGraph, document: &[u8]) -> Self {
        if document.is_empty() {
            return Outgoing::none(true);
        }
        Outgoing {
            chunks: ChunkList::from(document.to_vec()),
            hashes: graph.nodes.iter().map(|n| n.hash).collect(),
            version: MessageVersion::V2,
        }
    }

    fn changes(graph: &ChangeGraph, chosen: &[usize], v2: bool, stored: &[u8]) -> Result<Self> {
        if chosen.is_empty() {
            return Ok(Outgoing::none(v2));
        }
        let hashes: Vec<ChangeHash> = chosen.iter().map(|n| graph.nodes[*n].hash).collect();
        let not_held: Vec<ChangeHash> = chosen
            .iter()
            .map(|n| &graph.nodes[*n])
            .filter(|node| node.bytes.is_none())
            .map(|node| node.hash)
            .collect();
        let mut from_stored = if not_held.is_empty() {
            HashMap::new()
        } else {
            stored_change_chunks(stored, &not_held)?
        };
        let chunks = chosen
            .iter()
            .map(|n| {
                let node = &graph.nodes[*n];
                match &node.bytes {
                    Some(bytes) => Ok(Cow::Borrowed(bytes.as_slice())),
                    None => from_stored
                        .remove(&node.hash)
                        .map(Cow::Owned)
                        .ok_or_else(|| {
                            CaseFileError::Corrupt(format!("change {} was not found", node.hash))
                        }),
                }
            })
            .collect::<Result<Vec<Cow<'_, [u8]>>>>()?;
        Ok(if v2 {
            // One chunk: the changes one after another.
            Outgoing {
                chunks: ChunkList::from(chunks.concat()),
                hashes,
                version: MessageVersion::V2,
            }
        } else {
            Outgoing {
                chunks: ChunkList::from(
                    chunks.into_iter().map(Cow::into_owned).collect::<Vec<_>>(),
                ),
                hashes,
                version: MessageVersion::V1,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn inflates_a_whole_stream_and_refuses_a_cut_one() {
        let text = crate::testing::note(5_000, 7).into_bytes();
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder
            .write_all(&text)
            .unwrap_or_else(|e| unreachable!("{e}"));
        let stream = encoder.finish().unwrap_or_else(|e| unreachable!("{e}"));
        let mut inflater = Inflater::default();
        assert_eq!(inflater.inflate(&stream), Some(text.as_slice()));
        // The decoder is reused: the next stream starts afresh.
        assert_eq!(inflater.inflate(&stream[..stream.len() / 2]), None);
        assert_eq!(inflater.inflate(&stream), Some(text.as_slice()));
        assert_eq!(inflater.inflate(b"not deflate at all"), None);
    }

    #[test]
    fn splits_whole_chunks_and_refuses_cut_or_foreign_bytes() {
        let mut file = crate::testing::new_case("case-split");
        file.add(
            &crate::testing::visit("user-1", crate::testing::at(1), 10),
            crate::testing::at(1),
        )
        .unwrap();
        let chunks: Vec<Vec<u8>> = file
            .doc_mut()
            .get_changes(&[])
            .into_iter()
            .map(|mut change| change.bytes().into_owned())
            .collect();
        assert!(chunks.len() > 1);
        let joined = chunks.concat();
        let split = split_chunks(&joined).unwrap();
        assert_eq!(split, chunks.iter().map(Vec::as_slice).collect::<Vec<_>>());
        assert_eq!(split_chunks(&[]), Some(Vec::new()));
        assert_eq!(split_chunks(&joined[..joined.len() - 1]), None);
        assert_eq!(split_chunks(b"not an automerge chunk"), None);
    }

    #[test]
    fn leb128_round_trips() {
        for value in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let (bytes, len) = write_uleb(value);
            assert_eq!(read_uleb(&bytes[..len], 0), Some((value, len)));
        }
    }
}
