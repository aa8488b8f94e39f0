//! Evidence files: chunked, resumable, content-addressed uploads, signed receipts, safe
//! downloads, and the blob store underneath on the local filesystem and on S3.
//!
//! The S3 tests need an S3-compatible server: `DOORSTEP_TEST_S3_ENDPOINT` (e.g. moto's server,
//! which `scripts/test-s3.sh` installs and starts). Without it they pass with a loud notice.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use doorstep_server::Config;
use doorstep_server::blob_store::{BlobStore, BlobStoreError, S3Settings};
use doorstep_server::evidence::api::{
    EvidenceLimits, PublicKeyResponse, UploadState, UploadStatus,
};
use doorstep_server::evidence::receipt::{Receipt, ReceiptError, verify_receipt};
use doorstep_server::evidence::{EvidenceConfig, clean_abandoned_uploads};
use doorstep_sync_core::testing;
use ed25519_dalek::VerifyingKey;
use reqwest::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::helpers::{Backend, TestApp, both_backends, error_of, spawn_app, spawn_app_with};

both_backends!(
    an_upload_in_chunks_is_verified_received_and_downloadable,
    an_upload_resumes_after_the_connection_is_cut_mid_chunk,
    a_wrong_hash_is_refused_and_nothing_is_kept,
    oversize_files_and_refused_media_types_are_refused_up_front,
    chunks_out_of_order_or_overlapping_are_refused,
    uploads_for_cases_the_caller_may_not_see_are_not_found,
    abandoned_uploads_are_cleaned_up,
    a_file_already_held_completes_at_once,
    receipts_verify_with_the_public_key_and_fail_when_altered,
);

/// An invented "photo": deterministic bytes of a given length.
fn photo(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A signed-in phone of `username` (a demo user).
struct Uploader<'a> {
    app: &'a TestApp,
    token: String,
}

impl<'a> Uploader<'a> {
    async fn new(app: &'a TestApp, username: &str, actor: u32) -> Self {
        let tokens = app.tokens(username, &testing::actor(actor)).await;
        Uploader {
            app,
            token: tokens.access_token,
        }
    }

    async fn start(
        &self,
        case: &str,
        sha256: &str,
        size: u64,
        media_type: &str,
    ) -> reqwest::Response {
        self.app
            .client
            .post(
                self.app
                    .url(&format!("/api/v1/cases/{case}/evidence/uploads")),
            )
            .bearer_auth(&self.token)
            .json(&json!({ "sha256": sha256, "size": size, "media_type": media_type }))
            .send()
            .await
            .unwrap()
    }

    async fn start_ok(&self, case: &str, file: &[u8], media_type: &str) -> UploadStatus {
        let response = self
            .start(case, &sha256_hex(file), file.len() as u64, media_type)
            .await;
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.unwrap()
    }

    async fn put(
        &self,
        case: &str,
        upload_id: &str,
        offset: u64,
        chunk: &[u8],
    ) -> reqwest::Response {
        self.app
            .client
            .put(self.app.url(&format!(
                "/api/v1/cases/{case}/evidence/uploads/{upload_id}?offset={offset}"
            )))
            .bearer_auth(&self.token)
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap()
    }

