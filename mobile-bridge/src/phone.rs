//! [`Doorstep`]: the object the field app holds, one per local store. Everything a worker does
//! offline goes through here: the caseload, a case's typed view, and every write, each made
//! through sync-core's [`CaseFile`] under this phone's author (user + device) and Automerge
//! actor, and each committed to the encrypted store before the call returns.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use doorstep_sync_core::records::{self as core, RecordBody};
use doorstep_sync_core::{ActorId, Author, CaseFile, ChangeHash, PeerState};
use rusqlite::Transaction;
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use crate::error::{DoorstepError, Result};
use crate::evidence::upload_view;
use crate::store::{self, CaseWrite, Store, StoredUpload};
use crate::sync::{RetryPolicy, SyncListener};
use crate::types::*;

/// Largest evidence file kept on the phone (a scanned document or a phone photo is far less).
pub const MAX_EVIDENCE_BYTES: u64 = 32 * 1024 * 1024;
/// Largest JSON value accepted for an amendment or a conflict resolution.
pub const MAX_VALUE_JSON_BYTES: usize = 256 * 1024;
/// Longest id accepted (case, record, conflict): ids are UUIDs or short references.
const MAX_ID_CHARS: usize = 200;

pub(crate) mod meta {
    pub const ACTOR_ID: &str = "actor_id";
    pub const SIGNED_IN: &str = "signed_in";
    pub const USER_ID: &str = "user_id";
    pub const DISPLAY_NAME: &str = "display_name";
    pub const DEVICE_ID: &str = "device_id";
    pub const SERVER_URL: &str = "server_url";
    pub const ACCESS_TOKEN: &str = "access_token";
    pub const ACCESS_EXPIRES_AT: &str = "access_expires_at";
    pub const REFRESH_TOKEN: &str = "refresh_token";
    pub const LAST_SUCCESS: &str = "last_sync_success";
    pub const LAST_ATTEMPT: &str = "last_sync_attempt";
    pub const LAST_ERROR: &str = "last_sync_error";
    /// The server's receipt-signing key (base64), pinned at the first evidence upload.
    pub const RECEIPT_PUBLIC_KEY: &str = "receipt_public_key";
}

/// The phone's core over one encrypted local store.
#[derive(uniffi::Object)]
pub struct Doorstep {
    /// None once closed.
    pub(crate) local: Mutex<Option<Local>>,
    pub(crate) syncing: AtomicBool,
    pub(crate) listener: Mutex<Option<Arc<dyn SyncListener>>>,
    pub(crate) retry: Mutex<RetryPolicy>,
}

impl std::fmt::Debug for Doorstep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorstep").finish_non_exhaustive()
    }
}

/// A case file held in memory, with the heads the server is known to hold.
#[derive(Debug)]
pub(crate) struct LoadedCase {
    pub file: CaseFile,
    pub acked: Vec<ChangeHash>,
}

/// The open store and the case files loaded from it.
#[derive(Debug)]
pub(crate) struct Local {
    pub store: Store,
    pub actor: ActorId,
    pub cases: HashMap<String, LoadedCase>,
}

#[uniffi::export]
impl Doorstep {
    /// Opens the store at `path` (created if absent) with the 32-byte key the app keeps in the
    /// platform keystore. A wrong key raises `WrongKey` and leaves the file untouched.
    #[uniffi::constructor]
    pub fn new(path: String, key: Vec<u8>) -> Result<Arc<Self>> {
        let mut store = Store::open(Path::new(&path), &key)?;
        let actor = match store.meta(meta::ACTOR_ID)? {
            Some(hex_id) => ActorId::from(
                hex::decode(&hex_id)
                    .map_err(|_| DoorstepError::storage("the stored actor id is not hex"))?,
            ),
            None => fresh_actor(&mut store)?,
        };
        Ok(Arc::new(Doorstep {
            local: Mutex::new(Some(Local {
                store,
                actor,
                cases: HashMap::new(),
            })),
            syncing: AtomicBool::new(false),
            listener: Mutex::new(None),
            retry: Mutex::new(RetryPolicy::default()),
        }))
    }

    /// Closes the store; every later call raises `StoreClosed`. Everything written is already
    /// on disk, so closing is never needed for durability.
    pub fn close_store(&self) {
        if let Ok(mut local) = self.local.lock() {
            local.take();
        }
    }

