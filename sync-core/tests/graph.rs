//! The change graph speaks Automerge's sync protocol exactly as a case file does: message by
//! message, a server answering from a [`ChangeGraph`] (and applying changes to a document only
//! when a message brings some) leaves the same sync state and sends the same heads, needs,
//! bloom filters and flags as a server answering from the document (Automerge itself, and the
//! unasked changes of a first message).

#![allow(clippy::unwrap_used, reason = "a test fails loudly on purpose")]
use automerge::sync::Message;
use doorstep_sync_core::{ActorId, Author, CaseFile, ChangeGraph, GraphChange, PeerState, testing};
use proptest::prelude::*;

const PHONES: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// A phone records a visit offline.
    Record { phone: usize },
    /// A phone and the server exchange messages until neither has anything to say.
    Sync { phone: usize },
    /// The server forgets all but the persistent part of a phone's sync state (what a
    /// stateless server does between requests).
    ReloadServerState { phone: usize },
    /// A phone restarts: same, on its side.
    RestartPhone { phone: usize },
    /// One exchange whose reply from the server is lost on the way; the session ends, and
    /// both sides keep only the persistent part of their sync state.
    LoseReply { phone: usize },
    /// The server keeps its graph in a cache, which holds no change bytes: what it sends later
    /// is read from the stored document.
    ServerCachesGraph,
    /// The server stores a full save of the document in place of its save and appended
    /// changes (and caches the graph): what it sends later is read from inside the save.
    ServerCompacts,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..PHONES).prop_map(|phone| Op::Record { phone }),
        4 => (0..PHONES).prop_map(|phone| Op::Sync { phone }),
        1 => (0..PHONES).prop_map(|phone| Op::ReloadServerState { phone }),
        1 => (0..PHONES).prop_map(|phone| Op::RestartPhone { phone }),
        1 => (0..PHONES).prop_map(|phone| Op::LoseReply { phone }),
        1 => Just(Op::ServerCachesGraph),
        1 => Just(Op::ServerCompacts),
    ]
}

struct Phone {
    file: CaseFile,
    author: Author,
    state: PeerState,
}

struct World {
    /// The server as a case file runs it: one document, its own sync.
    reference: CaseFile,
    reference_states: Vec<PeerState>,
    /// The server under test: a graph for the protocol, a document for received changes.
    graph: ChangeGraph,
    document: CaseFile,
    /// The document as the server stores it: its first save, then every change received since.
    stored: Vec<u8>,
    graph_states: Vec<PeerState>,
    phones: Vec<Phone>,
    minute: i64,
}

/// As the server builds it from its rows: every other change with the hash and dependencies
/// stored beside it, the rest (rows stored before that column) read from their bytes. It
/// holds no change bytes: what it sends is read from the stored document.
fn graph_of(file: &mut CaseFile) -> ChangeGraph {
    let changes = file.doc_mut().get_changes(&[]);
    ChangeGraph::from_graph_changes(changes.into_iter().enumerate().map(|(i, mut change)| {
        if i % 2 == 0 {
            GraphChange::Known {
                hash: change.hash(),
                deps: change.deps().to_vec(),
            }
        } else {
            GraphChange::Chunk(change.bytes().to_vec())
        }
    }))
    .unwrap()
}

