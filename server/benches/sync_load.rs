//! Load benchmark (prints figures; not a timed test): N phones x M cases (overlapping
//! allocations) x K visits recorded offline, then all phones sync at once until they converge,
//! against the real `doorstep-server` binary on SQLite and on PostgreSQL.
//!
//! `cargo bench -p doorstep-server --bench sync_load`
//! Sizes: DOORSTEP_BENCH_PHONES (6), DOORSTEP_BENCH_CASES (6), DOORSTEP_BENCH_VISITS (20).
//! PostgreSQL: DOORSTEP_TEST_POSTGRES_URL (postgres://postgres@127.0.0.1:5432/test); skipped
//! with a note when it cannot be reached.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly"
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use doorstep_server::api::{CreatedCase, SyncDocumentIn, SyncRequest, SyncResponse, TokenResponse};
use doorstep_sync_core::{CaseFile, PeerState, testing};
use serde_json::json;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(data_dir: &std::path::Path, database_url: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_doorstep-server"))
            .args(["--listen", "127.0.0.1:0", "--demo", "--data-dir"])
            .arg(data_dir)
            .args(["--database-url", database_url])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("Doorstep server listening on ") {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        let base = rx.recv().expect("the server did not start");
        Server { child, base }
    }

    /// The server process's peak resident memory (VmHWM), in MiB.
    fn peak_memory_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(f64::NAN)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Phone {
    client: reqwest::Client,
    base: String,
    tokens: TokenResponse,
    actor: doorstep_sync_core::ActorId,
    docs: BTreeMap<String, CaseFile>,
    states: BTreeMap<String, PeerState>,
    requests: usize,
    bytes_up: usize,
    bytes_down: usize,
}

impl Phone {
    async fn sign_in(base: &str, username: &str, n: u32) -> Phone {
        let client = reqwest::Client::new();
        let actor = testing::actor(n);
        let tokens: TokenResponse = client
            .post(format!("{base}/api/v1/auth/sign-in"))
            .json(&json!({
                "username": username, "password": doorstep_server::demo::DEMO_PASSWORD,
                "device_name": format!("bench phone {n}"), "actor_id": actor.to_hex_string(),
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Phone {
            client,
            base: base.to_string(),
            tokens,
            actor,
            docs: BTreeMap::new(),
            states: BTreeMap::new(),
            requests: 0,
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    /// One round; true when a message went either way.
    async fn round(&mut self) -> bool {
        let mut busy = false;
        let mut documents = Vec::new();
        for (case_id, doc) in &mut self.docs {
            let state = self.states.entry(case_id.clone()).or_default();
            let message = doc.generate_sync_message(state);
            busy |= message.is_some();
            documents.push(SyncDocumentIn {
                case_id: case_id.clone(),
                message: message.map(|m| STANDARD.encode(m)),
            });
        }
        let body = serde_json::to_vec(&SyncRequest { documents }).unwrap();
        self.bytes_up += body.len();
        let response = self
            .client
            .post(format!("{}/api/v1/sync", self.base))
            .bearer_auth(&self.tokens.access_token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        let bytes = response.bytes().await.unwrap();
        self.bytes_down += bytes.len();
        self.requests += 1;
        let reply: SyncResponse = serde_json::from_slice(&bytes).unwrap();
        for document in reply.documents {
            let Some(message) = document.message else {
                continue;
            };
            busy = true;
            let author = testing::author(&self.tokens.user.id, &self.tokens.device_id);
            let actor = self.actor.clone();
            let doc = self
                .docs
                .entry(document.case_id.clone())
                .or_insert_with(|| CaseFile::empty(author, actor));
            let state = self.states.entry(document.case_id).or_default();
            doc.receive_sync_message(state, &STANDARD.decode(message).unwrap())
                .unwrap();
        }
        busy
    }
}

/// Every phone syncs at once, round after round, until a whole round is quiet.
async fn converge(phones: Vec<Phone>) -> Vec<Phone> {
    let mut phones = phones;
    for _ in 0..50 {
        let tasks: Vec<_> = phones
            .into_iter()
            .map(|mut phone| {
                tokio::spawn(async move {
                    let busy = phone.round().await;
                    (phone, busy)
                })
            })
            .collect();
        let mut busy = false;
        phones = Vec::new();
        for task in tasks {
            let (phone, was_busy) = task.await.unwrap();
            busy |= was_busy;
            phones.push(phone);
        }
        if !busy {
            return phones;
        }
    }
    panic!("no convergence in 50 rounds");
}

async fn run(label: &str, database_url: &str, phones_n: usize, cases_n: usize, visits_k: usize) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), database_url);
    let client = reqwest::Client::new();
    let lead = Phone::sign_in(&server.base, "lead", 1000).await;
    // Cases allocated with overlap: even ones to the officer, odd ones to the worker, and
    // every third one to both.
    for i in 0..cases_n {
        let mut details_value = serde_json::to_value(testing::case_details()).unwrap();
        details_value["reference"] = json!(format!("ATT-BENCH-{i:04}"));
        let created: CreatedCase = client
            .post(format!("{}/api/v1/cases", server.base))
            .bearer_auth(&lead.tokens.access_token)
            .json(&json!({ "details": details_value }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut users = Vec::new();
        if i % 2 == 0 || i % 3 == 0 {
            users.push("user-officer");
        }
        if i % 2 == 1 || i % 3 == 0 {
            users.push("user-worker");
        }
        for user in users {
            let status = client
                .put(format!(
                    "{}/api/v1/cases/{}/allocations/{user}",
                    server.base, created.case_id
                ))
                .bearer_auth(&lead.tokens.access_token)
                .send()
                .await
                .unwrap()
                .status();
            assert!(status.is_success());
        }
    }
    let mut phones = Vec::new();
    for n in 0..phones_n {
        let user = if n % 2 == 0 { "officer" } else { "worker" };
        phones.push(Phone::sign_in(&server.base, user, n as u32 + 1).await);
    }
    let phones = converge(phones).await;

    // Offline: every phone records K visits (500-character notes) in every case it holds.
    let mut phones = phones;
    let mut new_bytes = 0;
    let mut new_visits = 0;
    for phone in &mut phones {
        let user = phone.tokens.user.id.clone();
        for doc in phone.docs.values_mut() {
            let before = doc.heads();
            for k in 0..visits_k {
                let at = testing::at(k as i64);
                doc.add(&testing::visit(&user, at, 500), at).unwrap();
                new_visits += 1;
            }
            new_bytes += doc
                .doc_mut()
                .get_changes(&before)
                .iter_mut()
                .map(|c| c.bytes().len())
                .sum::<usize>();
        }
        phone.requests = 0;
        phone.bytes_up = 0;
        phone.bytes_down = 0;
    }

    let started = Instant::now();
    let mut phones = converge(phones).await;
    let elapsed = started.elapsed();
    let requests: usize = phones.iter().map(|p| p.requests).sum();
    let up: usize = phones.iter().map(|p| p.bytes_up).sum();
    let down: usize = phones.iter().map(|p| p.bytes_down).sum();
    // Converged: every replica of a case has the same heads.
    let mut heads: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for phone in &mut phones {
        for (case_id, doc) in &mut phone.docs {
            let mut h = doc.heads();
            h.sort();
            heads.entry(case_id.clone()).or_default().push(h);
        }
    }
    for (case_id, all) in &heads {
        assert!(
            all.windows(2).all(|w| w[0] == w[1]),
            "{case_id} did not converge"
        );
    }
    println!(
        "{label:<10} {phones_n} phones x {cases_n} cases x {visits_k} visits: {new_visits} new \
         visits ({:.1} KiB of changes); converged in {:.2} s, {requests} requests, \
         {:.1} KiB up, {:.1} KiB down ({:.1}x the changes); server peak memory {:.0} MiB",
        new_bytes as f64 / 1024.0,
        elapsed.as_secs_f64(),
        up as f64 / 1024.0,
        down as f64 / 1024.0,
        (up + down) as f64 / new_bytes.max(1) as f64,
        server.peak_memory_mib(),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special: run
    // small then, so that the benchmark is also checked to work.
    let quick = !std::env::args().any(|a| a == "--bench");
    let phones = env_number("DOORSTEP_BENCH_PHONES", if quick { 2 } else { 6 });
    let cases = env_number("DOORSTEP_BENCH_CASES", if quick { 2 } else { 6 });
    let visits = env_number("DOORSTEP_BENCH_VISITS", if quick { 2 } else { 20 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = format!("sqlite:{}", dir.path().join("bench.db").display());
        run("SQLite", &sqlite, phones, cases, visits).await;

        let admin = std::env::var("DOORSTEP_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        use sqlx::Connection;
        match sqlx::PgConnection::connect(&admin).await {
            Ok(mut conn) => {
                let name = format!("doorstep_bench_{}", uuid::Uuid::new_v4().simple());
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap();
                run(
                    "PostgreSQL",
                    &format!("{base}/{name}"),
                    phones,
                    cases,
                    visits,
                )
                .await;
                sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            Err(e) => println!("PostgreSQL  skipped: cannot reach {admin} ({e})"),
        }
    });
}
