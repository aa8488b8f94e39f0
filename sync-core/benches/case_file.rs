//! What a case file costs: time to record one visit, time to load a case holding 1,000 and
//! 10,000 visits (bytes to document, and bytes to a typed list of visits), and saved bytes per
//! visit; and time to rebuild a 200-visit case's change graph from its stored changes (what a
//! server does when its cache does not hold the graph), against decoding each change in full;
//! and the server's checked receive of a phone's 20 new visits onto a 200-visit case, as
//! changes (mid-session) and as the phone's whole document (a reconnect); and a phone's first
//! message of a session after one new visit on a 2,000-visit case (it carries the visit); and
//! a phone's receive of its case sent whole after a day offline.
//! Notes are plain strings of 500 characters (DESIGN.md "Measured here").
//!
//! Run: `cargo bench -p doorstep-sync-core --bench case_file`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use doorstep_sync_core::records::HomeVisit;
use doorstep_sync_core::testing::{self, at};
use doorstep_sync_core::{CaseFile, ChangeGraph, Collection, PeerState, brings_changes};

const NOTE_CHARS: usize = 500;

fn case_with_visits(visits: usize) -> CaseFile {
    let mut file = testing::new_case("bench");
    file.set_author(testing::author("user-1", "phone-1"), testing::actor(1));
    for i in 0..visits {
        let started = at(i as i64 * 60);
        let id = file
            .add(&testing::visit("user-1", started, NOTE_CHARS), started)
            .unwrap_or_default();
        // One visit in three is finalised, as most are by the end of the day.
        if i % 3 == 0 {
            let _ = file.finalise(Collection::Visits, &id, started);
        }
    }
    file
}

fn open(bytes: &[u8]) -> CaseFile {
    CaseFile::load(
        bytes,
        testing::author("user-2", "phone-2"),
        testing::actor(2),
    )
    .unwrap_or_else(|e| unreachable!("the benchmark's document loads: {e}"))
}

fn bench(c: &mut Criterion) {
    let mut base = case_with_visits(100);
    c.bench_function("record one visit (case holding 100 visits)", |b| {
        b.iter_batched(
            || open(&base.save()),
            |mut file| {
                let visit = testing::visit("user-2", at(1), NOTE_CHARS);
                black_box(file.add(&visit, at(1)).unwrap_or_default());
            },
            BatchSize::SmallInput,
        )
    });

    for visits in [1_000, 10_000] {
        let mut file = case_with_visits(visits);
        let bytes = file.save();
        let empty = testing::new_case("bench").save().len();
        println!(
            "saved size with {visits} visits: {} bytes, {:.0} bytes per visit",
            bytes.len(),
            (bytes.len() - empty) as f64 / visits as f64
        );
        let mut group = c.benchmark_group(format!("load a case with {visits} visits"));
        group.sample_size(10);
        group.bench_function("document", |b| b.iter(|| black_box(open(&bytes))));
        group.bench_function("document and typed visits", |b| {
            b.iter(|| {
                let file = open(&bytes);
                black_box(file.list::<HomeVisit>().map(|v| v.len()).unwrap_or(0))
            })
        });
        group.finish();
    }

    let changes: Vec<Vec<u8>> = case_with_visits(200)
        .doc_mut()
        .get_changes(&[])
        .into_iter()
        .map(|mut c| c.bytes().to_vec())
        .collect();
    let mut group = c.benchmark_group("rebuild a 200-visit case's change graph");
    group.bench_function("ChangeGraph::from_changes", |b| {
        b.iter(|| black_box(ChangeGraph::from_changes(changes.clone()).map(|g| g.len())))
    });
    group.bench_function("decoding every change in full", |b| {
        b.iter(|| {
            for change in &changes {
                black_box(automerge::Change::try_from(change.as_slice()).map(|c| c.hash()))
                    .unwrap_or_else(|e| unreachable!("the benchmark's changes parse: {e}"));
            }
        })
    });
    group.finish();

    // The server's side of a reconnect: a phone's message bringing 20 visits, received with
    // every check (attribution, validation) onto the 200-visit case as stored.
    let stored = case_with_visits(200).save();
    let mut phone = CaseFile::load(
        &stored,
        testing::author("user-2", "phone-2"),
        testing::actor(2),
    )
    .unwrap_or_else(|e| unreachable!("the benchmark's document loads: {e}"));
    for i in 0..20 {
        let started = at(1_000_000 + i * 60);
        let _ = phone.add(&testing::visit("user-2", started, NOTE_CHARS), started);
    }
    let mut server = open(&stored);
    let (mut at_server, mut at_phone) = (PeerState::new(), PeerState::new());
    let message = loop {
        let to_server = phone
            .generate_sync_message(&mut at_phone)
            .unwrap_or_else(|| unreachable!("the phone has visits to send"));
        if brings_changes(&to_server) {
            break to_server;
        }
        server
            .receive_sync_message(&mut at_server, &to_server)
            .unwrap_or_else(|e| unreachable!("the server takes the phone's heads: {e}"));
        if let Some(to_phone) = server.generate_sync_message(&mut at_server) {
            phone
                .receive_sync_message(&mut at_phone, &to_phone)
                .unwrap_or_else(|e| unreachable!("the phone takes the server's heads: {e}"));
        }
    };
    let sender = testing::author("user-2", "phone-2");
    c.bench_function("checked receive of 20 visits onto a 200-visit case", |b| {
        b.iter_batched(
            || (open(&stored), at_server.clone()),
            |(mut file, mut peer)| {
                let applied = file
                    .receive_sync_message_checked(&mut peer, &message, &sender, |_| true)
                    .unwrap_or_else(|e| unreachable!("the phone's visits are accepted: {e:?}"));
                assert_eq!(applied.len(), 20);
                black_box(applied)
            },
            BatchSize::SmallInput,
        )
    });
}

