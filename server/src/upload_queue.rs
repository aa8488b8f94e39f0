//! The order in which uploads (a sync's messages to one case that bring changes, over HTTP
//! or WebSocket) are taken: by case, across all syncs, so that one case's uploads from many
//! phones follow one another.
//!
//! In a mass reconnect every phone sends the changes it made to each of its cases at once.
//! Taken sync by sync, each its own cases, one case's uploads were spread over the whole
//! upload: the document cache had long lost the case when its next upload came, so almost
//! every upload parsed its case again (19 % of the server's CPU in the interop benchmark over
//! WebSocket), and no case had all its uploads, so none went out to the phones, until near the
//! end. Taken in case order, the case is parsed once for all of its uploads (the cache holds it
//! from one to the next), and goes out while later cases are taken. Interop benchmark,
//! WebSocket only, the server without and with the queue alternated: 36.1 / 54.0 s ->
//! 33.7 / 41.1 s to converge, server CPU 42.7 / 65.3 s -> 35.3 / 42.3 s.
//!
//! Waiting uploads go through in case-id order within each [`ROUND`] of arrival, so that one
//! is passed only by uploads that came in its round or before it (none waits forever), at most
//! `limit` at once, and never two of one case at once (both would compute on the same stored
//! version, and the second to commit would compute again). A pass is then followed by the
//! sync's turn to compute (one per core); a sync holds no turn while it waits for a pass.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Uploads arriving within one round are taken in case order; earlier rounds go first.
pub const ROUND: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct UploadQueue {
    limit: usize,
    opened: Instant,
    state: Mutex<Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    /// Passes given out and not yet dropped.
    running: usize,
    /// The cases those passes are for.
    busy: HashSet<String>,
    /// By round of arrival, case id, then arrival.
    uploads: BTreeMap<(u64, String, u64), oneshot::Sender<UploadPass>>,
    arrivals: u64,
}

/// One upload's place: held while it computes and commits. Dropping it lets the next through.
#[derive(Debug)]
pub struct UploadPass {
    queue: Arc<UploadQueue>,
    case_id: String,
}

impl Drop for UploadPass {
    fn drop(&mut self) {
        {
            let mut waiting = self.queue.lock();
            waiting.running -= 1;
            waiting.busy.remove(&self.case_id);
        }
        self.queue.admit();
    }
}

impl UploadQueue {
    /// At most `limit` uploads (at least one) hold a pass at once.
    pub fn new(limit: usize) -> Arc<UploadQueue> {
        Arc::new(UploadQueue {
            limit: limit.max(1),
            opened: Instant::now(),
            state: Mutex::new(Waiting::default()),
        })
    }

    /// Waits for an upload to `case_id` to be let through. Dropping the future gives up the
    /// place (a pass given to it meanwhile comes back, and goes to the next).
    pub async fn enter(self: &Arc<Self>, case_id: &str) -> UploadPass {
        let round = self.opened.elapsed().as_millis() / ROUND.as_millis();
        self.enter_in_round(case_id, u64::try_from(round).unwrap_or(u64::MAX))
            .await
    }

    async fn enter_in_round(self: &Arc<Self>, case_id: &str, round: u64) -> UploadPass {
        let (sender, pass) = oneshot::channel();
        {
            let mut waiting = self.lock();
            waiting.arrivals += 1;
            let arrival = waiting.arrivals;
            waiting
                .uploads
                .insert((round, case_id.to_string(), arrival), sender);
        }
        self.admit();
        // The sender is dropped only by sending, or with the queue, which this holds.
        pass.await
            .unwrap_or_else(|_| unreachable!("a waiting upload's sender is kept until it is sent"))
    }

