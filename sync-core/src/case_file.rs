//! [`CaseFile`]: one case's Automerge document behind a typed API.
//!
//! Document layout (schema version 1):
//!
//! ```text
//! schema_version   uint    raised by newer clients, never lowered
//! case_id          str
//! case             map     CaseDetails fields
//! actors           map     actor hex -> JSON {user_id, device_id}: who each actor is
//! <collection>     map     record id -> record (one map per Collection)
//!   record         map     meta {id, user_id, device_id, device_time}
//!                          body {the record body's fields}
//!                          finalised   JSON string {user_id, device_id, at, content}
//!                          amendments  map amendment id -> JSON string (immutable)
//! attendance       map     "<child id>|<YYYY-MM-DD>|<AM|PM>" -> attendance code
//! resolutions      map     resolution id -> JSON string (immutable)
//! ```
//!
//! Every map that two replicas could otherwise create concurrently (the collections, a
//! record's `amendments`) is created once, by whoever creates its parent, because two
//! concurrent `put_object`s on one key leave one of the two objects hidden. Immutable entries
//! (finalisations, amendments, resolutions) are single JSON strings: one operation each, never
//! partially merged.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{
    ActorId, AutoCommit, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, transaction::CommitOptions,
    transaction::Transactable,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::attendance::{AttendanceCode, Mark, Session};
use crate::error::{CaseFileError, Problem, Result, ValidationErrors};
use crate::records::{CaseDetails, Collection, RecordBody, Validate};
use crate::scope::{LAYOUT_MAPS, Scope};
use crate::value::{
    ensure_map, map_at, map_at_version, put_changed_fields, put_json, read_key, read_map, str_at,
    str_at_version, text_object_at,
};

/// The schema version this build writes. Raise it when the layout or a record's fields change.
pub const SCHEMA_VERSION: u64 = 1;

/// Who makes a change: a named user on a registered device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Author {
    pub user_id: String,
    pub device_id: String,
}

/// The envelope of a finalisation: who made the record immutable, when, and what it said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finalisation {
    pub by: Author,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredFinalisation {
    pub(crate) by: Author,
    pub(crate) at: DateTime<Utc>,
    /// The body as it stood when finalised; the record's value is this plus its amendments.
    pub(crate) content: Map<String, Json>,
}

/// A correction of a finalised record (the register-amendment rule): the original and the new
/// value, why, when and by whom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Amendment {
    pub id: String,
    pub field: String,
    pub original: Json,
    pub new: Json,
    pub reason: String,
    pub at: DateTime<Utc>,
    pub by: Author,
    /// The amendments of the same field this one replaces (those its author had seen).
    #[serde(default)]
    pub supersedes: Vec<String>,
}

/// A record with its envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record<T> {
    pub id: String,
    pub author: Author,
    /// The device's clock when the record was made (the server adds its received time).
    pub device_time: DateTime<Utc>,
    /// The current value: for a finalised record, the finalised content plus amendments.
    pub body: T,
    pub finalised: Option<Finalisation>,
    /// The whole amendment trail, oldest first.
    pub amendments: Vec<Amendment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RecordMeta {
    id: String,
    user_id: String,
    device_id: String,
    device_time: DateTime<Utc>,
}

/// A record read without its type: what the web view and the conflict logic work on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawRecord {
    pub collection: Collection,
    pub id: String,
    pub author: Author,
    pub device_time: DateTime<Utc>,
    pub body: Map<String, Json>,
    pub finalised: Option<Finalisation>,
    pub amendments: Vec<Amendment>,
}

impl RawRecord {
    /// The typed form of this record.
    pub fn into_typed<T: RecordBody>(self) -> Result<Record<T>> {
        let body = body_from_json::<T>(Json::Object(self.body), "record")?;
        Ok(Record {
            id: self.id,
            author: self.author,
            device_time: self.device_time,
            body,
            finalised: self.finalised,
            amendments: self.amendments,
        })
    }
}

/// Deserialises and validates a body given as JSON, naming the failing field.
pub fn body_from_json<T: RecordBody>(json: Json, what: &'static str) -> Result<T> {
    let body: T = from_json_named(json, what)?;
    let mut errors = ValidationErrors::default();
    body.validate(&mut errors);
    errors
        .into_result()
        .map_err(|e| CaseFileError::validation(what, e))?;
    Ok(body)
}

