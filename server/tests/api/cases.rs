//! The staff API and the access matrix: each role x (allocated / own school unallocated /
//! other school) x each endpoint.

use doorstep_server::api::{CaseResponse, CaseloadResponse, CreatedCase};
use doorstep_server::auth::password;
use doorstep_server::cases;
use doorstep_server::storage::{Role, School, User};
use doorstep_sync_core::records::HomeVisit;
use doorstep_sync_core::testing;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, DEMO_PASSWORD, Phone, TestApp, both_backends, spawn_app};

both_backends!(
    the_access_matrix_holds_for_every_role_and_endpoint,
    staff_create_and_allocate_cases_that_reach_phones,
    a_conflict_is_shown_until_a_person_resolves_it,
    register_marks_import_all_or_nothing_with_a_per_line_report,
);

/// Adds an invented second school with one unallocated case, its lead, and two workers to
/// allocate to (one per school).
async fn seed_second_school(app: &TestApp) {
    let storage = app.storage();
    storage
        .create_school(&School {
            id: "school-hilltop".into(),
            name: "Hilltop Academy (invented)".into(),
            created_at: 1,
        })
        .await
        .unwrap();
    let hash = password::hash(DEMO_PASSWORD.into()).await.unwrap();
    for (id, username, school, role) in [
        (
            "user-lead-b",
            "lead-b",
            "school-hilltop",
            Role::SchoolAttendanceLead,
        ),
        (
            "user-worker-b",
            "worker-b",
            "school-hilltop",
            Role::FamilySupportWorker,
        ),
        (
            "user-worker2",
            "worker2",
            "school-riverside",
            Role::FamilySupportWorker,
        ),
    ] {
        storage
            .create_user(&User {
                id: id.into(),
                school_id: Some(school.into()),
                username: username.into(),
                display_name: format!("Invented {username}"),
                role,
                password_hash: hash.clone(),
                created_at: 1,
                disabled_at: None,
            })
            .await
            .unwrap();
    }
    let details = doorstep_sync_core::records::CaseDetails {
        school_id: "school-hilltop".into(),
        school_name: "Hilltop Academy (invented)".into(),
        ..testing::case_details()
    };
    cases::create_case(
        storage,
        "case-b1",
        "school-hilltop",
        &details,
        "user-lead-b",
        testing::at(0),
        |_| Ok(()),
    )
    .await
    .unwrap();
}