impl World {
    fn new() -> Self {
        let mut reference = testing::new_case("case-graph");
        let document = CaseFile::load(
            &reference.save(),
            testing::author("server", "server"),
            testing::actor(0),
        )
        .unwrap();
        let mut source = CaseFile::load(
            &reference.save(),
            testing::author("server", "server"),
            testing::actor(0),
        )
        .unwrap();
        let phones = (0..PHONES)
            .map(|i| {
                let author = testing::author(&format!("u{i}"), &format!("phone-{i}"));
                let actor = testing::actor(i as u32 + 1);
                // Phone 0 starts with nothing (a new device); the others hold the case.
                let file = if i == 0 {
                    CaseFile::empty(author.clone(), actor)
                } else {
                    testing::replica(&mut source, author.clone(), actor).unwrap()
                };
                Phone {
                    file,
                    author,
                    state: PeerState::new(),
                }
            })
            .collect();
        World {
            stored: reference.save(),
            graph: graph_of(&mut reference),
            reference,
            reference_states: vec![PeerState::new(); PHONES],
            document,
            graph_states: vec![PeerState::new(); PHONES],
            phones,
            minute: 0,
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Record { phone } => {
                self.minute += 1;
                let at = testing::at(self.minute);
                self.phones[phone]
                    .file
                    .add(&testing::visit("u", at, 40), at)
                    .unwrap();
            }
            Op::Sync { phone } => self.sync(phone),
            Op::ReloadServerState { phone } => {
                for states in [&mut self.reference_states, &mut self.graph_states] {
                    states[phone] = PeerState::decode(&states[phone].encode()).unwrap();
                }
            }
            Op::LoseReply { phone } => {
                let Phone { file, state, .. } = &mut self.phones[phone];
                if let Some(message) = file.generate_sync_message(state) {
                    self.server_receives(phone, &message);
                }
                self.server_sends(phone);
                self.apply(&Op::ReloadServerState { phone });
                self.apply(&Op::RestartPhone { phone });
            }
            Op::RestartPhone { phone } => {
                let state = &mut self.phones[phone].state;
                *state = PeerState::decode(&state.encode()).unwrap();
            }
            Op::ServerCachesGraph => self.graph.forget_change_bytes(),
            Op::ServerCompacts => {
                self.stored = self.document.save();
                self.graph.forget_change_bytes();
            }
        }
    }

    /// The server's side of one message from `phone`, run on both servers, compared.
    fn server_receives(&mut self, phone: usize, message: &[u8]) {
        self.reference
            .receive_sync_message(&mut self.reference_states[phone], message)
            .unwrap();
        let state = &mut self.graph_states[phone];
        // As in `server_sends`: while the document holds back changes, it alone knows of them,
        // so it takes every message (each receive then asks the phone for a sync reset).
        let holding_back = self.document.holds_back_changes();
        if holding_back || !self.graph.receive_sync_message(state, message).unwrap() {
            let sender = self.phones[phone].author.clone();
            let applied = self
                .document
                .receive_sync_message_checked(state, message, &sender, |_: &ActorId| true)
                .unwrap();
            for change in applied {
                self.stored.extend_from_slice(&change.bytes);
                self.graph
                    .add(change.hash, &change.deps, change.bytes)
                    .unwrap();
            }
        }
        assert_eq!(self.graph.heads(), self.reference.heads());
        assert_eq!(self.graph_states[phone], self.reference_states[phone]);
    }

    /// The server's next message to `phone` from both servers, compared; the graph's is the
    /// one sent.
    fn server_sends(&mut self, phone: usize) -> Option<Vec<u8>> {
        let expected = self
            .reference
            .generate_sync_message(&mut self.reference_states[phone]);
        let (document, stored) = (&mut self.document, &self.stored);
        let state = &mut self.graph_states[phone];
        // Changes received without their dependencies are held back by the document, which
        // then asks for those dependencies: the graph knows nothing of them, so the document
        // answers (a bloom filter's false positive can lead here).
        let sent = if document.holds_back_changes() {
            document.generate_sync_message(state)
        } else {
            self.graph.generate_sync_message(state, stored).unwrap()
        };
        assert_eq!(self.graph_states[phone], self.reference_states[phone]);
        match (&expected, &sent) {
            (None, None) => {}
            (Some(expected), Some(sent)) => {
                let (expected, sent) = (
                    Message::decode(expected).unwrap(),
                    Message::decode(sent).unwrap(),
                );
                assert_eq!(sent.heads, expected.heads);
                assert_eq!(sent.need, expected.need);
                assert_eq!(sent.have, expected.have);
                assert_eq!(sent.flags, expected.flags);
                assert_eq!(sent.version, expected.version);
                assert_eq!(sent.changes.is_empty(), expected.changes.is_empty());
            }
            _ => panic!("Automerge sent {expected:?}, the graph {sent:?}"),
        }
        sent
    }

