//! The case-file model: records, finalisation and amendments, conflicts, schema versions, sync
//! and bad input.
#![allow(clippy::unwrap_used, reason = "a test fails loudly on purpose")]

use doorstep_sync_core::records::*;
use doorstep_sync_core::testing::{self, at};
use doorstep_sync_core::{
    CaseFile, CaseFileError, Collection, ConflictKind, PeerState, Problem, RefusedSync,
    body_from_json,
};
use serde_json::json;

fn phone(server: &mut CaseFile, n: u32) -> CaseFile {
    testing::replica(
        server,
        testing::author(&format!("user-{n}"), &format!("phone-{n}")),
        testing::actor(n),
    )
    .unwrap()
}

/// Runs the sync protocol between two documents, with new sync states, until neither has
/// anything to send.
fn sync_pair(a: &mut CaseFile, b: &mut CaseFile) {
    let (mut a_state, mut b_state) = (PeerState::new(), PeerState::new());
    testing::sync_until_quiet(a, &mut a_state, b, &mut b_state).unwrap();
}

#[test]
fn every_kind_of_record_round_trips_with_its_envelope() {
    let mut server = testing::new_case("case-1");
    let mut worker = phone(&mut server, 1);
    let child_id = worker.add(&testing::child("Amy Example"), at(1)).unwrap();
    let adult_id = worker
        .add(&testing::household_member("Beth Example"), at(2))
        .unwrap();
    let mut joint = testing::visit("user-1", at(10), 300);
    joint.visitors.push(Visitor {
        user_id: "user-2".into(),
        name: "Second Worker".into(),
        role: Some("family support worker".into()),
    });
    joint.adults_seen = vec![adult_id.clone()];
    joint.attempts.insert(
        0,
        ContactAttempt {
            at: at(5),
            outcome: VisitOutcome::NoAnswer,
            note: Some("card left, called back later".into()),
        },
    );
    let visit_id = worker.add(&joint, at(11)).unwrap();
    let voice_id = worker
        .add(
            &testing::pupil_voice(&child_id, "I get a tummy ache on Mondays"),
            at(12),
        )
        .unwrap();
    let evidence_id = worker
        .add(&testing::evidence("user-1", at(13)), at(13))
        .unwrap();
    worker.add(&testing::letter(1, at(20)), at(20)).unwrap();
    let target = Target {
        description: "Attend every morning session for 3 weeks".into(),
        owner: "parent".into(),
        starts_on: "2026-01-05".parse().unwrap(),
        review_on: "2026-01-26".parse().unwrap(),
        ends_on: "2026-02-13".parse().unwrap(),
        outcome: None,
        review_notes: String::new(),
    };
    worker.add(&target, at(21)).unwrap();
    let contract = ParentingContract {
        status: ContractStatus::Signed,
        offered_on: "2026-01-06".parse().unwrap(),
        reason_not_offered: None,
        requirements: vec!["Child in school by 08:50".into()],
        support_offered: vec!["Breakfast club place".into()],
        duration_months: 6,
        starts_on: Some("2026-01-12".parse().unwrap()),
        review_dates: vec!["2026-03-02".parse().unwrap()],
        signatures: vec![Signature {
            signatory: Signatory::Parent,
            name: "Beth Example".into(),
            signed_on: "2026-01-12".parse().unwrap(),
        }],
    };
    worker.add(&contract, at(22)).unwrap();
    worker
        .add(
            &StageChange {
                from_stage: "level 1".into(),
                to_stage: "level 2".into(),
                changed_on: "2026-01-05".parse().unwrap(),
                reason: "attendance below 90% after letter 1".into(),
            },
            at(23),
        )
        .unwrap();
    worker
        .add(
            &Consideration {
                topic: ConsiderationTopic::Send,
                notes: "SENCO consulted".into(),
                agencies: vec!["CAMHS".into()],
            },
            at(24),
        )
        .unwrap();

    sync_pair(&mut worker, &mut server);
    let view = server.view().unwrap();
    assert_eq!(view.visits.len(), 1);
    let visit = &view.visits[0];
    assert_eq!(visit.id, visit_id);
    assert_eq!(visit.body, joint);
    assert_eq!(visit.author, testing::author("user-1", "phone-1"));
    assert_eq!(visit.device_time, at(11));
    assert_eq!(
        visit.body.visitors.len(),
        2,
        "a joint visit keeps both workers"
    );
    assert_eq!(view.voice[0].id, voice_id);
    assert_eq!(view.evidence[0].id, evidence_id);
    assert_eq!(view.contacts[0].body.letter_number, Some(1));
    assert_eq!(view.targets[0].body, target);
    assert_eq!(view.contracts[0].body, contract);
    assert_eq!(view.children[0].id, child_id);
    assert_eq!(view.household[0].body.risks_to_staff.len(), 1);
    assert_eq!(view.stage_changes.len(), 1);
    assert_eq!(view.considerations.len(), 1);
    assert!(view.conflicts.is_empty());
    assert_eq!(
        view.actors.get(&testing::actor(1).to_hex_string()),
        Some(&testing::author("user-1", "phone-1")),
        "the document says who each actor is"
    );
}

#[test]
fn finalised_records_change_only_through_amendments_with_a_trail() {
    let mut file = testing::new_case("case-1");
    file.set_author(testing::author("user-1", "phone-1"), testing::actor(1));
    let mut visit = testing::visit("user-1", at(1), 50);
    let id = file.add(&visit, at(2)).unwrap();
    visit.concerns = "child looked tired".into();
    file.update(&id, &visit, at(3)).unwrap();
    file.finalise(Collection::Visits, &id, at(4)).unwrap();

    visit.concerns = "changed afterwards".into();
    let refused = file.update(&id, &visit, at(5));
    assert!(matches!(refused, Err(CaseFileError::Finalised { .. })));
    assert!(matches!(
        file.finalise(Collection::Visits, &id, at(5)),
        Err(CaseFileError::Finalised { .. })
    ));

    let amendment = file
        .amend(
            Collection::Visits,
            &id,
            "concerns",
            json!("child looked tired and hungry"),
            "second worker's recollection added",
            at(6),
        )
        .unwrap();
    let read = file.get::<HomeVisit>(&id).unwrap();
    assert_eq!(read.body.concerns, "child looked tired and hungry");
    let finalised = read.finalised.unwrap();
    assert_eq!(finalised.at, at(4));
    assert_eq!(finalised.by, testing::author("user-1", "phone-1"));
    assert_eq!(read.amendments.len(), 1);
    let trail = &read.amendments[0];
    assert_eq!(trail.id, amendment);
    assert_eq!(trail.original, json!("child looked tired"));
    assert_eq!(trail.new, json!("child looked tired and hungry"));
    assert_eq!(trail.reason, "second worker's recollection added");
    assert_eq!(trail.at, at(6));
    assert_eq!(trail.by, testing::author("user-1", "phone-1"));

    // A second amendment supersedes the first; the trail keeps both.
    file.amend(
        Collection::Visits,
        &id,
        "concerns",
        json!("v3"),
        "typo",
        at(7),
    )
    .unwrap();
    let read = file.get::<HomeVisit>(&id).unwrap();
    assert_eq!(read.body.concerns, "v3");
    assert_eq!(read.amendments.len(), 2);
    assert_eq!(
        read.amendments[1].original,
        json!("child looked tired and hungry")
    );
    assert!(file.conflicts().unwrap().is_empty());
}

