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

use crate::sync::{JoinedOutcome, QueuedUpload};

/// Uploads arriving within one round are taken in case order; earlier rounds go first.
pub const ROUND: Duration = Duration::from_secs(5);

/// At most this many waiting uploads of one case are taken along by the upload let through
/// (see [`Admission::Lead`]): the ten phones a case is allocated to in the interop benchmark,
/// and more, while one case's parsed uploads stay a few megabytes.
pub const MAX_TAKEN_ALONG: usize = 15;

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
    uploads: BTreeMap<(u64, String, u64), Waiter>,
    arrivals: u64,
}

/// A waiting upload: where its admission goes, and what it brings for another upload of its
/// case to receive with its own (None: it must be received alone).
#[derive(Debug)]
struct Waiter {
    admission: oneshot::Sender<Admission>,
    job: Option<QueuedUpload>,
}

/// How an upload is let through.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Its turn, with its own job back, and the waiting uploads of its case (those that could
    /// go along) it is to receive and commit with its own, each answered through its sender.
    Lead {
        pass: UploadPass,
        own: Option<Box<QueuedUpload>>,
        taken_along: Vec<TakenAlong>,
    },
    /// Taken along by another upload of its case: that upload's outcome for it comes here.
    /// A dropped sender, or [`JoinedOutcome::Alone`], sends it through the queue on its own.
    TakenAlong(oneshot::Receiver<JoinedOutcome>),
}

/// A waiting upload taken along by another (see [`Admission::Lead`]).
#[derive(Debug)]
pub(crate) struct TakenAlong {
    pub job: QueuedUpload,
    pub outcome: oneshot::Sender<JoinedOutcome>,
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

    /// Waits for an upload to `case_id` that must be received alone to be let through.
    /// Dropping the future gives up the place (a pass given to it meanwhile comes back, and
    /// goes to the next).
    pub async fn enter(self: &Arc<Self>, case_id: &str) -> UploadPass {
        match self.enter_with(case_id, None).await {
            Admission::Lead {
                pass, taken_along, ..
            } => {
                debug_assert!(
                    taken_along.is_empty(),
                    "only an upload with a job leads others"
                );
                pass
            }
            Admission::TakenAlong(_) => {
                unreachable!("only an upload with a job is taken along")
            }
        }
    }

    /// Waits for an upload to `case_id` to be let through, or taken along by another upload
    /// of its case let through meanwhile (`job`: what that one needs to receive this one;
    /// None: this one is received alone). Dropping the future gives up the place.
    pub(crate) async fn enter_with(
        self: &Arc<Self>,
        case_id: &str,
        job: Option<QueuedUpload>,
    ) -> Admission {
        let round = self.opened.elapsed().as_millis() / ROUND.as_millis();
        self.enter_in_round(case_id, u64::try_from(round).unwrap_or(u64::MAX), job)
            .await
    }

    async fn enter_in_round(
        self: &Arc<Self>,
        case_id: &str,
        round: u64,
        job: Option<QueuedUpload>,
    ) -> Admission {
        let (admission, admitted) = oneshot::channel();
        {
            let mut waiting = self.lock();
            waiting.arrivals += 1;
            let arrival = waiting.arrivals;
            waiting.uploads.insert(
                (round, case_id.to_string(), arrival),
                Waiter { admission, job },
            );
        }
        self.admit();
        // The sender is dropped only by sending, or with the queue, which this holds.
        admitted
            .await
            .unwrap_or_else(|_| unreachable!("a waiting upload's sender is kept until it is sent"))
    }

