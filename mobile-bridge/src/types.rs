//! The records and enums the host app sees. They mirror sync-core's record bodies field for
//! field (same names, same serde forms), so converting is a serde round trip through JSON and
//! sync-core's own validation names the failing field. Dates cross the FFI as ISO 8601 text
//! (`2026-01-05`, `2026-01-05T09:30:00Z`): the same in Kotlin, Swift and Python, and an
//! impossible date is a typed `InvalidInput` naming the field rather than a crash in a
//! platform date type.

use doorstep_sync_core::records::RecordBody;
use doorstep_sync_core::{Record, body_from_json};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{DoorstepError, Result};

macro_rules! ffi_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, uniffi::Enum)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }
    };
}

ffi_enum!(
    /// The kinds of record in a case file (sync-core's `Collection`).
    RecordKind {
        Children, Household, Visits, Voice, Evidence, Contacts, Targets, Contracts,
        StageChanges, Considerations,
    }
);
ffi_enum!(CaseStatus {
    Open,
    LegalProceedings,
    Closed
});
ffi_enum!(SenStatus {
    None,
    SenSupport,
    Ehcp
});
ffi_enum!(VisitKind {
    Planned,
    Unannounced
});
ffi_enum!(VisitOutcome {
    NoAnswer,
    CardLeft,
    SpokeAtDoor,
    RefusedEntry,
    FullVisit
});
ffi_enum!(Speaker { Pupil, Parent });
ffi_enum!(VoiceTool {
    ThreeIslands,
    ScalingThermometer,
    FivePointScale,
    IdealSchool,
    IdealClassroom,
    WellbeingCards,
    Conversation,
});
ffi_enum!(Island {
    Always,
    Sometimes,
    FarAway
});
ffi_enum!(EvidenceKind {
    Photo,
    Drawing,
    Letter,
    ParentingContract,
    MeetingMinutes,
    MedicalEvidence,
    RegistrationCertificate,
    Other,
});
ffi_enum!(ContactKind {
    Call,
    Letter,
    Text,
    Email,
    Meeting
});
ffi_enum!(MeetingKind {
    Aim,
    Sam,
    Sap,
    Taf,
    Other
});
ffi_enum!(TargetOutcome {
    Achieved,
    PartlyAchieved,
    NotAchieved
});
ffi_enum!(ConflictKind {
    ConcurrentEdits,
    ConcurrentAmendments,
    EditConcurrentWithFinalisation
});

impl From<RecordKind> for doorstep_sync_core::Collection {
    fn from(kind: RecordKind) -> Self {
        use doorstep_sync_core::Collection as C;
        match kind {
            RecordKind::Children => C::Children,
            RecordKind::Household => C::Household,
            RecordKind::Visits => C::Visits,
            RecordKind::Voice => C::Voice,
            RecordKind::Evidence => C::Evidence,
            RecordKind::Contacts => C::Contacts,
            RecordKind::Targets => C::Targets,
            RecordKind::Contracts => C::Contracts,
            RecordKind::StageChanges => C::StageChanges,
            RecordKind::Considerations => C::Considerations,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Case details and people.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, uniffi::Record)]
pub struct CaseDetails {
    pub reference: String,
    pub school_id: String,
    pub school_name: String,
    pub stage: String,
    pub lead_practitioner: String,
    pub status: CaseStatus,
    pub early_help_offered_on: Option<String>,
    pub consent_to_share: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, uniffi::Record)]
pub struct Child {
    pub name: String,
    pub date_of_birth: String,
    pub subject_of_case: bool,
    pub school: String,
    pub year_group: Option<String>,
    pub sen: SenStatus,
    pub social_worker: Option<String>,
    pub looked_after: bool,
    pub attendance_note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, uniffi::Record)]
pub struct ContactDetails {
    pub phone: Option<String>,
    pub email: Option<String>,
    pub address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, uniffi::Record)]
pub struct HouseholdMember {
    pub name: String,
    pub relationship: String,
    pub parental_responsibility: bool,
    pub day_to_day_care: bool,
    pub contact: ContactDetails,
    pub languages: Vec<String>,
    pub interpreter_needed: bool,
    pub risks_to_staff: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Home visits.

/// One knock on the door; every failed attempt is itself evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, uniffi::Record)]
pub struct ContactAttempt {
    pub at: String,
    pub outcome: VisitOutcome,
    pub note: Option<String>,
}

/// A worker on the visit; joint visits list two or more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, uniffi::Record)]
pub struct Visitor {
    pub user_id: String,
    pub name: String,
    pub role: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, uniffi::Record)]
