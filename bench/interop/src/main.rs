//! Interop benchmark: the same workload, in one run, against Doorstep over HTTP batch sync,
//! Doorstep over the automerge-repo WebSocket protocol, `@automerge/automerge-repo-sync-server`
//! (npm) and a samod server, each its own child process on 127.0.0.1. One load generator
//! speaks the automerge-repo protocol to every WebSocket server.
//!
//! Workload: P phones, C cases each allocated to S phones (each phone its own actor); every
//! phone records V visits per case offline (sync-core's `CaseFile`, so the changes are valid
//! Doorstep visits), then all phones reconnect at once and sync until every phone holds every
//! change of each of its cases. Scenario 2: one new visit on a case that holds B visits,
//! synced to S - 1 connected subscribers. `scripts/bench-interop.sh` builds and runs it.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark fails loudly"
)]

mod phone;
mod protocol;
mod servers;
mod workload;

use std::path::PathBuf;

use clap::Parser;

/// The phones share the machine's cores with the server under test, so their own cost is
/// kept low: with glibc's malloc, a fifth of the load generator's CPU went to allocating.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(about = "Doorstep interop benchmark (see scripts/bench-interop.sh)")]
pub struct Args {
    /// Phones reconnecting at once.
    #[arg(long, default_value_t = 50)]
    phones: usize,
    /// Cases in all.
    #[arg(long, default_value_t = 200)]
    cases: usize,
    /// Phones each case is allocated to.
    #[arg(long, default_value_t = 10)]
    per_case: usize,
    /// Visits each phone records offline in each of its cases.
    #[arg(long, default_value_t = 20)]
    visits: usize,
    /// Visits already in the case of scenario 2.
    #[arg(long, default_value_t = 2000)]
    big_visits: usize,
    /// Characters of each visit's note.
    #[arg(long, default_value_t = 500)]
    note_chars: usize,
    /// Which servers, comma-separated: doorstep-http, doorstep-ws, npm, samod.
    #[arg(
        long,
        default_value = "npm,samod,doorstep-http,doorstep-ws",
        value_delimiter = ','
    )]
    servers: Vec<String>,
    /// The release `doorstep-server` binary.
    #[arg(long)]
    doorstep_bin: PathBuf,
    /// The bench-only samod server binary.
    #[arg(long)]
    samod_bin: PathBuf,
    /// The folder where `@automerge/automerge-repo-sync-server` is installed.
    #[arg(long)]
    npm_dir: PathBuf,
    /// Where the table goes (`.md` and `.json`).
    #[arg(long, default_value = "target/bench/interop")]
    out: PathBuf,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.per_case <= args.phones, "--per-case exceeds --phones");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::select! {
            outcome = workload::run(args) => outcome,
            // The run is dropped first, and with it the servers under test (each is killed
            // when its `ServerProcess` drops): stopping the benchmark leaves none running.
            // The signal is seen when the run next yields (recording the offline visits, up
            // to some 20 s, does not).
            signal = stop_signal() => anyhow::bail!("stopped by {signal}; the servers under test were stopped too"),
        }
    })
}

/// Waits for Ctrl-C (SIGINT), SIGTERM or SIGHUP, and names it.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut hangup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        // Without handlers the default actions apply; Ctrl-C is still caught below.
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
        _ = hangup.recv() => "SIGHUP",
    }
}
