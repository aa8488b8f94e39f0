//! The staff web view over real HTTP: a real server on port 0 (SQLite and PostgreSQL, as
//! `<test>::sqlite` and `<test>::postgres`), a browser-like client with a cookie store.

// A failed unwrap in a helper or a shared test body is a failed test, as intended.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

#[path = "../api/helpers.rs"]
#[allow(
    dead_code,
    reason = "shared with the API tests; this binary uses part of it"
)]
mod helpers;

mod pages;
mod safety;
mod storage;

use doorstep_server::web::demo;
use helpers::{Backend, DEMO_PASSWORD, TestApp, spawn_app};
use reqwest::StatusCode;

/// A browser: keeps cookies, does not follow redirects (so tests see them).
#[derive(Debug)]
pub(crate) struct Browser {
    pub(crate) client: reqwest::Client,
    pub(crate) base: String,
}

impl Browser {
    pub(crate) fn new(app: &TestApp) -> Browser {
        Browser {
            client: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: app.base.clone(),
        }
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    /// The page's body, asserting the status.
    pub(crate) async fn page(&self, path: &str, status: StatusCode) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), status, "GET {path}");
        response.text().await.unwrap()
    }

    pub(crate) async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// Signs in through the form, as a person would.
    pub(crate) async fn sign_in(app: &TestApp, username: &str) -> Browser {
        let browser = Browser::new(app);
        let form = browser.page("/sign-in", StatusCode::OK).await;
        let csrf = csrf_of(&form);
        let response = browser
            .post(
                "/sign-in",
                &[
                    ("username", username),
                    ("password", DEMO_PASSWORD),
                    ("csrf", &csrf),
                ],
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::SEE_OTHER,
            "sign-in of {username}"
        );
        assert_eq!(response.headers()["location"], "/cases");
        browser
    }
}

/// The value of the first `csrf` hidden field in a page.
pub(crate) fn csrf_of(html: &str) -> String {
    attribute_after(html, r#"name="csrf" value=""#).expect("a csrf field")
}

/// The (unescaped) attribute value that follows `marker` in `html`.
pub(crate) fn attribute_after(html: &str, marker: &str) -> Option<String> {
    let start = html.find(marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(unescape(&html[start..end]))
}

pub(crate) fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A server with the demo data and the invented casework (with one open conflict) in
/// case-demo-1.
pub(crate) async fn app_with_casework(backend: Backend) -> TestApp {
    let app = spawn_app(backend).await;
    demo::add_demo_casework(app.storage(), "case-demo-1")
        .await
        .unwrap();
    app
}

pub(crate) async fn stored_heads(app: &TestApp, case_id: &str) -> String {
    app.storage()
        .document(case_id)
        .await
        .unwrap()
        .unwrap()
        .heads
}