    /// Deletes every case, evidence file, token and account detail from this phone.
    pub fn wipe(&self) -> Result<()> {
        self.with_local(|local| local.wipe())
    }

    /// Who is signed in, or None.
    pub fn account(&self) -> Result<Option<Account>> {
        self.with_local(|local| local.account())
    }

    /// Signs out: the tokens are deleted and every call that reads or writes case data raises
    /// `NotSignedIn` until the same user signs in again. The data stays, encrypted, so that
    /// unsynced work is not lost.
    pub fn sign_out(&self) -> Result<()> {
        self.with_local(|local| {
            local.require_signed_in()?;
            local.store.set_meta(&[
                (meta::SIGNED_IN, None),
                (meta::ACCESS_TOKEN, None),
                (meta::ACCESS_EXPIRES_AT, None),
                (meta::REFRESH_TOKEN, None),
            ])?;
            local.cases.clear();
            Ok(())
        })
    }

    /// My caseload, from the local store (no network, no case file loaded).
    pub fn caseload(&self) -> Result<Vec<CaseSummary>> {
        self.with_local(|local| {
            local.require_signed_in()?;
            local
                .store
                .case_rows()?
                .into_iter()
                .map(|row| {
                    let summary: Option<Json> = row
                        .summary
                        .as_deref()
                        .and_then(|s| serde_json::from_str(s).ok());
                    let text = |key: &str| {
                        summary
                            .as_ref()
                            .and_then(|s| s.get(key))
                            .and_then(Json::as_str)
                            .unwrap_or_default()
                            .to_string()
                    };
                    let status = summary
                        .as_ref()
                        .and_then(|s| s.get("status"))
                        .and_then(|s| serde_json::from_value(s.clone()).ok());
                    Ok(CaseSummary {
                        reference: text("reference"),
                        school_name: text("school_name"),
                        stage: text("stage"),
                        status,
                        pending_changes: row.pending,
                        open_conflicts: row.conflicts,
                        last_error: row.error_code.map(|code| {
                            format!("{code}: {}", row.error_message.unwrap_or_default())
                        }),
                        case_id: row.case_id,
                    })
                })
                .collect()
        })
    }

    /// One case as typed records.
    pub fn open_case(&self, case_id: String) -> Result<CaseView> {
        self.with_local(|local| local.case_view(&case_id))
    }

    /// Records a home visit (joint visits: several visitors; failed contact: the attempts and
    /// the outcome). Returns the new record's id.
    pub fn record_visit(&self, case_id: String, visit: HomeVisit) -> Result<String> {
        let body: core::HomeVisit = to_core(&visit, "home visit")?;
        self.add_record(&case_id, body)
    }

    /// Replaces a draft visit's fields (a finalised one raises `Finalised`: amend it).
    pub fn update_visit(&self, case_id: String, visit_id: String, visit: HomeVisit) -> Result<()> {
        let body: core::HomeVisit = to_core(&visit, "home visit")?;
        self.update_record(&case_id, &visit_id, body)
    }

    /// Records pupil voice or parent voice (`entry.speaker`), verbatim.
    pub fn record_voice(&self, case_id: String, entry: VoiceEntry) -> Result<String> {
        let body: core::VoiceEntry = to_core(&entry, "voice entry")?;
        self.add_record(&case_id, body)
    }

