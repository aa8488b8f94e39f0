//! Bad input gets a specific status and a JSON error, changes nothing, and the server keeps
//! serving.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use doorstep_server::storage::heads_key;
use doorstep_sync_core::testing;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{
    Backend, Phone, TestApp, error_of, metrics, spawn_app, spawn_app_with, stored_heads,
};

async fn assert_still_serving(app: &TestApp, phone: &Phone) {
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(
        app.get_me(phone.access_token()).await.status(),
        StatusCode::OK
    );
}

/// A phone holding case-demo-1 with one unsynced visit, and the stored heads before.
async fn phone_with_pending_change(app: &TestApp) -> (Phone, String) {
    let mut phone = Phone::sign_in(app, "officer", 1).await;
    phone.sync_until_quiet(app).await;
    phone.record_visit("case-demo-1", 3, 80);
    let heads = app
        .storage()
        .document("case-demo-1")
        .await
        .unwrap()
        .unwrap()
        .heads;
    (phone, heads)
}

#[tokio::test]
async fn malformed_sync_bodies_get_specific_statuses_and_change_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let (mut phone, heads) = phone_with_pending_change(&app).await;
    let (request, _) = phone.next_request();
    let good = serde_json::to_vec(&request).unwrap();
    let message = request.documents[0].message.clone().unwrap();
    let bytes = STANDARD.decode(&message).unwrap();

    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "not JSON",
            b"hello".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "truncated JSON",
            good[..good.len() / 2].to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "empty body",
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "wrong shape",
            br#"{"docs": []}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "wrong type",
            br#"{"documents": [{"case_id": 5}]}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "message not base64",
            serde_json::to_vec(
                &json!({"documents": [{"case_id": "case-demo-1", "message": "%%%"}]}),
            )
            .unwrap(),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "truncated sync message",
            serde_json::to_vec(&json!({"documents": [
                {"case_id": "case-demo-1", "message": STANDARD.encode(&bytes[..bytes.len() / 2])}
            ]}))
            .unwrap(),
            StatusCode::BAD_REQUEST,
            "corrupt_sync_message",
        ),
        (
            "garbage sync message",
            serde_json::to_vec(&json!({"documents": [
                {"case_id": "case-demo-1", "message": STANDARD.encode(b"\x42\xff\xff\xff garbage")}
            ]}))
            .unwrap(),
            StatusCode::BAD_REQUEST,
            "corrupt_sync_message",
        ),
        (
            "duplicate document",
            serde_json::to_vec(&json!({"documents": [
                {"case_id": "case-demo-1", "message": message},
                {"case_id": "case-demo-1"}
            ]}))
            .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "too many documents",
            serde_json::to_vec(&json!({"documents": (0..1001)
                .map(|i| json!({"case_id": format!("c{i}")}))
                .collect::<Vec<_>>()}))
            .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ];
    for (what, body, status, code) in cases {
        let response = app.post_sync_raw(phone.access_token(), body).await;
        assert_eq!(
            error_of(response).await,
            (status, code.to_string()),
            "{what}"
        );
        let now = app
            .storage()
            .document("case-demo-1")
            .await
            .unwrap()
            .unwrap()
            .heads;
        assert_eq!(now, heads, "{what} changed the document");
    }

    // Not JSON at all by content type.
    let response = app
        .client
        .post(app.url("/api/v1/sync"))
        .bearer_auth(phone.access_token())
        .header("content-type", "text/plain")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(response).await,
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type".into()
        )
    );
    // No token at all.
    let response = app
        .client
        .post(app.url("/api/v1/sync"))
        .header("content-type", "application/json")
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(response).await,
        (StatusCode::UNAUTHORIZED, "unauthenticated".into())
    );

    assert_still_serving(&app, &phone).await;
    // And the phone still syncs afterwards (resetting, as after any failed request).
    phone.reset_sync_states();
    phone.sync_until_quiet(&app).await;
    let stored = app
        .storage()
        .document("case-demo-1")
        .await
        .unwrap()
        .unwrap()
        .heads;
    assert_eq!(stored, heads_key(&phone.doc("case-demo-1").heads()));
    assert_ne!(stored, heads);
}

