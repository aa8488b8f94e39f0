//! Storage: one [`Storage`] trait, two implementations (SQLite for the embedded default,
//! PostgreSQL at scale), both built from the same SQL by one macro (`sql.rs`).
//!
//! The trait uses `#[async_trait]` (boxed futures) rather than native `async fn` in traits:
//! the server picks its backend from the database URL at run time and keeps it as
//! `Arc<dyn Storage>`, and native async trait methods are not object-safe. One allocation per
//! call is nothing beside a database round trip.
//!
//! Times are Unix milliseconds (`i64`) in both backends.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;

pub mod evidence;
mod postgres;
mod sql;
mod sqlite;

pub use doorstep_sync_core::GraphChange;
pub use evidence::{EvidenceChunk, EvidenceStorage, EvidenceUpload, StoredReceipt};
pub use postgres::{LISTENER_APPLICATION_NAME, PostgresStorage};
pub use sqlite::SqliteStorage;

/// What can go wrong in storage. Detail stays in logs, never in response bodies.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A uniqueness rule was broken (the constraint's columns are named).
    #[error("already exists: {0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    /// A document was written by someone else since it was read (optimistic sync retries).
    #[error("case {0} changed since it was read")]
    DocumentChanged(String),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL (expected sqlite: or postgres://)")]
    UnsupportedUrl,
}

impl From<sqlx::Error> for StorageError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StorageError::Conflict(db.constraint().unwrap_or("unique").to_string())
            }
            sqlx::Error::RowNotFound => StorageError::NotFound,
            _ => StorageError::Database(error),
        }
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

/// The roles of DOMAIN.md. Stored as their snake_case names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    FamilySupportWorker,
    /// Attendance officer / education welfare officer (EWO).
    AttendanceOfficer,
    SchoolAttendanceLead,
    DesignatedSafeguardingLead,
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::FamilySupportWorker,
        Role::AttendanceOfficer,
        Role::SchoolAttendanceLead,
        Role::DesignatedSafeguardingLead,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::FamilySupportWorker => "family_support_worker",
            Role::AttendanceOfficer => "attendance_officer",
            Role::SchoolAttendanceLead => "school_attendance_lead",
            Role::DesignatedSafeguardingLead => "designated_safeguarding_lead",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = StorageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| StorageError::Corrupt(format!("unknown role {s:?}")))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct School {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    /// None for staff who are not tied to one school (an LA admin).
    pub school_id: Option<String>,
    pub username: String,
    pub display_name: String,
    pub role: Role,
    /// The argon2 PHC string.
    pub password_hash: String,
    pub created_at: i64,
    pub disabled_at: Option<i64>,
}

impl fmt::Debug for User {
    // The hash is not a password, but it is offline-attackable: keep it out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("school_id", &self.school_id)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("disabled_at", &self.disabled_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: String,
    pub user_id: String,
    /// The bound Automerge actor id, lower-case hex.
    pub actor_id: String,
    pub name: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// A refresh token as stored: only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    pub id: String,
    pub device_id: String,
    pub family_id: String,
    pub token_hash: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// What presenting a refresh token led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was valid: it is now used and `replacement` stored in its family.
    Rotated {
        device_id: String,
    },
    /// The token had already been used or revoked: its whole family is now revoked.
    Reused {
        device_id: String,
    },
    Expired,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub id: String,
    pub school_id: String,
    pub created_at: i64,
}

/// One Automerge change as the server keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChange {
    /// Change hash, hex.
    pub hash: String,
    /// Actor id, hex.
    pub actor_id: String,
    /// The hashes of the changes it depends on.
    pub deps: Vec<doorstep_sync_core::ChangeHash>,
    /// The change's bytes (`Change::bytes`), enough to rebuild the document without snapshots.
    pub bytes: Vec<u8>,
}

impl NewChange {
    /// The storage form of an Automerge change.
    pub fn from_change(change: &mut automerge::Change) -> NewChange {
        NewChange {
            hash: change.hash().to_string(),
            actor_id: change.actor_id().to_hex_string(),
            deps: change.deps().to_vec(),
            bytes: change.bytes().to_vec(),
        }
    }
}

/// A stored change with its provenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChange {
    pub hash: String,
    pub actor_id: String,
    pub device_id: Option<String>,
    pub user_id: Option<String>,
    pub received_at: i64,
}

/// A staff member's browser session (the web view). The cookie's token is stored only as its
/// SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct WebSession {
    pub token_hash: String,
    pub user_id: String,
    /// The synchronizer token every form of this session carries.
    pub csrf_token: String,
    pub created_at: i64,
    pub expires_at: i64,
}

