//! The web view's storage (sessions and "last opened"), on both backends.

use doorstep_server::storage::WebSession;

use crate::helpers::{Backend, both_backends, spawn_app};

both_backends!(
    sessions_expire_and_sign_out_sweeps,
    case_views_keep_the_latest_time
);

fn session(token_hash: &str, expires_at: i64) -> WebSession {
    WebSession {
        token_hash: token_hash.into(),
        user_id: "user-lead".into(),
        csrf_token: format!("csrf-{token_hash}"),
        created_at: 1_000,
        expires_at,
    }
}

async fn sessions_expire_and_sign_out_sweeps(backend: Backend) {
    let app = spawn_app(backend).await;
    let storage = app.storage();
    storage
        .create_web_session(&session("live", 10_000))
        .await
        .unwrap();
    storage
        .create_web_session(&session("old", 5_000))
        .await
        .unwrap();
    let found = storage.web_session("live", 4_000).await.unwrap().unwrap();
    assert_eq!(found.csrf_token, "csrf-live");
    assert_eq!(found.user_id, "user-lead");
    // Expired: gone for the reader, whatever the row says.
    assert!(storage.web_session("old", 5_000).await.unwrap().is_none());
    assert!(storage.web_session("nope", 0).await.unwrap().is_none());
    // The same token cannot be stored twice.
    assert!(
        storage
            .create_web_session(&session("live", 10_000))
            .await
            .is_err()
    );
    // Signing out removes the session, and sweeps the expired ones.
    storage.delete_web_session("live", 6_000).await.unwrap();
    assert!(storage.web_session("live", 4_000).await.unwrap().is_none());
    assert!(storage.web_session("old", 0).await.unwrap().is_none());
}

async fn case_views_keep_the_latest_time(backend: Backend) {
    let app = spawn_app(backend).await;
    let storage = app.storage();
    assert!(storage.case_views("user-lead").await.unwrap().is_empty());
    storage
        .record_case_view("user-lead", "case-demo-2", 100)
        .await
        .unwrap();
    storage
        .record_case_view("user-lead", "case-demo-1", 200)
        .await
        .unwrap();
    storage
        .record_case_view("user-lead", "case-demo-2", 300)
        .await
        .unwrap();
    storage
        .record_case_view("user-dsl", "case-demo-1", 400)
        .await
        .unwrap();
    assert_eq!(
        storage.case_views("user-lead").await.unwrap(),
        [
            ("case-demo-1".to_string(), 200),
            ("case-demo-2".to_string(), 300)
        ]
    );
}
