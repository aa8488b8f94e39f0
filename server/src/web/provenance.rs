//! Which stored change made each record and amendment, and so when the server received it
//! and from whom (DESIGN.md invariant 2: author, device time and server-received time).
//!
//! An Automerge object's id is the operation that created it (`counter@actor`); the change
//! holding that operation is the one by that actor whose operation range covers the counter.
//! Its hash finds the stored change, which carries the received time.

use std::collections::HashMap;

use automerge::{ObjType, ROOT, ReadDoc, Value};
use doorstep_sync_core::{CaseFile, Collection};

use crate::storage::StoredChange;

/// When and from whom the server received the change that made something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub change_hash: String,
    /// Unix milliseconds.
    pub at: i64,
    pub user_id: Option<String>,
    pub device_id: Option<String>,
}

/// The provenance of one case file's records and amendments.
#[derive(Debug, Default)]
pub struct Provenance {
    records: HashMap<(Collection, String), Received>,
    amendments: HashMap<String, Received>,
}

struct ChangeSpan {
    actor: String,
    first_op: u64,
    last_op: u64,
    hash: String,
}

impl Provenance {
    pub fn of(file: &mut CaseFile, stored: &[StoredChange]) -> Provenance {
        let by_hash: HashMap<&str, &StoredChange> =
            stored.iter().map(|c| (c.hash.as_str(), c)).collect();
        let spans: Vec<ChangeSpan> = file
            .doc_mut()
            .get_changes(&[])
            .into_iter()
            .map(|change| ChangeSpan {
                actor: change.actor_id().to_hex_string(),
                first_op: change.start_op().get(),
                last_op: change.max_op(),
                hash: change.hash().to_string(),
            })
            .collect();
        let received = |op_id: &str| -> Option<Received> {
            let (counter, actor) = op_id.split_once('@')?;
            let counter: u64 = counter.parse().ok()?;
            let span = spans
                .iter()
                .find(|s| s.actor == actor && (s.first_op..=s.last_op).contains(&counter))?;
            let stored = by_hash.get(span.hash.as_str())?;
            Some(Received {
                change_hash: span.hash.clone(),
                at: stored.received_at,
                user_id: stored.user_id.clone(),
                device_id: stored.device_id.clone(),
            })
        };
        let mut provenance = Provenance::default();
        let doc = file.doc();
        for collection in Collection::ALL {
            let Ok(Some((Value::Object(ObjType::Map), collection_obj))) =
                doc.get(ROOT, collection.key())
            else {
                continue;
            };
            for record_id in doc.keys(&collection_obj) {
                let Ok(Some((_, record_obj))) = doc.get(&collection_obj, record_id.as_str()) else {
                    continue;
                };
                if let Some(r) = received(&record_obj.to_string()) {
                    provenance
                        .records
                        .insert((collection, record_id.clone()), r);
                }
                let Ok(Some((_, amendments_obj))) = doc.get(&record_obj, "amendments") else {
                    continue;
                };
                for amendment_id in doc.keys(&amendments_obj) {
                    if let Ok(Some((_, op))) = doc.get(&amendments_obj, amendment_id.as_str())
                        && let Some(r) = received(&op.to_string())
                    {
                        provenance.amendments.insert(amendment_id, r);
                    }
                }
            }
        }
        provenance
    }

    pub fn record(&self, collection: Collection, id: &str) -> Option<&Received> {
        self.records.get(&(collection, id.to_string()))
    }

    pub fn amendment(&self, id: &str) -> Option<&Received> {
        self.amendments.get(id)
    }
}
