//! Several devices' uploads to one case received together (`receive_uploads_checked`): the
//! same document, applied changes and peer states as receiving each in turn, or nothing at all
//! where one of them must be received alone.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on purpose"
)]

use automerge::sync::{ChunkList, Message};
use automerge::{ROOT, ReadDoc, transaction::Transactable};
use doorstep_sync_core::testing::{self, at};
use doorstep_sync_core::{
    ActorId, AppliedChange, Author, CaseFile, PeerState, Upload, brings_changes,
};

/// A phone's offline work and the server's view of it: its sender, its first message that
/// brings changes, and the server's peer state for the phone just before that message.
struct PhoneUpload {
    sender: Author,
    actor: ActorId,
    state: PeerState,
    message: Vec<u8>,
}

fn copy(file: &mut CaseFile) -> CaseFile {
    CaseFile::load(
        &file.save(),
        testing::author("server", "server"),
        testing::actor(99),
    )
    .unwrap()
}

/// Phones 1..=n, each a replica of `server` as stored, that recorded `visits` visits offline
/// (`edit` may change a phone's document further), each then syncing with its own copy of the
/// server until it sends its changes.
fn uploads(
    server: &mut CaseFile,
    phones: u32,
    visits: i64,
    edit: impl Fn(u32, &mut CaseFile),
) -> Vec<PhoneUpload> {
    (1..=phones)
        .map(|n| {
            let sender = testing::author(&format!("user-{n}"), &format!("phone-{n}"));
            let actor = testing::actor(n);
            let mut phone = testing::replica(server, sender.clone(), actor.clone()).unwrap();
            for i in 0..visits {
                let started = at(100 * i64::from(n) + i);
                phone
                    .add(&testing::visit(&sender.user_id, started, 40), started)
                    .unwrap();
            }
            edit(n, &mut phone);
            let mut at_server = copy(server);
            let (mut state, mut phone_state) = (PeerState::new(), PeerState::new());
            for _ in 0..10 {
                if let Some(m) = at_server.generate_sync_message(&mut state) {
                    phone.receive_sync_message(&mut phone_state, &m).unwrap();
                }
                let message = phone.generate_sync_message(&mut phone_state).unwrap();
                if brings_changes(&message) {
                    return PhoneUpload {
                        sender,
                        actor,
                        state,
                        message,
                    };
                }
                at_server
                    .receive_sync_message_checked(&mut state, &message, &sender, |_| true)
                    .unwrap();
            }
            panic!("phone {n} never sent its changes");
        })
        .collect()
}

/// Receives `uploads` together into `server`, each phone allowed only its own actor.
fn receive_together(
    server: &mut CaseFile,
    uploads: &[PhoneUpload],
    states: &mut [PeerState],
) -> Option<Vec<Vec<AppliedChange>>> {
    type Allowed = Box<dyn Fn(&ActorId) -> bool>;
    let allowed: Vec<Allowed> = uploads
        .iter()
        .map(|u| {
            let own = u.actor.clone();
            Box::new(move |actor: &ActorId| *actor == own) as Allowed
        })
        .collect();
    let mut together: Vec<Upload<'_>> = uploads
        .iter()
        .zip(states.iter_mut())
        .zip(&allowed)
        .map(|((u, state), allowed)| Upload {
            peer: state,
            message: &u.message,
            sender: &u.sender,
            actor_allowed: allowed.as_ref(),
        })
        .collect();
    server.receive_uploads_checked(&mut together)
}

fn encoded(states: &[PeerState]) -> Vec<Vec<u8>> {
    states.iter().map(PeerState::encode).collect()
}

#[test]
fn uploads_received_together_end_as_received_in_turn() {
    // A new case: each phone's visits are more than a third of its document, so it sends the
    // whole document. With a history: it sends its changes.
    for history in [0, 12] {
        // Random record ids: a phone's bloom filter can, about once in a hundred, take a change
        // for one the server has, and leave it out of the upload; the server then holds the
        // rest back, which is received one at a time. Another set of ids then.
        let checked = (0..5).any(|_| {
            let mut server = testing::new_case("case-together");
            for i in 0..history {
                server
                    .add(&testing::visit("user-0", at(i), 40), at(i))
                    .unwrap();
            }
            let uploads = uploads(&mut server, 4, 3, |_, _| {});
            assert_received_as_in_turn(&mut server, &uploads)
        });
        assert!(checked, "five sets of uploads all left changes held back");
    }
}