/// The server's side of a mass reconnect: a phone that held the case as it was created
/// recorded 20 visits offline, and sends its whole document (as Automerge does once the other
/// side lacks more than a third of it) to a server whose case others have since given 100
/// visits.
fn bench_whole_document_upload(c: &mut Criterion) {
    let created = testing::new_case("bench").save();
    let mut stored = open(&created);
    stored.set_author(testing::author("user-1", "phone-1"), testing::actor(1));
    for i in 0..100 {
        let started = at(i * 60);
        let _ = stored.add(&testing::visit("user-1", started, NOTE_CHARS), started);
    }
    let stored = stored.save();
    let mut phone = open(&created);
    for i in 0..20 {
        let started = at(1_000_000 + i * 60);
        let _ = phone.add(&testing::visit("user-2", started, NOTE_CHARS), started);
    }
    let message = whole_document_message(&mut phone);
    let sender = testing::author("user-2", "phone-2");
    c.bench_function(
        "checked receive of a phone's whole document (20 visits) onto a 100-visit case",
        |b| {
            b.iter_batched(
                || open(&stored),
                |mut file| {
                    let applied = file
                        .receive_sync_message_checked(
                            &mut PeerState::new(),
                            &message,
                            &sender,
                            |_| true,
                        )
                        .unwrap_or_else(|e| unreachable!("the visits are accepted: {e:?}"));
                    assert_eq!(applied.len(), 20);
                    black_box(applied)
                },
                BatchSize::SmallInput,
            )
        },
    );
}

/// Scenario 2's writer: a phone that last synced a 2,000-visit case records one visit and
/// reconnects; its first message carries the visit (see `send_unasked`).
fn bench_first_message_of_a_session(c: &mut Criterion) {
    let stored = case_with_visits(2_000).save();
    let mut phone = open(&stored);
    let mut server = open(&stored);
    let (mut at_server, mut at_phone) = (PeerState::new(), PeerState::new());
    for _ in 0..10 {
        if let Some(to_server) = phone.generate_sync_message(&mut at_phone) {
            let _ = server.receive_sync_message(&mut at_server, &to_server);
        }
        if let Some(to_phone) = server.generate_sync_message(&mut at_server) {
            let _ = phone.receive_sync_message(&mut at_phone, &to_phone);
        }
    }
    // The session ends: only what persists of the phone's sync state is kept.
    let saved = at_phone.encode();
    let started = at(10_000_000);
    let _ = phone.add(&testing::visit("user-2", started, NOTE_CHARS), started);
    c.bench_function(
        "a session's first message after one new visit on a 2,000-visit case",
        |b| {
            b.iter_batched(
                || PeerState::decode(&saved).unwrap_or_else(|e| unreachable!("{e}")),
                |mut state| {
                    let message = phone.generate_sync_message(&mut state);
                    assert!(message.as_deref().is_some_and(brings_changes));
                    black_box(message)
                },
                BatchSize::SmallInput,
            )
        },
    );
}

/// A phone's side of a mass reconnect: it held the case as it was created, recorded 20 visits
/// offline, and receives the case whole (as the server sends it once the phone lacks more than
/// a third of it) after nine other phones gave it 20 visits each.
fn bench_whole_document_download(c: &mut Criterion) {
    let created = testing::new_case("bench").save();
    let mut server = open(&created);
    let phone_with_visits = |n: u32| {
        let mut phone = CaseFile::load(
            &created,
            testing::author(&format!("user-{n}"), &format!("phone-{n}")),
            testing::actor(n),
        )
        .unwrap_or_else(|e| unreachable!("the benchmark's document loads: {e}"));
        for i in 0..20 {
            let started = at(i64::from(n) * 100_000 + i * 60);
            let _ = phone.add(
                &testing::visit(&format!("user-{n}"), started, NOTE_CHARS),
                started,
            );
        }
        phone
    };
    let offline = phone_with_visits(1).save();
    for n in 2..=10 {
        let mut other = phone_with_visits(n);
        let upload = whole_document_message(&mut other);
        server
            .receive_sync_message(&mut PeerState::new(), &upload)
            .unwrap_or_else(|e| unreachable!("the server takes the phone's visits: {e}"));
    }
    let whole = whole_document_message(&mut server);
    c.bench_function(
        "a phone's receive of its case sent whole (180 visits of others, 20 of its own offline)",
        |b| {
            b.iter_batched(
                || {
                    CaseFile::load(
                        &offline,
                        testing::author("user-1", "phone-1"),
                        testing::actor(1),
                    )
                    .unwrap_or_else(|e| unreachable!("the benchmark's document loads: {e}"))
                },
                |mut phone| {
                    phone
                        .receive_sync_message(&mut PeerState::new(), &whole)
                        .unwrap_or_else(|e| unreachable!("the phone takes its case: {e}"));
                    black_box(phone)
                },
                BatchSize::SmallInput,
            )
        },
    );
}

/// A sync message carrying `file` as a whole document (as Automerge sends it to a peer that
/// lacks more than a third of it).
fn whole_document_message(file: &mut CaseFile) -> Vec<u8> {
    use automerge::sync::{ChunkList, Message, MessageVersion};

    Message {
        heads: file.heads(),
        need: Vec::new(),
        have: Vec::new(),
        changes: ChunkList::from(file.save()),
        flags: None,
        version: MessageVersion::V2,
    }
    .encode()
}

criterion_group!(
    benches,
    bench,
    bench_whole_document_upload,
    bench_whole_document_download,
    bench_first_message_of_a_session
);
criterion_main!(benches);