impl fmt::Debug for WebSession {
    // Both values let whoever reads them act as the user: keep them out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSession")
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A case file as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDocument {
    /// Its bytes: the last full save followed by the changes received since (Automerge loads
    /// the concatenation).
    pub snapshot: Vec<u8>,
    /// Sorted hex heads joined by commas.
    pub heads: String,
    pub updated_at: i64,
}

/// A case allocated to the syncing user, with what its device is known to have of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatedDocument {
    pub case_id: String,
    pub heads: String,
    /// None when this device has never synced the case.
    pub peer_heads: Option<String>,
}

/// A document loaded (and, on PostgreSQL, locked) inside a sync transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedDocument {
    pub case_id: String,
    /// Its bytes: the last full save followed by the changes received since.
    pub snapshot: Vec<u8>,
    /// The stored document's heads (sorted hex joined by commas): what a cached parse of the
    /// document is checked against.
    pub heads: String,
    /// This device's saved sync state for the document.
    pub sync_state: Option<Vec<u8>>,
    /// Raw changes appended to `snapshot` since its last full save.
    pub appended_changes: i64,
}

/// What a sync writes for one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentWrite {
    pub case_id: String,
    /// The heads the document had when it was read: a new snapshot is written only over
    /// those, else the write fails with [`StorageError::DocumentChanged`].
    pub loaded_heads: String,
    /// The new stored bytes and heads, when changes were applied: the old bytes with the new
    /// changes appended, or a full save (see [`crate::sync::stored_bytes`]).
    pub snapshot: Option<(Vec<u8>, String)>,
    /// Raw changes appended since the last full save, in the new bytes; 0 when they are a new
    /// full save. Only a full save is written as bytes: appended changes are rows of
    /// `changes` already, and the document names them.
    pub appended_changes: i64,
    pub changes: Vec<NewChange>,
    /// The device's new sync state and the heads it is known to have.
    pub sync_state: (Vec<u8>, String),
}

/// Who sent a sync and when it arrived: written beside every change it brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub device_id: String,
    pub user_id: String,
    pub received_at: i64,
}

/// One sync request's (or one server-side edit's) database transaction. Dropped without [`commit`](Self::commit), it rolls
/// back: nothing is acknowledged before it is committed.
#[async_trait]
pub trait SyncTransaction: Send {
    /// The user's allocated cases, with this device's known heads of each.
    async fn allocated_documents(
        &mut self,
        user_id: &str,
        device_id: &str,
    ) -> StorageResult<Vec<AllocatedDocument>>;

    /// Cases this device holds sync state for (what it has downloaded and not yet dropped).
    async fn synced_cases(&mut self, device_id: &str) -> StorageResult<Vec<String>>;

    /// Loads the documents (in case-id order, locking each row on PostgreSQL so that
    /// concurrent syncs of one document serialise without deadlock).
    async fn load_documents(
        &mut self,
        device_id: &str,
        case_ids: &[String],
    ) -> StorageResult<Vec<LoadedDocument>>;

    /// Every stored change of a case (in no particular order), with its hash and
    /// dependencies where they were stored: what its change graph is built from.
    async fn graph_changes(&mut self, case_id: &str) -> StorageResult<Vec<GraphChange>>;

    /// Writes snapshots, changes (idempotently: a change already stored keeps its first
    /// provenance) and sync states.
    async fn write_documents(
        &mut self,
        provenance: &Provenance,
        writes: &[DocumentWrite],
    ) -> StorageResult<()>;

    /// Writes a change the server made for a staff member (no device, no sync state).
    async fn write_server_change(
        &mut self,
        case_id: &str,
        snapshot: (&[u8], &str),
        changes: &[NewChange],
        user_id: &str,
        at: i64,
    ) -> StorageResult<()>;

    /// Every actor bound to this device (the one it signed in with, and any it was bound to
    /// since): changes by these actors are this device's.
    async fn device_actors(&mut self, device_id: &str) -> StorageResult<Vec<String>>;

    /// Binds actors nobody has used to this device and returns those that are not, or cannot
    /// be, this device's: bound to another device, or already seen writing for another device
    /// or for the server. Binding commits with the transaction.
    async fn claim_actors(
        &mut self,
        device_id: &str,
        actor_ids: &[String],
        at: i64,
    ) -> StorageResult<Vec<String>>;

    /// Forgets this device's sync state for cases it has dropped.
    async fn forget_sync_states(
        &mut self,
        device_id: &str,
        case_ids: &[String],
    ) -> StorageResult<()>;

    async fn commit(self: Box<Self>) -> StorageResult<()>;
}

