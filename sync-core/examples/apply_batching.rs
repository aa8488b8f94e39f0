//! What applying a case's uploads costs the server when a mass reconnect brings one case many
//! phones' uploads: one upload at a time (as the server does now, each in its own checked
//! receive) against all of them at once. Each phone is its own actor and records its visits
//! offline from the same stored case, as in the interop benchmark's reconnect. Two figures:
//! Automerge's apply alone, and the server's checked receive (`receive_sync_message_checked`
//! for each upload, against `receive_uploads_checked` for all of them).
//! `cargo run --release -p doorstep-sync-core --example apply_batching -- 10 20`
//! (phones, visits per phone).
#![allow(clippy::unwrap_used, reason = "a measuring tool fails loudly")]

use std::time::{Duration, Instant};

use automerge::Change;
use automerge::sync::{BloomFilter, ChunkList, Have, Message, MessageVersion};
use doorstep_sync_core::{ActorId, Author, CaseFile, ChangeHash, PeerState, Upload, testing};

const ROUNDS: u32 = 20;

/// One phone's offline visits: its user and device, its heads and its new changes.
struct PhoneUpload {
    sender: Author,
    heads: Vec<ChangeHash>,
    changes: Vec<Change>,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let phones: u32 = args.next().map_or(10, |a| a.parse().unwrap());
    let visits: i64 = args.next().map_or(20, |a| a.parse().unwrap());
    let mut stored = testing::new_case("case-batching");
    let saved = stored.save();
    let stored_heads = stored.heads();
    let uploads: Vec<PhoneUpload> = (0..phones)
        .map(|p| {
            let user = format!("user-{p}");
            let sender = testing::author(&user, &format!("device-{p}"));
            let mut phone = CaseFile::load(&saved, sender.clone(), testing::actor(p + 10)).unwrap();
            for i in 0..visits {
                let at = testing::at(1000 * i64::from(p) + i);
                phone.add(&testing::visit(&user, at, 500), at).unwrap();
            }
            let heads = phone.heads();
            let changes = phone.doc_mut().get_changes(&stored_heads);
            PhoneUpload {
                sender,
                heads,
                changes,
            }
        })
        .collect();
    let server = || CaseFile::load(&saved, testing::author("s", "s"), testing::actor(99)).unwrap();
    let (mut one_at_a_time, mut at_once) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        let mut file = server();
        let copies: Vec<Vec<Change>> = uploads.iter().map(|u| u.changes.clone()).collect();
        let started = Instant::now();
        for upload in copies {
            file.doc_mut().apply_changes(upload).unwrap();
        }
        one_at_a_time += started.elapsed();

        let mut file = server();
        let all: Vec<Change> = uploads.iter().flat_map(|u| u.changes.clone()).collect();
        let started = Instant::now();
        file.doc_mut().apply_changes(all).unwrap();
        at_once += started.elapsed();
    }
    report(phones, visits, "Automerge's apply", one_at_a_time, at_once);

    // The server's checked receive: each phone's upload in turn, against all of them together.
    let message = |heads: Vec<ChangeHash>, changes: &[Change]| {
        Message {
            heads,
            need: Vec::new(),
            have: vec![Have {
                last_sync: stored_heads.clone(),
                bloom: BloomFilter::from_hashes(changes.iter().map(Change::hash)),
            }],
            changes: ChunkList::from(
                changes
                    .iter()
                    .map(|c| c.clone().bytes().into_owned())
                    .collect::<Vec<_>>(),
            ),
            flags: None,
            version: MessageVersion::V1,
        }
        .encode()
    };
    let each: Vec<Vec<u8>> = uploads
        .iter()
        .map(|u| message(u.heads.clone(), &u.changes))
        .collect();
    let allowed = |_: &ActorId| true;
    let (mut one_at_a_time, mut at_once) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        let mut file = server();
        let started = Instant::now();
        for (upload, message) in uploads.iter().zip(&each) {
            let applied = file
                .receive_sync_message_checked(
                    &mut PeerState::new(),
                    message,
                    &upload.sender,
                    allowed,
                )
                .unwrap();
            assert_eq!(applied.len() as i64, visits);
        }
        one_at_a_time += started.elapsed();

        let mut file = server();
        let mut peers: Vec<PeerState> = each.iter().map(|_| PeerState::new()).collect();
        let mut together: Vec<Upload<'_>> = uploads
            .iter()
            .zip(&each)
            .zip(&mut peers)
            .map(|((upload, message), peer)| Upload {
                peer,
                message,
                sender: &upload.sender,
                actor_allowed: &allowed,
            })
            .collect();
        let started = Instant::now();
        let applied = file.receive_uploads_checked(&mut together).unwrap();
        at_once += started.elapsed();
        assert_eq!(
            applied.iter().map(Vec::len).sum::<usize>() as i64,
            visits * i64::from(phones)
        );
    }
    report(
        phones,
        visits,
        "the checked receive",
        one_at_a_time,
        at_once,
    );
}

fn report(phones: u32, visits: i64, what: &str, one_at_a_time: Duration, at_once: Duration) {
    let (one_at_a_time, at_once) = (one_at_a_time / ROUNDS, at_once / ROUNDS);
    println!(
        "{phones} phones x {visits} visits to one case, {what}: one upload at a time \
         {one_at_a_time:.1?}, all at once {at_once:.1?} ({:.1}x)",
        one_at_a_time.as_secs_f64() / at_once.as_secs_f64()
    );
}