    async fn status(&self, case: &str, upload_id: &str) -> reqwest::Response {
        self.app
            .client
            .get(self.app.url(&format!(
                "/api/v1/cases/{case}/evidence/uploads/{upload_id}"
            )))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    async fn download(&self, case: &str, sha256: &str) -> reqwest::Response {
        self.app
            .client
            .get(
                self.app
                    .url(&format!("/api/v1/cases/{case}/evidence/{sha256}")),
            )
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    /// Uploads a whole file in chunks of `chunk` bytes; returns the final status.
    async fn upload(
        &self,
        case: &str,
        file: &[u8],
        media_type: &str,
        chunk: usize,
    ) -> UploadStatus {
        let mut status = self.start_ok(case, file, media_type).await;
        while status.state == UploadState::InProgress {
            let id = status.upload_id.clone().unwrap();
            let from = status.offset as usize;
            let to = (from + chunk).min(file.len());
            let response = self.put(case, &id, from as u64, &file[from..to]).await;
            assert_eq!(response.status(), StatusCode::OK);
            status = response.json().await.unwrap();
            assert_eq!(status.offset as usize, to);
        }
        status
    }
}

async fn public_key(app: &TestApp) -> VerifyingKey {
    let key: PublicKeyResponse = app
        .client
        .get(app.url("/api/v1/evidence/public-key"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(key.algorithm, "Ed25519");
    assert!(key.public_key_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    let bytes: [u8; 32] = STANDARD.decode(key.public_key).unwrap().try_into().unwrap();
    VerifyingKey::from_bytes(&bytes).unwrap()
}

/// Chunk objects the store holds for uploads in progress.
async fn chunk_objects(app: &TestApp) -> Vec<String> {
    app.state.evidence.store.keys("uploads").await.unwrap()
}

async fn an_upload_in_chunks_is_verified_received_and_downloadable(backend: Backend) {
    let app = spawn_app(backend).await;
    check_upload_and_download(&app).await;
}

/// The full journey, shared by the filesystem and the S3 runs.
async fn check_upload_and_download(app: &TestApp) {
    let worker = Uploader::new(app, "worker", 1).await;
    let file = photo(300_000, 1);
    let status = worker
        .upload("case-demo-2", &file, "image/jpeg", 64 * 1024)
        .await;
    assert_eq!(status.state, UploadState::Complete);
    let receipt = status.receipt.unwrap();
    assert_eq!(receipt.sha256, sha256_hex(&file));
    assert_eq!(receipt.size, file.len() as u64);
    assert_eq!(receipt.case_id, "case-demo-2");
    let me: serde_json::Value = app.get_me(&worker.token).await.json().await.unwrap();
    assert_eq!(receipt.uploader_user_id, me["user"]["id"].as_str().unwrap());
    verify_receipt(&receipt, &public_key(app).await).unwrap();
    assert!(
        chunk_objects(app).await.is_empty(),
        "chunks are deleted once assembled"
    );

    // Anyone who may see the case downloads it, as an image shown inline, never sniffed.
    let officer = Uploader::new(app, "officer", 2).await;
    for reader in [&worker, &officer] {
        let response = reader.download("case-demo-2", &receipt.sha256).await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "image/jpeg");
        assert!(
            headers["content-disposition"]
                .to_str()
                .unwrap()
                .starts_with("inline")
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
        assert_eq!(response.bytes().await.unwrap().as_ref(), file.as_slice());
    }

    // Someone who may not see the case gets what a missing file gets.
    let unallocated = Uploader::new(app, "officer", 3).await;
    let elsewhere = unallocated.download("case-demo-3", &receipt.sha256).await;
    let (status_elsewhere, code_elsewhere) = error_of(elsewhere).await;
    let missing = worker
        .download("case-demo-2", &sha256_hex(b"no such file"))
        .await;
    assert_eq!(
        error_of(missing).await,
        (status_elsewhere, code_elsewhere.clone())
    );
    assert_eq!(
        (status_elsewhere, code_elsewhere.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    // The file is in case 2, not in case 3, even for a reader of case 3.
    let other_case = worker.download("case-demo-3", &receipt.sha256).await;
    assert_eq!(other_case.status(), StatusCode::NOT_FOUND);

    // Anything but an image is an attachment of no particular type.
    let letter = photo(5_000, 2);
    let status = worker
        .upload("case-demo-2", &letter, "application/pdf", 4096)
        .await;
    let response = worker
        .download("case-demo-2", &status.receipt.unwrap().sha256)
        .await;
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");

    // Starting again after completion (a lost answer) returns the same receipt.
    let again = worker.start_ok("case-demo-2", &file, "image/jpeg").await;
    assert_eq!(again.state, UploadState::Complete);
    assert_eq!(again.receipt.unwrap().receipt_id, receipt.receipt_id);
}

async fn an_upload_resumes_after_the_connection_is_cut_mid_chunk(backend: Backend) {
    let app = spawn_app(backend).await;
    let worker = Uploader::new(&app, "worker", 1).await;
    let file = photo(200_000, 3);
    let started = worker.start_ok("case-demo-2", &file, "image/png").await;
    let id = started.upload_id.unwrap();
    let first = worker.put("case-demo-2", &id, 0, &file[..80_000]).await;
    assert_eq!(first.status(), StatusCode::OK);

    // The second chunk's connection dies halfway: headers promise 80 000 bytes, 30 000 arrive.
    let addr = app.base.trim_start_matches("http://").to_string();
    let path = format!("/api/v1/cases/case-demo-2/evidence/uploads/{id}?offset=80000");
    let token = worker.token.clone();
    let partial = file[80_000..110_000].to_vec();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 80000\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .unwrap();
        stream.write_all(&partial).unwrap();
        stream.flush().unwrap();
        stream.shutdown(std::net::Shutdown::Both).unwrap();
    })
    .await
    .unwrap();

    // The phone asks where to resume: the cut chunk was not acknowledged.
    let status: UploadStatus = worker
        .status("case-demo-2", &id)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status.offset, 80_000);
    let response = worker
        .put("case-demo-2", &id, 80_000, &file[80_000..])
        .await;
    assert_eq!(response.headers()["upload-offset"], "200000");
    let done: UploadStatus = response.json().await.unwrap();
    assert_eq!(done.state, UploadState::Complete);
    verify_receipt(&done.receipt.unwrap(), &public_key(&app).await).unwrap();
    let body = worker
        .download("case-demo-2", &sha256_hex(&file))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.as_ref(), file.as_slice());
}

async fn a_wrong_hash_is_refused_and_nothing_is_kept(backend: Backend) {
    let app = spawn_app(backend).await;
    let worker = Uploader::new(&app, "worker", 1).await;
    let file = photo(50_000, 4);
    let claimed = sha256_hex(b"a different file");
    let started: UploadStatus = worker
        .start("case-demo-2", &claimed, file.len() as u64, "image/jpeg")
        .await
        .json()
        .await
        .unwrap();
    let id = started.upload_id.unwrap();
    assert_eq!(
        worker
            .put("case-demo-2", &id, 0, &file[..25_000])
            .await
            .status(),
        StatusCode::OK
    );
    let last = worker
        .put("case-demo-2", &id, 25_000, &file[25_000..])
        .await;
    assert_eq!(
        error_of(last).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "hash_mismatch".into())
    );

    // Nothing of it stays: no chunks, no file, no upload, no receipt.
    assert!(chunk_objects(&app).await.is_empty());
    assert!(
        app.state
            .evidence
            .store
            .keys("blobs")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        worker.status("case-demo-2", &id).await.status(),
        StatusCode::NOT_FOUND
    );
    assert!(
        app.storage()
            .evidence_in_case("case-demo-2", &claimed)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        worker.download("case-demo-2", &claimed).await.status(),
        StatusCode::NOT_FOUND
    );
}

async fn oversize_files_and_refused_media_types_are_refused_up_front(backend: Backend) {
    let app = spawn_app_with(backend, |config: &mut Config| {
        config.evidence.max_file_bytes = 1_000;
        config.evidence.max_chunk_bytes = 400;
    })
    .await;
    let limits: EvidenceLimits = app
        .client
        .get(app.url("/api/v1/evidence/limits"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(limits.max_file_bytes, 1_000);
    assert_eq!(limits.max_chunk_bytes, 400);
    assert!(limits.media_types.contains(&"image/jpeg".to_string()));
    assert!(
        !limits
            .media_types
            .iter()
            .any(|t| t.contains("svg") || t.contains("html"))
    );

    let worker = Uploader::new(&app, "worker", 1).await;
    let sha = sha256_hex(b"x");
    let too_big = worker.start("case-demo-2", &sha, 1_001, "image/jpeg").await;
    assert_eq!(
        error_of(too_big).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "file_too_large".into())
    );
    for refused in ["text/html", "image/svg+xml", "application/x-msdownload"] {
        let response = worker.start("case-demo-2", &sha, 10, refused).await;
        assert_eq!(
            error_of(response).await,
            (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "media_type_refused".into()
            )
        );
    }
    let bad_hash = worker
        .start("case-demo-2", "not-a-hash", 10, "image/jpeg")
        .await;
    assert_eq!(
        error_of(bad_hash).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_sha256".into())
    );
    assert!(
        app.storage()
            .stale_evidence_uploads(i64::MAX)
            .await
            .unwrap()
            .is_empty()
    );

    // A chunk over the chunk limit is refused before it is read.
    let file = photo(1_000, 5);
    let started = worker.start_ok("case-demo-2", &file, "image/jpeg").await;
    let id = started.upload_id.unwrap();
    let big_chunk = worker.put("case-demo-2", &id, 0, &file[..401]).await;
    assert_eq!(
        error_of(big_chunk).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "chunk_too_large".into())
    );
    assert!(chunk_objects(&app).await.is_empty());
}

async fn chunks_out_of_order_or_overlapping_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let worker = Uploader::new(&app, "worker", 1).await;
    let file = photo(30_000, 6);
    let id = worker
        .start_ok("case-demo-2", &file, "image/jpeg")
        .await
        .upload_id
        .unwrap();
    assert_eq!(
        worker
            .put("case-demo-2", &id, 0, &file[..10_000])
            .await
            .status(),
        StatusCode::OK
    );

    let gap = worker
        .put("case-demo-2", &id, 20_000, &file[20_000..])
        .await;
    assert_eq!(gap.headers()["upload-offset"], "10000");
    assert_eq!(
        error_of(gap).await,
        (
            StatusCode::RANGE_NOT_SATISFIABLE,
            "chunk_out_of_order".into()
        )
    );
    let overlap = worker
        .put("case-demo-2", &id, 5_000, &file[5_000..15_000])
        .await;
    assert_eq!(overlap.headers()["upload-offset"], "10000");
    assert_eq!(
        error_of(overlap).await,
        (StatusCode::CONFLICT, "chunk_overlaps".into())
    );
    let replay = worker.put("case-demo-2", &id, 0, &file[..10_000]).await;
    assert_eq!(
        error_of(replay).await,
        (StatusCode::CONFLICT, "chunk_overlaps".into())
    );
    let past_the_end = worker
        .put("case-demo-2", &id, 10_000, &photo(20_001, 0))
        .await;
    assert_eq!(
        error_of(past_the_end).await,
        (
            StatusCode::RANGE_NOT_SATISFIABLE,
            "chunk_beyond_size".into()
        )
    );
    for bad_offset in ["?offset=ten", "?offset=-1", ""] {
        let response = app
            .client
            .put(app.url(&format!(
                "/api/v1/cases/case-demo-2/evidence/uploads/{id}{bad_offset}"
            )))
            .bearer_auth(&worker.token)
            .body(file[10_000..20_000].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_of(response).await,
            (StatusCode::BAD_REQUEST, "invalid_query".into()),
            "offset {bad_offset:?}"
        );
    }
    let status: UploadStatus = worker
        .status("case-demo-2", &id)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status.offset, 10_000);
    assert_eq!(
        chunk_objects(&app).await.len(),
        1,
        "refused chunks leave nothing behind"
    );
    // Starting the same file again resumes the same upload from its offset (idempotent).
    let again = worker.start_ok("case-demo-2", &file, "image/jpeg").await;
    assert_eq!(
        (again.upload_id.as_deref(), again.offset),
        (Some(id.as_str()), 10_000)
    );
    let done = worker
        .upload("case-demo-2", &file, "image/jpeg", 10_000)
        .await;
    assert_eq!(done.state, UploadState::Complete);
}