    /// Attaches a file as evidence: the bridge reads it, hashes it (SHA-256), records its size,
    /// media type, who captured it, when and where, and keeps the bytes in the encrypted store,
    /// all in one transaction. Returns the evidence record's id.
    pub fn attach_evidence(&self, case_id: String, evidence: EvidenceInput) -> Result<String> {
        let path = Path::new(&evidence.file_path);
        let size = std::fs::metadata(path)
            .map_err(|e| DoorstepError::invalid("file_path", format!("cannot read the file: {e}")))?
            .len();
        if size > MAX_EVIDENCE_BYTES {
            return Err(DoorstepError::TooLarge {
                what: "the evidence file".into(),
                max_bytes: MAX_EVIDENCE_BYTES,
            });
        }
        let bytes = std::fs::read(path).map_err(|e| {
            DoorstepError::invalid("file_path", format!("cannot read the file: {e}"))
        })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let media_type = evidence.media_type.trim().to_ascii_lowercase();
        self.with_local(|local| {
            let author = local.require_signed_in()?;
            let item = EvidenceItem {
                kind: evidence.kind,
                sha256: sha256.clone(),
                size_bytes: bytes.len() as u64,
                media_type: media_type.clone(),
                captured_by: author.user_id,
                captured_at: evidence.captured_at.clone(),
                captured_where: evidence.captured_where,
                related_record: evidence.related_record.clone(),
                description: evidence.description.clone(),
            };
            let body: core::EvidenceItem = to_core(&item, "evidence item")?;
            local.write(
                &case_id,
                |file, at| {
                    if let Some(related) = &body.related_record {
                        file.raw_record(related.collection, &related.id)?;
                    }
                    Ok(file.add(&body, at)?)
                },
                |tx| store::put_evidence_file(tx, &case_id, &sha256, &media_type, &bytes),
            )
        })
    }

    /// The bytes of an evidence file kept on this phone, checked against the recorded hash.
    pub fn evidence_file(&self, case_id: String, evidence_id: String) -> Result<Vec<u8>> {
        self.with_local(|local| {
            local.require_signed_in()?;
            let item: core::EvidenceItem = local.case(&case_id)?.file.get(&evidence_id)?.body;
            let bytes = local
                .store
                .evidence_file(&case_id, &item.sha256)?
                .ok_or_else(|| {
                    DoorstepError::not_found("evidence file on this phone", &evidence_id)
                })?;
            if hex::encode(Sha256::digest(&bytes)) != item.sha256 {
                return Err(DoorstepError::storage(
                    "the evidence file does not match its recorded hash",
                ));
            }
            Ok(bytes)
        })
    }

    /// Adds a contact-log entry (call, letter, text, email, meeting).
    pub fn add_contact(&self, case_id: String, entry: ContactEntry) -> Result<String> {
        let body: core::ContactEntry = to_core(&entry, "contact entry")?;
        self.add_record(&case_id, body)
    }

    /// Sets a SMART target.
    pub fn set_target(&self, case_id: String, target: Target) -> Result<String> {
        let body: core::Target = to_core(&target, "target")?;
        self.add_record(&case_id, body)
    }

    /// Reviews a target: "did we achieve it?", with notes.
    pub fn review_target(
        &self,
        case_id: String,
        target_id: String,
        outcome: TargetOutcome,
        review_notes: String,
    ) -> Result<()> {
        check_id("target_id", &target_id)?;
        self.with_local(|local| {
            let mut target: core::Target = local.case(&case_id)?.file.get(&target_id)?.body;
            target.outcome = Some(from_core(&outcome)?);
            target.review_notes = review_notes;
            local.write(
                &case_id,
                |file, at| Ok(file.update(&target_id, &target, at)?),
                |_| Ok(()),
            )
        })
    }

    /// Makes a visit, voice entry or evidence item immutable.
    pub fn finalise(&self, case_id: String, kind: RecordKind, record_id: String) -> Result<()> {
        check_id("record_id", &record_id)?;
        self.with_local(|local| {
            local.write(
                &case_id,
                |file, at| Ok(file.finalise(kind.into(), &record_id, at)?),
                |_| Ok(()),
            )
        })
    }

    /// Amends one field of a finalised record, keeping the original, the new value (JSON
    /// text, e.g. `"\"new note\""` or `true`), the reason, the time and the author. Returns
    /// the amendment's id.
    pub fn amend(
        &self,
        case_id: String,
        kind: RecordKind,
        record_id: String,
        field_name: String,
        new_value_json: String,
        reason: String,
    ) -> Result<String> {
        check_id("record_id", &record_id)?;
        let value = parse_value_json("new_value_json", &new_value_json)?;
        self.with_local(|local| {
            local.write(
                &case_id,
                |file, at| {
                    Ok(file.amend(kind.into(), &record_id, &field_name, value, &reason, at)?)
                },
                |_| Ok(()),
            )
        })
    }

    /// The open conflicts of a case.
    pub fn conflicts(&self, case_id: String) -> Result<Vec<ConflictInfo>> {
        self.with_local(|local| {
            local.require_signed_in()?;
            local
                .case(&case_id)?
                .file
                .conflicts()?
                .iter()
                .map(conflict_info)
                .collect()
        })
    }

