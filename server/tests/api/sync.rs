//! Sync over HTTP: phones edit offline, sync through the server and converge; need-to-know;
//! foreign actors, invalid documents and records naming someone else refused with the stored
//! document unchanged;
//! idempotent retries; deallocated cases dropped.

use automerge::ReadDoc;
use automerge::transaction::Transactable;
use doorstep_server::api::{SyncDocumentIn, SyncRequest};
use doorstep_server::storage::heads_key;
use doorstep_sync_core::records::HomeVisit;
use doorstep_sync_core::{CaseFile, testing};

use crate::helpers::{
    Backend, Phone, TestApp, both_backends, counter, new_case, spawn_app, spawn_second_instance,
    stored_heads,
};

both_backends!(
    a_phone_receives_exactly_its_allocated_cases,
    two_phones_edit_offline_and_converge,
    unallocated_and_unknown_cases_get_the_same_not_found,
    a_change_by_another_devices_actor_is_refused,
    an_invalid_document_is_refused,
    a_record_that_names_someone_else_is_refused,
    retrying_a_sync_is_harmless,
    a_deallocated_case_is_dropped,
    the_caches_serve_repeat_syncs_but_never_a_stale_document,
    staff_reads_use_the_document_cache_and_see_every_new_change,
    new_changes_are_appended_to_the_stored_document_and_compacted_every_so_often,
    an_idle_poll_parses_nothing_and_a_change_elsewhere_still_arrives,
    two_phones_uploading_to_the_same_cases_at_once_compute_each_upload_once,
    an_uploads_answer_carries_no_changes_and_the_next_request_gets_them,
);

async fn a_phone_receives_exactly_its_allocated_cases(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut officer = Phone::sign_in(&app, "officer", 1).await;
    let reply = officer.sync_until_quiet(&app).await;
    assert_eq!(reply.allocated, ["case-demo-1", "case-demo-2"]);
    assert_eq!(
        officer.docs.keys().collect::<Vec<_>>(),
        ["case-demo-1", "case-demo-2"]
    );
    for (case_id, doc) in &mut officer.docs {
        doc.check_layout().unwrap();
        assert_eq!(doc.case_id().as_deref(), Some(case_id.as_str()));
        assert_eq!(heads_key(&doc.heads()), stored_heads(&app, case_id).await);
    }
    // In sync: a further round carries no messages either way.
    let (_, busy) = officer.sync_round(&app).await;
    assert!(!busy);
}

async fn two_phones_edit_offline_and_converge(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut officer = Phone::sign_in(&app, "officer", 1).await;
    let mut worker = Phone::sign_in(&app, "worker", 2).await;
    officer.sync_until_quiet(&app).await;
    worker.sync_until_quiet(&app).await;

    // Offline, both record visits in the shared case.
    let case = "case-demo-2";
    let officer_visits: Vec<String> = (0..3)
        .map(|i| officer.record_visit(case, 60 * i, 200))
        .collect();
    let worker_visit = worker.record_visit(case, 30, 300);

    // Interleaved rounds, then until quiet.
    officer.sync_round(&app).await;
    worker.sync_round(&app).await;
    officer.sync_until_quiet(&app).await;
    worker.sync_until_quiet(&app).await;
    officer.sync_until_quiet(&app).await;

    let server = stored_heads(&app, case).await;
    assert_eq!(heads_key(&officer.doc(case).heads()), server);
    assert_eq!(heads_key(&worker.doc(case).heads()), server);
    let visits = worker.doc(case).list::<HomeVisit>().unwrap();
    assert_eq!(visits.len(), 4);
    for id in officer_visits.iter().chain([&worker_visit]) {
        assert!(visits.iter().any(|v| &v.id == id), "visit {id} missing");
    }

    // Every stored change keeps its device, user and received time.
    let changes = app.storage().changes(case).await.unwrap();
    let by_officer = changes
        .iter()
        .filter(|c| c.device_id.as_deref() == Some(officer.tokens.device_id.as_str()))
        .collect::<Vec<_>>();
    assert_eq!(by_officer.len(), 3);
    for change in by_officer {
        assert_eq!(change.actor_id, officer.actor.to_hex_string());
        assert_eq!(change.user_id.as_deref(), Some("user-officer"));
        assert!(change.received_at > 0);
    }
    assert!(
        changes
            .iter()
            .any(|c| c.device_id.as_deref() == Some(worker.tokens.device_id.as_str()))
    );

    // The snapshot alone rebuilds the merged document.
    let stored = app.storage().document(case).await.unwrap().unwrap();
    let mut reloaded = CaseFile::load(
        &stored.snapshot,
        testing::author("x", "x"),
        testing::actor(99),
    )
    .unwrap();
    assert_eq!(reloaded.list::<HomeVisit>().unwrap().len(), 4);
    assert_eq!(heads_key(&reloaded.heads()), server);
}