/// Deserialises JSON into `T`, turning serde's message into a typed error naming the field.
pub fn from_json_named<T: serde::de::DeserializeOwned>(
    json: Json,
    what: &'static str,
) -> Result<T> {
    serde_path_to_error::deserialize::<_, T>(json).map_err(|err| {
        let path = err.path().to_string();
        let message = err.inner().to_string();
        let mut errors = ValidationErrors::default();
        // serde reports a missing field at its parent's path, naming it in the message.
        if let Some(rest) = message.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or(rest);
            let field = if path == "." {
                name.to_string()
            } else {
                format!("{path}.{name}")
            };
            errors.push(field, Problem::Missing);
        } else {
            errors.push(path, Problem::Invalid { detail: message });
        }
        CaseFileError::validation(what, errors)
    })
}

/// See [`CaseFile::record_stamp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordStamp {
    pub user_id: Option<String>,
    pub device_id: Option<String>,
    pub finalised: Option<String>,
    pub amendments: BTreeSet<String>,
}

/// One case file: an Automerge document and the author whose changes this handle makes.
#[derive(Debug)]
pub struct CaseFile {
    pub(crate) doc: AutoCommit,
    pub(crate) author: Author,
}

impl CaseFile {
    /// Creates a new case file. Only the server creates case files, so every collection map has
    /// one creator and replicas never race to create them.
    pub fn create(
        case_id: &str,
        details: &CaseDetails,
        author: Author,
        actor: ActorId,
        at: DateTime<Utc>,
    ) -> Result<Self> {
        let mut errors = ValidationErrors::default();
        details.validate(&mut errors);
        if case_id.trim().is_empty() {
            errors.push("case_id", Problem::Empty);
        }
        errors
            .into_result()
            .map_err(|e| CaseFileError::validation("case details", e))?;
        let mut file = CaseFile {
            doc: AutoCommit::new().with_actor(actor),
            author,
        };
        let doc = &mut file.doc;
        doc.put(ROOT, "schema_version", SCHEMA_VERSION)?;
        doc.put(ROOT, "case_id", case_id)?;
        let case = doc.put_object(ROOT, "case", ObjType::Map)?;
        put_changed_fields(doc, &case, &to_object(details)?)?;
        for collection in Collection::ALL {
            doc.put_object(ROOT, collection.key(), ObjType::Map)?;
        }
        for key in ["actors", "attendance", "resolutions"] {
            doc.put_object(ROOT, key, ObjType::Map)?;
        }
        file.register_actor()?;
        file.commit(at, "create case");
        Ok(file)
    }

    /// Loads a saved document. Corrupted or truncated bytes, or a document that is not a
    /// Doorstep case file, give an error.
    pub fn load(bytes: &[u8], author: Author, actor: ActorId) -> Result<Self> {
        let doc = AutoCommit::load(bytes).map_err(|e| CaseFileError::Corrupt(e.to_string()))?;
        let mut file = CaseFile {
            doc: doc.with_actor(actor),
            author,
        };
        file.check_layout()?;
        file.shrink_to_fit();
        Ok(file)
    }

    /// Gives back the memory the document holds beyond what it needs. Automerge 0.12 keeps
    /// the spare capacity its columns grew while changes were applied one batch at a time
    /// (on load, the changes appended to a saved document; then each received message): a
    /// 200-visit case loaded over and over from "save + appended changes", as the server
    /// stores it, held 2.9 MB against 0.4 MB for a copy. A copy allocates each column at
    /// its length, and costs about 1 % of a load.
    pub fn shrink_to_fit(&mut self) {
        self.doc = self.doc.clone();
    }

    /// Wraps a document that arrived by sync from nothing (a phone's first sync of a case).
    pub fn empty(author: Author, actor: ActorId) -> Self {
        CaseFile {
            doc: AutoCommit::new().with_actor(actor),
            author,
        }
    }

    /// Changes whose changes this handle makes from now on (the server writes for whichever
    /// staff member is signed in).
    pub fn set_author(&mut self, author: Author, actor: ActorId) {
        self.doc.set_actor(actor);
        self.author = author;
    }

    pub fn author(&self) -> &Author {
        &self.author
    }