#[test]
fn amendments_are_refused_without_a_reason_or_with_bad_values_and_change_nothing() {
    let mut file = testing::new_case("case-1");
    let id = file
        .add(&testing::pupil_voice("child-1", "words"), at(1))
        .unwrap();
    assert!(matches!(
        file.amend(Collection::Voice, &id, "words", json!("x"), "why", at(2)),
        Err(CaseFileError::NotFinalised { .. })
    ));
    file.finalise(Collection::Voice, &id, at(2)).unwrap();
    let heads = file.heads();
    assert!(matches!(
        file.amend(Collection::Voice, &id, "words", json!("x"), "  ", at(3)),
        Err(CaseFileError::MissingReason)
    ));
    assert!(matches!(
        file.amend(
            Collection::Voice,
            &id,
            "no_such_field",
            json!(1),
            "r",
            at(3)
        ),
        Err(CaseFileError::UnknownField { .. })
    ));
    match file.amend(Collection::Voice, &id, "scale_value", json!(11), "r", at(3)) {
        Err(CaseFileError::Validation { errors, .. }) => {
            assert_eq!(errors.0[0].field, "scale_value");
            assert_eq!(errors.0[0].problem, Problem::OutOfRange { min: 0, max: 10 });
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
    assert!(matches!(
        file.amend(
            Collection::Voice,
            "missing",
            "words",
            json!("x"),
            "r",
            at(3)
        ),
        Err(CaseFileError::UnknownRecord { .. })
    ));
    assert_eq!(file.heads(), heads, "refused amendments change nothing");
    assert!(matches!(
        file.finalise(Collection::Contacts, &id, at(3)),
        Err(CaseFileError::NotFinalisable { .. })
    ));
}

#[test]
fn validation_errors_name_the_field() {
    let missing = json!({"speaker": "pupil", "tool": "conversation", "words": "hello"});
    match body_from_json::<VoiceEntry>(missing, "voice entry") {
        Err(CaseFileError::Validation { errors, .. }) => {
            assert_eq!(errors.0[0].field, "speaker_ref");
            assert_eq!(errors.0[0].problem, Problem::Missing);
        }
        other => panic!("expected missing field, got {other:?}"),
    }
    let bad_date = json!({
        "name": "A", "date_of_birth": "2015-02-30", "subject_of_case": true,
        "school": "S", "sen": "none"
    });
    match body_from_json::<Child>(bad_date, "child") {
        Err(CaseFileError::Validation { errors, .. }) => {
            assert_eq!(errors.0[0].field, "date_of_birth");
            assert!(matches!(errors.0[0].problem, Problem::Invalid { .. }));
        }
        other => panic!("expected invalid date, got {other:?}"),
    }
    let mut visit = testing::visit("u", at(10), 10);
    visit.ended_at = Some(at(5));
    visit.location = " ".into();
    let mut file = testing::new_case("case-1");
    let heads = file.heads();
    match file.add(&visit, at(1)) {
        Err(CaseFileError::Validation { errors, .. }) => {
            let fields: Vec<&str> = errors.fields().collect();
            assert_eq!(fields, ["location", "ended_at"]);
        }
        other => panic!("expected validation errors, got {other:?}"),
    }
    let mut evidence = testing::evidence("u", at(1));
    evidence.sha256 = "not-a-hash".into();
    evidence.media_type = "jpeg".into();
    match file.add(&evidence, at(1)) {
        Err(CaseFileError::Validation { errors, .. }) => {
            assert_eq!(
                errors.fields().collect::<Vec<_>>(),
                ["sha256", "media_type"]
            );
        }
        other => panic!("expected validation errors, got {other:?}"),
    }
    assert_eq!(file.heads(), heads, "nothing written on refusal");
    assert!(matches!(
        file.get::<HomeVisit>("nope"),
        Err(CaseFileError::UnknownRecord { .. })
    ));
}

#[test]
fn concurrent_edits_are_listed_with_who_set_each_and_resolved_everywhere() {
    let mut server = testing::new_case("case-1");
    let id = server
        .add(&testing::visit("user-1", at(1), 10), at(1))
        .unwrap();
    let mut a = phone(&mut server, 1);
    let mut b = phone(&mut server, 2);
    let mut c = phone(&mut server, 3);
    let mut visit_a = a.get::<HomeVisit>(&id).unwrap().body;
    visit_a.concerns = "no food in the house".into();
    a.update(&id, &visit_a, at(2)).unwrap();
    let mut visit_b = b.get::<HomeVisit>(&id).unwrap().body;
    visit_b.concerns = "house was warm and tidy".into();
    visit_b.discussed = "morning routine".into();
    b.update(&id, &visit_b, at(3)).unwrap();

    sync_pair(&mut a, &mut server);
    sync_pair(&mut b, &mut server);
    sync_pair(&mut c, &mut server);
    sync_pair(&mut a, &mut server);
    for file in [&a, &b, &c, &server] {
        let conflicts = file.conflicts().unwrap();
        assert_eq!(conflicts.len(), 1, "only the field both set is in conflict");
        let conflict = &conflicts[0];
        assert_eq!(conflict.field, "concerns");
        assert_eq!(conflict.kind, ConflictKind::ConcurrentEdits);
        let mut setters: Vec<_> = conflict
            .values
            .iter()
            .map(|v| (v.set_by.clone().unwrap().user_id, v.value.clone()))
            .collect();
        setters.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            setters,
            [
                ("user-1".to_string(), json!("no food in the house")),
                ("user-2".to_string(), json!("house was warm and tidy"))
            ]
        );
    }
    // A draft in conflict cannot be finalised until a person decides.
    assert!(matches!(
        c.finalise(Collection::Visits, &id, at(4)),
        Err(CaseFileError::FieldInConflict { .. })
    ));
    let conflict = c.conflicts().unwrap().remove(0);
    assert!(matches!(
        c.resolve_conflict(&conflict.id, &json!("something else"), at(5)),
        Err(CaseFileError::NotAConflictingValue)
    ));
    let resolution = c
        .resolve_conflict(&conflict.id, &json!("no food in the house"), at(5))
        .unwrap();
    assert_eq!(resolution.by, testing::author("user-3", "phone-3"));
    assert_eq!(resolution.alternatives.len(), 2);
    // Someone else resolving the same conflict after it was resolved is told it is stale.
    let mut late = phone(&mut c, 4);
    assert!(matches!(
        late.resolve_conflict(&conflict.id, &json!("house was warm and tidy"), at(6)),
        Err(CaseFileError::UnknownConflict(_))
    ));

    sync_pair(&mut c, &mut server);
    sync_pair(&mut a, &mut server);
    sync_pair(&mut b, &mut server);
    for file in [&a, &b, &c, &server] {
        assert!(file.conflicts().unwrap().is_empty());
        let visit = file.get::<HomeVisit>(&id).unwrap().body;
        assert_eq!(visit.concerns, "no food in the house");
        assert_eq!(visit.discussed, "morning routine");
        assert_eq!(file.resolutions().unwrap().len(), 1);
    }
}

#[test]
fn concurrent_amendments_and_edits_racing_a_finalisation_are_conflicts() {
    let mut server = testing::new_case("case-1");
    let id = server
        .add(&testing::visit("user-1", at(1), 10), at(1))
        .unwrap();
    let mut a = phone(&mut server, 1);
    let mut b = phone(&mut server, 2);
    // a finalises while b, offline, still edits the draft.
    a.finalise(Collection::Visits, &id, at(2)).unwrap();
    let mut visit = b.get::<HomeVisit>(&id).unwrap().body;
    visit.actions_agreed = "late edit".into();
    b.update(&id, &visit, at(3)).unwrap();
    sync_pair(&mut a, &mut server);
    sync_pair(&mut b, &mut server);
    sync_pair(&mut a, &mut server);
    for file in [&a, &b, &server] {
        let read = file.get::<HomeVisit>(&id).unwrap();
        assert_eq!(
            read.body.actions_agreed, "Walk to school together on Mondays",
            "the finalised value stands until a person decides"
        );
        let conflicts = file.conflicts().unwrap();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(
            conflicts[0].kind,
            ConflictKind::EditConcurrentWithFinalisation
        );
        assert_eq!(conflicts[0].field, "actions_agreed");
        assert_eq!(conflicts[0].values.len(), 2);
    }
    // Choosing the late edit turns it into an amendment.
    let conflict = b.conflicts().unwrap().remove(0);
    b.resolve_conflict(&conflict.id, &json!("late edit"), at(4))
        .unwrap();
    let read = b.get::<HomeVisit>(&id).unwrap();
    assert_eq!(read.body.actions_agreed, "late edit");
    assert_eq!(read.amendments.len(), 1);
    assert!(b.conflicts().unwrap().is_empty());

    // Two amendments of one field made without seeing each other.
    sync_pair(&mut b, &mut server);
    sync_pair(&mut a, &mut server);
    a.amend(
        Collection::Visits,
        &id,
        "discussed",
        json!("from a"),
        "a's note",
        at(5),
    )
    .unwrap();
    b.amend(
        Collection::Visits,
        &id,
        "discussed",
        json!("from b"),
        "b's note",
        at(6),
    )
    .unwrap();
    sync_pair(&mut a, &mut server);
    sync_pair(&mut b, &mut server);
    sync_pair(&mut a, &mut server);
    let conflicts = server.conflicts().unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].kind, ConflictKind::ConcurrentAmendments);
    assert!(matches!(
        a.amend(Collection::Visits, &id, "discussed", json!("x"), "r", at(7)),
        Err(CaseFileError::FieldInConflict { .. })
    ));
    server
        .resolve_conflict(&conflicts[0].id, &json!("from a"), at(8))
        .unwrap();
    sync_pair(&mut a, &mut server);
    sync_pair(&mut b, &mut server);
    for file in [&a, &b, &server] {
        assert!(file.conflicts().unwrap().is_empty());
        let read = file.get::<HomeVisit>(&id).unwrap();
        assert_eq!(read.body.discussed, "from a");
        assert_eq!(
            read.amendments.len(),
            4,
            "every amendment stays in the trail"
        );
    }
}

