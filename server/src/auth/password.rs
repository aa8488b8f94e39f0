//! Password hashing with argon2id, slow on purpose, so it runs on its own threads, off the
//! async workers.
//!
//! Memory is the constraint on a server: each hash allocates its whole memory cost at once,
//! argon2's default is 19 MiB, and a flood of sign-ins must not exhaust the server. So:
//! - new hashes use OWASP's equivalent argon2id setting with less memory and more passes
//!   (m = 7 MiB, t = 5, p = 1); hashes made with other parameters still verify, since a PHC
//!   string carries its own;
//! - all hashing runs on [`HASHING_THREADS`] dedicated threads, so at most that many blocks
//!   are held at once, and requests beyond that wait their turn (hashing is CPU-bound anyway).

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// How many argon2 computations may run at once in this process.
pub const HASHING_THREADS: usize = 2;

/// Memory per hash in KiB, passes, lanes: OWASP's argon2id row for 7 MiB.
const MEMORY_KIB: u32 = 7 * 1024;
const PASSES: u32 = 5;
const LANES: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("the hashing thread stopped before answering")]
    Task,
    #[error("no password hashing thread could be started")]
    NoThreads,
}

type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads' queue: a process-wide resource, like the CPU it guards, rather than
/// configuration, so it lives here and starts on first use.
fn hashing_queue() -> &'static Sender<Job> {
    static QUEUE: OnceLock<Sender<Job>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..HASHING_THREADS {
            let receiver = Arc::clone(&receiver);
            let spawned = std::thread::Builder::new()
                .name(format!("password-hash-{index}"))
                .spawn(move || run_jobs(&receiver));
            if let Err(e) = spawned {
                // With no thread left holding the receiver, sends fail: callers get NoThreads.
                tracing::error!(error = %e, "could not start a password hashing thread");
            }
        }
        sender
    })
}

fn run_jobs(receiver: &Mutex<Receiver<Job>>) {
    loop {
        let job = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        // A panicking job drops its answer channel (the caller sees Task); the thread lives on.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
    }
}

async fn on_hashing_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PasswordError> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    hashing_queue()
        .send(Box::new(move || {
            let _ = answer.send(work());
        }))
        .map_err(|_| PasswordError::NoThreads)?;
    answered.await.map_err(|_| PasswordError::Task)
}

fn new_hash_hasher() -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(MEMORY_KIB, PASSES, LANES, None)
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// The argon2id PHC string for `password`, with a fresh salt.
fn hash_blocking(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    new_hash_hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

pub async fn hash(password: String) -> Result<String, PasswordError> {
    on_hashing_thread(move || hash_blocking(&password)).await?
}

/// True when `password` matches `phc`. An unreadable hash never matches.
pub async fn verify(password: String, phc: String) -> Result<bool, PasswordError> {
    on_hashing_thread(move || {
        PasswordHash::new(&phc)
            .map(|parsed| {
                // Verification takes the parameters from the PHC string.
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_only_its_password() {
        let phc = hash("correct horse".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify("correct horse".into(), phc.clone()).await.unwrap());
        assert!(!verify("wrong horse".into(), phc).await.unwrap());
        assert!(!verify("x".into(), "not a hash".into()).await.unwrap());
    }

    #[tokio::test]
    async fn new_hashes_use_less_memory_and_old_ones_still_verify() {
        let phc = hash("correct horse".into()).await.unwrap();
        assert!(phc.contains("m=7168,t=5,p=1"), "{phc}");
        // A hash made with the crate's defaults (19 MiB), as earlier versions stored.
        let salt = SaltString::generate(&mut OsRng);
        let old = Argon2::default()
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert!(old.contains("m=19456"), "{old}");
        assert!(verify("correct horse".into(), old.clone()).await.unwrap());
        assert!(!verify("wrong horse".into(), old).await.unwrap());
    }
}
