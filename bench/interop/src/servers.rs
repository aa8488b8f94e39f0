//! The servers under test, each its own child process, and what /proc says about it.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct ServerProcess {
    pub name: &'static str,
    child: Child,
    /// `http://127.0.0.1:port` (Doorstep) or `ws://127.0.0.1:port/` (the others).
    pub base: String,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts `command` and waits (up to 60 s) for a stdout line for which `address` returns
    /// the base URL.
    pub fn start(
        name: &'static str,
        mut command: Command,
        dir: tempfile::TempDir,
        address: impl Fn(&str) -> Option<String> + Send + 'static,
    ) -> anyhow::Result<ServerProcess> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && let Some(base) = address(&line) {
                    let _ = tx.send(base);
                    sent = true;
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow::anyhow!("{name} did not say where it listens"))?;
        Ok(ServerProcess {
            name,
            child,
            base,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory (VmHWM), MiB.
    pub fn peak_memory_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(f64::NAN)
    }

    /// User + system CPU seconds so far.
    pub fn cpu_seconds(&self, ticks_per_second: f64) -> f64 {
        process_cpu_seconds(self.pid(), ticks_per_second)
    }
}

/// Process `pid`'s user + system CPU seconds so far.
pub fn process_cpu_seconds(pid: u32, ticks_per_second: f64) -> f64 {
    cpu_seconds(&format!("/proc/{pid}/stat"), ticks_per_second)
}

/// The load generator's own user + system CPU seconds so far.
pub fn own_cpu_seconds(ticks_per_second: f64) -> f64 {
    cpu_seconds("/proc/self/stat", ticks_per_second)
}

fn cpu_seconds(path: &str, ticks_per_second: f64) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / ticks_per_second
}

/// The command that starts a server under test so that it dies with the benchmark, however
/// the benchmark ends (a SIGKILL runs no handler or destructor): through util-linux's
/// `setpriv --pdeathsig KILL`, which then runs the server in its place, where it is installed.
/// The kernel sends that signal when the thread that started the process ends: the benchmark
/// starts its servers from its main thread (the future `block_on` runs).
fn server_command(program: impl AsRef<OsStr>) -> Command {
    let setpriv = Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if setpriv {
        let mut command = Command::new("setpriv");
        command.args(["--pdeathsig", "KILL", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clock ticks per second for /proc/<pid>/stat (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

pub fn doorstep(
    binary: &Path,
    database_url: &str,
    dir: tempfile::TempDir,
) -> anyhow::Result<ServerProcess> {
    let mut command = server_command(binary);
    command
        .args(["--listen", "127.0.0.1:0", "--demo", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--database-url", database_url])
        .env("RUST_LOG", "warn");
    ServerProcess::start("doorstep", command, dir, |line| {
        line.strip_prefix("Doorstep server listening on ")
            .map(|rest| rest.trim().to_string())
    })
}

/// A free port on 127.0.0.1 (for the npm server, which takes a port, not an address).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `@automerge/automerge-repo-sync-server` from `npm_dir/node_modules`, through the bench's
/// launcher that binds it to 127.0.0.1 (the package itself listens on every interface), with
/// its storage (`DATA_DIR`) in a temporary folder.
pub fn npm(npm_dir: &Path, launcher: &Path) -> anyhow::Result<ServerProcess> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let entry: PathBuf = std::path::absolute(npm_dir)?
        .join("node_modules/@automerge/automerge-repo-sync-server/src/index.js");
    anyhow::ensure!(
        entry.exists(),
        "{} is missing: run scripts/bench-interop.sh",
        entry.display()
    );
    let mut command = server_command("node");
    command
        .arg(launcher)
        .arg(&entry)
        .current_dir(dir.path())
        .env("PORT", port.to_string())
        .env("DATA_DIR", dir.path().join("amrg"));
    ServerProcess::start("npm", command, dir, move |line| {
        line.starts_with("Listening on port")
            .then(|| format!("ws://127.0.0.1:{port}/"))
    })
}

pub fn samod(binary: &Path) -> anyhow::Result<ServerProcess> {
    let dir = tempfile::tempdir()?;
    let mut command = server_command(binary);
    command.arg("127.0.0.1:0");
    ServerProcess::start("samod", command, dir, |line| {
        line.strip_prefix("listening on ")
            .map(|addr| format!("ws://{}/", addr.trim()))
    })
}
