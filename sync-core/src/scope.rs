//! Which parts of a case file to check. A whole-document check looks at every part; the checks
//! of a received sync message look only at the parts its changes touched, read from the
//! patches Automerge logs while applying them, so that their cost follows the change and not
//! the size of the case (one visit on a 2,000-visit case is checked as quickly as on a new one).

use std::collections::BTreeSet;

use automerge::{ChangeHash, Patch, PatchAction, Prop, ROOT, ReadDoc};

use crate::case_file::CaseFile;
use crate::error::Result;
use crate::records::Collection;
use crate::value::map_at_version;

/// The root keys that hold the case file's own maps, besides the collections.
pub(crate) const LAYOUT_MAPS: [&str; 4] = ["case", "actors", "attendance", "resolutions"];

/// Parts of a case file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Scope {
    /// The case's details (`case`).
    pub case: bool,
    /// The actor registrations (`actors`).
    pub actors: bool,
    /// The conflict resolutions (`resolutions`).
    pub resolutions: bool,
    /// Records, by collection and id (present or deleted).
    pub records: BTreeSet<(Collection, String)>,
    /// Attendance entries, by key.
    pub attendance: BTreeSet<String>,
    /// Other root keys (`schema_version`, `case_id`, keys a newer schema writes).
    pub root: BTreeSet<String>,
}

impl Scope {
    /// Every part of `file`, with the records it held at the heads `before` too.
    pub fn whole(file: &CaseFile, before: Option<&[ChangeHash]>) -> Result<Scope> {
        let mut scope = Scope {
            case: true,
            actors: true,
            resolutions: true,
            ..Scope::default()
        };
        for collection in Collection::ALL {
            for id in file.record_ids(collection)? {
                scope.records.insert((collection, id));
            }
        }
        if let Some(heads) = before {
            for collection in Collection::ALL {
                if let Some(records) = map_at_version(file.doc(), &ROOT, collection.key(), before) {
                    for id in file.doc().keys_at(&records, heads) {
                        scope.records.insert((collection, id));
                    }
                }
            }
        }
        let attendance = file.root_map("attendance")?;
        scope.attendance = file.doc().keys(&attendance).collect();
        scope.root = file
            .doc()
            .keys(ROOT)
            .filter(|key| !is_layout_key(key))
            .collect();
        Ok(scope)
    }

    /// The parts that `patches` changed, or None when a patch replaced or removed one of the
    /// layout's maps itself (or could not be placed): then only a whole check will do.
    pub fn touched(patches: &[Patch]) -> Option<Scope> {
        let mut scope = Scope::default();
        for patch in patches {
            // The path of what changed: where the patched object lives, then the key the patch
            // sets or removes in it (a sequence patch changes the object itself). Only the
            // first two levels matter: a root key, and the record or entry under it.
            let action_key = match &patch.action {
                PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } => Some(key),
                PatchAction::Increment {
                    prop: Prop::Map(key),
                    ..
                }
                | PatchAction::Conflict {
                    prop: Prop::Map(key),
                } => Some(key),
                _ => None,
            };
            let mut keys = patch
                .path
                .iter()
                .map(|(_, prop)| match prop {
                    Prop::Map(key) => Some(key.as_str()),
                    Prop::Seq(_) => None,
                })
                .chain(action_key.map(|key| Some(key.as_str())));
            let top = keys.next().flatten()?.to_string();
            // None: the patch changed the root key's own value; Some(None): a list index.
            let second = keys.next().map(|key| key.map(str::to_string));
            if let Some(collection) = Collection::from_key(&top) {
                // A collection's map itself replaced or removed: check everything.
                scope.records.insert((collection, second??));
                continue;
            }
            match top.as_str() {
                "case" => scope.case = true,
                "actors" => scope.actors = true,
                "resolutions" => scope.resolutions = true,
                "attendance" => {
                    scope.attendance.insert(second??);
                }
                _ => {
                    scope.root.insert(top);
                }
            }
        }
        Some(scope)
    }
}

fn is_layout_key(key: &str) -> bool {
    LAYOUT_MAPS.contains(&key) || Collection::from_key(key).is_some()
}