#[test]
fn an_older_client_keeps_fields_it_does_not_know() {
    use automerge::{ROOT, ReadDoc, transaction::Transactable};
    let mut server = testing::new_case("case-1");
    let id = server
        .add(&testing::visit("user-1", at(1), 10), at(1))
        .unwrap();
    // A newer client adds a field to the visit, a new root map, and raises the version.
    let mut newer = phone(&mut server, 1);
    {
        let doc = newer.doc_mut();
        let (_, visits) = doc.get(ROOT, "visits").unwrap().unwrap();
        let (_, record) = doc.get(&visits, id.as_str()).unwrap().unwrap();
        let (_, body) = doc.get(&record, "body").unwrap().unwrap();
        doc.put(&body, "weather", "heavy rain").unwrap();
        doc.put_object(ROOT, "risk_assessments", automerge::ObjType::Map)
            .unwrap();
        doc.put(ROOT, "schema_version", 2_u64).unwrap();
        doc.commit();
    }
    let mut older = phone(&mut server, 2);
    sync_pair(&mut newer, &mut older);
    assert!(older.written_by_newer_schema());
    let mut visit = older.get::<HomeVisit>(&id).unwrap().body;
    visit.discussed = "edited by the older client".into();
    older.update(&id, &visit, at(2)).unwrap();
    older.finalise(Collection::Visits, &id, at(3)).unwrap();
    sync_pair(&mut older, &mut newer);
    let doc = newer.doc();
    let (_, visits) = doc.get(ROOT, "visits").unwrap().unwrap();
    let (_, record) = doc.get(&visits, id.as_str()).unwrap().unwrap();
    let (_, body) = doc.get(&record, "body").unwrap().unwrap();
    let (weather, _) = doc.get(&body, "weather").unwrap().unwrap();
    assert_eq!(weather.as_str(), Some("heavy rain"));
    assert!(doc.get(ROOT, "risk_assessments").unwrap().is_some());
    assert_eq!(newer.schema_version(), Some(2));
    let raw = newer.raw_record(Collection::Visits, &id).unwrap();
    assert_eq!(
        raw.body.get("weather"),
        Some(&json!("heavy rain")),
        "the finalised content keeps the newer field too"
    );
    assert_eq!(
        raw.body.get("discussed"),
        Some(&json!("edited by the older client"))
    );
}

#[test]
fn corrupted_documents_and_sync_messages_are_errors_not_panics() {
    let mut file = testing::new_case("case-1");
    file.add(&testing::visit("u", at(1), 200), at(1)).unwrap();
    let bytes = file.save();
    let who = || (testing::author("u", "d"), testing::actor(9));
    for cut in [0, 1, 7, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        let (author, actor) = who();
        assert!(
            CaseFile::load(&bytes[..cut], author, actor).is_err(),
            "cut at {cut}"
        );
    }
    for flip in (0..bytes.len()).step_by(7) {
        let mut corrupt = bytes.clone();
        corrupt[flip] ^= 0x5a;
        let (author, actor) = who();
        // Either refused, or (rarely, where the byte is not checked) a readable document.
        if let Ok(file) = CaseFile::load(&corrupt, author, actor) {
            let _ = file.view();
        }
    }
    let (author, actor) = who();
    assert!(matches!(
        CaseFile::load(b"{\"not\": \"automerge\"}", author, actor),
        Err(CaseFileError::Corrupt(_))
    ));
    // A valid Automerge document that is not a case file.
    let mut other = automerge::AutoCommit::new();
    let (author, actor) = who();
    assert!(matches!(
        CaseFile::load(&other.save(), author, actor),
        Err(CaseFileError::NotACaseFile(_))
    ));

    let mut empty = CaseFile::empty(testing::author("u", "d"), testing::actor(2));
    let message = file.generate_sync_message(&mut PeerState::new()).unwrap();
    let mut state = PeerState::new();
    for cut in [0, 1, message.len() / 2, message.len() - 1] {
        assert!(
            empty
                .receive_sync_message(&mut state, &message[..cut])
                .is_err(),
            "cut at {cut}"
        );
    }
    assert!(
        empty
            .receive_sync_message(&mut state, b"\x42garbage")
            .is_err()
    );
    assert!(PeerState::decode(b"\xff\xff").is_err());
    assert!(empty.schema_version().is_none(), "nothing was applied");
}