pub struct HomeVisit {
    pub started_at: String,
    pub ended_at: Option<String>,
    pub location: String,
    pub visitors: Vec<Visitor>,
    pub kind: VisitKind,
    pub outcome: VisitOutcome,
    pub attempts: Vec<ContactAttempt>,
    pub child_seen: bool,
    /// Ids of the household members seen.
    pub adults_seen: Vec<String>,
    pub discussed: String,
    pub concerns: String,
    pub safeguarding_flag: bool,
    pub actions_agreed: String,
    pub next_visit_on: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Voice.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, uniffi::Record)]
pub struct IslandPlacement {
    pub island: Island,
    pub item: String,
}

/// The child's or parent's own words, verbatim, with the tool used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, uniffi::Record)]
pub struct VoiceEntry {
    pub speaker: Speaker,
    /// Id of the child or household member who spoke.
    pub speaker_ref: String,
    pub tool: VoiceTool,
    pub words: String,
    pub scale_value: Option<i64>,
    pub islands: Vec<IslandPlacement>,
    pub feelings_about_prosecution: Option<String>,
    pub visit_id: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Evidence.

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, uniffi::Record)]
pub struct GeoPoint {
    pub latitude: f64,
    pub longitude: f64,
    pub accuracy_m: Option<f64>,
}

/// Points at another record of the same case file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, uniffi::Record)]
pub struct RecordRef {
    pub collection: RecordKind,
    pub id: String,
}

/// An evidence item as stored: the file's hash and size are computed by the bridge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, uniffi::Record)]
pub struct EvidenceItem {
    pub kind: EvidenceKind,
    pub sha256: String,
    pub size_bytes: u64,
    pub media_type: String,
    pub captured_by: String,
    pub captured_at: String,
    pub captured_where: Option<GeoPoint>,
    pub related_record: Option<RecordRef>,
    pub description: String,
}

/// What the app passes to attach a file: the bridge reads `file_path`, hashes it and keeps
/// the bytes in the encrypted store; the app may delete its own copy afterwards.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct EvidenceInput {
    pub file_path: String,
    pub kind: EvidenceKind,
    pub media_type: String,
    pub captured_at: String,
    pub captured_where: Option<GeoPoint>,
    pub related_record: Option<RecordRef>,
    pub description: String,
}

// ---------------------------------------------------------------------------------------------
// Contact log and targets.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, uniffi::Record)]
pub struct ContactEntry {
    pub kind: ContactKind,
    pub at: String,
    pub letter_number: Option<i64>,
    pub meeting: Option<MeetingKind>,
    pub with_whom: String,
    pub outcome: String,
    pub engaged: bool,
    pub legal_action_warned: bool,
    pub evidence_id: Option<String>,
}

/// A SMART target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, uniffi::Record)]
pub struct Target {
    pub description: String,
    pub owner: String,
    pub starts_on: String,
    pub review_on: String,
    pub ends_on: String,
    pub outcome: Option<TargetOutcome>,
    pub review_notes: String,
}

// ---------------------------------------------------------------------------------------------
// Envelopes and views.

/// Who made a record, when, and its finalisation and amendment trail.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct RecordInfo {
    pub id: String,
    pub author_user_id: String,
    pub author_device_id: String,
    pub device_time: String,
    pub finalised: Option<FinalisationInfo>,
    pub amendments: Vec<AmendmentInfo>,
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct FinalisationInfo {
    pub by_user_id: String,
    pub by_device_id: String,
    pub at: String,
}