    fn sync(&mut self, phone: usize) {
        for _ in 0..20 {
            let Phone { file, state, .. } = &mut self.phones[phone];
            let to_server = file.generate_sync_message(state);
            if let Some(message) = &to_server {
                self.server_receives(phone, message);
            }
            let to_phone = self.server_sends(phone);
            if let Some(message) = &to_phone {
                let Phone { file, state, .. } = &mut self.phones[phone];
                file.receive_sync_message(state, message).unwrap();
            }
            if to_server.is_none() && to_phone.is_none() {
                assert_eq!(
                    self.phones[phone].file.heads(),
                    self.reference.heads(),
                    "phone {phone} settled without the server's heads"
                );
                return;
            }
        }
        panic!("phone {phone} did not settle with the server in 20 rounds");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_server_answering_from_the_change_graph_behaves_as_automerge(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        let mut world = World::new();
        for op in &ops {
            world.apply(op);
        }
        for phone in 0..PHONES {
            world.sync(phone);
        }
        for phone in 0..PHONES {
            world.sync(phone);
            prop_assert_eq!(world.phones[phone].file.heads(), world.reference.heads());
        }
    }
}

#[test]
fn stored_changes_in_any_order_make_the_same_graph() {
    let mut file = testing::new_case("case-order");
    for minute in 1..6 {
        file.add(
            &testing::visit("u", testing::at(minute), 20),
            testing::at(minute),
        )
        .unwrap();
    }
    let mut changes: Vec<Vec<u8>> = file
        .doc_mut()
        .get_changes(&[])
        .into_iter()
        .map(|mut c| c.bytes().to_vec())
        .collect();
    changes.reverse();
    let graph = ChangeGraph::from_changes(changes.clone()).unwrap();
    assert_eq!(graph.heads(), file.heads());
    assert_eq!(graph.len(), changes.len());
    // The same from hashes and dependencies stored beside the bytes.
    let known = file
        .doc_mut()
        .get_changes(&[])
        .into_iter()
        .rev()
        .map(|change| GraphChange::Known {
            hash: change.hash(),
            deps: change.deps().to_vec(),
        });
    let from_known = ChangeGraph::from_graph_changes(known).unwrap();
    assert_eq!(from_known.heads(), file.heads());
    assert_eq!(from_known.len(), changes.len());

    // Without the first change (the one every other depends on), it is not a whole document.
    changes.pop();
    assert!(ChangeGraph::from_changes(changes).is_err());
    // Nor is a chunk that is not a change.
    assert!(ChangeGraph::from_changes([vec![1, 2, 3]]).is_err());
}

/// The bytes of every change of `file`, as Automerge encodes them for storage and, uncompressed,
/// as they travel in a sync message.
fn change_chunks(file: &mut CaseFile) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    file.doc_mut()
        .get_changes(&[])
        .into_iter()
        .map(|mut c| (c.bytes().to_vec(), c.raw_bytes().to_vec()))
        .unzip()
}

/// A case edited on two phones at once and merged: a change with several dependencies, by
/// three actors, one with a note long enough for Automerge to compress its chunk.
fn merged_case() -> CaseFile {
    let mut server = testing::new_case("case-merged");
    let mut phone_a =
        testing::replica(&mut server, testing::author("a", "da"), testing::actor(1)).unwrap();
    let mut phone_b =
        testing::replica(&mut server, testing::author("b", "db"), testing::actor(2)).unwrap();
    for minute in 1..4 {
        let at = testing::at(minute);
        phone_a.add(&testing::visit("a", at, 40), at).unwrap();
        phone_b.add(&testing::visit("b", at, 4_000), at).unwrap();
    }
    server.doc_mut().merge(phone_a.doc_mut()).unwrap();
    server.doc_mut().merge(phone_b.doc_mut()).unwrap();
    let at = testing::at(9);
    server.add(&testing::visit("s", at, 40), at).unwrap();
    server
}

