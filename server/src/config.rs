//! Configuration from flags and environment variables (a flag wins over its variable).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The caches' default sizes. Measured with the interop benchmark (`BENCHMARKS.md`):
/// a parsed case file takes about 0.4 MiB for 200 visits and about 1 MiB once ten phones
/// have added theirs; with a case's uploads received together each case is parsed about once
/// in a mass reconnect, so 8 of them (16 converged no faster, 30.6 / 34.9 s against 26.8 /
/// 35.5 s over WebSocket, with 8-9 MiB more at the peak: 93 against 84 MiB). A kept change
/// graph holds no change bytes, about 136 bytes a change, so 8 MiB holds every graph of the
/// benchmark's 200 cases (the server's CPU over HTTP about a fifth less than with 4 MiB of
/// graphs that held their bytes, peak memory 1-3 MiB more).
pub const DEFAULT_DOCUMENT_CACHE_SIZE: usize = 8;
pub const DEFAULT_GRAPH_CACHE_MIB: usize = 8;

/// A client that has the changes of a push already has nothing to answer; one that does not
/// answers once it has applied them, which under load (fifty phones on the interop
/// benchmark's two cores) takes seconds: with a 5 s wait some 700 pushes of a run still went
/// out on the timer, one message each; with 15 s, about 30.
pub const DEFAULT_WS_ANSWER_WAIT_MS: u64 = 15_000;

/// Doorstep's central server: phones sync case files here; staff read the merged result.
#[derive(Clone, Parser)]
#[command(name = "doorstep-server", version, about)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "DOORSTEP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Folder for the SQLite database, the signing key and attachments; created on first start.
    #[arg(long, env = "DOORSTEP_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Database URL: `sqlite:PATH` or `postgres://USER:PASSWORD@HOST/DB`.
    /// Default: `sqlite:<data dir>/doorstep.db`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Seed an invented school, staff, workers and cases (only into an empty database).
    #[arg(long, env = "DOORSTEP_DEMO")]
    pub demo: bool,

    /// Ed25519 key (PKCS#8 PEM) that signs access tokens. Default: `<data dir>/signing-key.pem`,
    /// generated on first start.
    #[arg(long, env = "DOORSTEP_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "DOORSTEP_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Time limit for handling one request, in seconds.
    #[arg(long, env = "DOORSTEP_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// Time limit for one sync request (`POST /api/v1/sync`), in seconds. Longer than other
    /// requests: when many phones reconnect at once, a sync waits for its turn, and a phone
    /// told busy must send everything again. Kept under the phones' own 60 s limit.
    #[arg(long, env = "DOORSTEP_SYNC_TIMEOUT_SECS", default_value_t = 55)]
    pub sync_timeout_secs: u64,

    /// Seconds a sync waiting for its turn leaves the request body unread (so that waiting
    /// phones hold no body in memory); past that the body is read and the wait goes on. A
    /// client aborts a send the server does not take within its TCP user timeout (30 s in
    /// reqwest, which the mobile bridge uses), so this stays under it.
    #[arg(long, env = "DOORSTEP_SYNC_BODY_UNREAD_SECS", default_value_t = 20)]
    pub sync_body_unread_secs: u64,

    /// How many parsed case files the sync path keeps in memory (0 turns the cache off).
    #[arg(long, env = "DOORSTEP_DOCUMENT_CACHE_SIZE", default_value_t = DEFAULT_DOCUMENT_CACHE_SIZE)]
    pub document_cache_size: usize,

    /// How many MiB of case files' change graphs (what most sync messages are answered from)
    /// the sync path keeps in memory (0 turns the cache off).
    #[arg(long, env = "DOORSTEP_GRAPH_CACHE_MIB", default_value_t = DEFAULT_GRAPH_CACHE_MIB)]
    pub graph_cache_mib: usize,

    /// How long pushes to a WebSocket client wait for its answer to the last push that
    /// carried changes, or for the other WebSocket syncs running alongside to end, in
    /// milliseconds, before they go out anyway. Until then they are gathered into one message
    /// (see `repo_ws::hub`).
    #[arg(long, env = "DOORSTEP_WS_ANSWER_WAIT_MS", default_value_t = DEFAULT_WS_ANSWER_WAIT_MS)]
    pub ws_answer_wait_ms: u64,

    /// How often, in seconds, an open WebSocket connection checks again that its device is
    /// not revoked, its user not disabled, and which cases are still allocated. A change made
    /// through this instance reaches its connections at once; one made through another
    /// instance on the same database (which cannot tell them) within this interval.
    #[arg(long, env = "DOORSTEP_WS_RECHECK_SECS", default_value_t = 30)]
    pub ws_recheck_secs: u64,

    /// Lifetime of an access token, in seconds.
    #[arg(long, env = "DOORSTEP_ACCESS_TOKEN_TTL_SECS", default_value_t = 15 * 60)]
    pub access_token_ttl_secs: u64,

    /// Lifetime of a refresh token, in seconds.
    #[arg(long, env = "DOORSTEP_REFRESH_TOKEN_TTL_SECS", default_value_t = 30 * 24 * 3600)]
    pub refresh_token_ttl_secs: u64,

    /// Evidence files: where they are stored and the limits published to phones.
    #[command(flatten)]
    pub evidence: crate::evidence::EvidenceConfig,
}

