//! Which parts of a case file to check. A whole-document check looks at every part; the checks
//! of a received sync message look only at the parts its changes touched, read from their
//! operations, so that their cost follows the change and not the size of the case (one visit
//! on a 2,000-visit case is checked as quickly as on a new one).

use std::collections::{BTreeSet, HashMap};

use automerge::legacy::{Key, ObjectId, OpId, OpType};
use automerge::{ChangeHash, ExpandedChange, ObjType, Prop, ROOT, ReadDoc};

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
    /// Whether these parts may hold an Automerge Text object, which the checks refuse: always
    /// for a whole check; for the parts changes touched, only when one of their operations
    /// made one. A document the checks let in holds none, so a Text object can only come with
    /// an operation that makes it, and looking for one in every touched record costs about a
    /// sixth of a checked receive.
    pub may_hold_text: bool,
}

impl Scope {
    /// Every part of `file`, with the records it held at the heads `before` too.
    pub fn whole(file: &CaseFile, before: Option<&[ChangeHash]>) -> Result<Scope> {
        let mut scope = Scope {
            case: true,
            actors: true,
            resolutions: true,
            may_hold_text: true,
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

    /// The parts that the operations of `changes` (just applied to `file`) touched, or None
    /// when one replaced or removed one of the layout's maps itself, or worked on an object
    /// that cannot be placed: then only a whole check will do.
    ///
    /// Read from the operations rather than from Automerge's patches: a patch carries its
    /// value and the path of its object, computed again for every operation, which cost a
    /// fifth of a received message's time and, for a message of 2,000 visits, tens of MiB.
    /// An operation that changed nothing visible (one that lost a conflict) still brings its
    /// record into scope; checking more is safe.
    pub fn touched(
        file: &CaseFile,
        changes: impl IntoIterator<Item = ExpandedChange>,
    ) -> Option<Scope> {
        let mut places = Places::new(file);
        let mut scope = Scope::default();
        // One decoded change at a time: decoded, a change's operations take several times
        // its bytes (a 2,000-visit sync held megabytes of them at once).
        for change in changes {
            for (offset, op) in change.operations.iter().enumerate() {
                let parent = places.of(&op.obj)?;
                let key = match &op.key {
                    Key::Map(key) => Some(key.as_str()),
                    Key::Seq(_) => None,
                };
                let place = parent.child(key)?;
                if let OpType::Make(kind) = op.action {
                    scope.may_hold_text |= kind == ObjType::Text;
                    let id = OpId(
                        change.start_op.get() + offset as u64,
                        change.actor_id.clone(),
                    );
                    places.known.insert(id, place.clone());
                }
                scope.add(place)?;
            }
        }
        Some(scope)
    }

    /// Adds every part of `other`: what a check of both must look at.
    pub fn extend(&mut self, other: &Scope) {
        self.case |= other.case;
        self.actors |= other.actors;
        self.resolutions |= other.resolutions;
        self.records.extend(other.records.iter().cloned());
        self.attendance.extend(other.attendance.iter().cloned());
        self.root.extend(other.root.iter().cloned());
        self.may_hold_text |= other.may_hold_text;
    }

    /// Adds the part that holds `place`, which changed; None when that part is one of the
    /// layout's maps itself or a list index where a record id belongs.
    fn add(&mut self, place: Place) -> Option<()> {
        let (top, second) = match place {
            Place::Root => return None,
            // The root key's own value changed.
            Place::Top(top) => (top, None),
            Place::Under(top, second) => (top, Some(second)),
        };
        if let Some(collection) = Collection::from_key(&top) {
            self.records.insert((collection, second??));
            return Some(());
        }
        match top.as_str() {
            "case" => self.case = true,
            "actors" => self.actors = true,
            "resolutions" => self.resolutions = true,
            "attendance" => {
                self.attendance.insert(second??);
            }
            _ => {
                self.root.insert(top);
            }
        }
        Some(())
    }
}

/// Where an object lies, as far as scopes go: the first two keys of its path (None for a list
/// index).
#[derive(Debug, Clone)]
enum Place {
    Root,
    Top(String),
    Under(String, Option<String>),
}

impl Place {
    /// What lies at `key` (None: a list index) in the object at this place.
    fn child(&self, key: Option<&str>) -> Option<Place> {
        Some(match self {
            // The root is a map: a list index there cannot be placed.
            Place::Root => Place::Top(key?.to_string()),
            Place::Top(top) => Place::Under(top.clone(), key.map(str::to_string)),
            Place::Under(..) => self.clone(),
        })
    }
}

/// The places of the objects that operations work on: those the changes created, as they
/// create them, and the others from the document, each looked up once.
struct Places<'a> {
    file: &'a CaseFile,
    known: HashMap<OpId, Place>,
}

impl<'a> Places<'a> {
    fn new(file: &'a CaseFile) -> Self {
        Places {
            file,
            known: HashMap::new(),
        }
    }

