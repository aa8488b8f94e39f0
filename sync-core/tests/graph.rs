//! The change graph speaks Automerge's sync protocol exactly as Automerge does: message by
//! message, a server answering from a [`ChangeGraph`] (and applying changes to a document only
//! when a message brings some) leaves the same sync state and sends the same heads, needs,
//! bloom filters and flags as a server answering from the document with Automerge itself.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on purpose")]
use automerge::sync::Message;
use doorstep_sync_core::{ActorId, Author, CaseFile, ChangeGraph, PeerState, testing};
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
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..PHONES).prop_map(|phone| Op::Record { phone }),
        4 => (0..PHONES).prop_map(|phone| Op::Sync { phone }),
        1 => (0..PHONES).prop_map(|phone| Op::ReloadServerState { phone }),
        1 => (0..PHONES).prop_map(|phone| Op::RestartPhone { phone }),
        1 => (0..PHONES).prop_map(|phone| Op::LoseReply { phone }),
    ]
}

struct Phone {
    file: CaseFile,
    author: Author,
    state: PeerState,
}

struct World {
    /// The server as Automerge would run it: one document, Automerge's own sync.
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

fn graph_of(file: &mut CaseFile) -> ChangeGraph {
    let changes = file.doc_mut().get_changes(&[]);
    ChangeGraph::from_changes(changes.into_iter().map(|mut c| c.bytes().to_vec())).unwrap()
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
        }
    }

    /// The server's side of one message from `phone`, run on both servers, compared.
    fn server_receives(&mut self, phone: usize, message: &[u8]) {
        self.reference
            .receive_sync_message(&mut self.reference_states[phone], message)
            .unwrap();
        let state = &mut self.graph_states[phone];
        if !self.graph.receive_sync_message(state, message).unwrap() {
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
            self.graph.generate_sync_message(state, || stored.clone())
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

    // Without the first change (the one every other depends on), it is not a whole document.
    changes.pop();
    assert!(ChangeGraph::from_changes(changes).is_err());
    // Nor is a chunk that is not a change.
    assert!(ChangeGraph::from_changes([vec![1, 2, 3]]).is_err());
}
