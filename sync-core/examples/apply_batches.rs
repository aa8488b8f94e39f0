#![allow(clippy::unwrap_used)]
use doorstep_sync_core::{CaseFile, testing};
fn main() {
    let mut args = std::env::args().skip(1);
    let per_message: usize = args.next().map_or(20, |a| a.parse().unwrap());
    let mut base = testing::new_case("case-x");
    let saved = base.save();
    // 10 phones each record 20 visits
    let mut all = Vec::new();
    for p in 0..10u32 {
        let mut phone = CaseFile::load(
            &saved,
            testing::author(&format!("u{p}"), "d"),
            testing::actor(p + 1),
        )
        .unwrap();
        let before = phone.heads();
        for k in 0..20 {
            let at = testing::at((p as i64) * 10_000 + k);
            phone
                .add(&testing::visit(&format!("u{p}"), at, 500), at)
                .unwrap();
        }
        let mut ch = phone.doc_mut().get_changes(&before);
        all.push(
            ch.iter_mut()
                .map(|c| c.bytes().to_vec())
                .collect::<Vec<_>>(),
        );
    }
    // phone 0 receives the other 9 phones' changes, per_message at a time
    let mut total = std::time::Duration::ZERO;
    for round in 0..20 {
        let mut phone =
            CaseFile::load(&saved, testing::author("u0", "d"), testing::actor(1)).unwrap();
        let started = std::time::Instant::now();
        let flat: Vec<&Vec<u8>> = all[1..].iter().flatten().collect();
        for chunk in flat.chunks(per_message) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|c| c.iter().copied()).collect();
            phone.doc_mut().load_incremental(&bytes).unwrap();
        }
        if round > 0 {
            total += started.elapsed();
        }
    }
    println!(
        "{per_message} per message: {:?} per phone-document",
        total / 19
    );
}
