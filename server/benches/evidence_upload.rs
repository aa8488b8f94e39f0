//! Evidence upload benchmark (prints figures; not a timed test): a 10 MB photo uploaded in
//! chunks over loopback to an in-process server (SQLite, local blob store), against a plain
//! file copy on the same machine; and the extra bytes a resume costs after a cut at 50%.
//!
//! `cargo bench -p doorstep-server --bench evidence_upload`
//! Sizes: DOORSTEP_BENCH_EVIDENCE_MB (10), DOORSTEP_BENCH_CHUNK_KB (1024), DOORSTEP_BENCH_RUNS (3).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly"
)]

use std::io::Write;
use std::time::{Duration, Instant};

use doorstep_server::api::TokenResponse;
use doorstep_server::evidence::api::{UploadState, UploadStatus};
use doorstep_server::{App, Config};
use doorstep_sync_core::testing;
use serde_json::json;
use sha2::{Digest, Sha256};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn photo(len: usize, seed: u64) -> Vec<u8> {
    // xorshift: incompressible, like a JPEG.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn mb_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / 1_000_000.0 / elapsed.as_secs_f64()
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn start(&self, file: &[u8]) -> UploadStatus {
        self.http
            .post(format!(
                "{}/api/v1/cases/case-demo-2/evidence/uploads",
                self.base
            ))
            .bearer_auth(&self.token)
            .json(&json!({
                "sha256": hex::encode(Sha256::digest(file)),
                "size": file.len(),
                "media_type": "image/jpeg",
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn chunk_path(&self, status: &UploadStatus) -> String {
        format!(
            "/api/v1/cases/case-demo-2/evidence/uploads/{}?offset={}",
            status.upload_id.as_deref().unwrap(),
            status.offset
        )
    }

    /// Sends chunks from the acknowledged offset to the end; returns the body bytes sent.
    async fn send_rest(&self, file: &[u8], mut status: UploadStatus, chunk: usize) -> usize {
        let mut sent = 0;
        while status.state == UploadState::InProgress {
            let from = status.offset as usize;
            let to = (from + chunk).min(file.len());
            status = self
                .http
                .put(format!("{}{}", self.base, self.chunk_path(&status)))
                .bearer_auth(&self.token)
                .body(file[from..to].to_vec())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            sent += to - from;
        }
        sent
    }
}

fn main() {
    let size = env_number("DOORSTEP_BENCH_EVIDENCE_MB", 10) * 1_000_000;
    let chunk = env_number("DOORSTEP_BENCH_CHUNK_KB", 1024) * 1024;
    let runs = env_number("DOORSTEP_BENCH_RUNS", 3);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Baseline: a plain copy of the same bytes, made durable like the blob store's writes.
    let source = dir.path().join("photo.jpg");
    std::fs::write(&source, photo(size, 0)).unwrap();
    let mut copy_best = Duration::MAX;
    for run in 0..runs {
        let target = dir.path().join(format!("copy-{run}.jpg"));
        let started = Instant::now();
        std::fs::copy(&source, &target).unwrap();
        std::fs::File::open(&target).unwrap().sync_all().unwrap();
        copy_best = copy_best.min(started.elapsed());
    }

    runtime.block_on(async {
        let mut config = Config::with_data_dir(dir.path().join("data"));
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.demo = true;
        config.evidence.max_chunk_bytes = chunk as u64;
        let app = App::build(config).await.unwrap();
        let base = format!("http://{}", app.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::new();
        let tokens: TokenResponse = http
            .post(format!("{base}/api/v1/auth/sign-in"))
            .json(&json!({
                "username": "worker",
                "password": doorstep_server::demo::DEMO_PASSWORD,
                "device_name": "bench phone",
                "actor_id": testing::actor(1).to_hex_string(),
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let client = Client {
            http,
            base: base.clone(),
            token: tokens.access_token,
        };

        // Full uploads, a new file each run (the same one would be deduplicated at once).
        let mut upload_best = Duration::MAX;
        for run in 0..runs {
            let file = photo(size, 1 + run as u64);
            let started = Instant::now();
            let status = client.start(&file).await;
            client.send_rest(&file, status, chunk).await;
            upload_best = upload_best.min(started.elapsed());
        }

        // A cut at 50%: the chunk in flight dies half sent, the phone asks for the offset and
        // resumes. Extra bytes = the lost part of the cut chunk + the offset query.
        let file = photo(size, 99);
        let status = client.start(&file).await;
        let half = size / 2;
        let mut status_now = status;
        let mut sent_before_cut = 0;
        while (status_now.offset as usize) + chunk <= half {
            let from = status_now.offset as usize;
            status_now = client
                .http
                .put(format!("{base}{}", client.chunk_path(&status_now)))
                .bearer_auth(&client.token)
                .body(file[from..from + chunk].to_vec())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            sent_before_cut += chunk;
        }
        let cut_from = status_now.offset as usize;
        let cut_len = (cut_from + chunk).min(size) - cut_from;
        let lost = half - cut_from;
        let addr = base.trim_start_matches("http://").to_string();
        let path = client.chunk_path(&status_now);
        let token = client.token.clone();
        let partial = file[cut_from..half].to_vec();
        tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(&addr).unwrap();
            write!(
                stream,
                "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
                 Content-Length: {cut_len}\r\n\r\n"
            )
            .unwrap();
            stream.write_all(&partial).unwrap();
            let _ = stream.shutdown(std::net::Shutdown::Both);
        })
        .await
        .unwrap();
        let query = client
            .http
            .get(format!(
                "{base}/api/v1/cases/case-demo-2/evidence/uploads/{}",
                status_now.upload_id.as_deref().unwrap()
            ))
            .bearer_auth(&client.token)
            .send()
            .await
            .unwrap();
        let query_bytes = query.content_length().unwrap_or(0) as usize;
        let resumed: UploadStatus = query.json().await.unwrap();
        let sent_after = client.send_rest(&file, resumed, chunk).await;
        let body_bytes = sent_before_cut + lost + sent_after;

        println!("evidence upload benchmark ({runs} runs, best of each; loopback, SQLite, local blob store)");
        println!("  file: {:.1} MB, chunk: {} KiB", size as f64 / 1e6, chunk / 1024);
        println!(
            "  plain file copy + fsync:   {:>8.1} ms  {:>8.1} MB/s",
            copy_best.as_secs_f64() * 1000.0,
            mb_per_s(size, copy_best)
        );
        println!(
            "  chunked upload (verified): {:>8.1} ms  {:>8.1} MB/s  ({:.1}x the copy's time)",
            upload_best.as_secs_f64() * 1000.0,
            mb_per_s(size, upload_best),
            upload_best.as_secs_f64() / copy_best.as_secs_f64()
        );
        println!(
            "  resume after a cut at 50%: {} body bytes sent for {} ({} lost in the cut chunk, {:.2}%), \
             plus one offset query (~{} bytes of JSON)",
            body_bytes,
            size,
            lost,
            lost as f64 * 100.0 / size as f64,
            query_bytes
        );
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    });
}
