//! Checking a username and password, for the API's and the web view's sign-in alike, with
//! repeated failures throttled.
//!
//! Each username (compared case-insensitively, known or not) may fail
//! [`SignInThrottle::MAX_FAILURES`] times within [`SignInThrottle::WINDOW`]; after that its
//! sign-ins are refused with `429` and `Retry-After` until the oldest failure leaves the
//! window, without checking the password, so guessing stops there. A success clears the
//! count. Phones already signed in are not affected: they refresh their tokens, they do not
//! sign in again. The count is per server instance (several instances behind a load balancer
//! each allow their own), and bounded in memory: at most [`SignInThrottle::MAX_TRACKED`]
//! usernames are tracked, the stalest forgotten first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::password;
use crate::app::AppState;
use crate::metrics::Metrics;
use crate::storage::{StorageError, User};

/// Why a sign-in did not get a user.
#[derive(Debug, thiserror::Error)]
pub enum SignInRefused {
    #[error("unknown username or wrong password")]
    InvalidCredentials,
    #[error("too many failed sign-ins for this username: try again in {retry_after_secs} s")]
    Throttled { retry_after_secs: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("password check failed: {0}")]
    Internal(String),
}

/// Recent failed sign-ins per username.
#[derive(Debug, Default)]
pub struct SignInThrottle {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl SignInThrottle {
    pub const MAX_FAILURES: usize = 10;
    pub const WINDOW: Duration = Duration::from_secs(15 * 60);
    pub const MAX_TRACKED: usize = 10_000;

    fn key(username: &str) -> String {
        username.trim().to_lowercase()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Instant>>> {
        // A poisoned lock only means another sign-in panicked; the counts are still usable.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long `username` must wait, if it has used up its failures.
    pub fn wait(&self, username: &str, now: Instant) -> Option<Duration> {
        let mut failures = self.lock();
        let recent = failures.get_mut(&Self::key(username))?;
        while recent
            .front()
            .is_some_and(|at| now.duration_since(*at) >= Self::WINDOW)
        {
            recent.pop_front();
        }
        if recent.len() < Self::MAX_FAILURES {
            return None;
        }
        let oldest = *recent.front()?;
        Some(Self::WINDOW.saturating_sub(now.duration_since(oldest)))
    }

    pub fn record_failure(&self, username: &str, now: Instant) {
        let mut failures = self.lock();
        if failures.len() >= Self::MAX_TRACKED && !failures.contains_key(&Self::key(username)) {
            failures.retain(|_, recent| {
                recent
                    .back()
                    .is_some_and(|at| now.duration_since(*at) < Self::WINDOW)
            });
            if failures.len() >= Self::MAX_TRACKED {
                let stalest = failures
                    .iter()
                    .min_by_key(|(_, recent)| recent.back().copied())
                    .map(|(key, _)| key.clone());
                if let Some(key) = stalest {
                    failures.remove(&key);
                }
            }
        }
        let recent = failures.entry(Self::key(username)).or_default();
        recent.push_back(now);
        while recent.len() > Self::MAX_FAILURES {
            recent.pop_front();
        }
    }

    pub fn clear(&self, username: &str) {
        self.lock().remove(&Self::key(username));
    }
}

/// The user whose password this is (disabled or not: the caller decides what that means).
/// Unknown usernames cost a real verification too, so usernames cannot be probed by timing.
pub async fn check_credentials(
    state: &AppState,
    username: &str,
    password: String,
) -> Result<User, SignInRefused> {
    let throttle = &state.sign_in_throttle;
    if let Some(wait) = throttle.wait(username, Instant::now()) {
        Metrics::add(&state.metrics.sign_in_failures, 1);
        return Err(SignInRefused::Throttled {
            retry_after_secs: wait.as_secs().max(1),
        });
    }
    let user = state.storage.user_by_username(username.trim()).await?;
    let phc = user.as_ref().map_or_else(
        || state.dummy_password_hash.as_str().to_string(),
        |u| u.password_hash.clone(),
    );
    let matches = password::verify(password, phc)
        .await
        .map_err(|e| SignInRefused::Internal(e.to_string()))?;
    match user {
        Some(user) if matches => {
            throttle.clear(username);
            Ok(user)
        }
        _ => {
            throttle.record_failure(username, Instant::now());
            Metrics::add(&state.metrics.sign_in_failures, 1);
            Err(SignInRefused::InvalidCredentials)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_within_the_window_throttle_that_username_only_until_they_age_out() {
        let throttle = SignInThrottle::default();
        let start = Instant::now();
        for i in 0..SignInThrottle::MAX_FAILURES {
            assert_eq!(throttle.wait("Officer", start), None, "attempt {i}");
            throttle.record_failure("officer ", start + Duration::from_secs(i as u64));
        }
        let later = start + Duration::from_secs(60);
        let wait = throttle.wait("OFFICER", later).expect("throttled");
        assert_eq!(wait, SignInThrottle::WINDOW - Duration::from_secs(60));
        assert_eq!(
            throttle.wait("worker", later),
            None,
            "other usernames are not"
        );
        // Once the oldest failure leaves the window, one more attempt is allowed.
        let after = start + SignInThrottle::WINDOW;
        assert_eq!(throttle.wait("officer", after), None);
        throttle.clear("officer");
        assert_eq!(throttle.wait("officer", later), None);
    }

    #[test]
    fn memory_stays_bounded() {
        let throttle = SignInThrottle::default();
        let now = Instant::now();
        for i in 0..SignInThrottle::MAX_TRACKED + 50 {
            throttle.record_failure(&format!("made-up-{i}"), now);
        }
        assert!(throttle.lock().len() <= SignInThrottle::MAX_TRACKED);
    }
}