#[test]
fn checked_receive_refuses_foreign_actors_and_invalid_documents_and_changes_nothing() {
    use automerge::{ROOT, ReadDoc, transaction::Transactable};
    let mut server = testing::new_case("case-1");
    let mut honest = phone(&mut server, 1);
    honest
        .add(&testing::visit("user-1", at(1), 10), at(1))
        .unwrap();
    let phone_actor = testing::actor(1);
    let mut server_state = PeerState::new();
    let mut phone_state = PeerState::new();
    let before = server.heads();

    // An impersonator: a phone of user 2 whose changes carry actor 7, not bound to it.
    let mut impostor = phone(&mut server, 7);
    impostor
        .add(&testing::visit("user-7", at(2), 10), at(2))
        .unwrap();
    let mut impostor_state = PeerState::new();
    let mut server_for_impostor = PeerState::new();
    let mut refused = None;
    for _ in 0..5 {
        if let Some(m) = server.generate_sync_message(&mut server_for_impostor) {
            impostor
                .receive_sync_message(&mut impostor_state, &m)
                .unwrap();
        }
        let Some(m) = impostor.generate_sync_message(&mut impostor_state) else {
            break;
        };
        match server.receive_sync_message_checked(
            &mut server_for_impostor,
            &m,
            &testing::author("user-7", "phone-7"),
            |a| *a == phone_actor,
        ) {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert!(matches!(refused, Some(RefusedSync::ForeignActor(_))));
    assert_eq!(server.heads(), before);

    // A phone writing a record that fails validation.
    {
        let doc = honest.doc_mut();
        let (_, visits) = doc.get(ROOT, "visits").unwrap().unwrap();
        let bad = doc
            .put_object(&visits, "bad", automerge::ObjType::Map)
            .unwrap();
        doc.put(&bad, "meta", "not a map").unwrap();
        doc.commit();
    }
    let mut outcome = Ok(vec![]);
    for _ in 0..5 {
        if let Some(m) = server.generate_sync_message(&mut server_state) {
            honest.receive_sync_message(&mut phone_state, &m).unwrap();
        }
        let Some(m) = honest.generate_sync_message(&mut phone_state) else {
            break;
        };
        outcome = server.receive_sync_message_checked(
            &mut server_state,
            &m,
            &testing::author("user-1", "phone-1"),
            |a| *a == phone_actor,
        );
        if outcome.is_err() {
            break;
        }
    }
    assert!(
        matches!(outcome, Err(RefusedSync::Invalid(_))),
        "{outcome:?}"
    );
    assert_eq!(
        server.heads(),
        before,
        "the stored document is left unchanged"
    );
}

#[test]
fn checked_receive_accepts_bound_actors_and_reports_the_changes() {
    let mut server = testing::new_case("case-1");
    let mut worker = phone(&mut server, 1);
    worker
        .add(&testing::visit("user-1", at(1), 10), at(1))
        .unwrap();
    let (mut server_state, mut phone_state) = (PeerState::new(), PeerState::new());
    let mut applied = Vec::new();
    for _ in 0..5 {
        let to_phone = server.generate_sync_message(&mut server_state);
        if let Some(m) = &to_phone {
            worker.receive_sync_message(&mut phone_state, m).unwrap();
        }
        let to_server = worker.generate_sync_message(&mut phone_state);
        if let Some(m) = &to_server {
            applied.extend(
                server
                    .receive_sync_message_checked(
                        &mut server_state,
                        m,
                        &testing::author("user-1", "phone-1"),
                        |a| *a == testing::actor(1),
                    )
                    .unwrap(),
            );
        }
        if to_phone.is_none() && to_server.is_none() {
            break;
        }
    }
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].actor, testing::actor(1));
    assert_eq!(server.heads(), worker.heads());
    assert_eq!(server.list::<HomeVisit>().unwrap().len(), 1);
}

#[test]
fn peer_state_survives_a_restart() {
    let mut server = testing::new_case("case-1");
    let mut worker = phone(&mut server, 1);
    sync_pair(&mut worker, &mut server);
    let mut state = PeerState::new();
    let mut phone_state = PeerState::new();
    // Bring both states up to date, then persist the server's and reload it.
    loop {
        let a = server.generate_sync_message(&mut state);
        if let Some(m) = &a {
            worker.receive_sync_message(&mut phone_state, m).unwrap();
        }
        let b = worker.generate_sync_message(&mut phone_state);
        if let Some(m) = &b {
            server.receive_sync_message(&mut state, m).unwrap();
        }
        if a.is_none() && b.is_none() {
            break;
        }
    }
    let restored = PeerState::decode(&state.encode()).unwrap();
    assert_eq!(restored.shared_heads(), state.shared_heads());
    assert_eq!(restored.shared_heads(), server.heads().as_slice());
}

#[test]
fn a_stage_change_moves_the_case_and_records_the_history() {
    let mut file = testing::new_case("case-1");
    let id = file
        .change_stage(
            "level 3",
            "no improvement after letter 2",
            "2026-02-02".parse().unwrap(),
            at(1),
        )
        .unwrap();
    assert_eq!(file.details().unwrap().stage, "level 3");
    let change = file.get::<StageChange>(&id).unwrap();
    assert_eq!(change.body.from_stage, "level 2");
    assert_eq!(change.body.to_stage, "level 3");
    let heads = file.heads();
    assert!(matches!(
        file.change_stage("", "r", "2026-02-02".parse().unwrap(), at(2)),
        Err(CaseFileError::Validation { .. })
    ));
    assert_eq!(file.heads(), heads);
}

/// The server's checked receive of `message` from phone 1 (user-1, actor 1): what it applied.
fn receive_from_phone_1(
    server: &mut CaseFile,
    state: &mut PeerState,
    message: &[u8],
) -> Vec<doorstep_sync_core::AppliedChange> {
    server
        .receive_sync_message_checked(
            state,
            message,
            &testing::author("user-1", "phone-1"),
            |actor| *actor == testing::actor(1),
        )
        .unwrap()
}

/// Syncs `phone` into `server` through the checked receive as `sender`; the first refusal.
fn checked_sync(
    server: &mut CaseFile,
    phone: &mut CaseFile,
    sender: &doorstep_sync_core::Author,
) -> Option<RefusedSync> {
    let (mut server_state, mut phone_state) = (PeerState::new(), PeerState::new());
    checked_sync_from(server, &mut server_state, phone, &mut phone_state, sender)
}

/// [`checked_sync`] from the given sync states, which it leaves as the exchange ends them.
fn checked_sync_from(
    server: &mut CaseFile,
    server_state: &mut PeerState,
    phone: &mut CaseFile,
    phone_state: &mut PeerState,
    sender: &doorstep_sync_core::Author,
) -> Option<RefusedSync> {
    for _ in 0..10 {
        let to_phone = server.generate_sync_message(server_state);
        if let Some(m) = &to_phone {
            phone.receive_sync_message(phone_state, m).unwrap();
        }
        let to_server = phone.generate_sync_message(phone_state);
        if let Some(m) = &to_server
            && let Err(refused) =
                server.receive_sync_message_checked(server_state, m, sender, |_| true)
        {
            return Some(refused);
        }
        if to_phone.is_none() && to_server.is_none() {
            break;
        }
    }
    None
}

#[test]
fn checked_receive_refuses_records_that_name_someone_else() {
    use automerge::{ROOT, ReadDoc, transaction::Transactable};
    let sender = testing::author("user-1", "phone-1");
    // A record whose author is another person (a client that writes the meta itself).
    let mut server = testing::new_case("case-1");
    let before = server.heads();
    let mut forger = testing::replica(
        &mut server,
        testing::author("user-lead", "server"),
        testing::actor(1),
    )
    .unwrap();
    forger
        .add(&testing::visit("user-1", at(1), 10), at(1))
        .unwrap();
    let refused = checked_sync(&mut server, &mut forger, &sender);
    assert!(
        matches!(&refused, Some(RefusedSync::Misattributed(detail)) if detail.contains("user-lead")),
        "{refused:?}"
    );
    assert_eq!(server.heads(), before, "nothing was applied");

    // The honest phone's records and actor registration pass.
    let mut honest = phone(&mut server, 1);
    let visit = honest
        .add(&testing::visit("user-1", at(1), 10), at(1))
        .unwrap();
    assert!(checked_sync(&mut server, &mut honest, &sender).is_none());
    assert_eq!(server.heads(), honest.heads());

    // Rewriting the author of a record that is already there.
    {
        let doc = honest.doc_mut();
        let (_, visits) = doc.get(ROOT, "visits").unwrap().unwrap();
        let (_, record) = doc.get(&visits, visit.as_str()).unwrap().unwrap();
        let (_, meta) = doc.get(&record, "meta").unwrap().unwrap();
        doc.put(&meta, "user_id", "user-2").unwrap();
        doc.commit();
    }
    let before = server.heads();
    let refused = checked_sync(&mut server, &mut honest, &sender);
    assert!(
        matches!(&refused, Some(RefusedSync::Misattributed(detail)) if detail.contains("author was changed")),
        "{refused:?}"
    );
    assert_eq!(server.heads(), before);
}