async fn uploads_for_cases_the_caller_may_not_see_are_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let worker = Uploader::new(&app, "worker", 1).await;
    let file = photo(1_000, 7);
    let sha = sha256_hex(&file);
    // case-demo-1 is allocated to the officer, not the worker; the other case does not exist.
    let unallocated = worker.start("case-demo-1", &sha, 1_000, "image/jpeg").await;
    let missing = worker
        .start("case-nowhere", &sha, 1_000, "image/jpeg")
        .await;
    let unallocated = error_of(unallocated).await;
    assert_eq!(unallocated, (StatusCode::NOT_FOUND, "not_found".into()));
    assert_eq!(error_of(missing).await, unallocated);

    // Another user's upload id is not theirs to see or extend, even in a case they share.
    let officer = Uploader::new(&app, "officer", 2).await;
    let id = officer
        .start_ok("case-demo-2", &file, "image/jpeg")
        .await
        .upload_id
        .unwrap();
    assert_eq!(
        worker.status("case-demo-2", &id).await.status(),
        StatusCode::NOT_FOUND
    );
    let put = worker.put("case-demo-2", &id, 0, &file).await;
    assert_eq!(error_of(put).await, unallocated);
    let status: UploadStatus = officer
        .status("case-demo-2", &id)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status.offset, 0);
    // Unauthenticated callers are refused outright.
    let anonymous = app
        .client
        .post(app.url("/api/v1/cases/case-demo-2/evidence/uploads"))
        .json(&json!({ "sha256": sha, "size": 1000, "media_type": "image/jpeg" }))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

