//! Group commit: concurrent pushes share one write transaction.
//!
//! Every push used to be its own transaction, so under load pushes queued for
//! the write turn (SQLite) or a connection (PostgreSQL) and each paid a commit
//! of its own. Here a push joins a queue; a committer takes everything queued
//! (up to [`MAX_BATCH`]), runs all of it in one transaction and answers each push
//! only after that commit, so a `2xx` still means on disk. While one batch
//! commits the next one fills: the busier the server, the bigger the batches.
//!
//! A batch is all or nothing. When any push in it fails (a deadlock between two
//! batches' identity locks, a reused id), the transaction is rolled back and each
//! push of it is retried in a transaction of its own, so one bad push never fails
//! another.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, oneshot};

use crate::Result;

/// Most pushes in one transaction: big enough to amortise a commit, small
/// enough that the first push of a batch does not wait long for the last.
pub(crate) const MAX_BATCH: usize = 64;

/// One push waiting for its commit.
pub(crate) struct Pending<J, T> {
    pub(crate) job: J,
    pub(crate) reply: oneshot::Sender<Result<T>>,
}

/// The queue of pushes and the committer slots that drain it.
pub(crate) struct GroupCommit<J, T> {
    queue: Mutex<VecDeque<Pending<J, T>>>,
    /// A committer holds a permit while it drains; at most this many run at once.
    slots: Arc<Semaphore>,
}

impl<J, T> GroupCommit<J, T> {
    pub(crate) fn new(committers: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            slots: Arc::new(Semaphore::new(committers.max(1))),
        }
    }

    fn push(&self, pending: Pending<J, T>) {
        self.lock().push_back(pending);
    }

    fn take(&self) -> Vec<Pending<J, T>> {
        let mut queue = self.lock();
        let n = queue.len().min(MAX_BATCH);
        queue.drain(..n).collect()
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending<J, T>>> {
        // A panic while holding this lock cannot leave the queue half-changed.
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<J: Send + 'static, T: Send + 'static> GroupCommit<J, T> {
    /// Queues `job` and waits for the commit of the batch it joined. `commit`
    /// runs one batch and returns one result per job, in order.
    pub(crate) async fn submit<F, Fut>(self: &Arc<Self>, job: J, commit: F) -> Result<T>
    where
        F: Fn(Vec<J>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Vec<Result<T>>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.push(Pending { job, reply });
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            // The committer is a task of its own: a push whose client hangs up must
            // not abort the batch it leads, which carries other pushes too.
            let group = Arc::clone(self);
            tokio::spawn(async move {
                let mut permit = Some(permit);
                loop {
                    let batch = group.take();
                    if batch.is_empty() {
                        drop(permit.take());
                        // A push queued before the release found every slot taken and
                        // counts on us: look once more, and carry on if a slot is free.
                        if group.is_empty() {
                            break;
                        }
                        match group.slots.clone().try_acquire_owned() {
                            Ok(p) => permit = Some(p),
                            Err(_) => break,
                        }
                        continue;
                    }
                    let (jobs, replies): (Vec<J>, Vec<_>) = batch.into_iter().map(|p| (p.job, p.reply)).unzip();
                    let results = commit(jobs).await;
                    for (reply, result) in replies.into_iter().zip(results) {
                        // The push may have given up waiting; its receipt is stored anyway.
                        let _ = reply.send(result);
                    }
                }
            });
        }
        answer
            .await
            .unwrap_or_else(|_| Err(crate::StoreError::Database(sqlx::Error::PoolClosed)))
    }
}
