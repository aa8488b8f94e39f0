//! Test harness: a real server on port 0 per test, on a fresh database (a temporary SQLite
//! file, or a new PostgreSQL database dropped afterwards), and simulated phones that hold
//! sync-core replicas and talk to it over HTTP.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use doorstep_server::api::{SyncDocumentIn, SyncRequest, SyncResponse, TokenResponse};
use doorstep_server::storage::Storage;
use doorstep_server::{App, AppState, Config};
use doorstep_sync_core::{ActorId, CaseFile, PeerState, testing};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub const DEMO_PASSWORD: &str = doorstep_server::demo::DEMO_PASSWORD;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs an async test body once per backend, as `<name>::sqlite` and `<name>::postgres`.
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            }
        )+
    };
}
pub(crate) use both_backends;

/// The server the PostgreSQL tests use: `DOORSTEP_TEST_POSTGRES_URL`, by default the local
/// one these machines run. Each test creates its own database there and drops it afterwards.
pub fn postgres_admin_url() -> String {
    std::env::var("DOORSTEP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A PostgreSQL database that exists for one test.
pub struct TestDatabase {
    name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        use sqlx::Connection;
        let admin = postgres_admin_url();
        let name = format!("doorstep_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot reach PostgreSQL at {admin} ({e}); start one or set \
                 DOORSTEP_TEST_POSTGRES_URL=postgres://USER@HOST:PORT/DB"
                )
            });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map(|(base, _)| base).unwrap();
        TestDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&postgres_admin_url()).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .map(|_| ())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// A storage on a fresh database, for the storage suite.
pub struct TestStorage {
    pub storage: Arc<dyn Storage>,
    pub url: String,
    _dir: tempfile::TempDir,
    _database: Option<TestDatabase>,
}

pub async fn test_storage(backend: Backend) -> TestStorage {
    let dir = tempfile::tempdir().unwrap();
    let (url, database) = database_url(backend, &dir).await;
    let storage = doorstep_server::storage::open(&url).await.unwrap();
    TestStorage {
        storage,
        url,
        _dir: dir,
        _database: database,
    }
}

pub async fn database_url(
    backend: Backend,
    dir: &tempfile::TempDir,
) -> (String, Option<TestDatabase>) {
    match backend {
        Backend::Sqlite => (
            format!("sqlite:{}", dir.path().join("test.db").display()),
            None,
        ),
        Backend::Postgres => {
            let database = TestDatabase::create().await;
            (database.url.clone(), Some(database))
        }
    }
}