async fn abandoned_uploads_are_cleaned_up(backend: Backend) {
    let app = spawn_app(backend).await;
    let worker = Uploader::new(&app, "worker", 1).await;
    let file = photo(20_000, 8);
    let id = worker
        .start_ok("case-demo-2", &file, "image/jpeg")
        .await
        .upload_id
        .unwrap();
    assert_eq!(
        worker
            .put("case-demo-2", &id, 0, &file[..5_000])
            .await
            .status(),
        StatusCode::OK
    );
    let recent = photo(20_000, 9);
    let kept = worker
        .start_ok("case-demo-2", &recent, "image/jpeg")
        .await
        .upload_id
        .unwrap();
    assert_eq!(chunk_objects(&app).await.len(), 1);
    // A chunk stored by a request that died before recording it goes too.
    let orphan = BlobStore::chunk_key(&id, 5_000);
    app.state
        .evidence
        .store
        .put_chunk(&orphan, file[5_000..6_000].to_vec().into())
        .await
        .unwrap();

    let now = chrono::Utc::now().timestamp_millis();
    // Nothing is old yet.
    assert_eq!(clean_abandoned_uploads(&app.state, now).await.unwrap(), 0);
    // Eight days on (the default expiry is seven), both are abandoned.
    let later = now + 8 * 24 * 3600 * 1000;
    assert_eq!(clean_abandoned_uploads(&app.state, later).await.unwrap(), 2);
    assert!(chunk_objects(&app).await.is_empty());
    assert_eq!(
        worker.status("case-demo-2", &id).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        worker.status("case-demo-2", &kept).await.status(),
        StatusCode::NOT_FOUND
    );
    // The phone starts again from zero.
    let again = worker.start_ok("case-demo-2", &file, "image/jpeg").await;
    assert_eq!((again.state, again.offset), (UploadState::InProgress, 0));
}

