//! Building and running the server: data folder, storage, keys, first accounts, listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::auth::jwt::{KeyError, TokenKeys};
use crate::auth::password;
use crate::config::{Config, redact_url};
use crate::demo;
use crate::doc_cache::DocumentCache;
use crate::metrics::Metrics;
use crate::storage::{self, Storage, StorageError};

/// Shared by every request. Config and keys live here, not in globals.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub storage: Arc<dyn Storage>,
    pub keys: TokenKeys,
    /// A real argon2 hash checked when a username is unknown, so that sign-in takes as long
    /// for unknown users as for known ones (usernames cannot be probed by timing).
    pub dummy_password_hash: Arc<String>,
    /// Recent failed sign-ins per username (this instance's).
    pub sign_in_throttle: Arc<crate::auth::sign_in::SignInThrottle>,
    /// Syncs (HTTP and WebSocket) reading and computing at once: one per core.
    pub sync_compute: Arc<tokio::sync::Semaphore>,
    /// Uploads (HTTP and WebSocket) waiting for a turn, taken in case order across syncs.
    pub uploads: Arc<crate::upload_queue::UploadQueue>,
    pub metrics: Arc<Metrics>,
    /// Parsed case files, revalidated against the database on every use.
    pub documents: Arc<DocumentCache>,
    /// Change graphs of case files (what most sync messages are answered from), revalidated
    /// against the database on every use.
    pub graphs: Arc<crate::graph_cache::GraphCache>,
    /// Evidence files: the blob store and the receipt-signing key.
    pub evidence: Arc<crate::evidence::Evidence>,
    /// The automerge-repo WebSocket connections of this process: who has which case open.
    pub repo: Arc<crate::repo_ws::RepoHub>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot create the data folder {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the database {url}: {source}")]
    Storage {
        url: String,
        #[source]
        source: StorageError,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot open the evidence store: {0}")]
    EvidenceStore(#[from] crate::blob_store::BlobStoreError),
    #[error("cannot create the first accounts: {0}")]
    Seed(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// A built server, bound to its address, not yet serving.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    state: AppState,
    notice: String,
}

impl App {
    pub async fn build(config: Config) -> Result<App, StartupError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartupError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let url = config.database_url();
        let storage = storage::open(&url)
            .await
            .map_err(|source| StartupError::Storage {
                url: redact_url(&url),
                source,
            })?;
        let keys = TokenKeys::load_or_generate(&config.signing_key_file())?;
        // Receipts are signed with the same Ed25519 key as access tokens (one key to publish).
        let receipt_signer =
            crate::evidence::receipt::ReceiptSigner::load(&config.signing_key_file())?;
        let blob_store = config.evidence.open_store(&config.data_dir)?;
        // Every instance on one database has the same key, hence the same storage id.
        let storage_id = {
            use sha2::{Digest, Sha256};
            let digest = Sha256::digest(receipt_signer.public_key().as_bytes());
            format!("doorstep-{}", hex::encode(&digest[..16]))
        };
        let dummy_password_hash = password::hash(uuid::Uuid::new_v4().to_string())
            .await
            .map_err(|e| StartupError::Seed(e.to_string()))?;
        let accounts = demo::first_accounts(storage.as_ref(), &config)
            .await
            .map_err(|e| StartupError::Seed(e.to_string()))?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartupError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartupError::Listen {
                addr: config.listen,
                source,
            })?;
        tracing::info!(%addr, database = %redact_url(&url), "doorstep server ready");
        let notice = accounts.notice(addr);
        let config_cache_size = config.document_cache_size;
        let graph_cache_bytes = config.graph_cache_mib * 1024 * 1024;
        let ws_answer_wait = std::time::Duration::from_millis(config.ws_answer_wait_ms);
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let state = AppState {
            config: Arc::new(config),
            storage,
            keys,
            dummy_password_hash: Arc::new(dummy_password_hash),
            sign_in_throttle: Arc::default(),
            sync_compute: Arc::new(tokio::sync::Semaphore::new(cores)),
            uploads: crate::upload_queue::UploadQueue::new(cores),
            metrics: Arc::new(Metrics::default()),
            documents: Arc::new(DocumentCache::new(config_cache_size)),
            graphs: Arc::new(crate::graph_cache::GraphCache::new(graph_cache_bytes)),
            evidence: crate::evidence::Evidence::new(blob_store, receipt_signer),
            repo: Arc::new(crate::repo_ws::RepoHub::new(storage_id, ws_answer_wait)),
        };
        Ok(App {
            listener,
            state,
            notice,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// What to tell the person who started the server: where it listens, how to sign in.
    pub fn notice(&self) -> &str {
        &self.notice
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        // The staff web view shares the listener; the API router keeps the JSON fallback.
        let cleanup = crate::evidence::spawn_cleanup(self.state.clone());
        let remote_pushes = tokio::spawn(crate::repo_ws::remote::push_other_instances_changes(
            self.state.clone(),
        ));
        let router = crate::api::router(self.state.clone()).merge(crate::web::router(self.state));
        let served = crate::http_listener::serve(self.listener, router, shutdown)
            .await
            .map_err(StartupError::Serve);
        cleanup.abort();
        remote_pushes.abort();
        served
    }
}