async fn unallocated_and_unknown_cases_get_the_same_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut officer = Phone::sign_in(&app, "officer", 1).await;
    officer.sync_until_quiet(&app).await;

    // case-demo-3 exists (the worker's); case-nowhere does not. The answers are identical.
    let message = officer
        .doc("case-demo-1")
        .generate_sync_message(&mut doorstep_sync_core::PeerState::new())
        .unwrap();
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&message);
    let request = SyncRequest {
        documents: vec![
            SyncDocumentIn {
                case_id: "case-demo-3".into(),
                message: Some(encoded.clone()),
            },
            SyncDocumentIn {
                case_id: "case-nowhere".into(),
                message: Some(encoded),
            },
        ],
    };
    let before = stored_heads(&app, "case-demo-3").await;
    let (reply, _) = officer.send(&app, &request).await;
    let errors: Vec<_> = reply
        .documents
        .iter()
        .take(2)
        .map(|d| (d.message.clone(), d.error.clone().unwrap()))
        .collect();
    assert_eq!(errors[0].1.code, "not_found");
    assert_eq!(errors[0], errors[1]);
    assert_eq!(reply.documents[0].case_id, "case-demo-3");
    assert!(!reply.allocated.contains(&"case-demo-3".to_string()));
    assert_eq!(stored_heads(&app, "case-demo-3").await, before);
    assert!(!officer.docs.contains_key("case-demo-3"));
}

async fn a_change_by_another_devices_actor_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut officer = Phone::sign_in(&app, "officer", 1).await;
    let worker = Phone::sign_in(&app, "worker", 2).await;
    officer.sync_until_quiet(&app).await;
    let case = "case-demo-2";
    let before = app.storage().document(case).await.unwrap().unwrap();
    let changes_before = app.storage().changes(case).await.unwrap().len();

    // The officer's phone writes a visit under the worker's actor (impersonation).
    let saved = officer.doc(case).save();
    let mut impersonated = CaseFile::load(
        &saved,
        testing::author("user-worker", &worker.tokens.device_id),
        worker.actor.clone(),
    )
    .unwrap();
    impersonated
        .add(
            &testing::visit("user-worker", testing::at(5), 50),
            testing::at(5),
        )
        .unwrap();
    officer.docs.insert(case.into(), impersonated);

    let (reply, _) = officer.sync_round(&app).await;
    let refused = reply.documents.iter().find(|d| d.case_id == case).unwrap();
    let error = refused.error.clone().unwrap();
    assert_eq!(error.code, "foreign_actor");
    assert!(
        error.message.contains(&worker.actor.to_hex_string()),
        "{}",
        error.message
    );
    assert!(refused.message.is_none());
    // The other document of the same request went through untouched by the refusal.
    assert!(
        reply
            .documents
            .iter()
            .any(|d| d.case_id == "case-demo-1" && d.error.is_none())
    );

    let after = app.storage().document(case).await.unwrap().unwrap();
    assert_eq!(after.snapshot, before.snapshot);
    assert_eq!(after.heads, before.heads);
    assert_eq!(
        app.storage().changes(case).await.unwrap().len(),
        changes_before
    );
}

async fn a_record_that_names_someone_else_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut officer = Phone::sign_in(&app, "officer", 1).await;
    let worker = Phone::sign_in(&app, "worker", 2).await;
    officer.sync_until_quiet(&app).await;
    let case = "case-demo-2";
    let before = stored_heads(&app, case).await;

    // The officer's own actor, but the record claims the worker wrote it on the worker's phone.
    let saved = officer.doc(case).save();
    let mut forged = CaseFile::load(
        &saved,
        testing::author("user-worker", &worker.tokens.device_id),
        officer.actor.clone(),
    )
    .unwrap();
    forged
        .add(
            &testing::visit("user-worker", testing::at(5), 50),
            testing::at(5),
        )
        .unwrap();
    officer.docs.insert(case.into(), forged);

    let (reply, _) = officer.sync_round(&app).await;
    let refused = reply.documents.iter().find(|d| d.case_id == case).unwrap();
    let error = refused.error.clone().unwrap();
    assert_eq!(error.code, "invalid_document");
    assert!(error.message.contains("misattributed"), "{}", error.message);
    assert_eq!(stored_heads(&app, case).await, before);
}