#[test]
fn a_graph_reads_each_change_as_automerge_does() {
    let mut file = merged_case();
    let (stored, raw) = change_chunks(&mut file);
    assert!(
        stored.iter().any(|c| c[8] == 2) && raw.iter().all(|c| c[8] == 1),
        "the case holds compressed and uncompressed change chunks"
    );
    let changes = file.doc_mut().get_changes(&[]);
    assert!(changes.iter().any(|c| c.deps().len() > 1), "a merge");
    for chunks in [stored, raw] {
        let graph = ChangeGraph::from_changes(chunks.iter().rev().cloned()).unwrap();
        assert_eq!(graph.heads(), file.heads());
        assert_eq!(graph.len(), changes.len());
        // The heads are right only if every change's dependencies were read right.
        for change in &changes {
            assert!(graph.contains(&change.hash()));
        }
        let mut peer = PeerState::new();
        let mut reference = PeerState::new();
        let first = graph
            .generate_sync_message(&mut peer, &[])
            .unwrap()
            .unwrap();
        let expected = file.generate_sync_message(&mut reference).unwrap();
        assert_eq!(
            Message::decode(&first).unwrap().have[0].bloom.to_bytes(),
            Message::decode(&expected).unwrap().have[0].bloom.to_bytes()
        );
    }
}