async fn a_file_already_held_completes_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let worker = Uploader::new(&app, "worker", 1).await;
    let file = photo(40_000, 10);
    let first = worker
        .upload("case-demo-2", &file, "image/jpeg", 16_384)
        .await;
    let first = first.receipt.unwrap();

    // The same file from another phone, into another case: no bytes sent, its own receipt.
    let officer = Uploader::new(&app, "officer", 2).await;
    let second = officer.start_ok("case-demo-1", &file, "image/jpeg").await;
    assert_eq!(second.state, UploadState::Complete);
    let second = second.receipt.unwrap();
    assert_eq!(second.case_id, "case-demo-1");
    assert_ne!(second.uploader_device_id, first.uploader_device_id);
    assert_ne!(second.receipt_id, first.receipt_id);
    verify_receipt(&second, &public_key(&app).await).unwrap();
    // Stored once.
    let blobs = app.state.evidence.store.keys("blobs").await.unwrap();
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    let body = officer
        .download("case-demo-1", &first.sha256)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.as_ref(), file.as_slice());
    // The same hash with another size is a lie about one of them.
    let lie = officer
        .start("case-demo-1", &first.sha256, 40_001, "image/jpeg")
        .await;
    assert_eq!(
        error_of(lie).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "size_mismatch".into())
    );
}

async fn receipts_verify_with_the_public_key_and_fail_when_altered(backend: Backend) {
    let app = spawn_app(backend).await;
    let worker = Uploader::new(&app, "worker", 1).await;
    let file = photo(10_000, 11);
    let receipt = worker
        .upload("case-demo-3", &file, "image/jpeg", 10_000)
        .await
        .receipt
        .unwrap();
    let key = public_key(&app).await;
    verify_receipt(&receipt, &key).unwrap();
    // The stored receipt is the one returned.
    let stored = app
        .storage()
        .evidence_in_case("case-demo-3", &receipt.sha256)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(doorstep_server::evidence::receipt_of(&stored), receipt);

    let alterations: [fn(&mut Receipt); 8] = [
        |r| r.receipt_id.push('x'),
        |r| r.case_id = "case-demo-2".into(),
        |r| r.sha256 = sha256_hex(b"another"),
        |r| r.size += 1,
        |r| r.media_type = "application/pdf".into(),
        |r| r.uploader_user_id.push('x'),
        |r| r.uploader_device_id.push('x'),
        |r| r.received_at += 1,
    ];
    for alter in alterations {
        let mut altered = receipt.clone();
        alter(&mut altered);
        assert_eq!(
            verify_receipt(&altered, &key),
            Err(ReceiptError::BadSignature)
        );
    }
    // A key other than the server's does not verify it either.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]).verifying_key();
    assert_eq!(
        verify_receipt(&receipt, &stranger),
        Err(ReceiptError::BadSignature)
    );
}

// ---- The blob store itself, on the filesystem and on S3 ----

/// The S3 endpoint for tests, or None (with a loud notice) when none is configured.
fn s3_endpoint(test: &str) -> Option<String> {
    match std::env::var("DOORSTEP_TEST_S3_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(endpoint),
        _ => {
            eprintln!(
                "\n*** SKIPPED {test}: DOORSTEP_TEST_S3_ENDPOINT is not set. \
                 Run scripts/test-s3.sh to test against a local S3-compatible server. ***\n"
            );
            None
        }
    }
}