#[test]
fn text_objects_are_refused_where_case_files_hold_plain_strings() {
    use automerge::{ROOT, ReadDoc, transaction::Transactable};
    let mut server = testing::new_case("case-1");
    let mut worker = phone(&mut server, 1);
    let visit = worker
        .add(&testing::visit("user-1", at(1), 10), at(1))
        .unwrap();
    assert!(worker.validate().is_ok());
    // What automerge-repo's JS client writes for a JS string by default: collaborative Text.
    {
        let doc = worker.doc_mut();
        let (_, visits) = doc.get(ROOT, "visits").unwrap().unwrap();
        let (_, record) = doc.get(&visits, visit.as_str()).unwrap().unwrap();
        let (_, body) = doc.get(&record, "body").unwrap().unwrap();
        let text = doc
            .put_object(&body, "discussed", automerge::ObjType::Text)
            .unwrap();
        doc.splice_text(&text, 0, 0, "Talked about mornings.")
            .unwrap();
        doc.commit();
    }
    let error = worker.validate().unwrap_err().to_string();
    assert!(error.contains("discussed"), "{error}");
    assert!(error.contains("plain string"), "{error}");
    let before = server.heads();
    let refused = checked_sync(
        &mut server,
        &mut worker,
        &testing::author("user-1", "phone-1"),
    );
    assert!(
        matches!(refused, Some(RefusedSync::Invalid(_))),
        "{refused:?}"
    );
    assert_eq!(server.heads(), before);
}

#[test]
fn a_later_version_contains_the_heads_of_an_earlier_one_and_not_the_reverse() {
    let mut server = testing::new_case("case-1");
    let mut older = phone(&mut server, 1);
    let older_heads = older.heads();
    let mut newer = phone(&mut server, 2);
    newer
        .add(&testing::visit("user-2", at(1), 10), at(1))
        .unwrap();
    let newer_heads = newer.heads();
    assert!(newer.contains_heads(&older_heads));
    assert!(!older.contains_heads(&newer_heads));
    assert!(older.contains_heads(&[]));
}

/// The raw map of `collection` in `file`'s document, for tests that write what a bad client
/// would.
fn collection_obj(file: &CaseFile, collection: &str) -> automerge::ObjId {
    use automerge::{ROOT, ReadDoc};
    file.doc().get(ROOT, collection).unwrap().unwrap().1
}

/// A case holding one visit by user-1 on phone-1, synced through the checked receive; the
/// visit's id and the sending device.
fn case_with_a_synced_visit() -> (CaseFile, String, doorstep_sync_core::Author) {
    let sender = testing::author("user-1", "phone-1");
    let mut server = testing::new_case("case-1");
    let mut worker = phone(&mut server, 1);
    let visit = worker
        .add(&testing::visit("user-1", at(1), 10), at(1))
        .unwrap();
    assert!(checked_sync(&mut server, &mut worker, &sender).is_none());
    (server, visit, sender)
}

#[test]
fn a_refused_change_on_a_large_case_is_rolled_back_and_the_case_still_syncs() {
    use automerge::{ReadDoc, transaction::Transactable};
    let sender = testing::author("user-1", "phone-1");
    let mut server = testing::new_case("case-1");
    let mut worker = phone(&mut server, 1);
    let mut ids = Vec::new();
    for i in 0..150 {
        ids.push(
            worker
                .add(&testing::visit("user-1", at(i), 40), at(i))
                .unwrap(),
        );
    }
    assert!(checked_sync(&mut server, &mut worker, &sender).is_none());
    assert_eq!(server.list::<HomeVisit>().unwrap().len(), 150);

    // An old record's body gets a value of the wrong type: only that record changed, and the
    // check that looks only at what changed must still find it.
    let old = &ids[3];
    {
        let visits = collection_obj(&worker, "visits");
        let doc = worker.doc_mut();
        let (_, record) = doc.get(&visits, old.as_str()).unwrap().unwrap();
        let (_, body) = doc.get(&record, "body").unwrap().unwrap();
        doc.put(&body, "started_at", 42_i64).unwrap();
        doc.commit();
    }
    let before = server.heads();
    let refused = checked_sync(&mut server, &mut worker, &sender);
    assert!(
        matches!(&refused, Some(RefusedSync::Invalid(e)) if e.to_string().contains(old.as_str())),
        "{refused:?}"
    );
    assert_eq!(server.heads(), before, "rolled back");
    assert!(
        server.get::<HomeVisit>(old).is_ok(),
        "the stored record is intact"
    );
    assert!(server.validate().is_ok());

    // The rolled-back document goes on: another phone's valid visit is accepted.
    let mut other = phone(&mut server, 2);
    other
        .add(&testing::visit("user-2", at(500), 40), at(500))
        .unwrap();
    let refused = checked_sync(
        &mut server,
        &mut other,
        &testing::author("user-2", "phone-2"),
    );
    assert!(refused.is_none(), "{refused:?}");
    assert_eq!(server.list::<HomeVisit>().unwrap().len(), 151);
    assert_eq!(server.heads(), other.heads());
}

#[test]
fn records_cannot_be_removed_one_by_one_or_with_their_collection() {
    use automerge::{ROOT, transaction::Transactable};
    let (mut server, visit, sender) = case_with_a_synced_visit();
    let before = server.heads();

    let mut remover = phone(&mut server, 1);
    let visits = collection_obj(&remover, "visits");
    remover.doc_mut().delete(&visits, visit.as_str()).unwrap();
    remover.doc_mut().commit();
    let refused = checked_sync(&mut server, &mut remover, &sender);
    assert!(
        matches!(&refused, Some(RefusedSync::Invalid(e)) if e.to_string().contains("cannot be removed")),
        "{refused:?}"
    );
    assert_eq!(server.heads(), before);

    let mut replacer = phone(&mut server, 1);
    replacer
        .doc_mut()
        .put_object(ROOT, "visits", automerge::ObjType::Map)
        .unwrap();
    replacer.doc_mut().commit();
    let refused = checked_sync(&mut server, &mut replacer, &sender);
    assert!(
        matches!(&refused, Some(RefusedSync::Invalid(e)) if e.to_string().contains("cannot be removed")),
        "{refused:?}"
    );
    assert_eq!(server.heads(), before);
    assert!(server.get::<HomeVisit>(&visit).is_ok());
}

#[test]
fn marks_and_root_values_are_checked_where_they_change() {
    use automerge::{ROOT, transaction::Transactable};
    let sender = testing::author("user-1", "phone-1");
    let mut server = testing::new_case("case-1");
    let before = server.heads();

    // A phone puts a string under `key` in `collection`; the server's checked sync answers.
    let put_string = |server: &mut CaseFile, collection: &str, key: &str, value: &str| {
        let mut edited = phone(server, 1);
        let map = collection_obj(&edited, collection);
        edited.doc_mut().put(&map, key, value).unwrap();
        edited.doc_mut().commit();
        checked_sync(server, &mut edited, &sender)
    };

    let refused = put_string(&mut server, "attendance", "child-1|2026-01-05|AM", "??");
    assert!(
        matches!(&refused, Some(RefusedSync::Invalid(e)) if e.to_string().contains("child-1|2026-01-05|AM")),
        "{refused:?}"
    );
    assert_eq!(server.heads(), before);

    // A record that is a plain value, not a map.
    let refused = put_string(&mut server, "visits", "visit-scalar", "not a record");
    assert!(
        matches!(&refused, Some(RefusedSync::Invalid(e)) if e.to_string().contains("visits.visit-scalar")),
        "{refused:?}"
    );
    assert_eq!(server.heads(), before);

    let mut text_at_root = phone(&mut server, 1);
    let text = text_at_root
        .doc_mut()
        .put_object(ROOT, "notes", automerge::ObjType::Text)
        .unwrap();
    text_at_root
        .doc_mut()
        .splice_text(&text, 0, 0, "free text")
        .unwrap();
    text_at_root.doc_mut().commit();
    let refused = checked_sync(&mut server, &mut text_at_root, &sender);
    assert!(
        matches!(&refused, Some(RefusedSync::Invalid(e)) if e.to_string().contains("plain string")),
        "{refused:?}"
    );
    assert_eq!(server.heads(), before);
}