    /// Resolves a conflict by choosing one of its values (`value_json` of a `ConflictValue`);
    /// the choice, the alternatives, who chose and when are recorded. Returns the
    /// resolution's id.
    pub fn resolve_conflict(
        &self,
        case_id: String,
        conflict_id: String,
        chosen_value_json: String,
    ) -> Result<String> {
        check_id("conflict_id", &conflict_id)?;
        let chosen = parse_value_json("chosen_value_json", &chosen_value_json)?;
        self.with_local(|local| {
            local.write(
                &case_id,
                |file, at| Ok(file.resolve_conflict(&conflict_id, &chosen, at)?.id),
                |_| Ok(()),
            )
        })
    }

    /// Where syncing stands: last success, pending changes, per-case errors.
    pub fn sync_status(&self) -> Result<SyncStatus> {
        let syncing = self.syncing.load(std::sync::atomic::Ordering::SeqCst);
        self.with_local(|local| {
            local.require_signed_in()?;
            let rows = local.store.case_rows()?;
            Ok(SyncStatus {
                last_success: local.store.meta(meta::LAST_SUCCESS)?,
                last_attempt: local.store.meta(meta::LAST_ATTEMPT)?,
                last_error: local.store.meta(meta::LAST_ERROR)?,
                pending_changes: rows.iter().map(|r| r.pending).sum(),
                cases_with_pending_changes: rows.iter().filter(|r| r.pending > 0).count() as u64,
                case_errors: case_errors(&rows),
                syncing,
            })
        })
    }
}

impl Doorstep {
    /// Runs `f` on the open store; `StoreClosed` after `close_store()`.
    pub(crate) fn with_local<T>(&self, f: impl FnOnce(&mut Local) -> Result<T>) -> Result<T> {
        let mut guard = self.local.lock().map_err(|_| {
            DoorstepError::storage("an earlier call failed while holding the store")
        })?;
        let local = guard.as_mut().ok_or(DoorstepError::StoreClosed)?;
        f(local)
    }

    fn add_record<T: RecordBody>(&self, case_id: &str, body: T) -> Result<String> {
        self.with_local(|local| {
            local.write(case_id, |file, at| Ok(file.add(&body, at)?), |_| Ok(()))
        })
    }

    fn update_record<T: RecordBody>(&self, case_id: &str, id: &str, body: T) -> Result<()> {
        check_id("record_id", id)?;
        self.with_local(|local| {
            local.write(
                case_id,
                |file, at| Ok(file.update(id, &body, at)?),
                |_| Ok(()),
            )
        })
    }
}

impl Local {
    /// The signed-in author, or `NotSignedIn`.
    pub(crate) fn require_signed_in(&self) -> Result<Author> {
        if self.store.meta(meta::SIGNED_IN)?.as_deref() != Some("1") {
            return Err(DoorstepError::NotSignedIn);
        }
        match (
            self.store.meta(meta::USER_ID)?,
            self.store.meta(meta::DEVICE_ID)?,
        ) {
            (Some(user_id), Some(device_id)) => Ok(Author { user_id, device_id }),
            _ => Err(DoorstepError::NotSignedIn),
        }
    }

    pub(crate) fn account(&self) -> Result<Option<Account>> {
        if self.require_signed_in().is_err() {
            return Ok(None);
        }
        let get = |key| -> Result<String> { Ok(self.store.meta(key)?.unwrap_or_default()) };
        Ok(Some(Account {
            user_id: get(meta::USER_ID)?,
            display_name: get(meta::DISPLAY_NAME)?,
            device_id: get(meta::DEVICE_ID)?,
            actor_id: self.actor.to_hex_string(),
            server_url: get(meta::SERVER_URL)?,
        }))
    }

    pub(crate) fn wipe(&mut self) -> Result<()> {
        self.cases.clear();
        self.store.wipe()?;
        self.actor = fresh_actor(&mut self.store)?;
        Ok(())
    }

