//! The typed records a case file holds (DOMAIN.md "What a case file holds").
//!
//! Each record kind is a plain serde struct (its *body*). The envelope every record carries (id,
//! author, device time, finalisation, amendments) lives in [`crate::Record`], so the bodies hold
//! only what a practitioner records. Field names here are the field names in the Automerge
//! document: renaming one is a schema change.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{Problem, ValidationErrors};

/// Longest free text accepted in one field (a long visit note is a few thousand characters).
pub const MAX_TEXT_CHARS: usize = 20_000;
/// Longest short text (names, references, codes).
pub const MAX_SHORT_TEXT_CHARS: usize = 500;

/// The kinds of record a case file holds, one Automerge map each at the document root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Collection {
    Children,
    Household,
    Visits,
    Voice,
    Evidence,
    Contacts,
    Targets,
    Contracts,
    StageChanges,
    Considerations,
}

impl Collection {
    pub const ALL: [Collection; 10] = [
        Collection::Children,
        Collection::Household,
        Collection::Visits,
        Collection::Voice,
        Collection::Evidence,
        Collection::Contacts,
        Collection::Targets,
        Collection::Contracts,
        Collection::StageChanges,
        Collection::Considerations,
    ];

    /// The key of this collection's map at the document root.
    pub fn key(self) -> &'static str {
        match self {
            Collection::Children => "children",
            Collection::Household => "household",
            Collection::Visits => "visits",
            Collection::Voice => "voice",
            Collection::Evidence => "evidence",
            Collection::Contacts => "contacts",
            Collection::Targets => "targets",
            Collection::Contracts => "contracts",
            Collection::StageChanges => "stage_changes",
            Collection::Considerations => "considerations",
        }
    }

    pub fn from_key(key: &str) -> Option<Collection> {
        Collection::ALL.into_iter().find(|c| c.key() == key)
    }

    /// Records that become immutable once finalised (DESIGN.md invariant 3): what was seen and
    /// heard, which a panel relies on as made at the time.
    pub fn is_finalisable(self) -> bool {
        matches!(
            self,
            Collection::Visits | Collection::Voice | Collection::Evidence
        )
    }
}

impl std::fmt::Display for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

/// Validation of a record body; errors name the field.
pub trait Validate {
    fn validate(&self, errors: &mut ValidationErrors);
}

/// A record body: its collection and its rules.
pub trait RecordBody: Serialize + DeserializeOwned + Validate + Clone {
    const COLLECTION: Collection;
}

