//! A bounded cache of case files' change graphs ([`ChangeGraph`]: hashes and dependencies of
//! every change) for the sync path.
//!
//! Most sync messages bring no changes (heads, needs, bloom filters), and the server answers
//! those from the change graph alone, without parsing the document. A kept graph holds no
//! change bytes (what a message sends is read from the stored document), so it takes about
//! 136 bytes a change, a small fraction of a parsed document. Like the document
//! cache, each graph is keyed by case id with the heads it stands at, and every use checks
//! them against the heads just read from the database, so a stale graph is never used. Graphs
//! are shared (`Arc`): concurrent syncs of one case read the same one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use doorstep_sync_core::ChangeGraph;

#[derive(Debug)]
pub struct GraphCache {
    budget: usize,
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_case: HashMap<String, Entry>,
    /// A counter standing in for time: the least recently used entry is evicted first.
    clock: u64,
    bytes: usize,
}

#[derive(Debug)]
struct Entry {
    heads: String,
    graph: Arc<ChangeGraph>,
    used_at: u64,
}

impl GraphCache {
    /// A cache holding graphs of at most `budget` bytes in all (0 turns it off).
    pub fn new(budget: usize) -> Self {
        GraphCache {
            budget,
            inner: Mutex::new(Entries::default()),
        }
    }

    /// The graph of `case_id` at `heads`, if the cache has it. A graph at other heads is
    /// stale and dropped.
    pub fn get(&self, case_id: &str, heads: &str) -> Option<Arc<ChangeGraph>> {
        let mut entries = self.lock();
        entries.clock += 1;
        let now = entries.clock;
        let entry = entries.by_case.get_mut(case_id)?;
        if entry.heads == heads {
            entry.used_at = now;
            return Some(Arc::clone(&entry.graph));
        }
        let stale = entries.by_case.remove(case_id);
        entries.bytes -= stale.map_or(0, |e| e.graph.memory_size());
        None
    }

    /// Takes the graph of `case_id` at `heads` out of the cache, if it has it, for a sync that
    /// will add changes to it: held by no one else, it is changed in place, not copied.
    pub fn take(&self, case_id: &str, heads: &str) -> Option<Arc<ChangeGraph>> {
        let mut entries = self.lock();
        let entry = entries.by_case.remove(case_id)?;
        entries.bytes -= entry.graph.memory_size();
        (entry.heads == heads).then_some(entry.graph)
    }

    /// Keeps `graph` as `case_id` stands at `heads` (committed), without the bytes of the
    /// changes it holds, evicting the least recently used graphs beyond the budget. A graph
    /// larger than the whole budget is not kept.
    pub fn put(&self, case_id: String, heads: String, mut graph: Arc<ChangeGraph>) {
        if graph.holds_change_bytes() {
            Arc::make_mut(&mut graph).forget_change_bytes();
        }
        let size = graph.memory_size();
        if size > self.budget {
            return;
        }
        let mut entries = self.lock();
        entries.clock += 1;
        let used_at = entries.clock;
        let replaced = entries.by_case.insert(
            case_id,
            Entry {
                heads,
                graph,
                used_at,
            },
        );
        entries.bytes += size;
        entries.bytes -= replaced.map_or(0, |e| e.graph.memory_size());
        while entries.bytes > self.budget {
            let oldest = entries
                .by_case
                .iter()
                .min_by_key(|(_, entry)| entry.used_at)
                .map(|(case_id, _)| case_id.clone());
            let Some(evicted) = oldest.and_then(|case_id| entries.by_case.remove(&case_id)) else {
                break;
            };
            entries.bytes -= evicted.graph.memory_size();
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

#[cfg(test)]
mod tests {
    use super::*;
    use doorstep_sync_core::testing;

    fn graph(case_id: &str) -> (Arc<ChangeGraph>, String) {
        let mut file = testing::new_case(case_id);
        let changes = file.doc_mut().get_changes(&[]);
        let graph = ChangeGraph::from_changes(changes.into_iter().map(|mut c| c.bytes().to_vec()))
            .expect("a whole document");
        let heads = crate::storage::heads_key(&graph.heads());
        (Arc::new(graph), heads)
    }

    #[test]
    fn serves_a_graph_only_at_the_heads_it_stands_at() {
        let cache = GraphCache::new(32 * 1024 * 1024);
        let (graph, heads) = graph("case-1");
        assert!(graph.holds_change_bytes());
        cache.put("case-1".into(), heads.clone(), graph);
        assert!(cache.get("case-1", &heads).is_some());
        assert!(
            cache.get("case-1", &heads).is_some(),
            "a get shares, it does not take"
        );
        assert!(
            !cache.get("case-1", &heads).unwrap().holds_change_bytes(),
            "a kept graph holds no change bytes"
        );
        assert!(cache.get("case-1", "other-heads").is_none());
        assert!(
            cache.get("case-1", &heads).is_none(),
            "a stale graph is dropped"
        );
    }

    #[test]
    fn evicts_the_least_recently_used_beyond_the_budget() {
        let (one, heads_one) = graph("case-1");
        let (two, heads_two) = graph("case-2");
        let (three, heads_three) = graph("case-3");
        // Room for two graphs as kept (without their change bytes), not three.
        let mut kept = (*one).clone();
        kept.forget_change_bytes();
        let cache = GraphCache::new(kept.memory_size() * 2 + kept.memory_size() / 2);
        cache.put("case-1".into(), heads_one.clone(), one);
        cache.put("case-2".into(), heads_two.clone(), two);
        assert!(cache.get("case-1", &heads_one).is_some());
        cache.put("case-3".into(), heads_three.clone(), three);
        assert_eq!(cache.len(), 2);
        assert!(
            cache.get("case-2", &heads_two).is_none(),
            "least recently used"
        );
        assert!(cache.get("case-1", &heads_one).is_some());
        assert!(cache.get("case-3", &heads_three).is_some());
    }
}