/// Receiving `uploads` together leaves the document, the applied changes, the peer states
/// and the server's next messages as receiving them in turn does. False, checking nothing,
/// where receiving them in turn leaves changes held back.
fn assert_received_as_in_turn(server: &mut CaseFile, uploads: &[PhoneUpload]) -> bool {
    let mut in_turn = copy(server);
    let mut turn_states: Vec<PeerState> = uploads.iter().map(|u| u.state.clone()).collect();
    let turn_applied: Vec<Vec<AppliedChange>> = uploads
        .iter()
        .zip(&mut turn_states)
        .map(|(u, state)| {
            in_turn
                .receive_sync_message_checked(state, &u.message, &u.sender, |a| *a == u.actor)
                .unwrap()
        })
        .collect();
    if in_turn.holds_back_changes() {
        return false;
    }

    let mut together = copy(server);
    let mut states: Vec<PeerState> = uploads.iter().map(|u| u.state.clone()).collect();
    let applied = receive_together(&mut together, uploads, &mut states)
        .expect("the phones' visits and actor registrations are received together");

    assert_eq!(together.heads(), in_turn.heads());
    let hashes = |applied: &[Vec<AppliedChange>]| -> Vec<Vec<_>> {
        applied
            .iter()
            .map(|a| {
                a.iter()
                    .map(|c| (c.hash, c.actor.clone(), c.deps.clone()))
                    .collect()
            })
            .collect()
    };
    assert_eq!(
        hashes(&applied),
        hashes(&turn_applied),
        "each upload reports what it applied, as in turn"
    );
    assert_eq!(encoded(&states), encoded(&turn_states));
    for (state, turn_state) in states.iter_mut().zip(&mut turn_states) {
        assert_same_message(
            together.generate_sync_message(state),
            in_turn.generate_sync_message(turn_state),
        );
    }
    assert!(together.validate().is_ok());
    true
}

#[test]
fn uploads_are_received_one_at_a_time_where_one_would_be_refused() {
    // Phone 2 records a visit naming phone 1's user; phone 3's changes are made by an actor
    // it may not use; phone 4 registers phone 1's actor under its own name.
    let mut server = testing::new_case("case-refused");
    let forged = uploads(&mut server, 4, 2, |n, phone| match n {
        2 => {
            let doc = phone.doc_mut();
            let (_, visits) = doc.get(ROOT, "visits").unwrap().unwrap();
            let id = doc.keys(&visits).next().unwrap();
            let (_, record) = doc.get(&visits, id.as_str()).unwrap().unwrap();
            let (_, meta) = doc.get(&record, "meta").unwrap().unwrap();
            doc.put(&meta, "user_id", "user-1").unwrap();
            doc.commit();
        }
        4 => {
            let doc = phone.doc_mut();
            let (_, actors) = doc.get(ROOT, "actors").unwrap().unwrap();
            let author = serde_json::json!({"user_id": "user-4", "device_id": "phone-4"});
            doc.put(
                &actors,
                testing::actor(1).to_hex_string(),
                author.to_string(),
            )
            .unwrap();
            doc.commit();
        }
        _ => {}
    });
    let honest = &forged[0];
    for (refused, case) in [
        (&forged[1], "a record naming someone else"),
        (&forged[3], "another phone's actor registered as its own"),
    ] {
        let pair = [clone_upload(honest), clone_upload(refused)];
        assert_refused_together(&mut server, &pair, case);
    }
    let mut wrong_actor = clone_upload(&forged[2]);
    wrong_actor.actor = testing::actor(77);
    assert_refused_together(
        &mut server,
        &[clone_upload(honest), wrong_actor],
        "an actor the device may not use",
    );
}