    /// Checks that the document has the layout of a case file (after a load or a first sync).
    pub fn check_layout(&self) -> Result<()> {
        if self.schema_version().is_none() {
            return Err(CaseFileError::NotACaseFile(
                "no schema_version at the root".into(),
            ));
        }
        for key in Collection::ALL.iter().map(|c| c.key()).chain(LAYOUT_MAPS) {
            if map_at(&self.doc, &ROOT, key).is_none() {
                return Err(CaseFileError::NotACaseFile(format!("no `{key}` map")));
            }
        }
        Ok(())
    }

    /// The schema version the document was last written with (None before the first sync).
    pub fn schema_version(&self) -> Option<u64> {
        // Two clients may raise it at once; the higher version is the document's.
        self.doc
            .get_all(ROOT, "schema_version")
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(value, _)| value.as_u64())
            .max()
    }

    /// True when a newer client has written this document: this build keeps the fields it
    /// does not know intact, because it writes only the fields it changes.
    pub fn written_by_newer_schema(&self) -> bool {
        self.schema_version().is_some_and(|v| v > SCHEMA_VERSION)
    }

    pub fn case_id(&self) -> Option<String> {
        str_at(&self.doc, &ROOT, "case_id")
    }

    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// The underlying document, for the sync layer and for storage.
    pub fn doc(&self) -> &AutoCommit {
        &self.doc
    }

    pub fn doc_mut(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }

    /// Who each actor id belongs to, as recorded in the document.
    pub fn actors(&self) -> BTreeMap<String, Author> {
        let Some(actors) = map_at(&self.doc, &ROOT, "actors") else {
            return BTreeMap::new();
        };
        read_map(&self.doc, &actors)
            .into_iter()
            .filter_map(|(actor, json)| {
                let author = json.as_str().and_then(|s| serde_json::from_str(s).ok())?;
                Some((actor, author))
            })
            .collect()
    }

    // -----------------------------------------------------------------------------------------
    // The case's own details.

    pub fn details(&self) -> Result<CaseDetails> {
        let case = self.root_map("case")?;
        from_json_named(Json::Object(read_map(&self.doc, &case)), "case details")
    }

    pub fn update_details(&mut self, details: &CaseDetails, at: DateTime<Utc>) -> Result<()> {
        let mut errors = ValidationErrors::default();
        details.validate(&mut errors);
        errors
            .into_result()
            .map_err(|e| CaseFileError::validation("case details", e))?;
        let case = self.root_map("case")?;
        self.write(at, "update case details", |file| {
            put_changed_fields(&mut file.doc, &case, &to_object(details)?)?;
            Ok(())
        })
    }

    /// Moves the case along its pathway: the new stage and the record of the change, in one
    /// change so the stage history is never missing a step. Returns the stage change's id.
    pub fn change_stage(
        &mut self,
        to_stage: &str,
        reason: &str,
        changed_on: chrono::NaiveDate,
        at: DateTime<Utc>,
    ) -> Result<String> {
        let mut details = self.details()?;
        let change = crate::records::StageChange {
            from_stage: details.stage.clone(),
            to_stage: to_stage.to_string(),
            changed_on,
            reason: reason.to_string(),
        };
        validated(&change, "stage change")?;
        details.stage = to_stage.to_string();
        validated(&details, "case details")?;
        let case = self.root_map("case")?;
        let records = self.root_map(Collection::StageChanges.key())?;
        let id = uuid::Uuid::new_v4().to_string();
        let meta = self.meta_for(&id, at);
        self.write(at, &format!("change stage to {to_stage}"), |file| {
            put_changed_fields(&mut file.doc, &case, &to_object(&details)?)?;
            file.put_record(&records, &id, &meta, &to_object(&change)?)
        })?;
        Ok(id)
    }

    // -----------------------------------------------------------------------------------------
    // Records.

    /// Adds a record with a fresh id and returns the id.
    pub fn add<T: RecordBody>(&mut self, body: &T, at: DateTime<Utc>) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        self.add_with_id(&id, body, at)?;
        Ok(id)
    }

    /// Adds a record under a caller-chosen id (phones mint ids offline; tests want them fixed).
    pub fn add_with_id<T: RecordBody>(
        &mut self,
        id: &str,
        body: &T,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let collection = T::COLLECTION;
        validated(body, "record")?;
        if id.trim().is_empty() {
            let mut errors = ValidationErrors::default();
            errors.push("id", Problem::Empty);
            return Err(CaseFileError::validation("record", errors));
        }
        let records = self.root_map(collection.key())?;
        if map_at(&self.doc, &records, id).is_some() {
            return Err(CaseFileError::DuplicateRecord {
                collection,
                id: id.to_string(),
            });
        }
        let meta = self.meta_for(id, at);
        let body = to_object(body)?;
        self.write(at, &format!("add {collection}/{id}"), |file| {
            file.put_record(&records, id, &meta, &body)
        })
    }

    fn meta_for(&self, id: &str, at: DateTime<Utc>) -> RecordMeta {
        RecordMeta {
            id: id.to_string(),
            user_id: self.author.user_id.clone(),
            device_id: self.author.device_id.clone(),
            device_time: at,
        }
    }

    /// Writes a new record's map: its meta, its body and its (empty) amendments map.
    fn put_record(
        &mut self,
        records: &ObjId,
        id: &str,
        meta: &RecordMeta,
        body: &Map<String, Json>,
    ) -> Result<()> {
        let doc = &mut self.doc;
        let record = doc.put_object(records, id, ObjType::Map)?;
        put_json(doc, &record, "meta", &Json::Object(to_object(meta)?))?;
        let body_obj = doc.put_object(&record, "body", ObjType::Map)?;
        for (key, value) in body {
            put_json(doc, &body_obj, key, value)?;
        }
        doc.put_object(&record, "amendments", ObjType::Map)?;
        Ok(())
    }

    /// Replaces a draft record's body, writing only the fields that changed. Finalised
    /// records refuse: they change only through [`CaseFile::amend`].
    pub fn update<T: RecordBody>(&mut self, id: &str, body: &T, at: DateTime<Utc>) -> Result<()> {
        let collection = T::COLLECTION;
        validated(body, "record")?;
        let record = self.record_obj(collection, id)?;
        if self.stored_finalisation(&record).is_some() {
            return Err(CaseFileError::Finalised {
                collection,
                id: id.to_string(),
            });
        }
        let body_obj = self.body_obj(collection, id, &record)?;
        let fields = to_object(body)?;
        self.write(at, &format!("update {collection}/{id}"), |file| {
            put_changed_fields(&mut file.doc, &body_obj, &fields)?;
            Ok(())
        })
    }

    /// Makes a visit, voice entry or evidence item immutable.
    pub fn finalise(&mut self, collection: Collection, id: &str, at: DateTime<Utc>) -> Result<()> {
        if !collection.is_finalisable() {
            return Err(CaseFileError::NotFinalisable { collection });
        }
        let record = self.record_obj(collection, id)?;
        if self.stored_finalisation(&record).is_some() {
            return Err(CaseFileError::Finalised {
                collection,
                id: id.to_string(),
            });
        }
        if let Some(field) = self
            .record_conflicts(collection, id)?
            .into_iter()
            .map(|c| c.field)
            .next()
        {
            return Err(CaseFileError::FieldInConflict {
                collection,
                id: id.to_string(),
                field,
            });
        }
        let body_obj = self.body_obj(collection, id, &record)?;
        let stored = StoredFinalisation {
            by: self.author.clone(),
            at,
            content: read_map(&self.doc, &body_obj),
        };
        let json = serde_json::to_string(&stored).map_err(json_error)?;
        self.write(at, &format!("finalise {collection}/{id}"), |file| {
            file.doc.put(&record, "finalised", json)?;
            Ok(())
        })
    }

    /// Amends one field of a finalised record, keeping the original, the new value, the
    /// reason, the time and the author. Returns the amendment's id.
    pub fn amend(
        &mut self,
        collection: Collection,
        id: &str,
        field: &str,
        new_value: Json,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<String> {
        if reason.trim().is_empty() {
            return Err(CaseFileError::MissingReason);
        }
        let raw = self.raw_record(collection, id)?;
        if raw.finalised.is_none() {
            return Err(CaseFileError::NotFinalised {
                collection,
                id: id.to_string(),
            });
        }
        // Finalised content holds every field of the type (absent options as null).
        if !raw.body.contains_key(field) {
            return Err(CaseFileError::UnknownField {
                collection,
                field: field.to_string(),
            });
        }
        if self
            .record_conflicts(collection, id)?
            .iter()
            .any(|c| c.field == field)
        {
            return Err(CaseFileError::FieldInConflict {
                collection,
                id: id.to_string(),
                field: field.to_string(),
            });
        }
        let mut amended = raw.body.clone();
        amended.insert(field.to_string(), new_value.clone());
        validate_raw_body(collection, Json::Object(amended))?;
        let supersedes = amendment_heads(&raw.amendments, field)
            .into_iter()
            .map(|a| a.id.clone())
            .collect();
        let amendment = Amendment {
            id: uuid::Uuid::new_v4().to_string(),
            field: field.to_string(),
            original: raw.body.get(field).cloned().unwrap_or(Json::Null),
            new: new_value,
            reason: reason.trim().to_string(),
            at,
            by: self.author.clone(),
            supersedes,
        };
        self.put_amendment(collection, id, &amendment)?;
        Ok(amendment.id)
    }

    pub(crate) fn put_amendment(
        &mut self,
        collection: Collection,
        id: &str,
        amendment: &Amendment,
    ) -> Result<()> {
        let record = self.record_obj(collection, id)?;
        let amendments = map_at(&self.doc, &record, "amendments").ok_or_else(|| {
            CaseFileError::NotACaseFile(format!("{collection}/{id} has no amendments map"))
        })?;
        let json = serde_json::to_string(amendment).map_err(json_error)?;
        self.write(
            amendment.at,
            &format!("amend {collection}/{id}.{}", amendment.field),
            |file| {
                file.doc.put(&amendments, amendment.id.as_str(), json)?;
                Ok(())
            },
        )
    }

    /// One typed record.
    pub fn get<T: RecordBody>(&self, id: &str) -> Result<Record<T>> {
        self.raw_record(T::COLLECTION, id)?.into_typed()
    }

    /// Every record of one kind, ordered by device time then id.
    pub fn list<T: RecordBody>(&self) -> Result<Vec<Record<T>>> {
        self.raw_records(T::COLLECTION)?
            .into_iter()
            .map(RawRecord::into_typed)
            .collect()
    }

    /// Ids of the records of one collection.
    pub fn record_ids(&self, collection: Collection) -> Result<Vec<String>> {
        let records = self.root_map(collection.key())?;
        Ok(self.doc.keys(&records).collect())
    }

    /// Every record of one collection, untyped, ordered by device time then id.
    pub fn raw_records(&self, collection: Collection) -> Result<Vec<RawRecord>> {
        let mut out = self
            .record_ids(collection)?
            .iter()
            .map(|id| self.raw_record(collection, id))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| (a.device_time, &a.id).cmp(&(b.device_time, &b.id)));
        Ok(out)
    }

    /// One record, untyped, with its current value.
    pub fn raw_record(&self, collection: Collection, id: &str) -> Result<RawRecord> {
        let record = self.record_obj(collection, id)?;
        self.raw_record_at(collection, id, &record)
    }

    /// [`CaseFile::raw_record`] of the record object `record`, already looked up.
    fn raw_record_at(&self, collection: Collection, id: &str, record: &ObjId) -> Result<RawRecord> {
        let meta_obj = map_at(&self.doc, record, "meta")
            .ok_or_else(|| CaseFileError::NotACaseFile(format!("{collection}/{id} has no meta")))?;
        let meta: RecordMeta =
            from_json_named(Json::Object(read_map(&self.doc, &meta_obj)), "record meta")?;
        let amendments = self.amendments(record);
        let (body, finalised) = match self.stored_finalisation(record) {
            Some(stored) => {
                let mut body = stored.content;
                apply_amendments(&mut body, &amendments);
                (
                    body,
                    Some(Finalisation {
                        by: stored.by,
                        at: stored.at,
                    }),
                )
            }
            None => {
                let body_obj = self.body_obj(collection, id, record)?;
                (read_map(&self.doc, &body_obj), None)
            }
        };
        Ok(RawRecord {
            collection,
            id: meta.id,
            author: Author {
                user_id: meta.user_id,
                device_id: meta.device_id,
            },
            device_time: meta.device_time,
            body,
            finalised,
            amendments,
        })
    }

    // -----------------------------------------------------------------------------------------
    // Attendance marks.

    /// Writes register marks for one child (imported from the school's MIS). A mark already
    /// holding the same code is not rewritten. Returns how many marks changed.
    pub fn record_marks(
        &mut self,
        child_id: &str,
        marks: &[Mark],
        at: DateTime<Utc>,
    ) -> Result<usize> {
        if map_at(
            &self.doc,
            &self.root_map(Collection::Children.key())?,
            child_id,
        )
        .is_none()
        {
            return Err(CaseFileError::UnknownRecord {
                collection: Collection::Children,
                id: child_id.to_string(),
            });
        }
        let attendance = self.root_map("attendance")?;
        let fields: Map<String, Json> = marks
            .iter()
            .map(|m| {
                (
                    mark_key(child_id, m.date, m.session),
                    Json::String(m.code.as_str().to_string()),
                )
            })
            .collect();
        let mut changed = 0;
        self.write(
            at,
            &format!("record marks for children/{child_id}"),
            |file| {
                changed = put_changed_fields(&mut file.doc, &attendance, &fields)?;
                Ok(())
            },
        )?;
        Ok(changed)
    }

    /// The marks recorded for one child, by date and session. Marks the document holds that this
    /// build cannot parse are reported, not dropped.
    pub fn marks(&self, child_id: &str) -> Result<Vec<Mark>> {
        let attendance = self.root_map("attendance")?;
        let prefix = format!("{child_id}|");
        let mut marks = Vec::new();
        let mut errors = ValidationErrors::default();
        for (key, value) in read_map(&self.doc, &attendance) {
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            match parse_mark(rest, &value) {
                Some(mark) => marks.push(mark),
                None => errors.push(
                    format!("attendance.{key}"),
                    Problem::Invalid {
                        detail: format!("unreadable mark {value}"),
                    },
                ),
            }
        }
        errors
            .into_result()
            .map_err(|e| CaseFileError::validation("attendance", e))?;
        marks.sort_by_key(|m| (m.date, m.session == Session::Pm));
        Ok(marks)
    }

    // -----------------------------------------------------------------------------------------
    // Validation.

    /// Checks every record against its type and rules. Returns every problem found.
    pub fn validate(&self) -> Result<()> {
        self.validate_scope(&Scope::whole(self, None)?)
    }

    /// Checks the layout, and the parts of the document in `scope`: what the server runs on a
    /// synced message (with the parts its changes touched; the rest was valid before).
    pub(crate) fn validate_scope(&self, scope: &Scope) -> Result<()> {
        self.check_layout()?;
        let mut errors = ValidationErrors::default();
        let mut invalid = |at: String, detail: String| errors.push(at, Problem::Invalid { detail });
        if scope.case
            && let Err(e) = self.details()
        {
            invalid("case".into(), e.to_string());
        }
        let mut collections = BTreeMap::new();
        for (collection, id) in &scope.records {
            let records = match collections.entry(*collection) {
                std::collections::btree_map::Entry::Occupied(known) => known.into_mut(),
                std::collections::btree_map::Entry::Vacant(new) => {
                    new.insert(self.root_map(collection.key())?)
                }
            };
            let record = match self.doc.get(records, id.as_str())? {
                Some((automerge::Value::Object(ObjType::Map), record)) => record,
                None => continue, // removed
                Some(_) => {
                    let error = CaseFileError::UnknownRecord {
                        collection: *collection,
                        id: id.clone(),
                    };
                    invalid(format!("{collection}.{id}"), error.to_string());
                    continue;
                }
            };
            let outcome = self
                .raw_record_at(*collection, id, &record)
                .and_then(|raw| validate_raw_body(*collection, Json::Object(raw.body)));
            if let Err(e) = outcome {
                invalid(format!("{collection}.{id}"), e.to_string());
            }
        }
        if scope.may_hold_text
            && let Some(path) = self.first_text_object_in(scope)?
        {
            invalid(
                path,
                "text must be a plain string, not an Automerge Text object".into(),
            );
        }
        let attendance = self.root_map("attendance")?;
        for key in &scope.attendance {
            let Some(value) = read_key(&self.doc, &attendance, key) else {
                continue; // removed
            };
            let valid = key
                .split_once('|')
                .and_then(|(_, rest)| parse_mark(rest, &value))
                .is_some();
            if !valid {
                invalid(
                    format!("attendance.{key}"),
                    format!("unreadable mark {value}"),
                );
            }
        }
        errors
            .into_result()
            .map_err(|e| CaseFileError::validation("case file", e))
    }

    /// The path of the first Automerge `Text` object in the parts of `scope`.
    fn first_text_object_in(&self, scope: &Scope) -> Result<Option<String>> {
        let doc = &self.doc;
        let mut parts: Vec<(ObjId, String, String)> = Vec::new();
        for key in &scope.root {
            parts.push((ROOT, key.clone(), key.clone()));
        }
        for (wanted, key) in [
            (scope.case, "case"),
            (scope.actors, "actors"),
            (scope.resolutions, "resolutions"),
        ] {
            if wanted {
                parts.push((ROOT, key.into(), key.into()));
            }
        }
        for (collection, id) in &scope.records {
            let records = self.root_map(collection.key())?;
            parts.push((records, id.clone(), format!("{collection}.{id}")));
        }
        let attendance = self.root_map("attendance")?;
        for key in &scope.attendance {
            parts.push((attendance.clone(), key.clone(), format!("attendance.{key}")));
        }
        Ok(parts
            .iter()
            .find_map(|(parent, key, path)| text_object_at(doc, parent, key, path)))
    }

    // -----------------------------------------------------------------------------------------
    // Internals.

    pub(crate) fn root_map(&self, key: &str) -> Result<ObjId> {
        map_at(&self.doc, &ROOT, key)
            .ok_or_else(|| CaseFileError::NotACaseFile(format!("no `{key}` map")))
    }

    pub(crate) fn record_obj(&self, collection: Collection, id: &str) -> Result<ObjId> {
        let records = self.root_map(collection.key())?;
        map_at(&self.doc, &records, id).ok_or_else(|| CaseFileError::UnknownRecord {
            collection,
            id: id.to_string(),
        })
    }

    pub(crate) fn body_obj(
        &self,
        collection: Collection,
        id: &str,
        record: &ObjId,
    ) -> Result<ObjId> {
        map_at(&self.doc, record, "body")
            .ok_or_else(|| CaseFileError::NotACaseFile(format!("{collection}/{id} has no body")))
    }

    /// What identifies who touched a record, read cheaply (no body): the author in its meta,
    /// its finalisation as stored, and its amendment ids; as it is now, or as it was at the
    /// heads `version`. None for a record without meta.
    pub(crate) fn record_stamp(
        &self,
        record: &ObjId,
        version: Option<&[ChangeHash]>,
    ) -> Option<RecordStamp> {
        let doc = &self.doc;
        let meta = map_at_version(doc, record, "meta", version)?;
        let amendments = match (map_at_version(doc, record, "amendments", version), version) {
            (Some(obj), None) => doc.keys(&obj).collect(),
            (Some(obj), Some(heads)) => doc.keys_at(&obj, heads).collect(),
            (None, _) => BTreeSet::new(),
        };
        Some(RecordStamp {
            user_id: str_at_version(doc, &meta, "user_id", version),
            device_id: str_at_version(doc, &meta, "device_id", version),
            finalised: str_at_version(doc, record, "finalised", version),
            amendments,
        })
    }

    pub(crate) fn stored_finalisation(&self, record: &ObjId) -> Option<StoredFinalisation> {
        str_at(&self.doc, record, "finalised").and_then(|s| serde_json::from_str(&s).ok())
    }

    pub(crate) fn amendments(&self, record: &ObjId) -> Vec<Amendment> {
        let Some(obj) = map_at(&self.doc, record, "amendments") else {
            return Vec::new();
        };
        let mut out: Vec<Amendment> = read_map(&self.doc, &obj)
            .into_values()
            .filter_map(|json| json.as_str().and_then(|s| serde_json::from_str(s).ok()))
            .collect();
        out.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
        out
    }

    /// Records this handle's actor as belonging to its author, once.
    fn register_actor(&mut self) -> Result<()> {
        let actors = ensure_map(&mut self.doc, &ROOT, "actors")?;
        let actor = self.doc.get_actor().to_hex_string();
        let known = str_at(&self.doc, &actors, &actor)
            .and_then(|s| serde_json::from_str::<Author>(&s).ok())
            .is_some_and(|a| a == self.author);
        if !known {
            let json = serde_json::to_string(&self.author).map_err(json_error)?;
            self.doc.put(&actors, actor.as_str(), json)?;
        }
        Ok(())
    }

    /// Runs `ops` as one change: all of it is committed, or none of it on error.
    pub(crate) fn write(
        &mut self,
        at: DateTime<Utc>,
        message: &str,
        ops: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        let outcome = self.register_actor().and_then(|()| ops(self));
        match outcome {
            Ok(()) => {
                if self.schema_version().is_some_and(|v| v < SCHEMA_VERSION) {
                    self.doc.put(ROOT, "schema_version", SCHEMA_VERSION)?;
                }
                self.commit(at, message);
                Ok(())
            }
            Err(e) => {
                self.doc.rollback();
                Err(e)
            }
        }
    }

    fn commit(&mut self, at: DateTime<Utc>, message: &str) {
        self.doc.commit_with(
            CommitOptions::default()
                .with_time(at.timestamp())
                .with_message(message.to_string()),
        );
    }
}

