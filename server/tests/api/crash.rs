//! Kill the server process (SIGKILL) in the middle of syncs, restart it on the same data, and
//! check that every change it had acknowledged is there and that the phones converge.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use doorstep_server::storage::heads_key;
use doorstep_sync_core::records::HomeVisit;
use reqwest::StatusCode;

use crate::helpers::{Backend, Endpoint, Phone, both_backends, database_url};

both_backends!(acknowledged_changes_survive_a_sigkill);

/// The real `doorstep-server` binary, as a child process.
struct ServerProcess {
    child: Mutex<Child>,
    base: String,
    client: reqwest::Client,
}

impl ServerProcess {
    async fn start(data_dir: &Path, database_url: &str) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_doorstep-server"))
            .args(["--listen", "127.0.0.1:0", "--demo", "--data-dir"])
            .arg(data_dir)
            .args(["--database-url", database_url])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The notice is printed once the listener is bound: read until its address appears,
        // then keep draining stdout on that thread.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("Doorstep server listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        let base = rx
            .await
            .expect("the server exited before saying where it listens");
        let server = ServerProcess {
            child: Mutex::new(child),
            base,
            client: reqwest::Client::new(),
        };
        let ready = server
            .client
            .get(server.url("/ready"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
        server
    }

    /// SIGKILL: no shutdown, no flushing, nothing.
    fn kill(&self) {
        let mut child = self.child.lock().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(child) = self.child.get_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Endpoint for ServerProcess {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

async fn acknowledged_changes_survive_a_sigkill(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (url, _database) = database_url(backend, &dir).await;
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &url).await;

    let mut officer = Phone::sign_in(&server, "officer", 1).await;
    let mut worker = Phone::sign_in(&server, "worker", 2).await;
    officer.sync_until_quiet(&server).await;
    worker.sync_until_quiet(&server).await;

    // The officer records and syncs visits one by one; the worker syncs large visits into
    // other cases at the same time. The officer kills the server after its fifth
    // acknowledged sync, while its sixth request (and likely the worker's) is in flight.
    let mut acknowledged: Vec<String> = Vec::new();
    let officer_side = async {
        let mut pending = Vec::new();
        for i in 0..6 {
            pending.push(officer.record_visit("case-demo-1", i, 150));
            let (request, _) = officer.next_request();
            if i == 5 {
                let (outcome, ()) =
                    tokio::join!(officer.try_send(&server, &request), async { server.kill() });
                // Whatever happened to the last request, it was not acknowledged to us...
                if let Ok(reply) = outcome {
                    acknowledged.append(&mut pending);
                    officer.apply(&reply);
                }
                return;
            }
            let reply = officer.try_send(&server, &request).await.unwrap();
            officer.apply(&reply);
            acknowledged.append(&mut pending);
        }
    };
    let worker_side = async {
        for i in 0..200 {
            worker.record_visit("case-demo-3", 1000 + i, 4000);
            let (request, _) = worker.next_request();
            match worker.try_send(&server, &request).await {
                Ok(reply) => worker.apply(&reply),
                Err(_) => return,
            }
        }
    };
    tokio::join!(officer_side, worker_side);
    assert!(acknowledged.len() >= 5, "{acknowledged:?}");

    // Restart on the same data: same database, same signing key, same tokens.
    drop(server);
    let server = ServerProcess::start(&data, &url).await;
    for phone in [&mut officer, &mut worker] {
        phone.reset_sync_states();
        phone.sync_until_quiet(&server).await;
    }

    // A fresh device of the officer downloads the case: every acknowledged visit is there.
    let mut fresh = Phone::sign_in(&server, "officer", 3).await;
    fresh.sync_until_quiet(&server).await;
    let visits = fresh.doc("case-demo-1").list::<HomeVisit>().unwrap();
    for id in &acknowledged {
        assert!(
            visits.iter().any(|v| &v.id == id),
            "acknowledged visit {id} lost"
        );
    }
    // And nothing recorded on the phone was lost either: it resent what was not acknowledged.
    assert_eq!(visits.len(), 6);
    assert_eq!(
        heads_key(&fresh.doc("case-demo-1").heads()),
        heads_key(&officer.doc("case-demo-1").heads())
    );
    let worker_visits = worker.doc("case-demo-3").list::<HomeVisit>().unwrap().len();
    let mut check = Phone::sign_in(&server, "worker", 4).await;
    check.sync_until_quiet(&server).await;
    assert_eq!(
        check.doc("case-demo-3").list::<HomeVisit>().unwrap().len(),
        worker_visits
    );
}