#[test]
fn a_finalisation_naming_someone_else_is_refused() {
    let (mut server, visit, sender) = case_with_a_synced_visit();
    let before = server.heads();
    // The same device's actor, but a handle that writes another person into the envelope.
    let mut forger = testing::replica(
        &mut server,
        testing::author("user-lead", "phone-1"),
        testing::actor(1),
    )
    .unwrap();
    forger.finalise(Collection::Visits, &visit, at(2)).unwrap();
    let refused = checked_sync(&mut server, &mut forger, &sender);
    assert!(
        matches!(&refused, Some(RefusedSync::Misattributed(detail)) if detail.contains("user-lead")),
        "{refused:?}"
    );
    assert_eq!(server.heads(), before);
    assert!(server.get::<HomeVisit>(&visit).unwrap().finalised.is_none());
}

#[test]
fn a_server_that_keeps_nothing_between_messages_still_gets_changes_whose_message_was_lost() {
    // The server of an HTTP sync keeps only the stored document and the saved sync state
    // between requests, so changes it had to hold back (their dependencies had not arrived)
    // are gone by the next request. A phone whose message carrying A was lost then sends only
    // B, which depends on A: the server must make the phone send A (and B) again, or the two
    // never meet.
    let sender = testing::author("user-1", "phone-1");
    let mut server = testing::new_case("case-1");
    let mut worker = phone(&mut server, 1);
    let (mut saved_state, mut phone_state) = (PeerState::new().encode(), PeerState::new());
    let mut exchange = |server: &mut CaseFile,
                        worker: &mut CaseFile,
                        phone_state: &mut PeerState,
                        deliver: bool| {
        // One request: the server as stored, its saved state, the phone's message.
        let mut stored = CaseFile::load(
            &server.save(),
            testing::author("server", "server"),
            testing::actor(99),
        )
        .unwrap();
        let mut state = PeerState::decode(&saved_state).unwrap();
        let to_server = worker.generate_sync_message(phone_state);
        if let Some(m) = &to_server
            && deliver
        {
            stored
                .receive_sync_message_checked(&mut state, m, &sender, |_| true)
                .unwrap();
        }
        let reply = stored.generate_sync_message(&mut state);
        saved_state = state.encode();
        *server = stored;
        if let Some(m) = &reply
            && deliver
        {
            worker.receive_sync_message(phone_state, m).unwrap();
        }
        to_server.is_some() || reply.is_some()
    };
    for _ in 0..5 {
        exchange(&mut server, &mut worker, &mut phone_state, true);
    }
    let a = worker
        .add(&testing::visit("user-1", at(1), 10), at(1))
        .unwrap();
    // The request carrying A is lost on the way (no reply either)...
    exchange(&mut server, &mut worker, &mut phone_state, false);
    // ... and the phone, not told, carries on: a later exchange answers it, then B is recorded.
    exchange(&mut server, &mut worker, &mut phone_state, true);
    let b = worker
        .add(&testing::visit("user-1", at(2), 10), at(2))
        .unwrap();
    for _ in 0..10 {
        if !exchange(&mut server, &mut worker, &mut phone_state, true) {
            break;
        }
    }
    assert!(server.get::<HomeVisit>(&a).is_ok(), "A reached the server");
    assert!(server.get::<HomeVisit>(&b).is_ok(), "B reached the server");
    assert_eq!(server.heads(), worker.heads());
}

/// A message of more changes than a receive applies at once, or a whole document in place of
/// changes, is applied in steps, and ends where Automerge's own receive of it ends: the same
/// document and the same peer state (the next message is the same). Changes in reverse order
/// make each step's changes wait for a later step's.
#[test]
fn messages_applied_in_steps_end_as_automerge_receives_them() {
    use automerge::sync::{ChunkList, MessageVersion};

    // Changes in reverse order (applied in steps, and reported in an order in which each
    // follows its dependencies), a whole document past 64 KiB (read as the changes it brings)
    // and a small one (left to Automerge's receive).
    for (visits, as_document) in [(600, false), (1000, true), (3, true)] {
        let mut server = testing::new_case("case-1");
        let mut worker = phone(&mut server, 1);
        for minute in 0..visits {
            worker
                .add(&testing::visit("user-1", at(minute), 10), at(minute))
                .unwrap();
        }
        let (changes, version) = if as_document {
            let document = worker.save();
            assert_eq!(
                document.len() > 64 * 1024,
                visits > 3,
                "{} bytes",
                document.len()
            );
            (ChunkList::from(document), MessageVersion::V2)
        } else {
            let server_heads = server.heads();
            let mut changes: Vec<Vec<u8>> = worker
                .doc_mut()
                .get_changes(&server_heads)
                .into_iter()
                .map(|mut change| change.bytes().into_owned())
                .collect();
            changes.reverse();
            (ChunkList::from(changes), MessageVersion::V1)
        };
        let message = automerge::sync::Message {
            heads: worker.heads(),
            need: Vec::new(),
            have: Vec::new(),
            changes,
            flags: None,
            version,
        }
        .encode();
        assert_received_as_automerge_receives(&mut server, &message, visits);
        assert_eq!(server.heads(), worker.heads());
    }
}

fn assert_received_as_automerge_receives(server: &mut CaseFile, message: &[u8], changes: i64) {
    use automerge::sync::{Message, SyncDoc};

    let before = server.heads();
    let mut reference = automerge::AutoCommit::load(&server.save()).unwrap();
    let mut reference_state = automerge::sync::State::new();
    reference
        .sync()
        .receive_sync_message(&mut reference_state, Message::decode(message).unwrap())
        .unwrap();

    let mut state = PeerState::new();
    let applied = receive_from_phone_1(server, &mut state, message);
    assert_eq!(applied.len() as i64, changes);
    assert_eq!(server.heads(), reference.get_heads());
    assert_applied_as_stored(&applied, &reference.get_changes(&before));
    assert!(!server.holds_back_changes());
    let ours = server.generate_sync_message(&mut state);
    let theirs = reference
        .sync()
        .generate_sync_message(&mut reference_state)
        .map(Message::encode);
    assert!(ours.is_some());
    assert_eq!(ours, theirs);
}

/// The changes a checked receive reported are exactly those the document gained (`gained`),
/// each as the same change (its bytes may be compressed), each after those of its
/// dependencies that came with it.
fn assert_applied_as_stored(
    applied: &[doorstep_sync_core::AppliedChange],
    gained: &[automerge::Change],
) {
    use std::collections::{BTreeMap, BTreeSet};

    let gained: BTreeMap<_, _> = gained.iter().map(|c| (c.hash(), c.raw_bytes())).collect();
    let reported: BTreeSet<_> = applied.iter().map(|c| c.hash).collect();
    assert_eq!(reported.len(), applied.len(), "a change reported twice");
    assert_eq!(reported, gained.keys().copied().collect::<BTreeSet<_>>());
    let mut seen = BTreeSet::new();
    for change in applied {
        let parsed = automerge::Change::try_from(change.bytes.as_slice()).unwrap();
        assert_eq!(parsed.raw_bytes(), gained[&change.hash]);
        assert_eq!(parsed.deps(), change.deps.as_slice());
        assert_eq!(parsed.actor_id(), &change.actor);
        for dep in &change.deps {
            assert!(
                !gained.contains_key(dep) || seen.contains(dep),
                "a change reported before its dependency"
            );
        }
        seen.insert(change.hash);
    }
}