async fn an_invalid_document_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut officer = Phone::sign_in(&app, "officer", 1).await;
    officer.sync_until_quiet(&app).await;
    let case = "case-demo-1";
    let before = stored_heads(&app, case).await;

    // An attendance mark sync-core cannot read, written straight into the document.
    let doc = officer.doc(case).doc_mut();
    let (_, attendance) = doc.get(automerge::ROOT, "attendance").unwrap().unwrap();
    doc.put(&attendance, "child|not-a-date|XX", "??").unwrap();
    doc.commit();

    let (reply, _) = officer.sync_round(&app).await;
    let refused = reply.documents.iter().find(|d| d.case_id == case).unwrap();
    assert_eq!(refused.error.as_ref().unwrap().code, "invalid_document");
    assert_eq!(stored_heads(&app, case).await, before);
}

async fn retrying_a_sync_is_harmless(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut officer = Phone::sign_in(&app, "officer", 1).await;
    officer.sync_until_quiet(&app).await;
    let case = "case-demo-1";
    officer.record_visit(case, 1, 100);
    let (request, _) = officer.next_request();

    // The same request three times, as a phone does when replies are lost.
    let mut replies = Vec::new();
    for _ in 0..3 {
        let body = serde_json::to_vec(&request).unwrap();
        let response = app.post_sync_raw(officer.access_token(), body).await;
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let reply: doorstep_server::api::SyncResponse = response.json().await.unwrap();
        assert!(reply.documents.iter().all(|d| d.error.is_none()));
        replies.push(stored_heads(&app, case).await);
    }
    assert_eq!(replies[0], replies[1]);
    assert_eq!(replies[1], replies[2]);
    let changes = app.storage().changes(case).await.unwrap();
    let mut hashes: Vec<_> = changes.iter().map(|c| c.hash.clone()).collect();
    hashes.dedup();
    assert_eq!(hashes.len(), changes.len());
    assert_eq!(changes.iter().filter(|c| c.device_id.is_some()).count(), 1);

    // And the phone still converges afterwards.
    officer.sync_until_quiet(&app).await;
    assert_eq!(
        heads_key(&officer.doc(case).heads()),
        stored_heads(&app, case).await
    );
}

async fn a_deallocated_case_is_dropped(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut worker = Phone::sign_in(&app, "worker", 2).await;
    worker.sync_until_quiet(&app).await;
    assert!(worker.docs.contains_key("case-demo-2"));

    app.storage()
        .deallocate("case-demo-2", "user-worker")
        .await
        .unwrap();
    let (reply, _) = worker.sync_round(&app).await;
    assert_eq!(reply.drop, ["case-demo-2"]);
    assert_eq!(reply.allocated, ["case-demo-3"]);
    let dropped = reply
        .documents
        .iter()
        .find(|d| d.case_id == "case-demo-2")
        .unwrap();
    assert_eq!(dropped.error.as_ref().unwrap().code, "not_found");
    assert!(!worker.docs.contains_key("case-demo-2"));

    // The next request no longer mentions it: the server forgets the device's state for it
    // (it may repeat the drop once, which is harmless), then stops asking.
    worker.sync_round(&app).await;
    let (reply, _) = worker.sync_round(&app).await;
    assert!(reply.drop.is_empty());
    assert!(!worker.docs.contains_key("case-demo-2"));
}

