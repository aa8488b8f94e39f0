//! The workload, its phases, and the report.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use doorstep_server::api::{CaseResponse, CreatedCase, TokenResponse};
use doorstep_server::storage::{Role, User};
use doorstep_sync_core::{CaseFile, ChangeHash, testing};
use serde_json::json;

use crate::Args;
use crate::phone::{self, Counters, Goal, HTTP_POLL_INTERVAL, Phone, Progress};
use crate::servers::{self, ServerProcess};

const BENCH_PASSWORD: &str = "bench-phone-password (invented)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    DoorstepHttp,
    DoorstepWs,
    Npm,
    Samod,
}

impl Target {
    fn parse(name: &str) -> anyhow::Result<Target> {
        Ok(match name {
            "doorstep-http" => Target::DoorstepHttp,
            "doorstep-ws" => Target::DoorstepWs,
            "npm" => Target::Npm,
            "samod" => Target::Samod,
            _ => anyhow::bail!("unknown server {name}"),
        })
    }

    fn label(self) -> &'static str {
        match self {
            Target::DoorstepHttp => "Doorstep HTTP batch",
            Target::DoorstepWs => "Doorstep WebSocket",
            Target::Npm => "npm automerge-repo-sync-server 0.2.8",
            Target::Samod => "samod 0.16",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Target::DoorstepHttp => "doorstep-http",
            Target::DoorstepWs => "doorstep-ws",
            Target::Npm => "npm",
            Target::Samod => "samod",
        }
    }

    fn is_doorstep(self) -> bool {
        matches!(self, Target::DoorstepHttp | Target::DoorstepWs)
    }
}

