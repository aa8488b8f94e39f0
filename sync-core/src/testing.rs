//! Invented fixtures for tests, benchmarks and demo data. No name, place or contact detail
//! here belongs to a real person.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};

use crate::case_file::{Author, CaseFile};
use crate::records::*;
use crate::{ActorId, PeerState, Result};

/// A fixed instant for reproducible tests: 2026-01-05 09:00 UTC plus `minutes`.
pub fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 9, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
        + Duration::minutes(minutes)
}

pub fn author(user_id: &str, device_id: &str) -> Author {
    Author {
        user_id: user_id.to_string(),
        device_id: device_id.to_string(),
    }
}

/// A deterministic actor id, distinct for each `n`.
pub fn actor(n: u32) -> ActorId {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    bytes[15] = 0xd5;
    ActorId::from(bytes.as_slice())
}

pub fn case_details() -> CaseDetails {
    CaseDetails {
        reference: "ATT-2026-0042".into(),
        school_id: "school-riverside".into(),
        school_name: "Riverside Primary (invented)".into(),
        stage: "level 2".into(),
        lead_practitioner: "user-lead".into(),
        status: CaseStatus::Open,
        early_help_offered_on: None,
        consent_to_share: Some(true),
    }
}

/// A new case created by the server's own author and actor.
pub fn new_case(case_id: &str) -> CaseFile {
    match CaseFile::create(
        case_id,
        &case_details(),
        author("server", "server"),
        actor(0),
        at(0),
    ) {
        Ok(file) => file,
        Err(e) => unreachable!("the fixture case is valid: {e}"),
    }
}

/// A copy of `source` opened by another author (a phone that has synced it).
pub fn replica(source: &mut CaseFile, author: Author, actor: ActorId) -> Result<CaseFile> {
    CaseFile::load(&source.save(), author, actor)
}

/// Runs the sync protocol between `a` and `b` (each with its sync state of the other), `a`
/// first, until neither has anything to send. An error if either refuses a message; a panic
/// if they still talk after 20 rounds (a test's failure, not a fixture's).
pub fn sync_until_quiet(
    a: &mut CaseFile,
    a_state: &mut PeerState,
    b: &mut CaseFile,
    b_state: &mut PeerState,
) -> Result<()> {
    for _round in 0..20 {
        let to_b = a.generate_sync_message(a_state);
        if let Some(message) = &to_b {
            b.receive_sync_message(b_state, message)?;
        }
        let to_a = b.generate_sync_message(b_state);
        if let Some(message) = &to_a {
            a.receive_sync_message(a_state, message)?;
        }
        if to_a.is_none() && to_b.is_none() {
            return Ok(());
        }
    }
    panic!("sync did not finish in 20 rounds");
}

pub fn child(name: &str) -> Child {
    Child {
        name: name.into(),
        date_of_birth: NaiveDate::from_ymd_opt(2015, 3, 14).unwrap_or_default(),
        subject_of_case: true,
        school: "Riverside Primary (invented)".into(),
        year_group: Some("Year 5".into()),
        sen: SenStatus::SenSupport,
        social_worker: None,
        looked_after: false,
        attendance_note: None,
    }
}

pub fn household_member(name: &str) -> HouseholdMember {
    HouseholdMember {
        name: name.into(),
        relationship: "mother".into(),
        parental_responsibility: true,
        day_to_day_care: true,
        contact: ContactDetails {
            phone: Some("07700 900000".into()),
            email: None,
            address: Some("1 Example Row, Testtown".into()),
        },
        languages: vec!["English".into(), "Polish".into()],
        interpreter_needed: false,
        risks_to_staff: vec!["large dog, ask for it to be shut away".into()],
    }
}

/// Invented prose of `chars` characters, varied by `seed`, so that saved sizes reflect real
/// notes rather than a run of one letter that compresses to nothing.
pub fn note(chars: usize, seed: u64) -> String {
    const WORDS: [&str; 24] = [
        "mum",
        "said",
        "the",
        "school",
        "morning",
        "bus",
        "late",
        "anxious",
        "tired",
        "agreed",
        "alarm",
        "uniform",
        "breakfast",
        "walked",
        "gate",
        "teacher",
        "friends",
        "worried",
        "doctor",
        "appointment",
        "letter",
        "routine",
        "sleep",
        "better",
    ];
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = String::with_capacity(chars + 12);
    while out.len() < chars {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push_str(WORDS[(state >> 33) as usize % WORDS.len()]);
        out.push(' ');
    }
    out.truncate(chars);
    out
}

/// A home visit whose note is `note_chars` characters long (notes are plain strings).
pub fn visit(visitor: &str, started: DateTime<Utc>, note_chars: usize) -> HomeVisit {
    HomeVisit {
        started_at: started,
        ended_at: Some(started + Duration::minutes(40)),
        location: "family home".into(),
        visitors: vec![Visitor {
            user_id: visitor.into(),
            name: format!("Worker {visitor}"),
            role: Some("EWO".into()),
        }],
        kind: VisitKind::Unannounced,
        outcome: VisitOutcome::FullVisit,
        attempts: vec![ContactAttempt {
            at: started,
            outcome: VisitOutcome::FullVisit,
            note: None,
        }],
        child_seen: true,
        adults_seen: vec![],
        discussed: note(note_chars, started.timestamp() as u64),
        concerns: String::new(),
        safeguarding_flag: false,
        actions_agreed: "Walk to school together on Mondays".into(),
        next_visit_on: None,
    }
}

pub fn pupil_voice(speaker_ref: &str, words: &str) -> VoiceEntry {
    VoiceEntry {
        speaker: Speaker::Pupil,
        speaker_ref: speaker_ref.into(),
        tool: VoiceTool::ScalingThermometer,
        words: words.into(),
        scale_value: Some(7),
        islands: vec![],
        feelings_about_prosecution: None,
        visit_id: None,
    }
}

pub fn evidence(captured_by: &str, captured_at: DateTime<Utc>) -> EvidenceItem {
    EvidenceItem {
        kind: EvidenceKind::Drawing,
        sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        size_bytes: 183_412,
        media_type: "image/jpeg".into(),
        captured_by: captured_by.into(),
        captured_at,
        captured_where: Some(GeoPoint {
            latitude: 53.38,
            longitude: -1.47,
            accuracy_m: Some(12.0),
        }),
        related_record: None,
        description: "ideal school drawing".into(),
    }
}

pub fn letter(number: i64, at: DateTime<Utc>) -> ContactEntry {
    ContactEntry {
        kind: ContactKind::Letter,
        at,
        letter_number: Some(number),
        meeting: None,
        with_whom: "parents".into(),
        outcome: "posted first class".into(),
        engaged: false,
        legal_action_warned: number == 3,
        evidence_id: None,
    }
}