async fn get(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn put(app: &TestApp, token: &str, path: &str) -> StatusCode {
    app.client
        .put(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

async fn the_access_matrix_holds_for_every_role_and_endpoint(backend: Backend) {
    let app = spawn_app(backend).await;
    seed_second_school(&app).await;
    let users = ["officer", "worker", "lead", "dsl", "admin", "lead-b"];
    let mut phones = Vec::new();
    for (n, username) in users.iter().enumerate() {
        phones.push(Phone::sign_in(&app, username, n as u32 + 1).await);
    }
    let cases = ["case-demo-1", "case-demo-3", "case-b1"];
    use StatusCode as S;
    const OK: S = S::OK;
    const NF: S = S::NOT_FOUND;
    // Reading one case: by role, for case-demo-1 (officer's), case-demo-3 (worker's), case-b1.
    let read: [[S; 3]; 6] = [
        [OK, NF, NF], // officer: allocated only
        [NF, OK, NF], // worker: allocated only
        [OK, OK, NF], // lead: own school
        [OK, OK, NF], // dsl: own school
        [OK, OK, OK], // admin: everything
        [NF, NF, OK], // lead of the other school
    ];
    for (phone, expected) in phones.iter().zip(read) {
        for (case_id, status) in cases.iter().zip(expected) {
            let response = get(
                &app,
                phone.access_token(),
                &format!("/api/v1/cases/{case_id}"),
            )
            .await;
            assert_eq!(
                response.status(),
                status,
                "{} reads {case_id}",
                phone.username
            );
            if status == OK {
                let case: CaseResponse = response.json().await.unwrap();
                assert_eq!(case.file.case_id.as_deref(), Some(*case_id));
            }
        }
    }
    // Unknown and forbidden look the same.
    let unknown = get(&app, phones[0].access_token(), "/api/v1/cases/case-nowhere").await;
    let forbidden = get(&app, phones[0].access_token(), "/api/v1/cases/case-b1").await;
    assert_eq!(unknown.status(), forbidden.status());
    assert_eq!(
        unknown.text().await.unwrap(),
        forbidden.text().await.unwrap()
    );

    // The caseload lists exactly what each may read.
    let caseloads: [&[&str]; 6] = [
        &["case-demo-1", "case-demo-2"],
        &["case-demo-2", "case-demo-3"],
        &["case-demo-1", "case-demo-2", "case-demo-3"],
        &["case-demo-1", "case-demo-2", "case-demo-3"],
        &["case-b1", "case-demo-1", "case-demo-2", "case-demo-3"],
        &["case-b1"],
    ];
    for (phone, expected) in phones.iter().zip(caseloads) {
        let caseload: CaseloadResponse = get(&app, phone.access_token(), "/api/v1/cases")
            .await
            .json()
            .await
            .unwrap();
        let ids: Vec<&str> = caseload.cases.iter().map(|c| c.case_id.as_str()).collect();
        assert_eq!(ids, expected, "caseload of {}", phone.username);
    }

    // Sync: a device receives exactly the cases allocated to its user, whatever it may read.
    let synced: [&[&str]; 6] = [
        &["case-demo-1", "case-demo-2"],
        &["case-demo-2", "case-demo-3"],
        &[],
        &[],
        &[],
        &[],
    ];
    for (phone, expected) in phones.iter_mut().zip(synced) {
        phone.sync_until_quiet(&app).await;
        assert_eq!(
            phone.docs.keys().collect::<Vec<_>>(),
            expected,
            "{} syncs",
            phone.username
        );
        let request = doorstep_server::api::SyncRequest {
            documents: cases
                .iter()
                .map(|c| doorstep_server::api::SyncDocumentIn {
                    case_id: c.to_string(),
                    message: None,
                })
                .collect(),
        };
        let (reply, _) = phone.send(&app, &request).await;
        for document in reply.documents.iter().take(3) {
            let allocated = expected.contains(&document.case_id.as_str());
            assert_eq!(
                document.error.as_ref().map(|e| e.code.as_str()),
                if allocated { None } else { Some("not_found") },
                "{} syncs {}",
                phone.username,
                document.case_id
            );
        }
    }

    // Allocating: 204 for managers of the school, 403 for those who only read, 404 otherwise.
    const NC: S = S::NO_CONTENT;
    const FB: S = S::FORBIDDEN;
    let allocate: [[S; 3]; 6] = [
        [FB, NF, NF],
        [NF, FB, NF],
        [NC, NC, NF],
        [NC, NC, NF],
        [NC, NC, NC],
        [NF, NF, NC],
    ];
    for (phone, expected) in phones.iter().zip(allocate) {
        for (case_id, status) in cases.iter().zip(expected) {
            let target = if *case_id == "case-b1" {
                "user-worker-b"
            } else {
                "user-worker2"
            };
            let path = format!("/api/v1/cases/{case_id}/allocations/{target}");
            assert_eq!(
                put(&app, phone.access_token(), &path).await,
                status,
                "{} allocates {case_id}",
                phone.username
            );
        }
    }
    // Staff of another school cannot be given this school's case.
    let path = "/api/v1/cases/case-demo-1/allocations/user-worker-b";
    assert_eq!(
        put(&app, phones[4].access_token(), path).await,
        S::UNPROCESSABLE_ENTITY
    );
}

async fn staff_create_and_allocate_cases_that_reach_phones(backend: Backend) {
    let app = spawn_app(backend).await;
    seed_second_school(&app).await;
    let lead = app.tokens("lead", &testing::actor(1)).await;
    let officer_tokens = app.tokens("officer", &testing::actor(2)).await;
    let details = serde_json::to_value(testing::case_details()).unwrap();

    let create = |token: String, body: serde_json::Value| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/api/v1/cases"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    // Workers do not create cases; leads create for their own school only.
    let response = create(
        officer_tokens.access_token.clone(),
        json!({ "details": details }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let mut other_school = details.clone();
    other_school["school_id"] = json!("school-hilltop");
    let response = create(
        lead.access_token.clone(),
        json!({ "details": other_school }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let mut unknown_school = details.clone();
    unknown_school["school_id"] = json!("school-nowhere");
    let response = create(
        lead.access_token.clone(),
        json!({ "details": unknown_school }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let mut empty_reference = details.clone();
    empty_reference["reference"] = json!("  ");
    let response = create(
        lead.access_token.clone(),
        json!({ "details": empty_reference }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let response = create(lead.access_token.clone(), json!({ "details": details })).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: CreatedCase = response.json().await.unwrap();

    // Allocated to the officer, it reaches the officer's phone; deallocated, it is dropped.
    let mut officer = Phone::sign_in(&app, "officer", 3).await;
    officer.sync_until_quiet(&app).await;
    assert!(!officer.docs.contains_key(&created.case_id));
    let path = format!("/api/v1/cases/{}/allocations/user-officer", created.case_id);
    assert_eq!(
        put(&app, &lead.access_token, &path).await,
        StatusCode::NO_CONTENT
    );
    officer.sync_until_quiet(&app).await;
    assert_eq!(
        officer.doc(&created.case_id).details().unwrap().reference,
        testing::case_details().reference
    );
    let response = app
        .client
        .delete(app.url(&path))
        .bearer_auth(&lead.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (reply, _) = officer.sync_round(&app).await;
    assert_eq!(reply.drop, std::slice::from_ref(&created.case_id));
    assert!(!officer.docs.contains_key(&created.case_id));
}

async fn a_conflict_is_shown_until_a_person_resolves_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let case = "case-demo-2";
    let mut officer = Phone::sign_in(&app, "officer", 1).await;
    let mut worker = Phone::sign_in(&app, "worker", 2).await;
    officer.sync_until_quiet(&app).await;
    let visit_id = officer.record_visit(case, 0, 40);
    officer.sync_until_quiet(&app).await;
    worker.sync_until_quiet(&app).await;

    // Offline, both change what was discussed on the same (draft) visit.
    for (phone, words, minute) in [
        (&mut officer, "attendance plan agreed", 5),
        (&mut worker, "transport problems", 6),
    ] {
        let mut visit = phone.doc(case).get::<HomeVisit>(&visit_id).unwrap().body;
        visit.discussed = words.into();
        phone
            .doc(case)
            .update(&visit_id, &visit, testing::at(minute))
            .unwrap();
    }
    officer.sync_until_quiet(&app).await;
    worker.sync_until_quiet(&app).await;
    officer.sync_until_quiet(&app).await;

    let lead = app.tokens("lead", &testing::actor(3)).await;
    let path = format!("/api/v1/cases/{case}");
    let view: CaseResponse = get(&app, &lead.access_token, &path)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view.file.conflicts.len(), 1, "{:?}", view.file.conflicts);
    let conflict = &view.file.conflicts[0];
    assert_eq!(conflict.field, "discussed");
    assert_eq!(conflict.values.len(), 2);

    let resolve = |conflict_id: String, chosen: serde_json::Value| {
        let app = &app;
        let token = lead.access_token.clone();
        async move {
            app.client
                .post(app.url(&format!(
                    "/api/v1/cases/{case}/conflicts/{conflict_id}/resolve"
                )))
                .bearer_auth(token)
                .json(&json!({ "chosen": chosen }))
                .send()
                .await
                .unwrap()
        }
    };
    // A value that was never in conflict is refused; so is an unknown conflict.
    let response = resolve(conflict.id.clone(), json!("something else")).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let response = resolve("no-such-conflict".into(), json!("transport problems")).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);

    let response = resolve(conflict.id.clone(), json!("transport problems")).await;
    assert_eq!(response.status(), StatusCode::OK);
    // Resolving it again: it is gone, and the caller is told so.
    let again = resolve(conflict.id.clone(), json!("transport problems")).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);

    let view: CaseResponse = get(&app, &lead.access_token, &path)
        .await
        .json()
        .await
        .unwrap();
    assert!(view.file.conflicts.is_empty());
    assert_eq!(view.file.resolutions.len(), 1);
    assert_eq!(view.file.resolutions[0].by.user_id, "user-lead");
    // The resolution is attributed to the lead in the change log, and reaches the phones.
    let changes = app.storage().changes(case).await.unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c.user_id.as_deref() == Some("user-lead") && c.device_id.is_none())
    );
    for phone in [&mut officer, &mut worker] {
        phone.sync_until_quiet(&app).await;
        assert!(phone.doc(case).conflicts().unwrap().is_empty());
        let visit = phone.doc(case).get::<HomeVisit>(&visit_id).unwrap();
        assert_eq!(visit.body.discussed, "transport problems");
    }
}

async fn register_marks_import_all_or_nothing_with_a_per_line_report(backend: Backend) {
    let app = spawn_app(backend).await;
    let case = "case-demo-1";
    let lead = app.tokens("lead", &testing::actor(1)).await;
    let path = format!("/api/v1/cases/{case}");
    let view: CaseResponse = get(&app, &lead.access_token, &path)
        .await
        .json()
        .await
        .unwrap();
    let child = view.file.children[0].id.clone();
    let import_path = format!("/api/v1/cases/{case}/register-marks");
    let import = |token: String, content_type: &'static str, body: String| {
        let app = &app;
        let url = app.url(&import_path);
        async move {
            app.client
                .post(url)
                .bearer_auth(token)
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let heads_before = view.heads.clone();

    // Bad codes, bad dates and an unknown pupil: 422, every problem named, nothing written.
    let bad = format!(
        "pupil_ref,date,session,code\n{child},2026-01-05,AM,/\n{child},2026-01-05,PM,QQ\n\
         {child},31/02/2026,AM,/\nsomeone-else,2026-01-06,AM,/\n"
    );
    let response = import(lead.access_token.clone(), "text/csv", bad).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let report: doorstep_server::api::ImportReport = response.json().await.unwrap();
    assert_eq!(report.imported, 0);
    let reasons: Vec<(Option<u64>, &str)> = report
        .errors
        .iter()
        .map(|e| (e.line, e.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            (Some(3), "unknown_code"),
            (Some(4), "invalid_date"),
            (None, "unknown_pupil")
        ]
    );
    let after: CaseResponse = get(&app, &lead.access_token, &path)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after.heads, heads_before);

    // Who may import: managers of the school only; and only CSV.
    let officer = app.tokens("officer", &testing::actor(2)).await;
    let worker = app.tokens("worker", &testing::actor(3)).await;
    let good = format!(
        "pupil_ref,date,session,code\n{child},2026-01-05,AM,/\n{child},2026-01-05,PM,O\n\
         {child},06/01/2026,AM,/\n{child},06/01/2026,PM,\\\n"
    );
    let status = import(officer.access_token.clone(), "text/csv", good.clone())
        .await
        .status();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let status = import(worker.access_token.clone(), "text/csv", good.clone())
        .await
        .status();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let status = import(lead.access_token.clone(), "text/plain", good.clone())
        .await
        .status();
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let response = import(lead.access_token.clone(), "text/csv", good).await;
    assert_eq!(response.status(), StatusCode::OK);
    let report: doorstep_server::api::ImportReport = response.json().await.unwrap();
    assert_eq!(report.imported, 4);

    // The caseload shows the figures: 3 of 4 possible sessions, persistent absence.
    let caseload: CaseloadResponse = get(&app, &lead.access_token, "/api/v1/cases")
        .await
        .json()
        .await
        .unwrap();
    let summary = caseload.cases.iter().find(|c| c.case_id == case).unwrap();
    let figures = &summary.attendance[0];
    assert_eq!(figures.child_id, child);
    assert_eq!(figures.attendance_percent, Some(75.0));
    assert!(figures.persistent_absence);
    assert!(!figures.severe_absence);

    // The marks reach the officer's phone.
    let mut phone = Phone::sign_in(&app, "officer", 4).await;
    phone.sync_until_quiet(&app).await;
    assert_eq!(phone.doc(case).marks(&child).unwrap().len(), 4);
}