/// The amendments of `field` that no other amendment supersedes: more than one is a conflict.
pub(crate) fn amendment_heads<'a>(amendments: &'a [Amendment], field: &str) -> Vec<&'a Amendment> {
    let superseded: BTreeSet<&str> = amendments
        .iter()
        .filter(|a| a.field == field)
        .flat_map(|a| a.supersedes.iter().map(String::as_str))
        .collect();
    amendments
        .iter()
        .filter(|a| a.field == field && !superseded.contains(a.id.as_str()))
        .collect()
}

/// Applies the amendment trail to finalised content. Where concurrent amendments of one field
/// both stand (an open conflict), the later one (by time, then id) is shown until resolved, so
/// every replica shows the same value.
fn apply_amendments(body: &mut Map<String, Json>, amendments: &[Amendment]) {
    let fields: BTreeSet<&str> = amendments.iter().map(|a| a.field.as_str()).collect();
    for field in fields {
        if let Some(head) = amendment_heads(amendments, field)
            .into_iter()
            .max_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)))
        {
            body.insert(field.to_string(), head.new.clone());
        }
    }
}

fn validated<T: Validate>(body: &T, what: &'static str) -> Result<()> {
    let mut errors = ValidationErrors::default();
    body.validate(&mut errors);
    errors
        .into_result()
        .map_err(|e| CaseFileError::validation(what, e))
}