    fn of(&mut self, obj: &ObjectId) -> Option<Place> {
        let ObjectId::Id(id) = obj else {
            return Some(Place::Root);
        };
        if let Some(place) = self.known.get(id) {
            return Some(place.clone());
        }
        let doc = self.file.doc();
        // `import_obj` is the one way from an operation's object id to the document's handle
        // for it (Automerge's own tools use it; it is hidden from its documentation).
        let handle = doc.import_obj(&id.to_string()).ok()?;
        let mut place = Place::Root;
        for (_, prop) in doc.parents(&handle).ok()?.path().into_iter().take(2) {
            place = place.child(match &prop {
                Prop::Map(key) => Some(key.as_str()),
                Prop::Seq(_) => None,
            })?;
        }
        self.known.insert(id.clone(), place.clone());
        Some(place)
    }
}

fn is_layout_key(key: &str) -> bool {
    LAYOUT_MAPS.contains(&key) || Collection::from_key(key).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;
    use automerge::transaction::Transactable;

    /// The scope of what `file` did since `before`, as a receiver would read it.
    fn touched_since(file: &mut CaseFile, before: &[ChangeHash]) -> Option<Scope> {
        let changes = file.doc_mut().get_changes(before);
        Scope::touched(file, changes.iter().map(automerge::Change::decode))
    }

    #[test]
    fn operations_are_placed_under_the_record_or_entry_they_change() {
        let mut file = testing::new_case("case-scope");
        let at = testing::at(0);
        let first = file.add(&testing::visit("user-1", at, 40), at).unwrap();
        let before = file.heads();

        // A new record: its objects are created by the same changes.
        let second = file.add(&testing::visit("user-1", at, 40), at).unwrap();
        let scope = touched_since(&mut file, &before).unwrap();
        let records: Vec<_> = scope.records.iter().cloned().collect();
        assert_eq!(records, vec![(Collection::Visits, second.clone())]);
        assert!(scope.attendance.is_empty() && !scope.case && scope.root.is_empty());

        // An edit of an existing record: its body is found in the document.
        let before = file.heads();
        file.update(&first, &testing::visit("user-1", at, 80), at)
            .unwrap();
        let scope = touched_since(&mut file, &before).unwrap();
        let records: Vec<_> = scope.records.iter().cloned().collect();
        assert_eq!(records, vec![(Collection::Visits, first)]);

        // The case's details.
        let before = file.heads();
        let mut details = testing::case_details();
        details.school_name = "Another School".into();
        file.update_details(&details, at).unwrap();
        let scope = touched_since(&mut file, &before).unwrap();
        assert!(scope.case && scope.records.is_empty());
    }

    #[test]
    fn only_changes_that_make_a_text_object_may_bring_text() {
        let mut file = testing::new_case("case-scope");
        let at = testing::at(0);
        let before = file.heads();
        let visit = file.add(&testing::visit("user-1", at, 40), at).unwrap();
        assert!(!touched_since(&mut file, &before).unwrap().may_hold_text);
        assert!(Scope::whole(&file, None).unwrap().may_hold_text);

        let before = file.heads();
        let doc = file.doc_mut();
        let (_, visits) = doc.get(ROOT, "visits").unwrap().unwrap();
        let (_, record) = doc.get(&visits, visit.as_str()).unwrap().unwrap();
        let (_, body) = doc.get(&record, "body").unwrap().unwrap();
        let list = doc.put_object(&body, "extra", ObjType::List).unwrap();
        doc.insert_object(&list, 0, ObjType::Text).unwrap();
        doc.commit();
        let scope = touched_since(&mut file, &before).unwrap();
        assert!(scope.may_hold_text);
        assert_eq!(
            scope.records.into_iter().collect::<Vec<_>>(),
            vec![(Collection::Visits, visit)]
        );
    }

    #[test]
    fn replacing_a_collection_needs_a_whole_check() {
        let mut file = testing::new_case("case-scope");
        let before = file.heads();
        file.doc_mut()
            .put_object(ROOT, Collection::Visits.key(), ObjType::Map)
            .unwrap();
        file.doc_mut().commit();
        assert_eq!(touched_since(&mut file, &before), None);
    }
}
