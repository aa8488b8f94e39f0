//! Sign-in, device registration, refresh rotation and reuse, revocation, and forged tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use doorstep_server::api::{MeResponse, TokenResponse};
use doorstep_server::auth::jwt::{AUDIENCE, Claims, ISSUER};
use doorstep_server::storage::Role;
use doorstep_sync_core::testing;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, both_backends, error_of, spawn_app};

both_backends!(
    sign_in_registers_the_device_and_binds_its_actor,
    wrong_password_and_unknown_user_look_the_same,
    an_actor_bound_to_someone_else_is_refused,
    refresh_rotates_and_reuse_revokes_the_family,
    a_revoked_device_fails_at_once,
    a_revoked_user_fails_at_once,
    only_owner_or_admin_may_revoke,
);

async fn refresh(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/auth/refresh"))
        .json(&json!({ "refresh_token": token }))
        .send()
        .await
        .unwrap()
}

async fn sign_in_registers_the_device_and_binds_its_actor(backend: Backend) {
    let app = spawn_app(backend).await;
    let actor = testing::actor(7);
    let tokens = app.tokens("officer", &actor).await;
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.user.role, Role::AttendanceOfficer);
    assert!(tokens.refresh_token.starts_with("dsr_"));

    let me: MeResponse = app.get_me(&tokens.access_token).await.json().await.unwrap();
    assert_eq!(me.user.username, "officer");
    assert_eq!(me.device_id, tokens.device_id);
    assert_eq!(me.actor_id, actor.to_hex_string());

    let device = app
        .storage()
        .device(&tokens.device_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(device.actor_id, actor.to_hex_string());
    assert_eq!(device.user_id, tokens.user.id);

    // The same phone signing in again keeps its device.
    let again = app.tokens("officer", &actor).await;
    assert_eq!(again.device_id, tokens.device_id);
}

