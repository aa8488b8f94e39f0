//! Bad input: cases the user may not see, forged form posts, script in what users wrote, and
//! a stale conflict resolution.

use doorstep_server::web::demo::edit_stored_case;
use reqwest::StatusCode;

use crate::helpers::{Backend, both_backends};
use crate::{Browser, app_with_casework, attribute_after, csrf_of, stored_heads};

both_backends!(
    a_case_you_may_not_see_is_a_404_like_a_missing_one,
    forged_form_posts_are_refused_and_change_nothing,
    script_in_a_note_or_a_name_is_shown_as_text,
    a_stale_conflict_resolution_is_refused_and_changes_nothing,
    unreadable_or_foreign_values_and_signed_out_posts_change_nothing,
    cookies_are_secure_outside_localhost_and_end_with_the_account,
);

async fn a_case_you_may_not_see_is_a_404_like_a_missing_one(backend: Backend) {
    let app = app_with_casework(backend).await;
    // The worker holds case-demo-2 and case-demo-3, not case-demo-1.
    let worker = Browser::sign_in(&app, "worker").await;
    for path in [
        "/cases/case-demo-1",
        "/cases/case-demo-1/evidence-pack",
        "/cases/case-demo-1/evidence-pack.pdf",
    ] {
        let forbidden = worker.page(path, StatusCode::NOT_FOUND).await;
        let missing = worker
            .page(
                &path.replace("case-demo-1", "case-nope"),
                StatusCode::NOT_FOUND,
            )
            .await;
        assert_eq!(forbidden, missing, "{path}");
        assert!(!forbidden.contains("ATT-DEMO-0001"));
    }
    // Resolving a conflict in that case: the same 404, nothing written.
    let html = worker.page("/cases", StatusCode::OK).await;
    let before = stored_heads(&app, "case-demo-1").await;
    let response = worker
        .post(
            "/cases/case-demo-1/conflicts/anything/resolve",
            &[("csrf", &csrf_of(&html)), ("chosen", "\"x\"")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(stored_heads(&app, "case-demo-1").await, before);
}

async fn forged_form_posts_are_refused_and_change_nothing(backend: Backend) {
    let app = app_with_casework(backend).await;
    let lead = Browser::sign_in(&app, "lead").await;
    let html = lead.page("/cases/case-demo-1", StatusCode::OK).await;
    let action = attribute_after(&html, "action=\"/cases/case-demo-1/conflicts/").unwrap();
    let chosen = attribute_after(&html, "name=\"chosen\" value=\"").unwrap();
    let path = format!("/cases/case-demo-1/conflicts/{action}");
    let before = stored_heads(&app, "case-demo-1").await;
    // No token, a wrong token, another session's token.
    let other = Browser::sign_in(&app, "dsl").await;
    let others_token = csrf_of(&other.page("/cases", StatusCode::OK).await);
    for form in [
        vec![("chosen", chosen.as_str())],
        vec![("csrf", "forged"), ("chosen", chosen.as_str())],
        vec![("csrf", others_token.as_str()), ("chosen", chosen.as_str())],
    ] {
        let response = lead.post(&path, &form).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(
            response
                .text()
                .await
                .unwrap()
                .contains("nothing was changed")
        );
    }
    assert_eq!(stored_heads(&app, "case-demo-1").await, before);
    // Sign-out and sign-in forms are protected too.
    assert_eq!(
        lead.post("/sign-out", &[]).await.status(),
        StatusCode::FORBIDDEN
    );
    lead.page("/cases", StatusCode::OK).await;
    let fresh = Browser::new(&app);
    let response = fresh
        .post(
            "/sign-in",
            &[
                ("username", "lead"),
                ("password", crate::helpers::DEMO_PASSWORD),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

async fn script_in_a_note_or_a_name_is_shown_as_text(backend: Backend) {
    let app = app_with_casework(backend).await;
    let script = "<script>alert('x')</script>";
    let name = "Eve <img src=x onerror=alert(1)>";
    edit_stored_case(app.storage(), "case-demo-1", "user-officer", move |file| {
        let mut visit = doorstep_sync_core::testing::visit("user-officer", chrono::Utc::now(), 0);
        visit.discussed = format!("Said: {script}");
        visit.visitors[0].name = name.into();
        file.add(&visit, chrono::Utc::now())?;
        file.add(
            &doorstep_sync_core::testing::household_member(name),
            chrono::Utc::now(),
        )?;
        Ok(())
    })
    .await
    .unwrap();
    let officer = Browser::sign_in(&app, "officer").await;
    for path in ["/cases/case-demo-1", "/cases/case-demo-1/evidence-pack"] {
        let html = officer.page(path, StatusCode::OK).await;
        assert!(!html.contains("<script"), "{path}: a script element");
        assert!(!html.contains("<img"), "{path}: an image element");
        assert!(
            html.contains("Said: &lt;script&gt;alert('x')&lt;/script&gt;")
                || html.contains("Said: &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"),
            "{path}"
        );
        assert!(
            html.contains("Eve &lt;img src=x onerror=alert(1)&gt;"),
            "{path}"
        );
    }
}

async fn a_stale_conflict_resolution_is_refused_and_changes_nothing(backend: Backend) {
    let app = app_with_casework(backend).await;
    let lead = Browser::sign_in(&app, "lead").await;
    let officer = Browser::sign_in(&app, "officer").await;
    // Both open the case and see the same conflict.
    let lead_page = lead.page("/cases/case-demo-1", StatusCode::OK).await;
    let officer_page = officer.page("/cases/case-demo-1", StatusCode::OK).await;
    let action = attribute_after(&officer_page, "action=\"/cases/case-demo-1/conflicts/").unwrap();
    let path = format!("/cases/case-demo-1/conflicts/{action}");
    let chosen = attribute_after(&lead_page, "name=\"chosen\" value=\"").unwrap();
    let first = lead
        .post(
            &path,
            &[("csrf", &csrf_of(&lead_page)), ("chosen", &chosen)],
        )
        .await;
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    let after_first = stored_heads(&app, "case-demo-1").await;
    // The officer, still on the old page, resolves it too.
    let stale = officer
        .post(
            &path,
            &[("csrf", &csrf_of(&officer_page)), ("chosen", &chosen)],
        )
        .await;
    assert_eq!(stale.status(), StatusCode::CONFLICT);
    let message = stale.text().await.unwrap();
    assert!(
        message.contains("already resolved by someone else"),
        "{message}"
    );
    assert!(message.contains("nothing was changed"));
    assert_eq!(stored_heads(&app, "case-demo-1").await, after_first);
}

async fn unreadable_or_foreign_values_and_signed_out_posts_change_nothing(backend: Backend) {
    let app = app_with_casework(backend).await;
    let lead = Browser::sign_in(&app, "lead").await;
    let html = lead.page("/cases/case-demo-1", StatusCode::OK).await;
    let action = attribute_after(&html, "action=\"/cases/case-demo-1/conflicts/").unwrap();
    let path = format!("/cases/case-demo-1/conflicts/{action}");
    let csrf = csrf_of(&html);
    let before = stored_heads(&app, "case-demo-1").await;
    for chosen in ["{not json", "\"a value nobody set\""] {
        let response = lead
            .post(&path, &[("csrf", &csrf), ("chosen", chosen)])
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{chosen}");
    }
    // Without a session, a post is sent to sign in.
    let stranger = Browser::new(&app);
    let response = stranger
        .post(&path, &[("csrf", &csrf), ("chosen", "\"x\"")])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()["location"], "/sign-in");
    assert_eq!(stored_heads(&app, "case-demo-1").await, before);
}

async fn cookies_are_secure_outside_localhost_and_end_with_the_account(backend: Backend) {
    let app = app_with_casework(backend).await;
    // Reached under a public name (as behind a TLS proxy), the cookies are `Secure`.
    let response = reqwest::Client::new()
        .get(format!("{}/sign-in", app.base))
        .header("host", "doorstep.example.org")
        .send()
        .await
        .unwrap();
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );

    // Disabling an account ends its browser sessions at once, and it cannot sign in again.
    let worker = Browser::sign_in(&app, "worker").await;
    worker.page("/cases", StatusCode::OK).await;
    app.storage()
        .disable_user("user-worker", chrono::Utc::now().timestamp_millis())
        .await
        .unwrap();
    assert_eq!(worker.get("/cases").await.status(), StatusCode::SEE_OTHER);
    let form = worker.page("/sign-in", StatusCode::OK).await;
    let response = worker
        .post(
            "/sign-in",
            &[
                ("username", "worker"),
                ("password", crate::helpers::DEMO_PASSWORD),
                ("csrf", &csrf_of(&form)),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