/// A correction of a finalised record; values are JSON text (their type depends on the field).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct AmendmentInfo {
    pub id: String,
    pub field_name: String,
    pub original_json: String,
    pub new_json: String,
    pub reason: String,
    pub at: String,
    pub by_user_id: String,
    pub by_device_id: String,
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ChildRecord {
    pub info: RecordInfo,
    pub child: Child,
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct HouseholdRecord {
    pub info: RecordInfo,
    pub member: HouseholdMember,
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct VisitRecord {
    pub info: RecordInfo,
    pub visit: HomeVisit,
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct VoiceRecord {
    pub info: RecordInfo,
    pub entry: VoiceEntry,
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct EvidenceRecord {
    pub info: RecordInfo,
    pub item: EvidenceItem,
    /// False when the file's bytes are not on this phone (captured on another device).
    pub file_on_device: bool,
    /// Where this phone's upload of the file stands (`NotOnDevice` when it has no file).
    pub upload: EvidenceUpload,
}

/// Where an evidence file captured on this phone stands with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum UploadState {
    /// The file is not on this phone: another device captured it.
    NotOnDevice,
    /// Not yet uploaded; the next sync uploads it (`last_error` says why an earlier try
    /// stopped: no signal, or a server limit).
    Pending,
    /// Part of it is with the server (`uploaded_bytes`); the next sync resumes from there.
    Uploading,
    /// The server holds it and its receipt was verified with the server's key.
    Uploaded,
}

/// The server's signed chain-of-custody receipt for one file, verified on this phone with
/// the server's public key before it was recorded.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct EvidenceReceipt {
    pub receipt_id: String,
    pub case_id: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub media_type: String,
    pub uploader_user_id: String,
    pub uploader_device_id: String,
    /// RFC 3339, UTC, from the server's clock.
    pub received_at: String,
    /// Unix milliseconds, as signed.
    pub received_at_ms: i64,
    /// Ed25519 signature, standard base64 (format: doorstep-evidence-receipt-v1).
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct EvidenceUpload {
    pub state: UploadState,
    /// Bytes the server has acknowledged.
    pub uploaded_bytes: u64,
    pub size_bytes: u64,
    pub receipt: Option<EvidenceReceipt>,
    /// Why the last attempt stopped short, if it did.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ContactRecord {
    pub info: RecordInfo,
    pub entry: ContactEntry,
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct TargetRecord {
    pub info: RecordInfo,
    pub target: Target,
}

/// One of the values in conflict; `value_json` is what `resolve_conflict` takes back.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ConflictValue {
    pub value_json: String,
    pub set_by_user_id: Option<String>,
    pub set_by_device_id: Option<String>,
    pub source: String,
}

/// An open conflict: shown to a person, never resolved silently.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ConflictInfo {
    pub id: String,
    pub kind: ConflictKind,
    /// `case`, `record` or `attendance`.
    pub scope: String,
    pub record_kind: Option<RecordKind>,
    pub record_id: Option<String>,
    pub field_name: String,
    pub values: Vec<ConflictValue>,
}

/// A case as it is on this phone, typed for the main record kinds.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct CaseView {
    pub case_id: String,
    /// The document's heads (sorted hex, comma-separated, as the server shows them): two
    /// replicas with equal heads hold identical case files.
    pub heads: String,
    pub details: CaseDetails,
    pub children: Vec<ChildRecord>,
    pub household: Vec<HouseholdRecord>,
    pub visits: Vec<VisitRecord>,
    pub voice: Vec<VoiceRecord>,
    pub evidence: Vec<EvidenceRecord>,
    pub contacts: Vec<ContactRecord>,
    pub targets: Vec<TargetRecord>,
    /// Parenting contracts, stage changes, considerations, attendance marks and resolutions,
    /// as sync-core's JSON (`{"contracts": [...], "stage_changes": [...], ...}`).
    pub other_json: String,
    pub conflicts: Vec<ConflictInfo>,
    /// Local changes the server has not yet acknowledged.
    pub pending_changes: u64,
}

/// One line of the caseload, read without opening the case file.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct CaseSummary {
    pub case_id: String,
    pub reference: String,
    pub school_name: String,
    pub stage: String,
    pub status: Option<CaseStatus>,
    pub pending_changes: u64,
    pub open_conflicts: u64,
    pub last_error: Option<String>,
}

/// Who is signed in on this store.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Account {
    pub user_id: String,
    pub display_name: String,
    pub device_id: String,
    /// This phone's Automerge actor id (hex), bound to the device by the server.
    pub actor_id: String,
    pub server_url: String,
}

/// A per-case sync error the server reported (e.g. `invalid_document`).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct CaseSyncError {
    pub case_id: String,
    pub code: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncStatus {
    pub last_success: Option<String>,
    pub last_attempt: Option<String>,
    pub last_error: Option<String>,
    /// Local changes not yet acknowledged by the server, over all cases.
    pub pending_changes: u64,
    pub cases_with_pending_changes: u64,
    pub case_errors: Vec<CaseSyncError>,
    pub syncing: bool,
}