/// Phone `k` (of `per_case`) that case `c` is allocated to: each block of `phones` cases is
/// spread with its own step (coprime to the number of phones), so every phone gets the same
/// number of cases and the groups of phones sharing a case overlap differently from block to
/// block.
fn allocation(args: &Args, c: usize, k: usize) -> usize {
    let steps: Vec<usize> = (1..)
        .filter(|s| gcd(*s, args.phones) == 1)
        .step_by(2)
        .take(8)
        .collect();
    let step = steps[(c / args.phones) % steps.len()];
    (c + k * step) % args.phones
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Traffic and time of one timed phase.
#[derive(Debug, Default, Clone)]
struct Figures {
    seconds: f64,
    bytes_up: u64,
    bytes_down: u64,
    messages_up: u64,
    messages_down: u64,
    server_cpu: f64,
    /// (phone, document) pairs where, at convergence, the phone's sync state does not yet show
    /// that the server holds all its changes (the server's last word to it was older).
    unacknowledged: usize,
    /// Failed requests and dropped connections (each retried).
    errors: u64,
    /// CPU seconds of the load generator itself (all phones) in the phase.
    client_cpu: f64,
}

impl Figures {
    fn bytes(&self) -> u64 {
        self.bytes_up + self.bytes_down
    }
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    converge: Figures,
    single: Figures,
    peak_mib: f64,
    total_cpu: f64,
    /// Compressed size of the new changes (sum of automerge change chunks), phase 1 and 2.
    new_bytes: u64,
    single_new_bytes: u64,
    new_changes: usize,
}

struct Setup {
    server: ServerProcess,
    phones: Vec<Phone>,
    big: Vec<Phone>,
    /// The heads every replica must reach before the offline work starts.
    initial: BTreeMap<String, Vec<ChangeHash>>,
}

struct Bench {
    args: Args,
    ticks: f64,
    sessions: AtomicUsize,
    client: reqwest::Client,
    launcher: std::path::PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let targets: Vec<Target> = args
        .servers
        .iter()
        .map(|s| Target::parse(s))
        .collect::<anyhow::Result<_>>()?;
    let launcher = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("npm-sync-server.mjs");
    let bench = Bench {
        ticks: servers::clock_ticks(),
        sessions: AtomicUsize::new(0),
        client: reqwest::Client::new(),
        launcher,
        args,
    };
    let a = &bench.args;
    println!(
        "workload: {} phones x {} cases each (of {}, each allocated to {} phones) x {} visits \
         ({}-character notes) offline, then all reconnect at once; scenario 2: one visit on a \
         case holding {} visits, {} subscribers",
        a.phones,
        a.cases * a.per_case / a.phones,
        a.cases,
        a.per_case,
        a.visits,
        a.note_chars,
        a.big_visits,
        a.per_case
    );
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for target in targets {
        println!("\n== {} ==", target.label());
        // A server that fails is reported, and the others still run.
        match bench.run_target(target).await {
            Ok(outcome) => outcomes.push((target, outcome)),
            Err(e) => {
                println!("  FAILED: {e:#}");
                failures.push(format!("{}: {e:#}", target.label()));
            }
        }
    }
    report(&bench.args, &outcomes, &failures)
}

impl Bench {
    fn peer_id(&self, phone: &Phone) -> String {
        let n = self.sessions.fetch_add(1, Ordering::Relaxed);
        format!("{}-session-{n}", phone.name)
    }

    async fn run_target(&self, target: Target) -> anyhow::Result<Outcome> {
        let args = &self.args;
        let started = Instant::now();
        let Setup {
            server,
            phones,
            big,
            initial,
        } = match target {
            Target::DoorstepHttp | Target::DoorstepWs => self.setup_doorstep().await?,
            Target::Npm => {
                let server = servers::npm(&args.npm_dir, &self.launcher)?;
                self.setup_automerge_repo(target, server).await?
            }
            Target::Samod => {
                let server = servers::samod(&args.samod_bin)?;
                self.setup_automerge_repo(target, server).await?
            }
        };
        println!(
            "  {} server {} (pid {}) seeded in {:.1} s (peak memory so far {:.1} MiB)",
            server.name,
            server.base,
            server.pid(),
            started.elapsed().as_secs_f64(),
            server.peak_memory_mib()
        );

        // Every replica fetches its cases (not timed).
        let mut all: Vec<Phone> = phones.into_iter().chain(big).collect();
        let goals: Vec<Goal> = all
            .iter()
            .map(|p| Goal {
                hold: p
                    .cases
                    .iter()
                    .map(|c| (c.clone(), initial[c].clone()))
                    .collect(),
                upload: false,
            })
            .collect();
        let (fetched, f) = self.phase(target, &server, all, goals, 0).await?;
        println!(
            "  initial fetch by every phone: {:.2} s (server peak memory so far {:.1} MiB)",
            f.seconds,
            server.peak_memory_mib()
        );
        all = fetched;
        let mut big = all.split_off(args.phones);
        let mut phones = all;

        // Offline: every phone records its visits in each of its cases.
        let mut new_hashes: BTreeMap<String, BTreeMap<usize, Vec<ChangeHash>>> = BTreeMap::new();
        let mut outcome = Outcome::default();
        let recording = Instant::now();
        for (p, phone) in phones.iter_mut().enumerate() {
            let user = phone.user_id.clone();
            for case_id in phone.cases.clone() {
                let doc = phone.docs.get_mut(&case_id).expect("fetched");
                let (hashes, bytes) = record_visits(doc, &user, args.visits, args.note_chars, p)?;
                outcome.new_bytes += bytes;
                outcome.new_changes += hashes.len();
                new_hashes.entry(case_id).or_default().insert(p, hashes);
            }
            phone.reconnect();
        }
        println!(
            "  offline visits recorded: {:.1} s; every phone reconnects",
            recording.elapsed().as_secs_f64()
        );
        let goals: Vec<Goal> = (0..phones.len())
            .map(|p| Goal {
                hold: phones[p]
                    .cases
                    .iter()
                    .map(|c| {
                        let others = new_hashes[c]
                            .iter()
                            .filter(|(q, _)| **q != p)
                            .flat_map(|(_, h)| h.iter().copied())
                            .collect();
                        (c.clone(), others)
                    })
                    .collect(),
                // An HTTP phone stops polling once its goal is reached, so it must also wait
                // until the server is known to hold its own visits (else a request refused
                // under load would strand them). A WebSocket phone stays connected and answers
                // until every phone is done, so its goal is only what it must receive.
                upload: target == Target::DoorstepHttp,
            })
            .collect();
        let (_phones, converge) = self.phase(target, &server, phones, goals, 0).await?;
        println!(
            "  converged: {:.2} s, {} up / {} down bytes, {} / {} messages, server CPU {:.2} s; \
             load generator CPU {:.2} s; {} errors retried; {} phone documents without the \
             server's last acknowledgement; server peak memory so far {:.1} MiB",
            converge.seconds,
            converge.bytes_up,
            converge.bytes_down,
            converge.messages_up,
            converge.messages_down,
            converge.server_cpu,
            converge.client_cpu,
            converge.errors,
            converge.unacknowledged,
            server.peak_memory_mib()
        );
        outcome.converge = converge;

        // Scenario 2: the first subscriber fills the case (not timed) ...
        let user = big[0].user_id.clone();
        let big_case = big[0].cases[0].clone();
        let doc = big[0].docs.get_mut(&big_case).expect("fetched");
        record_visits(doc, &user, args.big_visits, args.note_chars, 1000)?;
        let heads = doc.heads();
        big.iter_mut().for_each(Phone::reconnect);
        let goals = writer_and_readers(target, big.len(), &big_case, &heads);
        let (mut big, f) = self.phase(target, &server, big, goals, 0).await?;
        println!(
            "  scenario 2 case filled with {} visits: {:.2} s (server peak memory so far {:.1} MiB)",
            args.big_visits,
            f.seconds,
            server.peak_memory_mib()
        );
        // ... then records one more visit and syncs it to the other subscribers, who are
        // connected (WebSocket) or polling (HTTP, every {HTTP_POLL_INTERVAL:?}).
        let doc = big[0].docs.get_mut(&big_case).expect("fetched");
        let (hashes, bytes) = record_visits(doc, &user, 1, args.note_chars, 5000)?;
        outcome.single_new_bytes = bytes;
        big.iter_mut().for_each(Phone::reconnect);
        let goals = writer_and_readers(target, big.len(), &big_case, &hashes);
        let (_big, single) = self.phase(target, &server, big, goals, 1).await?;
        println!(
            "  one new visit on the {}-visit case reached {} subscribers: {:.1} ms, {} bytes \
             ({} up, from the phones: the upload and the answers; {} down, from the server), \
             {} / {} messages",
            args.big_visits,
            args.per_case - 1,
            single.seconds * 1000.0,
            single.bytes(),
            single.bytes_up,
            single.bytes_down,
            single.messages_up,
            single.messages_down,
        );
        outcome.single = single;
        outcome.peak_mib = server.peak_memory_mib();
        outcome.total_cpu = server.cpu_seconds(self.ticks);
        println!(
            "  server peak memory {:.1} MiB, CPU {:.1} s in all",
            outcome.peak_mib, outcome.total_cpu
        );
        Ok(outcome)
    }

    /// Runs phones until each has reached its goal. The first `late` phones start only once
    /// the others are connected and have had a first answer for each document (WebSocket) or
    /// have polled once (HTTP); the clock starts then.
    async fn phase(
        &self,
        target: Target,
        server: &ServerProcess,
        phones: Vec<Phone>,
        goals: Vec<Goal>,
        late: usize,
    ) -> anyhow::Result<(Vec<Phone>, Figures)> {
        let counters = Arc::new(Counters::default());
        let progress = Progress::new(phones.len());
        let mut handles: Vec<Option<tokio::task::JoinHandle<anyhow::Result<Phone>>>> = Vec::new();
        let mut pending = Vec::new();
        let mut waits = Vec::new();
        for (i, (phone, goal)) in phones.into_iter().zip(goals).enumerate() {
            if i < late {
                pending.push((i, phone, goal));
                handles.push(None);
                continue;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            waits.push(rx);
            handles.push(Some(self.spawn(
                target,
                server,
                phone,
                goal,
                &counters,
                &progress,
                Some(tx),
            )));
        }
        if late > 0 {
            for rx in waits {
                let _ = rx.await;
            }
            if target == Target::DoorstepHttp {
                tokio::time::sleep(HTTP_POLL_INTERVAL * 3).await;
            }
        }
        let cpu_before = server.cpu_seconds(self.ticks);
        let client_cpu_before = servers::own_cpu_seconds(self.ticks);
        let up = counters.bytes_up.load(Ordering::SeqCst);
        let down = counters.bytes_down.load(Ordering::SeqCst);
        let m_up = counters.messages_up.load(Ordering::SeqCst);
        let m_down = counters.messages_down.load(Ordering::SeqCst);
        let started = Instant::now();
        for (i, phone, goal) in pending {
            handles[i] = Some(self.spawn(target, server, phone, goal, &counters, &progress, None));
        }
        let timeline = std::env::var_os("INTEROP_BENCH_TIMELINE").map(|_| {
            self.timeline(
                server,
                Arc::clone(&counters),
                Arc::clone(&progress),
                started,
            )
        });
        let mut done = progress.done.subscribe();
        let waited = tokio::time::timeout(
            Duration::from_secs(self.args.timeout_secs),
            done.wait_for(|d| *d),
        )
        .await;
        if waited.is_err() {
            // Let the sessions say what they lack, then give up.
            let _ = progress.done.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                for handle in handles.into_iter().flatten() {
                    if let Ok(Err(e)) = handle.await {
                        println!("  {e:#}");
                    }
                }
            })
            .await;
            anyhow::bail!(
                "{}: no convergence in {} s ({} phones left)",
                target.key(),
                self.args.timeout_secs,
                progress.remaining.load(Ordering::SeqCst)
            );
        }
        if let Some(failed) = progress.failed.lock().ok().and_then(|f| f.clone()) {
            anyhow::bail!("{}: {failed}", target.key());
        }
        let figures = Figures {
            seconds: started.elapsed().as_secs_f64(),
            bytes_up: counters.bytes_up.load(Ordering::SeqCst) - up,
            bytes_down: counters.bytes_down.load(Ordering::SeqCst) - down,
            messages_up: counters.messages_up.load(Ordering::SeqCst) - m_up,
            messages_down: counters.messages_down.load(Ordering::SeqCst) - m_down,
            server_cpu: server.cpu_seconds(self.ticks) - cpu_before,
            unacknowledged: 0,
            errors: counters.errors.load(Ordering::SeqCst),
            client_cpu: servers::own_cpu_seconds(self.ticks) - client_cpu_before,
        };
        if let Some(timeline) = timeline {
            timeline.abort();
        }
        let mut figures = figures;
        let mut phones = Vec::new();
        for handle in handles.into_iter().flatten() {
            let mut phone = handle.await??;
            figures.unacknowledged += phone.unacknowledged();
            phones.push(phone);
        }
        Ok((phones, figures))
    }

    /// With `INTEROP_BENCH_TIMELINE` set: once a second, the phones still short of their goal,
    /// the messages so far each way, and the CPU seconds of the server and of the phones in
    /// the last second (where a phase's time goes: waiting, or which side's work).
    fn timeline(
        &self,
        server: &ServerProcess,
        counters: Arc<Counters>,
        progress: Arc<Progress>,
        started: Instant,
    ) -> tokio::task::JoinHandle<()> {
        let (pid, ticks) = (server.pid(), self.ticks);
        tokio::spawn(async move {
            let server_cpu = || servers::process_cpu_seconds(pid, ticks);
            let (mut server_before, mut phones_before) =
                (server_cpu(), servers::own_cpu_seconds(ticks));
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let (server_now, phones_now) = (server_cpu(), servers::own_cpu_seconds(ticks));
                // A saturated load generator wakes this task late: divide by the real interval.
                let interval = last.elapsed().as_secs_f64();
                last = Instant::now();
                println!(
                    "    t={:5.1} s  phones left {:3}  messages up {:6} down {:6}  CPU s/s server {:.2} phones {:.2}",
                    started.elapsed().as_secs_f64(),
                    progress.remaining.load(Ordering::SeqCst),
                    counters.messages_up.load(Ordering::Relaxed),
                    counters.messages_down.load(Ordering::Relaxed),
                    (server_now - server_before) / interval,
                    (phones_now - phones_before) / interval,
                );
                (server_before, phones_before) = (server_now, phones_now);
            }
        })
    }

    #[allow(clippy::too_many_arguments, reason = "one phone's session")]
    fn spawn(
        &self,
        target: Target,
        server: &ServerProcess,
        mut phone: Phone,
        goal: Goal,
        counters: &Arc<Counters>,
        progress: &Arc<Progress>,
        settled: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> tokio::task::JoinHandle<anyhow::Result<Phone>> {
        let (counters, progress) = (counters.clone(), progress.clone());
        let watcher = progress.clone();
        let session = match target {
            Target::DoorstepHttp => {
                if let Some(settled) = settled {
                    let _ = settled.send(());
                }
                tokio::spawn(phone::http_session(
                    self.client.clone(),
                    server.base.clone(),
                    phone,
                    goal,
                    counters,
                    progress,
                ))
            }
            _ => {
                let url = if target == Target::DoorstepWs {
                    let ws = server.base.replacen("http://", "ws://", 1);
                    format!(
                        "{ws}/api/v1/repo/ws?access_token={}",
                        phone.token.clone().unwrap_or_default()
                    )
                } else {
                    server.base.clone()
                };
                let peer_id = self.peer_id(&phone);
                phone.reconnect();
                tokio::spawn(phone::ws_session(
                    url, peer_id, phone, goal, counters, progress, settled,
                ))
            }
        };
        tokio::spawn(async move {
            let result = session.await?;
            if let Err(e) = &result {
                watcher.fail(e);
            }
            result
        })
    }

    /// Doorstep: demo school and staff, one user per phone (seeded into the database before the
    /// server starts), cases created and allocated through the lead's API.
    async fn setup_doorstep(&self) -> anyhow::Result<Setup> {
        let args = &self.args;
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite:{}", dir.path().join("doorstep.db").display());
        {
            let storage = doorstep_server::storage::open(&url).await?;
            doorstep_server::demo::seed_demo(storage.as_ref()).await?;
            let hash = doorstep_server::auth::password::hash(BENCH_PASSWORD.into()).await?;
            let now = chrono::Utc::now().timestamp_millis();
            for name in phone_names(args) {
                storage
                    .create_user(&User {
                        id: format!("user-{name}"),
                        school_id: Some(doorstep_server::demo::DEMO_SCHOOL_ID.into()),
                        username: name.clone(),
                        display_name: format!("Invented worker {name}"),
                        role: Role::AttendanceOfficer,
                        password_hash: hash.clone(),
                        created_at: now,
                        disabled_at: None,
                    })
                    .await?;
            }
        }
        let server = servers::doorstep(&args.doorstep_bin, &url, dir)?;
        let base = server.base.clone();
        let lead = self
            .sign_in(&base, "lead", doorstep_server::demo::DEMO_PASSWORD, 9999)
            .await?;
        let mut case_ids = Vec::new();
        for c in 0..=args.cases {
            let mut details = serde_json::to_value(testing::case_details())?;
            details["reference"] = json!(format!("ATT-BENCH-{c:04}"));
            let created: CreatedCase = self
                .client
                .post(format!("{base}/api/v1/cases"))
                .bearer_auth(&lead.access_token)
                .json(&json!({ "details": details }))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            case_ids.push(created.case_id);
        }
        let (mut phones, mut big) = self.phones(&case_ids);
        for phone in phones.iter().chain(big.iter()) {
            for case_id in &phone.cases {
                self.client
                    .put(format!(
                        "{base}/api/v1/cases/{case_id}/allocations/{}",
                        phone.user_id
                    ))
                    .bearer_auth(&lead.access_token)
                    .send()
                    .await?
                    .error_for_status()?;
            }
        }
        let mut initial = BTreeMap::new();
        for case_id in &case_ids {
            let case: CaseResponse = self
                .client
                .get(format!("{base}/api/v1/cases/{case_id}"))
                .bearer_auth(&lead.access_token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let heads = case
                .heads
                .split(',')
                .map(ChangeHash::from_str)
                .collect::<Result<Vec<_>, _>>()?;
            initial.insert(case_id.clone(), heads);
        }
        for (n, phone) in phones.iter_mut().chain(big.iter_mut()).enumerate() {
            let tokens = self
                .sign_in(&base, &phone.name, BENCH_PASSWORD, n as u32 + 1)
                .await?;
            phone.author.device_id = tokens.device_id.clone();
            phone.actor = testing::actor(n as u32 + 1);
            phone.token = Some(tokens.access_token);
        }
        Ok(Setup {
            server,
            phones,
            big,
            initial,
        })
    }

    /// npm and samod: one client uploads the same initial case files before timing starts.
    async fn setup_automerge_repo(
        &self,
        target: Target,
        server: ServerProcess,
    ) -> anyhow::Result<Setup> {
        let args = &self.args;
        let case_ids: Vec<String> = (0..=args.cases)
            .map(|_| format!("case-{}", uuid::Uuid::new_v4()))
            .collect();
        let mut seeder = Phone::new(
            "seeder".into(),
            "server".into(),
            "server".into(),
            testing::actor(0),
            case_ids.clone(),
        );
        let mut initial = BTreeMap::new();
        for (c, case_id) in case_ids.iter().enumerate() {
            let details = doorstep_sync_core::records::CaseDetails {
                reference: format!("ATT-BENCH-{c:04}"),
                ..testing::case_details()
            };
            let mut file = CaseFile::create(
                case_id,
                &details,
                seeder.author.clone(),
                seeder.actor.clone(),
                chrono::Utc::now(),
            )?;
            initial.insert(case_id.clone(), file.heads());
            seeder.docs.insert(case_id.clone(), file);
        }
        let (_, f) = self
            .phase(
                target,
                &server,
                vec![seeder],
                vec![Goal {
                    hold: BTreeMap::new(),
                    upload: true,
                }],
                0,
            )
            .await?;
        println!(
            "  {} case files uploaded by a seeding client in {:.2} s",
            case_ids.len(),
            f.seconds
        );
        let (phones, big) = self.phones(&case_ids);
        Ok(Setup {
            server,
            phones,
            big,
            initial,
        })
    }

    /// The phones and their cases; the last case is scenario 2's, on its own phones.
    fn phones(&self, case_ids: &[String]) -> (Vec<Phone>, Vec<Phone>) {
        let args = &self.args;
        let names = phone_names(args);
        let mut cases: Vec<BTreeSet<String>> = vec![BTreeSet::new(); args.phones];
        for (c, case_id) in case_ids.iter().take(args.cases).enumerate() {
            for k in 0..args.per_case {
                cases[allocation(args, c, k)].insert(case_id.clone());
            }
        }
        let big_case = case_ids[args.cases].clone();
        let mut phones = Vec::new();
        let mut big = Vec::new();
        for (n, name) in names.into_iter().enumerate() {
            let mine: Vec<String> = if n < args.phones {
                cases[n].iter().cloned().collect()
            } else {
                vec![big_case.clone()]
            };
            let phone = Phone::new(
                name.clone(),
                format!("user-{name}"),
                format!("device-{name}"),
                testing::actor(n as u32 + 1),
                mine,
            );
            if n < args.phones {
                phones.push(phone);
            } else {
                big.push(phone);
            }
        }
        (phones, big)
    }

    async fn sign_in(
        &self,
        base: &str,
        username: &str,
        password: &str,
        n: u32,
    ) -> anyhow::Result<TokenResponse> {
        Ok(self
            .client
            .post(format!("{base}/api/v1/auth/sign-in"))
            .json(&json!({
                "username": username, "password": password,
                "device_name": format!("bench phone {n}"),
                "actor_id": testing::actor(n).to_hex_string(),
            }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}

/// Goals of scenario 2: the first phone wrote (over HTTP it is done once the server holds its
/// changes, as in the convergence phase); every other phone must hold `changes` of `case_id`.
fn writer_and_readers(
    target: Target,
    phones: usize,
    case_id: &str,
    changes: &[ChangeHash],
) -> Vec<Goal> {
    (0..phones)
        .map(|i| {
            let writer = i == 0;
            Goal {
                hold: if writer {
                    BTreeMap::new()
                } else {
                    BTreeMap::from([(case_id.to_string(), changes.to_vec())])
                },
                upload: writer && target == Target::DoorstepHttp,
            }
        })
        .collect()
}

fn phone_names(args: &Args) -> Vec<String> {
    (1..=args.phones)
        .map(|n| format!("bench-phone-{n:02}"))
        .chain((1..=args.per_case).map(|n| format!("bench-big-{n:02}")))
        .collect()
}

/// Records `visits` visits, one commit each; returns the new changes' hashes and the size of
/// their automerge change chunks (compressed columnar encoding).
fn record_visits(
    doc: &mut CaseFile,
    user: &str,
    visits: usize,
    note_chars: usize,
    seed: usize,
) -> anyhow::Result<(Vec<ChangeHash>, u64)> {
    let before = doc.heads();
    for k in 0..visits {
        let at = testing::at((seed * 10_000 + k) as i64);
        let mut visit = testing::visit(user, at, note_chars);
        visit.location = format!("family home {seed}-{k}");
        doc.add(&visit, at)?;
    }
    let mut changes = doc.doc_mut().get_changes(&before);
    let bytes = changes.iter_mut().map(|c| c.bytes().len() as u64).sum();
    Ok((changes.iter().map(|c| c.hash()).collect(), bytes))
}

fn report(args: &Args, outcomes: &[(Target, Outcome)], failures: &[String]) -> anyhow::Result<()> {
    let recipients = args.per_case as u64; // the server, and the other subscribers of the case
    let mut md = String::new();
    md.push_str(&format!(
        "Interop benchmark, {}: {} phones x {} cases each ({} cases, {} phones per case) x {} \
         visits offline, then all reconnect; scenario 2: one visit on a {}-visit case, {} \
         subscribers. Machine: {} cores.\n\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        args.phones,
        args.cases * args.per_case / args.phones,
        args.cases,
        args.per_case,
        args.visits,
        args.big_visits,
        args.per_case,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    ));
    md.push_str(
        "| server | converge s | bytes up | bytes down | bytes / target | messages up/down | errors retried | unacked docs | server CPU s (converge) | 1 visit ms | 1 visit bytes / target | peak MiB | CPU s all |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut rows = Vec::new();
    for (target, o) in outcomes {
        let target_bytes = 1.25 * o.new_bytes as f64 * recipients as f64;
        let single_target = 1.25 * o.single_new_bytes as f64 * recipients as f64;
        md.push_str(&format!(
            "| {} | {:.2} | {} | {} | {:.2} | {} / {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} |\n",
            target.label(),
            o.converge.seconds,
            o.converge.bytes_up,
            o.converge.bytes_down,
            o.converge.bytes() as f64 / target_bytes,
            o.converge.messages_up,
            o.converge.messages_down,
            o.converge.errors,
            o.converge.unacknowledged,
            o.converge.server_cpu,
            o.single.seconds * 1000.0,
            o.single.bytes() as f64 / single_target,
            o.peak_mib,
            o.total_cpu,
        ));
        rows.push(json!({
            "server": target.key(),
            "label": target.label(),
            "converge_seconds": o.converge.seconds,
            "converge_bytes_up": o.converge.bytes_up,
            "converge_bytes_down": o.converge.bytes_down,
            "converge_messages_up": o.converge.messages_up,
            "converge_messages_down": o.converge.messages_down,
            "converge_server_cpu_seconds": o.converge.server_cpu,
            "converge_unacknowledged_documents": o.converge.unacknowledged,
            "converge_errors_retried": o.converge.errors,
            "converge_load_generator_cpu_seconds": o.converge.client_cpu,
            "new_changes": o.new_changes,
            "new_change_bytes": o.new_bytes,
            "byte_target": target_bytes,
            "single_visit_seconds": o.single.seconds,
            "single_visit_bytes": o.single.bytes(),
            "single_visit_change_bytes": o.single_new_bytes,
            "single_visit_byte_target": single_target,
            "peak_memory_mib": o.peak_mib,
            "server_cpu_seconds_total": o.total_cpu,
        }));
    }
    if let Some((_, o)) = outcomes.first() {
        // Each server's run records its own random notes, so each has its own byte targets.
        let per_server = |bytes: fn(&Outcome) -> u64| {
            outcomes
                .iter()
                .map(|(target, o)| format!("{} {}", target.key(), bytes(o)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        md.push_str(&format!(
            "\nNew changes: {} per server. Byte target: 1.25 x the bytes of their automerge change chunks x {} \
             recipients (the server and the {} other phones of each case); those bytes: {}. Scenario 2: \
             1.25 x its one change's bytes x {}; those bytes: {}. HTTP phones poll every {} ms when idle. \
             \"unacked docs\": (phone, document) pairs \
             whose sync state, at convergence, does not show the server holding the phone's changes \
             (the server's last message to that phone was about an older version).\n",
            o.new_changes,
            recipients,
            recipients - 1,
            per_server(|o| o.new_bytes),
            recipients,
            per_server(|o| o.single_new_bytes),
            HTTP_POLL_INTERVAL.as_millis(),
        ));
    }
    md.push_str("\nDoorstep / peer (convergence speed-up = peer time / Doorstep time; bytes and memory = Doorstep / peer):\n\n| Doorstep | peer | speed-up | target | bytes ratio | 1-visit speed-up | peak memory ratio |\n|---|---|---|---|---|---|---|\n");
    let mut ratios = Vec::new();
    for (d, dout) in outcomes.iter().filter(|(t, _)| t.is_doorstep()) {
        for (p, pout) in outcomes.iter().filter(|(t, _)| !t.is_doorstep()) {
            let speedup = pout.converge.seconds / dout.converge.seconds;
            let needed = if *p == Target::Npm { 5.0 } else { 2.0 };
            let bytes = dout.converge.bytes() as f64 / pout.converge.bytes() as f64;
            let single = pout.single.seconds / dout.single.seconds;
            let memory = dout.peak_mib / pout.peak_mib;
            md.push_str(&format!(
                "| {} | {} | {:.2}x | >= {needed}x: {} | {:.2} | {:.2}x | {:.2} |\n",
                d.key(),
                p.key(),
                speedup,
                if speedup >= needed { "met" } else { "MISSED" },
                bytes,
                single,
                memory
            ));
            ratios.push(json!({"doorstep": d.key(), "peer": p.key(), "speedup": speedup, "speedup_target": needed, "bytes_ratio": bytes, "single_visit_speedup": single, "memory_ratio": memory}));
        }
    }
    md.push_str("\nTargets per server: bytes <= 1.25 x compressed new changes x recipients; Doorstep peak memory < 100 MB:\n\n");
    for (target, o) in outcomes {
        let target_bytes = 1.25 * o.new_bytes as f64 * recipients as f64;
        md.push_str(&format!(
            "- {}: bytes {} ({:.2}x the target){}\n",
            target.label(),
            if (o.converge.bytes() as f64) <= target_bytes {
                "met"
            } else {
                "MISSED"
            },
            o.converge.bytes() as f64 / target_bytes,
            if target.is_doorstep() {
                format!(
                    "; peak memory {:.1} MiB ({:.1} MB): {}",
                    o.peak_mib,
                    o.peak_mib * 1.048576,
                    if o.peak_mib * 1.048576 < 100.0 {
                        "met"
                    } else {
                        "MISSED"
                    }
                )
            } else {
                String::new()
            }
        ));
    }
    for failure in failures {
        md.push_str(&format!("\nFAILED (not in the table): {failure}\n"));
    }
    println!("\n{md}");
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(args.out.with_extension("md"), &md)?;
    let document = json!({
        "args": format!("{args:?}"),
        "servers": rows,
        "ratios": ratios,
        "failures": failures,
    });
    std::fs::write(
        args.out.with_extension("json"),
        serde_json::to_string_pretty(&document)?,
    )?;
    println!(
        "written to {} and .json",
        args.out.with_extension("md").display()
    );
    Ok(())
}