    /// The case file, loaded into memory on first use.
    pub(crate) fn case(&mut self, case_id: &str) -> Result<&mut LoadedCase> {
        check_id("case_id", case_id)?;
        let author = self.require_signed_in()?;
        if !self.cases.contains_key(case_id) {
            let loaded = self.load_case(case_id, author)?;
            self.cases.insert(case_id.to_string(), loaded);
        }
        self.cases
            .get_mut(case_id)
            .ok_or_else(|| DoorstepError::not_found("case", case_id))
    }

    fn load_case(&self, case_id: &str, author: Author) -> Result<LoadedCase> {
        let (bytes, state) = self
            .store
            .load_case(case_id)?
            .ok_or_else(|| DoorstepError::not_found("case", case_id))?;
        let file = if bytes.is_empty() {
            CaseFile::empty(author, self.actor.clone())
        } else {
            CaseFile::load(&bytes, author, self.actor.clone())?
        };
        let acked = match state {
            Some(state) => PeerState::decode(&state)?.shared_heads().to_vec(),
            None => Vec::new(),
        };
        Ok(LoadedCase { file, acked })
    }

    /// One local write: runs `op` on the case file (one Automerge change), then commits the new
    /// change, the case's counters and whatever `extra` writes in one SQLite transaction. If
    /// the commit fails, the in-memory copy is dropped, so the next read reloads the store as
    /// it was: a failed call leaves nothing behind.
    pub(crate) fn write<T>(
        &mut self,
        case_id: &str,
        op: impl FnOnce(&mut CaseFile, DateTime<Utc>) -> Result<T>,
        extra: impl FnOnce(&Transaction<'_>) -> Result<()>,
    ) -> Result<T> {
        let actor = self.actor.clone();
        self.case(case_id)?;
        let loaded = self
            .cases
            .get_mut(case_id)
            .ok_or_else(|| DoorstepError::not_found("case", case_id))?;
        let before = loaded.file.heads();
        let now = Utc::now();
        let value = op(&mut loaded.file, now)?;
        let outcome = persist(
            &mut self.store,
            case_id,
            loaded,
            &before,
            &actor,
            None,
            &now,
            extra,
        );
        if outcome.is_err() {
            self.cases.remove(case_id);
        }
        outcome.map(|()| value)
    }

    fn case_view(&mut self, case_id: &str) -> Result<CaseView> {
        check_id("case_id", case_id)?;
        let on_device: BTreeMap<String, StoredUpload> = self
            .store
            .upload_states(case_id)?
            .into_iter()
            .map(|upload| (upload.sha256.clone(), upload))
            .collect();
        let actor = self.actor.clone();
        let loaded = self.case(case_id)?;
        let pending = pending_changes(&mut loaded.file, &loaded.acked, &actor);
        let mut heads: Vec<String> = loaded.file.heads().iter().map(|h| h.to_string()).collect();
        heads.sort();
        let view = loaded.file.view()?;
        Ok(CaseView {
            case_id: view.case_id.clone().unwrap_or_else(|| case_id.to_string()),
            heads: heads.join(","),
            details: from_core(&view.details)?,
            children: typed_records(&view.children, |info, child| ChildRecord { info, child })?,
            household: typed_records(&view.household, |info, member| HouseholdRecord {
                info,
                member,
            })?,
            visits: typed_records(&view.visits, |info, visit| VisitRecord { info, visit })?,
            voice: typed_records(&view.voice, |info, entry| VoiceRecord { info, entry })?,
            evidence: typed_records(&view.evidence, |info, item: EvidenceItem| EvidenceRecord {
                file_on_device: on_device.contains_key(&item.sha256),
                upload: upload_view(on_device.get(&item.sha256), item.size_bytes),
                info,
                item,
            })?,
            contacts: typed_records(&view.contacts, |info, entry| ContactRecord { info, entry })?,
            targets: typed_records(&view.targets, |info, target| TargetRecord { info, target })?,
            other_json: json!({
                "contracts": view.contracts,
                "stage_changes": view.stage_changes,
                "considerations": view.considerations,
                "attendance": view.attendance,
                "resolutions": view.resolutions,
                "actors": view.actors,
            })
            .to_string(),
            conflicts: view
                .conflicts
                .iter()
                .map(conflict_info)
                .collect::<Result<_>>()?,
            pending_changes: pending,
        })
    }
}

fn typed_records<B, F, R>(
    records: &[doorstep_sync_core::Record<B>],
    make: impl Fn(RecordInfo, F) -> R,
) -> Result<Vec<R>>
where
    B: serde::Serialize,
    F: serde::de::DeserializeOwned,
{
    records
        .iter()
        .map(|r| Ok(make(record_info(r), from_core(&r.body)?)))
        .collect()
}

/// Persists a case after a local write or a sync round: the changes since `before` appended
/// (or the whole document, when new or due for compaction), the counters, the sync state when
/// given, and `extra`, in one transaction.
#[allow(clippy::too_many_arguments)]
pub(crate) fn persist(
    store: &mut Store,
    case_id: &str,
    loaded: &mut LoadedCase,
    before: &[ChangeHash],
    actor: &ActorId,
    sync_state: Option<Vec<u8>>,
    now: &DateTime<Utc>,
    extra: impl FnOnce(&Transaction<'_>) -> Result<()>,
) -> Result<()> {
    let file = &mut loaded.file;
    let is_new = !store.has_case(case_id)?;
    let changes = file.doc_mut().get_changes(before);
    let chunk: Vec<u8> = changes
        .iter()
        .flat_map(|c| c.raw_bytes().to_vec())
        .collect();
    let pending = pending_changes(file, &loaded.acked, actor);
    let conflicts = file.conflicts().map(|c| c.len() as u64).unwrap_or(0);
    let summary = file.details().ok().map(|d| {
        json!({
            "reference": d.reference,
            "school_name": d.school_name,
            "stage": d.stage,
            "status": d.status,
        })
        .to_string()
    });
    let now = now.to_rfc3339();
    let tx = store.transaction()?;
    let compact = is_new || store::chunk_count(&tx, case_id)? >= store::COMPACT_AFTER_CHUNKS;
    store::write_case(
        &tx,
        &CaseWrite {
            case_id,
            snapshot: compact.then(|| file.save()),
            chunk: Some(chunk),
            sync_state,
            pending,
            conflicts,
            summary,
            now: &now,
        },
    )?;
    extra(&tx)?;
    tx.commit()?;
    Ok(())
}

/// Changes made on this phone that the server is not known to hold.
pub(crate) fn pending_changes(file: &mut CaseFile, acked: &[ChangeHash], actor: &ActorId) -> u64 {
    // Heads the document lacks (a damaged state) count as nothing acknowledged.
    let mut known = Vec::with_capacity(acked.len());
    for hash in acked {
        if file.doc_mut().get_change_by_hash(hash).is_some() {
            known.push(*hash);
        }
    }
    file.doc_mut()
        .get_changes(&known)
        .iter()
        .filter(|c| c.actor_id() == actor)
        .count() as u64
}

pub(crate) fn case_errors(rows: &[store::CaseRow]) -> Vec<CaseSyncError> {
    rows.iter()
        .filter_map(|r| {
            r.error_code.as_ref().map(|code| CaseSyncError {
                case_id: r.case_id.clone(),
                code: code.clone(),
                detail: r.error_message.clone().unwrap_or_default(),
            })
        })
        .collect()
}

fn fresh_actor(store: &mut Store) -> Result<ActorId> {
    let actor = ActorId::from(uuid::Uuid::new_v4().as_bytes().as_slice());
    store.set_meta(&[(meta::ACTOR_ID, Some(&actor.to_hex_string()))])?;
    Ok(actor)
}

fn check_id(field: &str, id: &str) -> Result<()> {
    if id.trim().is_empty() {
        return Err(DoorstepError::InvalidInput {
            detail: format!("`{field}` must not be empty"),
            fields: vec![field.to_string()],
        });
    }
    if id.chars().count() > MAX_ID_CHARS {
        return Err(DoorstepError::TooLarge {
            what: field.to_string(),
            max_bytes: MAX_ID_CHARS as u64,
        });
    }
    Ok(())
}

fn parse_value_json(field: &str, text: &str) -> Result<Json> {
    if text.len() > MAX_VALUE_JSON_BYTES {
        return Err(DoorstepError::TooLarge {
            what: field.to_string(),
            max_bytes: MAX_VALUE_JSON_BYTES as u64,
        });
    }
    serde_json::from_str(text)
        .map_err(|e| DoorstepError::invalid(field, format!("`{field}` is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use doorstep_sync_core::testing;

    use super::*;

    const KEY: [u8; 32] = [7; 32];

    /// A store signed in as `user-a` on `device-a`, holding one case as the server made it.
    fn phone_with_case(dir: &Path) -> Arc<Doorstep> {
        let path = dir.join("store.db").display().to_string();
        let phone = Doorstep::new(path, KEY.to_vec()).unwrap();
        phone
            .with_local(|local| {
                local.store.set_meta(&[
                    (meta::SIGNED_IN, Some("1")),
                    (meta::USER_ID, Some("user-a")),
                    (meta::DEVICE_ID, Some("device-a")),
                ])?;
                let mut loaded = LoadedCase {
                    file: testing::new_case("case-1"),
                    acked: Vec::new(),
                };
                loaded.acked = loaded.file.heads();
                let actor = local.actor.clone();
                persist(
                    &mut local.store,
                    "case-1",
                    &mut loaded,
                    &[],
                    &actor,
                    None,
                    &Utc::now(),
                    |_| Ok(()),
                )
            })
            .unwrap();
        phone
    }

    fn visit(note: &str) -> HomeVisit {
        from_core(&testing::visit("user-a", testing::at(0), 0))
            .map(|mut v: HomeVisit| {
                v.discussed = note.to_string();
                v
            })
            .unwrap()
    }

    #[test]
    fn writes_are_appended_then_compacted_and_reload_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let phone = phone_with_case(dir.path());
        let count = store::COMPACT_AFTER_CHUNKS as usize + 5;
        let ids: Vec<String> = (0..count)
            .map(|i| {
                phone
                    .record_visit("case-1".into(), visit(&format!("note {i}")))
                    .unwrap()
            })
            .collect();
        assert_eq!(phone.sync_status().unwrap().pending_changes, count as u64);
        phone.close_store();

        let reopened = Doorstep::new(
            dir.path().join("store.db").display().to_string(),
            KEY.to_vec(),
        )
        .unwrap();
        let view = reopened.open_case("case-1".into()).unwrap();
        let mut seen: Vec<String> = view.visits.iter().map(|v| v.info.id.clone()).collect();
        seen.sort();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(seen, expected);
        assert_eq!(view.pending_changes, count as u64);
        assert_eq!(view.visits[0].info.author_device_id, "device-a");
    }

    #[test]
    fn a_wrong_key_is_refused_and_the_right_one_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let phone = phone_with_case(dir.path());
        phone.record_visit("case-1".into(), visit("kept")).unwrap();
        phone.close_store();
        let path = dir.path().join("store.db").display().to_string();
        assert!(matches!(
            Doorstep::new(path.clone(), vec![8; 32]),
            Err(DoorstepError::WrongKey)
        ));
        let reopened = Doorstep::new(path, KEY.to_vec()).unwrap();
        assert_eq!(reopened.open_case("case-1".into()).unwrap().visits.len(), 1);
    }

    #[test]
    fn the_file_on_disk_is_encrypted() {
        let dir = tempfile::tempdir().unwrap();
        let phone = phone_with_case(dir.path());
        phone
            .record_visit("case-1".into(), visit("a very recognisable note"))
            .unwrap();
        phone.close_store();
        let mut bytes = std::fs::read(dir.path().join("store.db")).unwrap();
        bytes.extend(std::fs::read(dir.path().join("store.db-wal")).unwrap_or_default());
        let needle = b"recognisable";
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        assert!(!bytes.starts_with(b"SQLite format 3"));
    }

    #[test]
    fn a_refused_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let phone = phone_with_case(dir.path());
        let before = phone.open_case("case-1".into()).unwrap();
        let mut bad = visit("x");
        bad.started_at = "2026-13-01T00:00:00Z".into();
        let error = phone.record_visit("case-1".into(), bad).unwrap_err();
        assert!(
            matches!(error, DoorstepError::InvalidInput { ref fields, .. } if fields == &["started_at"])
        );
        let finalise = phone.finalise("case-1".into(), RecordKind::Targets, "nope".into());
        assert!(matches!(finalise, Err(DoorstepError::NotFinalised { .. })));
        assert_eq!(phone.open_case("case-1".into()).unwrap(), before);
    }
}
