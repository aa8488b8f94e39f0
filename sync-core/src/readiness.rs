//! Evidence readiness: DOMAIN.md's checklist "Evidence that survives a panel or a court",
//! computed from the case file, so the phone and the web view tell a worker the same thing
//! about what is still missing before a case can go to panel.

use chrono::NaiveDate;
use serde::Serialize;

use crate::attendance::{self, Mark};
use crate::records::*;
use crate::view::CaseView;

/// One item of the panel's checklist.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChecklistItem {
    /// Stable key, for links and translations.
    pub key: &'static str,
    pub title: &'static str,
    pub met: bool,
    /// What was found, or what is missing.
    pub detail: String,
    /// The records that meet it (or partly meet it).
    pub records: Vec<RecordRef>,
}

/// The checklist, and the time left to prosecute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvidenceReadiness {
    pub items: Vec<ChecklistItem>,
    /// The earliest unauthorised absence still within the 6-month limit, which a prosecution
    /// started today could rely on.
    pub earliest_usable_unauthorised_absence: Option<NaiveDate>,
    /// The last day a prosecution relying on it can start.
    pub prosecution_deadline: Option<NaiveDate>,
    pub days_left_to_prosecute: Option<i64>,
    /// Unauthorised absences already beyond the limit (they can no longer be relied on).
    pub unauthorised_absences_out_of_time: usize,
}

impl EvidenceReadiness {
    pub fn all_met(&self) -> bool {
        self.items.iter().all(|item| item.met)
    }
}

fn refs<T>(collection: Collection, records: &[&crate::Record<T>]) -> Vec<RecordRef> {
    records
        .iter()
        .map(|r| RecordRef {
            collection,
            id: r.id.clone(),
        })
        .collect()
}