/// Not a backend matter: the reply to an empty request lists the caseload.
#[tokio::test]
async fn an_empty_request_lists_the_caseload() {
    let app = spawn_app(Backend::Sqlite).await;
    let officer = Phone::sign_in(&app, "officer", 1).await;
    let response = app
        .post_sync_raw(officer.access_token(), br#"{"documents":[]}"#.to_vec())
        .await;
    let reply: doorstep_server::api::SyncResponse = response.json().await.unwrap();
    assert_eq!(reply.allocated, ["case-demo-1", "case-demo-2"]);
    assert_eq!(reply.documents.len(), 2);
    assert!(reply.documents.iter().all(|d| d.message.is_some()));
}

async fn the_caches_serve_repeat_syncs_but_never_a_stale_document(backend: Backend) {
    let app = spawn_app(backend).await;
    let case = "case-demo-1";
    let mut officer = Phone::sign_in(&app, "officer", 1).await;
    officer.sync_until_quiet(&app).await;
    let hits = |app| counter(app, "doorstep_graph_cache_hits_total");
    let misses = |app| counter(app, "doorstep_graph_cache_misses_total");
    let parsed = |app| counter(app, "doorstep_document_cache_misses_total");
    let parsed_cached = |app| counter(app, "doorstep_document_cache_hits_total");
    let (hits_before, parsed_before) = (hits(&app).await, parsed(&app).await);

    // A repeat sync is answered from the change graph the last one left in the cache; the
    // document is parsed only for the message that brings the new visit.
    let record = async |officer: &mut Phone, minute| {
        officer.record_visit(case, minute, 100);
        officer.sync_until_quiet(&app).await;
    };
    record(&mut officer, 5).await;
    assert!(
        hits(&app).await > hits_before,
        "a repeat sync used the cached graph"
    );
    assert_eq!(
        parsed(&app).await,
        parsed_before + 1,
        "parsed once, for the visit"
    );
    // The next visit's message finds the parsed document in the cache.
    let parsed_cached_before = parsed_cached(&app).await;
    record(&mut officer, 6).await;
    assert_eq!(parsed(&app).await, parsed_before + 1, "not parsed again");
    assert!(parsed_cached(&app).await > parsed_cached_before);
    assert_eq!(
        heads_key(&officer.doc(case).heads()),
        stored_heads(&app, case).await
    );
    let misses_before = misses(&app).await;

    // A write that does not go through sync (a staff import of register marks) changes the
    // stored heads, so the phone's next sync is served the imported marks, never the graph
    // from before the import.
    let lead = app.tokens("lead", &testing::actor(9)).await;
    let view: serde_json::Value = app
        .client
        .get(app.url(&format!("/api/v1/cases/{case}")))
        .bearer_auth(&lead.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let child = view["file"]["children"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let response = app
        .client
        .post(app.url(&format!("/api/v1/cases/{case}/register-marks")))
        .bearer_auth(&lead.access_token)
        .header("content-type", "text/csv")
        .body(format!(
            "pupil_ref,date,session,code\n{child},2026-01-05,AM,G\n"
        ))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    officer.sync_until_quiet(&app).await;
    assert!(
        misses(&app).await > misses_before,
        "the graph from before the import was not used: it was built again"
    );
    assert_eq!(
        officer.doc(case).marks(&child).unwrap().len(),
        1,
        "the phone got the import"
    );
    assert_eq!(
        heads_key(&officer.doc(case).heads()),
        stored_heads(&app, case).await
    );
}

async fn staff_reads_use_the_document_cache_and_see_every_new_change(backend: Backend) {
    let app = spawn_app(backend).await;
    let case = "case-demo-1";
    let lead = app.tokens("lead", &testing::actor(9)).await;
    let read = || async {
        let view: serde_json::Value = app
            .client
            .get(app.url(&format!("/api/v1/cases/{case}")))
            .bearer_auth(&lead.access_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        view
    };
    read().await;
    let hits_before = counter(&app, "doorstep_document_cache_hits_total").await;
    let first = read().await;
    assert!(
        counter(&app, "doorstep_document_cache_hits_total").await > hits_before,
        "a repeat read is served from the cache"
    );

    // A phone's visit arrives: the next read shows it (the cached parse is not reused stale).
    let mut officer = Phone::sign_in(&app, "officer", 1).await;
    officer.sync_until_quiet(&app).await;
    officer.record_visit(case, 5, 100);
    officer.sync_until_quiet(&app).await;
    let second = read().await;
    assert_ne!(first["heads"], second["heads"]);
    assert_eq!(second["heads"], stored_heads(&app, case).await.as_str());
    assert_eq!(
        second["file"]["visits"].as_array().unwrap().len(),
        first["file"]["visits"].as_array().unwrap().len() + 1
    );
}

async fn new_changes_are_appended_to_the_stored_document_and_compacted_every_so_often(
    backend: Backend,
) {
    use doorstep_server::sync::COMPACT_AFTER_CHANGES;
    let app = spawn_app(backend).await;
    let case = "case-demo-1";
    let mut officer = Phone::sign_in(&app, "officer", 1).await;
    officer.sync_until_quiet(&app).await;
    let stored = || async {
        let mut tx = app.storage().begin_sync_read().await.unwrap();
        tx.load_documents("nobody", &[case.to_string()])
            .await
            .unwrap()
            .remove(0)
    };
    // A case of a few changes is compacted at once (appended changes would be a large share
    // of it): give it some history first.
    const HISTORY: i64 = 16;
    for n in 0..HISTORY {
        officer.record_visit(case, 1000 + n, 50);
    }
    officer.sync_until_quiet(&app).await;
    let full = stored().await;
    assert_eq!(full.appended_changes, 0);

    // One visit: the stored bytes are the old bytes with the new change after them.
    officer.record_visit(case, 5, 100);
    officer.sync_until_quiet(&app).await;
    let appended = stored().await;
    assert_eq!(appended.appended_changes, 1);
    assert!(appended.snapshot.starts_with(&full.snapshot));
    let loaded = CaseFile::load(
        &appended.snapshot,
        testing::author("t", "t"),
        testing::actor(70),
    )
    .unwrap();
    assert_eq!(
        loaded.list::<HomeVisit>().unwrap().len(),
        1 + HISTORY as usize
    );

    // Enough visits to pass the threshold: compacted into one full save, still the same file.
    for n in 0..COMPACT_AFTER_CHANGES {
        officer.record_visit(case, 10 + n, 50);
        if n % 16 == 15 {
            officer.sync_until_quiet(&app).await;
        }
    }
    officer.sync_until_quiet(&app).await;
    let compacted = stored().await;
    assert_eq!(compacted.appended_changes, 0, "compacted");
    let mut loaded = CaseFile::load(
        &compacted.snapshot,
        testing::author("t", "t"),
        testing::actor(71),
    )
    .unwrap();
    assert_eq!(
        loaded.list::<HomeVisit>().unwrap().len(),
        1 + (HISTORY + COMPACT_AFTER_CHANGES) as usize
    );
    assert_eq!(heads_key(&loaded.heads()), compacted.heads);
    assert_eq!(heads_key(&officer.doc(case).heads()), compacted.heads);
}

async fn an_idle_poll_parses_nothing_and_a_change_elsewhere_still_arrives(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut officer = Phone::sign_in(&app, "officer", 1).await;
    let mut worker = Phone::sign_in(&app, "worker", 2).await;
    officer.sync_until_quiet(&app).await;
    worker.sync_until_quiet(&app).await;
    let parsed = || async {
        counter(&app, "doorstep_document_cache_hits_total").await
            + counter(&app, "doorstep_document_cache_misses_total").await
    };

    // In sync and with nothing to say: the poll touches no document.
    let before = parsed().await;
    let (request, sent_any) = officer.next_request();
    assert!(!sent_any);
    let (reply, received_any) = officer.send(&app, &request).await;
    assert!(!received_any);
    assert!(reply.documents.iter().all(|d| d.error.is_none()));
    assert_eq!(reply.documents.len(), request.documents.len());
    assert_eq!(parsed().await, before, "an idle poll parsed no document");

    // The worker records a visit in the shared case: the officer's next poll gets it.
    let case = "case-demo-2";
    worker.record_visit(case, 9, 80);
    worker.sync_until_quiet(&app).await;
    officer.sync_until_quiet(&app).await;
    assert_eq!(
        heads_key(&officer.doc(case).heads()),
        stored_heads(&app, case).await
    );
}

/// Two phones send new visits to the same cases at the same moment, for several rounds. Both
/// requests run at once, but each case's two uploads are taken one after the other (the
/// upload queue never lets two uploads to one case run at once), so none is computed on a
/// version the other then moves, and none is computed again.
async fn two_phones_uploading_to_the_same_cases_at_once_compute_each_upload_once(backend: Backend) {
    let app = spawn_app(backend).await;
    upload_to_the_same_cases_at_once(&app, &app).await;
    let retries = counter(&app, "doorstep_sync_retries_total").await;
    assert_eq!(retries, 0, "an upload was computed again");
}

/// Two instances on one PostgreSQL database, each with its own upload queue: two phones, one
/// syncing through each, send new visits to the same cases at the same moment. Their uploads
/// to a case can be computed at once on the same stored version; the sync that commits second
/// then finds the case moved and runs again (the optimistic commit's retry, which one
/// instance no longer needs for its own uploads). Every visit still lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phones_uploading_to_the_same_cases_through_two_instances_at_once_all_land() {
    let first = spawn_app(Backend::Postgres).await;
    let second = spawn_second_instance(&first).await;
    upload_to_the_same_cases_at_once(&first, &second).await;
    // Usually some, but how the two instances' uploads meet is up to the scheduler.
    let mut retries = 0;
    for instance in [&first, &second] {
        retries += counter(instance, "doorstep_sync_retries_total").await;
    }
    eprintln!("syncs run again across the two instances: {retries}");
}

/// A phone syncing through `first` and one through `second` send new visits to the same cases
/// (more than one group of eight) at the same moment, for several rounds. Every visit lands
/// once, attributed to its device, and both phones end with what the server holds.
async fn upload_to_the_same_cases_at_once(first: &TestApp, second: &TestApp) {
    const CASES: usize = 11;
    const ROUNDS: i64 = 3;
    let mut officer = Phone::sign_in(first, "officer", 1).await;
    let mut worker = Phone::sign_in(second, "worker", 2).await;
    let mut cases = Vec::new();
    for _ in 0..CASES {
        cases.push(new_case(first, &["officer", "worker"]).await);
    }
    officer.sync_until_quiet(first).await;
    worker.sync_until_quiet(second).await;

    for round in 0..ROUNDS {
        for (phone, offset) in [(&mut officer, 0), (&mut worker, 500)] {
            let visitor = phone.tokens.user.id.clone();
            for (i, case_id) in cases.iter().enumerate() {
                let at = testing::at(offset + round * 100 + i as i64);
                phone
                    .doc(case_id)
                    .add(&testing::visit(&visitor, at, 200), at)
                    .unwrap();
            }
        }
        let (officer_request, _) = officer.next_request();
        let (worker_request, _) = worker.next_request();
        // Both uploads go out together.
        tokio::join!(
            officer.send(first, &officer_request),
            worker.send(second, &worker_request),
        );
        officer.sync_until_quiet(first).await;
        worker.sync_until_quiet(second).await;
    }

    for case_id in &cases {
        let stored = stored_heads(first, case_id).await;
        assert_eq!(heads_key(&officer.doc(case_id).heads()), stored);
        assert_eq!(heads_key(&worker.doc(case_id).heads()), stored);
        let changes = first.storage().changes(case_id).await.unwrap();
        for phone in [&officer, &worker] {
            let device = phone.tokens.device_id.as_str();
            let written = changes
                .iter()
                .filter(|c| c.device_id.as_deref() == Some(device))
                .count();
            assert_eq!(written, ROUNDS as usize, "changes stored for {device}");
        }
    }
}

/// The answer to an upload waits in memory until the request's other uploads are done, so it
/// carries none of the server's changes; the phone's next request asks for them, and its
/// answer carries them.
async fn an_uploads_answer_carries_no_changes_and_the_next_request_gets_them(backend: Backend) {
    use base64::Engine;
    let decode = |message: &Option<String>| {
        let message = message.as_deref().expect("an answer");
        base64::engine::general_purpose::STANDARD
            .decode(message)
            .unwrap()
    };
    let app = spawn_app(backend).await;
    let mut officer = Phone::sign_in(&app, "officer", 1).await;
    let mut worker = Phone::sign_in(&app, "worker", 2).await;
    officer.sync_until_quiet(&app).await;
    worker.sync_until_quiet(&app).await;
    let case = "case-demo-2";
    worker.record_visit(case, 30, 100);
    worker.sync_until_quiet(&app).await;

    officer.record_visit(case, 60, 100);
    let (request, _) = officer.next_request();
    let (reply, _) = officer.send(&app, &request).await;
    let answer = reply.documents.iter().find(|d| d.case_id == case).unwrap();
    let answer = decode(&answer.message);
    assert!(!doorstep_sync_core::brings_changes(&answer));
    let stored = stored_heads(&app, case).await;
    assert_ne!(heads_key(&officer.doc(case).heads()), stored);

    let (reply, _) = officer.sync_round(&app).await;
    let answer = reply.documents.iter().find(|d| d.case_id == case).unwrap();
    assert!(doorstep_sync_core::brings_changes(&decode(&answer.message)));
    assert_eq!(heads_key(&officer.doc(case).heads()), stored);
}
