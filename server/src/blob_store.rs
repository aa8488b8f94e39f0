//! Where evidence files live: a folder under the data dir (the embedded default) or an
//! S3-compatible object store (for several stateless server instances), both behind the
//! `object_store` crate's one API, so the same code and the same tests serve both.
//!
//! Layout (keys inside the store):
//! - `blobs/<first two hex>/<sha256>`: an accepted file, named by its content (stored once).
//! - `uploads/<upload id>/<offset>-<random>`: one acknowledged chunk of an upload in progress.
//!
//! A file reaches `blobs/` only through [`BlobStore::assemble`], which streams the chunks
//! through SHA-256 into a multipart write and aborts it on a mismatch: a wrong file never
//! appears under a hash it does not have.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum BlobStoreError {
    #[error("the assembled file's SHA-256 or size is not the declared one")]
    HashMismatch,
    #[error("no such object")]
    NotFound,
    #[error("invalid evidence store setting: {0}")]
    Config(String),
    #[error("object store error: {0}")]
    Store(#[source] object_store::Error),
}

impl From<object_store::Error> for BlobStoreError {
    fn from(error: object_store::Error) -> Self {
        match error {
            object_store::Error::NotFound { .. } => BlobStoreError::NotFound,
            other => BlobStoreError::Store(other),
        }
    }
}

/// Settings of an S3-compatible store. The secret never appears in `Debug`.
#[derive(Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// Key prefix inside the bucket ("" for none).
    pub prefix: String,
    /// e.g. `http://127.0.0.1:9000`; None for AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Allow plain HTTP (a local test server); never in production.
    pub allow_http: bool,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// Content-addressed file storage. Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    description: String,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore")
            .field("store", &self.description)
            .finish()
    }
}

/// What [`BlobStore::assemble`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    pub sha256: String,
    pub size: u64,
}

impl BlobStore {
    /// A store in a local folder (created if missing).
    pub fn local(dir: &Path) -> Result<Self, BlobStoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BlobStoreError::Config(format!("cannot create {}: {e}", dir.display())))?;
        let store = LocalFileSystem::new_with_prefix(dir)?;
        Ok(BlobStore {
            store: Arc::new(store),
            description: format!("local folder {}", dir.display()),
        })
    }

    /// A store in an S3 bucket (or any S3-compatible server).
    pub fn s3(settings: &S3Settings) -> Result<Self, BlobStoreError> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_allow_http(settings.allow_http);
        if let Some(endpoint) = &settings.endpoint {
            // Path-style requests: what S3-compatible servers (MinIO, moto, Ceph) expect.
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if let Some(key) = &settings.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &settings.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let s3 = builder.build()?;
        let store: Arc<dyn ObjectStore> = if settings.prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, settings.prefix.as_str()))
        };
        Ok(BlobStore {
            store,
            description: format!("s3://{}/{}", settings.bucket, settings.prefix),
        })
    }

    /// Where an accepted file with this hash lives.
    fn blob_path(sha256: &str) -> ObjectPath {
        let shard = sha256.get(..2).unwrap_or("00");
        ObjectPath::from(format!("blobs/{shard}/{sha256}"))
    }

    /// A fresh key for a chunk of an upload. Random, so that two racing requests for the same
    /// offset never overwrite each other's bytes (only one of them is recorded).
    pub fn chunk_key(upload_id: &str, offset: u64) -> String {
        format!(
            "{}/{offset:020}-{}",
            Self::upload_prefix(upload_id),
            uuid::Uuid::new_v4().simple()
        )
    }

    /// The prefix under which every chunk of an upload is stored.
    pub fn upload_prefix(upload_id: &str) -> String {
        format!("uploads/{upload_id}")
    }

    pub async fn put_chunk(&self, key: &str, bytes: Bytes) -> Result<(), BlobStoreError> {
        self.store
            .put(&ObjectPath::from(key), PutPayload::from_bytes(bytes))
            .await?;
        Ok(())
    }

    /// Deletes an object; one already gone is not an error (cleanup is retried).
    pub async fn delete(&self, key: &str) -> Result<(), BlobStoreError> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the accepted file with this hash is stored.
    pub async fn contains(&self, sha256: &str) -> Result<bool, BlobStoreError> {
        match self.store.head(&Self::blob_path(sha256)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Concatenates the chunk objects `keys` (in order) into the file named `expected_sha256`,
    /// hashing as it goes. Stores nothing unless the hash and size match.
    pub async fn assemble(
        &self,
        keys: &[String],
        expected_sha256: &str,
        expected_size: u64,
    ) -> Result<Assembled, BlobStoreError> {
        let upload = self
            .store
            .put_multipart(&Self::blob_path(expected_sha256))
            .await?;
        let mut writer = WriteMultipart::new(upload);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        for key in keys {
            let read = async {
                let mut stream = self
                    .store
                    .get(&ObjectPath::from(key.as_str()))
                    .await?
                    .into_stream();
                while let Some(bytes) = stream.next().await {
                    let bytes = bytes?;
                    hasher.update(&bytes);
                    size += bytes.len() as u64;
                    writer.wait_for_capacity(4).await?;
                    writer.put(bytes);
                }
                Ok::<(), object_store::Error>(())
            }
            .await;
            if let Err(e) = read {
                let _ = writer.abort().await;
                return Err(e.into());
            }
        }
        let sha256 = hex::encode(hasher.finalize());
        if sha256 != expected_sha256 || size != expected_size {
            // Abort: the multipart write never becomes an object.
            let _ = writer.abort().await;
            return Err(BlobStoreError::HashMismatch);
        }
        writer.finish().await?;
        Ok(Assembled { sha256, size })
    }

    /// The accepted file with this hash, as a stream of bytes, and its size.
    pub async fn get(
        &self,
        sha256: &str,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, BlobStoreError>>), BlobStoreError> {
        let result = self.store.get(&Self::blob_path(sha256)).await?;
        let size = result.meta.size;
        let stream = result
            .into_stream()
            .map(|chunk| chunk.map_err(BlobStoreError::from))
            .boxed();
        Ok((size, stream))
    }

    /// Every key under `prefix` (tests and cleanup checks).
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, BlobStoreError> {
        let prefix = ObjectPath::from(prefix);
        let mut listing = self.store.list(Some(&prefix));
        let mut keys = Vec::new();
        while let Some(meta) = listing.next().await {
            keys.push(meta?.location.to_string());
        }
        keys.sort();
        Ok(keys)
    }
}