macro_rules! record_body {
    ($ty:ty, $collection:expr) => {
        impl RecordBody for $ty {
            const COLLECTION: Collection = $collection;
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Validation helpers.

pub(crate) fn required_text(errors: &mut ValidationErrors, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        errors.push(field, Problem::Empty);
    } else {
        optional_text(errors, field, Some(value), max);
    }
}

pub(crate) fn optional_text(
    errors: &mut ValidationErrors,
    field: &str,
    value: Option<&str>,
    max: usize,
) {
    if let Some(value) = value
        && value.chars().count() > max
    {
        errors.push(field, Problem::TooLong { max });
    }
}

fn in_range(errors: &mut ValidationErrors, field: &str, value: i64, min: i64, max: i64) {
    if !(min..=max).contains(&value) {
        errors.push(field, Problem::OutOfRange { min, max });
    }
}

fn not_before<T: PartialOrd>(
    errors: &mut ValidationErrors,
    field: &str,
    later: Option<T>,
    earlier: Option<T>,
    earlier_name: &str,
) {
    if let (Some(later), Some(earlier)) = (later, earlier)
        && later < earlier
    {
        errors.push(
            field,
            Problem::Invalid {
                detail: format!("must not be before `{earlier_name}`"),
            },
        );
    }
}

fn each_text(errors: &mut ValidationErrors, field: &str, values: &[String]) {
    for (i, value) in values.iter().enumerate() {
        required_text(
            errors,
            &format!("{field}[{i}]"),
            value,
            MAX_SHORT_TEXT_CHARS,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The case itself.

/// Where a case stands. Closed cases are kept for the retention period; a case under legal
/// proceedings is held until they end (DOMAIN.md "Retention").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseStatus {
    Open,
    LegalProceedings,
    Closed,
}

/// The case's own details: one per case file, at the root key `case`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseDetails {
    /// The local authority's or school's case reference.
    pub reference: String,
    pub school_id: String,
    pub school_name: String,
    /// The step on the local pathway ("level 2", "stage 3", "letter 1"): pathways differ
    /// between authorities, so this is the authority's own wording. Changes are recorded as
    /// [`StageChange`] records.
    pub stage: String,
    /// User id of the lead practitioner who keeps the case record.
    pub lead_practitioner: String,
    pub status: CaseStatus,
    /// When an Early Help Assessment was offered, if it was (a panel checks for it).
    #[serde(default)]
    pub early_help_offered_on: Option<NaiveDate>,
    /// Whether the family consented to sharing with other agencies; `None` when not yet asked.
    #[serde(default)]
    pub consent_to_share: Option<bool>,
}

impl Validate for CaseDetails {
    fn validate(&self, errors: &mut ValidationErrors) {
        required_text(errors, "reference", &self.reference, MAX_SHORT_TEXT_CHARS);
        required_text(errors, "school_id", &self.school_id, MAX_SHORT_TEXT_CHARS);
        required_text(
            errors,
            "school_name",
            &self.school_name,
            MAX_SHORT_TEXT_CHARS,
        );
        required_text(errors, "stage", &self.stage, MAX_SHORT_TEXT_CHARS);
        required_text(
            errors,
            "lead_practitioner",
            &self.lead_practitioner,
            MAX_SHORT_TEXT_CHARS,
        );
    }
}

/// A move along the local pathway; the history of these is the case's stage history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageChange {
    pub from_stage: String,
    pub to_stage: String,
    pub changed_on: NaiveDate,
    pub reason: String,
}
record_body!(StageChange, Collection::StageChanges);

impl Validate for StageChange {
    fn validate(&self, errors: &mut ValidationErrors) {
        required_text(errors, "from_stage", &self.from_stage, MAX_SHORT_TEXT_CHARS);
        required_text(errors, "to_stage", &self.to_stage, MAX_SHORT_TEXT_CHARS);
        required_text(errors, "reason", &self.reason, MAX_TEXT_CHARS);
    }
}

// ---------------------------------------------------------------------------------------------
// People.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SenStatus {
    None,
    SenSupport,
    /// Education, Health and Care Plan.
    Ehcp,
}

/// A child in the household: the pupil the case is about, or a sibling (whose attendance is
/// checked too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Child {
    pub name: String,
    pub date_of_birth: NaiveDate,
    /// True for the pupil(s) the case is about; false for siblings.
    pub subject_of_case: bool,
    pub school: String,
    #[serde(default)]
    pub year_group: Option<String>,
    pub sen: SenStatus,
    #[serde(default)]
    pub social_worker: Option<String>,
    #[serde(default)]
    pub looked_after: bool,
    /// For siblings at other schools: what is known of their attendance.
    #[serde(default)]
    pub attendance_note: Option<String>,
}
record_body!(Child, Collection::Children);

