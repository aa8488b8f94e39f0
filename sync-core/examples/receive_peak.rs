//! Peak heap of the server's checked receive of one message that brings N visits to a case that
//! already holds M: `cargo run --release -p doorstep-sync-core --example receive_peak -- 2000 0`.
//! With `PLAIN=1` it measures Automerge's own receive of the same message instead (no checks),
//! to tell the checks' share from Automerge's.
#![allow(clippy::unwrap_used, reason = "a measuring tool fails loudly")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use doorstep_sync_core::{CaseFile, PeerState, testing};

struct PeakCounter;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for PeakCounter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live =
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed) + layout.size() as isize;
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: PeakCounter = PeakCounter;

fn main() {
    let mut args = std::env::args().skip(1);
    let new_visits: i64 = args.next().map_or(2000, |a| a.parse().unwrap());
    let held_visits: i64 = args.next().map_or(0, |a| a.parse().unwrap());
    let mut server = testing::new_case("case-peak");
    for i in 0..held_visits {
        let at = testing::at(i);
        server.add(&testing::visit("user-1", at, 500), at).unwrap();
    }
    let saved = server.save();
    let author = testing::author("user-2", "device-2");
    let mut phone = CaseFile::load(&saved, author.clone(), testing::actor(2)).unwrap();
    for i in 0..new_visits {
        let at = testing::at(100_000 + i);
        phone.add(&testing::visit("user-2", at, 500), at).unwrap();
    }
    let mut server = CaseFile::load(&saved, testing::author("s", "s"), testing::actor(9)).unwrap();
    let (mut phone_state, mut server_state) = (PeerState::new(), PeerState::new());
    let mut brought = 0;
    let mut peak_over_live = 0;
    for _round in 0..10 {
        let Some(message) = phone.generate_sync_message(&mut phone_state) else {
            break;
        };
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let applied = if std::env::var_os("PLAIN").is_some() {
            let heads = server.heads();
            server
                .receive_sync_message(&mut server_state, &message)
                .unwrap();
            server
                .doc_mut()
                .get_changes(&heads)
                .into_iter()
                .map(|c| c.hash())
                .collect()
        } else {
            server
                .receive_sync_message_checked(&mut server_state, &message, &author, |_| true)
                .unwrap()
                .into_iter()
                .map(|c| c.hash)
                .collect::<Vec<_>>()
        };
        let elapsed = started.elapsed();
        let peak = PEAK.load(Ordering::Relaxed) - before;
        if !applied.is_empty() {
            println!(
                "message of {} KiB bringing {} changes: peak heap +{:.1} MiB over what was live, {elapsed:?}",
                message.len() / 1024,
                applied.len(),
                peak as f64 / 1048576.0
            );
        }
        brought += applied.len();
        peak_over_live = peak_over_live.max(peak);
        drop(applied);
        if let Some(answer) = server.generate_sync_message(&mut server_state) {
            phone
                .receive_sync_message(&mut phone_state, &answer)
                .unwrap();
        }
    }
    println!(
        "{brought} changes received; largest peak +{:.1} MiB",
        peak_over_live as f64 / 1048576.0
    );
}