/// Computes the checklist for a case as it stands on `today`.
pub fn evidence_readiness(view: &CaseView, today: NaiveDate) -> EvidenceReadiness {
    let mut items = Vec::new();

    // Every attempt at contact, by type, including those where the family did not engage.
    let visits: Vec<_> = view.visits.iter().collect();
    let contacts: Vec<_> = view.contacts.iter().collect();
    let count = |kind: ContactKind| contacts.iter().filter(|c| c.body.kind == kind).count();
    let meetings_without_minutes = contacts
        .iter()
        .filter(|c| c.body.kind == ContactKind::Meeting && c.body.evidence_id.is_none())
        .count();
    let failed_visits = visits
        .iter()
        .filter(|v| v.body.outcome.is_failed_contact())
        .count();
    let mut records = refs(Collection::Visits, &visits);
    records.extend(refs(Collection::Contacts, &contacts));
    let any_contact = !visits.is_empty() || !contacts.is_empty();
    items.push(ChecklistItem {
        key: "contact_attempts",
        title: "Every attempt at contact, by type",
        met: any_contact && meetings_without_minutes == 0,
        detail: if any_contact {
            let mut detail = format!(
                "{} home visits ({failed_visits} without engagement), {} letters, {} calls, {} texts, {} e-mails, {} meetings",
                visits.len(),
                count(ContactKind::Letter),
                count(ContactKind::Call),
                count(ContactKind::Text),
                count(ContactKind::Email),
                count(ContactKind::Meeting),
            );
            if meetings_without_minutes > 0 {
                detail.push_str(&format!(
                    "; {meetings_without_minutes} meetings have no minutes attached"
                ));
            }
            detail
        } else {
            "no contact recorded".into()
        },
        records,
    });

    // Targets set and not met, and parents told that legal action could follow.
    let unmet: Vec<_> = view
        .targets
        .iter()
        .filter(|t| {
            matches!(
                t.body.outcome,
                Some(TargetOutcome::NotAchieved | TargetOutcome::PartlyAchieved)
            )
        })
        .collect();
    let warned: Vec<_> = contacts
        .iter()
        .copied()
        .filter(|c| c.body.legal_action_warned)
        .collect();
    let mut records = refs(Collection::Targets, &unmet);
    records.extend(refs(Collection::Contacts, &warned));
    items.push(ChecklistItem {
        key: "targets_and_warning",
        title: "Targets set and not met; parents told legal action could follow",
        met: !unmet.is_empty() && !warned.is_empty(),
        detail: format!(
            "{} targets set, {} reviewed as not (fully) met; {}",
            view.targets.len(),
            unmet.len(),
            if warned.is_empty() {
                "no record that parents were warned of legal action".to_string()
            } else {
                format!("warned of legal action in {} contacts", warned.len())
            }
        ),
        records,
    });

    // A parenting contract offered (or why not) and an Early Help Assessment offered.
    let contracts: Vec<_> = view.contracts.iter().collect();
    let eha = view.details.early_help_offered_on;
    items.push(ChecklistItem {
        key: "contract_and_early_help",
        title: "Parenting contract offered (or why not); Early Help Assessment offered",
        met: !contracts.is_empty() && eha.is_some(),
        detail: format!(
            "{}; {}",
            match contracts.last() {
                Some(c) => format!("parenting contract {:?}", c.body.status).to_lowercase(),
                None => "no parenting contract recorded".into(),
            },
            match eha {
                Some(date) => format!("Early Help Assessment offered on {date}"),
                None => "no Early Help Assessment offer recorded".into(),
            }
        ),
        records: refs(Collection::Contracts, &contracts),
    });

    // Child voice and parent voice; the child's feelings about a possible prosecution.
    let pupil: Vec<_> = view
        .voice
        .iter()
        .filter(|v| v.body.speaker == Speaker::Pupil)
        .collect();
    let parent: Vec<_> = view
        .voice
        .iter()
        .filter(|v| v.body.speaker == Speaker::Parent)
        .collect();
    let feelings = pupil
        .iter()
        .any(|v| v.body.feelings_about_prosecution.is_some());
    let mut missing = Vec::new();
    if pupil.is_empty() {
        missing.push("child voice");
    }
    if parent.is_empty() {
        missing.push("parent voice");
    }
    if !feelings {
        missing.push("the child's feelings about a possible prosecution");
    }
    let mut records = refs(Collection::Voice, &pupil);
    records.extend(refs(Collection::Voice, &parent));
    items.push(ChecklistItem {
        key: "voice",
        title: "Child voice and parent voice recorded",
        met: missing.is_empty(),
        detail: if missing.is_empty() {
            format!(
                "{} child voice and {} parent voice entries",
                pupil.len(),
                parent.len()
            )
        } else {
            format!("missing: {}", missing.join(", "))
        },
        records,
    });

    // SEND, health, behaviour, bullying and family issues considered.
    let needed = [
        ConsiderationTopic::Send,
        ConsiderationTopic::Health,
        ConsiderationTopic::Behaviour,
        ConsiderationTopic::Bullying,
        ConsiderationTopic::Family,
    ];
    let not_considered: Vec<String> = needed
        .iter()
        .filter(|topic| !view.considerations.iter().any(|c| c.body.topic == **topic))
        .map(|topic| format!("{topic:?}").to_lowercase())
        .collect();
    let considerations: Vec<_> = view.considerations.iter().collect();
    items.push(ChecklistItem {
        key: "issues_considered",
        title: "SEND, health, behaviour, bullying and family issues considered",
        met: not_considered.is_empty(),
        detail: if not_considered.is_empty() {
            "all considered".into()
        } else {
            format!("not yet considered: {}", not_considered.join(", "))
        },
        records: refs(Collection::Considerations, &considerations),
    });

    // Registration certificates for this and last year; siblings and their attendance.
    let certificates: Vec<_> = view
        .evidence
        .iter()
        .filter(|e| e.body.kind == EvidenceKind::RegistrationCertificate)
        .collect();
    let siblings: Vec<_> = view
        .children
        .iter()
        .filter(|c| !c.body.subject_of_case)
        .collect();
    let siblings_unchecked = siblings
        .iter()
        .filter(|c| c.body.attendance_note.is_none())
        .count();
    let mut records = refs(Collection::Evidence, &certificates);
    records.extend(refs(Collection::Children, &siblings));
    items.push(ChecklistItem {
        key: "certificates_and_siblings",
        title: "Registration certificates (this and last year); siblings' attendance",
        met: certificates.len() >= 2 && siblings_unchecked == 0,
        detail: format!(
            "{} registration certificates (two needed); {} siblings recorded, {} without their attendance",
            certificates.len(),
            siblings.len(),
            siblings_unchecked
        ),
        records,
    });

    // Risks to staff visiting the home ("none known" counts as recorded).
    let with_risks: Vec<_> = view
        .household
        .iter()
        .filter(|m| !m.body.risks_to_staff.is_empty())
        .collect();
    items.push(ChecklistItem {
        key: "risks_to_staff",
        title: "Risks to staff visiting the home",
        met: !with_risks.is_empty(),
        detail: if with_risks.is_empty() {
            "no risks to visiting staff recorded (record \"none known\" if there are none)".into()
        } else {
            format!("recorded for {} household members", with_risks.len())
        },
        records: refs(Collection::Household, &with_risks),
    });

    // The 6-month limit, for the subject children's unauthorised absences.
    let marks: Vec<Mark> = view
        .children
        .iter()
        .filter(|c| c.body.subject_of_case)
        .filter_map(|c| view.attendance.get(&c.id))
        .flatten()
        .copied()
        .collect();
    // Same rule as `attendance::earliest_unauthorised_absence`: unresolved `N`s count, erring
    // towards the earlier deadline.
    let unauthorised: Vec<NaiveDate> = attendance::effective_marks(&marks)
        .into_iter()
        .filter(|m| m.code.is_unauthorised())
        .map(|m| m.date)
        .collect();
    let usable = unauthorised
        .iter()
        .copied()
        .filter(|date| attendance::prosecution_deadline(*date) >= today)
        .min();
    EvidenceReadiness {
        items,
        earliest_usable_unauthorised_absence: usable,
        prosecution_deadline: usable.map(attendance::prosecution_deadline),
        days_left_to_prosecute: usable
            .map(|first| attendance::days_left_to_prosecute(first, today)),
        unauthorised_absences_out_of_time: unauthorised
            .iter()
            .filter(|date| attendance::prosecution_deadline(**date) < today)
            .count(),
    }
}