#[tokio::test]
async fn an_oversized_body_gets_413() {
    let app = spawn_app_with(Backend::Sqlite, |config| config.max_body_bytes = 64 * 1024).await;
    let (phone, heads) = phone_with_pending_change(&app).await;
    let padding = "A".repeat(100 * 1024);
    let body = serde_json::to_vec(&json!({"documents": [
        {"case_id": "case-demo-1", "message": padding}
    ]}))
    .unwrap();
    let response = app.post_sync_raw(phone.access_token(), body).await;
    assert_eq!(
        error_of(response).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large".into())
    );
    let now = app
        .storage()
        .document("case-demo-1")
        .await
        .unwrap()
        .unwrap()
        .heads;
    assert_eq!(now, heads);
    assert_still_serving(&app, &phone).await;
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let app = spawn_app(Backend::Sqlite).await;
    let response = app
        .client
        .get(app.url("/api/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(response).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let health: serde_json::Value = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    // The OpenAPI document is served, and metrics count what happened.
    let openapi: serde_json::Value = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(openapi["paths"]["/api/v1/sync"]["post"].is_object());
    let mut phone = Phone::sign_in(&app, "officer", 1).await;
    phone.sync_until_quiet(&app).await;
    let metrics = metrics(&app).await;
    assert!(metrics.contains("doorstep_sign_ins_total 1"), "{metrics}");
    assert!(
        metrics.contains("doorstep_http_responses_total{class=\"4xx\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("doorstep_sync_requests_total 0"),
        "{metrics}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_request_over_the_time_limit_gets_503_and_the_server_keeps_serving() {
    // With a zero time limit every request that has to wait (for the database, for argon2)
    // runs out; one that answers at once (liveness) does not.
    let dir = tempfile::tempdir().unwrap();
    let mut config = doorstep_server::Config::with_data_dir(dir.path().join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database_url = Some(format!("sqlite:{}", dir.path().join("t.db").display()));
    config.demo = true;
    config.request_timeout_secs = 0;
    let app = doorstep_server::App::build(config).await.unwrap();
    let base = format!("http://{}", app.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let sign_in = client
        .post(format!("{base}/api/v1/auth/sign-in"))
        .json(&json!({
            "username": "officer",
            "password": "doorstep-demo",
            "device_name": "test phone",
            "actor_id": testing::actor(1).to_hex_string(),
        }))
        .send()
        .await
        .unwrap();
    let (status, code) = error_of(sign_in).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code, "timeout");
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK, "the server keeps serving");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// The officer's phone, synced, and the stored heads of case-demo-1, which the sync-turn tests
/// then try to change.
async fn synced_officer(app: &TestApp) -> (Phone, String) {
    let mut officer = Phone::sign_in(app, "officer", 1).await;
    officer.sync_until_quiet(app).await;
    (officer, stored_heads(app, "case-demo-1").await)
}

#[tokio::test]
async fn a_sync_cut_off_by_the_time_limit_keeps_its_turn_until_its_work_ends() {
    // The turn bounds how many syncs compute at once (each holds parsed documents): a request
    // cut off by the time limit must not give its turn back while its computation still runs
    // on a blocking thread, or a burst of slow syncs would pile computations up.
    let app = spawn_app_with(Backend::Sqlite, |config| config.sync_timeout_secs = 1).await;
    let (mut officer, before) = synced_officer(&app).await;
    let case_id = "case-demo-1";
    // Enough visits that checking them takes longer than the time limit.
    for k in 0..6000 {
        officer.record_visit(case_id, k, 500);
    }
    // The first round trades heads; the visits go in the next.
    let request = loop {
        let (request, _) = officer.next_request();
        let brings_visits = request.documents.iter().any(|d| {
            d.message
                .as_ref()
                .is_some_and(|m| doorstep_sync_core::brings_changes(&STANDARD.decode(m).unwrap()))
        });
        if brings_visits {
            break request;
        }
        officer.send(&app, &request).await;
    };
    let turns = app.state.sync_compute.available_permits();
    let body = serde_json::to_vec(&request).unwrap();
    let response = app.post_sync_raw(officer.access_token(), body).await;
    let (status, code) = error_of(response).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "timeout")
    );
    assert!(
        app.state.sync_compute.available_permits() < turns,
        "the cut-off sync's work still holds its turn"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while app.state.sync_compute.available_permits() < turns {
        assert!(std::time::Instant::now() < deadline, "the turn came back");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        stored_heads(&app, case_id).await,
        before,
        "nothing was stored"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_sync_that_cannot_get_a_turn_is_told_busy_and_changes_nothing() {
    // Every sync turn is taken (as when many phones reconnect at once): a sync that would wait
    // past its wait budget (here half its 2 s limit) is answered 503 busy with Retry-After,
    // before any work.
    let app = spawn_app_with(Backend::Sqlite, |config| config.sync_timeout_secs = 2).await;
    let (mut officer, before) = phone_with_pending_change(&app).await;
    let case_id = "case-demo-1";
    let (request, _) = officer.next_request();
    let turns = app.state.sync_compute.available_permits() as u32;
    let taken = app.state.sync_compute.acquire_many(turns).await.unwrap();
    let body = serde_json::to_vec(&request).unwrap();
    let response = app.post_sync_raw(officer.access_token(), body).await;
    let retry_after = response.headers().get("retry-after").cloned();
    let (status, code) = error_of(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code, "busy");
    assert_eq!(retry_after.unwrap().to_str().unwrap(), "5");
    let after = stored_heads(&app, case_id).await;
    assert_eq!(after, before, "nothing was stored");

    // Once turns are free the same phone syncs normally.
    drop(taken);
    officer.reset_sync_states();
    officer.sync_until_quiet(&app).await;
    let synced = stored_heads(&app, case_id).await;
    assert_eq!(synced, heads_key(&officer.doc(case_id).heads()));
    app.shutdown().await;
}

/// Takes every sync turn and gives them back after `held_for`; the handle ends then.
async fn hold_every_sync_turn(
    app: &TestApp,
    held_for: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    let turns = app.state.sync_compute.available_permits() as u32;
    let taken = std::sync::Arc::clone(&app.state.sync_compute)
        .acquire_many_owned(turns)
        .await
        .unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(held_for).await;
        drop(taken);
    })
}

#[tokio::test]
async fn a_sync_waits_for_its_turn_past_the_time_limit_of_other_requests() {
    // A busy answer makes the phone send everything again: the sync has its own, longer time
    // limit, so in a burst it waits for its turn where another request would be cut off.
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.request_timeout_secs = 1;
        config.sync_timeout_secs = 30;
    })
    .await;
    let (mut officer, _) = phone_with_pending_change(&app).await;
    let case_id = "case-demo-1";
    let held_for = std::time::Duration::from_millis(2500);
    let release = hold_every_sync_turn(&app, held_for).await;
    let (request, _) = officer.next_request();
    let started = std::time::Instant::now();
    officer.send(&app, &request).await;
    assert!(started.elapsed() >= held_for, "it waited for the turns");
    release.await.unwrap();
    officer.sync_until_quiet(&app).await;
    assert_eq!(
        stored_heads(&app, case_id).await,
        heads_key(&officer.doc(case_id).heads())
    );
    let metrics = metrics(&app).await;
    let longest: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("doorstep_sync_turn_wait_seconds_max "))
        .expect("the turn wait metric")
        .parse()
        .unwrap();
    assert!(longest >= 2.0, "{metrics}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_sync_waiting_long_for_its_turn_takes_its_body_before_the_client_gives_up() {
    // A client aborts a send the server leaves untaken for its TCP user timeout (reqwest's
    // default, which the mobile bridge keeps, is 30 s): past `sync_body_unread_secs` a waiting
    // sync reads its body, and keeps its place in the queue.
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.sync_body_unread_secs = 1;
        config.sync_timeout_secs = 30;
    })
    .await;
    let (mut officer, _) = phone_with_pending_change(&app).await;
    let case_id = "case-demo-1";
    let held_for = std::time::Duration::from_secs(4);
    let release = hold_every_sync_turn(&app, held_for).await;
    // Larger than the socket buffers can hold (JSON allows the trailing spaces), from a
    // client that gives up on a send left untaken for 2 s.
    let (request, _) = officer.next_request();
    let mut body = serde_json::to_vec(&request).unwrap();
    body.resize(body.len() + (6 << 20), b' ');
    let impatient = reqwest::Client::builder()
        .tcp_user_timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let response = impatient
        .post(app.url("/api/v1/sync"))
        .bearer_auth(officer.access_token())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the connection outlived the wait for a turn");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= held_for, "it waited for the turns");
    release.await.unwrap();
    assert_eq!(
        stored_heads(&app, case_id).await,
        heads_key(&officer.doc(case_id).heads())
    );
    app.shutdown().await;
}

#[tokio::test]
async fn headers_larger_than_a_connection_buffer_get_431() {
    let app = spawn_app(Backend::Sqlite).await;
    let (phone, heads) = phone_with_pending_change(&app).await;
    // hyper checks the limit between reads, so a head just over it may still be read whole.
    let oversized = "A".repeat(2 * doorstep_server::http_listener::CONNECTION_BUFFER_BYTES);
    let response = app
        .client
        .post(app.url("/api/v1/sync"))
        .bearer_auth(phone.access_token())
        .header("x-padding", oversized)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(stored_heads(&app, "case-demo-1").await, heads);
    assert_still_serving(&app, &phone).await;
}