/// What a sync is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum SyncPhase {
    /// Exchanging case files: reported after each round trip.
    Documents,
    /// Uploading evidence files, after the case files: reported after each chunk.
    Evidence,
}

/// Progress of a running sync.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncProgress {
    pub phase: SyncPhase,
    pub round: u32,
    pub attempt: u32,
    pub documents_sent: u64,
    pub documents_received: u64,
    pub pending_changes: u64,
    /// Evidence files not yet uploaded (including the one in progress).
    pub evidence_files_left: u64,
    /// Bytes of those files the server has acknowledged, and their total size.
    pub evidence_bytes_acknowledged: u64,
    pub evidence_bytes_total: u64,
}

/// What a finished sync did.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SyncReport {
    pub rounds: u32,
    pub attempts: u32,
    pub cases_received: u64,
    pub cases_dropped: Vec<String>,
    pub pending_changes: u64,
    pub case_errors: Vec<CaseSyncError>,
    /// Evidence files uploaded (receipt verified and recorded) in this sync.
    pub evidence_uploaded: u64,
    /// Evidence files still to upload: each one's `upload` says why.
    pub evidence_pending: u64,
}

// ---------------------------------------------------------------------------------------------
// Conversions: serde round trips, validated by sync-core.

/// Converts an FFI body into sync-core's body, validated; errors name the field.
pub(crate) fn to_core<T: RecordBody>(ffi: &impl Serialize, what: &'static str) -> Result<T> {
    let json = serde_json::to_value(ffi)?;
    Ok(body_from_json::<T>(json, what)?)
}

/// Converts a sync-core value into its FFI mirror.
pub(crate) fn from_core<F: DeserializeOwned>(core: &impl Serialize) -> Result<F> {
    let json = serde_json::to_value(core)?;
    serde_json::from_value(json)
        .map_err(|e| DoorstepError::storage(format!("unreadable record: {e}")))
}

fn json_text(value: &serde_json::Value) -> String {
    value.to_string()
}

pub(crate) fn record_info<T>(record: &Record<T>) -> RecordInfo {
    RecordInfo {
        id: record.id.clone(),
        author_user_id: record.author.user_id.clone(),
        author_device_id: record.author.device_id.clone(),
        device_time: record.device_time.to_rfc3339(),
        finalised: record.finalised.as_ref().map(|f| FinalisationInfo {
            by_user_id: f.by.user_id.clone(),
            by_device_id: f.by.device_id.clone(),
            at: f.at.to_rfc3339(),
        }),
        amendments: record
            .amendments
            .iter()
            .map(|a| AmendmentInfo {
                id: a.id.clone(),
                field_name: a.field.clone(),
                original_json: json_text(&a.original),
                new_json: json_text(&a.new),
                reason: a.reason.clone(),
                at: a.at.to_rfc3339(),
                by_user_id: a.by.user_id.clone(),
                by_device_id: a.by.device_id.clone(),
            })
            .collect(),
    }
}

pub(crate) fn conflict_info(conflict: &doorstep_sync_core::Conflict) -> Result<ConflictInfo> {
    use doorstep_sync_core::ConflictTarget;
    let (scope, record_kind, record_id) = match &conflict.target {
        ConflictTarget::Case => ("case", None, None),
        ConflictTarget::Attendance => ("attendance", None, None),
        ConflictTarget::Record { collection, id } => (
            "record",
            Some(from_core::<RecordKind>(collection)?),
            Some(id.clone()),
        ),
    };
    Ok(ConflictInfo {
        id: conflict.id.clone(),
        kind: from_core(&conflict.kind)?,
        scope: scope.to_string(),
        record_kind,
        record_id,
        field_name: conflict.field.clone(),
        values: conflict
            .values
            .iter()
            .map(|v| ConflictValue {
                value_json: json_text(&v.value),
                set_by_user_id: v.set_by.as_ref().map(|a| a.user_id.clone()),
                set_by_device_id: v.set_by.as_ref().map(|a| a.device_id.clone()),
                source: v.source.clone(),
            })
            .collect(),
    })
}