#[test]
fn a_damaged_change_chunk_is_refused() {
    let (_, raw) = change_chunks(&mut merged_case());
    let chunk = raw.last().unwrap().clone();
    let mut truncated = chunk.clone();
    truncated.pop();
    let mut trailing = chunk.clone();
    trailing.push(0);
    let mut huge_deps = chunk.clone();
    // The data's first bytes (after magic, checksum, type and a two-byte length) are the count
    // of dependencies.
    huge_deps.splice(11..12, [0xff, 0xff, 0xff, 0xff, 0x0f]);
    for damaged in [
        truncated,
        trailing,
        huge_deps,
        vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1],
    ] {
        assert!(ChangeGraph::from_changes([damaged]).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any byte of a stored change chunk changed: the graph is refused (the checksum, the
    /// header or the compression catches it) or, where the change was only in a compressed
    /// chunk's unused bits, is the same graph; never a wrong graph, never a panic.
    #[test]
    fn any_changed_byte_of_a_change_is_caught(
        compressed in any::<bool>(),
        position in any::<prop::sample::Index>(),
        flip in 1u8..,
    ) {
        let mut file = merged_case();
        let (stored, raw) = change_chunks(&mut file);
        let chunks = if compressed { stored } else { raw };
        let target = chunks.iter().rposition(|c| (c[8] == 2) == compressed).unwrap();
        let mut damaged = chunks.clone();
        let at = position.index(damaged[target].len());
        damaged[target][at] ^= flip;
        match ChangeGraph::from_changes(damaged) {
            Err(_) => {}
            Ok(graph) => {
                prop_assert!(compressed, "a changed byte of an uncompressed change passed");
                prop_assert_eq!(graph.heads(), file.heads());
            }
        }
    }
}

/// During a mass reconnect the server answers a phone that has changes it lacks without the
/// changes the phone lacks (they would come again with the other phones' changes committed
/// meanwhile): the answer still makes the phone send its own changes, and the server's next
/// message carries all the phone lacks, in one message, as if the first had not been sent.
/// A phone with nothing to send gets them at once.
#[test]
fn an_answer_asking_first_gets_the_phones_changes_and_the_next_carries_its_own() {
    let (mut server, mut phone, mut other) = a_case_and_two_phones();
    record_visits(&mut other, "u2", 1..=6);
    server.doc_mut().merge(other.doc_mut()).unwrap();
    record_visits(&mut phone, "u1", 10..=12);
    let mut graph = graph_of(&mut server);
    let mut stored = server.save();
    let (mut server_state, mut phone_state) = (PeerState::new(), PeerState::new());

    // The phone's first message: its heads and a bloom filter (its changes wait to be asked).
    let first = phone.generate_sync_message(&mut phone_state).unwrap();
    assert!(!doorstep_sync_core::brings_changes(&first));
    assert!(
        graph
            .receive_sync_message(&mut server_state, &first)
            .unwrap()
    );
    let (answer, held) = graph
        .generate_sync_message_asking_first(&mut server_state, &stored)
        .unwrap();
    let answer = answer.unwrap();
    assert!(held, "the phone lacks six visits");
    assert!(Message::decode(&answer).unwrap().changes.is_empty());

    // The phone sends its three visits, as it would for a full answer.
    phone
        .receive_sync_message(&mut phone_state, &answer)
        .unwrap();
    let upload = phone.generate_sync_message(&mut phone_state).unwrap();
    let received = receive_upload(
        &mut server,
        &mut graph,
        &mut stored,
        &mut server_state,
        &upload,
    );
    assert_eq!(received, 3);

    // The server lacks nothing now: the next message carries every visit the phone lacks.
    let (next, held) = graph
        .generate_sync_message_asking_first(&mut server_state, &stored)
        .unwrap();
    assert!(!held);
    let next = next.unwrap();
    assert!(doorstep_sync_core::brings_changes(&next));
    phone.receive_sync_message(&mut phone_state, &next).unwrap();
    assert_eq!(phone.heads(), server.heads());
    assert_eq!(visits(&phone), 9);

    // A new phone, with nothing to send, gets the whole case at once.
    let mut new_phone = CaseFile::empty(testing::author("u3", "d3"), testing::actor(3));
    let (mut state, mut new_phone_state) = (PeerState::new(), PeerState::new());
    let hello = new_phone
        .generate_sync_message(&mut new_phone_state)
        .unwrap();
    graph.receive_sync_message(&mut state, &hello).unwrap();
    let (whole, held) = graph
        .generate_sync_message_asking_first(&mut state, &stored)
        .unwrap();
    assert!(!held);
    new_phone
        .receive_sync_message(&mut new_phone_state, &whole.unwrap())
        .unwrap();
    assert_eq!(new_phone.heads(), server.heads());
}

/// An HTTP upload's answer waits in memory until the request's other uploads are done, so it
/// carries none of the server's changes: the phone then asks for what it lacks, and the
/// server's next message carries all of it, as if the first had not been sent.
#[test]
fn an_answer_without_changes_makes_the_phone_ask_and_the_next_carries_them() {
    let (mut server, mut phone, mut other) = a_case_and_two_phones();
    record_visits(&mut phone, "u1", 10..=12);
    let (mut server_state, mut phone_state) = (PeerState::new(), PeerState::new());

    // The phone's first message, and the server's answer asking for its visits.
    let graph = graph_of(&mut server);
    let stored = server.save();
    let hello = phone.generate_sync_message(&mut phone_state).unwrap();
    graph
        .receive_sync_message(&mut server_state, &hello)
        .unwrap();
    let ask = graph
        .generate_sync_message(&mut server_state, &stored)
        .unwrap()
        .unwrap();
    phone.receive_sync_message(&mut phone_state, &ask).unwrap();

    // Meanwhile another phone's six visits reach the server.
    record_visits(&mut other, "u2", 1..=6);
    server.doc_mut().merge(other.doc_mut()).unwrap();
    let mut graph = graph_of(&mut server);
    let mut stored = server.save();

    // The upload, and its answer: the server's heads, none of its changes.
    let upload = phone.generate_sync_message(&mut phone_state).unwrap();
    assert!(doorstep_sync_core::brings_changes(&upload));
    let received = receive_upload(
        &mut server,
        &mut graph,
        &mut stored,
        &mut server_state,
        &upload,
    );
    assert_eq!(received, 3);
    let (answer, held) = graph
        .generate_sync_message_without_changes(&mut server_state, &stored)
        .unwrap();
    assert!(held, "the phone lacks six visits");
    let answer = answer.unwrap();
    assert!(Message::decode(&answer).unwrap().changes.is_empty());

    // The phone asks for them, and the server's next message carries every one.
    phone
        .receive_sync_message(&mut phone_state, &answer)
        .unwrap();
    let asking = phone.generate_sync_message(&mut phone_state).unwrap();
    assert!(!doorstep_sync_core::brings_changes(&asking));
    assert!(!Message::decode(&asking).unwrap().need.is_empty());
    assert!(
        graph
            .receive_sync_message(&mut server_state, &asking)
            .unwrap()
    );
    let next = graph
        .generate_sync_message(&mut server_state, &stored)
        .unwrap()
        .unwrap();
    phone.receive_sync_message(&mut phone_state, &next).unwrap();
    assert_eq!(phone.heads(), server.heads());
    assert_eq!(visits(&phone), 9);
}

/// A server that reads a phone's messages several at a time (a WebSocket batch of frames, or
/// an answer held back while others sync) may read the phone's changes and then, before it
/// answers, the phone's answer to a push, at the heads those changes gave the server.
/// Automerge takes such a message as the phone holding everything and records those heads as
/// sent; the server must still answer, or the phone never learns that its changes arrived
/// (they stay in flight in its sync state, and a client waiting for the server to hold them
/// waits for ever). Read from the document and from the change graph alike.
#[test]
fn changes_read_before_a_message_at_their_new_heads_are_still_acknowledged() {
    for graph_reads_the_answer in [false, true] {
        let (mut server, mut phone, _) = a_case_and_two_phones();
        let (mut server_state, mut phone_state) = (PeerState::new(), PeerState::new());
        testing::sync_until_quiet(&mut server, &mut server_state, &mut phone, &mut phone_state)
            .unwrap();

        // The server pushes a change of its own while the phone sends one.
        record_visits(&mut server, "u2", 1..=1);
        let push = server.generate_sync_message(&mut server_state).unwrap();
        record_visits(&mut phone, "u1", 10..=10);
        let upload = phone.generate_sync_message(&mut phone_state).unwrap();
        assert!(doorstep_sync_core::brings_changes(&upload));
        phone.receive_sync_message(&mut phone_state, &push).unwrap();
        let answer = phone.generate_sync_message(&mut phone_state).unwrap();
        assert!(!doorstep_sync_core::brings_changes(&answer));
        assert_eq!(phone_state.changes_in_flight(), 1);

        // The server reads both before it answers.
        let sender = testing::author("u1", "d1");
        let applied = server
            .receive_sync_message_checked(&mut server_state, &upload, &sender, |_: &ActorId| true)
            .unwrap();
        assert_eq!(applied.len(), 1);
        assert_eq!(server.heads(), phone.heads());
        let reply = if graph_reads_the_answer {
            let graph = graph_of(&mut server);
            assert!(
                graph
                    .receive_sync_message(&mut server_state, &answer)
                    .unwrap()
            );
            graph
                .generate_sync_message(&mut server_state, &server.save())
                .unwrap()
        } else {
            server
                .receive_sync_message_checked(&mut server_state, &answer, &sender, |_: &ActorId| {
                    true
                })
                .unwrap();
            server.generate_sync_message(&mut server_state)
        };
        let reply = reply.expect("the server tells the phone it holds its change");
        phone
            .receive_sync_message(&mut phone_state, &reply)
            .unwrap();
        assert_eq!(phone_state.changes_in_flight(), 0);
        assert_eq!(phone_state.their_heads(), Some(&phone.heads()[..]));
        // And that is the end of it: neither side has more to say.
        assert_eq!(phone.generate_sync_message(&mut phone_state), None);
    }
}

/// The server's copy of a case, and two phones' replicas of it (users u1 and u2).
fn a_case_and_two_phones() -> (CaseFile, CaseFile, CaseFile) {
    let mut server = testing::new_case("case-held");
    let phone =
        testing::replica(&mut server, testing::author("u1", "d1"), testing::actor(1)).unwrap();
    let other =
        testing::replica(&mut server, testing::author("u2", "d2"), testing::actor(2)).unwrap();
    (server, phone, other)
}

/// Records a short visit by `user` at each of `minutes`.
fn record_visits(file: &mut CaseFile, user: &str, minutes: std::ops::RangeInclusive<i64>) {
    for minute in minutes {
        let at = testing::at(minute);
        file.add(&testing::visit(user, at, 40), at).unwrap();
    }
}

fn visits(file: &CaseFile) -> usize {
    file.list::<doorstep_sync_core::records::HomeVisit>()
        .unwrap()
        .len()
}

/// The server's side of a phone's upload, as the sync path takes it: the graph alone cannot
/// receive changes, so the document applies them with the checked receive, and the graph and
/// the stored bytes take what it applied. Returns how many changes it applied.
fn receive_upload(
    server: &mut CaseFile,
    graph: &mut ChangeGraph,
    stored: &mut Vec<u8>,
    state: &mut PeerState,
    upload: &[u8],
) -> usize {
    assert!(!graph.receive_sync_message(state, upload).unwrap());
    let sender = testing::author("u1", "d1");
    let applied = server
        .receive_sync_message_checked(state, upload, &sender, |_: &ActorId| true)
        .unwrap();
    let count = applied.len();
    for change in applied {
        stored.extend_from_slice(&change.bytes);
        graph.add(change.hash, &change.deps, change.bytes).unwrap();
    }
    count
}

/// A graph built from stored rows, or kept in a cache, holds no change bytes: the changes a
/// message sends are read from the stored document, sliced out of the changes appended to its
/// save or, for those inside the save, from the document loaded; a peer gets the same changes
/// either way.
#[test]
fn a_graph_without_change_bytes_sends_changes_read_from_the_stored_document() {
    let (mut server, mut phone, mut other) = a_case_and_two_phones();
    // The phone has synced everything but the server's last two visits, which it stored
    // appended to its save.
    record_visits(&mut other, "u2", 1..=12);
    server.doc_mut().merge(other.doc_mut()).unwrap();
    phone.doc_mut().merge(other.doc_mut()).unwrap();
    let saved = server.save();
    let before = server.heads();
    record_visits(&mut server, "u3", 20..=21);
    let mut appended = saved.clone();
    for mut change in server.doc_mut().get_changes(&before) {
        appended.extend_from_slice(&change.bytes());
    }
    let compacted = server.save();

    for (stored, what) in [(appended, "appended"), (compacted, "inside the save")] {
        let mut graph = graph_of(&mut server);
        assert!(!graph.holds_change_bytes());
        let mut copy = CaseFile::load(
            &phone.save(),
            testing::author("u1", "d1"),
            testing::actor(1),
        )
        .unwrap();
        let (mut server_state, mut phone_state) = (PeerState::new(), PeerState::new());
        for _ in 0..4 {
            let to_server = copy.generate_sync_message(&mut phone_state);
            if let Some(message) = &to_server
                && !graph
                    .receive_sync_message(&mut server_state, message)
                    .unwrap()
            {
                panic!("the phone sent changes");
            }
            let to_phone = graph
                .generate_sync_message(&mut server_state, &stored)
                .unwrap();
            if let Some(message) = &to_phone {
                assert!(
                    message.len() < stored.len() / 2,
                    "{what}: the two visits, not the whole case"
                );
                copy.receive_sync_message(&mut phone_state, message)
                    .unwrap();
            }
            if to_server.is_none() && to_phone.is_none() {
                break;
            }
        }
        assert_eq!(copy.heads(), server.heads(), "{what}");
        assert_eq!(visits(&copy), 14, "{what}");
        graph.forget_change_bytes();
    }

    // Stored bytes that lack a change the graph names are an error, and change nothing.
    let graph = graph_of(&mut server);
    let mut state = PeerState::new();
    let hello = phone.generate_sync_message(&mut PeerState::new()).unwrap();
    graph.receive_sync_message(&mut state, &hello).unwrap();
    let before = state.clone();
    assert!(graph.generate_sync_message(&mut state, &saved).is_err());
    assert_eq!(state, before);
}