#[test]
fn a_change_held_back_until_its_dependency_arrives_is_reported_with_it() {
    let (mut server, mut worker, changes, [first, second]) = two_visits_sent_one_per_message();
    let mut state = PeerState::new();

    // The second visit first: it waits for the first, and nothing is applied yet.
    let applied = receive_from_phone_1(&mut server, &mut state, &second);
    assert!(applied.is_empty());
    assert!(server.holds_back_changes());
    // The first brings both in: both are reported, though the message offered one.
    let applied = receive_from_phone_1(&mut server, &mut state, &first);
    assert_applied_as_stored(&applied, &changes);
    assert_eq!(server.heads(), worker.heads());
}

#[test]
fn a_message_without_changes_leaves_the_same_state_checked_or_not_while_changes_are_held_back() {
    let (mut server, mut worker, _, [_, held_back]) = two_visits_sent_one_per_message();
    let mut state = PeerState::new();
    receive_from_phone_1(&mut server, &mut state, &held_back);
    assert!(server.holds_back_changes());
    // The reply asks the phone to forget what it sent; the phone then says only where it is.
    server.generate_sync_message(&mut state).unwrap();
    let no_changes = worker.generate_sync_message(&mut PeerState::new()).unwrap();

    let mut plain = state.clone();
    server
        .receive_sync_message(&mut plain, &no_changes)
        .unwrap();
    let applied = receive_from_phone_1(&mut server, &mut state, &no_changes);
    assert!(applied.is_empty());
    // Both ask again for a reset: the held-back change is still not stored.
    assert_eq!(state, plain);
}

/// [`case_of_ten_visits_and_a_phone`] after the phone recorded two visits offline: the server,
/// the phone, the two changes, and a sync message carrying each of them alone.
fn two_visits_sent_one_per_message() -> (CaseFile, CaseFile, Vec<automerge::Change>, [Vec<u8>; 2]) {
    use automerge::sync::{ChunkList, Message, MessageVersion};

    let (mut server, mut worker) = case_of_ten_visits_and_a_phone();
    let before = server.heads();
    for minute in [60, 61] {
        worker
            .add(&testing::visit("user-1", at(minute), 500), at(minute))
            .unwrap();
    }
    let mut changes = worker.doc_mut().get_changes(&before);
    let messages = [0, 1].map(|i| {
        Message {
            heads: Vec::new(),
            need: Vec::new(),
            have: Vec::new(),
            changes: ChunkList::from(vec![changes[i].bytes().into_owned()]),
            flags: None,
            version: MessageVersion::V1,
        }
        .encode()
    });
    (server, worker, changes, messages)
}

/// A case holding ten visits, and a phone (user-1, actor 1) that holds it too.
fn case_of_ten_visits_and_a_phone() -> (CaseFile, CaseFile) {
    let mut server = testing::new_case("case-1");
    for minute in 0..10 {
        server
            .add(&testing::visit("user-9", at(minute), 100), at(minute))
            .unwrap();
    }
    let worker = phone(&mut server, 1);
    (server, worker)
}

#[test]
fn a_new_visit_goes_up_compressed_and_arrives_as_the_same_change() {
    use automerge::sync::Message;

    // The server's bloom filter matches a change it lacks about once in a hundred (record ids
    // are random), and the phone then holds it back for a round: such a case is set up again.
    let (mut server, mut worker, mut change, mut server_state, mut phone_state, upload) = (0..5)
        .find_map(|_| {
            let (mut server, mut worker) = case_of_ten_visits_and_a_phone();
            let before = worker.heads();
            worker
                .add(&testing::visit("user-1", at(60), 500), at(60))
                .unwrap();
            let change = worker.doc_mut().get_changes(&before).remove(0);
            let (mut server_state, mut phone_state) = (PeerState::new(), PeerState::new());
            let opening = server.generate_sync_message(&mut server_state).unwrap();
            worker
                .receive_sync_message(&mut phone_state, &opening)
                .unwrap();
            let upload = worker.generate_sync_message(&mut phone_state).unwrap();
            doorstep_sync_core::brings_changes(&upload).then_some((
                server,
                worker,
                change,
                server_state,
                phone_state,
                upload,
            ))
        })
        .expect("five bloom filter false positives in a row");
    let raw = change.raw_bytes().len();
    let decoded = Message::decode(&upload).unwrap();
    let chunks: Vec<&[u8]> = decoded.changes.iter().collect();
    assert_eq!(chunks.len(), 1, "one change, not the whole document");
    assert_eq!(chunks[0], change.bytes().as_ref());
    assert!(
        chunks[0].len() * 10 < raw * 7,
        "{} bytes sent for a {raw}-byte change",
        chunks[0].len()
    );

    let applied = receive_from_phone_1(&mut server, &mut server_state, &upload);
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].hash, change.hash());
    assert_eq!(server.heads(), worker.heads());

    // Once the server has answered, Automerge sends several changes one after another in one
    // chunk list entry (a version 2 message): each goes compressed all the same.
    let answer = server.generate_sync_message(&mut server_state).unwrap();
    worker
        .receive_sync_message(&mut phone_state, &answer)
        .unwrap();
    let before = worker.heads();
    for minute in [61, 62] {
        worker
            .add(&testing::visit("user-1", at(minute), 500), at(minute))
            .unwrap();
    }
    let compressed: usize = worker
        .doc_mut()
        .get_changes(&before)
        .iter_mut()
        .map(|change| change.bytes().len())
        .sum();
    let upload = worker.generate_sync_message(&mut phone_state).unwrap();
    let sent: usize = Message::decode(&upload)
        .unwrap()
        .changes
        .iter()
        .map(<[u8]>::len)
        .sum();
    assert_eq!(sent, compressed);
    receive_from_phone_1(&mut server, &mut server_state, &upload);
    assert_eq!(server.heads(), worker.heads());
}

#[test]
fn a_reconnecting_phone_sends_its_few_new_changes_in_its_first_message() {
    use automerge::sync::Message;

    let (mut server, mut worker) = case_of_ten_visits_and_a_phone();
    let sender = testing::author("user-1", "phone-1");
    let bound = |actor: &doorstep_sync_core::ActorId| *actor == testing::actor(1);
    // A first session leaves the heads both hold in each side's stored state.
    let (mut server_state, mut phone_state) = (PeerState::new(), PeerState::new());
    for _ in 0..5 {
        if let Some(m) = server.generate_sync_message(&mut server_state) {
            worker.receive_sync_message(&mut phone_state, &m).unwrap();
        }
        if let Some(m) = worker.generate_sync_message(&mut phone_state) {
            server
                .receive_sync_message_checked(&mut server_state, &m, &sender, bound)
                .unwrap();
        }
    }
    assert_eq!(phone_state.shared_heads(), server.heads());
    let restart = |state: &PeerState| PeerState::decode(&state.encode()).unwrap();

    // One new visit goes in the next session's first message, and one answer ends it.
    worker
        .add(&testing::visit("user-1", at(60), 500), at(60))
        .unwrap();
    let (mut server_state, mut phone_state) = (restart(&server_state), restart(&phone_state));
    let first = worker.generate_sync_message(&mut phone_state).unwrap();
    assert_eq!(Message::decode(&first).unwrap().changes.len(), 1);
    let applied = server
        .receive_sync_message_checked(&mut server_state, &first, &sender, bound)
        .unwrap();
    assert_eq!(applied.len(), 1);
    assert_eq!(server.heads(), worker.heads());
    let answer = server.generate_sync_message(&mut server_state).unwrap();
    worker
        .receive_sync_message(&mut phone_state, &answer)
        .unwrap();
    assert_eq!(phone_state.shared_heads(), worker.heads());
    assert!(worker.generate_sync_message(&mut phone_state).is_none());

    // More than a third of the document waits for the server's answer, as Automerge sends
    // that much as a whole document.
    for minute in 100..120 {
        worker
            .add(&testing::visit("user-1", at(minute), 10), at(minute))
            .unwrap();
    }
    let mut phone_state = restart(&phone_state);
    let first = worker.generate_sync_message(&mut phone_state).unwrap();
    assert!(Message::decode(&first).unwrap().changes.is_empty());
}