async fn wrong_password_and_unknown_user_look_the_same(backend: Backend) {
    let app = spawn_app(backend).await;
    for (username, password) in [("officer", "not-the-password"), ("nobody", "doorstep-demo")] {
        let response = app
            .client
            .post(app.url("/api/v1/auth/sign-in"))
            .json(&json!({
                "username": username,
                "password": password,
                "device_name": "phone",
                "actor_id": testing::actor(1).to_hex_string(),
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_of(response).await,
            (StatusCode::UNAUTHORIZED, "invalid_credentials".into())
        );
    }
    // A malformed actor id is a shape error.
    let response = app
        .client
        .post(app.url("/api/v1/auth/sign-in"))
        .json(&json!({
            "username": "officer", "password": "doorstep-demo",
            "device_name": "phone", "actor_id": "not hex",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(response).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body".into())
    );
}

async fn an_actor_bound_to_someone_else_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let actor = testing::actor(3);
    app.tokens("officer", &actor).await;
    let response = app.sign_in("worker", &actor).await;
    assert_eq!(
        error_of(response).await,
        (StatusCode::CONFLICT, "actor_in_use".into())
    );
}

async fn refresh_rotates_and_reuse_revokes_the_family(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app.tokens("officer", &testing::actor(1)).await;

    let response = refresh(&app, &first.refresh_token).await;
    assert_eq!(response.status(), StatusCode::OK);
    let second: TokenResponse = response.json().await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.device_id, first.device_id);
    assert_eq!(
        app.get_me(&second.access_token).await.status(),
        StatusCode::OK
    );

    // The first token again: someone holds a copy. The whole sign-in is revoked.
    assert_eq!(
        error_of(refresh(&app, &first.refresh_token).await).await,
        (StatusCode::UNAUTHORIZED, "refresh_token_reused".into())
    );
    assert_eq!(
        error_of(refresh(&app, &second.refresh_token).await).await,
        (StatusCode::UNAUTHORIZED, "refresh_token_reused".into())
    );
    assert_eq!(
        error_of(refresh(&app, "dsr_never-issued").await).await,
        (StatusCode::UNAUTHORIZED, "invalid_refresh_token".into())
    );
}

async fn a_revoked_device_fails_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let officer = app.tokens("officer", &testing::actor(1)).await;
    let admin = app.tokens("admin", &testing::actor(2)).await;
    assert_eq!(
        app.get_me(&officer.access_token).await.status(),
        StatusCode::OK
    );

    let response = app
        .client
        .post(app.url(&format!("/api/v1/devices/{}/revoke", officer.device_id)))
        .bearer_auth(&admin.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    // The access token has not expired, yet it fails at once, telling the phone to wipe.
    let revoked = (StatusCode::UNAUTHORIZED, "device_revoked".to_string());
    assert_eq!(
        error_of(app.get_me(&officer.access_token).await).await,
        revoked
    );
    let sync = app
        .post_sync_raw(&officer.access_token, br#"{"documents":[]}"#.to_vec())
        .await;
    assert_eq!(error_of(sync).await, revoked);
    assert_eq!(
        error_of(refresh(&app, &officer.refresh_token).await).await,
        revoked
    );
    // Its actor stays bound to the revoked device: it cannot sign in again as a new one.
    assert_eq!(
        error_of(app.sign_in("officer", &testing::actor(1)).await).await,
        (StatusCode::CONFLICT, "actor_in_use".into())
    );
    // The admin's own device is untouched.
    assert_eq!(
        app.get_me(&admin.access_token).await.status(),
        StatusCode::OK
    );
}

async fn a_revoked_user_fails_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let worker = app.tokens("worker", &testing::actor(1)).await;
    let admin = app.tokens("admin", &testing::actor(2)).await;
    let response = app
        .client
        .post(app.url(&format!("/api/v1/users/{}/revoke", worker.user.id)))
        .bearer_auth(&admin.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let revoked = (StatusCode::UNAUTHORIZED, "device_revoked".to_string());
    assert_eq!(
        error_of(app.get_me(&worker.access_token).await).await,
        revoked
    );
    assert_eq!(
        error_of(refresh(&app, &worker.refresh_token).await).await,
        revoked
    );
    assert_eq!(
        error_of(app.sign_in("worker", &testing::actor(9)).await).await,
        (StatusCode::FORBIDDEN, "account_disabled".into())
    );
}

async fn only_owner_or_admin_may_revoke(backend: Backend) {
    let app = spawn_app(backend).await;
    let officer = app.tokens("officer", &testing::actor(1)).await;
    let worker = app.tokens("worker", &testing::actor(2)).await;
    // Someone else's device looks like no device at all.
    let response = app
        .client
        .post(app.url(&format!("/api/v1/devices/{}/revoke", officer.device_id)))
        .bearer_auth(&worker.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(response).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let response = app
        .client
        .post(app.url(&format!("/api/v1/users/{}/revoke", officer.user.id)))
        .bearer_auth(&worker.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(response).await,
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    assert_eq!(
        app.get_me(&officer.access_token).await.status(),
        StatusCode::OK
    );
    // A phone may revoke itself (signing out for good).
    let response = app
        .client
        .post(app.url(&format!("/api/v1/devices/{}/revoke", worker.device_id)))
        .bearer_auth(&worker.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

// ---------------------------------------------------------------------------------------
// Forged tokens. Token checks do not depend on the backend: SQLite only.

fn claims_for(tokens: &TokenResponse) -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        sub: tokens.user.id.clone(),
        did: tokens.device_id.clone(),
        role: tokens.user.role,
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        iat: now,
        exp: now + 600,
    }
}

#[tokio::test]
async fn forged_tokens_are_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let tokens = app.tokens("officer", &testing::actor(1)).await;
    let keys = &app.state.keys;
    let unauthenticated = (StatusCode::UNAUTHORIZED, "unauthenticated".to_string());

    // A token signed by this server's key with the right claims works...
    let good = keys.sign(&claims_for(&tokens)).unwrap();
    assert_eq!(app.get_me(&good).await.status(), StatusCode::OK);

    // ...but not with another audience or issuer,
    let mut claims = claims_for(&tokens);
    claims.aud = "some-other-api".into();
    assert_eq!(
        error_of(app.get_me(&keys.sign(&claims).unwrap()).await).await,
        unauthenticated
    );
    let mut claims = claims_for(&tokens);
    claims.iss = "someone-else".into();
    assert_eq!(
        error_of(app.get_me(&keys.sign(&claims).unwrap()).await).await,
        unauthenticated
    );

    // ...nor once expired (past the 5 s leeway),
    let mut claims = claims_for(&tokens);
    claims.exp = chrono::Utc::now().timestamp() - 60;
    assert_eq!(
        error_of(app.get_me(&keys.sign(&claims).unwrap()).await).await,
        (StatusCode::UNAUTHORIZED, "token_expired".into())
    );

    // ...nor naming a device of another user.
    let worker = app.tokens("worker", &testing::actor(2)).await;
    let mut claims = claims_for(&tokens);
    claims.did = worker.device_id.clone();
    assert_eq!(
        error_of(app.get_me(&keys.sign(&claims).unwrap()).await).await,
        unauthenticated
    );

    // A tampered payload (role raised to admin) keeps the old signature: refused.
    let parts: Vec<&str> = tokens.access_token.split('.').collect();
    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["role"] = json!("admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap()),
        parts[2]
    );
    assert_eq!(error_of(app.get_me(&tampered).await).await, unauthenticated);

    // `alg: none`, with and without a signature part.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    for none in [
        format!("{header}.{}.", parts[1]),
        format!("{header}.{}.{}", parts[1], parts[2]),
    ] {
        assert_eq!(error_of(app.get_me(&none).await).await, unauthenticated);
    }

    // An HS256 token "signed" with the public key (algorithm confusion) is refused by alg.
    let hs = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let confused = format!("{hs}.{}.{}", parts[1], parts[2]);
    assert_eq!(error_of(app.get_me(&confused).await).await, unauthenticated);

    // Garbage, a missing header, and a non-bearer scheme.
    assert_eq!(
        error_of(app.get_me("not-a-jwt").await).await,
        unauthenticated
    );
    let response = app.client.get(app.url("/api/v1/me")).send().await.unwrap();
    assert_eq!(error_of(response).await, unauthenticated);
    let response = app
        .client
        .get(app.url("/api/v1/me"))
        .header("authorization", format!("Basic {}", tokens.access_token))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await, unauthenticated);

    // The real token still works: nothing above changed any state.
    assert_eq!(
        app.get_me(&tokens.access_token).await.status(),
        StatusCode::OK
    );
}

/// Repeated wrong passwords for one username: after the allowed failures even the right
/// password gets 429 with Retry-After (no more guessing), other usernames sign in as usual,
/// and the web form shares the same count.
#[tokio::test]
async fn repeated_failed_sign_ins_are_throttled_per_username() {
    use doorstep_server::auth::sign_in::SignInThrottle;
    let app = spawn_app(Backend::Sqlite).await;
    let sign_in = |username: &'static str, password: &'static str| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/api/v1/auth/sign-in"))
                .json(&json!({
                    "username": username,
                    "password": password,
                    "device_name": "phone",
                    "actor_id": testing::actor(3).to_hex_string(),
                }))
                .send()
                .await
                .unwrap()
        }
    };
    for _ in 0..SignInThrottle::MAX_FAILURES {
        let response = sign_in("officer", "guess").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let throttled = sign_in("Officer", "doorstep-demo").await;
    let retry_after: u64 = throttled.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=SignInThrottle::WINDOW.as_secs()).contains(&retry_after));
    assert_eq!(
        error_of(throttled).await,
        (StatusCode::TOO_MANY_REQUESTS, "too_many_sign_ins".into())
    );
    assert_eq!(
        sign_in("worker", "doorstep-demo").await.status(),
        StatusCode::OK,
        "another username is not throttled"
    );
    // The web view's sign-in form answers the same way.
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = browser
        .get(app.url("/sign-in"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let marker = r#"name="csrf" value=""#;
    let start = form.find(marker).unwrap() + marker.len();
    let csrf = &form[start..start + form[start..].find('"').unwrap()];
    let page = browser
        .post(app.url("/sign-in"))
        .form(&[
            ("username", "officer"),
            ("password", "doorstep-demo"),
            ("csrf", csrf),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(page.headers().contains_key("retry-after"));
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("Too many failed sign-ins")
    );
}
