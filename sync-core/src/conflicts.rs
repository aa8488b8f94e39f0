//! Conflicts: shown to a person, never resolved silently (DESIGN.md invariant 4).
//!
//! Three kinds arise:
//! - two people set the same field of a draft record, the case or a register mark at once:
//!   Automerge keeps both values (`get_all`);
//! - two people amended the same field of a finalised record at once: the amendment trail has
//!   two heads;
//! - someone edited a record while, unseen by them, someone else finalised it: the edit is
//!   not part of the finalised record, and is shown until a person decides.
//!
//! A resolution records the chosen value, the alternatives, who chose and when; it writes the
//! chosen value so that the conflict is gone on every replica once the resolution has merged.

use std::collections::BTreeSet;

use automerge::{ObjId, ReadDoc, transaction::Transactable};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use crate::case_file::{Amendment, Author, CaseFile, amendment_heads, validate_raw_body};
use crate::error::{CaseFileError, Result};
use crate::records::Collection;
use crate::value::{hex_string, json_of, map_at, put_json, read_map};

/// Where a conflict is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConflictTarget {
    /// The case's own details.
    Case,
    Record {
        collection: Collection,
        id: String,
    },
    /// A register mark; the field is `<child id>|<date>|<session>`.
    Attendance,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    ConcurrentEdits,
    ConcurrentAmendments,
    EditConcurrentWithFinalisation,
}

/// One of the values in conflict, and who set it (None when the actor is not registered in
/// the document, which the server refuses to let happen).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictValue {
    pub value: Json,
    pub set_by: Option<Author>,
    /// The Automerge operation (`counter@actor`) or amendment that set it.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    /// Stable across replicas: derived from where the conflict is and the operations in it,
    /// so a resolution made against a conflict that has since changed is refused as stale.
    pub id: String,
    pub kind: ConflictKind,
    pub target: ConflictTarget,
    pub field: String,
    pub values: Vec<ConflictValue>,
}

/// The record of how a conflict was resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolution {
    pub id: String,
    pub conflict_id: String,
    pub kind: ConflictKind,
    pub target: ConflictTarget,
    pub field: String,
    pub chosen: Json,
    pub alternatives: Vec<ConflictValue>,
    pub by: Author,
    pub at: DateTime<Utc>,
}

impl CaseFile {
    /// Every open conflict in the case file.
    pub fn conflicts(&self) -> Result<Vec<Conflict>> {
        let scan = self.scan()?;
        let mut out = Vec::new();
        let case = self.root_map("case")?;
        self.concurrent_edits(&scan, &case, ConflictTarget::Case, &mut out);
        for collection in Collection::ALL {
            for id in self.record_ids(collection)? {
                self.conflicts_in_record(&scan, collection, &id, &mut out)?;
            }
        }
        let attendance = self.root_map("attendance")?;
        self.concurrent_edits(&scan, &attendance, ConflictTarget::Attendance, &mut out);
        Ok(out)
    }

    /// The open conflicts of one record.
    pub fn record_conflicts(&self, collection: Collection, id: &str) -> Result<Vec<Conflict>> {
        let mut out = Vec::new();
        self.conflicts_in_record(&self.scan()?, collection, id, &mut out)?;
        Ok(out)
    }

    /// What every conflict check needs, read once per listing.
    fn scan(&self) -> Result<Scan> {
        Ok(Scan {
            actors: self.actors(),
            handled: self.handled_sources()?,
        })
    }

