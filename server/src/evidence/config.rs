//! Evidence settings: where files are stored, and the limits published to phones.

use std::fmt;
use std::path::Path;

use clap::Args;

use crate::blob_store::{BlobStore, BlobStoreError, S3Settings};

/// The media types accepted by default: photos, scans and PDFs of letters and contracts.
pub const DEFAULT_MEDIA_TYPES: &str = "image/jpeg,image/png,image/heic,image/webp,application/pdf";

#[derive(Clone, Args)]
pub struct EvidenceConfig {
    /// Where evidence files are stored: a folder (default `<data dir>/evidence`) or
    /// `s3://BUCKET[/PREFIX]` (endpoint and credentials from the DOORSTEP_S3_* variables).
    #[arg(long = "evidence-store", env = "DOORSTEP_EVIDENCE_STORE")]
    pub store: Option<String>,

    /// S3-compatible endpoint, e.g. `http://127.0.0.1:9000` (default: AWS).
    #[arg(long = "s3-endpoint", env = "DOORSTEP_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// S3 region.
    #[arg(
        long = "s3-region",
        env = "DOORSTEP_S3_REGION",
        default_value = "us-east-1"
    )]
    pub s3_region: String,

    /// S3 access key id.
    #[arg(long = "s3-access-key-id", env = "DOORSTEP_S3_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,

    /// S3 secret access key (prefer the variable: flags show in `ps`).
    #[arg(
        long = "s3-secret-access-key",
        env = "DOORSTEP_S3_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub s3_secret_access_key: Option<String>,

    /// Allow plain HTTP to the S3 endpoint (a local test server only).
    #[arg(long = "s3-allow-http", env = "DOORSTEP_S3_ALLOW_HTTP")]
    pub s3_allow_http: bool,

    /// Largest evidence file accepted, in bytes.
    #[arg(long = "evidence-max-bytes", env = "DOORSTEP_EVIDENCE_MAX_BYTES", default_value_t = 50 * 1024 * 1024)]
    pub max_file_bytes: u64,

    /// Largest chunk of an upload, in bytes.
    #[arg(long = "evidence-max-chunk-bytes", env = "DOORSTEP_EVIDENCE_MAX_CHUNK_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_chunk_bytes: u64,

    /// Media types accepted, comma-separated.
    #[arg(
        long = "evidence-media-types",
        env = "DOORSTEP_EVIDENCE_MEDIA_TYPES",
        value_delimiter = ',',
        default_value = DEFAULT_MEDIA_TYPES
    )]
    pub media_types: Vec<String>,

    /// Uploads left unfinished this many days are deleted.
    #[arg(
        long = "evidence-upload-expiry-days",
        env = "DOORSTEP_EVIDENCE_UPLOAD_EXPIRY_DAYS",
        default_value_t = 7
    )]
    pub upload_expiry_days: u64,
}

impl Default for EvidenceConfig {
    // Built here rather than parsed, so that the process environment cannot leak in.
    fn default() -> Self {
        EvidenceConfig {
            store: None,
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_allow_http: false,
            max_file_bytes: 50 * 1024 * 1024,
            max_chunk_bytes: 4 * 1024 * 1024,
            media_types: DEFAULT_MEDIA_TYPES.split(',').map(String::from).collect(),
            upload_expiry_days: 7,
        }
    }
}

impl fmt::Debug for EvidenceConfig {
    // The S3 secret must never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvidenceConfig")
            .field("store", &self.store)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field("s3_access_key_id", &self.s3_access_key_id)
            .field(
                "s3_secret_access_key",
                &self.s3_secret_access_key.as_ref().map(|_| "***"),
            )
            .field("s3_allow_http", &self.s3_allow_http)
            .field("max_file_bytes", &self.max_file_bytes)
            .field("max_chunk_bytes", &self.max_chunk_bytes)
            .field("media_types", &self.media_types)
            .field("upload_expiry_days", &self.upload_expiry_days)
            .finish()
    }
}

impl EvidenceConfig {
    /// Opens the configured blob store.
    pub fn open_store(&self, data_dir: &Path) -> Result<BlobStore, BlobStoreError> {
        match self.store.as_deref() {
            None => BlobStore::local(&data_dir.join("evidence")),
            Some(url) if url.starts_with("s3://") => {
                let rest = &url["s3://".len()..];
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(BlobStoreError::Config("s3:// needs a bucket name".into()));
                }
                BlobStore::s3(&S3Settings {
                    bucket: bucket.to_string(),
                    prefix: prefix.trim_end_matches('/').to_string(),
                    endpoint: self.s3_endpoint.clone(),
                    region: self.s3_region.clone(),
                    access_key_id: self.s3_access_key_id.clone(),
                    secret_access_key: self.s3_secret_access_key.clone(),
                    allow_http: self.s3_allow_http,
                })
            }
            Some(path) => BlobStore::local(Path::new(path.strip_prefix("file://").unwrap_or(path))),
        }
    }

    pub fn accepts_media_type(&self, media_type: &str) -> bool {
        self.media_types
            .iter()
            .any(|accepted| accepted.trim().eq_ignore_ascii_case(media_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_s3_secret() {
        let config = EvidenceConfig {
            s3_secret_access_key: Some("wJalrXUtnFEMI".into()),
            ..EvidenceConfig::default()
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("wJalrXUtnFEMI"), "{printed}");
        assert!(printed.contains("***"));
    }
}