/// A running server with the demo data: users admin, lead, dsl, officer, worker; officer has
/// case-demo-1 and case-demo-2, worker has case-demo-2 and case-demo-3.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
    _database: Option<TestDatabase>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let (url, database) = database_url(backend, &dir).await;
    let mut config = Config::with_data_dir(dir.path().join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.database_url = Some(url);
    config.demo = true;
    configure(&mut config);
    let app = App::build(config).await.unwrap();
    let addr = app.local_addr().unwrap();
    let state = app.state().clone();
    let (tx, rx) = oneshot::channel();
    let server = tokio::spawn(async move {
        app.run(async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let test_app = TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        state,
        shutdown: Some(tx),
        server: Some(server),
        _dir: dir,
        _database: database,
    };
    test_app.wait_until_ready().await;
    test_app
}

/// Another instance on `first`'s PostgreSQL database, with its signing key (so tokens from
/// either are good on both) and its own data folder.
pub async fn spawn_second_instance(first: &TestApp) -> TestApp {
    let url = first.state.config.database_url();
    let key = first.state.config.signing_key_file();
    spawn_app_with(Backend::Sqlite, |config| {
        config.database_url = Some(url);
        config.signing_key_file = Some(key);
    })
    .await
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn storage(&self) -> &dyn Storage {
        self.state.storage.as_ref()
    }

    /// The listener is bound before the server task starts, so a request waits in the
    /// accept queue: no sleeping, only a bounded number of tries in case of a slow start.
    pub async fn wait_until_ready(&self) {
        for _ in 0..50 {
            if let Ok(response) = self.client.get(self.url("/ready")).send().await
                && response.status() == StatusCode::OK
            {
                return;
            }
        }
        panic!("the server never became ready");
    }

    pub async fn sign_in(&self, username: &str, actor: &ActorId) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/auth/sign-in"))
            .json(&json!({
                "username": username,
                "password": DEMO_PASSWORD,
                "device_name": format!("{username}'s phone"),
                "actor_id": actor.to_hex_string(),
            }))
            .send()
            .await
            .unwrap()
    }

    pub async fn tokens(&self, username: &str, actor: &ActorId) -> TokenResponse {
        let response = self.sign_in(username, actor).await;
        assert_eq!(response.status(), StatusCode::OK, "sign-in of {username}");
        response.json().await.unwrap()
    }

    pub async fn get_me(&self, access_token: &str) -> reqwest::Response {
        self.client
            .get(self.url("/api/v1/me"))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_sync_raw(&self, access_token: &str, body: Vec<u8>) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/sync"))
            .bearer_auth(access_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Something a phone can talk to: an in-process server or a server process.
pub trait Endpoint {
    fn url(&self, path: &str) -> String;
    fn client(&self) -> &reqwest::Client;
}

impl Endpoint for TestApp {
    fn url(&self, path: &str) -> String {
        TestApp::url(self, path)
    }

    fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

/// Creates a case with a `case-<uuid>` id (as the staff API does) allocated to `users`.
pub async fn new_case(app: &TestApp, users: &[&str]) -> String {
    let case_id = format!("case-{}", uuid::Uuid::new_v4());
    doorstep_server::cases::create_case(
        app.storage(),
        &case_id,
        "school-riverside",
        &testing::case_details(),
        "user-lead",
        testing::at(0),
        |_| Ok(()),
    )
    .await
    .unwrap();
    for user in users {
        app.storage()
            .allocate(&case_id, &format!("user-{user}"), 1)
            .await
            .unwrap();
    }
    case_id
}

/// The heads of a case as stored.
pub async fn stored_heads(app: &TestApp, case_id: &str) -> String {
    app.storage()
        .document(case_id)
        .await
        .unwrap()
        .unwrap()
        .heads
}

/// The status and error code of a JSON error response.
pub async fn error_of(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
        .to_string();
    assert!(body["error"]["message"].is_string(), "{body}");
    (status, code)
}

/// A simulated phone: a signed-in device with sync-core replicas of its cases.
pub struct Phone {
    pub username: String,
    pub actor: ActorId,
    pub tokens: TokenResponse,
    pub docs: BTreeMap<String, CaseFile>,
    pub states: BTreeMap<String, PeerState>,
    /// Requests sent so far.
    pub requests: usize,
}

impl Phone {
    pub async fn sign_in(app: &impl Endpoint, username: &str, actor_number: u32) -> Phone {
        let actor = testing::actor(actor_number);
        let response = app
            .client()
            .post(app.url("/api/v1/auth/sign-in"))
            .json(&json!({
                "username": username,
                "password": DEMO_PASSWORD,
                "device_name": format!("{username}'s phone {actor_number}"),
                "actor_id": actor.to_hex_string(),
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "sign-in of {username}");
        let tokens: TokenResponse = response.json().await.unwrap();
        Phone {
            username: username.into(),
            actor,
            tokens,
            docs: BTreeMap::new(),
            states: BTreeMap::new(),
            requests: 0,
        }
    }

    pub fn access_token(&self) -> &str {
        &self.tokens.access_token
    }

    /// The request this phone would send now: one message per document it holds.
    pub fn next_request(&mut self) -> (SyncRequest, bool) {
        let mut sent_any = false;
        let mut documents = Vec::new();
        for (case_id, doc) in &mut self.docs {
            let state = self.states.entry(case_id.clone()).or_default();
            let message = doc.generate_sync_message(state);
            sent_any |= message.is_some();
            documents.push(SyncDocumentIn {
                case_id: case_id.clone(),
                message: message.map(|m| STANDARD.encode(m)),
            });
        }
        (SyncRequest { documents }, sent_any)
    }

    /// Sends `request` and applies the reply. Returns the reply and whether it held messages.
    pub async fn send(
        &mut self,
        app: &impl Endpoint,
        request: &SyncRequest,
    ) -> (SyncResponse, bool) {
        let reply = self.try_send(app, request).await.unwrap();
        self.apply(&reply);
        let received_any = reply.documents.iter().any(|d| d.message.is_some());
        (reply, received_any)
    }

    /// Sends `request`; an error is the transport's or a non-200 status.
    pub async fn try_send(
        &mut self,
        app: &impl Endpoint,
        request: &SyncRequest,
    ) -> Result<SyncResponse, String> {
        let response = app
            .client()
            .post(app.url("/api/v1/sync"))
            .bearer_auth(self.access_token())
            .json(request)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        self.requests += 1;
        if response.status() != StatusCode::OK {
            return Err(format!("sync by {}: {}", self.username, response.status()));
        }
        response.json().await.map_err(|e| e.to_string())
    }

    /// Applies a reply: the server's messages, and the cases to drop.
    pub fn apply(&mut self, reply: &SyncResponse) {
        for document in &reply.documents {
            let Some(message) = &document.message else {
                continue;
            };
            let bytes = STANDARD.decode(message).unwrap();
            let author = testing::author(&self.tokens.user.id, &self.tokens.device_id);
            let actor = self.actor.clone();
            let doc = self
                .docs
                .entry(document.case_id.clone())
                .or_insert_with(|| CaseFile::empty(author, actor));
            let state = self.states.entry(document.case_id.clone()).or_default();
            doc.receive_sync_message(state, &bytes).unwrap();
        }
        for case_id in &reply.drop {
            self.docs.remove(case_id);
            self.states.remove(case_id);
        }
    }

    /// One round: send what this phone has, apply what comes back.
    pub async fn sync_round(&mut self, app: &impl Endpoint) -> (SyncResponse, bool) {
        let (request, sent_any) = self.next_request();
        let (reply, received_any) = self.send(app, &request).await;
        (reply, sent_any || received_any)
    }

    /// Rounds until neither side has anything to send (bounded).
    pub async fn sync_until_quiet(&mut self, app: &impl Endpoint) -> SyncResponse {
        for _ in 0..12 {
            let (reply, busy) = self.sync_round(app).await;
            if !busy {
                return reply;
            }
        }
        panic!("{} did not converge within 12 rounds", self.username);
    }

    /// What a phone does after a request failed or its reply was lost: keep only the
    /// persistent part of each sync state, so that nothing waits for an answer that never came.
    pub fn reset_sync_states(&mut self) {
        for state in self.states.values_mut() {
            *state = PeerState::decode(&state.encode()).unwrap();
        }
    }

    pub fn doc(&mut self, case_id: &str) -> &mut CaseFile {
        self.docs
            .get_mut(case_id)
            .unwrap_or_else(|| panic!("{} does not hold {case_id}", self.username))
    }

    /// Records a visit by this phone's user in `case_id`, started and recorded at `minute`,
    /// with a note of `note_chars` characters; returns its id.
    pub fn record_visit(&mut self, case_id: &str, minute: i64, note_chars: usize) -> String {
        let user = self.tokens.user.id.clone();
        let at = testing::at(minute);
        self.doc(case_id)
            .add(&testing::visit(&user, at, note_chars), at)
            .unwrap()
    }
}

/// The Prometheus text at /metrics.
pub async fn metrics(app: &TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one counter from the Prometheus text at /metrics.
pub async fn counter(app: &TestApp, name: &str) -> u64 {
    metrics(app)
        .await
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap()
        .parse()
        .unwrap()
}