    fn conflicts_in_record(
        &self,
        scan: &Scan,
        collection: Collection,
        id: &str,
        out: &mut Vec<Conflict>,
    ) -> Result<()> {
        let target = ConflictTarget::Record {
            collection,
            id: id.to_string(),
        };
        let record = self.record_obj(collection, id)?;
        let body = self.body_obj(collection, id, &record)?;
        let Some(finalised) = self.stored_finalisation(&record) else {
            self.concurrent_edits(scan, &body, target, out);
            return Ok(());
        };
        let amendments = self.amendments(&record);
        let current = self.raw_record(collection, id)?.body;
        // Edits made by someone who had not yet seen the finalisation.
        let changed: Vec<String> = self
            .doc
            .map_range(&body, ..)
            .filter_map(|item| {
                let id = item.id();
                let field = item.key.to_string();
                let value = json_of(&self.doc, item.value.into(), &id);
                (item.conflict || finalised.content.get(&field) != Some(&value)).then_some(field)
            })
            .collect();
        for field in changed {
            let late: Vec<ConflictValue> = self
                .values_at(scan, &body, &field)
                .into_iter()
                .filter(|v| !scan.handled.contains(&v.source))
                .filter(|v| finalised.content.get(&field) != Some(&v.value))
                .collect();
            if late.is_empty() {
                continue;
            }
            let current_value = current.get(&field).cloned().unwrap_or(Json::Null);
            let heads = amendment_heads(&amendments, &field);
            let (set_by, source) = match heads
                .iter()
                .max_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)))
            {
                Some(head) => (head.by.clone(), format!("amendment:{}", head.id)),
                None => (finalised.by.clone(), "finalised".to_string()),
            };
            let mut values = vec![ConflictValue {
                value: current_value,
                set_by: Some(set_by),
                source,
            }];
            values.extend(late);
            out.push(conflict(
                ConflictKind::EditConcurrentWithFinalisation,
                target.clone(),
                field,
                values,
            ));
        }
        // Amendments of one field made without seeing each other.
        let fields: BTreeSet<&str> = amendments.iter().map(|a| a.field.as_str()).collect();
        for field in fields {
            let heads = amendment_heads(&amendments, field);
            if heads.len() > 1 {
                let values = heads
                    .iter()
                    .map(|a| ConflictValue {
                        value: a.new.clone(),
                        set_by: Some(a.by.clone()),
                        source: format!("amendment:{}", a.id),
                    })
                    .collect();
                out.push(conflict(
                    ConflictKind::ConcurrentAmendments,
                    target.clone(),
                    field.to_string(),
                    values,
                ));
            }
        }
        Ok(())
    }

    /// Every resolution recorded, oldest first.
    pub fn resolutions(&self) -> Result<Vec<Resolution>> {
        let resolutions = self.root_map("resolutions")?;
        let mut out: Vec<Resolution> = read_map(&self.doc, &resolutions)
            .into_values()
            .filter_map(|json| json.as_str().and_then(|s| serde_json::from_str(s).ok()))
            .collect();
        out.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
        Ok(out)
    }

    /// Resolves an open conflict by choosing one of its values. A conflict that no longer
    /// exists as the caller saw it (someone resolved it first, or a new value arrived) is
    /// refused with [`CaseFileError::UnknownConflict`].
    pub fn resolve_conflict(
        &mut self,
        conflict_id: &str,
        chosen: &Json,
        at: DateTime<Utc>,
    ) -> Result<Resolution> {
        let conflict = self
            .conflicts()?
            .into_iter()
            .find(|c| c.id == conflict_id)
            .ok_or_else(|| CaseFileError::UnknownConflict(conflict_id.to_string()))?;
        if !conflict.values.iter().any(|v| &v.value == chosen) {
            return Err(CaseFileError::NotAConflictingValue);
        }
        let resolution = Resolution {
            id: uuid::Uuid::new_v4().to_string(),
            conflict_id: conflict.id.clone(),
            kind: conflict.kind,
            target: conflict.target.clone(),
            field: conflict.field.clone(),
            chosen: chosen.clone(),
            alternatives: conflict.values.clone(),
            by: self.author.clone(),
            at,
        };
        let resolutions = self.root_map("resolutions")?;
        let resolution_json = serde_json::to_string(&resolution)
            .map_err(|e| CaseFileError::NotACaseFile(e.to_string()))?;
        let field = conflict.field.clone();
        let message = format!("resolve conflict {conflict_id}");

        match (&conflict.kind, &conflict.target) {
            (ConflictKind::ConcurrentEdits, target) => {
                let obj = match target {
                    ConflictTarget::Case => self.root_map("case")?,
                    ConflictTarget::Attendance => self.root_map("attendance")?,
                    ConflictTarget::Record { collection, id } => {
                        let record = self.record_obj(*collection, id)?;
                        let body = self.body_obj(*collection, id, &record)?;
                        let mut proposed = read_map(&self.doc, &body);
                        proposed.insert(field.clone(), chosen.clone());
                        validate_raw_body(*collection, Json::Object(proposed))?;
                        body
                    }
                };
                self.write(at, &message, |file| {
                    // One put supersedes every value this replica has seen.
                    put_json(&mut file.doc, &obj, &field, chosen)?;
                    file.doc
                        .put(&resolutions, resolution.id.as_str(), resolution_json)?;
                    Ok(())
                })?;
            }
            (kind, ConflictTarget::Record { collection, id }) => {
                let (collection, id) = (*collection, id.clone());
                let record = self.record_obj(collection, &id)?;
                let amendments_obj = map_at(&self.doc, &record, "amendments").ok_or_else(|| {
                    CaseFileError::NotACaseFile(format!("{collection}/{id} has no amendments map"))
                })?;
                let raw = self.raw_record(collection, &id)?;
                let current = raw.body.get(&field).cloned().unwrap_or(Json::Null);
                let needs_amendment =
                    *kind == ConflictKind::ConcurrentAmendments || &current != chosen;
                let amendment = needs_amendment.then(|| Amendment {
                    id: uuid::Uuid::new_v4().to_string(),
                    field: field.clone(),
                    original: current,
                    new: chosen.clone(),
                    reason: match kind {
                        ConflictKind::ConcurrentAmendments => {
                            "resolution of concurrent amendments".to_string()
                        }
                        _ => "resolution of an edit made while the record was being finalised"
                            .to_string(),
                    },
                    at,
                    by: self.author.clone(),
                    supersedes: amendment_heads(&raw.amendments, &field)
                        .into_iter()
                        .map(|a| a.id.clone())
                        .collect(),
                });
                if let Some(amendment) = &amendment {
                    let mut proposed: Map<String, Json> = raw.body.clone();
                    proposed.insert(field.clone(), amendment.new.clone());
                    validate_raw_body(collection, Json::Object(proposed))?;
                }
                let amendment_json = amendment
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()
                    .map_err(|e| CaseFileError::NotACaseFile(e.to_string()))?;
                self.write(at, &message, |file| {
                    if let (Some(amendment), Some(json)) = (&amendment, amendment_json) {
                        file.doc.put(&amendments_obj, amendment.id.as_str(), json)?;
                    }
                    file.doc
                        .put(&resolutions, resolution.id.as_str(), resolution_json)?;
                    Ok(())
                })?;
            }
            (_, target) => {
                return Err(CaseFileError::NotACaseFile(format!(
                    "a {:?} conflict cannot be on {target:?}",
                    conflict.kind
                )));
            }
        }
        Ok(resolution)
    }

    /// The operations already dealt with by a resolution (late edits stay in the document,
    /// so the resolution is what tells them apart from new ones).
    fn handled_sources(&self) -> Result<BTreeSet<String>> {
        Ok(self
            .resolutions()?
            .into_iter()
            .filter(|r| r.kind == ConflictKind::EditConcurrentWithFinalisation)
            .flat_map(|r| r.alternatives.into_iter().map(|v| v.source))
            .collect())
    }

    fn concurrent_edits(
        &self,
        scan: &Scan,
        obj: &ObjId,
        target: ConflictTarget,
        out: &mut Vec<Conflict>,
    ) {
        // Only keys whose winning value has rivals can be in conflict: skip the rest cheaply.
        let contested: Vec<String> = self
            .doc
            .map_range(obj, ..)
            .filter(|item| item.conflict)
            .map(|item| item.key.to_string())
            .collect();
        for field in contested {
            let values = self.values_at(scan, obj, &field);
            let distinct: Vec<&Json> = values.iter().fold(Vec::new(), |mut seen, v| {
                if !seen.contains(&&v.value) {
                    seen.push(&v.value);
                }
                seen
            });
            if distinct.len() > 1 {
                out.push(conflict(
                    ConflictKind::ConcurrentEdits,
                    target.clone(),
                    field,
                    values,
                ));
            }
        }
    }

    /// Every value currently set at `key`, with who set it.
    fn values_at(&self, scan: &Scan, obj: &ObjId, key: &str) -> Vec<ConflictValue> {
        self.doc
            .get_all(obj, key)
            .unwrap_or_default()
            .into_iter()
            .map(|(value, id)| {
                let source = id.to_string();
                let set_by = source
                    .split_once('@')
                    .and_then(|(_, actor)| scan.actors.get(actor).cloned());
                ConflictValue {
                    value: json_of(&self.doc, value, &id),
                    set_by,
                    source,
                }
            })
            .collect()
    }
}

struct Scan {
    actors: std::collections::BTreeMap<String, Author>,
    handled: BTreeSet<String>,
}

fn conflict(
    kind: ConflictKind,
    target: ConflictTarget,
    field: String,
    mut values: Vec<ConflictValue>,
) -> Conflict {
    values.sort_by(|a, b| a.source.cmp(&b.source));
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_string(&target).unwrap_or_default());
    hasher.update([0]);
    hasher.update(&field);
    for value in &values {
        hasher.update([0]);
        hasher.update(&value.source);
    }
    let digest = hasher.finalize();
    let id = hex_string(&digest[..12]);
    Conflict {
        id,
        kind,
        target,
        field,
        values,
    }
}