/// Everything the server keeps. Implementations: [`SqliteStorage`], [`PostgresStorage`].
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug + EvidenceStorage {
    /// A cheap round trip, for readiness.
    async fn ping(&self) -> StorageResult<()>;

    async fn create_school(&self, school: &School) -> StorageResult<()>;
    async fn school(&self, id: &str) -> StorageResult<Option<School>>;

    async fn create_user(&self, user: &User) -> StorageResult<()>;
    async fn user(&self, id: &str) -> StorageResult<Option<User>>;
    async fn user_by_username(&self, username: &str) -> StorageResult<Option<User>>;
    async fn count_users(&self) -> StorageResult<i64>;
    /// Disables the user and revokes all their refresh tokens.
    async fn disable_user(&self, id: &str, at: i64) -> StorageResult<()>;

    async fn create_device(&self, device: &Device) -> StorageResult<()>;
    async fn device(&self, id: &str) -> StorageResult<Option<Device>>;
    async fn device_by_actor(&self, actor_id: &str) -> StorageResult<Option<Device>>;
    /// Revokes the device and all its refresh tokens.
    async fn revoke_device(&self, id: &str, at: i64) -> StorageResult<()>;

    async fn insert_refresh_token(&self, token: &RefreshToken) -> StorageResult<()>;
    /// Uses the token whose hash is `presented_hash` and stores `replacement` in its family, in
    /// one transaction; a token used twice revokes its whole family.
    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        replacement: &RefreshToken,
        now: i64,
    ) -> StorageResult<Rotation>;

    /// Creates a case with its first snapshot and the changes that made it.
    async fn create_case(
        &self,
        case: &Case,
        snapshot: &[u8],
        heads: &str,
        changes: &[NewChange],
        created_by: Option<&str>,
    ) -> StorageResult<()>;
    async fn case(&self, id: &str) -> StorageResult<Option<Case>>;
    /// The cases of one school, or of every school, in id order.
    async fn list_cases(&self, school_id: Option<&str>) -> StorageResult<Vec<Case>>;
    async fn allocate(&self, case_id: &str, user_id: &str, at: i64) -> StorageResult<()>;
    async fn deallocate(&self, case_id: &str, user_id: &str) -> StorageResult<()>;
    async fn allocated_case_ids(&self, user_id: &str) -> StorageResult<Vec<String>>;

    async fn document(&self, case_id: &str) -> StorageResult<Option<StoredDocument>>;
    /// The stored changes of a case, oldest first.
    async fn changes(&self, case_id: &str) -> StorageResult<Vec<StoredChange>>;

    /// Stores a new web session.
    async fn create_web_session(&self, session: &WebSession) -> StorageResult<()>;
    /// The session with this token hash, if it exists and has not expired at `now`.
    async fn web_session(&self, token_hash: &str, now: i64) -> StorageResult<Option<WebSession>>;
    /// Ends a session (sign-out); every expired session is swept at the same time.
    async fn delete_web_session(&self, token_hash: &str, now: i64) -> StorageResult<()>;
    /// Notes that `user_id` opened `case_id` at `at`.
    async fn record_case_view(&self, user_id: &str, case_id: &str, at: i64) -> StorageResult<()>;
    /// When `user_id` last opened each case they have opened: (case id, Unix ms).
    async fn case_views(&self, user_id: &str) -> StorageResult<Vec<(String, i64)>>;

    /// Starts the transaction of one sync request.
    async fn begin_sync(&self) -> StorageResult<Box<dyn SyncTransaction>>;
    /// A sync transaction that only reads: it takes no write lock and no row locks, so the
    /// Automerge work that follows does not hold up other writers. Writes go through a
    /// [`Storage::begin_sync`] transaction afterwards, which refuses to overwrite a document
    /// that changed meanwhile.
    async fn begin_sync_read(&self) -> StorageResult<Box<dyn SyncTransaction>>;

    /// The case ids of documents that other processes sharing the database change, as their
    /// changes commit (a burst of changes to one document may come as one), for this process
    /// to push to its WebSocket clients. None where no other process writes (SQLite). Changes
    /// committed while the watch's connection was lost are not reported one by one: once it
    /// listens again it reports [`DocumentChange::Resumed`].
    async fn watch_documents(&self) -> StorageResult<Option<DocumentChanges>>;
}

/// What [`Storage::watch_documents`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentChange {
    /// Another process committed a change to this case's document.
    Changed(String),
    /// The watch lost its connection and listens again: any document may have changed
    /// meanwhile unannounced.
    Resumed,
}

/// Documents changed by other processes (see [`Storage::watch_documents`]).
pub type DocumentChanges = tokio::sync::mpsc::UnboundedReceiver<DocumentChange>;

/// Opens (creating if needed, for SQLite) and migrates the database at `url`.
pub async fn open(url: &str) -> StorageResult<Arc<dyn Storage>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStorage::connect(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStorage::connect(url).await?))
    } else {
        Err(StorageError::UnsupportedUrl)
    }
}

/// Sorted hex heads joined by commas: the form stored beside snapshots and sync states.
pub fn heads_key(heads: &[doorstep_sync_core::ChangeHash]) -> String {
    let mut hex: Vec<String> = heads.iter().map(|h| h.to_string()).collect();
    hex.sort();
    hex.join(",")
}
