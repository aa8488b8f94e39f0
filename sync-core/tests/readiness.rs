//! Evidence readiness: the panel's checklist computed from the case file.
#![allow(clippy::unwrap_used, reason = "a test fails loudly on purpose")]

use chrono::NaiveDate;
use doorstep_sync_core::attendance::{AttendanceCode, Mark, Session};
use doorstep_sync_core::readiness::evidence_readiness;
use doorstep_sync_core::records::*;
use doorstep_sync_core::testing::{self, at};
use doorstep_sync_core::{CaseFile, Collection};

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

/// A case holding everything a panel asks for.
fn complete_case() -> (CaseFile, String) {
    let mut file = testing::new_case("case-ready");
    let child = file.add(&testing::child("Cal Example"), at(1)).unwrap();
    let mut sibling = testing::child("Dee Example");
    sibling.subject_of_case = false;
    sibling.attendance_note = Some("97% at Hillside (invented)".into());
    file.add(&sibling, at(1)).unwrap();
    file.add(&testing::household_member("Eve Example"), at(1))
        .unwrap();
    file.add(&testing::visit("u1", at(2), 100), at(2)).unwrap();
    let mut warning = testing::letter(3, at(3));
    warning.legal_action_warned = true;
    file.add(&warning, at(3)).unwrap();
    file.add(
        &Target {
            description: "Attend every session".into(),
            owner: "parent".into(),
            starts_on: date("2026-01-05"),
            review_on: date("2026-01-26"),
            ends_on: date("2026-02-06"),
            outcome: Some(TargetOutcome::NotAchieved),
            review_notes: "attended 70%".into(),
        },
        at(4),
    )
    .unwrap();
    file.add(
        &ParentingContract {
            status: ContractStatus::Declined,
            offered_on: date("2026-01-10"),
            reason_not_offered: None,
            requirements: vec![],
            support_offered: vec!["Breakfast club".into()],
            duration_months: 3,
            starts_on: None,
            review_dates: vec![],
            signatures: vec![],
        },
        at(5),
    )
    .unwrap();
    let mut details = file.details().unwrap();
    details.early_help_offered_on = Some(date("2026-01-08"));
    file.update_details(&details, at(5)).unwrap();
    let mut child_voice = testing::pupil_voice(&child, "I don't want mum to get in trouble");
    child_voice.feelings_about_prosecution = Some("worried for mum".into());
    file.add(&child_voice, at(6)).unwrap();
    let mut parent_voice = testing::pupil_voice("adult-1", "The bus never comes on time");
    parent_voice.speaker = Speaker::Parent;
    file.add(&parent_voice, at(6)).unwrap();
    for topic in [
        ConsiderationTopic::Send,
        ConsiderationTopic::Health,
        ConsiderationTopic::Behaviour,
        ConsiderationTopic::Bullying,
        ConsiderationTopic::Family,
    ] {
        let notes = "discussed with the family and the school".into();
        file.add(
            &Consideration {
                topic,
                notes,
                agencies: vec![],
            },
            at(7),
        )
        .unwrap();
    }
    for _ in 0..2 {
        let mut certificate = testing::evidence("u1", at(8));
        certificate.kind = EvidenceKind::RegistrationCertificate;
        file.add(&certificate, at(8)).unwrap();
    }
    let marks = [
        Mark::new(
            date("2026-01-12"),
            Session::Am,
            "G".parse::<AttendanceCode>().unwrap(),
        ),
        Mark::new(
            date("2026-01-12"),
            Session::Pm,
            "O".parse::<AttendanceCode>().unwrap(),
        ),
        Mark::new(
            date("2026-03-02"),
            Session::Am,
            "O".parse::<AttendanceCode>().unwrap(),
        ),
    ];
    file.record_marks(&child, &marks, at(9)).unwrap();
    (file, child)
}

#[test]
fn a_complete_case_meets_every_item_and_counts_the_days_left() {
    let (file, _) = complete_case();
    let readiness = evidence_readiness(&file.view().unwrap(), date("2026-03-01"));
    for item in &readiness.items {
        assert!(item.met, "{}: {}", item.key, item.detail);
        assert!(!item.records.is_empty(), "{} links its records", item.key);
    }
    assert!(readiness.all_met());
    assert_eq!(
        readiness.earliest_usable_unauthorised_absence,
        Some(date("2026-01-12"))
    );
    assert_eq!(readiness.prosecution_deadline, Some(date("2026-07-12")));
    assert_eq!(readiness.days_left_to_prosecute, Some(133));
    assert_eq!(readiness.unauthorised_absences_out_of_time, 0);

    // Months later the January absences are out of time; March's is the one left.
    let later = evidence_readiness(&file.view().unwrap(), date("2026-08-01"));
    assert_eq!(
        later.earliest_usable_unauthorised_absence,
        Some(date("2026-03-02"))
    );
    assert_eq!(later.days_left_to_prosecute, Some(32));
    assert_eq!(later.unauthorised_absences_out_of_time, 2);
}

#[test]
fn missing_evidence_is_named() {
    let mut file = testing::new_case("case-thin");
    let child = file.add(&testing::child("Fay Example"), at(1)).unwrap();
    let mut failed = testing::visit("u1", at(2), 10);
    failed.outcome = VisitOutcome::NoAnswer;
    let visit = file.add(&failed, at(2)).unwrap();
    file.finalise(Collection::Visits, &visit, at(3)).unwrap();
    file.add(&testing::pupil_voice(&child, "school is too loud"), at(4))
        .unwrap();
    let readiness = evidence_readiness(&file.view().unwrap(), date("2026-03-01"));
    let item = |key: &str| readiness.items.iter().find(|i| i.key == key).unwrap();
    assert!(
        item("contact_attempts").met,
        "a failed visit is still contact"
    );
    assert!(
        item("contact_attempts")
            .detail
            .contains("1 without engagement")
    );
    assert!(!item("voice").met);
    assert!(item("voice").detail.contains("parent voice"));
    assert!(
        item("voice")
            .detail
            .contains("feelings about a possible prosecution")
    );
    assert!(!item("contract_and_early_help").met);
    assert!(!item("issues_considered").met);
    assert!(!item("certificates_and_siblings").met);
    assert!(!item("risks_to_staff").met);
    assert!(!item("targets_and_warning").met);
    assert!(!readiness.all_met());
    assert_eq!(
        readiness.days_left_to_prosecute, None,
        "no unauthorised absence recorded"
    );
}
