//! A document holds what it holds, not the history of how it got there: neither a log of the
//! changes it received nor the spare room its columns grew while they were applied.
//!
//! These tests count the heap through a global allocator, in a binary of their own, and take
//! turns (`ONE_AT_A_TIME`) so that no other test allocates while one measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicIsize, Ordering};

use doorstep_sync_core::records::HomeVisit;
use doorstep_sync_core::{CaseFile, PeerState, testing};

struct CountingAllocator;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The heap that dropping `value` gives back.
fn heap_of<T>(value: T) -> isize {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    drop(value);
    before - LIVE_BYTES.load(Ordering::Relaxed)
}

#[test]
fn a_document_that_kept_receiving_is_no_bigger_than_the_same_document_loaded() {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut base = testing::new_case("case-memory");
    let saved = base.save();
    let mut phone = CaseFile::load(
        &saved,
        testing::author("user-phone", "device-phone"),
        testing::actor(1),
    )
    .expect("loads");
    // Ten colleagues record twenty visits each; the phone receives them one sync at a time.
    for colleague in 0..10u32 {
        let user = format!("user-{colleague}");
        let mut other = CaseFile::load(
            &saved,
            testing::author(&user, "device"),
            testing::actor(colleague + 2),
        )
        .expect("loads");
        for k in 0..20 {
            let at = testing::at(i64::from(colleague) * 1_000 + k);
            other
                .add(&testing::visit(&user, at, 500), at)
                .expect("a valid visit");
        }
        let (mut theirs, mut ours) = (PeerState::new(), PeerState::new());
        testing::sync_until_quiet(&mut other, &mut theirs, &mut phone, &mut ours).expect("applies");
    }
    let reloaded = CaseFile::load(
        &phone.save(),
        testing::author("user-phone", "device-phone"),
        testing::actor(1),
    )
    .expect("loads");
    assert_eq!(
        reloaded.list::<HomeVisit>().expect("reads").len(),
        200,
        "every visit arrived"
    );
    let loaded_heap = heap_of(reloaded);
    let received_heap = heap_of(phone);
    assert!(
        received_heap < 2 * loaded_heap,
        "the document that received holds {received_heap} bytes, loaded {loaded_heap}"
    );
}

/// The copy of the case saved as `saved` that user `p` works on (actor `p + 1`): their user id
/// and the file.
#[allow(clippy::expect_used, reason = "a test fails loudly")]
fn copy_of(saved: &[u8], p: u32) -> (String, CaseFile) {
    let user = format!("user-{p}");
    let file = CaseFile::load(
        saved,
        testing::author(&user, "device"),
        testing::actor(p + 1),
    )
    .expect("loads");
    (user, file)
}

/// The server's way with a case: each message's new changes are appended to the stored bytes
/// (a full save now and then), and the next message finds the document parsed from them.
#[test]
fn a_document_loaded_from_appended_changes_is_no_bigger_than_one_loaded_from_a_full_save() {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let server_author = || testing::author("server", "server");
    let mut stored = testing::new_case("case-memory").save();
    let mut appended = 0;
    let mut total = 1;
    let mut server = CaseFile::load(&stored, server_author(), testing::actor(99)).expect("loads");
    let mut phones: Vec<(String, CaseFile, PeerState)> = (0..10u32)
        .map(|p| {
            let (user, file) = copy_of(&stored, p);
            (user, file, PeerState::new())
        })
        .collect();
    let mut server_states: Vec<PeerState> = phones.iter().map(|_| PeerState::new()).collect();
    for (p, (user, phone, _)) in phones.iter_mut().enumerate() {
        for k in 0..20 {
            let at = testing::at(p as i64 * 1_000 + k);
            phone
                .add(&testing::visit(user, at, 500), at)
                .expect("a valid visit");
        }
    }
    for _round in 0..30 {
        for ((user, phone, theirs), ours) in phones.iter_mut().zip(&mut server_states) {
            if let Some(message) = phone.generate_sync_message(theirs) {
                let applied = server
                    .receive_sync_message_checked(
                        ours,
                        &message,
                        &testing::author(user, "device"),
                        |_| true,
                    )
                    .expect("accepted");
                if !applied.is_empty() {
                    total += applied.len();
                    appended += applied.len();
                    if appended >= 64 || appended * 8 >= total {
                        stored = server.save();
                        appended = 0;
                    } else {
                        for change in &applied {
                            stored.extend_from_slice(&change.bytes);
                        }
                    }
                    server = CaseFile::load(&stored, server_author(), testing::actor(99))
                        .expect("loads");
                }
            }
            if let Some(message) = server.generate_sync_message(ours) {
                phone
                    .receive_sync_message(theirs, &message)
                    .expect("applies");
            }
        }
    }
    let full = CaseFile::load(&server.save(), server_author(), testing::actor(99)).expect("loads");
    assert_eq!(full.list::<HomeVisit>().expect("reads").len(), 200);
    let full_heap = heap_of(full);
    let stored_heap = heap_of(server);
    assert!(
        stored_heap * 2 < full_heap * 3,
        "loaded from appended changes: {stored_heap} bytes, from a full save: {full_heap}"
    );
}

/// A phone back from a day offline takes its case sent whole, as the server stores it and
/// sends it: the last full save followed by the changes synced since, here from two of the ten
/// colleagues who recorded visits in it at once.
#[test]
fn a_case_sent_whole_with_changes_appended_is_no_bigger_than_one_loaded_from_a_full_save() {
    use automerge::sync::{ChunkList, Message, MessageVersion};

    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let created = testing::new_case("case-memory").save();
    let open = |p: u32| copy_of(&created, p);
    let (_, mut phone) = open(0);
    let (_, mut server) = open(99);
    let mut stored = Vec::new();
    let mut saved_heads = Vec::new();
    for colleague in 1..=10 {
        let (user, mut other) = open(colleague);
        for k in 0..20 {
            let at = testing::at(i64::from(colleague) * 1_000 + k);
            other
                .add(&testing::visit(&user, at, 500), at)
                .expect("a valid visit");
        }
        server.doc_mut().merge(other.doc_mut()).expect("merges");
        if colleague == 8 {
            stored = server.save();
            saved_heads = server.heads();
        }
    }
    for change in server.doc_mut().get_changes(&saved_heads) {
        stored.extend_from_slice(change.raw_bytes());
    }
    let message = Message {
        heads: server.heads(),
        need: Vec::new(),
        have: Vec::new(),
        changes: ChunkList::from(stored),
        flags: None,
        version: MessageVersion::V2,
    }
    .encode();
    phone
        .receive_sync_message(&mut PeerState::new(), &message)
        .expect("takes its case");
    assert_eq!(phone.list::<HomeVisit>().expect("reads").len(), 200);
    let full = CaseFile::load(
        &phone.save(),
        testing::author("user-0", "device"),
        testing::actor(1),
    )
    .expect("loads");
    let full_heap = heap_of(full);
    let received_heap = heap_of(phone);
    assert!(
        received_heap * 2 < full_heap * 3,
        "taken whole: {received_heap} bytes, loaded from a full save: {full_heap}"
    );
}