#[test]
fn changes_whose_dependencies_are_missing_are_received_alone() {
    let mut server = testing::new_case("case-gap");
    for i in 0..12 {
        server
            .add(&testing::visit("user-0", at(i), 40), at(i))
            .unwrap();
    }
    let stored_heads = server.heads();
    let mut phones = uploads(&mut server, 2, 3, |_, _| {});
    // Phone 2's upload without its first change: the rest wait for it.
    let mut phone = testing::replica(
        &mut server,
        phones[1].sender.clone(),
        phones[1].actor.clone(),
    )
    .unwrap();
    for i in 0..3 {
        phone
            .add(&testing::visit("user-2", at(500 + i), 40), at(500 + i))
            .unwrap();
    }
    let later: Vec<Vec<u8>> = phone.doc_mut().get_changes(&stored_heads)[1..]
        .iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect();
    let mut gap = Message::decode(&phones[1].message).unwrap();
    gap.heads = phone.heads();
    gap.changes = ChunkList::from(later);
    phones[1].message = gap.encode();
    assert_refused_together(&mut server, &phones, "changes missing a dependency");
}

/// The server answers a phone as it would have: the same message, where a whole document
/// (whose bytes follow the order in which its changes were applied) holds the same changes.
fn assert_same_message(ours: Option<Vec<u8>>, theirs: Option<Vec<u8>>) {
    let (Some(ours), Some(theirs)) = (&ours, &theirs) else {
        assert_eq!(ours, theirs);
        return;
    };
    let (ours, theirs) = (
        Message::decode(ours).unwrap(),
        Message::decode(theirs).unwrap(),
    );
    assert_eq!(
        (&ours.heads, &ours.need, ours.have.len(), &ours.flags),
        (
            &theirs.heads,
            &theirs.need,
            theirs.have.len(),
            &theirs.flags
        )
    );
    for (a, b) in ours.have.iter().zip(&theirs.have) {
        assert_eq!(
            (&a.last_sync, a.bloom.to_bytes()),
            (&b.last_sync, b.bloom.to_bytes())
        );
    }
    // The hashes of the changes a message carries: every change of a whole document, or each
    // change chunk (a version 2 message holds its changes one after another in one chunk).
    let contents = |m: &Message| -> Vec<automerge::ChangeHash> {
        let mut hashes = Vec::new();
        for chunk in m.changes.iter() {
            if let Ok(doc) = automerge::Automerge::load(chunk) {
                hashes.extend(doc.get_changes(&[]).iter().map(|c| c.hash()));
                continue;
            }
            let mut rest: &[u8] = chunk;
            while !rest.is_empty() {
                let length = chunk_length(rest);
                let change = automerge::Change::try_from(&rest[..length]).unwrap();
                hashes.push(change.hash());
                rest = &rest[length..];
            }
        }
        hashes.sort();
        hashes
    };
    assert_eq!(contents(&ours), contents(&theirs), "the same changes");
}

/// The length of the Automerge chunk `bytes` starts with: a 4-byte magic number, a 4-byte
/// checksum, a type byte, then the data's length (LEB128) and the data.
fn chunk_length(bytes: &[u8]) -> usize {
    let (mut length, mut shift, mut at) = (0usize, 0, 9);
    loop {
        let byte = bytes[at];
        length |= usize::from(byte & 0x7f) << shift;
        at += 1;
        if byte & 0x80 == 0 {
            return at + length;
        }
        shift += 7;
    }
}

fn clone_upload(upload: &PhoneUpload) -> PhoneUpload {
    PhoneUpload {
        sender: upload.sender.clone(),
        actor: upload.actor.clone(),
        state: upload.state.clone(),
        message: upload.message.clone(),
    }
}

/// Receiving `uploads` together gives None and changes neither the document nor a peer state.
fn assert_refused_together(server: &mut CaseFile, uploads: &[PhoneUpload], case: &str) {
    let mut file = copy(server);
    let before = file.heads();
    let mut states: Vec<PeerState> = uploads.iter().map(|u| u.state.clone()).collect();
    let original = encoded(&states);
    assert!(
        receive_together(&mut file, uploads, &mut states).is_none(),
        "{case}: received together"
    );
    assert_eq!(file.heads(), before, "{case}: the document changed");
    assert_eq!(encoded(&states), original, "{case}: a peer state changed");
}
