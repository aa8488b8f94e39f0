//! A bounded cache of parsed case files for the sync path.
//!
//! Parsing a large Automerge document costs far more than reading its bytes (a case with
//! 10,000 visits takes about 0.4 s to load), and a phone syncing the same case every few minutes
//! would pay that every time. The cache keeps parsed documents keyed by case id together with
//! the heads they were parsed at. Every use revalidates against the heads just read from the
//! database inside the sync transaction: if another instance (or a staff edit) has written
//! since, the heads differ and the document is parsed afresh, so the cache can never serve a
//! stale document. A document goes back into the cache only after its transaction committed.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use doorstep_sync_core::{CaseFile, ChangeHash};

#[derive(Debug)]
pub struct DocumentCache {
    capacity: usize,
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_case: HashMap<String, Entry>,
    /// A counter standing in for time: the least recently returned entry is evicted first.
    clock: u64,
}

#[derive(Debug)]
struct Entry {
    heads: String,
    file: CaseFile,
    returned_at: u64,
}

impl DocumentCache {
    /// A cache holding at most `capacity` documents (0 turns it off).
    pub fn new(capacity: usize) -> Self {
        DocumentCache {
            capacity,
            inner: Mutex::new(Entries::default()),
        }
    }

    /// Takes out the document parsed at `heads`, if the cache has it. Taking (not borrowing)
    /// lets concurrent requests for one case each work on their own copy; the second simply
    /// parses from the database. A document parsed at other heads stays if it is a later
    /// version (the caller read the stored document just before another sync committed, and
    /// reads the later one next should its own commit find the document moved), and is
    /// dropped if it is not (stale).
    pub fn take(&self, case_id: &str, heads: &str) -> Option<CaseFile> {
        let mut entries = self.lock();
        let entry = entries.by_case.get_mut(case_id)?;
        if entry.heads == heads {
            return entries.by_case.remove(case_id).map(|entry| entry.file);
        }
        if !holds_version(&mut entry.file, heads) {
            entries.by_case.remove(case_id);
        }
        None
    }

    /// Puts a document back, as it stands at `heads` (committed), evicting the least recently
    /// returned documents beyond the capacity, keeping a compact copy
    /// ([`CaseFile::shrink_to_fit`]). A document holding back changes (received
    /// without their dependencies) is not kept: those changes are not stored, and were sent by
    /// one device, so they must not surface in another device's sync when the dependencies
    /// arrive (they would be refused as that device's foreign changes).
    pub fn put(&self, case_id: String, heads: String, mut file: CaseFile) {
        if self.capacity == 0 || file.holds_back_changes() {
            return;
        }
        // The changes just received left spare room in the document's columns; a cached
        // document may stay for hours.
        file.shrink_to_fit();
        let mut entries = self.lock();
        entries.clock += 1;
        let returned_at = entries.clock;
        entries.by_case.insert(
            case_id,
            Entry {
                heads,
                file,
                returned_at,
            },
        );
        while entries.by_case.len() > self.capacity {
            let oldest = entries
                .by_case
                .iter()
                .min_by_key(|(_, entry)| entry.returned_at)
                .map(|(case_id, _)| case_id.clone());
            match oldest {
                Some(case_id) => entries.by_case.remove(&case_id),
                None => break,
            };
        }
    }

    pub fn len(&self) -> usize {
        self.lock().by_case.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock cannot leave an entry half-written: keep going.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `file` holds every change of the version whose heads key is `heads` (it is that
/// version or a later one). An unreadable key is no version of it.
fn holds_version(file: &mut CaseFile, heads: &str) -> bool {
    let parsed: Result<Vec<ChangeHash>, _> = heads
        .split(',')
        .filter(|hash| !hash.is_empty())
        .map(str::parse)
        .collect();
    parsed.is_ok_and(|heads| file.contains_heads(&heads))
}

#[cfg(test)]
mod tests {
    use doorstep_sync_core::testing;

    use super::*;

    fn case(id: &str) -> (CaseFile, String) {
        let mut file = testing::new_case(id);
        let heads = crate::storage::heads_key(&file.heads());
        (file, heads)
    }

    #[test]
    fn serves_a_document_only_at_the_heads_it_was_parsed_at() {
        let cache = DocumentCache::new(4);
        let (file, heads) = case("a");
        cache.put("a".into(), heads.clone(), file);
        assert!(cache.take("a", "other-heads").is_none(), "stale: dropped");
        assert!(cache.take("a", &heads).is_none(), "the stale entry is gone");
        // A later version than the one asked for stays; an earlier one goes.
        let (mut file, earlier) = case("a");
        file.add(
            &testing::visit("user-1", testing::at(1), 30),
            testing::at(1),
        )
        .unwrap();
        let later = crate::storage::heads_key(&file.heads());
        cache.put("a".into(), later.clone(), file);
        assert!(cache.take("a", &earlier).is_none());
        assert_eq!(cache.len(), 1, "a later version stays");
        let (older, _) = case("a");
        cache.put("a".into(), earlier.clone(), older);
        assert!(cache.take("a", &later).is_none());
        assert!(cache.is_empty(), "an earlier version goes");
        let (file, heads) = case("a");
        cache.put("a".into(), heads.clone(), file);
        let mut taken = cache.take("a", &heads).unwrap();
        assert_eq!(crate::storage::heads_key(&taken.heads()), heads);
        assert!(cache.is_empty(), "taken out while in use");
    }

    #[test]
    fn evicts_the_least_recently_returned_beyond_capacity() {
        let cache = DocumentCache::new(2);
        let mut heads = HashMap::new();
        for id in ["a", "b", "c"] {
            let (file, h) = case(id);
            heads.insert(id, h.clone());
            cache.put(id.into(), h, file);
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.take("a", &heads["a"]).is_none());
        assert!(cache.take("b", &heads["b"]).is_some());
        assert!(cache.take("c", &heads["c"]).is_some());
        let off = DocumentCache::new(0);
        let (file, h) = case("d");
        off.put("d".into(), h, file);
        assert!(off.is_empty());
    }

    #[test]
    fn a_document_holding_back_changes_is_not_kept() {
        // A phone's second visit arrives without its first: Automerge holds it back.
        let (mut server, heads) = case("a");
        let mut phone = testing::replica(
            &mut server,
            testing::author("user-1", "phone-1"),
            testing::actor(1),
        )
        .unwrap();
        let before = phone.heads();
        for minute in 1..=2 {
            let visit = testing::visit("user-1", testing::at(minute), 10);
            phone.add(&visit, testing::at(minute)).unwrap();
        }
        let changes = phone.doc_mut().get_changes(&before);
        let second = changes.last().unwrap().clone();
        server.doc_mut().apply_changes([second]).unwrap();
        assert!(server.holds_back_changes());
        assert_eq!(crate::storage::heads_key(&server.heads()), heads);
        let cache = DocumentCache::new(4);
        cache.put("a".into(), heads.clone(), server);
        assert!(cache.take("a", &heads).is_none(), "not kept");
        let (file, heads) = case("b");
        cache.put("b".into(), heads.clone(), file);
        assert!(
            cache.take("b", &heads).is_some(),
            "an ordinary document is kept"
        );
    }
}
