//! `doorstep-server`: the thin binary. Everything else is in the library.

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use doorstep_server::{App, Config};
use tracing_subscriber::EnvFilter;

/// glibc's malloc raises its mmap threshold after each large free and then keeps blocks below
/// it in per-thread arenas. Measured here (debug build, 20 phones signing in at once): glibc
/// 60 -> 112 MiB peak, mimalloc 38 -> 89 MiB, jemalloc 39 -> 42 MiB.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's own defaults keep freed pages resident for 10 s and make four arenas per core,
/// so the buffers of a burst of syncs stayed resident long after it. Freed pages go back
/// within a second here, by a background thread rather than the request that freed them. One
/// arena: at most one sync per core computes at once, and per-thread caches take most of the
/// traffic; the interop bench's HTTP peak was 116 MiB with one arena against 120 MiB with two
/// (two runs each, the same server CPU). (`_RJEM_MALLOC_CONF` in the environment still
/// overrides this.)
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_OPTIONS: &[u8] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:1\0";

/// SQLite is C: it allocates through glibc's malloc, not jemalloc, and glibc makes up to eight
/// arenas per core, each keeping the blocks freed in it. One arena, as jemalloc has here:
/// interop bench, Doorstep WebSocket, peak memory 91.2-94.8 MiB (mean 92.8, 6 runs) against
/// 85.5-91.4 MiB (mean 88.3, 4 runs), the same server CPU within the runs' spread. (Routing
/// SQLite's allocations to jemalloc instead, by its unprefixed build: 86.1-91.6 MiB.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_glibc_arenas() {
    // SAFETY: mallopt only sets one of malloc's parameters, and it is called before any other
    // thread runs; a value glibc refused would only leave its default.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() -> anyhow::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    limit_glibc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    // Logs go to stderr; stdout carries only the start-up notice.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info")),
        )
        .init();
    let config = Config::parse();
    tracing::debug!(?config, "configuration");
    let app = App::build(config).await.context("starting the server")?;
    // A closed stdout (a supervisor that stopped reading) must not stop the server.
    let _ = writeln!(std::io::stdout(), "{}", app.notice());
    app.run(shutdown_signal()).await.context("serving")?;
    Ok(())
}

/// Ctrl-C or SIGTERM: finish the requests in flight, then stop.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