impl Config {
    /// The configuration with every default, for a data folder (tests and embedding).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        // Built here rather than parsed, so that the process environment cannot leak in.
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: data_dir.into(),
            database_url: None,
            demo: false,
            signing_key_file: None,
            max_body_bytes: 8 * 1024 * 1024,
            request_timeout_secs: 30,
            sync_timeout_secs: 55,
            sync_body_unread_secs: 20,
            document_cache_size: DEFAULT_DOCUMENT_CACHE_SIZE,
            graph_cache_mib: DEFAULT_GRAPH_CACHE_MIB,
            ws_answer_wait_ms: DEFAULT_WS_ANSWER_WAIT_MS,
            ws_recheck_secs: 30,
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            evidence: crate::evidence::EvidenceConfig::default(),
        }
    }

    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite:{}", self.data_dir.join("doorstep.db").display()),
        }
    }

    pub fn signing_key_file(&self) -> PathBuf {
        self.signing_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("signing-key.pem"))
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn sync_timeout(&self) -> Duration {
        Duration::from_secs(self.sync_timeout_secs)
    }

    pub fn sync_body_unread(&self) -> Duration {
        Duration::from_secs(self.sync_body_unread_secs)
    }
}

/// A database URL with any password replaced, fit for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

impl fmt::Debug for Config {
    // The database URL may carry a password: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database_url", &redact_url(&self.database_url()))
            .field("demo", &self.demo)
            .field("signing_key_file", &self.signing_key_file())
            .field("max_body_bytes", &self.max_body_bytes)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("sync_timeout_secs", &self.sync_timeout_secs)
            .field("sync_body_unread_secs", &self.sync_body_unread_secs)
            .field("ws_answer_wait_ms", &self.ws_answer_wait_ms)
            .field("ws_recheck_secs", &self.ws_recheck_secs)
            .field("access_token_ttl_secs", &self.access_token_ttl_secs)
            .field("refresh_token_ttl_secs", &self.refresh_token_ttl_secs)
            .field("evidence", &self.evidence)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_database_password() {
        let mut config = Config::with_data_dir("/tmp/x");
        config.database_url = Some("postgres://doorstep:s3cret@db.example/doorstep".into());
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("postgres://doorstep:***@db.example/doorstep"));
    }

    #[test]
    fn flag_defaults_match_with_data_dir() {
        let parsed = Config::try_parse_from(["doorstep-server", "--data-dir", "/d"]).unwrap();
        let built = Config::with_data_dir("/d");
        if std::env::vars().any(|(k, _)| k.starts_with("DOORSTEP_") || k == "DATABASE_URL") {
            return; // the environment changes the parsed defaults
        }
        assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
    }

    #[test]
    fn defaults_keep_everything_in_the_data_dir() {
        let config = Config::with_data_dir("/srv/doorstep");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database_url(), "sqlite:/srv/doorstep/doorstep.db");
        assert_eq!(
            config.signing_key_file(),
            PathBuf::from("/srv/doorstep/signing-key.pem")
        );
    }
}