/// A fresh bucket on the test S3 server (moto creates buckets without credentials).
async fn s3_bucket(endpoint: &str) -> S3Settings {
    let bucket = format!("doorstep-test-{}", uuid::Uuid::new_v4().simple());
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(
        created.status().is_success(),
        "creating bucket: {}",
        created.status()
    );
    S3Settings {
        bucket,
        prefix: "evidence".into(),
        endpoint: Some(endpoint.to_string()),
        region: "us-east-1".into(),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("s3cret-for-tests".into()),
        allow_http: true,
    }
}

/// What every blob store must do.
async fn blob_store_suite(store: &BlobStore) {
    let file = photo(3 * 1024 * 1024 + 17, 12);
    let sha = sha256_hex(&file);
    assert!(!store.contains(&sha).await.unwrap());
    // Chunks of uneven sizes, assembled in order.
    let mut keys = Vec::new();
    for (i, part) in file.chunks(1_000_000).enumerate() {
        let key = BlobStore::chunk_key("upload-1", (i * 1_000_000) as u64);
        store.put_chunk(&key, part.to_vec().into()).await.unwrap();
        keys.push(key);
    }
    assert_eq!(store.keys("uploads/upload-1").await.unwrap().len(), 4);
    // A wrong declared hash or size stores nothing.
    let wrong = sha256_hex(b"wrong");
    assert!(matches!(
        store.assemble(&keys, &wrong, file.len() as u64).await,
        Err(BlobStoreError::HashMismatch)
    ));
    assert!(matches!(
        store.assemble(&keys, &sha, file.len() as u64 + 1).await,
        Err(BlobStoreError::HashMismatch)
    ));
    assert!(!store.contains(&wrong).await.unwrap());
    assert!(store.keys("blobs").await.unwrap().is_empty());
    // The right one is stored under its hash, and reads back whole.
    let assembled = store
        .assemble(&keys, &sha, file.len() as u64)
        .await
        .unwrap();
    assert_eq!(assembled.size, file.len() as u64);
    assert!(store.contains(&sha).await.unwrap());
    let (size, mut stream) = store.get(&sha).await.unwrap();
    assert_eq!(size, file.len() as u64);
    let mut read = Vec::new();
    while let Some(bytes) = futures_util::StreamExt::next(&mut stream).await {
        read.extend_from_slice(&bytes.unwrap());
    }
    assert_eq!(read, file);
    for key in &keys {
        store.delete(key).await.unwrap();
        store.delete(key).await.unwrap(); // already gone is fine
    }
    assert!(store.keys("uploads").await.unwrap().is_empty());
    assert!(matches!(
        store.get(&wrong).await,
        Err(BlobStoreError::NotFound)
    ));
}

#[tokio::test]
async fn the_blob_store_suite_passes_on_the_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    blob_store_suite(&BlobStore::local(&dir.path().join("evidence")).unwrap()).await;
}

#[tokio::test]
async fn the_blob_store_suite_passes_on_s3() {
    let Some(endpoint) = s3_endpoint("the_blob_store_suite_passes_on_s3") else {
        return;
    };
    let settings = s3_bucket(&endpoint).await;
    assert!(
        !format!("{settings:?}").contains("s3cret"),
        "secret in Debug"
    );
    blob_store_suite(&BlobStore::s3(&settings).unwrap()).await;
}

/// The whole HTTP journey with the server configured for S3 (`--evidence-store s3://...`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_downloads_work_with_an_s3_store() {
    let Some(endpoint) = s3_endpoint("uploads_and_downloads_work_with_an_s3_store") else {
        return;
    };
    let settings = s3_bucket(&endpoint).await;
    let app = spawn_app_with(Backend::Sqlite, |config: &mut Config| {
        config.evidence = EvidenceConfig {
            store: Some(format!("s3://{}/evidence", settings.bucket)),
            s3_endpoint: settings.endpoint.clone(),
            s3_access_key_id: settings.access_key_id.clone(),
            s3_secret_access_key: settings.secret_access_key.clone(),
            s3_allow_http: true,
            ..EvidenceConfig::default()
        };
    })
    .await;
    check_upload_and_download(&app).await;
    // The files are in the bucket, not in the data folder.
    let direct = BlobStore::s3(&settings).unwrap();
    assert_eq!(direct.keys("blobs").await.unwrap().len(), 2);
}