    /// Gives passes to the first waiting uploads whose case holds none, up to the limit.
    fn admit(self: &Arc<Self>) {
        loop {
            let (sender, case_id) = {
                let mut waiting = self.lock();
                if waiting.running >= self.limit {
                    return;
                }
                let Some(key) = waiting
                    .uploads
                    .keys()
                    .find(|(_, case_id, _)| !waiting.busy.contains(case_id))
                    .cloned()
                else {
                    return;
                };
                let Some(sender) = waiting.uploads.remove(&key) else {
                    return;
                };
                waiting.running += 1;
                waiting.busy.insert(key.1.clone());
                (sender, key.1)
            };
            // Outside the lock: an upload that gave up dropped its receiver, and its pass
            // comes back here and is dropped, which admits the next one.
            let pass = UploadPass {
                queue: Arc::clone(self),
                case_id,
            };
            drop(sender.send(pass));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // Nothing panics while holding the lock; keep going if something ever did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    type Entering = Pin<Box<dyn Future<Output = UploadPass>>>;

    fn enter(queue: &Arc<UploadQueue>, case_id: &str, round: u64) -> Entering {
        let queue = Arc::clone(queue);
        let case_id = case_id.to_string();
        Box::pin(async move { queue.enter_in_round(&case_id, round).await })
    }

    /// Polls `entering` once: its pass, if it has one (the first poll puts it in the queue).
    fn admitted(entering: &mut Entering) -> Option<UploadPass> {
        match entering
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(pass) => Some(pass),
            Poll::Pending => None,
        }
    }

    #[test]
    fn uploads_waiting_together_go_through_in_case_order_up_to_the_limit() {
        let queue = UploadQueue::new(1);
        let first = admitted(&mut enter(&queue, "case-m", 0)).expect("nothing waits");
        let mut later: Vec<(&str, Entering)> = ["case-z", "case-b", "case-k"]
            .into_iter()
            .map(|case_id| (case_id, enter(&queue, case_id, 0)))
            .collect();
        for (_, entering) in &mut later {
            assert!(admitted(entering).is_none(), "the limit is one");
        }
        drop(first);
        let mut order = Vec::new();
        for _ in 0..3 {
            let (case_id, pass) = later
                .iter_mut()
                .find_map(|(case_id, entering)| admitted(entering).map(|pass| (*case_id, pass)))
                .expect("one is let through each time a pass is dropped");
            order.push(case_id);
            later.retain(|(waiting, _)| *waiting != case_id);
            drop(pass);
        }
        assert_eq!(order, ["case-b", "case-k", "case-z"]);
    }

    #[test]
    fn two_uploads_to_one_case_never_hold_passes_at_once() {
        let queue = UploadQueue::new(2);
        let first = admitted(&mut enter(&queue, "case-a", 0)).expect("nothing waits");
        let mut same = enter(&queue, "case-a", 0);
        let mut other = enter(&queue, "case-b", 0);
        assert!(admitted(&mut same).is_none(), "its case holds a pass");
        let other_pass = admitted(&mut other).expect("another case goes past it");
        drop(first);
        assert!(admitted(&mut same).is_some());
        drop(other_pass);
    }

    #[test]
    fn an_upload_that_gives_up_its_place_holds_up_no_one() {
        // Before it is let through, and after (dropped before it saw its pass).
        for let_through_first in [false, true] {
            let queue = UploadQueue::new(1);
            let first = admitted(&mut enter(&queue, "case-c", 0)).expect("nothing waits");
            let mut gave_up = enter(&queue, "case-a", 0);
            let mut next = enter(&queue, "case-b", 0);
            assert!(admitted(&mut gave_up).is_none());
            assert!(admitted(&mut next).is_none());
            if let_through_first {
                drop(first);
                drop(gave_up);
            } else {
                drop(gave_up);
                drop(first);
            }
            assert!(
                admitted(&mut next).is_some(),
                "the place given up was passed on"
            );
        }
    }

    #[test]
    fn an_earlier_round_goes_before_a_later_one_whatever_the_case() {
        let queue = UploadQueue::new(1);
        let first = admitted(&mut enter(&queue, "case-m", 0)).expect("nothing waits");
        let mut early = enter(&queue, "case-z", 0);
        let mut late = enter(&queue, "case-a", 1);
        assert!(admitted(&mut early).is_none());
        assert!(admitted(&mut late).is_none());
        drop(first);
        assert!(admitted(&mut late).is_none(), "a later round waits");
        drop(admitted(&mut early).expect("the earlier round first"));
        assert!(admitted(&mut late).is_some());
    }
}