#[test]
fn a_phone_takes_its_case_sent_whole_as_automerge_would_merge_it() {
    use automerge::sync::{ChunkList, Message, MessageVersion};

    // The whole document as the server stores it: a full save with the changes made since
    // appended; with and without the phone's own offline visits; and to a phone that holds
    // back a change whose dependency it has not received.
    for (phone_synced_first, holds_back) in [(false, false), (true, false), (false, true)] {
        let mut server = testing::new_case("case-1");
        let mut worker = phone(&mut server, 1);
        let mut other = phone(&mut server, 2);
        for minute in 0..3 {
            worker
                .add(&testing::visit("user-1", at(minute), 50), at(minute))
                .unwrap();
        }
        if phone_synced_first {
            sync_pair(&mut worker, &mut server);
        }
        let saved_before = server.heads();
        let snapshot = server.save();
        for minute in 10..20 {
            other
                .add(&testing::visit("user-2", at(minute), 50), at(minute))
                .unwrap();
        }
        sync_pair(&mut other, &mut server);
        if holds_back {
            // A change of phone 2's, without the change it follows.
            let mut last = other.doc_mut().get_changes(&[]).pop().unwrap();
            let orphan = Message {
                heads: Vec::new(),
                need: Vec::new(),
                have: Vec::new(),
                changes: ChunkList::from(vec![last.bytes().into_owned()]),
                flags: None,
                version: MessageVersion::V1,
            };
            worker
                .receive_sync_message(&mut PeerState::new(), &orphan.encode())
                .unwrap();
            assert!(worker.holds_back_changes());
        }
        let mut stored = snapshot;
        for mut change in server.doc_mut().get_changes(&saved_before) {
            stored.extend_from_slice(&change.bytes());
        }
        let whole = Message {
            heads: server.heads(),
            need: Vec::new(),
            have: vec![automerge::sync::Have::default()],
            changes: ChunkList::from(stored),
            flags: None,
            version: MessageVersion::V2,
        }
        .encode();
        assert_merged_as_automerge_merges(&mut worker, &whole);
        let server_heads = server.heads();
        assert!(worker.contains_heads(&server_heads));
        assert_eq!(worker.heads() == server_heads, phone_synced_first);
        if holds_back {
            // Taking the document whole would have lost the held-back change; merged, it
            // was applied once its dependency came with the document.
            assert!(!worker.holds_back_changes());
        }
        // What the phone records next is still its own.
        let before = worker.heads();
        worker
            .add(&testing::visit("user-1", at(99), 50), at(99))
            .unwrap();
        let recorded = worker.doc_mut().get_changes(&before);
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].actor_id(), &testing::actor(1));
    }
}

/// A phone's receive of `message` leaves its document and its sync state as Automerge's
/// receive leaves a copy of both.
fn assert_merged_as_automerge_merges(worker: &mut CaseFile, message: &[u8]) {
    use automerge::ReadDoc;
    use automerge::sync::{Message, State, SyncDoc};

    let mut state = PeerState::new();
    worker.generate_sync_message(&mut state);
    let mut reference = worker.doc().clone();
    let mut reference_state = State::decode(&state.encode()).unwrap();
    reference
        .sync()
        .generate_sync_message(&mut reference_state)
        .unwrap();
    reference
        .sync()
        .receive_sync_message(&mut reference_state, Message::decode(message).unwrap())
        .unwrap();

    let changes_before = worker.doc_mut().stats().num_changes;
    worker.receive_sync_message(&mut state, message).unwrap();
    let applied = worker.doc_mut().stats().num_changes > changes_before;
    assert_eq!(worker.heads(), reference.get_heads());
    assert_eq!(
        worker.doc_mut().get_missing_deps(&[]),
        reference.get_missing_deps(&[])
    );
    // Every field of the sync state (PeerState wraps Automerge's State, and owes the peer
    // an acknowledgement of the changes it applied).
    assert_eq!(
        format!("{state:?}"),
        format!("PeerState {{ state: {reference_state:?}, acknowledgement_owed: {applied} }}")
    );
}

/// The server's WebSocket sync reads a case, receives a phone's message and only then takes
/// the write lock; if another sync committed a newer version meanwhile, it reads that one and
/// receives the same message again, with the sync state the first receive left. That must
/// end exactly as one receive of the message on the newer version would: the same document,
/// the same sync state, the same next message.
#[test]
fn a_message_received_again_on_a_newer_version_ends_as_one_receive_there() {
    let mut server = testing::new_case("case-1");
    let mut worker = phone(&mut server, 1);
    let mut other = phone(&mut server, 2);
    let (mut server_state, mut worker_state) = (PeerState::new(), PeerState::new());
    // A first exchange, so that the phone's next message carries its new visit unasked.
    let sender = testing::author("user-1", "phone-1");
    let refused = checked_sync_from(
        &mut server,
        &mut server_state,
        &mut worker,
        &mut worker_state,
        &sender,
    );
    assert!(refused.is_none());
    // A phone reconnecting with nothing new: its heads and a bloom filter, no changes.
    let mut reconnected = PeerState::decode(&worker_state.encode()).unwrap();
    let without_changes = worker.generate_sync_message(&mut reconnected).unwrap();
    assert!(!doorstep_sync_core::brings_changes(&without_changes));
    worker
        .add(&testing::visit("user-1", at(10), 40), at(10))
        .unwrap();
    let with_changes = worker.generate_sync_message(&mut worker_state).unwrap();
    assert!(doorstep_sync_core::brings_changes(&with_changes));

    // The newer version: another phone's visit, committed by another sync.
    other
        .add(&testing::visit("user-2", at(20), 40), at(20))
        .unwrap();
    let mut newer = testing::replica(
        &mut server,
        testing::author("server", "server"),
        testing::actor(99),
    )
    .unwrap();
    let theirs = other.doc_mut().get_changes(&server.heads());
    newer
        .doc_mut()
        .apply_changes(theirs.into_iter().map(|c| c.to_owned()))
        .unwrap();
    assert_ne!(newer.heads(), server.heads());

    for message in [&with_changes, &without_changes] {
        // Received on the version read first (its write is then refused) ...
        let mut first =
            testing::replica(&mut server, testing::author("s", "s"), testing::actor(98)).unwrap();
        let mut twice = server_state.clone();
        receive_from_phone_1(&mut first, &mut twice, message);
        // ... and again on the newer one.
        let mut again =
            testing::replica(&mut newer, testing::author("s", "s"), testing::actor(98)).unwrap();
        let applied_again = receive_from_phone_1(&mut again, &mut twice, message);

        let mut once_doc =
            testing::replica(&mut newer, testing::author("s", "s"), testing::actor(98)).unwrap();
        let mut once = server_state.clone();
        let applied_once = receive_from_phone_1(&mut once_doc, &mut once, message);

        assert_eq!(again.heads(), once_doc.heads());
        assert_eq!(applied_again, applied_once, "the changes to store");
        assert_eq!(twice, once, "the sync state");
        assert_eq!(
            again.generate_sync_message(&mut twice),
            once_doc.generate_sync_message(&mut once),
            "the next message"
        );
    }
}
