//! Sign-in, the caseload, the case page, resolving a conflict, the evidence pack.

use reqwest::StatusCode;

use crate::helpers::{Backend, both_backends, spawn_app};
use crate::{Browser, app_with_casework, attribute_after, csrf_of, stored_heads};

both_backends!(
    sign_in_sets_a_safe_session_cookie,
    caseload_shows_figures_and_what_is_new,
    case_page_shows_the_merged_file,
    resolving_a_conflict_writes_it_under_the_users_name,
    evidence_pack_as_html_and_pdf,
    uploaded_evidence_shows_a_thumbnail_and_its_signed_receipt,
);

async fn sign_in_sets_a_safe_session_cookie(backend: Backend) {
    let app = spawn_app(backend).await;
    let browser = crate::Browser::new(&app);
    // Not signed in: pages send you to the sign-in form.
    let response = browser.get("/cases").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()["location"], "/sign-in");

    let form = browser.page("/sign-in", StatusCode::OK).await;
    let csrf = csrf_of(&form);
    let wrong = browser
        .post(
            "/sign-in",
            &[
                ("username", "officer"),
                ("password", "not-it"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(
        wrong
            .text()
            .await
            .unwrap()
            .contains("Unknown username or wrong password")
    );

    let form = browser.page("/sign-in", StatusCode::OK).await;
    let response = browser
        .post(
            "/sign-in",
            &[
                ("username", "officer"),
                ("password", crate::helpers::DEMO_PASSWORD),
                ("csrf", &csrf_of(&form)),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let session_cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("doorstep_session="))
        .expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(session_cookie.contains(attribute), "{session_cookie}");
    }
    // Served on 127.0.0.1 (no TLS), so not `Secure`; any other host gets `Secure` (unit test).
    assert!(!session_cookie.contains("Secure"), "{session_cookie}");

    let page = browser.get("/cases").await;
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("frame-ancestors 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    assert!(html.contains("My caseload") && html.contains("Demo Attendance Officer"));

    // Signing out ends the session on the server.
    let out = browser
        .post("/sign-out", &[("csrf", &csrf_of(&html))])
        .await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(browser.get("/cases").await.status(), StatusCode::SEE_OTHER);
}

async fn caseload_shows_figures_and_what_is_new(backend: Backend) {
    let app = app_with_casework(backend).await;
    let officer = Browser::sign_in(&app, "officer").await;
    let html = officer.page("/cases", StatusCode::OK).await;
    // The officer's two cases, not the worker's third.
    assert!(html.contains("ATT-DEMO-0001") && html.contains("ATT-DEMO-0002"));
    assert!(!html.contains("ATT-DEMO-0003"));
    // Two days in five unauthorised: 60% attendance, severe absence no, persistent yes;
    // the penalty-notice threshold is met; one open conflict.
    assert!(html.contains("60.0%"), "{html}");
    assert!(html.contains("persistent absence"));
    assert!(html.contains("threshold met"));
    assert!(html.contains("not opened yet"));

    officer.page("/cases/case-demo-1", StatusCode::OK).await;
    let html = officer.page("/cases", StatusCode::OK).await;
    assert!(
        !html.contains(" new<"),
        "nothing new right after a visit: {html}"
    );
    // A record arrives after the officer's visit.
    doorstep_server::web::demo::edit_stored_case(
        app.storage(),
        "case-demo-1",
        "user-worker",
        |file| {
            file.add(
                &doorstep_sync_core::testing::letter(3, chrono::Utc::now()),
                chrono::Utc::now(),
            )?;
            Ok(())
        },
    )
    .await
    .unwrap();
    let html = officer.page("/cases", StatusCode::OK).await;
    assert!(html.contains("1 new"), "{html}");
    // An amendment counts too.
    doorstep_server::web::demo::edit_stored_case(
        app.storage(),
        "case-demo-1",
        "user-officer",
        |file| {
            let visit = file
                .list::<doorstep_sync_core::records::HomeVisit>()?
                .into_iter()
                .find(|v| v.finalised.is_some())
                .unwrap();
            file.amend(
                doorstep_sync_core::Collection::Visits,
                &visit.id,
                "location",
                serde_json::json!("grandparent's home"),
                "the family had moved in with the grandparents",
                chrono::Utc::now(),
            )?;
            Ok(())
        },
    )
    .await
    .unwrap();
    let html = officer.page("/cases", StatusCode::OK).await;
    assert!(html.contains("2 new"), "{html}");
}

async fn case_page_shows_the_merged_file(backend: Backend) {
    let app = app_with_casework(backend).await;
    let lead = Browser::sign_in(&app, "lead").await;
    let html = lead.page("/cases/case-demo-1", StatusCode::OK).await;
    for expected in [
        "Case ATT-DEMO-0001",
        "Evidence readiness",
        "days left",
        "Home visit: card left (unannounced)",
        "Home visit: full visit (unannounced)",
        "Contact: Letter 2, did not engage",
        "Pupil voice (scaling thermometer)",
        "Parent voice (conversation)",
        "Evidence: drawing",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "Amendment trail",
        "Wednesday was agreed at the visit and left out of the note",
        "Demo Attendance Officer (user-officer)",
        "device time",
        "received 20",
        "Keep this value",
        "Sleep is poor since the move",
        "Bedroom shared with two siblings",
    ] {
        assert!(html.contains(expected), "missing {expected:?}");
    }
    // Every readiness link points at a record on the page.
    let readiness =
        &html[html.find("id=\"readiness\"").unwrap()..html.find("id=\"attendance\"").unwrap()];
    let links: Vec<&str> = readiness
        .split("href=\"#")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect();
    assert!(links.len() >= 6, "{links:?}");
    for link in links {
        assert!(
            html.contains(&format!("id=\"{link}\"")),
            "no record {link} on the page"
        );
    }
    // A worker who holds the case sees it too.
    let worker_case = Browser::sign_in(&app, "worker").await;
    worker_case.page("/cases/case-demo-2", StatusCode::OK).await;
}

async fn resolving_a_conflict_writes_it_under_the_users_name(backend: Backend) {
    let app = app_with_casework(backend).await;
    let lead = Browser::sign_in(&app, "lead").await;
    let html = lead.page("/cases/case-demo-1", StatusCode::OK).await;
    let action = attribute_after(&html, "action=\"/cases/case-demo-1/conflicts/").unwrap();
    let chosen = attribute_after(&html, "name=\"chosen\" value=\"").unwrap();
    let response = lead
        .post(
            &format!("/cases/case-demo-1/conflicts/{action}"),
            &[("csrf", &csrf_of(&html)), ("chosen", &chosen)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let html = lead
        .page("/cases/case-demo-1?resolved=1", StatusCode::OK)
        .await;
    assert!(html.contains("Conflict resolved."));
    assert!(!html.contains("Keep this value"));
    assert!(
        html.contains("by Demo Attendance Lead (user-lead)"),
        "{html}"
    );
}

async fn evidence_pack_as_html_and_pdf(backend: Backend) {
    let app = app_with_casework(backend).await;
    let officer = Browser::sign_in(&app, "officer").await;
    let html = officer
        .page("/cases/case-demo-1/evidence-pack", StatusCode::OK)
        .await;
    let changes = app.storage().changes("case-demo-1").await.unwrap();
    assert!(changes.len() >= 2);
    for change in &changes {
        assert!(
            html.contains(&change.hash),
            "change {} missing",
            change.hash
        );
        assert!(html.contains(&change.actor_id), "actor of {}", change.hash);
    }
    for expected in [
        "Evidence pack: case ATT-DEMO-0001",
        "Attendance figures",
        "Contact attempts",
        "early call, before school; card left",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "receipt",
        "Wednesday was agreed at the visit and left out of the note",
        &stored_heads(&app, "case-demo-1").await.replace(',', " "),
    ] {
        assert!(html.contains(expected), "missing {expected:?}");
    }

    let pdf = officer.get("/cases/case-demo-1/evidence-pack.pdf").await;
    assert_eq!(pdf.status(), StatusCode::OK);
    assert_eq!(pdf.headers()["content-type"], "application/pdf");
    assert!(
        pdf.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("evidence-pack-ATT-DEMO-0001.pdf")
    );
    let bytes = pdf.bytes().await.unwrap();
    assert!(bytes.starts_with(b"%PDF-"));
    let text: String = bytes.iter().map(|&b| b as char).collect();
    assert!(text.contains("(Evidence pack: case ATT-DEMO-0001) Tj"));
    assert!(
        text.contains(&changes[0].hash[..40]),
        "change hashes are in the PDF"
    );
    assert!(text.trim_end().ends_with("%%EOF"));
}

/// The demo drawing's recorded hash is the SHA-256 of these (invented) bytes.
const DEMO_DRAWING_BYTES: &[u8] = b"test";
const DEMO_DRAWING_SHA256: &str =
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

async fn uploaded_evidence_shows_a_thumbnail_and_its_signed_receipt(backend: Backend) {
    let app = app_with_casework(backend).await;
    let officer = Browser::sign_in(&app, "officer").await;
    let file_path = format!("/cases/case-demo-1/evidence/{DEMO_DRAWING_SHA256}");
    let before = officer.page("/cases/case-demo-1", StatusCode::OK).await;
    assert!(before.contains("No file stored on the server yet"));
    assert!(!before.contains(&file_path));
    assert_eq!(
        officer.get(&file_path).await.status(),
        StatusCode::NOT_FOUND
    );

    // The officer's phone uploads the drawing through the API.
    let tokens = app
        .tokens("officer", &doorstep_sync_core::testing::actor(41))
        .await;
    let started: serde_json::Value = app
        .client
        .post(app.url("/api/v1/cases/case-demo-1/evidence/uploads"))
        .bearer_auth(&tokens.access_token)
        .json(&serde_json::json!({
            "sha256": DEMO_DRAWING_SHA256,
            "size": DEMO_DRAWING_BYTES.len(),
            "media_type": "image/jpeg",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let upload_id = started["upload_id"].as_str().unwrap();
    let done: serde_json::Value = app
        .client
        .put(app.url(&format!(
            "/api/v1/cases/case-demo-1/evidence/uploads/{upload_id}?offset=0"
        )))
        .bearer_auth(&tokens.access_token)
        .body(DEMO_DRAWING_BYTES)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let receipt = &done["receipt"];
    let signature = receipt["signature"].as_str().unwrap();
    let receipt_id = receipt["receipt_id"].as_str().unwrap();

    // The case page shows the image as a thumbnail and the receipt under it.
    let page = officer.page("/cases/case-demo-1", StatusCode::OK).await;
    assert!(
        page.contains(&format!(r#"<img class="thumb" src="{file_path}""#)),
        "a thumbnail"
    );
    assert!(page.contains(&receipt_id[..12]), "the receipt id");
    assert!(page.contains(&signature[..12]), "the signature");
    assert!(!page.contains("No file stored on the server yet"));

    // The file itself: inline, as the image type, sandboxed, never a page.
    let file = officer.get(&file_path).await;
    assert_eq!(file.status(), StatusCode::OK);
    assert_eq!(file.headers()["content-type"], "image/jpeg");
    assert_eq!(file.headers()["x-content-type-options"], "nosniff");
    let policy = file.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("sandbox"), "{policy}");
    assert!(
        file.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("inline")
    );
    assert_eq!(&file.bytes().await.unwrap()[..], DEMO_DRAWING_BYTES);

    // Someone who may not see the case gets the answer for a file that does not exist.
    let worker = Browser::sign_in(&app, "worker").await;
    let forbidden = worker.get(&file_path).await;
    assert_eq!(forbidden.status(), StatusCode::NOT_FOUND);
    let missing = officer
        .get(&format!("/cases/case-demo-1/evidence/{}", "0".repeat(64)))
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        forbidden.text().await.unwrap(),
        worker
            .page(
                &format!("/cases/case-nope/evidence/{DEMO_DRAWING_SHA256}"),
                StatusCode::NOT_FOUND
            )
            .await
    );
    // Signed out: sign in first, no file.
    let anonymous = Browser::new(&app).get(&file_path).await;
    assert_ne!(anonymous.status(), StatusCode::OK);

    // The pack carries the whole receipt, signature included, in HTML and PDF.
    let pack = officer
        .page("/cases/case-demo-1/evidence-pack", StatusCode::OK)
        .await;
    assert!(pack.contains(signature), "the full signature in the pack");
    assert!(pack.contains(receipt_id));
    let pdf = officer.get("/cases/case-demo-1/evidence-pack.pdf").await;
    let text: String = pdf
        .bytes()
        .await
        .unwrap()
        .iter()
        .map(|&b| b as char)
        .collect();
    assert!(text.contains(receipt_id), "the receipt in the PDF");
}
