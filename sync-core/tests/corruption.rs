//! Corrupted and truncated documents and sync messages give errors, never panics.
#![allow(clippy::unwrap_used, reason = "a test fails loudly on purpose")]

use std::sync::OnceLock;

use doorstep_sync_core::testing::{self, at};
use doorstep_sync_core::{CaseFile, PeerState};
use proptest::prelude::*;

/// A saved case file and the first sync message it sends to a new peer.
fn samples() -> &'static (Vec<u8>, Vec<u8>) {
    static SAMPLES: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let mut file = testing::new_case("case-1");
        for i in 0..5 {
            file.add(&testing::visit("u", at(i), 120), at(i)).unwrap();
        }
        let message = file.generate_sync_message(&mut PeerState::new()).unwrap();
        (file.save(), message)
    })
}

fn mutate(bytes: &[u8], cut: usize, flips: &[(usize, u8)]) -> Vec<u8> {
    let mut out = bytes[..cut % (bytes.len() + 1)].to_vec();
    for &(at, mask) in flips {
        if !out.is_empty() {
            let i = at % out.len();
            out[i] ^= mask;
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn damaged_documents_load_or_fail_cleanly(
        cut in any::<usize>(),
        flips in prop::collection::vec((any::<usize>(), 1..=255u8), 0..4),
    ) {
        let bytes = mutate(&samples().0, cut, &flips);
        if let Ok(file) = CaseFile::load(&bytes, testing::author("u", "d"), testing::actor(3)) {
            // Whatever survived must read as values or errors, not panics.
            let _ = file.view();
            let _ = file.validate();
        }
    }

    #[test]
    fn damaged_sync_messages_apply_or_fail_cleanly(
        cut in any::<usize>(),
        flips in prop::collection::vec((any::<usize>(), 1..=255u8), 0..4),
    ) {
        let message = mutate(&samples().1, cut, &flips);
        let mut replica = CaseFile::empty(testing::author("u", "d"), testing::actor(4));
        let mut state = PeerState::new();
        if replica.receive_sync_message(&mut state, &message).is_ok() {
            let _ = replica.validate();
        }
        let mut server = testing::new_case("case-1");
        let sender = testing::author("u", "d");
        let _ = server.receive_sync_message_checked(&mut PeerState::new(), &message, &sender, |_| true);
    }

    #[test]
    fn random_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        // Random bytes are never a case file (at best an empty Automerge document).
        prop_assert!(CaseFile::load(&bytes, testing::author("u", "d"), testing::actor(5)).is_err());
        let mut replica = CaseFile::empty(testing::author("u", "d"), testing::actor(6));
        let _ = replica.receive_sync_message(&mut PeerState::new(), &bytes);
        let _ = PeerState::decode(&bytes);
    }
}
