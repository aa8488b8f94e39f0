//! What it costs a phone to apply the same changes in messages of different sizes: ten phones
//! each record 20 visits in one case, and the first then applies the other nine phones' 180
//! visits N at a time. `cargo run --release -p doorstep-sync-core --example apply_batches -- 1 20 180`
//! (why the server gathers pushes while a client has not answered: `server/src/repo_ws/hub.rs`).
#![allow(clippy::unwrap_used, reason = "a measuring tool fails loudly")]

use std::time::{Duration, Instant};

use doorstep_sync_core::{CaseFile, testing};

const PHONES: u32 = 10;
const VISITS_PER_PHONE: i64 = 20;
const ROUNDS: u32 = 20;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1, 20, 60, 180]
    } else {
        sizes
    };
    let saved = testing::new_case("case-apply-batches").save();
    // Each phone's new changes, as the bytes of their change chunks.
    let mut by_phone: Vec<Vec<Vec<u8>>> = Vec::new();
    for p in 0..PHONES {
        let user = format!("user-{p}");
        let author = testing::author(&user, "device");
        let mut phone = CaseFile::load(&saved, author, testing::actor(p + 1)).unwrap();
        let before = phone.heads();
        for k in 0..VISITS_PER_PHONE {
            let at = testing::at(i64::from(p) * 10_000 + k);
            phone.add(&testing::visit(&user, at, 500), at).unwrap();
        }
        let mut changes = phone.doc_mut().get_changes(&before);
        by_phone.push(changes.iter_mut().map(|c| c.bytes().to_vec()).collect());
    }
    let others: Vec<&Vec<u8>> = by_phone[1..].iter().flatten().collect();
    for per_message in sizes {
        let mut total = Duration::ZERO;
        for _ in 0..ROUNDS {
            let author = testing::author("user-0", "device");
            let mut phone = CaseFile::load(&saved, author, testing::actor(1)).unwrap();
            let started = Instant::now();
            for message in others.chunks(per_message.max(1)) {
                let bytes: Vec<u8> = message.iter().flat_map(|c| c.iter().copied()).collect();
                phone.doc_mut().load_incremental(&bytes).unwrap();
            }
            total += started.elapsed();
        }
        println!(
            "{} changes, {per_message} per message: {:?} per phone and case",
            others.len(),
            total / ROUNDS
        );
    }
}
