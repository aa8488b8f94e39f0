//! What Automerge's apply costs the server when a mass reconnect brings one case many phones'
//! uploads: applied one upload at a time (as the server does now, each in its own checked
//! receive) against all of them in one apply. Each phone is its own actor and records its
//! visits offline from the same stored case, as in the interop benchmark's reconnect.
//! `cargo run --release -p doorstep-sync-core --example apply_batching -- 10 20`
//! (phones, visits per phone).
#![allow(clippy::unwrap_used, reason = "a measuring tool fails loudly")]

use std::time::{Duration, Instant};

use doorstep_sync_core::{CaseFile, testing};

const ROUNDS: u32 = 20;

fn main() {
    let mut args = std::env::args().skip(1);
    let phones: u32 = args.next().map_or(10, |a| a.parse().unwrap());
    let visits: i64 = args.next().map_or(20, |a| a.parse().unwrap());
    let mut stored = testing::new_case("case-batching");
    let saved = stored.save();
    let stored_heads = stored.heads();
    let uploads: Vec<_> = (0..phones)
        .map(|p| {
            let user = format!("user-{p}");
            let author = testing::author(&user, &format!("device-{p}"));
            let mut phone = CaseFile::load(&saved, author, testing::actor(p + 10)).unwrap();
            for i in 0..visits {
                let at = testing::at(1000 * i64::from(p) + i);
                phone.add(&testing::visit(&user, at, 500), at).unwrap();
            }
            phone.doc_mut().get_changes(&stored_heads)
        })
        .collect();
    let server = || CaseFile::load(&saved, testing::author("s", "s"), testing::actor(99)).unwrap();
    let (mut one_at_a_time, mut at_once) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        let mut file = server();
        let copies = uploads.clone();
        let started = Instant::now();
        for upload in copies {
            file.doc_mut().apply_changes(upload).unwrap();
        }
        one_at_a_time += started.elapsed();

        let mut file = server();
        let all: Vec<_> = uploads.iter().flatten().cloned().collect();
        let started = Instant::now();
        file.doc_mut().apply_changes(all).unwrap();
        at_once += started.elapsed();
    }
    let (one_at_a_time, at_once) = (one_at_a_time / ROUNDS, at_once / ROUNDS);
    println!(
        "{phones} phones x {visits} visits to one case: one upload at a time {one_at_a_time:.1?}, \
         all in one apply {at_once:.1?} ({:.1}x)",
        one_at_a_time.as_secs_f64() / at_once.as_secs_f64()
    );
}