/// Validates an untyped body against its collection's type.
pub fn validate_raw_body(collection: Collection, json: Json) -> Result<()> {
    use crate::records::*;
    match collection {
        Collection::Children => body_from_json::<Child>(json, "record").map(drop),
        Collection::Household => body_from_json::<HouseholdMember>(json, "record").map(drop),
        Collection::Visits => body_from_json::<HomeVisit>(json, "record").map(drop),
        Collection::Voice => body_from_json::<VoiceEntry>(json, "record").map(drop),
        Collection::Evidence => body_from_json::<EvidenceItem>(json, "record").map(drop),
        Collection::Contacts => body_from_json::<ContactEntry>(json, "record").map(drop),
        Collection::Targets => body_from_json::<Target>(json, "record").map(drop),
        Collection::Contracts => body_from_json::<ParentingContract>(json, "record").map(drop),
        Collection::StageChanges => body_from_json::<StageChange>(json, "record").map(drop),
        Collection::Considerations => body_from_json::<Consideration>(json, "record").map(drop),
    }
}

fn to_object<T: Serialize>(value: &T) -> Result<Map<String, Json>> {
    match serde_json::to_value(value).map_err(json_error)? {
        Json::Object(map) => Ok(map),
        other => Err(CaseFileError::NotACaseFile(format!(
            "a record body must be an object, not {other}"
        ))),
    }
}

fn json_error(e: serde_json::Error) -> CaseFileError {
    let mut errors = ValidationErrors::default();
    errors.push(
        ".",
        Problem::Invalid {
            detail: e.to_string(),
        },
    );
    CaseFileError::validation("value", errors)
}

pub(crate) fn mark_key(child_id: &str, date: chrono::NaiveDate, session: Session) -> String {
    let session = match session {
        Session::Am => "AM",
        Session::Pm => "PM",
    };
    format!("{child_id}|{date}|{session}")
}

fn parse_mark(date_and_session: &str, code: &Json) -> Option<Mark> {
    let (date, session) = date_and_session.split_once('|')?;
    let date = date.parse().ok()?;
    let session = match session {
        "AM" => Session::Am,
        "PM" => Session::Pm,
        _ => return None,
    };
    let code: AttendanceCode = code.as_str()?.parse().ok()?;
    Some(Mark {
        date,
        session,
        code,
    })
}