    /// Gives passes to the first waiting uploads whose case holds none, up to the limit; one
    /// with a job takes along the other waiting uploads of its case that have one.
    fn admit(self: &Arc<Self>) {
        loop {
            let (mut leader, case_id, along) = {
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
                let Some(leader) = waiting.uploads.remove(&key) else {
                    return;
                };
                let along: Vec<Waiter> = if leader.job.is_some() {
                    let keys: Vec<(u64, String, u64)> = waiting
                        .uploads
                        .iter()
                        .filter(|((_, case_id, _), waiter)| {
                            *case_id == key.1 && waiter.job.is_some()
                        })
                        .map(|(key, _)| key.clone())
                        .take(MAX_TAKEN_ALONG)
                        .collect();
                    keys.iter()
                        .filter_map(|key| waiting.uploads.remove(key))
                        .collect()
                } else {
                    Vec::new()
                };
                waiting.running += 1;
                waiting.busy.insert(key.1.clone());
                (leader, key.1, along)
            };
            // Outside the lock: an upload that gave up dropped its receiver, and its pass
            // comes back here and is dropped, which admits the next one; one taken along that
            // gave up is simply not answered.
            let mut taken_along = Vec::with_capacity(along.len());
            for waiter in along {
                let (outcome, receiver) = oneshot::channel();
                if waiter
                    .admission
                    .send(Admission::TakenAlong(receiver))
                    .is_ok()
                    && let Some(job) = waiter.job
                {
                    taken_along.push(TakenAlong { job, outcome });
                }
            }
            let pass = UploadPass {
                queue: Arc::clone(self),
                case_id,
            };
            let own = leader.job.take().map(Box::new);
            drop(leader.admission.send(Admission::Lead {
                pass,
                own,
                taken_along,
            }));
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
    use crate::sync::QueuedUpload;

    type Entering = Pin<Box<dyn Future<Output = Admission>>>;

    fn enter(queue: &Arc<UploadQueue>, case_id: &str, round: u64) -> Entering {
        enter_with(queue, case_id, round, false)
    }

    /// An upload entering in `round`, with a job (`along`: it may be taken along) or not.
    fn enter_with(queue: &Arc<UploadQueue>, case_id: &str, round: u64, along: bool) -> Entering {
        let queue = Arc::clone(queue);
        let case_id = case_id.to_string();
        let job = along.then(|| QueuedUpload {
            provenance: crate::storage::Provenance {
                device_id: format!("device-{case_id}"),
                user_id: "user-1".into(),
                received_at: 0,
            },
            sender: doorstep_sync_core::testing::author("user-1", "device-1"),
            rule: crate::sync::ActorRule::Bound(Default::default()),
            message: Vec::new(),
            subscription: None,
        });
        Box::pin(async move { queue.enter_in_round(&case_id, round, job).await })
    }

    /// Polls `entering` once: how it was let through, if it was (the first poll puts it in
    /// the queue).
    fn admission(entering: &mut Entering) -> Option<Admission> {
        match entering
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(admission) => Some(admission),
            Poll::Pending => None,
        }
    }

    /// Polls `entering` once: its pass, if it was let through on its own.
    fn admitted(entering: &mut Entering) -> Option<UploadPass> {
        admission(entering).map(|admission| match admission {
            Admission::Lead { pass, .. } => pass,
            Admission::TakenAlong(_) => panic!("taken along"),
        })
    }

    #[test]
    fn an_upload_let_through_takes_along_the_waiting_uploads_of_its_case_that_can_go() {
        let queue = UploadQueue::new(1);
        let first = admitted(&mut enter(&queue, "case-z", 0)).expect("nothing waits");
        let mut leader = enter_with(&queue, "case-a", 0, true);
        let mut along = enter_with(&queue, "case-a", 0, true);
        let mut alone = enter(&queue, "case-a", 0);
        let mut other = enter_with(&queue, "case-b", 0, true);
        for entering in [&mut leader, &mut along, &mut alone, &mut other] {
            assert!(admission(entering).is_none(), "the limit is one");
        }
        drop(first);
        let Some(Admission::Lead {
            pass,
            own,
            taken_along,
        }) = admission(&mut leader)
        else {
            panic!("the first upload of case-a leads");
        };
        assert!(own.is_some(), "its job comes back");
        assert_eq!(
            taken_along.len(),
            1,
            "only the other upload with a job goes along"
        );
        let Some(Admission::TakenAlong(mut outcome)) = admission(&mut along) else {
            panic!("taken along");
        };
        assert!(admission(&mut alone).is_none(), "case-a holds a pass");
        assert!(admission(&mut other).is_none(), "the limit is one");
        drop(taken_along);
        assert!(
            outcome.try_recv().is_err(),
            "a leader that does not answer lets it go on its own"
        );
        drop(pass);
        assert!(admitted(&mut alone).is_some(), "case-a's next upload");
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
