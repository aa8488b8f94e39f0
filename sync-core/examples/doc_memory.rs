//! How much memory a parsed case file takes against its saved size: builds a case with N visits,
//! saves it, loads K copies and reports the growth of the process's resident memory.
//! `cargo run --release -p doorstep-sync-core --example doc_memory -- 200 40`
#![allow(clippy::unwrap_used, reason = "a measuring tool fails loudly")]

use doorstep_sync_core::{CaseFile, testing};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let visits: i64 = args.next().map_or(200, |a| a.parse().unwrap());
    let copies: usize = args.next().map_or(40, |a| a.parse().unwrap());
    let mut file = testing::new_case("case-memory");
    for i in 0..visits {
        file.add(
            &testing::visit("user-1", testing::at(i), 500),
            testing::at(i),
        )
        .unwrap();
    }
    let bytes = file.save();
    drop(file);
    let before = rss_kib();
    let started = std::time::Instant::now();
    let loaded: Vec<CaseFile> = (0..copies)
        .map(|_| CaseFile::load(&bytes, testing::author("u", "d"), testing::actor(9)).unwrap())
        .collect();
    let per_load = started.elapsed() / copies as u32;
    let grown = rss_kib().saturating_sub(before);
    println!(
        "{visits} visits: saved {} KiB; parsed ~{} KiB each ({:.1}x the saved size); load {:?} each",
        bytes.len() / 1024,
        grown / copies as u64,
        (grown * 1024) as f64 / copies as f64 / bytes.len() as f64,
        per_load
    );
    drop(loaded);
}