impl Validate for Child {
    fn validate(&self, errors: &mut ValidationErrors) {
        required_text(errors, "name", &self.name, MAX_SHORT_TEXT_CHARS);
        required_text(errors, "school", &self.school, MAX_SHORT_TEXT_CHARS);
        optional_text(
            errors,
            "year_group",
            self.year_group.as_deref(),
            MAX_SHORT_TEXT_CHARS,
        );
        optional_text(
            errors,
            "social_worker",
            self.social_worker.as_deref(),
            MAX_SHORT_TEXT_CHARS,
        );
        optional_text(
            errors,
            "attendance_note",
            self.attendance_note.as_deref(),
            MAX_TEXT_CHARS,
        );
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContactDetails {
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
}

/// An adult (or older sibling) in the household. "Parent" in education law includes anyone
/// with care of the child, so responsibility and day-to-day care are recorded separately.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HouseholdMember {
    pub name: String,
    pub relationship: String,
    pub parental_responsibility: bool,
    pub day_to_day_care: bool,
    #[serde(default)]
    pub contact: ContactDetails,
    #[serde(default)]
    pub languages: Vec<String>,
    #[serde(default)]
    pub interpreter_needed: bool,
    /// Risks to visiting staff (an aggressive adult, dogs): the prosecution checklist asks.
    #[serde(default)]
    pub risks_to_staff: Vec<String>,
}
record_body!(HouseholdMember, Collection::Household);

impl Validate for HouseholdMember {
    fn validate(&self, errors: &mut ValidationErrors) {
        required_text(errors, "name", &self.name, MAX_SHORT_TEXT_CHARS);
        required_text(
            errors,
            "relationship",
            &self.relationship,
            MAX_SHORT_TEXT_CHARS,
        );
        optional_text(
            errors,
            "contact.phone",
            self.contact.phone.as_deref(),
            MAX_SHORT_TEXT_CHARS,
        );
        optional_text(
            errors,
            "contact.email",
            self.contact.email.as_deref(),
            MAX_SHORT_TEXT_CHARS,
        );
        optional_text(
            errors,
            "contact.address",
            self.contact.address.as_deref(),
            MAX_SHORT_TEXT_CHARS,
        );
        each_text(errors, "languages", &self.languages);
        for (i, risk) in self.risks_to_staff.iter().enumerate() {
            required_text(
                errors,
                &format!("risks_to_staff[{i}]"),
                risk,
                MAX_TEXT_CHARS,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Home visits.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisitKind {
    Planned,
    Unannounced,
}

/// What happened at the door. Every failed attempt is itself evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisitOutcome {
    NoAnswer,
    CardLeft,
    SpokeAtDoor,
    RefusedEntry,
    FullVisit,
}

impl VisitOutcome {
    /// True where the family was not engaged with (the attempt still counts as contact).
    pub fn is_failed_contact(self) -> bool {
        matches!(
            self,
            VisitOutcome::NoAnswer | VisitOutcome::CardLeft | VisitOutcome::RefusedEntry
        )
    }
}

/// One knock on the door within a visit (EWOs call back early, late, in the evening).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactAttempt {
    pub at: DateTime<Utc>,
    pub outcome: VisitOutcome,
    #[serde(default)]
    pub note: Option<String>,
}

/// A worker on the visit; joint visits with two workers are normal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Visitor {
    pub user_id: String,
    pub name: String,
    #[serde(default)]
    pub role: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HomeVisit {
    pub started_at: DateTime<Utc>,
    #[serde(default)]
    pub ended_at: Option<DateTime<Utc>>,
    pub location: String,
    pub visitors: Vec<Visitor>,
    pub kind: VisitKind,
    /// The final outcome of the visit.
    pub outcome: VisitOutcome,
    /// Every attempt at the door, including failed ones.
    #[serde(default)]
    pub attempts: Vec<ContactAttempt>,
    pub child_seen: bool,
    /// Ids of the household members seen.
    #[serde(default)]
    pub adults_seen: Vec<String>,
    #[serde(default)]
    pub discussed: String,
    #[serde(default)]
    pub concerns: String,
    /// Raised with the designated safeguarding lead at once.
    #[serde(default)]
    pub safeguarding_flag: bool,
    #[serde(default)]
    pub actions_agreed: String,
    #[serde(default)]
    pub next_visit_on: Option<NaiveDate>,
}
record_body!(HomeVisit, Collection::Visits);

impl Validate for HomeVisit {
    fn validate(&self, errors: &mut ValidationErrors) {
        required_text(errors, "location", &self.location, MAX_SHORT_TEXT_CHARS);
        if self.visitors.is_empty() {
            errors.push("visitors", Problem::Empty);
        }
        for (i, visitor) in self.visitors.iter().enumerate() {
            required_text(
                errors,
                &format!("visitors[{i}].user_id"),
                &visitor.user_id,
                MAX_SHORT_TEXT_CHARS,
            );
            required_text(
                errors,
                &format!("visitors[{i}].name"),
                &visitor.name,
                MAX_SHORT_TEXT_CHARS,
            );
        }
        not_before(
            errors,
            "ended_at",
            self.ended_at,
            Some(self.started_at),
            "started_at",
        );
        for (i, attempt) in self.attempts.iter().enumerate() {
            optional_text(
                errors,
                &format!("attempts[{i}].note"),
                attempt.note.as_deref(),
                MAX_TEXT_CHARS,
            );
        }
        each_text(errors, "adults_seen", &self.adults_seen);
        for (field, value) in [
            ("discussed", &self.discussed),
            ("concerns", &self.concerns),
            ("actions_agreed", &self.actions_agreed),
        ] {
            optional_text(errors, field, Some(value), MAX_TEXT_CHARS);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pupil voice and parent voice.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    Pupil,
    Parent,
}

/// The tools of 001 appendix 7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoiceTool {
    /// Always / sometimes / far away islands.
    ThreeIslands,
    /// Scaling or anxiety thermometer, 0-10.
    ScalingThermometer,
    /// 5-point scale, 1-5.
    FivePointScale,
    IdealSchool,
    IdealClassroom,
    WellbeingCards,
    Conversation,
}

impl VoiceTool {
    /// The scale a tool's value must lie on, where it has one.
    pub fn scale(self) -> Option<(i64, i64)> {
        match self {
            VoiceTool::ScalingThermometer => Some((0, 10)),
            VoiceTool::FivePointScale => Some((1, 5)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Island {
    Always,
    Sometimes,
    FarAway,
}

/// A person or thing the child placed on an island.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IslandPlacement {
    pub island: Island,
    pub item: String,
}

/// The child's or parent's own words, verbatim, with the tool used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoiceEntry {
    pub speaker: Speaker,
    /// Id of the child or household member who spoke.
    pub speaker_ref: String,
    pub tool: VoiceTool,
    /// Verbatim words: never paraphrased.
    pub words: String,
    /// The value on the tool's scale (thermometer 0-10, 5-point 1-5).
    #[serde(default)]
    pub scale_value: Option<i64>,
    #[serde(default)]
    pub islands: Vec<IslandPlacement>,
    /// The child's feelings about a possible prosecution (a panel asks for them).
    #[serde(default)]
    pub feelings_about_prosecution: Option<String>,
    /// The visit or meeting where this was heard, if any.
    #[serde(default)]
    pub visit_id: Option<String>,
}
record_body!(VoiceEntry, Collection::Voice);

impl Validate for VoiceEntry {
    fn validate(&self, errors: &mut ValidationErrors) {
        required_text(
            errors,
            "speaker_ref",
            &self.speaker_ref,
            MAX_SHORT_TEXT_CHARS,
        );
        required_text(errors, "words", &self.words, MAX_TEXT_CHARS);
        match (self.tool.scale(), self.scale_value) {
            (Some((min, max)), Some(value)) => in_range(errors, "scale_value", value, min, max),
            (Some(_), None) => errors.push("scale_value", Problem::Missing),
            (None, Some(_)) => errors.push(
                "scale_value",
                Problem::Invalid {
                    detail: "this tool has no scale".into(),
                },
            ),
            (None, None) => {}
        }
        if !self.islands.is_empty() && self.tool != VoiceTool::ThreeIslands {
            errors.push(
                "islands",
                Problem::Invalid {
                    detail: "islands are only recorded with the three-islands tool".into(),
                },
            );
        }
        for (i, placement) in self.islands.iter().enumerate() {
            required_text(
                errors,
                &format!("islands[{i}].item"),
                &placement.item,
                MAX_SHORT_TEXT_CHARS,
            );
        }
        optional_text(
            errors,
            "feelings_about_prosecution",
            self.feelings_about_prosecution.as_deref(),
            MAX_TEXT_CHARS,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Evidence.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceKind {
    Photo,
    Drawing,
    Letter,
    ParentingContract,
    MeetingMinutes,
    MedicalEvidence,
    RegistrationCertificate,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default)]
    pub accuracy_m: Option<f64>,
}

/// Points at another record of the same case file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecordRef {
    pub collection: Collection,
    pub id: String,
}

/// The metadata of one file; the bytes travel separately and are checked against `sha256`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceItem {
    pub kind: EvidenceKind,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub size_bytes: u64,
    pub media_type: String,
    /// User id of whoever captured it.
    pub captured_by: String,
    pub captured_at: DateTime<Utc>,
    #[serde(default)]
    pub captured_where: Option<GeoPoint>,
    #[serde(default)]
    pub related_record: Option<RecordRef>,
    #[serde(default)]
    pub description: String,
}
record_body!(EvidenceItem, Collection::Evidence);

impl Validate for EvidenceItem {
    fn validate(&self, errors: &mut ValidationErrors) {
        let hex = self.sha256.len() == 64
            && self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            errors.push(
                "sha256",
                Problem::Invalid {
                    detail: "must be 64 lower-case hex digits".into(),
                },
            );
        }
        let media_type_ok = self
            .media_type
            .split_once('/')
            .is_some_and(|(kind, sub)| !kind.is_empty() && !sub.is_empty() && !sub.contains('/'));
        if !media_type_ok {
            errors.push(
                "media_type",
                Problem::Invalid {
                    detail: "must be a media type such as image/jpeg".into(),
                },
            );
        }
        required_text(
            errors,
            "captured_by",
            &self.captured_by,
            MAX_SHORT_TEXT_CHARS,
        );
        if let Some(point) = &self.captured_where {
            if !(-90.0..=90.0).contains(&point.latitude) {
                errors.push(
                    "captured_where.latitude",
                    Problem::OutOfRange { min: -90, max: 90 },
                );
            }
            if !(-180.0..=180.0).contains(&point.longitude) {
                errors.push(
                    "captured_where.longitude",
                    Problem::OutOfRange {
                        min: -180,
                        max: 180,
                    },
                );
            }
        }
        optional_text(
            errors,
            "description",
            Some(&self.description),
            MAX_TEXT_CHARS,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Contact log.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactKind {
    Call,
    Letter,
    Text,
    Email,
    Meeting,
}

/// The meetings of the local pathways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeetingKind {
    /// Attendance Improvement Meeting.
    Aim,
    /// School Attendance Meeting.
    Sam,
    /// School Attendance Panel.
    Sap,
    /// Team Around the Family.
    Taf,
    Other,
}

/// One entry of the contact log: every call, letter, text and meeting, engaged with or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactEntry {
    pub kind: ContactKind,
    pub at: DateTime<Utc>,
    /// Letter 1, 2 or 3 of a pathway: dates sent are needed at enforcement.
    #[serde(default)]
    pub letter_number: Option<i64>,
    #[serde(default)]
    pub meeting: Option<MeetingKind>,
    /// Who was contacted (household member ids or a description).
    pub with_whom: String,
    pub outcome: String,
    /// False where the family did not engage: still evidence.
    pub engaged: bool,
    /// Parents were told that legal action could follow.
    #[serde(default)]
    pub legal_action_warned: bool,
    /// Minutes or the letter itself, as an evidence item.
    #[serde(default)]
    pub evidence_id: Option<String>,
}
record_body!(ContactEntry, Collection::Contacts);

impl Validate for ContactEntry {
    fn validate(&self, errors: &mut ValidationErrors) {
        required_text(errors, "with_whom", &self.with_whom, MAX_SHORT_TEXT_CHARS);
        optional_text(errors, "outcome", Some(&self.outcome), MAX_TEXT_CHARS);
        match (self.kind, self.letter_number) {
            (ContactKind::Letter, Some(n)) => in_range(errors, "letter_number", n, 1, 3),
            (_, Some(_)) => errors.push(
                "letter_number",
                Problem::Invalid {
                    detail: "only letters have a number".into(),
                },
            ),
            _ => {}
        }
        if self.meeting.is_some() != (self.kind == ContactKind::Meeting) {
            errors.push(
                "meeting",
                Problem::Invalid {
                    detail: "a meeting kind is given for meetings and only for meetings".into(),
                },
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Plans: SMART targets and parenting contracts.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetOutcome {
    Achieved,
    PartlyAchieved,
    NotAchieved,
}

/// A SMART target (001 appendix 9).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub description: String,
    pub owner: String,
    pub starts_on: NaiveDate,
    pub review_on: NaiveDate,
    pub ends_on: NaiveDate,
    /// "Did we achieve it?", set at review.
    #[serde(default)]
    pub outcome: Option<TargetOutcome>,
    #[serde(default)]
    pub review_notes: String,
}
record_body!(Target, Collection::Targets);

impl Validate for Target {
    fn validate(&self, errors: &mut ValidationErrors) {
        required_text(errors, "description", &self.description, MAX_TEXT_CHARS);
        required_text(errors, "owner", &self.owner, MAX_SHORT_TEXT_CHARS);
        not_before(
            errors,
            "review_on",
            Some(self.review_on),
            Some(self.starts_on),
            "starts_on",
        );
        not_before(
            errors,
            "ends_on",
            Some(self.ends_on),
            Some(self.starts_on),
            "starts_on",
        );
        optional_text(
            errors,
            "review_notes",
            Some(&self.review_notes),
            MAX_TEXT_CHARS,
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContractStatus {
    Offered,
    Signed,
    Declined,
    /// Not offered; the reason must be recorded (a panel asks).
    NotOffered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signatory {
    Parent,
    Child,
    School,
    LocalAuthority,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    pub signatory: Signatory,
    pub name: String,
    pub signed_on: NaiveDate,
}

/// A parenting contract: requirements, support, 3-12 months, reviews, signatures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParentingContract {
    pub status: ContractStatus,
    pub offered_on: NaiveDate,
    #[serde(default)]
    pub reason_not_offered: Option<String>,
    #[serde(default)]
    pub requirements: Vec<String>,
    #[serde(default)]
    pub support_offered: Vec<String>,
    pub duration_months: i64,
    #[serde(default)]
    pub starts_on: Option<NaiveDate>,
    #[serde(default)]
    pub review_dates: Vec<NaiveDate>,
    #[serde(default)]
    pub signatures: Vec<Signature>,
}
record_body!(ParentingContract, Collection::Contracts);

impl Validate for ParentingContract {
    fn validate(&self, errors: &mut ValidationErrors) {
        in_range(errors, "duration_months", self.duration_months, 3, 12);
        if self.status == ContractStatus::NotOffered
            && self
                .reason_not_offered
                .as_deref()
                .is_none_or(|r| r.trim().is_empty())
        {
            errors.push("reason_not_offered", Problem::Missing);
        }
        each_text(errors, "requirements", &self.requirements);
        each_text(errors, "support_offered", &self.support_offered);
        for (i, signature) in self.signatures.iter().enumerate() {
            required_text(
                errors,
                &format!("signatures[{i}].name"),
                &signature.name,
                MAX_SHORT_TEXT_CHARS,
            );
        }
        if self.status == ContractStatus::Signed
            && !self
                .signatures
                .iter()
                .any(|s| s.signatory == Signatory::Parent)
        {
            errors.push(
                "signatures",
                Problem::Invalid {
                    detail: "a signed contract carries the parent's signature".into(),
                },
            );
        }
    }
}

/// SEND, health, behaviour, bullying and family issues considered, with the agencies
/// involved (a panel checks each was considered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsiderationTopic {
    Send,
    Health,
    Behaviour,
    Bullying,
    Family,
    YoungCarer,
    Housing,
    Transport,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consideration {
    pub topic: ConsiderationTopic,
    pub notes: String,
    #[serde(default)]
    pub agencies: Vec<String>,
}
record_body!(Consideration, Collection::Considerations);

impl Validate for Consideration {
    fn validate(&self, errors: &mut ValidationErrors) {
        required_text(errors, "notes", &self.notes, MAX_TEXT_CHARS);
        each_text(errors, "agencies", &self.agencies);
    }
}
